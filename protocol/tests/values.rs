//! `to_value` / `from_value`: what typed params look like on the wire.

use portpool_protocol::{from_value, to_value, Value};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Inner {
    score: f64,
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Outer {
    question: String,
    tags: Vec<String>,
    inner: Inner,
    pair: (u8, bool),
}

fn sample() -> Outer {
    Outer {
        question: "why?".into(),
        tags: vec!["a".into()],
        inner: Inner {
            score: 0.5,
            blob: vec![0, 1, 2],
        },
        pair: (7, true),
    }
}

#[test]
fn structs_become_maps_keyed_by_field_name_and_bytes_become_bin() {
    let value = to_value(&sample()).unwrap();
    let Value::Map(fields) = &value else {
        panic!("a struct must be a map (a Python dict), got {value}");
    };
    let keys: Vec<_> = fields.iter().map(|(k, _)| k.as_str().unwrap_or("?")).collect();
    assert_eq!(keys, ["question", "tags", "inner", "pair"]);
    assert!(value["inner"].is_map(), "nested structs are maps too: {value}");
    assert_eq!(value["inner"]["blob"], Value::Binary(vec![0, 1, 2]));
    assert_eq!(
        value["pair"],
        Value::Array(vec![Value::from(7), Value::from(true)])
    );
}

#[test]
fn from_value_reads_back_what_to_value_wrote() {
    let value = to_value(&sample()).unwrap();
    let back: Outer = from_value(value).unwrap();
    assert_eq!(back, sample());
}
