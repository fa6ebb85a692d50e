//! Boundaries of the frame codec that `cargo xtask mutants` found untested
//! (each test kills a surviving mutant of protocol/src/codec.rs).

use bytes::{BufMut, BytesMut};
use portpool_protocol::blocking::read_message;
use portpool_protocol::{
    encode_frame, Cancel, Chunk, Message, MessageCodec, ProtocolError, Value, DEFAULT_MAX_FRAME,
};
use tokio_util::codec::{Decoder, Encoder};

/// The documented default: 64 MiB (kills `*` -> `+` in its definition).
#[test]
fn the_default_max_frame_is_64_mib() {
    assert_eq!(DEFAULT_MAX_FRAME, 67_108_864);
    assert_eq!(MessageCodec::default().max_frame(), 67_108_864);
}

/// The getter returns what was configured, clamped to what a u32 header
/// can announce (kills `max_frame -> 0 / 1`).
#[test]
fn max_frame_is_what_was_configured_clamped_to_u32() {
    assert_eq!(MessageCodec::new(1234).max_frame(), 1234);
    assert_eq!(MessageCodec::new(usize::MAX).max_frame(), u32::MAX as usize);
}

fn chunk_of_body_len(len: usize) -> (Message, usize) {
    // Find a bin payload whose encoded body is exactly `len` bytes.
    for payload in 0..len {
        let message = Message::Chunk(Chunk {
            id: 1,
            data: Value::Binary(vec![7; payload]),
        });
        let body = portpool_protocol::encode_body(&message).unwrap().len();
        if body == len {
            return (message, body);
        }
    }
    panic!("no chunk with a body of {len} bytes");
}

/// A body of exactly `max_frame` bytes is legal, one more is not: on
/// encode, on decode and in the blocking reader (kills `>` -> `>=` in
/// `check_len`).
#[test]
fn a_body_of_exactly_max_frame_passes_and_one_more_byte_does_not() {
    let (message, len) = chunk_of_body_len(200);
    let frame = encode_frame(&message, len).expect("exactly max_frame is legal");
    assert_eq!(frame.len(), 4 + len);
    assert!(matches!(
        encode_frame(&message, len - 1),
        Err(ProtocolError::FrameTooLarge { len: l, max }) if l == len as u64 && max == len - 1
    ));

    let mut codec = MessageCodec::new(len);
    let mut buf = BytesMut::from(&frame[..]);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(message.clone()));
    let mut wire = BytesMut::new();
    codec.encode(&message, &mut wire).unwrap();
    assert_eq!(&wire[..], &frame[..]);

    let mut smaller = MessageCodec::new(len - 1);
    assert!(matches!(
        smaller.decode(&mut BytesMut::from(&frame[..])),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
    assert_eq!(read_message(&mut &frame[..], len).unwrap(), Some(message));
    assert!(matches!(
        read_message(&mut &frame[..], len - 1),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
}

/// After a whole frame, the next bytes are a header again: an oversize
/// header that follows a good frame in the same buffer is the typed
/// `FrameTooLarge`, checked before anything is allocated (kills `&&` ->
/// `||` in the codec's "waiting for a body" state).
#[test]
fn an_oversize_header_after_a_good_frame_is_frame_too_large() {
    let first = Message::Cancel(Cancel { id: 1 });
    let mut buf = BytesMut::new();
    MessageCodec::default().encode(&first, &mut buf).unwrap();
    buf.put_u32(2048);
    buf.extend_from_slice(&[0; 8]);
    let mut codec = MessageCodec::new(1024);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(first));
    match codec.decode(&mut buf) {
        Err(ProtocolError::FrameTooLarge { len, max }) => {
            assert_eq!(len, 2048);
            assert_eq!(max, 1024);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
}

/// Encoding a message by value writes the same frame as by reference
/// (kills `Encoder<Message>::encode -> Ok(())`).
#[test]
fn encoding_by_value_writes_the_frame() {
    let message = Message::Cancel(Cancel { id: 9 });
    let mut by_value = BytesMut::new();
    Encoder::<Message>::encode(&mut MessageCodec::default(), message.clone(), &mut by_value).unwrap();
    let expected = encode_frame(&message, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(&by_value[..], &expected[..]);
    assert_eq!(
        MessageCodec::default().decode(&mut by_value).unwrap(),
        Some(message)
    );
}
