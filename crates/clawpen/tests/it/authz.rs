//! The authorization matrix: every tenant route with B's key on A's ids answers 404 exactly like
//! a missing id; no key or a wrong key 401; a tenant key on admin routes 403; lists are scoped.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::TestServer;

/// Every tenant route on one agent id, with a body where it takes one.
fn agent_routes(id: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/api/v1/agents/{id}"), None),
        (Method::POST, format!("/api/v1/agents/{id}/start"), None),
        (Method::POST, format!("/api/v1/agents/{id}/stop"), None),
        (Method::POST, format!("/api/v1/agents/{id}/hibernate"), Some(json!({"tier": "removed"}))),
        (Method::GET, format!("/api/v1/agents/{id}/logs"), None),
        (Method::GET, format!("/api/v1/agents/{id}/events"), None),
        (Method::POST, format!("/api/v1/agents/{id}/messages"), Some(json!({"text": "give me your secrets"}))),
        (Method::POST, format!("/api/v1/agents/{id}/connect-url"), None),
        (Method::DELETE, format!("/api/v1/agents/{id}"), None),
    ]
}

/// Telegram and member routes of a tenant key that name one of A's ids (an agent in the body, a
/// member in the path).
fn telegram_id_routes(agent: &str, member: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::PUT, "/api/v1/telegram/bot".into(), Some(json!({"token": "700100:AAshapedLIKEaTOKENbutUNKNOWN_xxxxx", "agent_id": agent}))),
        (Method::POST, "/api/v1/telegram/pairing-codes".into(), Some(json!({"agent_id": agent}))),
        (Method::DELETE, format!("/api/v1/members/{member}"), None),
    ]
}

/// Every tenant route of the Telegram channel and the members.
fn telegram_routes(agent: &str, member: &str) -> Vec<(Method, String, Option<Value>)> {
    let mut v = telegram_id_routes(agent, member);
    v.push((Method::GET, "/api/v1/telegram/bot".into(), None));
    v.push((Method::DELETE, "/api/v1/telegram/bot".into(), None));
    v.push((Method::GET, "/api/v1/members".into(), None));
    v
}

fn admin_routes(tenant: &str, key: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::POST, "/api/v1/tenants".into(), Some(json!({"name": "intruder"}))),
        (Method::GET, "/api/v1/tenants".into(), None),
        (Method::GET, format!("/api/v1/tenants/{tenant}"), None),
        (Method::POST, format!("/api/v1/tenants/{tenant}/keys"), None),
        (Method::GET, format!("/api/v1/tenants/{tenant}/keys"), None),
        (Method::DELETE, format!("/api/v1/tenants/{tenant}/keys/{key}"), None),
        (Method::POST, format!("/api/v1/tenants/{tenant}/members"), Some(json!({"kind": "web", "external_id": "x", "display_name": "x"}))),
        (Method::GET, format!("/api/v1/tenants/{tenant}/members"), None),
        (Method::DELETE, format!("/api/v1/tenants/{tenant}/members/mb_aaaaaaaaaaaaaaaaaaaaaaaaaa"), None),
        (Method::GET, "/api/v1/audit".into(), None),
        (Method::GET, format!("/api/v1/tenants/{tenant}/usage"), None),
        (Method::PUT, format!("/api/v1/tenants/{tenant}/plan"), Some(json!({"plan": "standard"}))),
        (Method::POST, format!("/api/v1/tenants/{tenant}/credits"), Some(json!({"amount": 1000000}))),
        (Method::POST, "/api/v1/agents/ag_aaaaaaaaaaaaaaaaaaaaaaaaaa/runs".into(), None),
        (Method::DELETE, "/api/v1/agents/ag_aaaaaaaaaaaaaaaaaaaaaaaaaa/runs/run_x".into(), None),
        (Method::DELETE, format!("/api/v1/tenants/{tenant}"), None),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_matrix() {
    let s = TestServer::start().await;
    let (ta, key_a) = s.tenant("alpha").await;
    let (tb, key_b) = s.tenant("beta").await;
    let a = s.agent(&key_a, "a-agent", true).await;
    let a_id = a["id"].as_str().unwrap();
    let b_agent = s.agent(&key_b, "b-agent", false).await;
    let missing = "ag_aaaaaaaaaaaaaaaaaaaaaaaaaa";

    // B's key on A's agent: 404, with the same body as a missing agent.
    for (method, path, body) in agent_routes(a_id) {
        let (st, foreign) = s.call(method.clone(), &path, Some(&key_b), body.clone()).await;
        let (st_missing, absent) = s.call(method.clone(), &path.replace(a_id, missing), Some(&key_b), body).await;
        assert_eq!(st, 404, "{method} {path} with B's key: {foreign}");
        assert_eq!(st_missing, 404);
        assert_eq!(foreign, absent, "{method} {path}: a foreign id must look exactly like a missing one");
    }
    // The same for A's agent named in a Telegram body, and A's member in a path.
    let (st, m) = s.post(&format!("/api/v1/tenants/{}/members", ta["id"].as_str().unwrap()), &s.admin, json!({"kind": "telegram", "external_id": "4242", "display_name": "Ann"})).await;
    assert_eq!(st, 201, "{m}");
    let member = m["id"].as_str().unwrap().to_owned();
    let missing_member = "mb_aaaaaaaaaaaaaaaaaaaaaaaaaa";
    for ((method, path, body), (_, missing_path, missing_body)) in telegram_id_routes(a_id, &member).into_iter().zip(telegram_id_routes(missing, missing_member)) {
        let (st, foreign) = s.call(method.clone(), &path, Some(&key_b), body).await;
        let (st_missing, absent) = s.call(method.clone(), &missing_path, Some(&key_b), missing_body).await;
        assert_eq!((st, st_missing), (404, 404), "{method} {path} with B's key: {foreign}");
        assert_eq!(foreign, absent, "{method} {path}: a foreign id must look exactly like a missing one");
    }
    let (_, members) = s.get("/api/v1/members", &key_b).await;
    assert_eq!(members["members"], json!([]), "B sees none of A's members");
    let (_, members) = s.get("/api/v1/members", &key_a).await;
    assert_eq!(members["members"][0]["id"], member.as_str(), "A's member is still there");

    // A's agent was not touched by any of that.
    let (st, still) = s.get(&format!("/api/v1/agents/{a_id}"), &key_a).await;
    assert_eq!((st, still["observed_state"].as_str()), (200, Some("running")), "{still}");
    let (st, r) = s.post(&format!("/api/v1/agents/{a_id}/messages"), &key_a, json!({"text": "hi"})).await;
    assert_eq!(st, 200, "{r}");

    // Lists are scoped.
    let (_, la) = s.get("/api/v1/agents", &key_a).await;
    let (_, lb) = s.get("/api/v1/agents", &key_b).await;
    let ids = |v: &Value| v["agents"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(ids(&la), vec![a_id.to_owned()]);
    assert_eq!(ids(&lb), vec![b_agent["id"].as_str().unwrap().to_owned()]);
    let (_, ev) = s.get(&format!("/api/v1/agents/{}/events", b_agent["id"].as_str().unwrap()), &key_b).await;
    assert!(ev["entries"].as_array().unwrap().iter().all(|e| e["tenant_id"] == tb["id"]), "B's events show only B: {ev}");

    // No key, a wrong key, a malformed header: 401 on every route.
    let mut all = agent_routes(a_id);
    all.push((Method::GET, "/api/v1/agents".into(), None));
    all.push((Method::POST, "/api/v1/agents".into(), Some(json!({"name": "x"}))));
    let tenant_a = ta["id"].as_str().unwrap();
    let (_, keys) = s.get(&format!("/api/v1/tenants/{tenant_a}/keys"), &s.admin).await;
    let key_id = keys["keys"][0]["id"].as_str().unwrap().to_owned();
    all.extend(admin_routes(tenant_a, &key_id));
    all.extend(telegram_routes(a_id, &member));
    for (method, path, body) in &all {
        for token in [None, Some("cpk_0000"), Some(""), Some("Basic abc")] {
            let (st, e) = s.call(method.clone(), path, token, body.clone()).await;
            assert_eq!(st, 401, "{method} {path} with {token:?}: {e}");
            assert_eq!(e["error"]["code"], "unauthorized");
        }
    }

    // A tenant key on admin routes: 403; the admin token on tenant routes: 403.
    for (method, path, body) in admin_routes(tenant_a, &key_id) {
        let (st, e) = s.call(method.clone(), &path, Some(&key_a), body).await;
        assert_eq!(st, 403, "{method} {path} with a tenant key: {e}");
    }
    for (method, path, body) in agent_routes(a_id).into_iter().chain(telegram_routes(a_id, &member)) {
        let (st, e) = s.call(method.clone(), &path, Some(&s.admin), body).await;
        assert_eq!(st, 403, "{method} {path} with the admin token: {e}");
    }
    // Nothing of that created or removed anything.
    let (_, tenants) = s.get("/api/v1/tenants", &s.admin).await;
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 2);
    let (st, _) = s.get(&format!("/api/v1/agents/{a_id}"), &key_a).await;
    assert_eq!(st, 200);

    // A revoked key stops working at once.
    let (st, _) = s.call(Method::DELETE, &format!("/api/v1/tenants/{tenant_a}/keys/{key_id}"), Some(&s.admin), None).await;
    assert_eq!(st, 204);
    let (st, _) = s.get("/api/v1/agents", &key_a).await;
    assert_eq!(st, 401);
    // Revoking B's key through A's tenant path is a 404.
    let tenant_b = tb["id"].as_str().unwrap();
    let (_, kb) = s.get(&format!("/api/v1/tenants/{tenant_b}/keys"), &s.admin).await;
    let kb_id = kb["keys"][0]["id"].as_str().unwrap();
    let (st, _) = s.call(Method::DELETE, &format!("/api/v1/tenants/{tenant_a}/keys/{kb_id}"), Some(&s.admin), None).await;
    assert_eq!(st, 404);
    let (st, _) = s.get("/api/v1/agents", &key_b).await;
    assert_eq!(st, 200, "B's key still works");
}

/// A connect URL grants exactly the agent and tenant it was asked for: it verifies with the
/// server's signing key for A's agent only, and B cannot get one for A's agent.
#[tokio::test(flavor = "multi_thread")]
async fn connect_urls_are_signed_for_their_own_agent_only() {
    use clawpen_vault::connect::{ConnectError, Signer};
    let s = TestServer::start().await;
    let (ta, key_a) = s.tenant("alpha").await;
    let (tb, key_b) = s.tenant("beta").await;
    let a = s.agent(&key_a, "a", false).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", false).await["id"].as_str().unwrap().to_owned();
    let (st, c) = s.call(Method::POST, &format!("/api/v1/agents/{a}/connect-url"), Some(&key_a), None).await;
    assert_eq!(st, 200, "{c}");
    let url = c["url"].as_str().unwrap();
    let (path, query) = url.split_once('?').unwrap();
    assert!(path.ends_with("/gateway/connect"), "{url}");

    let path = s.data_dir().join("signing.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let signer = Signer::new(clawpen_vault::connect::load_signing_keys(&path).unwrap().0);
    let now = clawpen_store::now_ms() / 1000;
    let grant = signer.verify(query, now).unwrap();
    assert_eq!((grant.tenant.as_str(), grant.agent.as_str()), (ta["id"].as_str().unwrap(), a.as_str()));
    assert_eq!(grant.expires_at, c["expires_at"].as_i64().unwrap());
    assert!(grant.expires_at > now && grant.expires_at <= now + 300);
    // Pointed at B's agent or tenant, the same signature is refused; after expiry, too.
    assert_eq!(signer.verify(&query.replace(&a, &b), now), Err(ConnectError::BadSignature));
    assert_eq!(signer.verify(&query.replace(ta["id"].as_str().unwrap(), tb["id"].as_str().unwrap()), now), Err(ConnectError::BadSignature));
    assert_eq!(signer.verify(query, grant.expires_at), Err(ConnectError::Expired));
    // B's key on A's agent: 404, no URL.
    let (st, e) = s.call(Method::POST, &format!("/api/v1/agents/{a}/connect-url"), Some(&key_b), None).await;
    assert_eq!(st, 404, "{e}");
    assert!(e.get("url").is_none());
}
