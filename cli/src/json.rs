//! MessagePack [`Value`] <-> JSON for the command line.
//!
//! JSON has no binary type: a msgpack `bin` is written as `{"$bin": "<hex>"}`
//! (the convention of the protocol's test vectors), and such an object is read
//! back as `bin`. Map keys that are not strings are written as their JSON
//! text. Non-finite floats become `null`.

use portpool::Value;
use serde_json::{Map, Number, Value as Json};

/// Converts a JSON value into a MessagePack value.
pub(crate) fn to_msgpack(json: &Json) -> Result<Value, String> {
    Ok(match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::Array(items.iter().map(to_msgpack).collect::<Result<_, _>>()?),
        Json::Object(map) => {
            if map.len() == 1 {
                if let Some(bin) = map.get("$bin") {
                    let hex = bin.as_str().ok_or("\"$bin\" must be a hex string")?;
                    return decode_hex(hex).map(Value::Binary);
                }
            }
            Value::Map(
                map.iter()
                    .map(|(k, v)| Ok((Value::from(k.as_str()), to_msgpack(v)?)))
                    .collect::<Result<_, String>>()?,
            )
        }
    })
}

/// Converts a MessagePack value into JSON.
pub(crate) fn to_json(value: &Value) -> Json {
    match value {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => {
            if let Some(u) = i.as_u64() {
                Json::from(u)
            } else {
                Json::from(i.as_i64().unwrap_or_default())
            }
        }
        Value::F32(f) => float(f64::from(*f)),
        Value::F64(f) => float(*f),
        Value::String(s) => Json::String(match s.as_str() {
            Some(text) => text.to_owned(),
            None => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        }),
        Value::Binary(bytes) => bin(bytes),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let key = match k {
                    Value::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    other => to_json(other).to_string(),
                };
                map.insert(key, to_json(v));
            }
            Json::Object(map)
        }
        Value::Ext(kind, bytes) => {
            let mut map = Map::new();
            map.insert(
                "$ext".into(),
                Json::Array(vec![Json::from(*kind), Json::String(hex(bytes))]),
            );
            Json::Object(map)
        }
    }
}

fn float(f: f64) -> Json {
    Number::from_f64(f).map_or(Json::Null, Json::Number)
}

fn bin(bytes: &[u8]) -> Json {
    let mut map = Map::new();
    map.insert("$bin".into(), Json::String(hex(bytes)));
    Json::Object(map)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    if text.len() % 2 != 0 {
        return Err(format!("\"$bin\" hex has an odd length ({})", text.len()));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("\"$bin\" is not hex at offset {i}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let json: Json = serde_json::from_str(
            r#"{"a": [1, -2, 3.5, null, true, "x"], "b": {"$bin": "00ff10"}, "c": {"d": 18446744073709551615}}"#,
        )
        .unwrap();
        let value = to_msgpack(&json).unwrap();
        assert_eq!(to_json(&value), json);
    }

    #[test]
    fn bin_is_hex() {
        assert_eq!(
            to_msgpack(&serde_json::json!({"$bin": "0aff"})).unwrap(),
            Value::Binary(vec![10, 255])
        );
        assert!(to_msgpack(&serde_json::json!({"$bin": "0g"})).is_err());
        assert!(to_msgpack(&serde_json::json!({"$bin": "abc"})).is_err());
        assert!(to_msgpack(&serde_json::json!({"$bin": 1})).is_err());
        assert_eq!(
            to_json(&Value::Binary(vec![1, 2])),
            serde_json::json!({"$bin": "0102"})
        );
    }

    #[test]
    fn odd_values() {
        assert_eq!(to_json(&Value::F64(f64::NAN)), Json::Null);
        let map = Value::Map(vec![(Value::from(1), Value::from("one"))]);
        assert_eq!(to_json(&map), serde_json::json!({"1": "one"}));
    }
}
