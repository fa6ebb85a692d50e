//! The pool's metrics: names, `pool` label, outcomes, restarts, gauges.
//! (Own test binary: it installs a global recorder.)

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use portpool_pool::{BreakerState, PoolError, Wait, WorkerState};
use portpool_testkit::WorkerScript;
use portpool_transport::{CallError, CallRequest, WorkerId};

#[derive(Default)]
struct Store {
    values: Mutex<BTreeMap<String, f64>>,
}

struct Handle {
    store: Arc<Store>,
    key: String,
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        *self
            .store
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += value as f64;
    }
    fn absolute(&self, value: u64) {
        self.store
            .values
            .lock()
            .unwrap()
            .insert(self.key.clone(), value as f64);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        *self
            .store
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self
            .store
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() -= value;
    }
    fn set(&self, value: f64) {
        self.store.values.lock().unwrap().insert(self.key.clone(), value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, _value: f64) {
        // Histograms: count the samples.
        *self
            .store
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += 1.0;
    }
}

struct TestRecorder(Arc<Store>);

impl TestRecorder {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        Arc::new(Handle {
            store: self.0.clone(),
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
        })
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

fn store() -> &'static Arc<Store> {
    static STORE: OnceLock<Arc<Store>> = OnceLock::new();
    STORE.get_or_init(|| {
        let store = Arc::new(Store::default());
        metrics::set_global_recorder(TestRecorder(store.clone())).unwrap();
        store
    })
}

fn value(key: &str) -> f64 {
    store().values.lock().unwrap().get(key).copied().unwrap_or(0.0)
}

#[tokio::test(start_paused = true)]
async fn calls_restarts_and_workers_are_measured_with_the_pool_label() {
    store();
    let l = launcher().script(|n| match n {
        0 => WorkerScript::default().crash_after_calls(2),
        _ => WorkerScript::default(),
    });
    let pool = fake_pool_builder(&l)
        .name("metered")
        .workers(1)
        .max_queue(0)
        .build()
        .await
        .unwrap();
    pool.call::<_, u32>("echo", &1).await.unwrap();
    pool.call::<_, u32>("echo", &2).await.unwrap();
    assert!(pool
        .call::<_, u32>("echo", &3)
        .await
        .unwrap_err()
        .is_worker_fault());
    let st = wait_status(&pool, |s| s.ready == 1).await;
    assert_eq!(st.workers[0].restarts, 1);
    let lease = pool.checkout().await.unwrap();
    assert!(matches!(
        pool.call::<_, u32>("echo", &4).await,
        Err(PoolError::QueueFull { .. })
    ));
    assert_eq!(value("portpool_workers{pool=metered,state=leased}"), 1.0);
    drop(lease);

    assert_eq!(value("portpool_calls_total{outcome=ok,pool=metered}"), 2.0);
    assert_eq!(
        value("portpool_calls_total{outcome=worker_crashed,pool=metered}"),
        1.0
    );
    assert_eq!(
        value("portpool_calls_total{outcome=queue_full,pool=metered}"),
        1.0
    );
    assert_eq!(
        value("portpool_worker_restarts_total{pool=metered,reason=crash}"),
        1.0
    );
    assert_eq!(value("portpool_call_duration_seconds{pool=metered}"), 3.0);
    assert!(value("portpool_queue_wait_seconds{pool=metered}") >= 3.0);
    assert_eq!(
        value("portpool_worker_start_duration_seconds{outcome=ok,pool=metered}"),
        2.0
    );
    assert_eq!(value("portpool_workers{pool=metered,state=ready}"), 1.0);
    assert_eq!(value("portpool_workers{pool=metered,state=leased}"), 0.0);
    assert_eq!(value("portpool_queue_depth{pool=metered}"), 0.0);
    // Every key carries the pool label (other tests of this binary run
    // pools of other names at the same time).
    let keys: Vec<String> = store().values.lock().unwrap().keys().cloned().collect();
    assert!(keys.iter().any(|k| k.contains("pool=metered")));
    for key in keys {
        assert!(key.starts_with("portpool_") && key.contains("pool="), "{key}");
    }
    pool.shutdown(secs(1)).await;
}

/// Panics unless every gauge of `pool` says what `status()` says.
#[track_caller]
fn assert_gauges_agree(pool: &portpool_pool::Pool, when: &str) {
    let st = pool.status();
    let name = &pool.config().name;
    let mut wrong = Vec::new();
    let depth = value(&format!("portpool_queue_depth{{pool={name}}}"));
    if depth != st.queue_depth as f64 {
        wrong.push(format!("queue_depth gauge {depth}, status {}", st.queue_depth));
    }
    for state in [
        WorkerState::Starting,
        WorkerState::Ready,
        WorkerState::Leased,
        WorkerState::Draining,
        WorkerState::Backoff,
    ] {
        let g = value(&format!(
            "portpool_workers{{pool={name},state={}}}",
            state.as_str()
        ));
        if g != st.count(state) as f64 {
            wrong.push(format!(
                "workers[{}] gauge {g}, status {}",
                state.as_str(),
                st.count(state)
            ));
        }
    }
    let breaker = match st.breaker {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    };
    let g = value(&format!("portpool_breaker_state{{pool={name}}}"));
    if g != breaker {
        wrong.push(format!("breaker gauge {g}, status {:?}", st.breaker));
    }
    assert!(
        wrong.is_empty(),
        "{name}, {when}: gauges disagree with status(): {wrong:?}\n{st:#?}"
    );
}

/// Item 13: after every kind of fault, every gauge agrees with `status()`.
#[tokio::test(start_paused = true)]
async fn every_gauge_agrees_with_status_after_each_fault() {
    store();

    // A crash fails the calls queued for that worker.
    let l = launcher();
    let pool = fake_pool_builder(&l)
        .name("g-crash")
        .workers(1)
        .build()
        .await
        .unwrap();
    assert_gauges_agree(&pool, "built");
    let running = spawn_call::<u64>(&pool, "sleep", 5_000);
    settle().await;
    let queued: Vec<_> = (0..3)
        .map(|i| {
            spawn_with(&pool, |pool| async move {
                pool.affinity()
                    .call(WorkerId(0), CallRequest::new("echo", i), Wait::Queue)
                    .await
            })
        })
        .collect();
    settle().await;
    assert_eq!(pool.status().queue_depth, 3);
    assert_gauges_agree(&pool, "three queued for worker 0");
    l.worker(WorkerId(0)).unwrap().crash();
    assert!(running.await.unwrap().unwrap_err().is_worker_fault());
    for q in queued {
        let e = q.await.unwrap().unwrap_err();
        assert!(matches!(e, PoolError::WorkerGone { .. }), "{e}");
    }
    assert_eq!(pool.status().queue_depth, 0);
    assert_gauges_agree(&pool, "after the crash");
    wait_status(&pool, |s| s.ready == 1).await;
    assert_gauges_agree(&pool, "replaced");
    pool.shutdown(secs(1)).await;
    assert_gauges_agree(&pool, "shut down");

    // Time-outs: a checkout time-out and a call time-out.
    let l = launcher();
    let pool = fake_pool_builder(&l)
        .name("g-timeout")
        .workers(1)
        .checkout_timeout(secs(1))
        .call_timeout(secs(2))
        .build()
        .await
        .unwrap();
    let hang = spawn_call::<u64>(&pool, "hang", ());
    settle().await;
    let e = pool.call::<_, u64>("echo", &1).await.unwrap_err();
    assert!(matches!(e, PoolError::Timeout { .. }), "{e}");
    assert_gauges_agree(&pool, "checkout time-out");
    let e = hang.await.unwrap().unwrap_err();
    assert!(matches!(e, PoolError::Call(CallError::Timeout { .. })), "{e}");
    assert_gauges_agree(&pool, "call time-out");
    pool.shutdown(secs(1)).await;

    // A failed launch (the replacement of a crashed worker), with callers queued.
    let l = launcher().script(|n| match n {
        1 => WorkerScript::default().fail_launch("no more memory"),
        _ => WorkerScript::default(),
    });
    let pool = fake_pool_builder(&l)
        .name("g-launch")
        .workers(1)
        .build()
        .await
        .unwrap();
    let waiting: Vec<_> = (0..2).map(|_| spawn_call::<u64>(&pool, "sleep", 1_000)).collect();
    settle().await;
    assert_gauges_agree(&pool, "one running, one queued");
    l.worker(WorkerId(0)).unwrap().crash();
    settle().await;
    assert_gauges_agree(&pool, "crashed, replacement failed");
    for w in waiting {
        let _ = w.await.unwrap();
    }
    assert_gauges_agree(&pool, "callers answered");
    wait_status(&pool, |s| s.ready == 1).await;
    assert_gauges_agree(&pool, "healed");
    pool.shutdown(secs(1)).await;

    // The breaker opens, half-opens with time, closes on a good probe.
    let l = launcher();
    let pool = fake_pool_builder(&l)
        .name("g-breaker")
        .workers(1)
        .call_timeout(ms(100))
        .max_consecutive_timeouts(None)
        .breaker(breaker(1, secs(1)))
        .build()
        .await
        .unwrap();
    assert!(pool
        .call::<_, u64>("hang", &())
        .await
        .unwrap_err()
        .is_worker_fault());
    assert_eq!(pool.status().breaker, BreakerState::Open);
    assert_gauges_agree(&pool, "breaker open");
    tokio::time::sleep(secs(2)).await;
    assert_eq!(pool.status().breaker, BreakerState::HalfOpen);
    assert_gauges_agree(&pool, "breaker half-open");
    let v: u64 = pool.call("echo", &1).await.unwrap();
    assert_eq!(v, 1);
    assert_eq!(pool.status().breaker, BreakerState::Closed);
    assert_gauges_agree(&pool, "breaker closed");
    pool.shutdown(secs(1)).await;

    // Waiters that give up (dropped futures), then a shutdown with waiters queued.
    let l = launcher();
    let pool = fake_pool_builder(&l)
        .name("g-drop")
        .workers(1)
        .build()
        .await
        .unwrap();
    let hold = pool.checkout().await.unwrap();
    let waiters: Vec<_> = (0..4).map(|_| spawn_call::<u64>(&pool, "echo", 1)).collect();
    settle().await;
    assert_eq!(pool.status().queue_depth, 4);
    assert_gauges_agree(&pool, "four waiting");
    waiters[0].abort();
    waiters[2].abort();
    settle().await;
    assert_eq!(pool.status().queue_depth, 2);
    assert_gauges_agree(&pool, "two dropped");
    let shutdown = spawn_with(&pool, |pool| async move { pool.shutdown(secs(1)).await });
    settle().await;
    assert_gauges_agree(&pool, "shutting down");
    drop(hold);
    shutdown.await.unwrap();
    for w in waiters {
        if let Ok(r) = w.await {
            assert!(matches!(r, Err(PoolError::PoolClosed { .. })), "{r:?}");
        }
    }
    assert_gauges_agree(&pool, "shut down");
}
