//! Bring your own key: a tenant's own provider key is checked when saved, serves that tenant's
//! calls alone (charged the plan's fee, not the provider's price), is never seen again (not in
//! an answer, the log, the store's file, the sandbox or `docker inspect`), and a key the
//! provider revokes stops that tenant's calls with a clear message and no retry loop.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{uds_post, TestServer};

const KEY_A: &str = "sk-tenant-alpha-OWNkey-7f3a9c2b1d4e";
const FEE: i64 = 7;

async fn open_run(w: &TestServer, agent: &str) -> String {
    let (st, v) = w.post(&format!("/api/v1/agents/{agent}/runs"), &w.admin.clone(), json!({})).await;
    assert_eq!(st, 201, "{v}");
    v["run_id"].as_str().unwrap().to_owned()
}

/// A model call from `agent`'s side of its control socket: (status, body).
async fn call(w: &TestServer, agent: &str, run: &str, model: &str, text: &str) -> (u16, Value) {
    let sock = w.run_dir(agent).join("control.sock");
    let body = json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 40});
    let (st, bytes) = uds_post(&sock, "/v1/chat/completions", &body, &[("x-clawpen-run", run)]).await;
    (st, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The tenant's newest settled call.
async fn last_call(w: &TestServer, key: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let u = w.get("/api/v1/usage", key).await.1;
        if u["reserved"] == 0 || Instant::now() > deadline {
            return u["recent_calls"][0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn keys_seen(w: &TestServer, key: &str) -> usize {
    w.standin.requests().iter().filter(|r| r.key.as_deref() == Some(key)).count()
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let (p, t) = (e.path(), e.file_type().unwrap());
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                        found.push(p.display().to_string());
                    }
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_own_key_serves_only_its_calls_is_never_seen_and_stops_when_revoked() {
    let w = TestServer::start_with(&format!("byok_fee_per_call = {FEE}\nmax_calls_per_run = 100"), "", &[]).await;
    let (ta, ka) = w.tenant("alpha").await;
    let (_, kb) = w.tenant("beta").await;
    let a = w.agent(&ka, "a", true).await["id"].as_str().unwrap().to_owned();
    let b = w.agent(&kb, "b", false).await["id"].as_str().unwrap().to_owned();

    // Bad keys are refused with what is wrong, and nothing is saved.
    let wrong = "sk-the-provider-never-issued-this-one";
    for (path, body, want, code) in [
        ("/api/v1/provider-keys/openai", json!({"key": ""}), 422, "invalid_input"),
        ("/api/v1/provider-keys/openai", json!({"key": "two words"}), 422, "invalid_input"),
        ("/api/v1/provider-keys/openai", json!({"key": "x", "extra": 1}), 422, "invalid_input"),
        ("/api/v1/provider-keys/mistral", json!({"key": "sk-x"}), 404, "not_found"),
        ("/api/v1/provider-keys/openai", json!({"key": wrong}), 422, "key_rejected"),
    ] {
        let (st, e) = w.put(path, &ka, body.clone()).await;
        assert_eq!((st, e["error"]["code"].as_str()), (want, Some(code)), "{path} {body}: {e}");
        assert!(!e.to_string().contains(wrong), "the error never quotes the key: {e}");
    }
    assert!(w.get("/api/v1/provider-keys", &ka).await.1["keys"].as_array().unwrap().is_empty());

    // Saved: checked with the provider, shown as its last four characters only.
    w.standin.accept_key(KEY_A);
    let (st, saved) = w.put("/api/v1/provider-keys/openai", &ka, json!({"key": KEY_A})).await;
    assert_eq!(st, 200, "{saved}");
    assert_eq!((saved["last4"].as_str(), saved["status"].as_str()), (Some("1d4e"), Some("active")));
    let listed = w.get("/api/v1/provider-keys", &ka).await.1;
    assert_eq!(listed["keys"][0]["provider"], "openai", "{listed}");
    assert!(w.get("/api/v1/provider-keys", &kb).await.1["keys"].as_array().unwrap().is_empty(), "B has no key");

    // A's calls go with A's key, charged the plan's fee; B's with the platform's, at its price.
    let (ra, rb) = (open_run(&w, &a).await, open_run(&w, &b).await);
    let before = keys_seen(&w, KEY_A);
    let (st, r) = call(&w, &a, &ra, "gpt-test", "alpha on its own key").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(keys_seen(&w, KEY_A), before + 1);
    let c = last_call(&w, &ka).await;
    assert_eq!((c["cost"].as_i64(), c["outcome"].as_str()), (Some(FEE), Some("ok")), "{c}");
    assert!(c["input_tokens"].as_i64().unwrap() > 0, "still metered: {c}");
    let (st, _) = call(&w, &b, &rb, "gpt-test", "beta on the platform key").await;
    assert_eq!(st, 200);
    let reqs = w.standin.requests();
    let beta = reqs.iter().find(|r| r.body.to_string().contains("beta on the platform key")).unwrap();
    assert_eq!(beta.key.as_deref(), Some("sk-standin-openai"), "B's call went on the platform's key");
    let alpha = reqs.iter().find(|r| r.body.to_string().contains("alpha on its own key")).unwrap();
    assert_eq!(alpha.key.as_deref(), Some(KEY_A));
    assert!(last_call(&w, &kb).await["cost"].as_i64().unwrap() > FEE, "B pays the provider's price");
    // Another provider of A's (no key of its own there) goes on the platform's key.
    let (st, _) = call(&w, &a, &ra, "grok-fast", "alpha on grok").await;
    assert_eq!(st, 200);
    assert_eq!(keys_seen(&w, KEY_A), before + 1);

    // Never seen again: not in the log, the store's file, the sandbox's files or its inspect.
    assert!(!w.log().contains(KEY_A), "the key is in the server log");
    assert!(!w.log().contains("7f3a9c2b"), "a part of the key is in the server log");
    let db: Vec<String> = files_holding(w.data_dir(), KEY_A);
    assert!(db.is_empty(), "the key is in plain text in {db:?}");
    let inspect = std::process::Command::new("docker").args(["inspect", &w.container(&a)]).output().unwrap();
    assert!(inspect.status.success());
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains(KEY_A), "the key is in docker inspect");
    let (st, env) = w.get(&format!("/api/v1/agents/{a}/logs"), &ka).await;
    assert!(st == 200 && !env.to_string().contains(KEY_A));

    // Revoked at the provider: the next call is refused clearly, A's use of the key stops, and
    // no call is retried on it; B is untouched.
    w.standin.revoke_key(KEY_A);
    let (st, e) = call(&w, &a, &ra, "gpt-test", "alpha after revocation").await;
    assert_eq!((st, e["error"]["code"].as_str()), (403, Some("provider_key_rejected")), "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("refused") && msg.contains("/api/v1/provider-keys/openai"), "{msg}");
    assert!(!e.to_string().contains(KEY_A));
    let tried = keys_seen(&w, KEY_A);
    for i in 0..3 {
        let (st, e) = call(&w, &a, &ra, "gpt-test", &format!("alpha again {i}")).await;
        assert_eq!((st, e["error"]["code"].as_str()), (403, Some("provider_key_rejected")), "{e}");
    }
    assert_eq!(keys_seen(&w, KEY_A), tried, "no call went out on a rejected key");
    let listed = w.get("/api/v1/provider-keys", &ka).await.1;
    assert_eq!((listed["keys"][0]["status"].as_str(), listed["keys"][0]["detail"].as_str()), (Some("rejected"), Some("HTTP 401")), "{listed}");
    assert_eq!(call(&w, &b, &rb, "gpt-test", "beta still fine").await.0, 200);
    let audit = w.get(&format!("/api/v1/audit?tenant={}", ta["id"].as_str().unwrap()), &w.admin.clone()).await.1;
    assert!(audit.to_string().contains("provider_key.rejected"), "{audit}");

    // A new key brings A's calls back; removing it goes back to the platform's key and prices.
    w.standin.accept_key(KEY_A);
    assert_eq!(w.put("/api/v1/provider-keys/openai", &ka, json!({"key": KEY_A})).await.0, 200);
    assert_eq!(call(&w, &a, &ra, "gpt-test", "alpha with the key again").await.0, 200);
    assert_eq!(w.delete("/api/v1/provider-keys/openai", &ka).await.0, 204);
    assert_eq!(w.delete("/api/v1/provider-keys/openai", &ka).await.0, 404);
    let seen = keys_seen(&w, KEY_A);
    assert_eq!(call(&w, &a, &ra, "gpt-test", "alpha on the platform again").await.0, 200);
    assert_eq!(keys_seen(&w, KEY_A), seen);
    assert!(last_call(&w, &ka).await["cost"].as_i64().unwrap() > FEE);
}
