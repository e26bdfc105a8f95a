//! The web console: a real headless Chromium (`tests/python/test_console.py`, selenium with
//! Debian's chromium and chromedriver) through a member's and the operator's day, and attacks on
//! it with plain HTTP: another tenant's ids, a cross-site form without the CSRF token, a copied
//! cookie after signing out everywhere, a persona with `<script>`.

use reqwest::redirect::Policy;
use serde_json::{json, Value};

use crate::harness::TestServer;

const PASSWORD: &str = "correct horse battery staple";

/// A tenant with one member who signs in with `email` and [`PASSWORD`]; (tenant, API key).
async fn family(s: &TestServer, name: &str, email: &str) -> (Value, String) {
    let (t, key) = s.tenant(name).await;
    let (st, m) = s.post(&format!("/api/v1/tenants/{}/members", t["id"].as_str().unwrap()), &s.admin.clone(), json!({"kind": "web", "external_id": email, "display_name": name, "password": PASSWORD})).await;
    assert_eq!(st, 201, "{m}");
    (t, key)
}

/// A browser without JavaScript: cookies kept by hand, redirects not followed.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

impl Browser {
    async fn sign_in(s: &TestServer, email: &str) -> Browser {
        let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
        let page = http.get(format!("{}/console/login", s.base)).send().await.unwrap();
        let login_cookie = set_cookie(&page, "clawpen_login").expect("the sign-in page sets its token");
        let html = page.text().await.unwrap();
        let csrf = hidden(&html, "csrf");
        let r = http.post(format!("{}/console/login", s.base)).header("cookie", format!("clawpen_login={login_cookie}")).form(&[("email", email), ("password", PASSWORD), ("csrf", &csrf)]).send().await.unwrap();
        assert_eq!(r.status(), 303, "signed in");
        let cookie = set_cookie(&r, "clawpen_session").expect("a session cookie");
        let line = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).find(|c| c.starts_with("clawpen_session=")).unwrap();
        assert!(line.contains("HttpOnly") && line.contains("SameSite=Strict"), "{line}");
        Browser { http, base: s.base.clone(), cookie }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.http.get(format!("{}{path}", self.base)).header("cookie", format!("clawpen_session={}", self.cookie)).send().await.unwrap();
        let status = r.status().as_u16();
        for h in ["content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy"] {
            assert!(r.headers().contains_key(h), "{path}: no {h}");
        }
        (status, r.text().await.unwrap())
    }

    /// The CSRF token of this session, from any of its pages.
    async fn csrf(&self) -> String {
        hidden(&self.get("/console/agents").await.1, "csrf")
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String, Option<String>) {
        let r = self.http.post(format!("{}{path}", self.base)).header("cookie", format!("clawpen_session={}", self.cookie)).form(form).send().await.unwrap();
        let location = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
        (r.status().as_u16(), r.text().await.unwrap(), location)
    }
}

fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find_map(|c| c.strip_prefix(&format!("{name}="))?.split(';').next().map(str::to_owned)).filter(|v| !v.is_empty())
}

/// The text of the element whose opening tag carries `attr` (no markup inside it).
fn text_of(html: &str, attr: &str) -> Option<String> {
    let at = html.find(attr)?;
    let rest = &html[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')?;
    Some(rest[start..start + end].trim().to_owned())
}

fn hidden(html: &str, name: &str) -> String {
    let at = html.find(&format!("name=\"{name}\"")).unwrap_or_else(|| panic!("no {name} field in {html}"));
    let tag_start = html[..at].rfind('<').unwrap();
    let tag = &html[tag_start..tag_start + html[tag_start..].find('>').unwrap()];
    tag.split("value=\"").nth(1).and_then(|v| v.split('"').next()).unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_and_the_operator_use_the_console_in_chromium() {
    // A model that streams a word every 20 ms: the browser sees the reply grow.
    let s = TestServer::start_with("", "default_model = \"gpt-slow\"", &[]).await;
    family(&s, "family", "ana@example.com").await;
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    let out = tokio::process::Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/test_console.py")])
        .env("CLAWPEN_BASE", &s.base)
        .env("CLAWPEN_EMAIL", "ana@example.com")
        .env("CLAWPEN_PASSWORD", PASSWORD)
        .env("CLAWPEN_ADMIN_KEY", &s.admin)
        .env("CLAWPEN_SCREENSHOTS", &shots)
        .output()
        .await
        .expect("python3 with `pip install -r tests/python/requirements.txt`");
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.contains("1 passed"), "{report}\nserver log:\n{}", s.log());
    assert!(shots.join("agent.png").is_file() && shots.join("usage-phone.png").is_file(), "screenshots under {}", shots.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn another_tenant_a_foreign_site_and_a_copied_cookie_get_nothing() {
    let s = TestServer::start().await;
    let (_, key_a) = family(&s, "alpha", "ana@alpha.example").await;
    family(&s, "beta", "bob@beta.example").await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let ana = Browser::sign_in(&s, "ana@alpha.example").await;
    let bob = Browser::sign_in(&s, "bob@beta.example").await;

    // A persona with a script is shown as text.
    let csrf_a = ana.csrf().await;
    let evil = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>";
    let (st, _, to) = ana.post(&format!("/console/agents/{a}/persona"), &[("csrf", &csrf_a), ("soul", evil), ("user", "# USER.md\n")]).await;
    assert_eq!((st, to.as_deref().map(|t| t.split('?').next().unwrap().to_owned())), (303, Some(format!("/console/agents/{a}"))));
    let (_, page) = ana.get(&format!("/console/agents/{a}")).await;
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !page.contains("<script>alert") && !page.contains("<img src=x"), "the persona is escaped");
    let (_, soul) = s.get(&format!("/api/v1/agents/{a}/files?name=SOUL.md"), &key_a).await;
    assert_eq!(soul["text"], evil, "saved as typed, shown as text");

    // B's member: every page and form with A's ids is "no such", and A's agent is untouched.
    let csrf_b = bob.csrf().await;
    let (st, page) = bob.get(&format!("/console/agents/{a}")).await;
    assert_eq!(st, 404, "B opened A's agent");
    assert!(!page.contains("data-gateway-query"), "no connect URL of A's agent on B's page");
    for (path, form) in [
        (format!("/console/agents/{a}/persona"), vec![("soul", "pwned"), ("user", "pwned")]),
        (format!("/console/agents/{a}/stop"), vec![]),
        (format!("/console/agents/{a}/memory/forget"), vec![("file", "MEMORY.md"), ("line", "3"), ("text", "Long-term facts worth keeping.")]),
        ("/console/proposals/1/approve".to_owned(), vec![]),
    ] {
        let mut form = form;
        form.push(("csrf", &csrf_b));
        let (st, body, to) = bob.post(&path, &form).await;
        let refused = st == 404 || to.as_deref().is_some_and(|t| t.contains("error="));
        assert!(refused, "{path}: {st} {to:?} {body}");
    }
    let (_, soul) = s.get(&format!("/api/v1/agents/{a}/files?name=SOUL.md"), &key_a).await;
    assert_eq!(soul["text"], evil, "B changed A's persona");
    let (_, view) = s.get(&format!("/api/v1/agents/{a}"), &key_a).await;
    assert_eq!(view["desired_state"], "running", "B stopped A's agent");
    let (_, mem) = s.get(&format!("/api/v1/agents/{a}/memory"), &key_a).await;
    assert!(mem["lines"].to_string().contains("Long-term facts worth keeping."), "B made A's agent forget");

    // A cross-site form: the session's cookie, no CSRF token (or another session's).
    for csrf in ["", csrf_b.as_str()] {
        let (st, body, _) = ana.post(&format!("/console/agents/{a}/stop"), &[("csrf", csrf)]).await;
        assert_eq!(st, 403, "{body}");
    }
    let (_, view) = s.get(&format!("/api/v1/agents/{a}"), &key_a).await;
    assert_eq!(view["desired_state"], "running");

    // A copied cookie does not outlive "sign out everywhere".
    let copy = Browser { http: reqwest::Client::builder().redirect(Policy::none()).build().unwrap(), base: s.base.clone(), cookie: ana.cookie.clone() };
    assert_eq!(copy.get("/console/agents").await.0, 200);
    let (st, _, to) = ana.post("/console/logout-all", &[("csrf", &csrf_a)]).await;
    assert_eq!((st, to.as_deref()), (303, Some("/console/login")));
    let (st, _) = copy.get("/console/agents").await;
    assert_eq!(st, 303, "the copied cookie still works");

    // Sign-in attempts are limited: the sixth wrong password in a minute is told to wait.
    let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
    let mut last = String::new();
    for _ in 0..6 {
        let page = http.get(format!("{}/console/login", s.base)).send().await.unwrap();
        let token = set_cookie(&page, "clawpen_login").unwrap();
        let csrf = hidden(&page.text().await.unwrap(), "csrf");
        let r = http.post(format!("{}/console/login", s.base)).header("cookie", format!("clawpen_login={token}")).form(&[("email", "bob@beta.example"), ("password", "wrong password!!"), ("csrf", &csrf)]).send().await.unwrap();
        assert_eq!(r.status(), 401);
        last = r.text().await.unwrap();
    }
    assert!(last.contains("Too many attempts"), "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_connects_a_telegram_bot_pairs_a_person_and_deploys_an_agent_that_greets_him_there() {
    const TOKEN: &str = "700009:AAconsoleBotTOKENsecretPART_00000009";
    let s = TestServer::start_full("", "", "[telegram]\napi_base = \"STANDIN\"\nmode = \"webhook\"\n", &[]).await;
    s.standin.telegram().add_bot(TOKEN, "console_family_bot");
    let (_, key) = family(&s, "family", "ana@family.example").await;
    s.agent(&key, "helper", false).await;
    let ana = Browser::sign_in(&s, "ana@family.example").await;
    let csrf = ana.csrf().await;
    // A token Telegram does not know: said on the page, never shown back.
    let wrong = "700010:AAunknownTOKENxxxxxxxxxxxxxxxxxxxxx";
    let (st, page, _) = ana.post("/console/telegram/bot", &[("csrf", &csrf), ("token", wrong)]).await;
    assert_eq!(st, 200);
    assert!(page.contains("Telegram does not know this bot token") && !page.contains("AAunknownTOKEN"), "{page}");
    let (st, _, to) = ana.post("/console/telegram/bot", &[("csrf", &csrf), ("token", TOKEN)]).await;
    assert_eq!(st, 303, "{to:?}");
    assert!(to.unwrap().contains("ok="));
    let (_, page) = ana.get("/console/telegram").await;
    assert!(page.contains("console_family_bot") && !page.contains("AAconsoleBotTOKEN"), "{page}");
    assert!(s.standin.telegram().webhook(TOKEN).is_some(), "the webhook is set at Telegram");
    let (_, page, _) = ana.post("/console/telegram/pairing-code", &[("csrf", &csrf)]).await;
    let code = text_of(&page, "id=\"pairing-code\"").expect("a pairing code on the page");
    // Grandpa pairs with the bot, and talks with "helper".
    const GRANDPA: i64 = 6_100_001;
    let tg = s.standin.telegram();
    tg.inject_message(TOKEN, GRANDPA, &format!("/pair {code}"));
    let paired = tg.wait_for_sent(TOKEN, GRANDPA, 1, std::time::Duration::from_secs(30)).await;
    assert!(paired[0].starts_with("Paired! You now talk with helper"), "{paired:?}");

    // Deploy offers the bot; ticked, the new agent greets Grandpa there and answers him next.
    let (_, page) = ana.get("/console/agents").await;
    assert!(page.contains("Answer on Telegram as @console_family_bot") && page.contains("name=\"telegram\""), "{page}");
    let (st, _, to) = ana.post("/console/deploy", &[("csrf", &csrf), ("name", "nana"), ("telegram", "on")]).await;
    assert_eq!(st, 303, "{to:?}\nlog:\n{}", s.log());
    let nana = to.unwrap().rsplit('/').next().unwrap().to_owned();
    let sent = tg.wait_for_sent(TOKEN, GRANDPA, 2, std::time::Duration::from_secs(30)).await;
    assert!(sent[1].starts_with("I'm live!"), "{sent:?}");
    let (st, bot) = s.get("/api/v1/telegram/bot", &key).await;
    assert_eq!((st, bot["agent_id"].as_str()), (200, Some(nana.as_str())), "{bot}");
    tg.inject_message(TOKEN, GRANDPA, "what did you just tell me?");
    let sent = tg.wait_for_sent(TOKEN, GRANDPA, 3, std::time::Duration::from_secs(60)).await;
    assert!(!sent[2].is_empty());
    let ws = s.workspace("", &nana).join("sessions");
    let sessions: String = std::fs::read_dir(&ws).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    assert!(sessions.contains("I'm live!") && sessions.contains("what did you just tell me?"), "the greeting and the next message are in nana's sessions: {sessions}");

    // Without a bot of its own, a tenant's deploy that asks for Telegram is refused and makes nothing.
    let (_, key_b) = family(&s, "other", "bo@other.example").await;
    let (st, e) = s.post("/api/v1/agents", &key_b, json!({"name": "lonely", "telegram": true})).await;
    assert_eq!((st, e["error"]["code"].as_str()), (409, Some("no_telegram_bot")), "{e}");
    assert_eq!(s.get("/api/v1/agents", &key_b).await.1["agents"].as_array().unwrap().len(), 0);

    let (st, _, to) = ana.post("/console/telegram/bot/delete", &[("csrf", &csrf)]).await;
    assert_eq!(st, 303);
    assert!(to.unwrap().contains("ok="));
    assert_eq!(s.get("/api/v1/telegram/bot", &key).await.0, 404);
}
