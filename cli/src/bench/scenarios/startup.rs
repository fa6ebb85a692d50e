//! 4. Cold start.

use std::time::{Duration, Instant};

use portpool::WorkerCommand;

use crate::bench::compare::{median, round_order};
use crate::bench::{Bench, Cmp, Figure, Row};

impl Bench {
    /// 4. Cold start of 8 workers whose app takes 0.5 s to import: 8 in
    ///    parallel vs 1 worker (and vs 8 one by one), interleaved.
    pub(crate) async fn cold_start(&mut self) -> Result<(), String> {
        let command = self.command().env("PORTPOOL_BENCH_IMPORT_DELAY", "0.5");
        // 0: one worker, 1: 8 in parallel, 2: 8 one by one (4 s a round:
        // measured once with --quick, outside the rounds).
        let contestants = if self.quick { 2 } else { 3 };
        let mut took: Vec<Vec<f64>> = vec![Vec::new(); 3];
        for round in 0..self.rounds {
            for who in round_order(round, contestants) {
                let (workers, at_once) = [(1, 1), (8, 8), (8, 1)][who];
                took[who].push(self.time_build(command.clone(), workers, at_once).await?);
            }
        }
        if self.quick {
            took[2].push(self.time_build(command.clone(), 8, 1).await?);
        }
        self.rows.push(
            Row::paired(
                "4",
                "cold start, 8 workers, 0.5 s import: parallel vs 1 worker",
                ("8 in parallel", &took[1]),
                ("1 worker", &took[0]),
                "s",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.3)
            .extra(serde_json::json!({"seconds_per_round": {"one": took[0], "parallel": took[1], "sequential": took[2]}})),
        );
        self.rows.push(if self.quick {
            Row::new(
                "4b",
                "cold start, 8 workers: parallel vs sequential (speed-up)",
                Figure::secs("8 in parallel", median(&took[1])),
                Figure::secs("8 one by one", median(&took[2])),
                "baseline / portpool",
            )
        } else {
            Row::paired(
                "4b",
                "cold start, 8 workers: parallel vs sequential (speed-up)",
                ("8 in parallel", &took[1]),
                ("8 one by one", &took[2]),
                "s",
                "baseline / portpool",
            )
        });
        Ok(())
    }
    pub(crate) async fn time_build(
        &self,
        command: WorkerCommand,
        workers: usize,
        at_once: usize,
    ) -> Result<f64, String> {
        let t = Instant::now();
        let pool = self
            .pool(command, workers)
            .startup_concurrency(at_once)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let took = t.elapsed().as_secs_f64();
        let ready = pool.status().ready;
        pool.shutdown(Duration::from_secs(5)).await;
        if ready < workers {
            return Err(format!(
                "only {ready} of {workers} workers were ready after build()"
            ));
        }
        Ok(took)
    }
}
