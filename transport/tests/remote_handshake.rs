//! `TcpLauncher`/`RemoteWorker` against fake listeners written here: the
//! handshake's refusals (typed, naming the endpoint, in bounded time) and
//! the connection's semantics (goodbye, kill, shutdown) without Python.
#![cfg(feature = "remote")]

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use portpool_protocol::handshake::{
    decode_handshake, encode_handshake, handshake_body_len, HandshakeMessage,
};
use portpool_protocol::{Goodbye, Hello, Message, MessageCodec, Pong, Response, PROTOCOL_VERSION};
use portpool_transport::{
    CallError, CallRequest, CrashCause, LaunchError, Launcher, TcpLauncher, TlsConfig, Value, Worker,
    WorkerId,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

const SECRET: &[u8] = b"0123456789abcdef-test-secret";
const LIMIT: Duration = Duration::from_secs(20);

type HmacSha256 = Hmac<Sha256>;
use sha2::Sha256;

fn mac(secret: &[u8], label: &[u8], a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(secret).unwrap();
    m.update(label);
    m.update(a);
    m.update(b);
    m.finalize().into_bytes().to_vec()
}

async fn read_hs<S: AsyncRead + Unpin>(s: &mut S) -> Option<HandshakeMessage> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await.ok()?;
    let len = handshake_body_len(header).ok()?;
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.ok()?;
    decode_handshake(&body).ok()
}

async fn write_hs<S: AsyncWrite + Unpin>(s: &mut S, m: &HandshakeMessage) {
    s.write_all(&encode_handshake(m).unwrap()).await.unwrap();
}

/// What the fake listener's proof is made with.
#[derive(Clone, Copy)]
enum Proof {
    Right,
    Wrong,
}

/// Runs the listener's side of the handshake with `secret`; true when the
/// host was accepted.
async fn listener_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: &[u8],
    proof: Proof,
) -> bool {
    let ours = vec![0x42; 32];
    write_hs(
        s,
        &HandshakeMessage::AuthChallenge {
            version: 1,
            nonce: ours.clone(),
        },
    )
    .await;
    let Some(HandshakeMessage::AuthResponse { nonce, mac: theirs }) = read_hs(s).await else {
        return false;
    };
    let expected = mac(secret, b"portpool-auth-v1 client", &ours, &nonce);
    if expected != theirs {
        write_hs(
            s,
            &HandshakeMessage::AuthFailed {
                reason: "authentication failed".into(),
            },
        )
        .await;
        return false;
    }
    let server = match proof {
        Proof::Right => mac(secret, b"portpool-auth-v1 server", &nonce, &ours),
        Proof::Wrong => vec![0; 32],
    };
    write_hs(s, &HandshakeMessage::AuthOk { mac: server }).await;
    true
}

fn hello(max_concurrency: u32) -> Message {
    Message::Hello(Hello {
        protocol_major: PROTOCOL_VERSION.major,
        protocol_minor: PROTOCOL_VERSION.minor,
        runtime: "fake".into(),
        runtime_version: "0".into(),
        pid: 4242,
        max_concurrency,
        methods: vec!["echo".into()],
        capabilities: vec![],
        instance: Some("feedfacefeedfacefeedfacefeedface".into()),
    })
}

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

fn launcher(endpoint: &str, secret: &[u8]) -> TcpLauncher {
    TcpLauncher::builder(secret)
        .endpoint(endpoint)
        .init_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_wrong_secret_is_refused_with_a_typed_error_naming_the_endpoint() {
    let (listener, addr) = bind().await;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        listener_handshake(&mut s, SECRET, Proof::Right).await;
    });
    let wrong = launcher(&addr, b"another-secret-of-16+bytes");
    let error = tokio::time::timeout(LIMIT, wrong.launch(WorkerId(1)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, LaunchError::Auth { endpoint, worker, .. } if *endpoint == addr && *worker == WorkerId(1)),
        "{error}"
    );
    assert_eq!(error.endpoint(), Some(addr.as_str()));
    assert!(error.to_string().contains(&addr), "{error}");
}

#[tokio::test]
async fn a_listener_with_a_wrong_proof_is_refused() {
    let (listener, addr) = bind().await;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        assert!(listener_handshake(&mut s, SECRET, Proof::Wrong).await);
        // Would send a hello: the host must not take it.
        let mut framed = Framed::new(s, MessageCodec::default());
        let _ = framed.send(hello(1)).await;
        let _ = framed.next().await;
    });
    let error = tokio::time::timeout(LIMIT, launcher(&addr, SECRET).launch(WorkerId(2)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, LaunchError::Auth { reason, .. } if reason.contains("proof")),
        "{error}"
    );
}

#[tokio::test]
async fn a_listener_that_never_speaks_times_out_within_the_launch_timeout() {
    let (listener, addr) = bind().await;
    let held = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    });
    let started = std::time::Instant::now();
    let error = launcher(&addr, SECRET)
        .launch_within(WorkerId(3), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "bounded");
    match &error {
        LaunchError::HandshakeTimeout {
            endpoint,
            after,
            stage,
            ..
        } => {
            assert_eq!(endpoint, &addr);
            assert_eq!(*after, Duration::from_millis(300));
            assert!(stage.contains("challenge"), "{stage}");
        }
        other => panic!("expected a handshake time-out, got {other}"),
    }
    held.abort();
}

#[tokio::test]
async fn a_garbage_first_frame_is_a_typed_handshake_error() {
    let (listener, addr) = bind().await;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let error = tokio::time::timeout(LIMIT, launcher(&addr, SECRET).launch(WorkerId(4)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, LaunchError::Handshake { endpoint, reason, .. } if *endpoint == addr && reason.contains("4096")),
        "{error}"
    );

    // A well-formed frame that is not a handshake message: typed too.
    let (listener, addr) = bind().await;
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(s, MessageCodec::default());
        let _ = framed.send(hello(1)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let error = tokio::time::timeout(LIMIT, launcher(&addr, SECRET).launch(WorkerId(5)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(&error, LaunchError::Handshake { .. }), "{error}");
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error_naming_the_endpoint() {
    let (listener, addr) = bind().await;
    drop(listener);
    let error = tokio::time::timeout(LIMIT, launcher(&addr, SECRET).launch(WorkerId(6)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, LaunchError::Connect { endpoint, .. } if *endpoint == addr),
        "{error}"
    );
}

#[test]
fn the_builder_refuses_short_secrets_bad_endpoints_and_bad_pem() {
    assert!(TcpLauncher::builder(b"short".to_vec())
        .endpoint("127.0.0.1:1")
        .build()
        .is_err());
    assert!(TcpLauncher::builder(SECRET).endpoint("no-port").build().is_err());
    assert!(TcpLauncher::builder(SECRET).build().is_err(), "no endpoint");
    let error = TcpLauncher::builder(SECRET)
        .endpoint("127.0.0.1:1")
        .tls(TlsConfig::new(b"not a pem".to_vec()))
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("CA"), "{error}");
}

/// A fake listener that answers `echo` (and `slow`, after a while), pings,
/// and on `goodbye_after` requests says goodbye, answers the first of them,
/// and closes.
async fn serve_fake<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    events: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut framed = Framed::new(s, MessageCodec::default());
    framed.send(hello(8)).await.unwrap();
    let mut parked = Vec::new();
    while let Some(Ok(message)) = framed.next().await {
        match message {
            Message::Request(r) if r.method == "echo" => {
                framed
                    .send(Message::Response(Response::ok(r.id, r.params)))
                    .await
                    .unwrap();
            }
            Message::Request(r) if r.method == "park" => parked.push(r.id),
            Message::Request(r) if r.method == "goodbye" => {
                framed
                    .send(Message::Goodbye(Goodbye {
                        reason: "draining (test)".into(),
                    }))
                    .await
                    .unwrap();
                // The call that was parked first still finishes; then close.
                if let Some(first) = parked.first() {
                    framed
                        .send(Message::Response(Response::ok(*first, "finished".into())))
                        .await
                        .unwrap();
                }
                framed
                    .send(Message::Response(Response::ok(r.id, Value::Nil)))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = events.send("closed after goodbye".into());
                return;
            }
            Message::Ping(p) => framed.send(Message::Pong(Pong { id: p.id })).await.unwrap(),
            Message::Shutdown(_) => {
                let _ = events.send("shutdown".into());
                framed
                    .send(Message::Goodbye(Goodbye {
                        reason: "host done".into(),
                    }))
                    .await
                    .unwrap();
                return;
            }
            Message::Cancel(c) => {
                let _ = events.send(format!("cancel {}", c.id));
            }
            _ => {}
        }
    }
    let _ = events.send("eof".into());
}

async fn fake_listener() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (listener, addr) = bind().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if listener_handshake(&mut s, SECRET, Proof::Right).await {
                    serve_fake(s, tx).await;
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn calls_go_over_tcp_and_the_info_names_the_endpoint_and_instance() {
    let (addr, _events) = fake_listener().await;
    let worker = tokio::time::timeout(LIMIT, launcher(&addr, SECRET).connect(WorkerId(7)))
        .await
        .unwrap()
        .unwrap();
    let info = worker.info();
    assert_eq!(info.endpoint.as_deref(), Some(addr.as_str()));
    assert_eq!(
        info.address.as_str(),
        format!("tcp://{addr}#feedfacefeedfacefeedfacefeedface")
    );
    assert_eq!(info.pid, Some(4242));
    assert_eq!(info.max_concurrency, 8);
    assert!(worker.is_alive());
    let calls = (0..50).map(|i| worker.call(CallRequest::new("echo", i)));
    let replies = futures::future::join_all(calls).await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.unwrap(), Value::from(i), "no reply crosses callers");
    }
    assert!(worker.ping(Duration::from_secs(5)).await.is_ok());
    assert_eq!(worker.rss_bytes(), None);
}

#[tokio::test]
async fn a_goodbye_stops_new_calls_lets_calls_finish_and_fails_the_rest_with_its_reason() {
    let (addr, mut events) = fake_listener().await;
    let worker = Arc::new(launcher(&addr, SECRET).connect(WorkerId(8)).await.unwrap());
    let first = tokio::spawn({
        let w = worker.clone();
        async move { w.call(CallRequest::new("park", 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn({
        let w = worker.clone();
        async move { w.call(CallRequest::new("park", 2)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bye = worker.call(CallRequest::new("goodbye", Value::Nil));
    assert_eq!(
        tokio::time::timeout(LIMIT, bye).await.unwrap().unwrap(),
        Value::Nil
    );
    assert!(!worker.is_alive(), "not alive at once after a goodbye");
    let refused = worker.call(CallRequest::new("echo", 1)).await;
    assert!(
        matches!(refused, Err(CallError::WorkerClosed { .. })),
        "{refused:?}"
    );
    assert_eq!(first.await.unwrap().unwrap(), Value::from("finished"));
    match tokio::time::timeout(LIMIT, second).await.unwrap().unwrap() {
        Err(CallError::WorkerCrashed {
            cause: CrashCause::Goodbye,
            reason,
            stderr_tail,
            endpoint,
            ..
        }) => {
            assert!(reason.contains("draining (test)"), "{reason}");
            assert_eq!(stderr_tail, "draining (test)");
            assert_eq!(endpoint.as_deref(), Some(addr.as_str()));
        }
        other => panic!("expected a goodbye crash, got {other:?}"),
    }
    tokio::time::timeout(LIMIT, worker.closed()).await.unwrap();
    assert_eq!(worker.stderr_tail(), "draining (test)");
    assert_eq!(events.recv().await.as_deref(), Some("closed after goodbye"));
}

#[tokio::test]
async fn kill_closes_the_connection_and_fails_calls_with_the_cause_given() {
    let (addr, mut events) = fake_listener().await;
    let worker = Arc::new(launcher(&addr, SECRET).connect(WorkerId(9)).await.unwrap());
    let parked = tokio::spawn({
        let w = worker.clone();
        async move { w.call(CallRequest::new("park", 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    worker.kill(CrashCause::Unresponsive, "missed heartbeats");
    match tokio::time::timeout(LIMIT, parked).await.unwrap().unwrap() {
        Err(CallError::WorkerCrashed {
            cause,
            reason,
            endpoint,
            ..
        }) => {
            assert_eq!(cause, CrashCause::Unresponsive);
            assert_eq!(reason, "missed heartbeats");
            assert_eq!(endpoint.as_deref(), Some(addr.as_str()));
        }
        other => panic!("{other:?}"),
    }
    tokio::time::timeout(LIMIT, worker.closed()).await.unwrap();
    assert!(!worker.is_alive());
    // The listener saw the connection end.
    let seen = tokio::time::timeout(LIMIT, events.recv()).await.unwrap();
    assert_eq!(seen.as_deref(), Some("eof"));
}

#[tokio::test]
async fn shutdown_sends_shutdown_and_ends_when_the_listener_closes() {
    let (addr, mut events) = fake_listener().await;
    let worker = launcher(&addr, SECRET).connect(WorkerId(10)).await.unwrap();
    assert_eq!(
        worker.call(CallRequest::new("echo", 5)).await.unwrap(),
        Value::from(5)
    );
    tokio::time::timeout(LIMIT, worker.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(events.recv().await.as_deref(), Some("shutdown"));
    assert!(!worker.is_alive());
    assert!(matches!(
        worker.call(CallRequest::new("echo", 1)).await,
        Err(CallError::WorkerClosed { .. })
    ));
}

#[tokio::test]
async fn launches_spread_over_endpoints_and_skip_one_that_fails() {
    let (a, _ea) = fake_listener().await;
    let (b, _eb) = fake_listener().await;
    let (dead, dead_addr) = bind().await;
    drop(dead);
    let launcher = TcpLauncher::builder(SECRET)
        .endpoints([a.clone(), dead_addr.clone(), b.clone()])
        .endpoint_backoff(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut workers = Vec::new();
    let mut failures = 0;
    for i in 0..5 {
        match launcher.connect(WorkerId(100 + i)).await {
            Ok(w) => workers.push(w),
            Err(e) => {
                assert!(
                    matches!(&e, LaunchError::Connect { endpoint, .. } if *endpoint == dead_addr),
                    "{e}"
                );
                failures += 1;
            }
        }
    }
    assert_eq!(failures, 1, "the failed endpoint is skipped while others exist");
    let on = |e: &str| workers.iter().filter(|w| w.endpoint() == e).count();
    assert_eq!((on(&a), on(&b)), (2, 2), "fewest live connections first");
    let counts = launcher.endpoints();
    assert!(
        counts.contains(&(a.clone(), 2)) && counts.contains(&(dead_addr.clone(), 0)),
        "{counts:?}"
    );
    drop(workers.pop());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let live: usize = launcher.endpoints().iter().map(|(_, n)| n).sum();
    assert_eq!(live, 3, "a dropped worker gives its count back");
}

mod tls {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio_rustls::rustls;

    pub(super) struct Pki {
        pub(super) ca_pem: String,
        pub(super) cert_pem: String,
        pub(super) key_pem: String,
    }

    pub(super) fn pki(name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    async fn tls_listener(pki: &Pki) -> String {
        let (listener, addr) = bind().await;
        let acceptor = acceptor(pki);
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    if listener_handshake(&mut s, SECRET, Proof::Right).await {
                        serve_fake(s, tokio::sync::mpsc::unbounded_channel().0).await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn tls_with_a_trusted_certificate_works_and_an_untrusted_one_is_refused() {
        let server = pki("worker.test");
        let addr = tls_listener(&server).await;
        let trusted = TcpLauncher::builder(SECRET)
            .endpoint(addr.clone())
            .tls(TlsConfig::new(server.ca_pem.clone()).server_name("worker.test"))
            .build()
            .unwrap();
        let worker = tokio::time::timeout(LIMIT, trusted.connect(WorkerId(20)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            worker.call(CallRequest::new("echo", "tls")).await.unwrap(),
            Value::from("tls")
        );

        let other_ca = pki("worker.test");
        let untrusted = TcpLauncher::builder(SECRET)
            .endpoint(addr.clone())
            .tls(TlsConfig::new(other_ca.ca_pem).server_name("worker.test"))
            .build()
            .unwrap();
        let error = tokio::time::timeout(LIMIT, untrusted.launch(WorkerId(21)))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&error, LaunchError::Tls { endpoint, .. } if *endpoint == addr),
            "{error}"
        );

        let wrong_name = TcpLauncher::builder(SECRET)
            .endpoint(addr.clone())
            .tls(TlsConfig::new(server.ca_pem.clone()).server_name("other.test"))
            .build()
            .unwrap();
        let error = wrong_name.launch(WorkerId(22)).await.unwrap_err();
        assert!(matches!(&error, LaunchError::Tls { .. }), "{error}");
    }

    #[tokio::test]
    async fn plaintext_to_a_tls_port_is_a_typed_error() {
        let server = pki("worker.test");
        let addr = tls_listener(&server).await;
        let error = tokio::time::timeout(
            LIMIT,
            launcher(&addr, SECRET).launch_within(WorkerId(23), Duration::from_secs(3)),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert!(
            matches!(
                &error,
                LaunchError::Handshake { .. }
                    | LaunchError::HandshakeTimeout { .. }
                    | LaunchError::Auth { .. }
            ),
            "{error}"
        );
        assert_eq!(error.endpoint(), Some(addr.as_str()));
    }
}

#[tokio::test]
async fn a_dns_name_spreads_over_its_addresses_and_an_endpoint_that_leaves_is_drained() {
    let (a, mut events_a) = fake_listener().await;
    let (b, _events_b) = fake_listener().await;
    let a_addr: std::net::SocketAddr = a.parse().unwrap();
    let b_addr: std::net::SocketAddr = b.parse().unwrap();
    let deployment = Arc::new(std::sync::Mutex::new(vec![a_addr, b_addr]));
    let launcher = TcpLauncher::builder(SECRET)
        .dns("workers.test:7000")
        .resolve_every(Duration::from_millis(100))
        .resolve_with({
            let deployment = deployment.clone();
            move |name, port| {
                assert_eq!((name.as_str(), port), ("workers.test", 7000));
                let addrs = deployment.lock().unwrap().clone();
                Box::pin(async move { Ok(addrs) })
            }
        })
        .build()
        .unwrap();
    let first = launcher.connect(WorkerId(30)).await.unwrap();
    let second = launcher.connect(WorkerId(31)).await.unwrap();
    let mut on = [first.endpoint().to_string(), second.endpoint().to_string()];
    on.sort();
    let mut expected = [a.clone(), b.clone()];
    expected.sort();
    assert_eq!(on, expected, "one connection per address");
    let (on_a, on_b) = if first.endpoint() == a {
        (first, second)
    } else {
        (second, first)
    };

    // The deployment shrinks to b: a's worker drains (shutdown sent, not
    // alive), b's keeps serving, and new connections go to b.
    *deployment.lock().unwrap() = vec![b_addr];
    let until = std::time::Instant::now() + LIMIT;
    while on_a.is_alive() {
        assert!(std::time::Instant::now() < until, "never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        tokio::time::timeout(LIMIT, events_a.recv())
            .await
            .unwrap()
            .as_deref(),
        Some("shutdown")
    );
    tokio::time::timeout(LIMIT, on_a.closed()).await.unwrap();
    assert!(on_b.is_alive());
    assert_eq!(
        on_b.call(CallRequest::new("echo", 1)).await.unwrap(),
        Value::from(1)
    );
    let next = launcher.connect(WorkerId(32)).await.unwrap();
    assert_eq!(next.endpoint(), b);
    assert!(
        launcher.endpoints().iter().all(|(e, _)| *e == b),
        "{:?}",
        launcher.endpoints()
    );

    // A failed resolution keeps the last addresses.
    let failing = TcpLauncher::builder(SECRET)
        .dns("gone.test:1")
        .resolve_with(|_, _| Box::pin(async { Err(std::io::Error::other("no such host")) }))
        .build()
        .unwrap();
    let error = failing.launch(WorkerId(33)).await.unwrap_err();
    assert!(
        matches!(&error, LaunchError::Connect { endpoint, .. } if endpoint.contains("gone.test")),
        "{error}"
    );
}

#[tokio::test]
async fn auth_failed_in_place_of_the_hello_names_the_reason_and_a_large_hello_is_fine() {
    // "worker not ready": auth_ok, then auth_failed instead of the hello.
    let (listener, addr) = bind().await;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        assert!(listener_handshake(&mut s, SECRET, Proof::Right).await);
        write_hs(
            &mut s,
            &HandshakeMessage::AuthFailed {
                reason: "worker not ready".into(),
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let error = tokio::time::timeout(LIMIT, launcher(&addr, SECRET).launch(WorkerId(40)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, LaunchError::Handshake { endpoint, reason, .. }
            if *endpoint == addr && reason.contains("worker not ready")),
        "{error}"
    );

    // A hello larger than the handshake's 4096 bytes (many methods).
    let (listener, addr) = bind().await;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        assert!(listener_handshake(&mut s, SECRET, Proof::Right).await);
        let Message::Hello(mut big) = hello(2) else {
            unreachable!()
        };
        big.methods = (0..2000).map(|i| format!("method_number_{i}")).collect();
        let mut framed = Framed::new(s, MessageCodec::default());
        framed.send(Message::Hello(big)).await.unwrap();
        while let Some(Ok(Message::Request(r))) = framed.next().await {
            framed
                .send(Message::Response(Response::ok(r.id, r.params)))
                .await
                .unwrap();
        }
    });
    let worker = tokio::time::timeout(LIMIT, launcher(&addr, SECRET).connect(WorkerId(41)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(worker.info().hello.methods.len(), 2000);
    assert_eq!(
        worker.call(CallRequest::new("echo", 3)).await.unwrap(),
        Value::from(3)
    );
}

#[tokio::test]
async fn a_hello_whose_instance_is_not_a_plain_token_is_refused() {
    // The instance becomes part of the worker's address, which shared
    // session stores keep and every front end compares: a listener must not
    // put newlines, `#`, or kilobytes in it.
    for instance in ["feed\nface", "a#b", "with space", &"f".repeat(200)] {
        let (listener, addr) = bind().await;
        let instance = instance.to_string();
        let sent = instance.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            assert!(listener_handshake(&mut s, SECRET, Proof::Right).await);
            let Message::Hello(mut odd) = hello(2) else {
                unreachable!()
            };
            odd.instance = Some(sent);
            let mut framed = Framed::new(s, MessageCodec::default());
            framed.send(Message::Hello(odd)).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let error = tokio::time::timeout(LIMIT, launcher(&addr, SECRET).launch(WorkerId(50)))
            .await
            .unwrap()
            .expect_err(&format!("instance {instance:?} was accepted"));
        assert!(
            matches!(&error, LaunchError::Handshake { endpoint, reason, .. }
                if *endpoint == addr && reason.contains("instance")),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_response_carrying_a_pings_id_does_not_end_the_ping() {
    // A peer's stray reply must not touch an entry of another kind (as a
    // pong carrying a call's id does not touch the call): the ping still
    // gets its pong, and the worker is not reported closed.
    let (listener, addr) = bind().await;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        assert!(listener_handshake(&mut s, SECRET, Proof::Right).await);
        let mut framed = Framed::new(s, MessageCodec::default());
        framed.send(hello(2)).await.unwrap();
        while let Some(Ok(message)) = framed.next().await {
            if let Message::Ping(p) = message {
                framed
                    .send(Message::Response(Response::ok(p.id, Value::Nil)))
                    .await
                    .unwrap();
                framed.send(Message::Pong(Pong { id: p.id })).await.unwrap();
            }
        }
    });
    let worker = tokio::time::timeout(LIMIT, launcher(&addr, SECRET).connect(WorkerId(60)))
        .await
        .unwrap()
        .unwrap();
    let pinged = worker.ping(Duration::from_secs(10)).await;
    assert!(pinged.is_ok(), "{pinged:?}");
    assert!(worker.is_alive());
    assert_eq!(worker.discarded_replies(), 1);
}

#[tokio::test]
async fn a_secret_with_one_trailing_newline_is_the_same_secret_as_on_the_listener() {
    // The listener strips one trailing newline from its secret (a Kubernetes
    // Secret made from a file usually has one); the host reading the same
    // Secret (e.g. as PORTPOOL_SECRET) must arrive at the same bytes.
    let (addr, _events) = fake_listener().await;
    let mut with_newline = SECRET.to_vec();
    with_newline.push(b'\n');
    let worker = tokio::time::timeout(LIMIT, launcher(&addr, &with_newline).connect(WorkerId(70)))
        .await
        .unwrap();
    assert!(worker.is_ok(), "{:?}", worker.err());
    // 15 bytes and a newline: too short once stripped.
    let mut short = b"0123456789abcde".to_vec();
    short.push(b'\n');
    assert!(TcpLauncher::builder(short).endpoint(&addr).build().is_err());
}
