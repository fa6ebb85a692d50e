//! 1. Sequential latency against the floors.

use std::time::Duration;

use super::{blocking, Rounds, SPIN};
use crate::bench::calls::{sequential_calls, Caller};
use crate::bench::compare::{median, round_order};
use crate::bench::floor::FloorKind;
use crate::bench::{Bench, Cmp, Row};

impl Bench {
    /// 1. Sequential small calls on one worker (sync and async handler) vs
    ///    the decoding and raw floors, interleaved.
    pub(crate) async fn latency(&mut self) -> Result<(), String> {
        let frame = self.small_frame()?;
        let mut decode = self.floor(FloorKind::Decode)?;
        let mut raw = self.floor(FloorKind::Raw)?;
        let mut decode_spinning = self.floor(FloorKind::Decode)?.spinning()?;
        let pool = self
            .pool(self.command(), 1)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let spinning = self
            .pool(self.command().spin(SPIN), 1)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        // 0: portpool sync, 1: portpool async, 2: decoding floor, 3: raw floor,
        // 4: portpool sync called from `block_on` (this future) instead of a task,
        // 5: portpool sync in low-latency mode (the host's reader spins),
        // 6: the decoding floor with a driver that spins for each reply.
        // 5 and 6 run in rounds of their own, after the others: a spinning
        // contestant leaves the VM's idle CPUs primed to wake fast for a
        // while, which would flatter whoever runs next.
        let mut rounds = Rounds::new(7);
        for (first, count) in [(0, 5), (5, 2)] {
            for round in 0..self.rounds {
                for who in round_order(round, count).into_iter().map(|i| first + i) {
                    let run = match who {
                        0 => {
                            sequential_calls(&pool, "echo", &self.payload, self.seconds, Caller::Task).await?
                        }
                        1 => {
                            sequential_calls(&pool, "aecho", &self.payload, self.seconds, Caller::Task)
                                .await?
                        }
                        2 => blocking(|| decode.sequential(&frame, self.seconds))?,
                        3 => blocking(|| raw.sequential(&frame, self.seconds))?,
                        4 => {
                            sequential_calls(&pool, "echo", &self.payload, self.seconds, Caller::BlockOn)
                                .await?
                        }
                        6 => blocking(|| decode_spinning.sequential(&frame, self.seconds))?,
                        _ => {
                            sequential_calls(&spinning, "echo", &self.payload, self.seconds, Caller::Task)
                                .await?
                        }
                    };
                    rounds.runs[who].push(run);
                }
            }
        }
        pool.shutdown(Duration::from_secs(5)).await;
        spinning.shutdown(Duration::from_secs(5)).await;
        blocking(|| {
            decode.stop();
            decode_spinning.stop();
            raw.stop();
        });

        let (sync, asy, dec, rawf) = (rounds.p50(0), rounds.p50(1), rounds.p50(2), rounds.p50(3));
        let calls = |who: usize| rounds.of(who, |r| r.calls as f64).iter().sum::<f64>();
        let extra = serde_json::json!({
            "p50_us_per_round": {"sync": sync, "async": asy, "decoding_floor": dec, "raw_floor": rawf},
            "p99_us_median": {
                "sync": median(&rounds.p99(0)), "async": median(&rounds.p99(1)),
                "decoding_floor": median(&rounds.p99(2)), "raw_floor": median(&rounds.p99(3)),
            },
            "calls": {"sync": calls(0), "async": calls(1), "decoding_floor": calls(2), "raw_floor": calls(3)},
            "request_frame_bytes": frame.len(),
        });
        self.rows.push(
            Row::paired(
                "1",
                "seq. small-call p50, 1 worker, sync handler vs decoding floor",
                ("portpool", &sync),
                ("decoding floor", &dec),
                "us",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.3)
            .extra(extra),
        );
        self.rows.push(Row::paired(
            "1a",
            "seq. small-call p50, 1 worker, sync handler vs raw floor",
            ("portpool", &sync),
            ("raw floor", &rawf),
            "us",
            "portpool / baseline",
        ));
        self.rows.push(
            Row::paired(
                "1b",
                "seq. small-call p50, 1 worker, async handler vs sync handler",
                ("async", &asy),
                ("sync", &sync),
                "us",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.5),
        );
        self.rows.push(Row::paired(
            "1c",
            "decoding floor vs raw floor p50 (the cost of msgpack)",
            ("decoding floor", &dec),
            ("raw floor", &rawf),
            "us",
            "portpool / baseline",
        ));
        self.cost_rows(["1d", "1e", "1f", "1g"], "seq., sync", &rounds, 0, 2);
        // The caller's thread matters: a task is completed on the thread
        // that read its reply; `block_on`'s thread must be woken from it.
        let block_on = rounds.p50(4);
        self.rows.push(Row::paired(
            "1h",
            "seq. small-call p50, sync, caller in block_on vs in a task",
            ("block_on", &block_on),
            ("task", &sync),
            "us",
            "portpool / baseline",
        ));
        let switches = |who: usize| rounds.of(who, |r| r.per_call.host_switches);
        self.rows.push(Row::paired(
            "1i",
            "host context switches per call, seq., sync, caller in block_on vs in a task",
            ("block_on", &switches(4)),
            ("task", &switches(0)),
            "switches/call",
            "portpool / baseline",
        ));
        let spin = rounds.p50(5);
        self.rows.push(
            Row::paired(
                "1j",
                &format!(
                    "seq. small-call p50, sync, low-latency mode (spin {} µs) vs decoding floor",
                    SPIN.as_micros()
                ),
                ("portpool spin", &spin),
                ("decoding floor", &dec),
                "us",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.15),
        );
        let cpu = |who: usize| rounds.of(who, |r| r.per_call.host_cpu_us);
        self.rows.push(Row::paired(
            "1k",
            "host CPU per call, seq., sync, low-latency mode vs default",
            ("spin", &cpu(5)),
            ("default", &cpu(0)),
            "us CPU/call",
            "portpool / baseline",
        ));
        // The fair baseline of the low-latency mode: a floor whose driver
        // does not sleep for replies either (the floor's Python still does).
        self.rows.push(
            Row::paired(
                "1l",
                &format!(
                    "seq. small-call p50, sync, low-latency mode (spin {} µs) vs decoding floor, spinning driver",
                    SPIN.as_micros()
                ),
                ("portpool spin", &spin),
                ("spinning floor", &rounds.p50(6)),
                "us",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.15),
        );
        self.latency_p50 = Some(median(&sync));
        Ok(())
    }
}
