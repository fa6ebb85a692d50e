//! 4. Cold start.

use std::time::{Duration, Instant};

use portpool::WorkerCommand;

use crate::bench::compare::{median, round_order};
use crate::bench::usage::start_cpu_s;
use crate::bench::{Bench, Cmp, Figure, Row};

/// One pool build: how long until every worker was ready, and the CPU
/// each worker had used by then (the mean over the workers).
struct Build {
    took: f64,
    cpu_per_worker: f64,
}

impl Bench {
    /// 4. Cold start of 8 workers whose app takes 0.5 s to import: 8 in
    ///    parallel vs 1 worker (and vs 8 one by one), interleaved; the
    ///    same with an app without async handlers (whose workers run
    ///    without an event loop and never import asyncio); the CPU a
    ///    worker spends until it is ready; and 8 workers forked from a fork
    ///    server (`WorkerCommand::fork_server`) vs 1 worker.
    pub(crate) async fn cold_start(&mut self) -> Result<(), String> {
        let command = self.command().env("PORTPOOL_BENCH_IMPORT_DELAY", "0.5");
        let sync_only = command.clone().env("PORTPOOL_BENCH_SYNC_ONLY", "1");
        let forking = command.clone().fork_server(true);
        // 0: one worker, 1: 8 in parallel, 2: the same without async handlers,
        // 3: one worker without async handlers, 4: 8 one by one (4 s a round:
        // measured once with --quick, outside the rounds), 5: 8 in parallel
        // forked from a fork server, 6: one worker forked from a fork server.
        let contestants: Vec<usize> = if self.quick {
            vec![0, 1, 2, 3, 5, 6]
        } else {
            (0..7).collect()
        };
        let mut builds: Vec<Vec<Build>> = (0..7).map(|_| Vec::new()).collect();
        for round in 0..self.rounds {
            for at in round_order(round, contestants.len()) {
                let who = contestants[at];
                let (workers, at_once, cmd) = [
                    (1, 1, &command),
                    (8, 8, &command),
                    (8, 8, &sync_only),
                    (1, 1, &sync_only),
                    (8, 1, &command),
                    (8, 8, &forking),
                    (1, 1, &forking),
                ][who];
                builds[who].push(self.time_build(cmd.clone(), workers, at_once).await?);
            }
        }
        if self.quick {
            builds[4].push(self.time_build(command.clone(), 8, 1).await?);
        }
        let took = |who: usize| builds[who].iter().map(|b| b.took).collect::<Vec<_>>();
        let cpu_ms = |who: usize| {
            builds[who]
                .iter()
                .map(|b| b.cpu_per_worker * 1e3)
                .collect::<Vec<_>>()
        };
        self.rows.push(
            Row::paired(
                "4",
                "cold start, 8 workers, 0.5 s import: parallel vs 1 worker",
                ("8 in parallel", &took(1)),
                ("1 worker", &took(0)),
                "s",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.3)
            .extra(serde_json::json!({"seconds_per_round": {
                "one": took(0), "parallel": took(1), "sequential": took(4),
                "no_async_parallel": took(2), "no_async_one": took(3),
            }})),
        );
        self.rows.push(if self.quick {
            Row::new(
                "4b",
                "cold start, 8 workers: parallel vs sequential (speed-up)",
                Figure::secs("8 in parallel", median(&took(1))),
                Figure::secs("8 one by one", median(&took(4))),
                "baseline / portpool",
            )
        } else {
            Row::paired(
                "4b",
                "cold start, 8 workers: parallel vs sequential (speed-up)",
                ("8 in parallel", &took(1)),
                ("8 one by one", &took(4)),
                "s",
                "baseline / portpool",
            )
        });
        self.rows.push(Row::paired(
            "4c",
            "cold start as 4, app without async handlers (no asyncio)",
            ("8 in parallel", &took(2)),
            ("1 worker", &took(3)),
            "s",
            "portpool / baseline",
        ));
        self.rows.push(Row::paired(
            "4d",
            "worker start CPU to ready, 1 worker: app with async handlers vs without",
            ("with asyncio", &cpu_ms(0)),
            ("without", &cpu_ms(3)),
            "ms CPU",
            "portpool / baseline",
        ));
        self.rows.push(Row::paired(
            "4e",
            "worker start CPU to ready, app with async handlers: 8 in parallel vs 1",
            ("8 in parallel", &cpu_ms(1)),
            ("1 worker", &cpu_ms(0)),
            "ms CPU",
            "portpool / baseline",
        ));
        self.rows.push(
            Row::paired(
                "4f",
                "cold start as 4, fork server: 8 forked in parallel vs 1 worker (exec'd, as in 4)",
                ("8 forked in parallel", &took(5)),
                ("1 worker", &took(0)),
                "s",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.3)
            .extra(serde_json::json!({"seconds_per_round": {
                "fork_parallel": took(5), "fork_one": took(6), "one": took(0),
            }})),
        );
        Ok(())
    }

    async fn time_build(
        &self,
        command: WorkerCommand,
        workers: usize,
        at_once: usize,
    ) -> Result<Build, String> {
        let t = Instant::now();
        let pool = self
            .pool(command, workers)
            .startup_concurrency(at_once)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let took = t.elapsed().as_secs_f64();
        let status = pool.status();
        let pids: Vec<u32> = status.workers.iter().filter_map(|w| w.pid).collect();
        let cpu: f64 = pids.iter().map(|&pid| start_cpu_s(pid)).sum();
        let ready = status.ready;
        pool.shutdown(Duration::from_secs(5)).await;
        if ready < workers {
            return Err(format!(
                "only {ready} of {workers} workers were ready after build()"
            ));
        }
        Ok(Build {
            took,
            cpu_per_worker: cpu / pids.len().max(1) as f64,
        })
    }
}
