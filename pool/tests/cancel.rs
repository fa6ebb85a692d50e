//! Cancel safety: futures dropped at random points (while queued, at the
//! moment a slot is handed over, mid-call, mid-stream, holding a lease)
//! never leak a slot, a queue entry, a lease or a breaker probe.

mod common;

use common::*;
use futures::StreamExt;
use portpool_pool::{Checkout, PoolError};
use portpool_testkit::WorkerScript;
use portpool_transport::CallRequest;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Call { ms: u64 },
    Stream { items: u64 },
    Lease { kind: Checkout, calls: u8, ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..50).prop_map(|ms| Op::Call { ms }),
        (0u64..5).prop_map(|items| Op::Stream { items }),
        (any::<bool>(), 0u8..3, 0u64..50).prop_map(|(ex, calls, ms)| Op::Lease {
            kind: if ex { Checkout::Exclusive } else { Checkout::Shared },
            calls,
            ms,
        }),
    ]
}

async fn run(pool: portpool_pool::Pool, op: Op) -> Result<(), PoolError> {
    match op {
        Op::Call { ms } => pool.call::<_, u64>("sleep", &ms).await.map(drop),
        Op::Stream { items } => {
            let mut s = pool.stream(CallRequest::new("count", items)).await?;
            while let Some(item) = s.next().await {
                item?;
            }
            Ok(())
        }
        Op::Lease { kind, calls, ms } => {
            let lease = pool.checkout_with(kind).await?;
            for _ in 0..calls {
                lease.call::<_, u64>("sleep", &ms).await?;
            }
            Ok(())
        }
    }
}

fn scenario(ops: Vec<(Op, u64, u64)>, crash_every: u64, concurrency: u32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let l = launcher().max_concurrency(concurrency).script(move |_| {
            if crash_every > 0 {
                WorkerScript::default()
                    .crash_after_calls(crash_every)
                    .chunk_interval(ms(3))
            } else {
                WorkerScript::default().chunk_interval(ms(3))
            }
        });
        let pool = fake_pool_builder(&l)
            .workers(2)
            .max_queue(8)
            .checkout_timeout(ms(200))
            .crash_loop(1000, secs(1))
            .breaker(breaker(3, ms(50)))
            .build()
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for (op, start_at, drop_after) in ops {
            tasks.push(spawn_with(&pool, move |pool| async move {
                tokio::time::sleep(ms(start_at)).await;
                // Dropped at a random virtual instant (0: at the first await).
                let _ = tokio::time::timeout(ms(drop_after), run(pool, op)).await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        settle().await;
        let st = pool.status();
        assert_eq!(held(&st), 0, "leaked slots: {st:#?}");
        assert_eq!(st.queue_depth, 0, "leaked waiters: {st:#?}");
        // Everything still works: the breaker closes again (no leaked
        // probe) and every slot can be used at once (no leaked slot).
        tokio::time::sleep(secs(1)).await;
        let mut recovered = false;
        for _ in 0..50 {
            match pool.call::<_, u32>("echo", &1).await {
                Ok(_) => {
                    recovered = true;
                    break;
                }
                Err(PoolError::Call(_) | PoolError::CircuitOpen { .. }) => tokio::time::sleep(ms(100)).await,
                Err(e) => panic!("pool did not recover: {e}"),
            }
        }
        assert!(recovered, "pool did not recover: {:#?}", pool.status());
        if crash_every == 0 {
            let st = wait_status(&pool, |s| s.ready == 2).await;
            let capacity: usize = st.workers.iter().map(|w| w.capacity).sum();
            let mut calls = Vec::new();
            for _ in 0..capacity {
                calls.push(spawn_call::<u64>(&pool, "sleep", 10));
            }
            settle().await;
            assert_eq!(held(&pool.status()), capacity);
            for c in calls {
                c.await.unwrap().unwrap();
            }
        }
        pool.shutdown(secs(1)).await;
        tokio::time::sleep(secs(1)).await;
        l.assert_no_calls_in_flight();
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn dropped_futures_never_leak(
        ops in proptest::collection::vec((op(), 0u64..100, 0u64..120), 1..24),
        crash_every in prop_oneof![Just(0u64), 3u64..10],
        concurrency in 1u32..3,
    ) {
        scenario(ops, crash_every, concurrency);
    }
}
