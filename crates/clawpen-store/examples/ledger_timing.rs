//! Times the ledger's reserve and settle on a SQLite file (development aid).
use std::time::Instant;

use clawpen_core::ids::AgentId;
use clawpen_store::ledger::{CallRecord, Period, Reserve};
use clawpen_store::Store;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("t.db")).await.unwrap();
    let t = store.create_tenant("t", "free", 100_000).await.unwrap();
    let agent = AgentId::new();
    let p = Period { month: "2026-11".into(), day: "2026-11-23".into(), now_ms: clawpen_store::now_ms() };
    store.ensure_account(&t.id, 1_000_000_000_000, &p).await.unwrap();
    let n = 2000;
    let t0 = Instant::now();
    for i in 0..n {
        let id = format!("h{i}");
        let r = Reserve { hold_id: &id, tenant: &t.id, agent: &agent, amount: 100, monthly_cap: i64::MAX / 4, expires_at: p.now_ms + 60_000 };
        store.reserve(&r, &p).await.unwrap().unwrap();
    }
    let reserve = t0.elapsed();
    let t0 = Instant::now();
    for i in 0..n {
        let id = format!("h{i}");
        let call = CallRecord { id: id.clone(), tenant_id: t.id.to_string(), agent_id: agent.to_string(), cost: 50, held: 100, outcome: "ok".into(), ..Default::default() };
        store.close_hold(&id, &call, false, &p).await.unwrap();
    }
    let settle = t0.elapsed();
    let t0 = Instant::now();
    for _ in 0..n {
        store.get_tenant(&t.id).await.unwrap();
    }
    let read = t0.elapsed();
    println!("per op: reserve {:?}, settle {:?}, get_tenant {:?}", reserve / n, settle / n, read / n);
}
