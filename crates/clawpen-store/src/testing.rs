//! Test stores on every backend: a SQLite file always, and a fresh PostgreSQL database when
//! `CLAWPEN_TEST_POSTGRES_URL` names a server (CI sets it up; under `CI=true` it must be there).
//! Each PostgreSQL database is made for one test and dropped when the `TestDb` goes, even when
//! the test fails.

use rand::RngCore;

use crate::Store;

pub struct TestDb {
    pub store: Store,
    /// `sqlite` or `postgres`, for failure messages.
    #[allow(dead_code)]
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
    /// The admin URL and the database to drop.
    pg: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, db)) = self.pg.take() {
            // Drop runs outside any runtime we may block: use a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    sqlx::any::install_default_drivers();
                    if let Ok(pool) = sqlx::AnyPool::connect(&admin).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                            .execute(&pool)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

pub const POSTGRES_ENV: &str = "CLAWPEN_TEST_POSTGRES_URL";

/// A store on each backend this machine offers.
pub async fn backends() -> Vec<TestDb> {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = Store::for_testing(dir.path()).await.expect("sqlite store");
    let mut out = vec![TestDb {
        store: sqlite,
        backend: "sqlite",
        _dir: Some(dir),
        pg: None,
    }];
    match std::env::var(POSTGRES_ENV) {
        Ok(admin) => {
            sqlx::any::install_default_drivers();
            let mut b = [0u8; 6];
            rand::thread_rng().fill_bytes(&mut b);
            let db = format!("clawpen_test_{}", hex::encode(b));
            let pool = sqlx::AnyPool::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("{POSTGRES_ENV}: cannot connect: {e}"));
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&pool)
                .await
                .expect("create test database");
            pool.close().await;
            let url = match admin.rsplit_once('/') {
                Some((base, _)) => format!("{base}/{db}"),
                None => panic!("{POSTGRES_ENV} must end in /<database>"),
            };
            let store = Store::connect(&url).await.expect("postgres store");
            out.push(TestDb {
                store,
                backend: "postgres",
                _dir: None,
                pg: Some((admin, db)),
            });
        }
        Err(_) if std::env::var("CI").is_ok() => {
            panic!("{POSTGRES_ENV} is not set: CI must test the PostgreSQL store too")
        }
        Err(_) => eprintln!("note: {POSTGRES_ENV} is not set; the store was tested on SQLite only"),
    }
    out
}
