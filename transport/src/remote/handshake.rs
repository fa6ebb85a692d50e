//! One connection to a listener: TCP, TLS, the HMAC handshake of
//! `docs/remote.md`, then the hello; the result is a [`RemoteWorker`].

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use portpool_protocol::handshake::{
    decode_handshake, encode_handshake, handshake_body_len, HandshakeMessage, HANDSHAKE_VERSION,
};
use portpool_protocol::{Message, MessageCodec, ProtocolError, HEADER_LEN};
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio_util::codec::FramedRead;

use super::launcher::LiveToken;
use super::{RemotePeer, RemoteWorker, Shared};
use crate::conn::writer::FrameWriter;
use crate::conn::{Conn, Outstanding, Parts, Peer};
use crate::{LaunchError, WorkerAddress, WorkerId, WorkerInfo};

type HmacSha256 = Hmac<Sha256>;

const CLIENT_LABEL: &[u8] = b"portpool-auth-v1 client";
const SERVER_LABEL: &[u8] = b"portpool-auth-v1 server";
const NONCE_LEN: usize = 32;
/// The longest hello `instance` accepted (the listener sends 32 hex digits).
const MAX_INSTANCE_LEN: usize = 64;

/// Whether a hello's `instance` can go into a worker address.
fn valid_instance(instance: &str) -> bool {
    (1..=MAX_INSTANCE_LEN).contains(&instance.len())
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What one connection needs from its launcher.
pub(crate) struct Dial<'a> {
    pub(crate) id: WorkerId,
    /// `HOST:PORT`, as reported in errors and [`WorkerInfo::endpoint`].
    pub(crate) endpoint: &'a str,
    /// Where to connect: a resolved address, or `None` to resolve `endpoint`.
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) secret: &'a [u8],
    pub(crate) tls: Option<(
        &'a tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub(crate) max_frame: usize,
    pub(crate) max_stream_buffer: usize,
    pub(crate) max_concurrency: Option<usize>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects, authenticates and waits for the hello. `stage` says what was
/// being waited for, for a time-out's message.
pub(crate) async fn dial(
    dial: Dial<'_>,
    live: LiveToken,
    retired: watch::Receiver<bool>,
    stage: &Mutex<&'static str>,
) -> Result<RemoteWorker, LaunchError> {
    let id = dial.id;
    let endpoint = dial.endpoint.to_string();
    let set_stage = |s: &'static str| *stage.lock().unwrap_or_else(|e| e.into_inner()) = s;
    let connect_error = |reason: String| LaunchError::Connect {
        worker: id,
        endpoint: endpoint.clone(),
        reason,
    };
    set_stage("connecting");
    let tcp = match dial.addr {
        Some(addr) => TcpStream::connect(addr).await,
        None => TcpStream::connect(dial.endpoint).await,
    }
    .map_err(|e| connect_error(e.to_string()))?;
    let _ = tcp.set_nodelay(true);

    // Plaintext: split halves, and direct writes on the socket. TLS: one
    // stream (rustls encrypts), written by the writer task.
    let (mut stream, direct): (Box<dyn Io>, Option<std::os::fd::OwnedFd>) = match &dial.tls {
        None => {
            let fd = std::os::fd::AsFd::as_fd(&tcp).try_clone_to_owned().ok();
            (Box::new(tcp), fd)
        }
        Some((connector, name)) => {
            set_stage("the TLS handshake");
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| LaunchError::Tls {
                    worker: id,
                    endpoint: endpoint.clone(),
                    reason: e.to_string(),
                })?;
            (Box::new(tls), None)
        }
    };

    set_stage("the authentication challenge");
    authenticate(
        &mut stream,
        dial.secret,
        id,
        &endpoint,
        dial.tls.is_some(),
        &set_stage,
    )
    .await?;

    set_stage("the hello");
    let bad = |reason: String| LaunchError::Handshake {
        worker: id,
        endpoint: endpoint.clone(),
        reason,
    };
    let hello = read_hello(&mut stream, dial.max_frame)
        .await
        .map_err(|e| match e {
            HelloError::Tls(reason) => LaunchError::Tls {
                worker: id,
                endpoint: endpoint.clone(),
                reason,
            },
            HelloError::Bad(reason) => bad(reason),
        })?;
    // Read exactly up to the hello: nothing of the frames after it is
    // buffered here, so the reader starts at the next frame.
    let (read, write) = tokio::io::split(stream);
    let frames = FramedRead::new(read, MessageCodec::new(dial.max_frame));
    hello.validate().map_err(|e| bad(format!("bad hello: {e}")))?;
    let Some(instance) = hello.instance.clone().filter(|i| !i.is_empty()) else {
        return Err(bad(
            "hello without an `instance` (not a portpool listener?)".into()
        ));
    };
    // It becomes part of the worker's address, kept in shared session
    // stores and compared by every front end: a plain token only.
    if !valid_instance(&instance) {
        let shown: String = instance.chars().take(40).collect();
        return Err(bad(format!(
            "hello with an unusable `instance` {shown:?}: 1-{MAX_INSTANCE_LEN} characters from A-Z a-z 0-9 - _"
        )));
    }
    let announced = usize::try_from(hello.max_concurrency)
        .unwrap_or(usize::MAX)
        .max(1);
    let max_concurrency = dial.max_concurrency.map_or(announced, |cap| cap.min(announced));
    let info = WorkerInfo {
        id,
        pid: Some(hello.pid),
        max_concurrency,
        address: WorkerAddress::remote(&endpoint, &instance),
        endpoint: Some(endpoint.clone()),
        hello,
    };
    tracing::debug!(worker = %id, endpoint = %endpoint, instance, max_concurrency, "remote worker ready");

    let shared = Arc::new(Shared {
        endpoint,
        said_goodbye: AtomicBool::new(false),
        last_words: Mutex::new(String::new()),
        kill: Notify::new(),
        writer_task: Mutex::new(None),
        live: Mutex::new(Some(live)),
        retired,
    });
    let writer = FrameWriter::new(direct.as_ref().map(std::os::fd::AsFd::as_fd), "the connection");
    drop(direct);
    let ended = {
        let shared = shared.clone();
        async move {
            shared.kill.notified().await;
            (
                crate::CrashCause::Killed,
                "connection closed by the host".to_string(),
            )
        }
    };
    let (conn, writer_task) = Conn::start(
        Parts {
            info,
            max_frame: dial.max_frame,
            max_stream_buffer: dial.max_stream_buffer,
            outstanding: Arc::new(Outstanding::default()),
            peer: Peer::Remote(RemotePeer {
                shared: shared.clone(),
            }),
        },
        writer,
        write,
        frames,
        ended,
    );
    *shared.writer_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer_task);
    watch_retired(conn.clone(), shared.clone());
    Ok(RemoteWorker { conn, shared })
}

/// When the endpoint leaves the resolved set: `shutdown` (no new calls,
/// in-flight ones finish, the listener closes).
fn watch_retired(conn: Conn, shared: Arc<Shared>) {
    let mut retired = shared.retired.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = retired.wait_for(|r| *r) => {
                tracing::info!(worker = %conn.info().id, endpoint = %shared.endpoint,
                    "endpoint left the resolved set; draining its connection");
                if conn.begin_closing() {
                    conn.send_control(&Message::Shutdown(portpool_protocol::Shutdown {}));
                }
            }
            () = conn.dead() => {}
        }
    });
}

/// Steps 1–3 of the handshake: challenge, response, the listener's proof.
async fn authenticate(
    stream: &mut Box<dyn Io>,
    secret: &[u8],
    id: WorkerId,
    endpoint: &str,
    over_tls: bool,
    set_stage: &impl Fn(&'static str),
) -> Result<(), LaunchError> {
    let bad = |reason: String| LaunchError::Handshake {
        worker: id,
        endpoint: endpoint.to_string(),
        reason,
    };
    let auth = |reason: String| LaunchError::Auth {
        worker: id,
        endpoint: endpoint.to_string(),
        reason,
    };
    let tls = |reason: String| LaunchError::Tls {
        worker: id,
        endpoint: endpoint.to_string(),
        reason,
    };
    let read_failed = |e: ReadError| match e {
        ReadError::Tls(reason) => tls(reason),
        ReadError::Closed => bad("connection closed during the handshake".into()),
        ReadError::Other(reason) => bad(reason),
    };
    let first = match read_frame(stream).await {
        // A TLS listener that refuses our client certificate (TLS 1.3: after
        // our side of the TLS handshake finished) just closes.
        Err(ReadError::Closed) if over_tls => {
            return Err(tls(
                "the listener closed the connection right after the TLS handshake \
                 (did it require a client certificate we lack, or refuse ours?)"
                    .into(),
            ))
        }
        other => other.map_err(read_failed)?,
    };
    let listener_nonce = match first {
        HandshakeMessage::AuthChallenge { version, nonce } => {
            if version != HANDSHAKE_VERSION {
                return Err(bad(format!(
                    "handshake version {version} (this host speaks {HANDSHAKE_VERSION})"
                )));
            }
            if nonce.len() != NONCE_LEN {
                return Err(bad(format!(
                    "challenge nonce of {} bytes (expected {NONCE_LEN})",
                    nonce.len()
                )));
            }
            nonce
        }
        HandshakeMessage::AuthFailed { reason } => return Err(auth(format!("refused: {reason}"))),
        other => return Err(bad(format!("expected auth_challenge, got {}", other.kind()))),
    };
    let mut host_nonce = vec![0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut host_nonce);
    let mac = hmac(secret, CLIENT_LABEL, &listener_nonce, &host_nonce)
        .map_err(&auth)?
        .finalize()
        .into_bytes()
        .to_vec();
    let response = encode_handshake(&HandshakeMessage::AuthResponse {
        nonce: host_nonce.clone(),
        mac,
    })
    .map_err(|e| bad(e.to_string()))?;
    stream
        .write_all(&response)
        .await
        .map_err(|e| bad(format!("sending auth_response failed: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| bad(format!("sending auth_response failed: {e}")))?;
    set_stage("the listener's proof (auth_ok)");
    match read_frame(stream).await {
        Ok(HandshakeMessage::AuthOk { mac }) => {
            let expected = hmac(secret, SERVER_LABEL, &host_nonce, &listener_nonce).map_err(&auth)?;
            // Constant time.
            expected
                .verify_slice(&mac)
                .map_err(|_| auth("the listener's proof is wrong (it does not know the secret)".into()))
        }
        Ok(HandshakeMessage::AuthFailed { reason }) => {
            Err(auth(format!("refused by the listener: {reason}")))
        }
        Ok(other) => Err(bad(format!("expected auth_ok, got {}", other.kind()))),
        // A listener that refuses may just close: say so.
        Err(ReadError::Closed) => Err(auth(
            "the listener closed the connection after our proof: wrong secret?".into(),
        )),
        Err(e) => Err(read_failed(e)),
    }
}

fn hmac(secret: &[u8], label: &[u8], first: &[u8], second: &[u8]) -> Result<HmacSha256, String> {
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|e| format!("unusable secret: {e}"))?;
    mac.update(label);
    mac.update(first);
    mac.update(second);
    Ok(mac)
}

/// Why the hello could not be had.
enum HelloError {
    Tls(String),
    Bad(String),
}

/// Reads the hello frame (up to `max_frame` bytes: a hello may exceed the
/// handshake's 4096). A listener with no ready worker sends `auth_failed`
/// in its place: reported with its reason.
async fn read_hello(
    stream: &mut Box<dyn Io>,
    max_frame: usize,
) -> Result<portpool_protocol::Hello, HelloError> {
    let io = |e: std::io::Error| match io_error(&e) {
        ReadError::Tls(reason) => HelloError::Tls(reason),
        ReadError::Closed => HelloError::Bad("connection closed before the hello".into()),
        ReadError::Other(reason) => HelloError::Bad(reason),
    };
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).await.map_err(io)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > max_frame {
        return Err(HelloError::Bad(format!(
            "bad hello: frame of {len} bytes exceeds the maximum of {max_frame}"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(io)?;
    match portpool_protocol::decode_body(&body) {
        Ok(Message::Hello(hello)) => Ok(hello),
        Ok(other) => Err(HelloError::Bad(format!("expected hello, got {}", other.kind()))),
        Err(e) => match decode_handshake(&body) {
            Ok(HandshakeMessage::AuthFailed { reason }) => Err(HelloError::Bad(format!(
                "the listener has no worker ready: {reason}"
            ))),
            _ => Err(HelloError::Bad(format!("bad hello: {e}"))),
        },
    }
}

/// Why reading a handshake frame failed.
enum ReadError {
    /// TLS failed under it (e.g. the listener refused our client
    /// certificate: with TLS 1.3 that arrives after our side finished).
    Tls(String),
    /// The connection closed.
    Closed,
    /// Anything else: I/O, an oversize or malformed frame.
    Other(String),
}

/// Reads one handshake frame (at most 4096 bytes, checked before reading
/// the body).
async fn read_frame(stream: &mut Box<dyn Io>) -> Result<HandshakeMessage, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).await.map_err(|e| io_error(&e))?;
    let len = handshake_body_len(header).map_err(|e| match e {
        ProtocolError::FrameTooLarge { len, max } => ReadError::Other(format!(
            "handshake frame of {len} bytes exceeds {max} (not a portpool listener, or plaintext to a TLS port?)"
        )),
        other => ReadError::Other(other.to_string()),
    })?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| io_error(&e))?;
    decode_handshake(&body).map_err(|e| ReadError::Other(format!("bad handshake frame: {e}")))
}

fn io_error(e: &std::io::Error) -> ReadError {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return ReadError::Tls(tls.to_string());
    }
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ReadError::Closed
    } else {
        ReadError::Other(format!("reading the handshake failed: {e}"))
    }
}
