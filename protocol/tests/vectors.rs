//! The shared byte-exact vectors (protocol/vectors/vectors.json), also
//! checked by the Python suite.

use bytes::BytesMut;
use portpool_protocol::{decode_body, encode_frame, Message, MessageCodec, Value, DEFAULT_MAX_FRAME};
use tokio_util::codec::Decoder;

fn from_json(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::F64(n.as_f64().unwrap())
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        serde_json::Value::Object(map) => {
            if map.len() == 1 {
                if let Some(serde_json::Value::String(hex)) = map.get("$bin") {
                    return Value::Binary(hex::decode(hex).unwrap());
                }
            }
            Value::Map(
                map.iter()
                    .map(|(k, v)| (Value::from(k.as_str()), from_json(v)))
                    .collect(),
            )
        }
    }
}

struct Vector {
    name: String,
    frame: Vec<u8>,
    message: Option<serde_json::Value>,
    equals: Option<String>,
}

fn vectors() -> Vec<Vector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/vectors.json");
    let text = std::fs::read_to_string(path).expect("vectors.json is readable");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| Vector {
            name: v["name"].as_str().unwrap().to_string(),
            frame: hex::decode(v["frame"].as_str().unwrap()).unwrap(),
            message: v.get("message").cloned(),
            equals: v.get("equals").and_then(|e| e.as_str()).map(String::from),
        })
        .collect()
}

#[test]
fn every_vector_round_trips_byte_exactly() {
    let all = vectors();
    assert!(all.len() >= 12, "expected the full vector set, got {}", all.len());
    for vector in &all {
        let body = &vector.frame[4..];
        assert_eq!(
            u32::from_be_bytes(vector.frame[..4].try_into().unwrap()) as usize,
            body.len(),
            "{}: header counts the body",
            vector.name
        );
        let message = decode_body(body).unwrap_or_else(|e| panic!("{}: {e}", vector.name));
        match (&vector.message, &vector.equals) {
            (Some(meaning), _) => {
                // The typed message re-encodes to the very same bytes...
                let encoded = encode_frame(&message, DEFAULT_MAX_FRAME).unwrap();
                assert_eq!(
                    hex::encode(&encoded),
                    hex::encode(&vector.frame),
                    "{}",
                    vector.name
                );
                // ...and the JSON meaning encodes to them too.
                let mut expected = Vec::new();
                rmpv::encode::write_value(&mut expected, &from_json(meaning)).unwrap();
                assert_eq!(
                    hex::encode(&expected),
                    hex::encode(body),
                    "{}: meaning",
                    vector.name
                );
            }
            (None, Some(other)) => {
                let target = all
                    .iter()
                    .find(|v| &v.name == other)
                    .expect("named vector exists");
                let expected: Message = decode_body(&target.frame[4..]).unwrap();
                assert_eq!(message, expected, "{} decodes as {}", vector.name, other);
            }
            (None, None) => panic!("{}: vector has neither message nor equals", vector.name),
        }
    }
}

#[test]
fn codec_decodes_concatenated_vectors_in_order() {
    let all = vectors();
    let mut buf = BytesMut::new();
    for v in &all {
        buf.extend_from_slice(&v.frame);
    }
    let mut codec = MessageCodec::default();
    let mut count = 0;
    while let Some(message) = codec.decode(&mut buf).unwrap() {
        assert_eq!(message, decode_body(&all[count].frame[4..]).unwrap());
        count += 1;
    }
    assert_eq!(count, all.len());
    assert!(buf.is_empty());
}
