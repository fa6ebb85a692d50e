//! The frame codec: 4-byte big-endian length + MessagePack body.

use bytes::{Buf, BufMut, BytesMut};
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
///
/// The body is encoded once, straight into the frame, behind 4 bytes kept
/// for the header (written once the length is known): no second buffer, no
/// copy. The buffer is sized up front from [`size_hint`], so a large
/// payload is not encoded into a buffer that keeps growing (each growth a
/// fresh allocation whose pages fault in again).
pub fn encode_frame(message: &Message, max_frame: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = Vec::new();
    encode_frame_into(message, max_frame, &mut frame)?;
    Ok(frame)
}

/// [`encode_frame`] into a buffer the caller keeps: `frame` is cleared,
/// grown to the message's [`size_hint`] if smaller, and holds the whole
/// frame on success. Reusing one buffer for frames of similar size costs
/// no allocation and no page fault per frame. On error `frame` is empty.
pub fn encode_frame_into(
    message: &Message,
    max_frame: usize,
    frame: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    frame.clear();
    frame.reserve(HEADER_LEN + size_hint(message));
    frame.extend_from_slice(&[0; HEADER_LEN]);
    let encoded = rmp_serde::encode::write_named(frame, message).map_err(ProtocolError::malformed);
    let len = frame.len() - HEADER_LEN;
    // A header cannot say more than u32::MAX, whatever the limit.
    if let Err(e) = encoded.and_then(|()| check_len(len as u64, max_frame.min(u32::MAX as usize))) {
        frame.clear();
        return Err(e);
    }
    frame[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// An upper bound (for all but pathological messages, the bound itself
/// within a small factor) of a message's encoded body size: what
/// [`encode_frame`] reserves before encoding.
///
/// Strings and binaries count their length plus a header; every other
/// value counts the largest header MessagePack may give it. The values are
/// walked with an explicit stack: no nesting can overflow the caller's.
pub fn size_hint(message: &Message) -> usize {
    // Keys, the type tag, ids and small fields of any message.
    const FIXED: usize = 96;
    let text = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len() + 16);
    match message {
        Message::Request(r) => {
            FIXED + r.method.len() + text(&r.session) + text(&r.trace) + value_size_hint(&r.params)
        }
        Message::Response(r) => match &r.outcome {
            Ok(value) => FIXED + value_size_hint(value),
            Err(e) => {
                FIXED
                    + e.kind.len()
                    + e.message.len()
                    + text(&e.traceback)
                    + e.data.as_ref().map_or(0, value_size_hint)
            }
        },
        Message::Chunk(c) => FIXED + value_size_hint(&c.data),
        Message::SessionClose(s) => FIXED + s.session.len(),
        Message::Goodbye(g) => FIXED + g.reason.len(),
        Message::Hello(h) => {
            // Eight keys, some long, plus the strings.
            2 * FIXED
                + h.runtime.len()
                + h.runtime_version.len()
                + h.methods
                    .iter()
                    .chain(&h.capabilities)
                    .map(|s| s.len() + 9)
                    .sum::<usize>()
        }
        _ => FIXED,
    }
}

/// See [`size_hint`]: the bound for one value.
fn value_size_hint(value: &rmpv::Value) -> usize {
    use rmpv::Value;
    // The largest header of any value (a u64/i64/f64 marker + 8 bytes).
    const HEAD: usize = 9;
    let mut total = 0usize;
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        total = total.saturating_add(HEAD);
        match value {
            Value::String(s) => total = total.saturating_add(s.as_bytes().len()),
            Value::Binary(b) | Value::Ext(_, b) => total = total.saturating_add(b.len()),
            Value::Array(items) => stack.extend(items),
            Value::Map(entries) => {
                for (k, v) in entries {
                    stack.push(k);
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    total
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
        // Straight into `dst` behind a reserved header: no intermediate body.
        let start = dst.len();
        dst.reserve(HEADER_LEN + size_hint(message));
        dst.put_bytes(0, HEADER_LEN);
        let mut writer = dst.writer();
        let encoded = rmp_serde::encode::write_named(&mut writer, message);
        let dst = writer.into_inner();
        let len = (dst.len() - start - HEADER_LEN) as u64;
        if let Err(e) = encoded
            .map_err(ProtocolError::malformed)
            .and_then(|()| check_len(len, self.max_frame))
        {
            dst.truncate(start);
            return Err(e);
        }
        dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}
