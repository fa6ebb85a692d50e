//! 5. Large payloads.

use std::time::Duration;

use portpool::Value;

use super::{blocking, Rounds};
use crate::bench::calls::{request_frame, sequential_calls, Caller};
use crate::bench::compare::{median, round_order};
use crate::bench::floor::FloorKind;
use crate::bench::usage::Run;
use crate::bench::{Bench, Cmp, Row};

impl Bench {
    /// 5. 1 MiB binary echo on one worker vs the decoding and raw floors,
    ///    interleaved.
    pub(crate) async fn binary(&mut self) -> Result<(), String> {
        const MIB: usize = 1 << 20;
        let payload = Value::Binary(vec![0xA5; MIB]);
        let frame = request_frame("echo", payload.clone())?;
        let mut decode = self.floor(FloorKind::Decode)?;
        let mut raw = self.floor(FloorKind::Raw)?;
        // Large payloads are what `pipe_buffer` is for: a 1 MiB frame then
        // goes through the pipe in one write (the floors keep default pipes).
        let pool = self
            .pool(self.command().pipe_buffer(MIB), 1)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        // 0: portpool, 1: decoding floor, 2: raw floor.
        let mut rounds = Rounds::new(3);
        for round in 0..self.rounds {
            for who in round_order(round, 3) {
                let run = match who {
                    0 => sequential_calls(&pool, "echo", &payload, self.seconds, Caller::Task).await?,
                    1 => blocking(|| decode.sequential(&frame, self.seconds))?,
                    _ => blocking(|| raw.sequential(&frame, self.seconds))?,
                };
                rounds.runs[who].push(run);
            }
        }
        pool.shutdown(Duration::from_secs(5)).await;
        blocking(|| {
            decode.stop();
            raw.stop();
        });
        // Each call moves 1 MiB each way; count the payload once: MiB/s is
        // calls per second.
        let mibs = |who: usize| rounds.of(who, |r| 1e6 / r.samples.mean_us());
        let cost = |who: usize| {
            serde_json::json!({
                "host_cpu_us_per_call": median(&rounds.of(who, |r| r.per_call.host_cpu_us)),
                "worker_cpu_us_per_call": median(&rounds.of(who, |r| r.per_call.worker_cpu_us)),
            })
        };
        self.rows.push(
            Row::paired(
                "5",
                "1 MiB binary echo, 1 worker (1 MiB pipes), sequential, vs decoding floor",
                ("portpool", &mibs(0)),
                ("decoding floor", &mibs(1)),
                "MiB/s",
                "portpool / baseline",
            )
            .target(Cmp::AtLeast, 0.7)
            .extra(serde_json::json!({"portpool": cost(0), "decoding_floor": cost(1), "raw_floor": cost(2)})),
        );
        self.rows.push(Row::paired(
            "5a",
            "1 MiB binary echo, 1 worker (1 MiB pipes), sequential, vs raw floor",
            ("portpool", &mibs(0)),
            ("raw floor", &mibs(2)),
            "MiB/s",
            "portpool / baseline",
        ));
        for (id, name, side, pick) in [
            (
                "5b",
                "host",
                "floor driver",
                (|r: &Run| r.per_call.host_faults) as fn(&Run) -> f64,
            ),
            ("5c", "worker", "decoding floor", |r: &Run| {
                r.per_call.worker_faults
            }),
        ] {
            self.rows.push(Row::paired(
                id,
                &format!("{name} page faults per call, 1 MiB echo"),
                ("portpool", &rounds.of(0, pick)),
                (side, &rounds.of(1, pick)),
                "faults/call",
                "portpool / baseline",
            ));
        }
        Ok(())
    }
}
