//! Params and replies to and from MessagePack values.

use portpool::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::DspyError;

/// Params as MessagePack maps: through JSON values, since
/// `portpool::to_value` writes structs as arrays.
pub(crate) fn encode<P: Serialize + ?Sized>(params: &P) -> Result<Value, DspyError> {
    let json = serde_json::to_value(params).map_err(|e| DspyError::Encode {
        reason: e.to_string(),
    })?;
    portpool::to_value(&json).map_err(|e| DspyError::Encode {
        reason: e.to_string(),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(value: Value, target: &'static str) -> Result<T, DspyError> {
    // Through JSON values too, so enums and maps read as their serde JSON
    // form (what the worker sends).
    let decode_error = |reason: String| DspyError::Decode { target, reason };
    let json = serde_json::to_value(&value).map_err(|e| decode_error(e.to_string()))?;
    serde_json::from_value(json).map_err(|e| decode_error(e.to_string()))
}
