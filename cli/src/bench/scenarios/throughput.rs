//! 2. Throughput against the floors; 3. I/O-bound multiplexing.

use std::time::Duration;

use portpool::Value;

use super::{blocking, Rounds, WARMUP};
use crate::bench::calls::concurrent_calls;
use crate::bench::compare::{median, round_order};
use crate::bench::floor::{Floor, FloorKind};
use crate::bench::usage::Run;
use crate::bench::{Bench, Cmp, Row};

impl Bench {
    /// 2. Throughput, N workers and C callers vs N decoding-floor processes
    ///    with C requests in flight in all (and the raw floor), interleaved.
    pub(crate) async fn throughput(&mut self) -> Result<(), String> {
        let frame = self.small_frame()?;
        let workers = self.workers;
        let mut decode = (0..workers)
            .map(|_| self.floor(FloorKind::Decode))
            .collect::<Result<Vec<_>, _>>()?;
        let mut raw = (0..workers)
            .map(|_| self.floor(FloorKind::Raw))
            .collect::<Result<Vec<_>, _>>()?;
        let pool = self
            .pool(self.command(), workers)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let most = self.callers.iter().copied().max().unwrap_or(1);
        let mut letters = "abcdefghijklmnopqrstuvwxyz".chars().map(|c| format!("2{c}"));
        let mut id = move || letters.next().unwrap_or_else(|| "2".into());
        let mut cost_ids = Vec::new();
        for callers in self.callers.clone() {
            let window = callers.div_ceil(workers);
            let with_async = callers == most;
            // 0: portpool sync, 1: decoding floor, 2: raw floor, 3: portpool async.
            let contestants = if with_async { 4 } else { 3 };
            let mut rounds = Rounds::new(contestants);
            for round in 0..self.rounds {
                for who in round_order(round, contestants) {
                    let run = match who {
                        0 | 3 => {
                            let method = if who == 0 { "echo" } else { "aecho" };
                            concurrent_calls(
                                &pool,
                                method,
                                &self.payload,
                                callers,
                                WARMUP,
                                self.seconds,
                                false,
                            )
                            .await?
                        }
                        1 => {
                            blocking(|| Floor::pipelined(&mut decode, &frame, window, WARMUP, self.seconds))?
                        }
                        _ => blocking(|| Floor::pipelined(&mut raw, &frame, window, WARMUP, self.seconds))?,
                    };
                    rounds.runs[who].push(run);
                }
            }
            let rate = |who: usize| rounds.of(who, Run::rate);
            let (sync, dec, rawf) = (rate(0), rate(1), rate(2));
            let floor_label = format!("decoding floor x{workers}");
            self.rows.push(
                Row::paired(
                    &id(),
                    &format!(
                        "throughput, {workers} workers, {callers} callers, sync handler vs decoding floor"
                    ),
                    ("portpool", &sync),
                    (&floor_label, &dec),
                    "calls/s",
                    "portpool / baseline",
                )
                .target(Cmp::AtLeast, 0.8)
                .extra(serde_json::json!({
                    "floor_in_flight_per_process": window,
                    "calls_per_s_per_round": {"sync": sync, "decoding_floor": dec, "raw_floor": rawf},
                    "latency_us_median": {
                        "sync": rounds.latency(0), "decoding_floor": rounds.latency(1), "raw_floor": rounds.latency(2),
                    },
                })),
            );
            self.rows.push(Row::paired(
                &id(),
                &format!("throughput, {workers} workers, {callers} callers, sync handler vs raw floor"),
                ("portpool", &sync),
                (&format!("raw floor x{workers}"), &rawf),
                "calls/s",
                "portpool / baseline",
            ));
            if with_async {
                let asy = rate(3);
                self.rows.push(Row::paired(
                    &id(),
                    &format!(
                        "throughput, {workers} workers, {callers} callers, async handler vs decoding floor"
                    ),
                    ("portpool async", &asy),
                    (&floor_label, &dec),
                    "calls/s",
                    "portpool / baseline",
                ));
                self.throughput = Some((callers, median(&sync)));
            }
            cost_ids.push((callers, rounds));
        }
        pool.shutdown(Duration::from_secs(5)).await;
        blocking(|| {
            decode.into_iter().for_each(Floor::stop);
            raw.into_iter().for_each(Floor::stop);
        });
        for (callers, rounds) in cost_ids {
            let ids = [id(), id(), id(), id()];
            self.cost_rows(
                [&ids[0], &ids[1], &ids[2], &ids[3]],
                &format!("{workers} workers x {callers} callers, sync"),
                &rounds,
                0,
                1,
            );
        }
        Ok(())
    }

    /// 3. A handler that awaits 20 ms: multiplexed vs exclusive checkout,
    ///    interleaved.
    pub(crate) async fn io_bound(&mut self) -> Result<(), String> {
        let (workers, callers) = (4, 400);
        let pool = self
            .pool(self.command(), workers)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let params = Value::from(20);
        let seconds = self.seconds.max(Duration::from_millis(500));
        let warmup = Duration::from_millis(200);
        let mut rounds = Rounds::new(2);
        for round in 0..self.rounds {
            for who in round_order(round, 2) {
                let run =
                    concurrent_calls(&pool, "sleep_ms", &params, callers, warmup, seconds, who == 1).await?;
                rounds.runs[who].push(run);
            }
        }
        pool.shutdown(Duration::from_secs(5)).await;
        self.rows.push(
            Row::paired(
                "3",
                "I/O-bound 20 ms, 4 workers, 400 callers",
                ("multiplexed", &rounds.of(0, Run::rate)),
                ("exclusive checkout", &rounds.of(1, Run::rate)),
                "calls/s",
                "portpool / baseline",
            )
            .target(Cmp::AtLeast, 10.0)
            .extra(serde_json::json!({"ideal_multiplexed_per_s": callers as f64 / 0.020, "ideal_exclusive_per_s": workers as f64 / 0.020})),
        );
        Ok(())
    }
}
