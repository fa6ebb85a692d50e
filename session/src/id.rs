use crate::SessionError;

/// Longest accepted session id, in bytes.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// A validated session id: 1 to 128 characters from `A-Z a-z 0-9 - _ . :`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh random id (128 bits, 32 hex digits).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        SessionId(format!("{:032x}", rand::random::<u128>()))
    }

    /// Validates a caller-supplied id.
    pub fn parse(id: impl Into<String>) -> Result<Self, SessionError> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("is empty".to_string())
        } else if id.len() > MAX_SESSION_ID_LEN {
            Some(format!(
                "is {} bytes long, the maximum is {MAX_SESSION_ID_LEN}",
                id.len()
            ))
        } else {
            id.chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
                .map(|c| format!("contains {c:?}; allowed are A-Z a-z 0-9 - _ . :"))
        };
        match reason {
            None => Ok(SessionId(id)),
            Some(reason) => {
                // Keep the error readable even for a megabyte of garbage.
                let shown: String = id.chars().take(40).collect();
                Err(SessionError::InvalidId { id: shown, reason })
            }
        }
    }

    /// Below every valid id (the empty string): a lower bound for ranges.
    pub(crate) fn min() -> Self {
        SessionId(String::new())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SessionId {
    type Err = SessionError;

    fn from_str(s: &str) -> Result<Self, SessionError> {
        SessionId::parse(s)
    }
}

impl TryFrom<&str> for SessionId {
    type Error = SessionError;

    fn try_from(s: &str) -> Result<Self, SessionError> {
        SessionId::parse(s)
    }
}

impl TryFrom<String> for SessionId {
    type Error = SessionError;

    fn try_from(s: String) -> Result<Self, SessionError> {
        SessionId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_valid_and_distinct() {
        let a = SessionId::new();
        let b = SessionId::new();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(SessionId::parse(a.as_str()).unwrap(), a);
    }

    #[test]
    fn bad_ids_are_refused_with_the_reason() {
        let err = SessionId::parse("").unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = SessionId::parse("x".repeat(129)).unwrap_err();
        assert!(err.to_string().contains("129 bytes long"), "{err}");
        let err = SessionId::parse("user 1").unwrap_err();
        assert!(err.to_string().contains("' '"), "{err}");
        let err = SessionId::parse("caf\u{e9}").unwrap_err();
        assert!(matches!(err, SessionError::InvalidId { .. }));
        assert!(SessionId::parse("user-1:chat_2.v3").is_ok());
        assert!(SessionId::parse("x".repeat(128)).is_ok());
    }
}
