//! Signed connect URLs: a short-lived grant to talk to one agent of one tenant, carried in a
//! URL's query (`tenant`, `agent`, `exp`, `kv`, `sig`).
//!
//! `sig` is HMAC-SHA256, under signing key version `kv`, over a domain tag, the tenant, the agent
//! and the expiry (Unix seconds), newline-separated; it is checked in constant time. The signing
//! keys live in a 0600 file like the master keys; while a key is being rotated the file holds
//! two versions, the newest signs and both verify.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{Keyring, VaultError};

/// What a URL signature covers besides its fields, so no other HMAC of the same key verifies.
const DOMAIN: &str = "clawpen-connect-v1";
/// The longest a connect URL may live.
pub const MAX_TTL_SECS: i64 = 3600;
/// Longest query accepted before any parsing.
const MAX_QUERY: usize = 512;

/// A verified grant: this tenant's agent, until then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tenant: String,
    pub agent: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("the connect URL is malformed: {0}")]
    Malformed(&'static str),
    #[error("the connect URL has expired; ask for a new one")]
    Expired,
    #[error("the connect URL's signature is not valid")]
    BadSignature,
}

/// Signs and verifies connect URLs with the signing keyring.
#[derive(Debug, Clone)]
pub struct Signer {
    keys: Keyring,
}

fn mac(key: &[u8; 32], tenant: &str, agent: &str, exp: i64) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(format!("{DOMAIN}\n{tenant}\n{agent}\n{exp}").as_bytes());
    m
}

/// Ids are `tn_`/`ag_` plus lowercase base32: anything else is refused before the HMAC.
fn valid_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| rest.len() == 26 && rest.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)))
}

impl Signer {
    pub fn new(keys: Keyring) -> Signer {
        Signer { keys }
    }

    /// The query string granting `agent` of `tenant` until `expires_at` (Unix seconds).
    pub fn sign(&self, tenant: &str, agent: &str, expires_at: i64) -> String {
        let kv = self.keys.current();
        let sig = mac(&self.keys.keys[&kv], tenant, agent, expires_at).finalize().into_bytes();
        format!("tenant={tenant}&agent={agent}&exp={expires_at}&kv={kv}&sig={}", hex::encode(sig))
    }

    /// Checks a query string at time `now` (Unix seconds): every field exactly once, nothing
    /// else, well formed, not expired, not valid for longer than [`MAX_TTL_SECS`], and signed by
    /// a key this server holds.
    pub fn verify(&self, query: &str, now: i64) -> Result<Grant, ConnectError> {
        use ConnectError::Malformed;
        if query.len() > MAX_QUERY {
            return Err(Malformed("too long"));
        }
        let (mut tenant, mut agent, mut exp, mut kv, mut sig) = (None, None, None, None, None);
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').ok_or(Malformed("a field without a value"))?;
            let slot = match k {
                "tenant" => &mut tenant,
                "agent" => &mut agent,
                "exp" => &mut exp,
                "kv" => &mut kv,
                "sig" => &mut sig,
                _ => return Err(Malformed("an unknown field")),
            };
            if slot.replace(v).is_some() {
                return Err(Malformed("a field given twice"));
            }
        }
        let (Some(tenant), Some(agent), Some(exp), Some(kv), Some(sig)) = (tenant, agent, exp, kv, sig) else {
            return Err(Malformed("a field is missing"));
        };
        if !valid_id(tenant, "tn_") || !valid_id(agent, "ag_") {
            return Err(Malformed("not a tenant or agent id"));
        }
        let digits = |s: &str| !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(exp) || !digits(kv) {
            return Err(Malformed("exp and kv are numbers"));
        }
        let (exp, kv): (i64, u32) = (exp.parse().map_err(|_| Malformed("exp"))?, kv.parse().map_err(|_| Malformed("kv"))?);
        if sig.len() != 64 {
            return Err(Malformed("sig is 64 hex digits"));
        }
        let sig = Zeroizing::new(hex::decode(sig).map_err(|_| Malformed("sig is 64 hex digits"))?);
        // The signature first, so that an expiry is only reported for a URL this server issued.
        let key = self.keys.keys.get(&kv).ok_or(ConnectError::BadSignature)?;
        mac(key, tenant, agent, exp).verify_slice(&sig).map_err(|_| ConnectError::BadSignature)?;
        if exp <= now {
            return Err(ConnectError::Expired);
        }
        if exp > now + MAX_TTL_SECS {
            return Err(Malformed("valid for longer than allowed"));
        }
        Ok(Grant { tenant: tenant.to_owned(), agent: agent.to_owned(), expires_at: exp })
    }
}

/// Loads the signing keys like the master keys (see [`Keyring::load`]).
pub fn load_signing_keys(path: &std::path::Path) -> Result<(Keyring, bool), VaultError> {
    Keyring::load(None, path)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T: &str = "tn_aaaaaaaaaaaaaaaaaaaaaaaaaa";
    const A: &str = "ag_bbbbbbbbbbbbbbbbbbbbbbbbbb";
    const NOW: i64 = 1_800_000_000;

    fn signer(hex_keys: &str) -> Signer {
        Signer::new(Keyring::from_env_value(hex_keys).unwrap())
    }

    fn one() -> Signer {
        signer(&format!("1:{}", "44".repeat(32)))
    }

    #[test]
    fn a_fresh_url_verifies_to_its_grant() {
        let s = one();
        let q = s.sign(T, A, NOW + 300);
        assert_eq!(s.verify(&q, NOW).unwrap(), Grant { tenant: T.into(), agent: A.into(), expires_at: NOW + 300 });
    }

    #[test]
    fn every_field_tampered_is_refused() {
        let s = one();
        let q = s.sign(T, A, NOW + 300);
        let other_t = "tn_cccccccccccccccccccccccccc";
        let other_a = "ag_dddddddddddddddddddddddddd";
        let sig = q.rsplit_once("sig=").unwrap().1.to_owned();
        let flipped = format!("{}{}", if sig.starts_with('0') { "1" } else { "0" }, &sig[1..]);
        for bad in [
            q.replace(T, other_t),
            q.replace(A, other_a),
            q.replace(&format!("exp={}", NOW + 300), &format!("exp={}", NOW + 301)),
            q.replace("kv=1", "kv=2"),
            q.replace(&sig, &flipped),
        ] {
            assert_eq!(s.verify(&bad, NOW), Err(ConnectError::BadSignature), "{bad}");
        }
        // Signed for another agent or tenant: valid, but a grant for them, never for A.
        let g = s.verify(&s.sign(other_t, other_a, NOW + 300), NOW).unwrap();
        assert_ne!((g.tenant.as_str(), g.agent.as_str()), (T, A));
    }

    #[test]
    fn expired_and_replayed_after_expiry_are_refused() {
        let s = one();
        let q = s.sign(T, A, NOW + 60);
        assert!(s.verify(&q, NOW + 59).is_ok());
        assert_eq!(s.verify(&q, NOW + 60), Err(ConnectError::Expired));
        assert_eq!(s.verify(&q, NOW + 86_400), Err(ConnectError::Expired), "a replay a day later");
        assert!(matches!(s.verify(&s.sign(T, A, NOW + MAX_TTL_SECS + 1), NOW), Err(ConnectError::Malformed(_))));
    }

    #[test]
    fn two_keys_verify_while_rotating_and_a_dropped_key_does_not() {
        let old = signer(&format!("1:{}", "44".repeat(32)));
        let both = signer(&format!("1:{},2:{}", "44".repeat(32), "55".repeat(32)));
        let new_only = signer(&format!("2:{}", "55".repeat(32)));
        let by_old = old.sign(T, A, NOW + 300);
        let by_new = both.sign(T, A, NOW + 300);
        assert!(by_new.contains("kv=2"));
        assert!(both.verify(&by_old, NOW).is_ok() && both.verify(&by_new, NOW).is_ok());
        assert_eq!(new_only.verify(&by_old, NOW), Err(ConnectError::BadSignature));
        // The same key version from another server's key file does not verify.
        assert_eq!(signer(&format!("1:{}", "66".repeat(32))).verify(&by_old, NOW), Err(ConnectError::BadSignature));
    }

    #[test]
    fn malformed_queries_are_refused() {
        let s = one();
        let q = s.sign(T, A, NOW + 300);
        for bad in [
            String::new(),
            "tenant".into(),
            format!("{q}&extra=1"),
            format!("{q}&sig=00"),
            q.replace("tenant=", "tenant=../"),
            q.replace(&format!("exp={}", NOW + 300), "exp=-5"),
            q.replace(&format!("exp={}", NOW + 300), "exp=99999999999999999999"),
            q.replace("kv=1", "kv="),
            format!("{}&x", q),
            "a".repeat(10_000),
        ] {
            assert!(matches!(s.verify(&bad, NOW), Err(ConnectError::Malformed(_))), "{bad:.80}");
        }
    }

    proptest! {
        /// Arbitrary input never panics and never verifies.
        #[test]
        fn the_parser_survives_anything(input in ".{0,600}") {
            prop_assert!(one().verify(&input, NOW).is_err());
        }

        /// A signed query with any one byte changed never verifies to a different grant.
        #[test]
        fn a_changed_byte_never_verifies_elsewhere(pos in 0usize..200, byte in any::<u8>()) {
            let s = one();
            let q = s.sign(T, A, NOW + 300);
            let mut b = q.clone().into_bytes();
            let i = pos % b.len();
            prop_assume!(b[i] != byte);
            b[i] = byte;
            if let Ok(text) = String::from_utf8(b) {
                if let Ok(g) = s.verify(&text, NOW) {
                    prop_assert_eq!(g, Grant { tenant: T.into(), agent: A.into(), expires_at: NOW + 300 });
                }
            }
        }
    }
}
