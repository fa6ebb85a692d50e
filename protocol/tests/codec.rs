//! Codec behaviour: round trips, limits, malformed input, versioning.

use bytes::{BufMut, BytesMut};
use portpool_protocol::blocking::{read_message, write_message};
use portpool_protocol::*;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(Value::F64),
        ".{0,20}".prop_map(|s| Value::from(s.as_str())),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Binary),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(("[a-z]{1,8}".prop_map(|s| Value::from(s.as_str())), inner), 0..6)
                .prop_map(Value::Map),
        ]
    })
}

fn arb_opt_string() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(".{0,16}")
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            ".{0,8}",
            any::<u32>(),
            1..1000u32,
            proptest::collection::vec("[a-z_]{1,10}", 0..5)
        )
            .prop_map(
                |(major, minor, runtime, pid, max_concurrency, methods)| Message::Hello(Hello {
                    protocol_major: major,
                    protocol_minor: minor,
                    runtime,
                    runtime_version: "3.11".into(),
                    pid,
                    max_concurrency,
                    methods,
                    capabilities: vec!["stream".into()],
                    instance: None,
                })
            ),
        (
            any::<u64>(),
            "[a-z.]{1,12}",
            arb_value(),
            arb_opt_string(),
            proptest::option::of(any::<u64>()),
            arb_opt_string()
        )
            .prop_map(
                |(id, method, params, session, deadline_ms, trace)| Message::Request(Request {
                    id,
                    method,
                    params,
                    session,
                    deadline_ms,
                    trace
                })
            ),
        // A nil result is the same on the wire as an absent one, so nil
        // results round-trip too.
        (any::<u64>(), arb_value()).prop_map(|(id, v)| Message::Response(Response::ok(id, v))),
        (
            any::<u64>(),
            ".{0,10}",
            ".{0,30}",
            arb_opt_string(),
            proptest::option::of(arb_value())
        )
            .prop_filter("data: Some(Nil) decodes as None", |(_, _, _, _, d)| d
                != &Some(Value::Nil))
            .prop_map(
                |(id, kind, message, traceback, data)| Message::Response(Response::err(
                    id,
                    RemoteError {
                        kind,
                        message,
                        traceback,
                        data
                    }
                ))
            ),
        (any::<u64>(), arb_value()).prop_map(|(id, data)| Message::Chunk(Chunk { id, data })),
        any::<u64>().prop_map(|id| Message::Cancel(Cancel { id })),
        any::<u64>().prop_map(|id| Message::Ping(Ping { id })),
        any::<u64>().prop_map(|id| Message::Pong(Pong { id })),
        Just(Message::Shutdown(Shutdown {})),
        ".{0,40}".prop_map(|session| Message::SessionClose(SessionClose { session })),
        ".{0,40}".prop_map(|reason| Message::Goodbye(Goodbye { reason })),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(message in arb_message()) {
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(&message, &mut buf).unwrap();
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(message.clone()));
        prop_assert!(buf.is_empty());

        let mut wire = Vec::new();
        write_message(&mut wire, &message, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(read_message(&mut wire.as_slice(), DEFAULT_MAX_FRAME).unwrap(), Some(message));
    }

    #[test]
    fn a_frame_is_the_header_then_the_body_and_its_size_hint_holds(message in arb_message()) {
        let body = encode_body(&message).unwrap();
        let mut expected = (body.len() as u32).to_be_bytes().to_vec();
        expected.extend_from_slice(&body);
        prop_assert_eq!(&encode_frame(&message, DEFAULT_MAX_FRAME).unwrap(), &expected);
        // The codec appends the same frame after what the buffer holds.
        let mut buf = BytesMut::from(&b"before"[..]);
        MessageCodec::default().encode(&message, &mut buf).unwrap();
        prop_assert_eq!(&buf[..6], b"before");
        prop_assert_eq!(&buf[6..], &expected[..]);
        // Reserved up front: encoding never has to grow the buffer.
        prop_assert!(size_hint(&message) >= body.len(), "{} < {}", size_hint(&message), body.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..256) {
        let mut codec = MessageCodec::new(max);
        let mut buf = BytesMut::from(&bytes[..]);
        // Each call either yields, asks for more, or fails; never panics.
        for _ in 0..64 {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        let _ = read_message(&mut bytes.as_slice(), max);
    }

    #[test]
    fn arbitrary_bodies_are_malformed_or_messages(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        match decode_body(&body) {
            Ok(_) | Err(ProtocolError::Malformed { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }
}

#[test]
fn header_announcing_4_gib_fails_at_once() {
    let mut codec = MessageCodec::default();
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    let capacity_before = buf.capacity();
    match codec.decode(&mut buf) {
        Err(ProtocolError::FrameTooLarge { len, max }) => {
            assert_eq!(len, u32::MAX as u64);
            assert_eq!(max, DEFAULT_MAX_FRAME);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(
        buf.capacity(),
        capacity_before,
        "nothing was reserved for the body"
    );

    let err = read_message(&mut &[0xffu8, 0xff, 0xff, 0xff, 1, 2][..], DEFAULT_MAX_FRAME).unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { len: 4294967295, .. }),
        "{err}"
    );
}

#[test]
fn encoding_over_the_maximum_is_refused() {
    let mut codec = MessageCodec::new(16);
    let message = Message::Chunk(Chunk {
        id: 1,
        data: Value::Binary(vec![0; 100]),
    });
    let err = codec.encode(&message, &mut BytesMut::new()).unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { max: 16, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("exceeds the maximum of 16 bytes"));
}

#[test]
fn a_refused_encoding_leaves_the_buffer_as_it_was() {
    let mut codec = MessageCodec::new(16);
    let message = Message::Chunk(Chunk {
        id: 1,
        data: Value::Binary(vec![0; 100]),
    });
    let mut buf = BytesMut::from(&b"kept"[..]);
    assert!(codec.encode(&message, &mut buf).is_err());
    assert_eq!(&buf[..], b"kept");
    let err = encode_frame(&message, 16).unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { max: 16, .. }),
        "{err}"
    );
}

#[test]
fn a_reused_buffer_holds_exactly_the_new_frame() {
    let big = Message::Chunk(Chunk {
        id: 1,
        data: Value::Binary(vec![0xee; 4096]),
    });
    let small = Message::Pong(Pong { id: 2 });
    let mut buffer = Vec::new();
    encode_frame_into(&big, DEFAULT_MAX_FRAME, &mut buffer).unwrap();
    let capacity = buffer.capacity();
    encode_frame_into(&small, DEFAULT_MAX_FRAME, &mut buffer).unwrap();
    assert_eq!(buffer, encode_frame(&small, DEFAULT_MAX_FRAME).unwrap());
    assert_eq!(buffer.capacity(), capacity, "reused, not reallocated");
    // A refused frame leaves the buffer empty, never half a frame.
    assert!(encode_frame_into(&big, 16, &mut buffer).is_err());
    assert!(buffer.is_empty());
}

#[test]
fn a_large_request_is_encoded_into_a_buffer_sized_for_it() {
    let message = Message::Request(Request {
        id: 7,
        method: "echo".into(),
        params: Value::Array(vec![Value::Binary(vec![0x5a; 1 << 20]), Value::from("x")]),
        session: Some("s".into()),
        deadline_ms: Some(5),
        trace: None,
    });
    let frame = encode_frame(&message, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(
        u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
        frame.len() - 4
    );
    // Sized once from the hint: at most a few hundred bytes to spare, not
    // the doubling of a buffer that grew.
    assert!(frame.capacity() - frame.len() < 512, "{}", frame.capacity());
    assert_eq!(decode_body(&frame[4..]).unwrap(), message);
}

fn frame(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.extend_from_slice(body);
    buf
}

#[test]
fn malformed_bodies_name_the_problem() {
    let mut codec = MessageCodec::default();
    // Not msgpack at all (0xc1 is never used).
    let err = codec.decode(&mut frame(&[0xc1])).unwrap_err();
    assert!(matches!(err, ProtocolError::Malformed { .. }), "{err}");

    let unknown_type = rmp_serde::to_vec_named(&serde_json::json!({"type": "teleport", "id": 1})).unwrap();
    let err = codec.decode(&mut frame(&unknown_type)).unwrap_err();
    assert!(err.to_string().contains("teleport"), "{err}");

    let missing_method = rmp_serde::to_vec_named(&serde_json::json!({"type": "request", "id": 1})).unwrap();
    let err = codec.decode(&mut frame(&missing_method)).unwrap_err();
    assert!(err.to_string().contains("method"), "{err}");
}

#[test]
fn truncated_frame_at_eof_is_an_error_and_clean_eof_is_none() {
    let mut codec = MessageCodec::default();
    let mut partial = BytesMut::from(&[0, 0, 0, 10, 1, 2][..]);
    assert!(codec.decode(&mut partial).unwrap().is_none());
    assert!(matches!(
        codec.decode_eof(&mut partial),
        Err(ProtocolError::TruncatedFrame { .. })
    ));
    assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());

    assert!(read_message(&mut &[][..], DEFAULT_MAX_FRAME).unwrap().is_none());
    let err = read_message(&mut &[0u8, 0, 0, 10, 1][..], DEFAULT_MAX_FRAME).unwrap_err();
    assert!(
        matches!(err, ProtocolError::TruncatedFrame { buffered: 5 }),
        "{err}"
    );
}

fn hello(major: u16, minor: u16) -> Hello {
    Hello {
        protocol_major: major,
        protocol_minor: minor,
        runtime: "python".into(),
        runtime_version: "3.11".into(),
        pid: 1,
        max_concurrency: 4,
        methods: vec![],
        capabilities: vec![],
        instance: None,
    }
}

#[test]
fn version_rule_major_must_match_minor_may_differ() {
    assert!(hello(PROTOCOL_VERSION.major, PROTOCOL_VERSION.minor + 7)
        .validate()
        .is_ok());
    let err = hello(PROTOCOL_VERSION.major + 1, 0).validate().unwrap_err();
    assert!(matches!(err, ProtocolError::VersionMismatch { .. }));
    assert_eq!(
        err.to_string(),
        "protocol version mismatch: we speak 1.0, the worker speaks 2.0"
    );
    let mut zero = hello(1, 0);
    zero.max_concurrency = 0;
    assert!(zero.validate().is_err());
}

#[test]
fn typed_values_convert_both_ways() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Point {
        x: i32,
        label: String,
    }
    let value = to_value(&Point {
        x: -2,
        label: "a".into(),
    })
    .unwrap();
    let back: Point = from_value(value).unwrap();
    assert_eq!(
        back,
        Point {
            x: -2,
            label: "a".into()
        }
    );
    let err = from_value::<Point>(Value::from(3)).unwrap_err();
    assert!(err.to_string().contains("cannot decode value"), "{err}");
}

proptest! {
    /// Frames arriving in arbitrary pieces decode exactly as when whole
    /// (a header check once misread body bytes as the next header).
    #[test]
    fn frames_split_anywhere_decode_the_same(
        messages in proptest::collection::vec(arb_message(), 1..6),
        cuts in proptest::collection::vec(1usize..64, 1..40),
    ) {
        let mut wire = BytesMut::new();
        let mut codec = MessageCodec::default();
        for m in &messages {
            codec.encode(m, &mut wire).unwrap();
        }
        let mut decoder = MessageCodec::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut cuts = cuts.into_iter().cycle();
        while !wire.is_empty() {
            let n = cuts.next().unwrap().min(wire.len());
            buf.extend_from_slice(&wire.split_to(n));
            while let Some(m) = decoder.decode(&mut buf).unwrap() {
                decoded.push(m);
            }
        }
        prop_assert_eq!(decoded, messages);
    }
}

#[test]
fn a_body_starting_like_a_huge_header_is_not_mistaken_for_one() {
    // Body bytes 0x83 0xa4 ... read as a header would announce 2.2 GB.
    let message = Message::Cancel(Cancel { id: 1 });
    let mut wire = BytesMut::new();
    MessageCodec::default().encode(&message, &mut wire).unwrap();
    let mut decoder = MessageCodec::new(1024);
    let mut buf = BytesMut::from(&wire[..HEADER_LEN + 1]);
    assert!(decoder.decode(&mut buf).unwrap().is_none());
    buf.extend_from_slice(&wire[HEADER_LEN + 1..]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), Some(message));
}

/// `message` encoded as a map, then its entries rotated by `shift`: the
/// same message with `type` somewhere other than first (as a runtime in
/// another language may write it).
fn rotated_body(message: &Message, shift: usize) -> Vec<u8> {
    let body = encode_body(message).unwrap();
    let Value::Map(mut entries) = rmpv::decode::read_value(&mut body.as_slice()).unwrap() else {
        panic!("a message encodes as a map")
    };
    let len = entries.len();
    entries.rotate_left(shift % len);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Value::Map(entries)).unwrap();
    out
}

proptest! {
    /// Decoding reads `type` first when it is first (one pass) and looks
    /// it up elsewhere otherwise: both give the same message.
    #[test]
    fn the_type_key_may_be_anywhere_in_the_map(message in arb_message(), shift in 0usize..8, junk in any::<bool>()) {
        let mut body = rotated_body(&message, shift);
        if junk {
            // An unknown key in front (so `type` is not first) is ignored too.
            let Value::Map(mut entries) = rmpv::decode::read_value(&mut body.as_slice()).unwrap() else { unreachable!() };
            entries.insert(0, (Value::from("x-extra"), Value::from(7)));
            body.clear();
            rmpv::encode::write_value(&mut body, &Value::Map(entries)).unwrap();
        }
        prop_assert_eq!(decode_body(&body).unwrap(), message);
    }
}

#[test]
fn a_missing_or_bad_type_key_is_malformed_and_says_so() {
    let body = |v: serde_json::Value| rmp_serde::to_vec_named(&v).unwrap();
    let cases = [
        (body(serde_json::json!({})), "type"),
        (body(serde_json::json!({"id": 1, "method": "m"})), "type"),
        (body(serde_json::json!({"id": 1, "type": 5})), "type"),
        (body(serde_json::json!({"type": 5, "id": 1})), "string"),
        (body(serde_json::json!({"id": 1, "type": "teleport"})), "teleport"),
        (body(serde_json::json!({"id": 1, "type": "request"})), "method"),
        (body(serde_json::json!([1, 2])), "map"),
    ];
    for (bytes, needle) in cases {
        let err = decode_body(&bytes).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err} should mention {needle}");
    }
}

#[test]
fn goodbye_round_trips_and_decodes_from_another_runtime() {
    let goodbye = Message::Goodbye(Goodbye {
        reason: "draining".into(),
    });
    assert_eq!(goodbye.kind(), "goodbye");
    let frame = encode_frame(&goodbye, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(decode_body(&frame[HEADER_LEN..]).unwrap(), goodbye);
    // As a listener writes it: `type` after the reason, an extra key.
    let value = Value::Map(vec![
        ("reason".into(), "child exited with code 1".into()),
        ("at".into(), 3.into()),
        ("type".into(), "goodbye".into()),
    ]);
    let mut body = Vec::new();
    rmpv::encode::write_value(&mut body, &value).unwrap();
    assert_eq!(
        decode_body(&body).unwrap(),
        Message::Goodbye(Goodbye {
            reason: "child exited with code 1".into()
        })
    );
    // No reason at all: an empty one.
    let mut body = Vec::new();
    rmpv::encode::write_value(&mut body, &Value::Map(vec![("type".into(), "goodbye".into())])).unwrap();
    assert_eq!(
        decode_body(&body).unwrap(),
        Message::Goodbye(Goodbye {
            reason: String::new()
        })
    );
}
