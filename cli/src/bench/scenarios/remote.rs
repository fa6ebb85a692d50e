//! 8. Remote workers on loopback: the same small calls over TCP (plaintext)
//!    and TCP + TLS to a `--listen` listener, beside stdio: sequential
//!    latency (8, 8a) and throughput with 8 callers (8b, 8c).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portpool::{Pool, TcpLauncher, TlsConfig};

use super::{Rounds, WARMUP};
use crate::bench::calls::{concurrent_calls, sequential_calls, Caller};
use crate::bench::compare::{median, round_order};
use crate::bench::usage::Run;
use crate::bench::{Bench, Row};

/// Callers at once in the throughput rows (8b, 8c).
const THROUGHPUT_CALLERS: usize = 8;

/// The secret the bench's listeners and launchers share.
const SECRET: &str = "portpool-bench-secret-not-for-production";

/// A `python -m portpool APP --listen 127.0.0.1:0` process, stopped on drop.
struct Listener {
    child: Child,
    addr: String,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bench {
    fn listener(&self, tls: Option<&Path>) -> Result<Listener, String> {
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "portpool"])
            .arg(self.app())
            .args(["--listen", "127.0.0.1:0"])
            .env("PORTPOOL_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(dir) = tls {
            cmd.arg("--tls-cert")
                .arg(dir.join("server.pem"))
                .arg("--tls-key")
                .arg(dir.join("server.key"));
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot start a listener: {e}"))?;
        let stderr = child.stderr.take().ok_or("listener stderr not piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end, so the listener never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("portpool: listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Ok(Listener { child, addr }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err("the listener never reported its address (is the runtime's --listen available?)".into())
            }
        }
    }

    async fn remote_pool(&self, addr: &str, tls: Option<TlsConfig>) -> Result<Pool, String> {
        let mut launcher = TcpLauncher::builder(SECRET).endpoint(addr);
        if let Some(tls) = tls {
            launcher = launcher.tls(tls);
        }
        let launcher = launcher.build().map_err(|e| e.to_string())?;
        Pool::builder(launcher)
            .name("bench-remote")
            .workers(1)
            .max_queue(4096)
            .checkout_timeout(Duration::from_secs(60))
            .build()
            .await
            .map_err(|e| e.to_string())
    }

    /// 8. Sequential small calls on one worker: stdio vs TCP loopback vs
    ///    TCP + TLS loopback, interleaved.
    pub(crate) async fn remote_latency(&mut self) -> Result<(), String> {
        let certs = test_certificates()?;
        let plain = self.listener(None)?;
        let tls_listener = match &certs {
            Some(dir) => Some(self.listener(Some(dir))?),
            None => None,
        };
        let stdio = self
            .pool(self.command(), 1)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let tcp = self.remote_pool(&plain.addr, None).await?;
        let tls = match (&tls_listener, &certs) {
            (Some(listener), Some(dir)) => {
                let ca = std::fs::read(dir.join("ca.pem")).map_err(|e| e.to_string())?;
                Some(
                    self.remote_pool(&listener.addr, Some(TlsConfig::new(ca).server_name("localhost")))
                        .await?,
                )
            }
            _ => None,
        };
        let contestants = if tls.is_some() { 3 } else { 2 };
        let mut rounds = Rounds::new(contestants);
        for round in 0..self.rounds {
            for who in round_order(round, contestants) {
                let pool = match who {
                    0 => &stdio,
                    1 => &tcp,
                    _ => tls.as_ref().unwrap_or(&tcp),
                };
                let run = sequential_calls(pool, "echo", &self.payload, self.seconds, Caller::Task).await?;
                rounds.runs[who].push(run);
            }
        }
        // The same pools, 8 callers at once (one worker each side).
        let mut busy = Rounds::new(contestants);
        for round in 0..self.rounds {
            for who in round_order(round, contestants) {
                let pool = match who {
                    0 => &stdio,
                    1 => &tcp,
                    _ => tls.as_ref().unwrap_or(&tcp),
                };
                let run = concurrent_calls(
                    pool,
                    "echo",
                    &self.payload,
                    THROUGHPUT_CALLERS,
                    WARMUP,
                    self.seconds,
                    false,
                )
                .await?;
                busy.runs[who].push(run);
            }
        }
        for pool in [Some(&stdio), Some(&tcp), tls.as_ref()].into_iter().flatten() {
            pool.shutdown(Duration::from_secs(5)).await;
        }
        drop((plain, tls_listener));
        if let Some(dir) = &certs {
            let _ = std::fs::remove_dir_all(dir);
        }

        let (stdio_p50, tcp_p50) = (rounds.p50(0), rounds.p50(1));
        self.rows.push(
            Row::paired(
                "8",
                "seq. small-call p50, 1 worker, TCP loopback (plaintext) vs stdio",
                ("tcp", &tcp_p50),
                ("stdio", &stdio_p50),
                "us",
                "portpool / baseline",
            )
            .extra(serde_json::json!({
                "p50_us_median": {"stdio": median(&stdio_p50), "tcp": median(&tcp_p50)},
                "p99_us_median": {"stdio": median(&rounds.p99(0)), "tcp": median(&rounds.p99(1))},
            })),
        );
        if contestants == 3 {
            let tls_p50 = rounds.p50(2);
            self.rows.push(Row::paired(
                "8a",
                "seq. small-call p50, 1 worker, TCP + TLS loopback vs stdio",
                ("tls", &tls_p50),
                ("stdio", &stdio_p50),
                "us",
                "portpool / baseline",
            ));
        } else {
            eprintln!("portpool bench: no `openssl` command: rows 8a and 8c (TLS) skipped");
        }
        let stdio_rate = busy.of(0, Run::rate);
        let label = format!("throughput, 1 worker, {THROUGHPUT_CALLERS} callers");
        self.rows.push(Row::paired(
            "8b",
            &format!("{label}, TCP loopback (plaintext) vs stdio"),
            ("tcp", &busy.of(1, Run::rate)),
            ("stdio", &stdio_rate),
            "calls/s",
            "portpool / baseline",
        ));
        if contestants == 3 {
            self.rows.push(Row::paired(
                "8c",
                &format!("{label}, TCP + TLS loopback vs stdio"),
                ("tls", &busy.of(2, Run::rate)),
                ("stdio", &stdio_rate),
                "calls/s",
                "portpool / baseline",
            ));
        }
        Ok(())
    }
}

/// A CA and a `localhost` server certificate made with the `openssl`
/// command, in a scratch directory; `None` without `openssl`.
fn test_certificates() -> Result<Option<PathBuf>, String> {
    let dir = std::env::temp_dir().join(format!("portpool-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .map_err(|e| e.to_string())?;
    let steps: [Vec<&str>; 3] = [
        [
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=portpool bench CA",
            ],
        ]
        .concat(),
        [
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    ];
    for args in steps {
        match Command::new("openssl")
            .args(&args)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => {}
            Ok(status) => return Err(format!("openssl {} failed: {status}", args.join(" "))),
            Err(_) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Ok(None);
            }
        }
    }
    Ok(Some(dir))
}
