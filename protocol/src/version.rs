//! Protocol versioning: the major must match, the minor may differ.

use crate::{Hello, ProtocolError};

/// A protocol version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// Incompatible changes bump the major; peers must agree on it.
    pub major: u16,
    /// Compatible additions bump the minor; peers may differ.
    pub minor: u16,
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The version this crate speaks.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };

impl ProtocolVersion {
    /// Whether a peer speaking `theirs` can talk to us: majors must be equal.
    pub fn is_compatible_with(self, theirs: ProtocolVersion) -> bool {
        self.major == theirs.major
    }
}

impl Hello {
    /// The protocol version the worker announced.
    pub fn protocol_version(&self) -> ProtocolVersion {
        ProtocolVersion {
            major: self.protocol_major,
            minor: self.protocol_minor,
        }
    }

    /// Checks this hello against [`PROTOCOL_VERSION`] and basic sanity
    /// (`max_concurrency` at least 1).
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let theirs = self.protocol_version();
        if !PROTOCOL_VERSION.is_compatible_with(theirs) {
            return Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs,
            });
        }
        if self.max_concurrency == 0 {
            return Err(ProtocolError::Malformed {
                reason: "hello.max_concurrency must be at least 1".into(),
            });
        }
        Ok(())
    }
}
