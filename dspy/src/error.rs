//! The crate's error type and the mapping of the worker's errors onto it.

use portpool::{CallError, PoolError, RemoteError, SessionError, WorkerId};
use serde::Deserialize;

use crate::codec::decode;

/// Everything the crate's calls fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DspyError {
    /// The signature could not be parsed or built.
    #[error("{worker}: bad signature: {message}")]
    BadSignature {
        /// The worker that said so.
        worker: WorkerId,
        /// DSPy's message.
        message: String,
    },
    /// Input fields of the signature are missing from the call (or an
    /// example of the train set).
    #[error("{worker}: missing field(s) {fields:?}: {message}")]
    MissingField {
        /// The worker that said so.
        worker: WorkerId,
        /// The missing fields.
        fields: Vec<String>,
        /// The message.
        message: String,
    },
    /// The inputs hold fields the signature does not have.
    #[error("{worker}: unknown field(s) {fields:?}: {message}")]
    UnknownField {
        /// The worker that said so.
        worker: WorkerId,
        /// The unknown fields.
        fields: Vec<String>,
        /// The message.
        message: String,
    },
    /// The LM call failed (HTTP error, refused connection, ...).
    #[error("{worker}: LM error{}: {message}", .status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Lm {
        /// The worker that made the call.
        worker: WorkerId,
        /// The HTTP status, when known.
        status: Option<u16>,
        /// The message, with the provider's.
        message: String,
    },
    /// The LM replied, but its text could not be parsed into the outputs.
    #[error("{worker}: cannot parse the LM's reply: {message}")]
    Parse {
        /// The worker that made the call.
        worker: WorkerId,
        /// DSPy's message.
        message: String,
        /// The LM's raw reply (first 4000 characters).
        lm_response: Option<String>,
    },
    /// No LM is configured ([`Dspy::configure`](crate::Dspy::configure), or the worker's
    /// `PORTPOOL_DSPY_MODEL`), or its API key variable is not set.
    #[error("{worker}: LM not configured: {message}")]
    NotConfigured {
        /// The worker that said so.
        worker: WorkerId,
        /// The message.
        message: String,
    },
    /// The program is not in its session (dropped, or its worker was lost
    /// and restore is off).
    #[error("{worker}: no program {name:?} in the session")]
    NoProgram {
        /// The worker that said so.
        worker: WorkerId,
        /// The program's name.
        name: String,
    },
    /// Any other error of the worker (`BadRequest`, `BadState`, `DspyError`, ...).
    #[error("{worker}: {kind}: {message}")]
    Remote {
        /// The worker.
        worker: WorkerId,
        /// The remote error type.
        kind: String,
        /// Its message.
        message: String,
    },
    /// The outputs did not fit the Rust type asked for.
    #[error("outputs do not fit {target}: {reason}")]
    Decode {
        /// The Rust type.
        target: &'static str,
        /// Why.
        reason: String,
    },
    /// The inputs could not be encoded.
    #[error("cannot encode the inputs: {reason}")]
    Encode {
        /// Why.
        reason: String,
    },
    /// The session or pool failed (worker lost, time-out, pool closed, ...).
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl DspyError {
    /// Whether the program's worker was lost (its state is gone).
    pub fn is_session_lost(&self) -> bool {
        matches!(
            self,
            DspyError::Session(SessionError::SessionLost { .. })
                | DspyError::Session(SessionError::Pool(PoolError::WorkerGone { .. }))
                | DspyError::Session(SessionError::Pool(PoolError::Call(
                    CallError::WorkerCrashed { .. }
                )))
        )
    }
}

#[derive(Deserialize, Default)]
struct ErrorData {
    #[serde(default)]
    missing: Vec<String>,
    #[serde(default)]
    unknown: Vec<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    lm_response: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

pub(crate) fn from_session(error: SessionError) -> DspyError {
    match error {
        SessionError::Pool(PoolError::Call(CallError::Remote { worker, error, .. })) => {
            from_remote(worker, *error)
        }
        other => DspyError::Session(other),
    }
}

fn from_remote(worker: WorkerId, error: RemoteError) -> DspyError {
    let data: ErrorData = error
        .data
        .clone()
        .and_then(|d| decode(d, "error data").ok())
        .unwrap_or_default();
    let message = error.message;
    match error.kind.as_str() {
        "BadSignature" => DspyError::BadSignature { worker, message },
        "MissingField" => DspyError::MissingField {
            worker,
            fields: data.missing,
            message,
        },
        "UnknownField" => DspyError::UnknownField {
            worker,
            fields: data.unknown,
            message,
        },
        "LmError" => DspyError::Lm {
            worker,
            status: data.status,
            message,
        },
        "ParseError" => DspyError::Parse {
            worker,
            message,
            lm_response: data.lm_response,
        },
        "NotConfigured" => DspyError::NotConfigured { worker, message },
        "NoProgram" => DspyError::NoProgram {
            worker,
            name: data.name.unwrap_or_default(),
        },
        _ => DspyError::Remote {
            worker,
            kind: error.kind,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_errors_map_to_typed_variants() {
        let worker = WorkerId(3);
        let e = from_remote(
            worker,
            RemoteError {
                kind: "MissingField".into(),
                message: "m".into(),
                traceback: None,
                data: Some(portpool::to_value(&serde_json::json!({"missing": ["context"]})).unwrap()),
            },
        );
        assert!(
            matches!(e, DspyError::MissingField { ref fields, .. } if fields == &["context".to_string()]),
            "{e:?}"
        );
        let e = from_remote(
            worker,
            RemoteError {
                kind: "LmError".into(),
                message: "down".into(),
                traceback: None,
                data: Some(portpool::to_value(&serde_json::json!({"status": 500})).unwrap()),
            },
        );
        assert!(
            matches!(
                e,
                DspyError::Lm {
                    status: Some(500),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("HTTP 500"));
    }
}
