//! Prefixed random ids. An id is `<prefix>_<26 chars of lowercase base32>`; anything else is not
//! an id, so a path segment like `../../etc/passwd` can never reach a query or a file path.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
const BODY_LEN: usize = 26;

fn random_body() -> String {
    let mut bytes = [0u8; BODY_LEN];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| ALPHABET[(*b & 31) as usize] as char).collect()
}

fn is_body(s: &str) -> bool {
    s.len() == BODY_LEN && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// Returned when a string is not an id of the expected kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid {kind} id")]
pub struct InvalidId {
    pub kind: &'static str,
}

macro_rules! id_type {
    ($name:ident, $prefix:literal, $kind:literal) => {
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            /// The ids of this kind, as a regular expression (for the OpenAPI document).
            pub const PATTERN: &'static str = concat!("^", $prefix, "_[a-z2-7]{26}$");

            pub fn new() -> Self {
                Self(format!("{}_{}", $prefix, random_body()))
            }

            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                match s.strip_prefix(concat!($prefix, "_")) {
                    Some(body) if is_body(body) => Ok(Self(s.to_owned())),
                    _ => Err(InvalidId { kind: $kind }),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

id_type!(TenantId, "tn", "tenant");
id_type!(AgentId, "ag", "agent");
id_type!(KeyId, "key", "api key");
id_type!(MemberId, "mb", "member");
id_type!(TelegramBotId, "tgb", "telegram bot");
id_type!(ConnectionId, "cn", "connection");
id_type!(ProposalId, "pr", "proposal");
id_type!(ScheduleId, "sch", "schedule");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let id = TenantId::new();
        assert_eq!(TenantId::parse(id.as_str()).unwrap(), id);
        for bad in ["", "tn_", "../../etc/passwd", "tn_../../etc/passwd", "ag_aaaaaaaaaaaaaaaaaaaaaaaaaa",
            "tn_AAAAAAAAAAAAAAAAAAAAAAAAAA", "tn_aaaaaaaaaaaaaaaaaaaaaaaaaaa", "tn_aaaaaaaaaaaaaaaaaaaaaaaa1a"] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(AgentId::parse(&AgentId::new().to_string()).is_ok());
    }

    #[test]
    fn the_pattern_spells_the_alphabet_and_length() {
        let alphabet = std::str::from_utf8(ALPHABET).unwrap();
        assert!(alphabet.starts_with("abcdefghijklmnopqrstuvwxyz") && alphabet.ends_with("234567"));
        assert_eq!(TenantId::PATTERN, format!("^tn_[a-z2-7]{{{BODY_LEN}}}$"));
        assert_eq!(TelegramBotId::PATTERN, "^tgb_[a-z2-7]{26}$");
    }
}
