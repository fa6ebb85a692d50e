//! 6. Python's process pools; 7. the session layer's bind cost.

use std::process::Stdio;
use std::time::{Duration, Instant};

use portpool::Pool;

use super::WARMUP;
use crate::bench::calls::{concurrent_calls, sequential_calls, Caller};
use crate::bench::{Bench, Cmp, Figure, Row};
use crate::stats::fmt_us;

impl Bench {
    /// 6. multiprocessing.Pool and ProcessPoolExecutor doing 1 and 2.
    pub(crate) async fn python_pools(&mut self) -> Result<(), String> {
        let script = self.examples.join("bench_python_pools.py");
        let output = tokio::process::Command::new(&self.python)
            .arg(&script)
            .args(["--workers", &self.workers.to_string()])
            .args([
                "--seconds",
                &format!("{}", (self.seconds.as_secs_f64() * 2.0).max(0.5)),
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} failed ({}): {}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let figures: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("{} printed no JSON: {e}", script.display()))?;
        let get = |key: &str, field: &str| figures[key][field].as_f64().unwrap_or(f64::NAN);

        // Measure portpool here too if scenarios 1 or 2 were skipped.
        let sync_p50 = match self.latency_p50 {
            Some(p50) => p50,
            None => {
                let pool = self
                    .pool(self.command(), 1)
                    .build()
                    .await
                    .map_err(|e| e.to_string())?;
                let run = sequential_calls(&pool, "echo", &self.payload, self.seconds, Caller::Task).await;
                pool.shutdown(Duration::from_secs(5)).await;
                run?.samples.quantile_us(0.5)
            }
        };
        let (callers, rate) = match self.throughput {
            Some(measured) => measured,
            None => {
                let callers = self.callers.iter().copied().max().unwrap_or(64);
                let pool = self
                    .pool(self.command(), self.workers)
                    .build()
                    .await
                    .map_err(|e| e.to_string())?;
                let run =
                    concurrent_calls(&pool, "echo", &self.payload, callers, WARMUP, self.seconds, false)
                        .await;
                pool.shutdown(Duration::from_secs(5)).await;
                (callers, run?.rate())
            }
        };
        for (id, key, name) in [
            ("6a", "mp_pool", "multiprocessing.Pool"),
            ("6b", "executor", "ProcessPoolExecutor"),
        ] {
            self.rows.push(
                Row::new(
                    id,
                    &format!("seq. latency p50 vs {name} (speed-up)"),
                    Figure::us("portpool", sync_p50),
                    Figure::us(name, get(&format!("{key}_latency"), "p50_us")),
                    "baseline / portpool",
                )
                .target(Cmp::AtLeast, 3.0)
                .extra(figures[format!("{key}_latency")].clone()),
            );
        }
        for (id, key, name) in [
            ("6c", "mp_pool", "multiprocessing.Pool"),
            ("6d", "executor", "ProcessPoolExecutor"),
        ] {
            self.rows.push(
                Row::new(
                    id,
                    &format!(
                        "throughput, {} processes, vs {name} ({callers} portpool callers)",
                        self.workers
                    ),
                    Figure::rate("portpool", rate),
                    Figure::rate(name, get(&format!("{key}_throughput"), "calls_per_s")),
                    "portpool / baseline",
                )
                .extra(figures[format!("{key}_throughput")].clone()),
            );
        }
        Ok(())
    }

    /// 7. The cost of binding one new session with 100 to 100,000 sessions
    ///    bound, over 4 in-process fake workers (no Python: this measures
    ///    the session layer alone). `max_sessions` is the size, so each
    ///    measured bind also evicts the least recently used session (the
    ///    dearest case). One row per size against the cost at 100.
    pub(crate) async fn session_binds(&mut self) -> Result<(), String> {
        use portpool::{SessionConfig, SessionId, SessionPool};

        let sizes = [100usize, 1_000, 10_000, 100_000];
        let measured = if self.quick { 2_000 } else { 20_000 };
        let mut per_bind = Vec::new();
        for size in sizes {
            let launcher = portpool_testkit::FakeLauncher::new();
            let pool = Pool::builder(launcher)
                .name("bench-sessions")
                .workers(4)
                .heartbeat(None)
                .build()
                .await
                .map_err(|e| e.to_string())?;
            let config = SessionConfig::default().max_sessions(size).idle_ttl(None);
            let sessions = SessionPool::new(pool.clone(), config).map_err(|e| e.to_string())?;
            let fill = Instant::now();
            for _ in 0..size {
                sessions
                    .bind(&SessionId::new())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let fill_us = fill.elapsed().as_secs_f64() * 1e6 / size as f64;
            // The median of 10 batches: the machine may be busy with
            // something else for part of the run.
            let batch = measured / 10;
            let mut batches = Vec::new();
            for _ in 0..10 {
                let started = Instant::now();
                for _ in 0..batch {
                    sessions
                        .bind(&SessionId::new())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                batches.push(started.elapsed().as_secs_f64() * 1e6 / batch as f64);
            }
            batches.sort_by(f64::total_cmp);
            let us = batches[batches.len() / 2];
            let bound = sessions.len().await.map_err(|e| e.to_string())?;
            if bound != size {
                return Err(format!("{bound} sessions bound, expected {size}"));
            }
            println!(
                "    {size:>7} sessions: {} per bind with eviction (median of 10 batches), {} per bind while filling",
                fmt_us(us),
                fmt_us(fill_us)
            );
            per_bind.push((size, us, fill_us));
            drop(sessions);
            pool.shutdown(Duration::from_secs(1)).await;
        }
        let (_, base_us, base_fill_us) = per_bind[0];
        let all: Vec<serde_json::Value> = per_bind
            .iter()
            .map(|(size, us, fill_us)| {
                serde_json::json!({"sessions": size, "bind_evict_us": us, "bind_fill_us": fill_us})
            })
            .collect();
        for (id, (size, us, fill_us)) in ["7", "7b", "7c"].into_iter().zip(&per_bind[1..]) {
            self.rows.push(
                Row::new(
                    id,
                    &format!("session bind + evict at {size} sessions vs at 100 (fakes)"),
                    Figure::us(&format!("{size} sessions"), *us),
                    Figure::us("100 sessions", base_us),
                    "portpool / baseline",
                )
                .target(Cmp::AtMost, 3.0)
                .extra(serde_json::json!({
                    "measured_binds": measured,
                    "bind_fill_us": fill_us,
                    "bind_fill_us_at_100": base_fill_us,
                    "all_sizes": all,
                })),
            );
        }
        Ok(())
    }
}
