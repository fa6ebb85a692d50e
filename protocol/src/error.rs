use crate::ProtocolVersion;

/// Everything that can go wrong reading or writing protocol frames.
///
/// Non-exhaustive: a new kind of malformed input may get its own variant
/// without breaking a `match` outside this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame header announced (or an outgoing message needed) more bytes
    /// than the configured maximum. Detected before allocating the body.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced or needed body length.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The body is not a valid message: bad MessagePack, a missing field,
    /// an unknown message type.
    #[error("malformed message: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The peer speaks another major protocol version.
    #[error("protocol version mismatch: we speak {ours}, the worker speaks {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: ProtocolVersion,
        /// The peer's version.
        theirs: ProtocolVersion,
    },
    /// The body nests arrays and maps deeper than `limit` levels
    /// ([`crate::MAX_DEPTH`]). Detected by an iterative scan before any
    /// recursive decoding, so no depth of nesting can exhaust the stack.
    #[error("message nested deeper than {limit} levels")]
    TooDeep {
        /// The nesting limit.
        limit: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    TruncatedFrame {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// Reading or writing the underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    pub(crate) fn malformed(reason: impl std::fmt::Display) -> Self {
        ProtocolError::Malformed {
            reason: reason.to_string(),
        }
    }
}
