use crate::*;

const CSRF: &str = "tok-123_abc";
const XSS: &str = "<script>alert(1)</script>\"onmouseover=alert(2) x='y' & z";

fn frame(nav: Nav) -> Frame {
    Frame { title: "Page".into(), nav, csrf: CSRF.into(), flash: Some(Flash { kind: FlashKind::Ok, text: "Saved.".into() }) }
}

fn tenant() -> Frame {
    frame(Nav::Tenant { tenant_name: "Acme".into(), member_name: "Ann".into() })
}

fn agent_rows(name: &str) -> Vec<AgentRow> {
    vec![
        AgentRow { id: "ag_1".into(), name: name.into(), state: "running".into(), tier: "small".into(), model: "claude-x".into(), last_error: None },
        AgentRow { id: "ag_2".into(), name: "Two".into(), state: "crashloop".into(), tier: "small".into(), model: "claude-x".into(), last_error: Some(name.into()) },
    ]
}

fn usage(text: &str) -> UsageView {
    UsageView {
        days: vec![DaySpend { date: "2024-05-01".into(), spent: 1_000_000 }, DaySpend { date: "2024-05-02".into(), spent: 2_000_000 }, DaySpend { date: "2024-05-03".into(), spent: 0 }, DaySpend { date: "2024-05-04".into(), spent: 4_000_000 }],
        daily_cap: Some(5_000_000),
        monthly_cap: Some(50_000_000),
        month_spent: 3_200_000,
        balance: 12_345_000_000,
        calls: vec![CallRow { at: "2024-05-04 10:11".into(), agent: text.into(), model: text.into(), tokens_in: 1234, tokens_out: 56, cost: 12_000 }],
    }
}

fn providers() -> Vec<ProviderRow> {
    vec![
        ProviderRow { name: "google".into(), display: "Google".into(), configured: true, connection: Some(ConnectionRow { id: "cn_1".into(), account: Some("ann@example.com".into()), status: "needs_reconnecting".into() }) },
        ProviderRow { name: "github".into(), display: "GitHub".into(), configured: true, connection: None },
        ProviderRow { name: "slack".into(), display: "Slack".into(), configured: false, connection: None },
        ProviderRow { name: "notion".into(), display: "Notion".into(), configured: true, connection: Some(ConnectionRow { id: "cn_2".into(), account: None, status: "connected".into() }) },
    ]
}

fn tools() -> Vec<ToolRow> {
    vec![
        ToolRow { name: "google.gmail.search".into(), provider: "google".into(), description: "Search mail".into(), enabled: true, writes: false },
        ToolRow { name: "github.issues.list".into(), provider: "github".into(), description: "List issues".into(), enabled: false, writes: false },
        ToolRow { name: "google.gmail.draft".into(), provider: "google".into(), description: "Draft a mail".into(), enabled: false, writes: true },
    ]
}

fn proposals(text: &str) -> Vec<ProposalRow> {
    vec![ProposalRow { number: 7, tool: "google.gmail.send".into(), target: "bob@example.com".into(), text: text.into(), from_tool_result: true }, ProposalRow { number: 8, tool: "slack.post".into(), target: "#general".into(), text: "hi".into(), from_tool_result: false }]
}

fn agent_html(text: &str) -> String {
    let detail = AgentDetail { id: "ag_1".into(), name: text.into(), state: "running".into(), tier: "small".into(), model: "claude-x".into() };
    let memory = vec![MemoryLine { file: "MEMORY.md".into(), line: 3, text: text.into() }, MemoryLine { file: "memory/2024-05-01.md".into(), line: 1, text: "likes tea".into() }];
    agent_page(&tenant(), &AgentPage { agent: &detail, gateway_query: "agent=ag_1&ticket=abc", soul: text, user: text, memory: &memory, persona_error: Some(text) })
}

/// Every page, rendered with sample data (`text` in the free-text fields).
fn all_pages(text: &str) -> Vec<(&'static str, String)> {
    let admin = frame(Nav::Admin);
    vec![
        ("login", login_page(Some(text), text, CSRF)),
        ("agents", agents_page(&tenant(), &agent_rows(text), &DeployForm { name: text.into(), error: Some("Taken.".into()), telegram_bot: Some(text.into()), telegram: true })),
        ("agents-empty", agents_page(&tenant(), &[], &DeployForm::default())),
        ("agent", agent_html(text)),
        ("agent-empty", agent_page(&tenant(), &AgentPage { agent: &AgentDetail { id: "a".into(), name: "A".into(), state: "stopped".into(), tier: "t".into(), model: "m".into() }, gateway_query: "", soul: "", user: "", memory: &[], persona_error: None })),
        ("usage", usage_page(&tenant(), &usage(text))),
        ("usage-empty", usage_page(&tenant(), &UsageView::default())),
        ("integrations", integrations_page(&tenant(), &providers(), &tools(), &proposals(text))),
        ("integrations-empty", integrations_page(&tenant(), &[], &[], &[])),
        ("telegram-nobot", telegram_page(&tenant(), &TelegramView { error: Some(text.into()), ..Default::default() })),
        ("telegram", telegram_page(&tenant(), &TelegramView { bot_username: Some("acme_bot".into()), pairing_code: Some("K7Q2".into()), paired: vec![PairedRow { id: "m_9".into(), name: text.into(), external_id: "12345".into() }], error: None })),
        ("members", members_page(&tenant(), &MembersView { members: vec![MemberRow { id: "m_1".into(), kind: "password".into(), name: "Ann".into(), external_id: "ann@example.com".into(), you: true }, MemberRow { id: "m_2".into(), kind: "telegram".into(), name: text.into(), external_id: "777".into(), you: false }], form_email: text.into(), form_name: text.into(), error: Some("Too short.".into()) })),
        ("admin", admin_page(&admin, &AdminView {
            nodes: vec![NodeRow { name: "n1".into(), state: "ready".into(), agents: 3, committed_mib: 1536, capacity_mib: 4096 }, NodeRow { name: "n2".into(), state: "down".into(), agents: 0, committed_mib: 0, capacity_mib: 0 }],
            agents: vec![AdminAgentRow { tenant: text.into(), tenant_id: "t_1".into(), id: "ag_1".into(), name: text.into(), state: "crashloop".into(), crashloop: true, last_error: Some(text.into()) }, AdminAgentRow { tenant: "B".into(), tenant_id: "t_2".into(), id: "ag_2".into(), name: "b".into(), state: "running".into(), crashloop: false, last_error: None }],
            top_spenders: vec![SpenderRow { tenant: "Acme".into(), tenant_id: "t_1".into(), spent: 9_990_000 }],
        })),
        ("admin-empty", admin_page(&admin, &AdminView::default())),
        ("tenants", tenants_page(&admin, &TenantsView { tenants: vec![TenantRow { id: "t_1".into(), name: text.into(), plan: "pro".into(), balance: -500_000, agents: 2 }, TenantRow { id: "t_2".into(), name: "Old".into(), plan: "legacy".into(), balance: 0, agents: 0 }], plans: vec!["free".into(), "pro".into()], form_name: text.into(), form_email: text.into(), error: Some("Email taken.".into()) })),
        ("audit", audit_page(&admin, &[AuditRow { at: "2024-05-04T10:11:12Z".into(), tenant: Some("t_1".into()), agent: None, actor: text.into(), action: "agent.deploy".into(), reason: text.into() }], &AuditFilter { tenant: text.into(), action: "deploy".into() })),
        ("audit-empty", audit_page(&admin, &[], &AuditFilter::default())),
        ("error", error_page(&frame(Nav::None), 404, text)),
        ("error-tenant", error_page(&tenant(), 500, "Something broke.")),
    ]
}

/// One start tag: its name and attributes (maud double-quotes every value and escapes `"`).
struct Tag { name: String, attrs: Vec<(String, String)> }

impl Tag {
    fn get(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn tags(html: &str) -> Vec<Tag> {
    let b = html.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' || i + 1 >= b.len() || !b[i + 1].is_ascii_alphabetic() { i += 1; continue; }
        i += 1;
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' && b[i] != b'/' { i += 1; }
        let mut tag = Tag { name: html[start..i].to_ascii_lowercase(), attrs: Vec::new() };
        loop {
            while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') { i += 1; }
            if i >= b.len() || b[i] == b'>' { i += 1; break; }
            let ns = i;
            while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'>' { i += 1; }
            let name = html[ns..i].to_ascii_lowercase();
            let mut value = String::new();
            if i < b.len() && b[i] == b'=' {
                i += 1;
                assert_eq!(b[i], b'"', "unquoted attribute {name} in {}", &html[start..(start + 80).min(html.len())]);
                i += 1;
                let vs = i;
                while b[i] != b'"' { i += 1; }
                value = html[vs..i].to_owned();
                i += 1;
            }
            tag.attrs.push((name, value));
        }
        out.push(tag);
    }
    out
}

#[test]
fn credits_format() {
    assert_eq!(credits(0), "0.00 credits");
    assert_eq!(credits(1_234_567), "1.23 credits");
    assert_eq!(credits(12_345_000_000), "12,345.00 credits");
    assert_eq!(credits(-500_000), "-0.50 credits");
    assert_eq!(credits(-5_000), "0.00 credits");
    assert_eq!(credits(1_999_999), "1.99 credits");
    assert_eq!(credits(-1_999_999), "-1.99 credits");
    assert_eq!(credits(1_234_567_890_000_000), "1,234,567,890.00 credits");
    assert_eq!(credits(999_000_000), "999.00 credits");
    assert_eq!(credits(i64::MIN), "-9,223,372,036,854.77 credits");
    assert_eq!(number(1_234_567), "1,234,567");
    assert_eq!(number(-12), "-12");
}

#[test]
fn user_text_is_escaped() {
    for (name, html) in [("agent", agent_html(XSS)), ("agents", agents_page(&tenant(), &agent_rows(XSS), &DeployForm { name: XSS.into(), error: Some(XSS.into()), telegram_bot: Some(XSS.into()), telegram: false })), ("usage", usage_page(&tenant(), &usage(XSS))), ("integrations", integrations_page(&tenant(), &providers(), &tools(), &proposals(XSS)))] {
        assert!(!html.contains("<script>alert"), "{name}: raw script");
        assert!(!html.contains("\"onmouseover="), "{name}: attribute break-out");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;onmouseover=alert(2) x='y' &amp; z"), "{name}: escaped text missing");
    }
    for (name, html) in all_pages(XSS) {
        assert!(!html.contains("<script>alert") && !html.contains("\"onmouseover="), "{name}");
    }
    // The persona and memory land where they should: in the textareas and the forget form.
    let html = agent_html(XSS);
    assert!(html.contains("<textarea id=\"persona-soul\""));
    assert!(html.contains("name=\"text\" value=\"&lt;script&gt;"));
    assert!(integrations_page(&tenant(), &providers(), &tools(), &proposals(XSS)).contains("<pre class=\"proposal-text\">&lt;script&gt;"));
}

#[test]
fn every_post_form_carries_the_csrf_token() {
    let hidden = format!("<input type=\"hidden\" name=\"csrf\" value=\"{CSRF}\">");
    let mut forms = 0;
    for (name, html) in all_pages("plain text") {
        assert!(!html.contains("method=\"POST\""), "{name}: uppercase method");
        for (at, _) in html.match_indices("<form") {
            let end = html[at..].find("</form>").expect("closed form") + at;
            let form = &html[at..end];
            let open = &form[..form.find('>').unwrap()];
            if open.contains("method=\"post\"") {
                assert!(form.contains(&hidden), "{name}: a post form without the token: {open}");
                assert!(form.starts_with("<form method=\"post\"") || form.contains(" method=\"post\""), "{name}");
                forms += 1;
            } else {
                assert!(open.contains("method=\"get\"") || open.contains("id=\"chat-form\""), "{name}: a form that neither posts nor is the GET filter or the chat: {open}");
            }
        }
        // Forms with a `method="post"` on a `<form` not first: none; every post form was counted by its tag.
        let posts = tags(&html).iter().filter(|t| t.name == "form" && t.get("method") == Some("post")).count();
        assert_eq!(posts, html.matches("<form method=\"post\"").count(), "{name}");
        let with_token = tags(&html).iter().filter(|t| t.name == "input" && t.get("name") == Some("csrf")).filter(|t| t.get("value") == Some(CSRF) && t.get("type") == Some("hidden")).count();
        assert_eq!(posts, with_token, "{name}: one token per post form");
    }
    assert!(forms > 40, "{forms}");
}

#[test]
fn no_inline_script_style_or_handlers() {
    for (name, html) in all_pages(XSS) {
        for t in tags(&html) {
            if t.name == "script" { assert!(t.get("src").is_some_and(|s| s.starts_with("/console/assets/")), "{name}: inline script"); }
            for (a, _) in &t.attrs {
                assert!(a != "style", "{name}: style attribute on {}", t.name);
                assert!(!(a.starts_with("on") && a.len() > 2 && a[2..].bytes().all(|c| c.is_ascii_lowercase())), "{name}: handler {a} on {}", t.name);
            }
            assert!(t.name != "style", "{name}: style element");
        }
        // The plain-text checks of the brief, on the whole page.
        assert!(!html.contains(" style="), "{name}");
        for (at, _) in html.match_indices("<script") { assert!(html[at..at + html[at..].find('>').unwrap()].contains("src="), "{name}"); }
        let b = html.as_bytes();
        for (at, _) in html.match_indices(" on") {
            let rest = &b[at + 3..];
            let n = rest.iter().take_while(|c| c.is_ascii_lowercase()).count();
            assert!(!(n > 0 && rest.get(n) == Some(&b'=')), "{name}: ` on…=` at {}", &html[at..(at + 40).min(html.len())]);
        }
        assert!(!html.contains("javascript:"), "{name}");
        assert!(html.starts_with("<!DOCTYPE html><html lang=\"en\">"), "{name}");
        assert!(html.contains("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"), "{name}");
        assert!(html.contains("<script src=\"/console/assets/console.js\" defer></script>"), "{name}");
    }
}

#[test]
fn labels_point_at_fields() {
    for (name, html) in all_pages("x") {
        let ts = tags(&html);
        let ids: Vec<&str> = ts.iter().filter_map(|t| t.get("id")).collect();
        let mut seen = std::collections::HashSet::new();
        for id in &ids { assert!(seen.insert(*id), "{name}: duplicate id {id}"); }
        for t in &ts {
            if t.name == "label" { let f = t.get("for").unwrap_or_else(|| panic!("{name}: label without for")); assert!(ids.contains(&f), "{name}: label for {f}"); }
            if let Some(d) = t.get("aria-describedby") { for id in d.split(' ') { assert!(ids.contains(&id), "{name}: describedby {id}"); } }
            if matches!(t.name.as_str(), "input" | "textarea" | "select") && t.get("type") != Some("hidden") && t.get("type") != Some("checkbox") {
                let id = t.get("id").unwrap_or_else(|| panic!("{name}: field without id"));
                assert!(ts.iter().any(|l| l.name == "label" && l.get("for") == Some(id)), "{name}: no label for {id}");
            }
        }
    }
}

#[test]
fn pages_have_what_the_browser_tests_use() {
    let html = agent_html("Bob");
    for s in ["<section class=\"card\" id=\"chat\" data-gateway-query=\"agent=ag_1&amp;ticket=abc\"", "<ol id=\"chat-log\" aria-live=\"polite\"", "<form id=\"chat-form\">", "<textarea id=\"chat-input\" name=\"message\"", "<button id=\"chat-abort\" type=\"button\" hidden disabled>Abort</button>", "<p id=\"chat-status\"", "<noscript>", "<script src=\"/console/assets/chat.js\" defer></script>", "action=\"/console/agents/ag_1/start\"", "action=\"/console/agents/ag_1/stop\"", "action=\"/console/agents/ag_1/persona\"", "action=\"/console/agents/ag_1/memory/forget\"", "name=\"file\" value=\"MEMORY.md\"", "name=\"line\" value=\"3\"", "role=\"alert\""] {
        assert!(html.contains(s), "agent page lacks {s}");
    }
    let html = agents_page(&tenant(), &agent_rows("Bob"), &DeployForm { name: "My bot".into(), error: Some("Taken.".into()), telegram_bot: None, telegram: false });
    assert!(!html.contains("name=\"telegram\""), "no bot, no Telegram choice");
    let with_bot = agents_page(&tenant(), &[], &DeployForm { telegram_bot: Some("family_bot".into()), telegram: true, ..DeployForm::default() });
    assert!(with_bot.contains("<input id=\"deploy-telegram\" type=\"checkbox\" name=\"telegram\" value=\"on\" checked") && with_bot.contains("Answer on Telegram as @family_bot"), "{with_bot}");
    for s in ["href=\"/console/agents/ag_1\"", "<span class=\"badge state-running\">running</span>", "badge state-crashloop", "action=\"/console/deploy\"", "name=\"name\" value=\"My bot\" required minlength=\"1\" maxlength=\"64\"", "aria-describedby=\"deploy-name-error\"", "<p class=\"field-error\" id=\"deploy-name-error\">Taken.</p>", ">Deploy</button>", "aria-current=\"page\">Agents", "action=\"/console/logout\"", "action=\"/console/logout-all\"", "href=\"/console/telegram\"", "href=\"/console/members\"", "href=\"/console/integrations\"", "href=\"/console/usage\""] {
        assert!(html.contains(s), "agents page lacks {s}");
    }
    assert!(agents_page(&tenant(), &[], &DeployForm::default()).contains("No agents yet: give your first one a name and press Deploy."));
    let html = login_page(Some("Wrong password."), "ann@example.com", CSRF);
    for s in ["action=\"/console/login\"", "action=\"/console/login/admin\"", "name=\"email\" value=\"ann@example.com\" autocomplete=\"username\"", "name=\"password\" autocomplete=\"current-password\"", "type=\"password\" name=\"admin_key\"", "role=\"alert\">Wrong password.</div>"] {
        assert!(html.contains(s), "login page lacks {s}");
    }
    assert!(!html.contains("<a "), "the login page has no links");
    let html = integrations_page(&tenant(), &providers(), &tools(), &proposals("Send it"));
    for s in ["action=\"/console/integrations/github/connect\"", ">Connect GitHub</button>", "Not set up on this server.", "action=\"/console/integrations/google/connect\"", ">Reconnect</button>", "action=\"/console/integrations/connections/cn_1/disconnect\"", "action=\"/console/integrations/connections/cn_2/disconnect\"", "action=\"/console/integrations/tools\"", "name=\"tools\" value=\"google.gmail.search\" id=\"tool-0\" checked", "name=\"tools\" value=\"github.issues.list\" id=\"tool-1\" aria-describedby", "(proposes writes you approve)", "This came from content the agent read, not from you.", "action=\"/console/proposals/7/approve\"", "action=\"/console/proposals/7/reject\"", "<pre class=\"proposal-text\">Send it</pre>", "data-confirm=\"Disconnect Google?\""] {
        assert!(html.contains(s), "integrations page lacks {s}");
    }
    assert_eq!(html.matches("This came from content the agent read").count(), 1);
    // Grouped by provider: the two Google tools in one fieldset, before GitHub's.
    let g = html.find("<legend>Google</legend>").unwrap();
    let gh = html.find("<legend>GitHub</legend>").unwrap();
    assert!(g < html.find("value=\"google.gmail.draft\"").unwrap() && html.find("value=\"google.gmail.draft\"").unwrap() < gh);
    let html = telegram_page(&tenant(), &TelegramView::default());
    assert!(html.contains("action=\"/console/telegram/bot\"") && html.contains("type=\"password\" name=\"token\""));
    let html = telegram_page(&tenant(), &TelegramView { bot_username: Some("acme_bot".into()), pairing_code: Some("K7Q2".into()), paired: vec![PairedRow { id: "m_9".into(), name: "Bo".into(), external_id: "1".into() }], error: None });
    for s in ["@acme_bot", "action=\"/console/telegram/bot/delete\"", "action=\"/console/telegram/pairing-code\"", "<p class=\"pairing-code\" id=\"pairing-code\">K7Q2</p>", "<code>/pair K7Q2</code> to @acme_bot", "action=\"/console/members/m_9/remove\""] {
        assert!(html.contains(s), "telegram page lacks {s}");
    }
    let html = members_page(&tenant(), &MembersView { members: vec![MemberRow { id: "m_1".into(), kind: "password".into(), name: "Ann".into(), external_id: "a@x".into(), you: true }, MemberRow { id: "m_2".into(), kind: "password".into(), name: "Bo".into(), external_id: "b@x".into(), you: false }], form_email: "c@x".into(), form_name: "Cy".into(), error: Some("No.".into()) });
    assert!(!html.contains("/console/members/m_1/remove") && html.contains("/console/members/m_2/remove"));
    for s in ["action=\"/console/members\"", "name=\"email\" value=\"c@x\"", "name=\"name\" value=\"Cy\"", "name=\"password\" required minlength=\"12\"", "At least 12 characters.", "(you)"] {
        assert!(html.contains(s), "members page lacks {s}");
    }
    let html = tenants_page(&frame(Nav::Admin), &TenantsView { tenants: vec![TenantRow { id: "t_1".into(), name: "Acme".into(), plan: "pro".into(), balance: 2_500_000, agents: 1 }], plans: vec!["free".into(), "pro".into()], form_name: "New".into(), form_email: "n@x".into(), error: None });
    for s in ["action=\"/console/admin/tenants/t_1/plan\"", "<select id=\"plan-0\" name=\"plan\">", "<option value=\"pro\" selected>pro</option>", "action=\"/console/admin/tenants/t_1/credits\"", "name=\"credits\" inputmode=\"decimal\"", "action=\"/console/admin/tenants\"", "name=\"name\" value=\"New\"", "name=\"email\" value=\"n@x\"", "2.50 credits", "aria-current=\"page\">Tenants", "href=\"/console/admin/audit\""] {
        assert!(html.contains(s), "tenants page lacks {s}");
    }
    let html = admin_page(&frame(Nav::Admin), &AdminView { nodes: vec![NodeRow { name: "n1".into(), state: "ready".into(), agents: 3, committed_mib: 1536, capacity_mib: 4096 }], agents: vec![AdminAgentRow { tenant: "Acme".into(), tenant_id: "t_1".into(), id: "ag_1".into(), name: "a".into(), state: "crashloop".into(), crashloop: true, last_error: Some("exit 1".into()) }], top_spenders: vec![SpenderRow { tenant: "Acme".into(), tenant_id: "t_1".into(), spent: 9_990_000 }] });
    for s in ["<meter min=\"0\" max=\"4096\"", "value=\"1536\"", "<tr class=\"crashloop\" data-agent-id=\"ag_1\">", "exit 1", "9.99 credits", "aria-current=\"page\">Overview"] {
        assert!(html.contains(s), "admin page lacks {s}");
    }
    let html = audit_page(&frame(Nav::Admin), &[], &AuditFilter { tenant: "t_1".into(), action: "deploy".into() });
    assert!(html.contains("method=\"get\" action=\"/console/admin/audit\"") && html.contains("name=\"tenant\" value=\"t_1\"") && html.contains("name=\"action\" value=\"deploy\""));
    let html = error_page(&frame(Nav::None), 404, "No such agent.");
    assert!(html.contains("No such agent.") && html.contains("href=\"/console\"") && html.contains("404") && !html.contains("/console/logout"));
}

fn bars(svg: &str) -> Vec<f64> {
    tags(svg).iter().filter(|t| t.name == "rect" && t.get("class").is_some_and(|c| c.split(' ').any(|w| w == "bar"))).map(|t| t.get("height").unwrap().parse().unwrap()).collect()
}

#[test]
fn spend_chart_bars_cap_and_labels() {
    let u = usage("x");
    let svg = spend_chart(&u);
    assert!(svg.starts_with("<svg class=\"spend-chart\" id=\"spend-chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 640 240\" role=\"img\" aria-label=\"Spent 3.20 credits this month of 50.00 credits\">"), "{svg}");
    assert!(svg.contains("<title>Spent 3.20 credits this month of 50.00 credits</title>"));
    let h = bars(&svg);
    assert_eq!(h.len(), 4);
    assert!((h[1] / h[0] - 2.0).abs() < 0.02 && (h[3] / h[0] - 4.0).abs() < 0.02 && h[2] == 0.0, "{h:?}");
    assert!(svg.contains("class=\"cap-line\"") && svg.contains("stroke-dasharray=\"6 4\""));
    assert!(svg.contains("<title>2024-05-04: 4.00 credits</title>"));
    assert!(svg.contains("<title>Daily cap: 5.00 credits</title>"));
    assert!(svg.contains(">May 1</text>"));
    // The y axis reaches the cap (5 credits: steps of 2, up to 8).
    assert!(svg.contains(">8.00</text>") && svg.contains(">0.00</text>"), "{svg}");
    // The cap line sits where 5 of 8 credits is, above the 4-credit bar.
    let cap_y: f64 = tags(&svg).iter().find(|t| t.get("class") == Some("cap-line")).unwrap().get("y1").unwrap().parse().unwrap();
    assert!((cap_y - (crate::chart::TOP + crate::chart::PLOT_H * (1.0 - 5.0 / 8.0))).abs() < 0.1, "{cap_y}");
    // Without a cap: no line, bars taller (the axis ends at 4).
    let no_cap = spend_chart(&UsageView { daily_cap: None, monthly_cap: None, ..usage("x") });
    assert!(!no_cap.contains("cap-line") && no_cap.contains("aria-label=\"Spent 3.20 credits this month\""));
    assert!(bars(&no_cap)[3] > h[3]);
    // A day over the cap is marked.
    let over = spend_chart(&UsageView { daily_cap: Some(1_500_000), ..usage("x") });
    assert_eq!(over.matches("class=\"bar over\"").count(), 2);
    // The usage page embeds it, with the month line.
    let page = usage_page(&tenant(), &u);
    assert!(page.contains("<svg class=\"spend-chart\"") && page.contains("This month: 3.20 credits of 50.00 credits (monthly cap)") && page.contains("12,345.00 credits"));
    assert!(usage_page(&tenant(), &UsageView { monthly_cap: None, ..usage("x") }).contains("This month: 3.20 credits (no monthly cap)"));
}

#[test]
fn spend_chart_empty() {
    for days in [vec![], vec![DaySpend { date: "2024-05-01".into(), spent: 0 }]] {
        let svg = spend_chart(&UsageView { days, daily_cap: Some(5_000_000), ..Default::default() });
        assert!(svg.contains("No spending yet") && bars(&svg).is_empty() && !svg.contains("<rect") && svg.contains("role=\"img\""), "{svg}");
    }
    // Small and huge amounts still get a readable axis.
    let small = spend_chart(&UsageView { days: vec![DaySpend { date: "2024-05-01".into(), spent: 3 }], ..Default::default() });
    assert!(small.contains(">0.04</text>"), "{small}");
    let huge = spend_chart(&UsageView { days: vec![DaySpend { date: "d".into(), spent: i64::MAX / 2 }], ..Default::default() });
    assert_eq!(bars(&huge).len(), 1);
    let many: Vec<DaySpend> = (1..=31).map(|d| DaySpend { date: format!("2024-05-{d:02}"), spent: d * 100_000 }).collect();
    let svg = spend_chart(&UsageView { days: many, ..Default::default() });
    assert_eq!(bars(&svg).len(), 31);
    let labels = tags(&svg).iter().filter(|t| t.get("class") == Some("x-label")).count();
    assert!((4..=8).contains(&labels), "{labels}");
}

#[test]
fn assets_and_headers() {
    let (ct, css) = asset("console.css").unwrap();
    assert_eq!(ct, "text/css; charset=utf-8");
    assert!(std::str::from_utf8(css).unwrap().contains(":focus-visible") && std::str::from_utf8(css).unwrap().contains("max-width: 700px"));
    for js in ["chat.js", "console.js"] {
        let (ct, body) = asset(js).unwrap();
        assert_eq!(ct, "text/javascript; charset=utf-8");
        let body = std::str::from_utf8(body).unwrap();
        assert!(body.contains("\"use strict\";"));
        assert!(!body.contains("innerHTML") && !body.contains("eval(") && !body.contains("new Function") && !body.contains("insertAdjacentHTML") && !body.contains("document.write"), "{js}");
    }
    let chat = std::str::from_utf8(asset("chat.js").unwrap().1).unwrap();
    for s in ["\"/gateway/connect?\"", "connect.challenge", "minProtocol: PROTOCOL", "\"chat.history\"", "\"chat.send\"", "\"chat.abort\"", "idempotencyKey", "\"agent:main:main\"", "dataset.runId", "dataset.state", "deltaText", "errorMessage", "\"Connecting…\"", "\"Connected\"", "\"Disconnected — reload the page\""] {
        assert!(chat.contains(s), "chat.js lacks {s}");
    }
    assert!(asset("../Cargo.toml").is_none() && asset("").is_none() && asset("chat.JS").is_none());
    assert_eq!(asset_names().count(), 3);
    let h = security_headers();
    let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
    assert_eq!(get("Content-Security-Policy"), Some("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"));
    assert_eq!(get("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(get("X-Frame-Options"), Some("DENY"));
    assert_eq!(get("Referrer-Policy"), Some("no-referrer"));
    assert_eq!(get("Permissions-Policy"), Some("camera=(), microphone=(), geolocation=()"));
    assert_eq!(get("Cross-Origin-Opener-Policy"), Some("same-origin"));
    assert_eq!(get("Cache-Control"), Some("no-store"));
    assert_eq!(asset_headers().iter().find(|(k, _)| *k == "Cache-Control").map(|(_, v)| *v), Some("max-age=300"));
    assert_eq!(asset_headers().len(), h.len());
}

#[test]
fn flash_and_nav() {
    let mut f = tenant();
    f.flash = Some(Flash { kind: FlashKind::Error, text: "Could not <deploy>.".into() });
    let html = agents_page(&f, &[], &DeployForm::default());
    assert!(html.contains("<div class=\"flash error\" id=\"flash\" role=\"alert\">Could not &lt;deploy&gt;.</div>"));
    assert!(html.contains("<span class=\"tenant\">Acme</span>") && html.contains("<span class=\"member\">Ann</span>"));
    assert!(html.contains(">Sign out</button>") && html.contains(">Sign out everywhere</button>"));
    let admin = admin_page(&frame(Nav::Admin), &AdminView::default());
    assert!(admin.contains("<div class=\"flash ok\" id=\"flash\" role=\"status\">Saved.</div>"));
    assert!(admin.contains(">Sign out</button>") && !admin.contains("logout-all") && !admin.contains("/console/agents"));
    assert!(admin.contains("<title>Page · clawpen</title>") && admin.contains("<h1>Page</h1>"));
}
