//! Arbitrary bytes into the frame decoder: never a panic, never an
//! allocation beyond the configured maximum.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portpool_protocol::MessageCodec;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = MessageCodec::new(1 << 20);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
    let _ = portpool_protocol::blocking::read_message(&mut &data[..], 1 << 20);
});
