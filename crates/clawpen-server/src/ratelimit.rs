//! Per-tenant rate limits on messages (all doors together), from each tenant's plan.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clawpen_core::ids::TenantId;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// One limiter per tenant, remade when its plan's rate changes.
#[derive(Default)]
pub struct MessageLimits {
    limiters: Mutex<HashMap<TenantId, (u32, Arc<DefaultDirectRateLimiter>)>>,
}

impl MessageLimits {
    /// Takes one message from `tenant`'s allowance of `per_minute`; `Err(wait)` when it is spent.
    pub fn check(&self, tenant: &TenantId, per_minute: u32) -> Result<(), Duration> {
        let per_minute = per_minute.max(1);
        let limiter = {
            let mut map = self.limiters.lock().expect("limiters");
            let entry = map.entry(tenant.clone()).or_insert_with(|| (per_minute, Arc::new(limiter(per_minute))));
            if entry.0 != per_minute {
                *entry = (per_minute, Arc::new(limiter(per_minute)));
            }
            entry.1.clone()
        };
        limiter.check().map_err(|not_until| not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default())))
    }
}

fn limiter(per_minute: u32) -> DefaultDirectRateLimiter {
    let n = NonZeroU32::new(per_minute).expect("at least 1");
    RateLimiter::direct(Quota::per_minute(n).allow_burst(n))
}
