//! The broker against clawpen-standin's Google, GitHub, Slack, Trello and Notion (their real
//! paths, shapes and errors): the whole consent through the stand-in's authorize redirect, every
//! read tool, a proposal approved, refreshing after expiry, and a revoked grant.

use std::sync::Arc;

use clawpen_broker::config::{BrokerConfig, ProviderConfig};
use clawpen_broker::{Broker, Caller, Provider, ToolOutcome};
use clawpen_core::ids::{AgentId, TenantId};
use clawpen_standin::{ProviderKind, ProviderStandin, ProviderStandinConfig};
use clawpen_store::Store;
use clawpen_vault::{Keyring, Vault};
use serde_json::{json, Value};

struct Setup {
    broker: Arc<Broker>,
    standin: ProviderStandin,
    tenant: TenantId,
    _dir: tempfile::TempDir,
}

async fn setup(kind: ProviderKind, provider: Provider) -> Setup {
    let standin = ProviderStandin::start(kind, ProviderStandinConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "standin-client-secret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut p = ProviderConfig::at(provider, &standin.base_url(), "standin-client-id", "UNUSED");
    p.client_secret_env = None;
    p.client_secret_file = Some(secret);
    let mut config = BrokerConfig { redirect_uri: Some("https://clawpen.test/api/v1/integrations/callback".into()), cache_secs: 0, ..BrokerConfig::default() };
    config.providers.set(provider, p);
    let store = Store::for_testing(dir.path()).await.unwrap();
    let tenant = store.create_tenant("t", "free", 100_000).await.unwrap().id;
    let vault = Vault::new(Keyring::from_env_value(&"6b".repeat(32)).unwrap());
    let broker = Arc::new(Broker::new(store, vault, config).unwrap());
    let tools: Vec<String> = broker.catalogue().into_iter().filter(|t| t.provider == provider.as_str()).map(|t| t.name).collect();
    broker.enable_tools(&tenant, &tools, None).await.unwrap();
    Setup { broker, standin, tenant, _dir: dir }
}

impl Setup {
    /// Consent through the stand-in's authorize endpoint, which redirects at once.
    async fn connect(&self) -> clawpen_broker::ConnectionView {
        let url = self.broker.begin_connect(&self.tenant, "mb_owner", self.standin_provider()).await.unwrap();
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let res = client.get(&url).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 302, "{}", res.text().await.unwrap_or_default());
        let location = reqwest::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
        let q: std::collections::HashMap<String, String> = location.query_pairs().into_owned().collect();
        assert!(!q.contains_key("error"), "{q:?}");
        self.broker.finish_connect(&q["state"], &q["code"], Some("mb_owner")).await.unwrap()
    }

    fn standin_provider(&self) -> &'static str {
        match self.standin.kind() {
            ProviderKind::Google => "google",
            ProviderKind::Github => "github",
            ProviderKind::Slack => "slack",
            ProviderKind::Trello => "trello",
            ProviderKind::Notion => "notion",
        }
    }

    async fn call(&self, tool: &str, args: Value) -> ToolOutcome {
        let caller = Caller { tenant: self.tenant.clone(), agent: AgentId::new() };
        self.broker.call(&caller, "run_1", tool, args).await
    }
}

fn data(o: &ToolOutcome) -> &Value {
    assert!(o.ok && o.untrusted, "{o:?}");
    &o.content["untrusted_content"]
}

#[tokio::test(flavor = "multi_thread")]
async fn google() {
    let s = setup(ProviderKind::Google, Provider::Google).await;
    let c = s.connect().await;
    assert_eq!((c.status.as_str(), c.account.as_deref()), ("connected", Some("alice@example.com")));
    assert_eq!(c.scopes.len(), 4, "{:?}", c.scopes);

    let events = s.call("calendar_list_events", json!({"max_results": 5})).await;
    let first = &data(&events)["events"][0];
    assert_eq!(first["summary"], "Team standup");
    let id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(data(&s.call("calendar_get_event", json!({"event_id": id})).await)["summary"], "Team standup");

    let found = s.call("gmail_search", json!({"query": "lunch"})).await;
    let mail = &data(&found)["messages"][0];
    assert_eq!(mail["subject"], "Lunch on Friday?");
    let mid = mail["id"].as_str().unwrap().to_owned();
    let read = s.call("gmail_read", json!({"message_id": mid})).await;
    assert!(data(&read)["body"].as_str().unwrap().len() > 5, "{read:?}");
    let planning = s.call("gmail_search", json!({"query": "planning"})).await;
    let html = s.call("gmail_read", json!({"message_id": data(&planning)["messages"][0]["id"]})).await;
    assert!(!data(&html)["body"].as_str().unwrap().contains('<'), "multipart mail read as text");

    let files = s.call("drive_search", json!({"query": "planning"})).await;
    let doc = data(&files)["files"].as_array().unwrap().iter().find(|f| f["name"] == "Planning notes").unwrap().clone();
    let text = s.call("drive_read", json!({"file_id": doc["id"]})).await;
    assert!(!data(&text)["text"].as_str().unwrap().starts_with('\u{feff}'));

    let draft = s.call("gmail_create_draft", json!({"to": "bob@example.com", "subject": "Re: Lunch on Friday?", "body": "Friday works.", "in_reply_to": mid})).await;
    assert!(draft.ok, "{draft:?}");
    assert!(s.standin.writes().is_empty(), "nothing written before approval");
    let done = s.broker.approve(&s.tenant, "mb_owner", 1).await.unwrap();
    assert_eq!(done.state, "approved", "{done:?}");
    assert_eq!(s.standin.drafts().len(), 1);
    assert!(s.standin.sent_mail().is_empty(), "never sent");

    // Expired: one refresh; then the grant revoked: needs reconnecting, said once.
    s.standin.expire_access_tokens();
    assert!(s.call("calendar_list_events", json!({})).await.ok);
    assert_eq!(s.standin.token_requests("refresh_token"), 1);
    s.standin.revoke_all();
    let o = s.call("calendar_list_events", json!({"query": "x"})).await;
    assert_eq!(o.error.unwrap().code, "needs_reconnecting");
    assert_eq!(s.broker.connections(&s.tenant).await.unwrap()[0].status, "needs_reconnecting");
    s.broker.disconnect(&s.tenant, &c.id).await.unwrap();
    assert!(s.broker.connections(&s.tenant).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn github() {
    let s = setup(ProviderKind::Github, Provider::Github).await;
    let c = s.connect().await;
    assert_eq!(c.account.as_deref(), Some("alice"));
    let list = s.call("github_list_issues", json!({"repo": "acme/app", "state": "all"})).await;
    let items = data(&list)["items"].as_array().unwrap().clone();
    assert!(items.iter().any(|i| i["kind"] == "pull_request") && items.iter().any(|i| i["kind"] == "issue"), "{items:?}");
    let issue = s.call("github_read_issue", json!({"repo": "acme/app", "number": 1})).await;
    assert_eq!(data(&issue)["comments"][0]["user"], "bob");
    let missing = s.call("github_read_issue", json!({"repo": "acme/nope", "number": 1})).await;
    assert_eq!(missing.error.unwrap().code, "not_found");
    let o = s.call("github_comment", json!({"repo": "acme/app", "number": 1, "body": "Looking into it."})).await;
    assert!(o.ok, "{o:?}");
    assert!(s.standin.writes().is_empty());
    let done = s.broker.approve(&s.tenant, "mb_owner", 1).await.unwrap();
    assert_eq!(done.state, "approved", "{done:?}");
    assert_eq!(s.standin.writes().len(), 1);
    // Rotation: twenty calls after expiry, one refresh, and the connection still works after.
    s.standin.expire_access_tokens();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (b, t) = (s.broker.clone(), s.tenant.clone());
        tasks.push(tokio::spawn(async move { b.call(&Caller { tenant: t, agent: AgentId::new() }, "run_2", "github_list_issues", json!({"repo": "acme/app"})).await }));
    }
    for t in tasks {
        assert!(t.await.unwrap().ok);
    }
    assert_eq!(s.standin.token_requests("refresh_token"), 1);
    s.standin.expire_access_tokens();
    assert!(s.call("github_list_issues", json!({"repo": "acme/app"})).await.ok, "the rotated refresh token was kept");
    assert_eq!(s.standin.token_requests("refresh_token"), 2);
    s.broker.disconnect(&s.tenant, &c.id).await.unwrap();
    assert!(s.standin.requests().iter().any(|r| r.method == "DELETE" && r.path == "/applications/standin-client-id/grant" && r.status == 204));
}

#[tokio::test(flavor = "multi_thread")]
async fn slack() {
    let s = setup(ProviderKind::Slack, Provider::Slack).await;
    let c = s.connect().await;
    assert_eq!(c.status, "connected");
    let channels = s.call("slack_list_channels", json!({})).await;
    let general = data(&channels)["channels"].as_array().unwrap().iter().find(|c| c["name"] == "general").unwrap()["id"].as_str().unwrap().to_owned();
    let history = s.call("slack_read_channel", json!({"channel_id": general, "limit": 10})).await;
    let thread = data(&history)["messages"].as_array().unwrap().iter().find(|m| m["reply_count"].as_u64().unwrap_or(0) > 0).unwrap()["ts"].as_str().unwrap().to_owned();
    let replies = s.call("slack_read_thread", json!({"channel_id": general, "ts": thread})).await;
    assert!(data(&replies)["messages"].as_array().unwrap().len() >= 2);
    let reply = s.call("slack_prepare_reply", json!({"channel_id": general, "thread_ts": thread, "text": "On it"})).await;
    assert!(reply.ok && !reply.untrusted);
    assert!(s.standin.writes().is_empty(), "nothing posted");
    s.standin.expire_access_tokens();
    assert!(s.call("slack_list_channels", json!({})).await.ok);
    assert_eq!(s.standin.token_requests("refresh_token"), 1);
    s.broker.disconnect(&s.tenant, &c.id).await.unwrap();
    assert!(s.standin.requests().iter().any(|r| r.path == "/api/auth.revoke" && r.status == 200));
}

#[tokio::test(flavor = "multi_thread")]
async fn trello() {
    let s = setup(ProviderKind::Trello, Provider::Trello).await;
    let c = s.connect().await;
    assert_eq!(c.status, "connected");
    assert!(c.account.as_deref().is_some_and(|a| a.contains("@alice")), "{c:?}");
    assert_eq!(c.scopes, ["read:board:trello", "read:card:trello", "write:card:trello"], "offline_access is how a refresh token is asked for, not a scope");
    let authorize = s.standin.requests().into_iter().find(|r| r.path == "/authorize").unwrap();
    assert!(authorize.query.contains("code_challenge_method=S256") && authorize.query.contains("offline_access"), "{}", authorize.query);

    let boards = s.call("trello_list_boards", json!({})).await;
    let board = data(&boards)["boards"][0]["id"].as_str().unwrap().to_owned();
    let cards = s.call("trello_list_cards", json!({"board_id": board})).await;
    let cards = data(&cards).clone();
    let dentist = cards["cards"].as_array().unwrap().iter().find(|c| c["name"] == "Book the dentist").unwrap().clone();
    assert!(dentist["list"].is_string(), "{dentist}");
    let done = cards["lists"].as_array().unwrap().iter().find(|l| l["name"] == "Done").unwrap()["id"].as_str().unwrap().to_owned();
    let only = s.call("trello_list_cards", json!({"board_id": board, "list_id": done})).await;
    assert!(data(&only)["cards"].as_array().unwrap().iter().all(|c| c["list_id"] == done.as_str()));

    // A change is a proposal that names the card; approved, the card changes and nothing else.
    let bad = s.call("trello_update_card", json!({"card_id": dentist["id"]})).await;
    assert_eq!(bad.error.unwrap().code, "invalid_arguments", "a change of nothing");
    let closed = s.call("trello_update_card", json!({"card_id": dentist["id"], "closed": true})).await;
    assert!(closed.error.unwrap().message.contains("`closed`"), "archiving is no argument");
    let o = s.call("trello_update_card", json!({"card_id": dentist["id"], "list_id": done, "due_complete": true})).await;
    assert!(o.ok, "{o:?}");
    assert!(o.content["target"].as_str().unwrap().contains("Book the dentist"), "{o:?}");
    assert!(s.standin.writes().is_empty(), "nothing written before approval");
    let p = s.broker.approve(&s.tenant, "mb_owner", 1).await.unwrap();
    assert_eq!(p.state, "approved", "{p:?}");
    let updates = s.standin.trello_updates();
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(s.standin.writes().len(), 1, "only the card's PUT");
    assert!(s.standin.trello_other_writes().is_empty());
    let moved = s.call("trello_list_cards", json!({"board_id": board, "list_id": done})).await;
    assert!(data(&moved)["cards"].as_array().unwrap().iter().any(|c| c["name"] == "Book the dentist" && c["due_complete"] == true), "{moved:?}");

    // Rotating refresh tokens: twenty calls across an expiry, one refresh; still good after.
    s.standin.expire_access_tokens();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (b, t, board) = (s.broker.clone(), s.tenant.clone(), board.clone());
        tasks.push(tokio::spawn(async move { b.call(&Caller { tenant: t, agent: AgentId::new() }, "run_2", "trello_list_cards", json!({"board_id": board})).await }));
    }
    for t in tasks {
        assert!(t.await.unwrap().ok);
    }
    assert_eq!(s.standin.token_requests("refresh_token"), 1);
    s.standin.expire_access_tokens();
    assert!(s.call("trello_list_boards", json!({})).await.ok, "the rotated refresh token was kept");
    s.standin.revoke_all();
    s.standin.expire_access_tokens();
    assert_eq!(s.call("trello_list_boards", json!({})).await.error.unwrap().code, "needs_reconnecting");
    // No revoke endpoint: disconnecting deletes what clawpen holds and asks nothing of Trello.
    let before = s.standin.requests().len();
    s.broker.disconnect(&s.tenant, &c.id).await.unwrap();
    assert_eq!(s.standin.requests().len(), before);
    assert!(s.broker.connections(&s.tenant).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn notion() {
    let s = setup(ProviderKind::Notion, Provider::Notion).await;
    let c = s.connect().await;
    assert_eq!(c.status, "connected");
    assert!(c.account.as_deref().is_some_and(|a| a.contains("Alice")), "{c:?}");
    let token = s.standin.requests().into_iter().find(|r| r.path == "/v1/oauth/token").unwrap();
    assert!(token.authorization.as_deref().is_some_and(|a| a.starts_with("Basic ")) && !token.body.contains("standin-client-secret"), "the client authenticates with Basic: {token:?}");

    let found = s.call("notion_search", json!({"query": "lisbon"})).await;
    let page = data(&found)["results"][0].clone();
    assert_eq!(page["title"], "Trip to Lisbon", "{found:?}");
    let nodash = page["id"].as_str().unwrap().replace('-', "");
    let read = s.call("notion_read_page", json!({"page_id": nodash})).await;
    assert!(data(&read)["text"].as_str().unwrap().lines().count() >= 2, "{read:?}");
    let dashed = format!("/v1/pages/{}", page["id"].as_str().unwrap());
    assert!(s.standin.requests().iter().any(|r| r.path == dashed && r.status == 200), "an id without dashes is sent dashed");
    assert!(s.standin.writes().is_empty(), "a search is no write");

    let o = s.call("notion_comment", json!({"page_id": page["id"], "text": "Don't forget the sunscreen."})).await;
    assert!(o.ok, "{o:?}");
    assert!(o.content["target"].as_str().unwrap().contains("Trip to Lisbon"), "{o:?}");
    assert!(s.standin.notion_comments().is_empty());
    let p = s.broker.approve(&s.tenant, "mb_owner", 1).await.unwrap();
    assert_eq!(p.state, "approved", "{p:?}");
    assert_eq!(s.standin.notion_comments().len(), 1);
    assert!(s.standin.notion_other_writes().is_empty(), "the page itself was not edited");

    s.standin.expire_access_tokens();
    assert!(s.call("notion_search", json!({})).await.ok);
    assert_eq!(s.standin.token_requests("refresh_token"), 1);
    s.broker.disconnect(&s.tenant, &c.id).await.unwrap();
    assert!(s.standin.requests().iter().any(|r| r.path == "/v1/oauth/revoke" && r.status == 200), "revoked at Notion");
}
