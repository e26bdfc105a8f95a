//! Bad input: each a 4xx with a JSON body naming the problem, and nothing is created.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::TestServer;

async fn raw(s: &TestServer, method: Method, path: &str, token: &str, content_type: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = s.http.request(method, s.url(path)).bearer_auth(token).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = req.send().await.unwrap();
    let st = res.status().as_u16();
    let text = res.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{st}: body is not JSON: {text:?}"));
    (st, v)
}

fn assert_json_error(st: u16, v: &Value, what: &str) {
    assert!((400..500).contains(&st), "{what}: status {st}: {v}");
    let code = v["error"]["code"].as_str().unwrap_or_else(|| panic!("{what}: no error.code: {v}"));
    let msg = v["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: no error.message: {v}"));
    assert!(!code.is_empty() && !msg.is_empty(), "{what}: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_creates_nothing() {
    let s = TestServer::start().await;
    let (_t, key) = s.tenant("family").await;
    let admin = s.admin.clone();
    let json_ct = Some("application/json");

    let long = "a".repeat(65);
    let huge = "b".repeat(200_000);
    let bodies: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("malformed JSON", b"{\"name\": ".to_vec(), json_ct),
        ("not an object", b"[1,2,3]".to_vec(), json_ct),
        ("wrong type", br#"{"name": 42}"#.to_vec(), json_ct),
        ("unknown field", br#"{"name": "ok", "uid": 0}"#.to_vec(), json_ct),
        ("missing field", b"{}".to_vec(), json_ct),
        ("path traversal name", br#"{"name": "../../etc/passwd"}"#.to_vec(), json_ct),
        ("empty name", br#"{"name": ""}"#.to_vec(), json_ct),
        ("long name", format!(r#"{{"name": "{long}"}}"#).into_bytes(), json_ct),
        ("oversized body", format!(r#"{{"name": "{huge}"}}"#).into_bytes(), json_ct),
        ("non-UTF-8", b"{\"name\": \"\xff\xfe\xfd\"}".to_vec(), json_ct),
        ("NUL in name", br#"{"name": "a\u0000b"}"#.to_vec(), json_ct),
        ("newline in name", br#"{"name": "a\nb"}"#.to_vec(), json_ct),
        ("no content type", br#"{"name": "fine"}"#.to_vec(), None),
        ("wrong content type", br#"{"name": "fine"}"#.to_vec(), Some("text/plain")),
        ("empty body", Vec::new(), json_ct),
    ];
    for (what, body, ct) in &bodies {
        let (st, v) = raw(&s, Method::POST, "/api/v1/agents", &key, *ct, body.clone()).await;
        assert_json_error(st, &v, &format!("agent: {what}"));
        let (st, v) = raw(&s, Method::POST, "/api/v1/tenants", &admin, *ct, body.clone()).await;
        assert_json_error(st, &v, &format!("tenant: {what}"));
    }
    let (st, v) = raw(&s, Method::POST, "/api/v1/agents", &key, json_ct, format!(r#"{{"name": "{huge}"}}"#).into_bytes()).await;
    assert_eq!((st, v["error"]["code"].as_str()), (413, Some("body_too_large")));
    let (st, v) = s.post("/api/v1/tenants", &admin, json!({"name": "x", "plan": "platinum"})).await;
    assert_json_error(st, &v, "unknown plan");
    assert!(v["error"]["message"].as_str().unwrap().contains("free"), "the error names the known plans: {v}");

    // Hostile ids in paths: 404 JSON, like any missing id.
    for id in ["..%2F..%2Fetc%2Fpasswd", "..", "%00", "ag_", "ag_AAAAAAAAAAAAAAAAAAAAAAAAAA", "%ff%fe", &"a".repeat(5000)] {
        for path in [format!("/api/v1/agents/{id}"), format!("/api/v1/agents/{id}/start"), format!("/api/v1/agents/{id}/messages")] {
            let (st, v) = raw(&s, Method::POST, &path, &key, json_ct, br#"{"text":"x"}"#.to_vec()).await;
            assert_json_error(st, &v, &path);
            let (st, v) = raw(&s, Method::GET, &path, &key, None, vec![]).await;
            assert_json_error(st, &v, &path);
        }
        let (st, v) = raw(&s, Method::GET, &format!("/api/v1/tenants/{id}"), &admin, None, vec![]).await;
        assert_eq!(st, 404, "{v}");
        assert_json_error(st, &v, "tenant id");
    }
    // Bad query strings and unknown routes are JSON errors too.
    let (st, v) = raw(&s, Method::GET, "/api/v1/audit?limit=abc", &admin, None, vec![]).await;
    assert_json_error(st, &v, "bad query");
    let (st, v) = raw(&s, Method::GET, "/api/v1/nothing-here", &key, None, vec![]).await;
    assert_json_error(st, &v, "unknown route");
    let (st, v) = raw(&s, Method::PUT, "/api/v1/agents", &key, None, vec![]).await;
    assert_json_error(st, &v, "wrong method");

    // Messages: empty and oversized text, unknown fields, a bad session name, on a real agent.
    let a = s.agent(&key, "real", true).await;
    let aid = a["id"].as_str().unwrap();
    for body in [json!({"text": ""}), json!({"text": "x".repeat(40_000)}), json!({"text": "hi", "extra": 1}), json!({"text": "hi", "session": "../../x"})] {
        let (st, v) = s.post(&format!("/api/v1/agents/{aid}/messages"), &key, body.clone()).await;
        assert_json_error(st, &v, &format!("message {body}"));
    }
    let (st, v) = s.get(&format!("/api/v1/agents/{aid}/logs?tail=0"), &key).await;
    assert_json_error(st, &v, "tail=0");

    // Nothing was created by any of it: one tenant, one agent, one container, one agent dir.
    let (_, tenants) = s.get("/api/v1/tenants", &admin).await;
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 1, "{tenants}");
    let (_, agents) = s.get("/api/v1/agents", &key).await;
    assert_eq!(agents["agents"].as_array().unwrap().len(), 1, "{agents}");
    assert_eq!(s.containers().len(), 1);
    let dirs: Vec<_> = std::fs::read_dir(s.data_dir().join("agents")).unwrap().collect();
    assert_eq!(dirs.len(), 1);
    assert_eq!(std::fs::read_dir(s.data_dir().join("volumes")).unwrap().count(), 1, "one agent filesystem");
    assert!(!s.data_dir().join("etc").exists() && !std::path::Path::new("/tmp/etc/passwd").exists());
    // And the server is still well.
    let (st, _) = s.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(st, 200);
}
