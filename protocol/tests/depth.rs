//! The nesting bound: no body can overflow the decoding thread's stack.

use portpool_protocol::*;
use proptest::prelude::*;

/// The depth of a value as `nesting_depth` counts it: arrays and maps only.
fn depth_of(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| depth_of(k).max(depth_of(v)))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

fn arb_any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f32>().prop_map(Value::F32),
        any::<f64>().prop_map(Value::F64),
        ".{0,40}".prop_map(|s| Value::from(s.as_str())),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Binary),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(t, d)| Value::Ext(t, d)),
    ];
    leaf.prop_recursive(8, 128, 20, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..20).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..20).prop_map(Value::Map),
        ]
    })
}

fn encode(value: &Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, value).unwrap();
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_scanner_agrees_with_rmpv(value in arb_any_value()) {
        let bytes = encode(&value);
        prop_assert_eq!(nesting_depth(&bytes).unwrap(), depth_of(&value));
        // Every strict prefix ends early.
        for cut in [0, bytes.len() / 2, bytes.len() - 1] {
            if cut < bytes.len() {
                prop_assert!(matches!(
                    nesting_depth(&bytes[..cut]),
                    Err(ProtocolError::Malformed { .. })
                ), "prefix of {} bytes", cut);
            }
        }
    }

    #[test]
    fn the_scanner_agrees_with_rmpv_on_wrapped_values(
        value in arb_any_value(),
        levels in 0usize..MAX_DEPTH + 20,
        as_map in any::<bool>(),
    ) {
        let mut wrapped = value;
        for _ in 0..levels {
            wrapped = if as_map {
                Value::Map(vec![(Value::from("k"), wrapped)])
            } else {
                Value::Array(vec![Value::Nil, wrapped])
            };
        }
        let bytes = encode(&wrapped);
        let expected = depth_of(&wrapped);
        match nesting_depth(&bytes) {
            Ok(depth) => prop_assert_eq!(depth, expected),
            Err(ProtocolError::TooDeep { limit }) => {
                prop_assert_eq!(limit, MAX_DEPTH);
                prop_assert!(expected > MAX_DEPTH);
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
        std::mem::forget(wrapped); // dropping recursively is not under test
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_scanner(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = nesting_depth(&bytes);
    }
}

/// A `response` frame body whose `result` is `levels` arrays deep; with the
/// message's own map the body is `levels + 1` deep.
fn deep_response(levels: usize) -> Vec<u8> {
    let mut body = vec![0x83];
    body.extend(encode(&Value::from("type")));
    body.extend(encode(&Value::from("response")));
    body.extend(encode(&Value::from("id")));
    body.push(0x07);
    body.extend(encode(&Value::from("result")));
    body.extend(std::iter::repeat(0x91).take(levels));
    body.push(0x2a);
    body
}

fn deep_chunk(levels: usize) -> Vec<u8> {
    let mut body = vec![0x83];
    body.extend(encode(&Value::from("type")));
    body.extend(encode(&Value::from("chunk")));
    body.extend(encode(&Value::from("id")));
    body.push(0x07);
    body.extend(encode(&Value::from("data")));
    // Maps this time: {"k": {"k": ... 42}}.
    for _ in 0..levels {
        body.push(0x81);
        body.extend(encode(&Value::from("k")));
    }
    body.push(0x2a);
    body
}

/// A hello with an unknown key holding a deep value: ignored keys are
/// skipped recursively by serde too.
fn deep_hello(levels: usize) -> Vec<u8> {
    let mut body = vec![0x83];
    body.extend(encode(&Value::from("type")));
    body.extend(encode(&Value::from("hello")));
    body.extend(encode(&Value::from("protocol_major")));
    body.push(0x01);
    body.extend(encode(&Value::from("extra")));
    body.extend(std::iter::repeat(0x91).take(levels));
    body.push(0x2a);
    body
}

fn nested_result(levels: usize) -> Value {
    let mut value = Value::from(42);
    for _ in 0..levels {
        value = Value::Array(vec![value]);
    }
    value
}

/// Runs `f` on a thread with a tokio worker's default stack (2 MiB).
fn on_2mib_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn_scoped(s, f)
            .unwrap()
            .join()
            .expect("no stack overflow")
    })
}

#[test]
fn max_depth_bodies_decode_on_a_2_mib_stack() {
    on_2mib_stack(|| {
        let message = decode_body(&deep_response(MAX_DEPTH - 1)).expect("at the limit");
        match &message {
            Message::Response(Response {
                id: 7,
                outcome: Ok(result),
            }) => {
                assert_eq!(nesting_depth(&encode(result)).unwrap(), MAX_DEPTH - 1);
                assert!(*result == nested_result(MAX_DEPTH - 1));
            }
            other => panic!("expected a response, got {}", other.kind()),
        }
        drop(message);
        assert!(matches!(
            decode_body(&deep_chunk(MAX_DEPTH - 1)),
            Ok(Message::Chunk(_))
        ));
        assert!(matches!(
            decode_body(&deep_hello(MAX_DEPTH - 1)),
            Ok(Message::Hello(_))
        ));
    });
}

#[test]
fn inline_depth_bodies_decode_on_a_small_stack() {
    // Bodies up to INLINE_DEPTH decode on the caller's thread: a quarter of
    // a tokio worker's stack is plenty for them in a debug build.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn_scoped(s, || {
                let message = decode_body(&deep_response(INLINE_DEPTH - 1)).unwrap();
                assert!(matches!(message, Message::Response(_)));
                let message = decode_body(&deep_chunk(INLINE_DEPTH - 1)).unwrap();
                assert!(matches!(message, Message::Chunk(_)));
            })
            .unwrap()
            .join()
            .expect("no stack overflow");
    });
}

#[test]
fn too_deep_bodies_are_refused_without_decoding() {
    on_2mib_stack(|| {
        for levels in [MAX_DEPTH, 600 * 2, 100_000] {
            for body in [deep_response(levels), deep_chunk(levels), deep_hello(levels)] {
                match decode_body(&body) {
                    Err(ProtocolError::TooDeep { limit }) => assert_eq!(limit, MAX_DEPTH),
                    other => panic!("{levels}: expected TooDeep, got {other:?}"),
                }
            }
        }
    });
    let err = decode_body(&deep_response(MAX_DEPTH)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("message nested deeper than {MAX_DEPTH} levels")
    );
}

#[test]
fn deep_bodies_through_the_codec_and_blocking_reader() {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;
    let frame = |body: Vec<u8>| {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend(body);
        f
    };
    on_2mib_stack(|| {
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::from(&frame(deep_response(100_000))[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtocolError::TooDeep { .. })
        ));
        let mut buf = BytesMut::from(&frame(deep_response(MAX_DEPTH - 1))[..]);
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Message::Response(_)))));

        let bytes = frame(deep_chunk(5000));
        let got = blocking::read_message(&mut &bytes[..], DEFAULT_MAX_FRAME);
        assert!(matches!(got, Err(ProtocolError::TooDeep { .. })));
    });
}

#[test]
fn deep_looking_bin_and_ext_payloads_are_not_nesting() {
    // 100,000 bytes of 0x91 inside a bin and an ext are data, not arrays.
    let payload = vec![0x91u8; 100_000];
    for value in [Value::Binary(payload.clone()), Value::Ext(3, payload.clone())] {
        let message = Message::Response(Response::ok(1, Value::Array(vec![value.clone()])));
        let body = encode_body(&message).unwrap();
        assert_eq!(nesting_depth(&body).unwrap(), 2);
        assert_eq!(decode_body(&body).unwrap(), message);
    }
}
