//! The authentication handshake of a network connection (see
//! `docs/remote.md`): the frames exchanged after TLS and before the worker's
//! `hello`. They use the ordinary framing (4-byte big-endian length, then a
//! MessagePack map with a `type` key) but are not [`Message`](crate::Message)s
//! and are valid only before the hello. A handshake frame is at most
//! [`HANDSHAKE_MAX_FRAME`] bytes.
//!
//! ```
//! use portpool_protocol::handshake::{decode_handshake, encode_handshake, HandshakeMessage};
//!
//! let challenge = HandshakeMessage::AuthChallenge { version: 1, nonce: vec![7; 32] };
//! let frame = encode_handshake(&challenge).unwrap();
//! assert_eq!(decode_handshake(&frame[4..]).unwrap(), challenge);
//! ```

use serde::{Deserialize, Serialize};

use crate::{ProtocolError, HEADER_LEN};

/// The largest body of a handshake frame, in bytes.
pub const HANDSHAKE_MAX_FRAME: usize = 4096;

/// The handshake version this crate speaks (`auth_challenge.version`).
pub const HANDSHAKE_VERSION: u32 = 1;

/// One frame of the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HandshakeMessage {
    /// Listener -> host, first: the listener's random nonce (32 bytes).
    AuthChallenge {
        /// The handshake version ([`HANDSHAKE_VERSION`]).
        version: u32,
        /// The listener's nonce.
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
    },
    /// Host -> listener: the host's nonce and its proof,
    /// `HMAC-SHA256(secret, "portpool-auth-v1 client" + listener_nonce + host_nonce)`.
    AuthResponse {
        /// The host's nonce (32 bytes).
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
        /// The host's MAC.
        #[serde(with = "serde_bytes")]
        mac: Vec<u8>,
    },
    /// Listener -> host: accepted, with the listener's proof,
    /// `HMAC-SHA256(secret, "portpool-auth-v1 server" + host_nonce + listener_nonce)`.
    AuthOk {
        /// The listener's MAC.
        #[serde(with = "serde_bytes")]
        mac: Vec<u8>,
    },
    /// Listener -> host: refused; the listener closes the connection.
    AuthFailed {
        /// Why, in words.
        #[serde(default)]
        reason: String,
    },
}

impl HandshakeMessage {
    /// The wire name of this message's type (the `type` key).
    pub fn kind(&self) -> &'static str {
        match self {
            HandshakeMessage::AuthChallenge { .. } => "auth_challenge",
            HandshakeMessage::AuthResponse { .. } => "auth_response",
            HandshakeMessage::AuthOk { .. } => "auth_ok",
            HandshakeMessage::AuthFailed { .. } => "auth_failed",
        }
    }
}

/// Encodes a handshake message as a whole frame (header, then body).
/// A body over [`HANDSHAKE_MAX_FRAME`] is [`ProtocolError::FrameTooLarge`].
pub fn encode_handshake(message: &HandshakeMessage) -> Result<Vec<u8>, ProtocolError> {
    let body = rmp_serde::to_vec_named(message).map_err(ProtocolError::malformed)?;
    if body.len() > HANDSHAKE_MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge {
            len: body.len() as u64,
            max: HANDSHAKE_MAX_FRAME,
        });
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    // Fits: checked against HANDSHAKE_MAX_FRAME above.
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length announced by a handshake frame's header, checked
/// against [`HANDSHAKE_MAX_FRAME`] before anything is allocated.
pub fn handshake_body_len(header: [u8; HEADER_LEN]) -> Result<usize, ProtocolError> {
    let len = u32::from_be_bytes(header);
    if len as usize > HANDSHAKE_MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge {
            len: u64::from(len),
            max: HANDSHAKE_MAX_FRAME,
        });
    }
    Ok(len as usize)
}

/// Decodes a handshake frame body. Anything but a well-formed handshake
/// message (including an ordinary [`Message`](crate::Message) such as a
/// `hello`) is [`ProtocolError::Malformed`].
pub fn decode_handshake(body: &[u8]) -> Result<HandshakeMessage, ProtocolError> {
    if body.len() > HANDSHAKE_MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge {
            len: body.len() as u64,
            max: HANDSHAKE_MAX_FRAME,
        });
    }
    // Small and bounded, and handshake maps are flat: no depth check needed
    // beyond rmp-serde's own (a few levels at most are valid).
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(body);
    deserializer.set_max_depth(16);
    HandshakeMessage::deserialize(&mut deserializer).map_err(ProtocolError::malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: HandshakeMessage) {
        let frame = encode_handshake(&message).unwrap();
        let len = handshake_body_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode_handshake(&frame[4..]).unwrap(), message);
    }

    #[test]
    fn every_handshake_message_round_trips() {
        round_trip(HandshakeMessage::AuthChallenge {
            version: 1,
            nonce: (0..32).collect(),
        });
        round_trip(HandshakeMessage::AuthResponse {
            nonce: vec![1; 32],
            mac: vec![2; 32],
        });
        round_trip(HandshakeMessage::AuthOk { mac: vec![3; 32] });
        round_trip(HandshakeMessage::AuthFailed {
            reason: "authentication failed".into(),
        });
    }

    #[test]
    fn nonces_are_msgpack_bin() {
        let frame = encode_handshake(&HandshakeMessage::AuthOk { mac: vec![9; 32] }).unwrap();
        let value = rmpv::decode::read_value(&mut &frame[4..]).unwrap();
        let map = value.as_map().unwrap();
        let mac = map.iter().find(|(k, _)| k.as_str() == Some("mac")).unwrap();
        assert_eq!(mac.1, rmpv::Value::Binary(vec![9; 32]));
        let kind = map.iter().find(|(k, _)| k.as_str() == Some("type")).unwrap();
        assert_eq!(kind.1.as_str(), Some("auth_ok"));
    }

    #[test]
    fn decodes_what_another_runtime_writes() {
        // Keys in another order, an unknown key: accepted.
        let value = rmpv::Value::Map(vec![
            ("nonce".into(), rmpv::Value::Binary(vec![5; 32])),
            ("extra".into(), 1.into()),
            ("type".into(), "auth_challenge".into()),
            ("version".into(), 1.into()),
        ]);
        let mut body = Vec::new();
        rmpv::encode::write_value(&mut body, &value).unwrap();
        assert_eq!(
            decode_handshake(&body).unwrap(),
            HandshakeMessage::AuthChallenge {
                version: 1,
                nonce: vec![5; 32]
            }
        );
    }

    #[test]
    fn refuses_ordinary_messages_garbage_and_oversize_frames() {
        let hello = crate::encode_body(&crate::Message::Ping(crate::Ping { id: 1 })).unwrap();
        assert!(matches!(
            decode_handshake(&hello),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            decode_handshake(b"\xc1\xc1"),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            decode_handshake(b""),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            handshake_body_len([0, 0, 0x10, 0x01]),
            Err(ProtocolError::FrameTooLarge { len: 4097, max: 4096 })
        ));
        assert!(matches!(
            handshake_body_len(*b"HTTP"),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            encode_handshake(&HandshakeMessage::AuthFailed {
                reason: "x".repeat(5000)
            }),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }
}
