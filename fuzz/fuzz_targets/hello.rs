//! Arbitrary frame bodies decoded and validated as a worker's hello.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portpool_protocol::{decode_body, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(Message::Hello(hello)) = decode_body(data) {
        let _ = hello.validate();
    }
});
