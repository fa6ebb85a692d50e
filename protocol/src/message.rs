//! The message types carried in frame bodies.

use rmpv::Value;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Identifies one request (and its chunks, response and cancel) on one worker.
pub type RequestId = u64;

/// One protocol message: the body of one frame, a MessagePack map whose
/// `type` key names the variant. Unknown keys are ignored when decoding.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Worker -> host, first frame: the worker is ready.
    Hello(Hello),
    /// Host -> worker: call a method.
    Request(Request),
    /// Worker -> host: the single final outcome of a request.
    Response(Response),
    /// Worker -> host: one streamed item of a request; a `Response` closes the stream.
    Chunk(Chunk),
    /// Host -> worker: the caller gave up on a request.
    Cancel(Cancel),
    /// Host -> worker: liveness probe.
    Ping(Ping),
    /// Worker -> host: answer to a `Ping` with the same id.
    Pong(Pong),
    /// Host -> worker: finish in-flight work and exit 0.
    Shutdown(Shutdown),
    /// Host -> worker: drop the state kept for a session.
    SessionClose(SessionClose),
    /// Worker -> host, over the network only: the worker is going away
    /// (draining, or its runtime died); see `docs/remote.md`.
    Goodbye(Goodbye),
}

impl Message {
    /// The wire name of this message's type (the `type` key).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Request(_) => "request",
            Message::Response(_) => "response",
            Message::Chunk(_) => "chunk",
            Message::Cancel(_) => "cancel",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::Shutdown(_) => "shutdown",
            Message::SessionClose(_) => "session_close",
            Message::Goodbye(_) => "goodbye",
        }
    }
}

/// The wire names of [`Message`]'s variants, for error messages.
const MESSAGE_TYPES: &[&str] = &[
    "hello",
    "request",
    "response",
    "chunk",
    "cancel",
    "ping",
    "pong",
    "shutdown",
    "session_close",
    "goodbye",
];

/// Decoding by hand rather than serde's internally tagged enum, which first
/// buffers the whole map (every key and value copied into serde's
/// `Content`) and then decodes it a second time. When `type` is the first
/// key, as both runtimes and [`Message`]'s own encoding write it, the rest
/// of the map decodes straight into the variant in one pass; elsewhere the
/// map is read into a [`Value`] first (the slow path, same result).
impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MessageVisitor)
    }
}

struct MessageVisitor;

impl<'de> Visitor<'de> for MessageVisitor {
    type Value = Message;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map with a `type` key")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        let Some(first) = map.next_key::<Value>()? else {
            return Err(de::Error::missing_field("type"));
        };
        if first.as_str() == Some("type") {
            let kind: String = map.next_value()?;
            return variant(&kind, MapAccessDeserializer::new(map));
        }
        // `type` is elsewhere: collect the map, take it out, decode the rest.
        let mut entries = vec![(first, map.next_value::<Value>()?)];
        while let Some(entry) = map.next_entry::<Value, Value>()? {
            entries.push(entry);
        }
        let at = entries
            .iter()
            .position(|(key, _)| key.as_str() == Some("type"))
            .ok_or_else(|| de::Error::missing_field("type"))?;
        let (_, kind) = entries.remove(at);
        let Value::String(kind) = kind else {
            return Err(de::Error::invalid_type(
                de::Unexpected::Other("a non-string `type`"),
                &"a message type name",
            ));
        };
        let kind = kind
            .into_str()
            .ok_or_else(|| de::Error::custom("the `type` key is not valid UTF-8"))?;
        variant(&kind, Value::Map(entries)).map_err(de::Error::custom)
    }
}

/// Decodes the fields of the message type named `kind` from `fields`.
fn variant<'de, D: Deserializer<'de>>(kind: &str, fields: D) -> Result<Message, D::Error> {
    Ok(match kind {
        "hello" => Message::Hello(Hello::deserialize(fields)?),
        "request" => Message::Request(Request::deserialize(fields)?),
        "response" => Message::Response(Response::deserialize(fields)?),
        "chunk" => Message::Chunk(Chunk::deserialize(fields)?),
        "cancel" => Message::Cancel(Cancel::deserialize(fields)?),
        "ping" => Message::Ping(Ping::deserialize(fields)?),
        "pong" => Message::Pong(Pong::deserialize(fields)?),
        "shutdown" => Message::Shutdown(Shutdown::deserialize(fields)?),
        "session_close" => Message::SessionClose(SessionClose::deserialize(fields)?),
        "goodbye" => Message::Goodbye(Goodbye::deserialize(fields)?),
        other => return Err(de::Error::unknown_variant(other, MESSAGE_TYPES)),
    })
}

/// The worker's first frame: who it is and what it can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol major version; must equal [`crate::PROTOCOL_VERSION`]'s major.
    pub protocol_major: u16,
    /// Protocol minor version; any value is accepted.
    #[serde(default)]
    pub protocol_minor: u16,
    /// Runtime name, e.g. `"python"`.
    #[serde(default)]
    pub runtime: String,
    /// Runtime version, e.g. `"3.11.7"`.
    #[serde(default)]
    pub runtime_version: String,
    /// The worker's process id as it sees it.
    #[serde(default)]
    pub pid: u32,
    /// How many requests the worker runs at once (at least 1).
    #[serde(default = "one")]
    pub max_concurrency: u32,
    /// The methods it serves.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Optional features, e.g. `"stream"`, `"cancel"`, `"session"`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// A random id of this worker process's life, sent by workers reached
    /// over the network (see `docs/remote.md`): a reconnection that sees the
    /// same instance reaches the same state. Absent over stdio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

fn one() -> u32 {
    1
}

fn nil() -> Value {
    Value::Nil
}

/// A call of `method` with `params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Unique among this worker's in-flight requests.
    pub id: RequestId,
    /// The handler to run.
    pub method: String,
    /// Its argument, any MessagePack value.
    #[serde(default = "nil")]
    pub params: Value,
    /// Session whose state the handler sees as `ctx.session`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Time budget in milliseconds from when the request was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Opaque trace context propagated to the worker's logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// The structured error a handler raised (an application error, not a fault
/// of the worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    /// The exception type, e.g. `"ValueError"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The exception message.
    pub message: String,
    /// The formatted traceback, when the runtime has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
    /// Extra structured data attached by the handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// The final outcome of a request: a result or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawResponse", into = "RawResponse")]
pub struct Response {
    /// The request this answers.
    pub id: RequestId,
    /// The handler's return value or the error it raised.
    pub outcome: Result<Value, RemoteError>,
}

/// Wire shape of [`Response`]: exactly one of `result` / `error` is present.
#[derive(Serialize, Deserialize)]
struct RawResponse {
    id: RequestId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<RemoteError>,
}

impl From<RawResponse> for Response {
    fn from(raw: RawResponse) -> Self {
        let outcome = match raw.error {
            Some(error) => Err(error),
            // A nil result decodes as None: both mean "returned nil".
            None => Ok(raw.result.unwrap_or(Value::Nil)),
        };
        Response { id: raw.id, outcome }
    }
}

impl From<Response> for RawResponse {
    fn from(response: Response) -> Self {
        match response.outcome {
            Ok(result) => RawResponse {
                id: response.id,
                result: Some(result),
                error: None,
            },
            Err(error) => RawResponse {
                id: response.id,
                result: None,
                error: Some(error),
            },
        }
    }
}

impl Response {
    /// A successful response.
    pub fn ok(id: RequestId, result: Value) -> Self {
        Response {
            id,
            outcome: Ok(result),
        }
    }

    /// A failed response.
    pub fn err(id: RequestId, error: RemoteError) -> Self {
        Response {
            id,
            outcome: Err(error),
        }
    }
}

/// One streamed item of request `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// The streaming request.
    pub id: RequestId,
    /// The item.
    #[serde(default = "nil")]
    pub data: Value,
}

/// Cancels request `id`; a response may still arrive and is discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The request to cancel.
    pub id: RequestId,
}

/// Liveness probe; answered by a [`Pong`] with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Probe id, echoed back.
    pub id: u64,
}

/// Answer to [`Ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The id of the ping answered.
    pub id: u64,
}

/// Asks the worker to finish in-flight work and exit 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Shutdown {}

/// Asks the worker to drop the state of `session`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClose {
    /// The session whose state is dropped.
    pub session: String,
}

/// The worker is going away: sent by a network listener (never by the stdio
/// runtime) before it closes the connection. The host takes no new calls on
/// it, lets in-flight calls finish, and reports `reason` as the worker's last
/// words when the connection ends with calls still in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    /// Why, e.g. `"draining"` or the child runtime's exit status and stderr tail.
    #[serde(default)]
    pub reason: String,
}
