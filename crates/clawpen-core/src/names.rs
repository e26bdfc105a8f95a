//! What a user-chosen name may be. Names are only ever labels (ids name paths and containers),
//! but a strict rule keeps logs, audit lines and UIs unambiguous.

/// Why a name was refused; the message is shown to the API caller as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidName {
    #[error("name must not be empty")]
    Empty,
    #[error("name must be at most {max} characters")]
    TooLong { max: usize },
    #[error("name may contain only letters, digits, '-', '_' and '.', must start with a letter or digit, and must not contain '..'")]
    BadCharacters,
}

pub const MAX_NAME_LEN: usize = 64;

/// [`validate_name`]'s rule as a regular expression without look-arounds (so that ECMA-262,
/// Python and Rust read it alike), for the OpenAPI document; the length is `maxLength` there.
/// A dot is always followed by another character or the end, which is "never `..`".
pub const NAME_PATTERN: &str = r"^[A-Za-z0-9](\.?[A-Za-z0-9_-])*\.?$";

/// Checks a tenant or agent name: 1–64 of `[A-Za-z0-9._-]`, starting with a letter or digit,
/// never `..`.
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
    if name.is_empty() {
        return Err(InvalidName::Empty);
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(InvalidName::TooLong { max: MAX_NAME_LEN });
    }
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let all_ok = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !first_ok || !all_ok || name.contains("..") {
        return Err(InvalidName::BadCharacters);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["family", "a", "Smith-Family_2", "bot.v2"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_name(""), Err(InvalidName::Empty));
        assert_eq!(validate_name(&"a".repeat(65)), Err(InvalidName::TooLong { max: 64 }));
        for bad in ["../../etc/passwd", ".hidden", "a/b", "a..b", "a b", "a\0b", "é", "-x", "a\nb"] {
            assert_eq!(validate_name(bad), Err(InvalidName::BadCharacters), "{bad:?}");
        }
    }
}
