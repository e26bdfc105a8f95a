//! The OpenAPI document against what the server answers: schemathesis
//! (`tests/python/test_schemathesis.py`) over every operation, with a tenant key and with the
//! admin token, against a real server. The document's own shape (snapshot, patterns, links) is
//! unit-tested in `clawpen-server`'s `api::doc`.

use std::time::Instant;

use reqwest::Method;

use crate::harness::{pytest, TestServer};


#[tokio::test(flavor = "multi_thread")]
async fn every_answer_is_one_the_openapi_document_declares() {
    // Telegram's Bot API is the stand-in's: a generated bot token gets Telegram's own refusal.
    let s = TestServer::start_full("", "", "[telegram]\napi_base = \"STANDIN\"\n", &[]).await;
    let (_, key) = s.tenant("schemathesis").await;
    let started = Instant::now();
    let report = pytest("test_schemathesis.py", &[("CLAWPEN_URL", &s.base), ("CLAWPEN_TENANT_KEY", &key), ("CLAWPEN_ADMIN_TOKEN", &s.admin)]).await;
    eprintln!("schemathesis took {:.0?}:\n{report}", started.elapsed());
    assert!(report.contains("2 passed"), "{report}");

    // Nothing of it hurt the server: no panic in its log, and it is still ready.
    let log = s.log();
    assert!(!log.contains("panicked"), "the server panicked during the run:\n{log}");
    let (st, ready) = s.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(st, 200, "{ready}");
}
