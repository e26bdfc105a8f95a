//! Each installation's own range of sandbox uids.
//!
//! A tenant's (or warm-pool sandbox's) uid is `base + n` from a counter that never goes back.
//! Were `base` the same in every installation, two servers on one host (a staging and a
//! production data dir, two operators) would give their first tenants the same uid, and a file
//! or socket of one would be the other's. So unless `sandbox.uid_base` is set, each data dir
//! picks a range of [`RANGE`] uids at random among [`SLOTS`] when its store is first used, and
//! keeps it in the store. `clawpen doctor` checks the sandboxes of every other installation on
//! the engine against it.

use clawpen_store::Store;
use rand::Rng;

/// Uids in one installation's range.
pub const RANGE: u32 = 1_000_000;
/// Ranges to choose from: `RANGE * 1 ..= RANGE * SLOTS` (below 2^31).
pub const SLOTS: u32 = 2_000;
/// The base of stores that handed out uids before ranges existed.
pub const LEGACY_BASE: u32 = 100_000;

/// The first uid of this installation's range.
pub async fn resolve(store: &Store, configured: u32) -> anyhow::Result<u32> {
    if configured != 0 {
        return Ok(configured);
    }
    if let Some(v) = store.meta("uid_base").await? {
        return Ok(v.parse()?);
    }
    let fresh = if store.uids_handed_out().await? > 0 { LEGACY_BASE } else { RANGE * rand::thread_rng().gen_range(1..=SLOTS) };
    Ok(store.meta_or_insert("uid_base", &fresh.to_string()).await?.parse()?)
}

/// True when `uid` lies in the range starting at `base`.
pub fn contains(base: u32, uid: u32) -> bool {
    uid >= base && uid - base < RANGE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_data_dir_keeps_a_range_of_its_own() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let sa = Store::open_sqlite(&a.path().join("s.db")).await.unwrap();
        let sb = Store::open_sqlite(&b.path().join("s.db")).await.unwrap();
        let base_a = resolve(&sa, 0).await.unwrap();
        assert_eq!(resolve(&sa, 0).await.unwrap(), base_a, "chosen once");
        assert!(base_a >= RANGE && base_a % RANGE == 0 && base_a <= RANGE * SLOTS);
        // Another data dir almost surely gets another range (1 in 2000 it does not; doctor
        // catches that); the first uids of the two differ then.
        let base_b = resolve(&sb, 0).await.unwrap();
        let t = sa.create_tenant("a", "free", base_a).await.unwrap();
        assert!(contains(base_a, t.uid as u32) && t.uid as u32 != base_a);
        if base_a != base_b {
            assert!(!contains(base_b, t.uid as u32));
        }
        assert_eq!(resolve(&sb, 123_456).await.unwrap(), 123_456, "a configured base wins");
    }

    #[tokio::test]
    async fn a_store_that_handed_out_uids_keeps_the_old_base() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open_sqlite(&d.path().join("s.db")).await.unwrap();
        s.create_tenant("old", "free", LEGACY_BASE).await.unwrap();
        assert_eq!(resolve(&s, 0).await.unwrap(), LEGACY_BASE);
    }
}
