//! The OpenAPI document against what the server answers: schemathesis
//! (`tests/python/test_schemathesis.py`) over every operation, with a tenant key and with the
//! admin token, against a real server. The document's own shape (snapshot, patterns, links) is
//! unit-tested in `clawpen-server`'s `api::doc`.

use std::time::Instant;

use reqwest::Method;

use crate::harness::TestServer;

/// Runs one file of `tests/python` with `env`; fails with pytest's report when it fails.
async fn pytest(file: &str, env: &[(&str, &str)]) -> String {
    let path = format!("{}/../../tests/python/{file}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("python3")
        // -rP: the schemathesis summaries (checks, test cases) of passing tests too.
        .args(["-m", "pytest", "-q", "-rP", "-p", "no:cacheprovider", &path])
        .envs(env.iter().copied())
        .output()
        .await
        .expect("python3 must be installed (with `pip install -r tests/python/requirements.txt`)");
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{file} failed (it needs `pip install -r tests/python/requirements.txt`):\n{report}");
    assert!(report.contains(" passed") && !report.contains("skipped"), "{report}");
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_is_one_the_openapi_document_declares() {
    let s = TestServer::start().await;
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
