//! [`TcpLauncher`]: which endpoint the next connection goes to, and
//! keeping the endpoints of a DNS name up to date.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rustls::pki_types::ServerName;
use tokio::sync::watch;

use super::handshake::{dial, Dial};
use super::{RemoteWorker, TlsConfig};
use crate::{LaunchError, Launcher, Worker, WorkerId, DEFAULT_INIT_TIMEOUT, DEFAULT_MAX_STREAM_BUFFER};

/// How often a DNS name is resolved again, by default.
pub const DEFAULT_RESOLVE_EVERY: Duration = Duration::from_secs(10);

/// How long an endpoint whose connection failed is skipped (while others
/// exist), by default.
pub const DEFAULT_ENDPOINT_BACKOFF: Duration = Duration::from_secs(2);

/// Resolves `NAME`, `PORT` to addresses (see [`TcpLauncherBuilder::resolve_with`]).
type Resolver = Arc<
    dyn Fn(String, u16) -> futures::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>
        + Send
        + Sync,
>;

/// The shortest secret accepted, in bytes.
const MIN_SECRET: usize = 16;

/// Launches [`RemoteWorker`]s: each launch opens one connection to a
/// `portpool` listener (`python -m portpool APP --listen HOST:PORT`),
/// optionally over TLS, authenticated with a shared secret (HMAC-SHA256
/// both ways, see `docs/remote.md`).
///
/// Endpoints are a static list of `HOST:PORT` and/or DNS names `NAME:PORT`
/// resolved to every address they have (what a Kubernetes headless Service
/// gives) and resolved again when older than
/// [`resolve_every`](TcpLauncherBuilder::resolve_every), so a pool follows
/// the deployment:
///
/// - each launch goes to the endpoint with the fewest live connections
///   from this launcher (round-robin among ties), skipping endpoints whose
///   last connection failed less than
///   [`endpoint_backoff`](TcpLauncherBuilder::endpoint_backoff) ago while
///   others exist;
/// - connecting, TLS, authentication and the hello are bounded by the
///   launch time-out (the pool's, or
///   [`init_timeout`](TcpLauncherBuilder::init_timeout));
/// - an endpoint that leaves the resolved set has its workers drained:
///   they take no new calls, send `shutdown` (their calls finish), and when
///   the listener closes the pool connects again, to the endpoints left.
///   A failed resolution keeps the last known addresses.
///
/// A restart of a remote worker is a new connection; the remote process
/// is not ours to signal.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use portpool_transport::{CallRequest, Launcher, TcpLauncher, TlsConfig, Value, WorkerId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let launcher = TcpLauncher::builder(std::env::var("PORTPOOL_SECRET")?)
///     .dns("workers.default.svc.cluster.local:7000")
///     .tls(TlsConfig::new(std::fs::read("ca.pem")?).server_name("workers"))
///     .build()?;
/// let worker = launcher.launch(WorkerId(1)).await?;
/// let reply = worker.call(CallRequest::new("echo", "hi")).await?;
/// assert_eq!(reply, Value::from("hi"));
/// worker.shutdown(Duration::from_secs(5)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TcpLauncher {
    shared: Arc<LauncherShared>,
}

impl std::fmt::Debug for TcpLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLauncher")
            .field("targets", &self.shared.targets)
            .field("tls", &self.shared.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`TcpLauncher`]; see [`TcpLauncher::builder`].
#[derive(Clone)]
pub struct TcpLauncherBuilder {
    secret: Vec<u8>,
    targets: Vec<Target>,
    tls: Option<TlsConfig>,
    resolve_every: Duration,
    endpoint_backoff: Duration,
    init_timeout: Duration,
    max_frame: usize,
    max_stream_buffer: usize,
    max_concurrency: Option<usize>,
    resolver: Option<Resolver>,
    errors: Vec<String>,
}

impl std::fmt::Debug for TcpLauncherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("TcpLauncherBuilder")
            .field("targets", &self.targets)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// What [`TcpLauncherBuilder::build`] refused: the secret, an endpoint, or
/// the TLS material.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid TcpLauncher configuration: {reason}")]
pub struct TcpConfigError {
    /// What was wrong.
    pub reason: String,
}

#[derive(Debug, Clone)]
enum Target {
    /// `HOST:PORT`, one endpoint (resolved at connect time).
    Static(String),
    /// `NAME:PORT`, one endpoint per address the name resolves to.
    Dns { name: String, port: u16 },
}

impl TcpLauncher {
    /// A builder, with the shared secret (at least 16 bytes) the listeners
    /// were given (`PORTPOOL_SECRET` or `--secret-file`). One trailing
    /// newline is stripped, as the listeners do.
    pub fn builder(secret: impl Into<Vec<u8>>) -> TcpLauncherBuilder {
        TcpLauncherBuilder {
            secret: secret.into(),
            targets: Vec::new(),
            tls: None,
            resolve_every: DEFAULT_RESOLVE_EVERY,
            endpoint_backoff: DEFAULT_ENDPOINT_BACKOFF,
            init_timeout: DEFAULT_INIT_TIMEOUT,
            max_frame: portpool_protocol::DEFAULT_MAX_FRAME,
            max_stream_buffer: DEFAULT_MAX_STREAM_BUFFER,
            max_concurrency: None,
            resolver: None,
            errors: Vec::new(),
        }
    }

    /// Connects one worker and waits for its hello: the concrete type.
    pub async fn connect(&self, id: WorkerId) -> Result<RemoteWorker, LaunchError> {
        self.connect_within(id, self.shared.init_timeout).await
    }

    /// The endpoints known now (after the last resolution) with their live
    /// connections from this launcher.
    pub fn endpoints(&self) -> Vec<(String, usize)> {
        let state = self.shared.state();
        state
            .entries
            .iter()
            .map(|e| (e.endpoint.clone(), e.live.load(Ordering::Relaxed)))
            .collect()
    }

    async fn connect_within(&self, id: WorkerId, timeout: Duration) -> Result<RemoteWorker, LaunchError> {
        let shared = &self.shared;
        let stage = Mutex::new("resolving");
        // The endpoint this attempt picked, for a time-out's error.
        let picked: Mutex<Option<Arc<Entry>>> = Mutex::new(None);
        let attempt = async {
            shared.refresh_if_stale().await;
            LauncherShared::start_refresher(shared);
            let (entry, live) = shared.pick().ok_or_else(|| LaunchError::Connect {
                worker: id,
                endpoint: shared.describe_targets(),
                reason: "no endpoint to connect to (the names resolved to no address)".into(),
            })?;
            *picked.lock().unwrap_or_else(|e| e.into_inner()) = Some(entry.clone());
            let tls = match (&shared.tls, &shared.connector) {
                (Some(cfg), Some(connector)) => {
                    let name = cfg
                        .server_name
                        .clone()
                        .unwrap_or_else(|| entry.server_name.clone());
                    let name = ServerName::try_from(name.clone()).map_err(|e| LaunchError::Tls {
                        worker: id,
                        endpoint: entry.endpoint.clone(),
                        reason: format!("bad server name {name:?}: {e}"),
                    })?;
                    Some((connector, name))
                }
                _ => None,
            };
            let result = dial(
                Dial {
                    id,
                    endpoint: &entry.endpoint,
                    addr: entry.addr,
                    secret: &shared.secret,
                    tls,
                    max_frame: shared.max_frame,
                    max_stream_buffer: shared.max_stream_buffer,
                    max_concurrency: shared.max_concurrency,
                },
                live,
                entry.retired.subscribe(),
                &stage,
            )
            .await;
            if result.is_err() {
                entry.failed();
            }
            result
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_elapsed) => {
                let entry = picked.lock().unwrap_or_else(|e| e.into_inner()).take();
                let endpoint = match entry {
                    Some(entry) => {
                        entry.failed();
                        entry.endpoint.clone()
                    }
                    None => shared.describe_targets(),
                };
                Err(LaunchError::HandshakeTimeout {
                    worker: id,
                    endpoint,
                    after: timeout,
                    stage: stage.lock().unwrap_or_else(|e| e.into_inner()).to_string(),
                })
            }
        }
    }
}

#[async_trait]
impl Launcher for TcpLauncher {
    async fn launch(&self, id: WorkerId) -> Result<Box<dyn Worker>, LaunchError> {
        Ok(Box::new(self.connect(id).await?))
    }

    async fn launch_within(&self, id: WorkerId, timeout: Duration) -> Result<Box<dyn Worker>, LaunchError> {
        let timeout = timeout.min(self.shared.init_timeout);
        Ok(Box::new(self.connect_within(id, timeout).await?))
    }
}

impl TcpLauncherBuilder {
    /// Adds one endpoint, `HOST:PORT` (a host name is resolved when
    /// connecting, to one endpoint).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        let endpoint = endpoint.into();
        match split_host_port(&endpoint) {
            Ok(_) => self.targets.push(Target::Static(endpoint)),
            Err(e) => self.errors.push(e),
        }
        self
    }

    /// Adds several endpoints (see [`endpoint`](Self::endpoint)).
    pub fn endpoints<I: IntoIterator<Item = S>, S: Into<String>>(mut self, endpoints: I) -> Self {
        for endpoint in endpoints {
            self = self.endpoint(endpoint);
        }
        self
    }

    /// Adds a DNS name, `NAME:PORT`, that stands for one endpoint per
    /// address it resolves to (a Kubernetes headless Service), resolved
    /// again every [`resolve_every`](Self::resolve_every). With TLS, the
    /// listeners' certificates are checked against `NAME` unless
    /// [`TlsConfig::server_name`] says otherwise.
    pub fn dns(mut self, name_port: impl Into<String>) -> Self {
        let name_port = name_port.into();
        match split_host_port(&name_port) {
            Ok((name, port)) => self.targets.push(Target::Dns {
                name: name.to_string(),
                port,
            }),
            Err(e) => self.errors.push(e),
        }
        self
    }

    /// Speaks TLS (default: plaintext, for loopback only: the listener
    /// refuses plaintext elsewhere unless started with `--insecure`).
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How old a DNS resolution may get before the next launch resolves
    /// again (default [`DEFAULT_RESOLVE_EVERY`]); a background task also
    /// resolves at this interval while the launcher lives.
    pub fn resolve_every(mut self, every: Duration) -> Self {
        self.resolve_every = every.max(Duration::from_millis(10));
        self
    }

    /// How long an endpoint whose connection failed is skipped while
    /// others exist (default [`DEFAULT_ENDPOINT_BACKOFF`]).
    pub fn endpoint_backoff(mut self, backoff: Duration) -> Self {
        self.endpoint_backoff = backoff;
        self
    }

    /// The most connect + TLS + authentication + hello may take (default
    /// [`DEFAULT_INIT_TIMEOUT`]); a pool's shorter launch time-out wins.
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.init_timeout = timeout;
        self
    }

    /// The largest frame accepted from a listener (default 64 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Chunks of a stream that may wait unread before it is cancelled.
    pub fn max_stream_buffer(mut self, chunks: usize) -> Self {
        self.max_stream_buffer = chunks.max(1);
        self
    }

    /// Caps the concurrency a listener announces (per connection).
    pub fn max_concurrency(mut self, cap: usize) -> Self {
        self.max_concurrency = Some(cap.max(1));
        self
    }

    /// Resolves the [`dns`](Self::dns) names with `resolve` instead of the
    /// system resolver (`tokio::net::lookup_host`): for another service
    /// discovery, or to script a deployment that changes in tests. It gets
    /// the name and the port and returns every address.
    pub fn resolve_with<F>(mut self, resolve: F) -> Self
    where
        F: Fn(String, u16) -> futures::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>
            + Send
            + Sync
            + 'static,
    {
        self.resolver = Some(Arc::new(resolve));
        self
    }

    /// The launcher, or what is wrong with its configuration.
    pub fn build(self) -> Result<TcpLauncher, TcpConfigError> {
        let error = |reason: String| TcpConfigError { reason };
        if let Some(e) = self.errors.into_iter().next() {
            return Err(error(e));
        }
        let mut secret = self.secret;
        // One trailing newline is not part of the secret (as on the
        // listener, from its file or the environment): a secret file's, or a
        // Kubernetes Secret's made from one.
        if secret.last() == Some(&b'\n') {
            secret.pop();
        }
        let secret_len = secret.len();
        if secret_len < MIN_SECRET {
            return Err(error(format!(
                "the secret has {secret_len} bytes; at least {MIN_SECRET} are required"
            )));
        }
        if self.targets.is_empty() {
            return Err(error("no endpoint and no DNS name given".into()));
        }
        let connector = match &self.tls {
            Some(tls) => Some(tokio_rustls::TlsConnector::from(tls.build().map_err(error)?)),
            None => None,
        };
        // Static endpoints are known now; DNS names at the first launch.
        let entries = self
            .targets
            .iter()
            .filter_map(|t| match t {
                Target::Static(endpoint) => Some(Entry::new(
                    endpoint.clone(),
                    None,
                    split_host_port(endpoint)
                        .map(|(h, _)| h.to_string())
                        .unwrap_or_default(),
                )),
                Target::Dns { .. } => None,
            })
            .collect();
        let has_dns = self.targets.iter().any(|t| matches!(t, Target::Dns { .. }));
        Ok(TcpLauncher {
            shared: Arc::new(LauncherShared {
                secret,
                targets: self.targets,
                tls: self.tls,
                connector,
                resolve_every: self.resolve_every,
                endpoint_backoff: self.endpoint_backoff,
                init_timeout: self.init_timeout,
                max_frame: self.max_frame,
                max_stream_buffer: self.max_stream_buffer,
                max_concurrency: self.max_concurrency,
                resolver: self.resolver,
                state: Mutex::new(State {
                    entries,
                    resolved_at: if has_dns { None } else { Some(Instant::now()) },
                    next: 0,
                    refresher: false,
                }),
                resolving: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

/// `HOST:PORT` (IPv6 as `[::1]:PORT`) split in two.
fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| format!("{s:?}: bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?}: no host"));
    }
    Ok((host, port))
}

struct LauncherShared {
    secret: Vec<u8>,
    targets: Vec<Target>,
    tls: Option<TlsConfig>,
    connector: Option<tokio_rustls::TlsConnector>,
    resolve_every: Duration,
    endpoint_backoff: Duration,
    init_timeout: Duration,
    max_frame: usize,
    max_stream_buffer: usize,
    max_concurrency: Option<usize>,
    resolver: Option<Resolver>,
    state: Mutex<State>,
    /// One resolution at a time.
    resolving: tokio::sync::Mutex<()>,
}

struct State {
    entries: Vec<Arc<Entry>>,
    resolved_at: Option<Instant>,
    /// Round-robin position among ties.
    next: usize,
    refresher: bool,
}

/// One endpoint: its live connections from this launcher, its last
/// failure, and whether it left the resolved set.
pub(crate) struct Entry {
    endpoint: String,
    addr: Option<SocketAddr>,
    server_name: String,
    live: AtomicUsize,
    failed_at: Mutex<Option<Instant>>,
    retired: watch::Sender<bool>,
}

impl Entry {
    fn new(endpoint: String, addr: Option<SocketAddr>, server_name: String) -> Arc<Self> {
        Arc::new(Entry {
            endpoint,
            addr,
            server_name,
            live: AtomicUsize::new(0),
            failed_at: Mutex::new(None),
            retired: watch::channel(false).0,
        })
    }

    fn failed(&self) {
        *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn failed_within(&self, backoff: Duration) -> bool {
        self.failed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < backoff)
    }
}

/// One live connection counted on its endpoint; given back when dropped.
pub(crate) struct LiveToken(Arc<Entry>);

impl LiveToken {
    fn new(entry: Arc<Entry>) -> Self {
        entry.live.fetch_add(1, Ordering::Relaxed);
        LiveToken(entry)
    }
}

impl Drop for LiveToken {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LauncherShared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn describe_targets(&self) -> String {
        self.targets
            .iter()
            .map(|t| match t {
                Target::Static(e) => e.clone(),
                Target::Dns { name, port } => format!("{name}:{port}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The endpoint for the next connection (counted as live at once, so
    /// concurrent launches spread).
    fn pick(&self) -> Option<(Arc<Entry>, LiveToken)> {
        let mut state = self.state();
        let n = state.entries.len();
        if n == 0 {
            return None;
        }
        let healthy: Vec<usize> = (0..n)
            .filter(|&i| !state.entries[i].failed_within(self.endpoint_backoff))
            .collect();
        let candidates: Vec<usize> = if healthy.is_empty() {
            (0..n).collect()
        } else {
            healthy
        };
        let start = state.next % n;
        let rotated = candidates.iter().map(|&i| (i + n - start) % n);
        let best = candidates
            .iter()
            .zip(rotated)
            .min_by_key(|(&i, rot)| (state.entries[i].live.load(Ordering::Relaxed), *rot))
            .map(|(&i, _)| i)?;
        state.next = best + 1;
        let entry = state.entries[best].clone();
        let live = LiveToken::new(entry.clone());
        Some((entry, live))
    }

    async fn refresh_if_stale(&self) {
        let stale = {
            let state = self.state();
            !matches!(state.resolved_at, Some(at) if at.elapsed() < self.resolve_every)
        };
        if stale {
            self.refresh().await;
        }
    }

    /// Resolves the DNS names again and updates the endpoints: new
    /// addresses are added, gone ones retired (their workers drain). A name
    /// that fails to resolve keeps its last addresses.
    async fn refresh(&self) {
        let _one = self.resolving.lock().await;
        let mut resolved: Vec<(String, SocketAddr, String)> = Vec::new();
        let mut failed_names: Vec<String> = Vec::new();
        for target in &self.targets {
            if let Target::Dns { name, port } = target {
                let looked_up = match &self.resolver {
                    Some(resolve) => resolve(name.clone(), *port).await,
                    None => tokio::net::lookup_host((name.as_str(), *port))
                        .await
                        .map(Iterator::collect),
                };
                match looked_up {
                    Ok(addrs) => {
                        for addr in addrs {
                            let endpoint = addr.to_string();
                            if !resolved.iter().any(|(e, _, _)| *e == endpoint) {
                                resolved.push((endpoint, addr, name.clone()));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(name = %name, "cannot resolve {name}:{port}: {e}; keeping its last addresses");
                        failed_names.push(name.clone());
                    }
                }
            }
        }
        let mut state = self.state();
        let old: HashMap<String, Arc<Entry>> = state
            .entries
            .iter()
            .map(|e| (e.endpoint.clone(), e.clone()))
            .collect();
        let mut entries: Vec<Arc<Entry>> = Vec::new();
        for target in &self.targets {
            if let Target::Static(endpoint) = target {
                if let Some(e) = old.get(endpoint) {
                    entries.push(e.clone());
                }
            }
        }
        for (endpoint, addr, name) in resolved {
            let entry = old
                .get(&endpoint)
                .cloned()
                .unwrap_or_else(|| Entry::new(endpoint, Some(addr), name));
            entries.push(entry);
        }
        // Keep what a name that failed to resolve had.
        for e in old.values() {
            if failed_names.contains(&e.server_name)
                && e.addr.is_some()
                && !entries.iter().any(|x| x.endpoint == e.endpoint)
            {
                entries.push(e.clone());
            }
        }
        for (endpoint, e) in &old {
            if !entries.iter().any(|x| &x.endpoint == endpoint) {
                tracing::info!(endpoint = %endpoint, "endpoint left the resolved set");
                e.retired.send_replace(true);
            }
        }
        state.entries = entries;
        state.resolved_at = Some(Instant::now());
    }

    /// Resolves DNS names in the background while the launcher lives.
    fn start_refresher(this: &Arc<Self>) {
        if !this.targets.iter().any(|t| matches!(t, Target::Dns { .. })) {
            return;
        }
        {
            let mut state = this.state();
            if std::mem::replace(&mut state.refresher, true) {
                return;
            }
        }
        let weak: Weak<Self> = Arc::downgrade(this);
        let every = this.resolve_every;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = weak.upgrade() else { return };
                shared.refresh().await;
            }
        });
    }
}
