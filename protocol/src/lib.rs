//! The portpool wire protocol: typed messages in length-prefixed MessagePack
//! frames. Sans-IO: no processes, no runtime.
//!
//! A frame is a `u32` big-endian body length followed by the body; the body
//! is one MessagePack map whose `type` key names the [`Message`] variant.
//! `PROTOCOL.md` beside this crate describes every message byte by byte.
//!
//! This crate provides:
//! - [`Message`] and its variants ([`Hello`], [`Request`], [`Response`], ...);
//! - [`MessageCodec`], a tokio-util `Encoder`/`Decoder` built on
//!   `LengthDelimitedCodec`, with a configurable maximum frame size checked
//!   before any allocation;
//! - [`blocking`] helpers to read and write frames over `std::io`;
//! - [`PROTOCOL_VERSION`] and [`Hello::validate`], the compatibility rule;
//! - [`MAX_DEPTH`], the nesting bound every decoded body is checked against
//!   (iteratively, before decoding), so no input can overflow a stack.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use portpool_protocol::{Message, MessageCodec, Request, Value};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = MessageCodec::default();
//! let request = Message::Request(Request {
//!     id: 1,
//!     method: "echo".into(),
//!     params: Value::from("hi"),
//!     session: None,
//!     deadline_ms: None,
//!     trace: None,
//! });
//! let mut buf = BytesMut::new();
//! codec.encode(&request, &mut buf).unwrap();
//! assert_eq!(&buf[..4], &(buf.len() as u32 - 4).to_be_bytes());
//! assert_eq!(codec.decode(&mut buf).unwrap(), Some(request));
//! ```
#![forbid(unsafe_code)]

pub mod blocking;
mod codec;
mod depth;
mod error;
pub mod handshake;
mod message;
mod version;

pub use codec::{
    decode_body, encode_body, encode_frame, encode_frame_into, size_hint, MessageCodec, DEFAULT_MAX_FRAME,
    HEADER_LEN,
};
pub use depth::{nesting_depth, DEEP_STACK, INLINE_DEPTH, MAX_DEPTH};
pub use error::ProtocolError;
pub use message::{
    Cancel, Chunk, Goodbye, Hello, Message, Ping, Pong, RemoteError, Request, RequestId, Response,
    SessionClose, Shutdown,
};
pub use rmpv::Value;
pub use version::{ProtocolVersion, PROTOCOL_VERSION};

/// Converts any serializable value to a [`Value`] (for request params).
///
/// Structs become maps keyed by field name (as a Python handler expects a
/// dict), not positional arrays; tuples and sequences become arrays; byte
/// buffers marked `serde_bytes` become MessagePack bin.
///
/// ```
/// #[derive(serde::Serialize)]
/// struct Question { question: String }
/// let value = portpool_protocol::to_value(&Question { question: "why?".into() }).unwrap();
/// assert_eq!(value["question"].as_str(), Some("why?"));
/// ```
pub fn to_value<T: serde::Serialize + ?Sized>(value: &T) -> Result<Value, ProtocolError> {
    let encode_error = |e: &dyn std::fmt::Display| ProtocolError::Malformed {
        reason: format!("cannot encode value: {e}"),
    };
    // rmpv's own serializer writes structs as arrays; rmp-serde's named
    // encoding writes them as maps, which is what the other side expects.
    let bytes = rmp_serde::to_vec_named(value).map_err(|e| encode_error(&e))?;
    rmpv::decode::read_value_with_max_depth(&mut bytes.as_slice(), MAX_DEPTH).map_err(|e| encode_error(&e))
}

/// Converts a [`Value`] to any deserializable type (for call results).
pub fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ProtocolError> {
    rmpv::ext::from_value(value).map_err(|e| ProtocolError::Malformed {
        reason: format!("cannot decode value: {e}"),
    })
}
