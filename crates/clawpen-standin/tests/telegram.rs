//! The Bot API stand-in over HTTP: tokens, parameter encodings, long polling, webhooks with
//! their secret header, and `sendMessage`'s limits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clawpen_standin::{Standin, StandinConfig};
use serde_json::{json, Value};

const TOKEN: &str = "123456:AAstandinTOKENforTESTS_0123456789";

async fn standin() -> Standin {
    let s = Standin::start(StandinConfig::for_testing()).await.unwrap();
    s.telegram().add_bot(TOKEN, "family_bot");
    s
}

async fn call(s: &Standin, token: &str, method: &str, body: Value) -> (u16, Value) {
    let res = reqwest::Client::new().post(format!("{}/bot{token}/{method}", s.base_url())).json(&body).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn get_me_and_unknown_tokens() {
    let s = standin().await;
    let (st, v) = call(&s, TOKEN, "getMe", json!({})).await;
    assert_eq!(st, 200);
    assert_eq!(v["ok"], true);
    assert_eq!((v["result"]["id"].as_i64(), v["result"]["username"].as_str(), v["result"]["is_bot"].as_bool()), (Some(123456), Some("family_bot"), Some(true)));
    let (st, v) = call(&s, "123456:wrong", "getMe", json!({})).await;
    assert_eq!(st, 401);
    assert_eq!(v, json!({"ok": false, "error_code": 401, "description": "Unauthorized"}));
    let (st, v) = call(&s, TOKEN, "noSuchMethod", json!({})).await;
    assert_eq!((st, v["ok"].as_bool()), (404, Some(false)));
    assert_eq!(s.telegram().calls(TOKEN), ["getMe", "noSuchMethod"]);
    assert!(s.requests().is_empty(), "Bot API calls are not model requests");
}

#[tokio::test]
async fn parameters_in_query_form_and_json() {
    let s = standin().await;
    let http = reqwest::Client::new();
    let url = |m: &str| format!("{}/bot{TOKEN}/{m}", s.base_url());
    let r = http.get(url("sendMessage") + "?chat_id=7&text=by%20query").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.post(url("sendMessage")).header("content-type", "application/x-www-form-urlencoded").body("chat_id=7&text=by+form").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (st, v) = call(&s, TOKEN, "sendMessage", json!({"chat_id": 7, "text": "by json"})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["result"]["chat"]["id"].as_i64(), v["result"]["text"].as_str()), (Some(7), Some("by json")));
    assert_eq!(s.telegram().sent_to(TOKEN, 7), ["by query", "by form", "by json"]);
    let r = http.post(url("sendMessage")).header("content-type", "application/json").body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn send_message_limits() {
    let s = standin().await;
    let (st, v) = call(&s, TOKEN, "sendMessage", json!({"chat_id": 7, "text": "x".repeat(4097)})).await;
    assert_eq!((st, v["description"].as_str()), (400, Some("Bad Request: message is too long")));
    let (st, _) = call(&s, TOKEN, "sendMessage", json!({"chat_id": 7, "text": "x".repeat(4096)})).await;
    assert_eq!(st, 200);
    // Telegram counts UTF-16 code units: 2049 emoji are 4098 of them.
    let (st, _) = call(&s, TOKEN, "sendMessage", json!({"chat_id": 7, "text": "😀".repeat(2049)})).await;
    assert_eq!(st, 400);
    let (st, v) = call(&s, TOKEN, "sendMessage", json!({"chat_id": 7, "text": ""})).await;
    assert_eq!((st, v["description"].as_str()), (400, Some("Bad Request: message text is empty")));
    let (st, _) = call(&s, TOKEN, "sendMessage", json!({"text": "no chat"})).await;
    assert_eq!(st, 400);
    assert_eq!(s.telegram().sent(TOKEN).len(), 1);
}

#[tokio::test]
async fn get_updates_long_polls_and_offsets_confirm() {
    let s = standin().await;
    // Nothing yet: a short poll answers an empty list at once.
    let (_, v) = call(&s, TOKEN, "getUpdates", json!({"timeout": 0})).await;
    assert_eq!(v["result"], json!([]));
    // A long poll waits for the update injected while it waits.
    let tg = s.telegram().clone();
    let inject = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tg.inject_message(TOKEN, 42, "hello bot")
    });
    let started = Instant::now();
    let (st, v) = call(&s, TOKEN, "getUpdates", json!({"timeout": 10})).await;
    let waited = started.elapsed();
    let id = inject.await.unwrap();
    assert_eq!(st, 200);
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "{waited:?}");
    let u = &v["result"][0];
    assert_eq!(u["update_id"].as_i64(), Some(id));
    assert_eq!((u["message"]["from"]["id"].as_i64(), u["message"]["chat"]["id"].as_i64(), u["message"]["chat"]["type"].as_str()), (Some(42), Some(42), Some("private")));
    assert_eq!(u["message"]["text"], "hello bot");
    // Unconfirmed updates come again; an offset past them confirms them.
    let (_, again) = call(&s, TOKEN, "getUpdates", json!({})).await;
    assert_eq!(again["result"].as_array().unwrap().len(), 1);
    let (_, after) = call(&s, TOKEN, "getUpdates", json!({"offset": id + 1})).await;
    assert_eq!(after["result"], json!([]));
    assert_eq!(s.telegram().pending(TOKEN), 0);
    // A long poll with nothing to give ends at its timeout.
    let started = Instant::now();
    let (_, v) = call(&s, TOKEN, "getUpdates", json!({"offset": id + 1, "timeout": 1})).await;
    assert_eq!(v["result"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_webhook_gets_each_update_with_its_secret() {
    use axum::http::HeaderMap;
    let s = standin().await;
    /// (secret header, body) of each call.
    type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                let secret = headers.get("x-telegram-bot-api-secret-token").map(|v| v.to_str().unwrap().to_owned());
                sink.lock().unwrap().push((secret, body.0));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (st, v) = call(&s, TOKEN, "setWebhook", json!({"url": url, "secret_token": "s3cret_value-1"})).await;
    assert_eq!((st, v["result"].as_bool()), (200, Some(true)), "{v}");
    let (st, _) = call(&s, TOKEN, "setWebhook", json!({"url": url, "secret_token": "bad secret!"})).await;
    assert_eq!(st, 400);
    let (st, v) = call(&s, TOKEN, "getUpdates", json!({})).await;
    assert_eq!((st, v["error_code"].as_i64()), (409, Some(409)), "no getUpdates while a webhook is set");

    let id = s.telegram().inject_message(TOKEN, 42, "via webhook");
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.as_deref(), Some("s3cret_value-1"));
    assert_eq!(got[0].1["update_id"].as_i64(), Some(id));
    assert_eq!(got[0].1["message"]["text"], "via webhook");
    assert_eq!(s.telegram().deliveries(TOKEN)[0].status, Some(200));

    let (st, _) = call(&s, TOKEN, "deleteWebhook", json!({})).await;
    assert_eq!(st, 200);
    assert_eq!(s.telegram().webhook(TOKEN), None);
    s.telegram().inject_message(TOKEN, 42, "polled again");
    let (st, v) = call(&s, TOKEN, "getUpdates", json!({})).await;
    assert_eq!((st, v["result"][0]["message"]["text"].as_str()), (200, Some("polled again")));
}
