//! The frame codec: 4-byte big-endian length + MessagePack body.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::depth::{nesting_depth, DEEP_STACK, INLINE_DEPTH, MAX_DEPTH};
use crate::{Message, ProtocolError};

/// Default maximum body size of one frame: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Encodes one message as a frame body (named MessagePack map).
pub fn encode_body(message: &Message) -> Result<Vec<u8>, ProtocolError> {
    rmp_serde::to_vec_named(message).map_err(ProtocolError::malformed)
}

/// Decodes one frame body into a message.
///
/// The body's nesting is checked first ([`nesting_depth`]): deeper than
/// [`MAX_DEPTH`] is [`ProtocolError::TooDeep`], before any recursive
/// decoding. A body nested deeper than [`INLINE_DEPTH`] is decoded on a
/// short-lived helper thread with a [`DEEP_STACK`]-byte stack, so no input
/// can overflow the caller's stack, whatever its size.
pub fn decode_body(body: &[u8]) -> Result<Message, ProtocolError> {
    if nesting_depth(body)? <= INLINE_DEPTH {
        return decode_nested(body);
    }
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("portpool-deep-decode".into())
            .stack_size(DEEP_STACK)
            .spawn_scoped(scope, || decode_nested(body))?;
        helper.join().unwrap_or_else(|_| {
            Err(ProtocolError::Malformed {
                reason: "decoding a deeply nested message panicked".into(),
            })
        })
    })
}

/// The serde decoding proper, once the depth is known to be within bounds.
fn decode_nested(body: &[u8]) -> Result<Message, ProtocolError> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(body);
    // Our own limit was checked already; leave rmp-serde room for it.
    deserializer.set_max_depth(MAX_DEPTH + 1);
    serde::Deserialize::deserialize(&mut deserializer).map_err(ProtocolError::malformed)
}

/// Encodes one message as a whole frame: header then body.
pub fn encode_frame(message: &Message, max_frame: usize) -> Result<Vec<u8>, ProtocolError> {
    let body = encode_body(message)?;
    check_len(body.len() as u64, max_frame)?;
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.put_u32(body.len() as u32);
    frame.extend_from_slice(&body);
    Ok(frame)
}

pub(crate) fn check_len(len: u64, max_frame: usize) -> Result<(), ProtocolError> {
    if len > max_frame as u64 {
        return Err(ProtocolError::FrameTooLarge { len, max: max_frame });
    }
    Ok(())
}

/// A tokio-util codec of typed [`Message`]s over length-prefixed frames.
///
/// Framing is tokio-util's [`LengthDelimitedCodec`] (u32 big-endian length of
/// the body only); this type adds the typed errors and MessagePack.
#[derive(Debug)]
pub struct MessageCodec {
    frames: LengthDelimitedCodec,
    max_frame: usize,
    /// The inner codec consumed a header and waits for the body, so the
    /// buffer now starts with body bytes, not a header.
    in_body: bool,
}

impl Default for MessageCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl MessageCodec {
    /// A codec refusing frames whose body exceeds `max_frame` bytes.
    /// `max_frame` is clamped to `u32::MAX`, the largest a header can say.
    pub fn new(max_frame: usize) -> Self {
        let max_frame = max_frame.min(u32::MAX as usize);
        let frames = LengthDelimitedCodec::builder()
            .length_field_length(HEADER_LEN)
            .big_endian()
            .max_frame_length(max_frame)
            .new_codec();
        MessageCodec {
            frames,
            max_frame,
            in_body: false,
        }
    }

    /// The configured maximum body size.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Decodes the next whole frame as raw body bytes, without parsing it.
    pub fn decode_raw(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
        // Check the announced length ourselves first so an oversize header is
        // a typed error, reported before anything is allocated for it.
        let header_present = !self.in_body && src.len() >= HEADER_LEN;
        if header_present {
            let announced = (&src[..HEADER_LEN]).get_u32() as u64;
            check_len(announced, self.max_frame)?;
        }
        let frame = self.frames.decode(src)?;
        // Without a whole frame, the inner codec keeps the header it read.
        self.in_body = frame.is_none() && (self.in_body || header_present);
        Ok(frame)
    }
}

impl Decoder for MessageCodec {
    type Item = Message;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        match self.decode_raw(src)? {
            Some(body) => decode_body(&body).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        match self.decode(buf)? {
            Some(message) => Ok(Some(message)),
            None if buf.is_empty() => Ok(None),
            None => Err(ProtocolError::TruncatedFrame { buffered: buf.len() }),
        }
    }
}

impl Encoder<Message> for MessageCodec {
    type Error = ProtocolError;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.encode(&message, dst)
    }
}

impl Encoder<&Message> for MessageCodec {
    type Error = ProtocolError;

    fn encode(&mut self, message: &Message, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let body = encode_body(message)?;
        check_len(body.len() as u64, self.max_frame)?;
        Ok(self.frames.encode(Bytes::from(body), dst)?)
    }
}
