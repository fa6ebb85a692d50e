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
use portpool_pool::PoolError;
use portpool_testkit::WorkerScript;

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
    let pool = builder(&l)
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
    // Every key carries the pool label.
    for key in store().values.lock().unwrap().keys() {
        assert!(
            key.starts_with("portpool_") && key.contains("pool=metered"),
            "{key}"
        );
    }
    pool.shutdown(secs(1)).await;
}
