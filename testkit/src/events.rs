//! A timestamped, shareable event log for tests.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::lock;

/// One recorded event and when it happened, as tokio time since the
/// recorder was created (so it is exact under `tokio::time::pause()`).
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded<E> {
    /// Time since the recorder was created.
    pub at: Duration,
    /// The event.
    pub event: E,
}

/// A chronological log of events, cheap to clone (clones share the log).
///
/// Record from anywhere (hooks, handlers, spawned tasks), then assert on the
/// order and the timing. Timestamps use `tokio::time`, so they are virtual
/// and exact under `tokio::time::pause()`.
///
/// ```
/// use std::time::Duration;
/// use portpool_testkit::EventRecorder;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let events: EventRecorder = EventRecorder::new(); // events are Strings by default
/// events.record("started");
/// tokio::time::sleep(Duration::from_secs(2)).await;
/// events.record("stopped");
/// assert_eq!(events.values(), ["started", "stopped"]);
/// assert_eq!(events.events()[1].at, Duration::from_secs(2));
/// # }
/// ```
pub struct EventRecorder<E = String> {
    inner: Arc<Inner<E>>,
}

struct Inner<E> {
    start: Instant,
    events: Mutex<Vec<Recorded<E>>>,
    generation: watch::Sender<u64>,
}

impl<E> Clone for EventRecorder<E> {
    fn clone(&self) -> Self {
        EventRecorder {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<E> Default for EventRecorder<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: fmt::Debug> fmt::Debug for EventRecorder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(lock(&self.inner.events).iter()).finish()
    }
}

impl<E> EventRecorder<E> {
    /// An empty log whose clock starts now.
    pub fn new() -> Self {
        EventRecorder {
            inner: Arc::new(Inner {
                start: Instant::now(),
                events: Mutex::new(Vec::new()),
                generation: watch::Sender::new(0),
            }),
        }
    }

    /// Appends an event, stamped with the current tokio time.
    pub fn record(&self, event: impl Into<E>) {
        let at = self.inner.start.elapsed();
        lock(&self.inner.events).push(Recorded {
            at,
            event: event.into(),
        });
        self.inner.generation.send_modify(|g| *g += 1);
    }

    /// How many events were recorded.
    pub fn len(&self) -> usize {
        lock(&self.inner.events).len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every event (the clock keeps running).
    pub fn clear(&self) {
        lock(&self.inner.events).clear();
    }

    /// How many recorded events match `pred`.
    pub fn count(&self, pred: impl Fn(&E) -> bool) -> usize {
        lock(&self.inner.events).iter().filter(|r| pred(&r.event)).count()
    }

    /// Time since the recorder was created (tokio time).
    pub fn elapsed(&self) -> Duration {
        self.inner.start.elapsed()
    }
}

impl<E: Clone> EventRecorder<E> {
    /// Every event with its time, in order.
    pub fn events(&self) -> Vec<Recorded<E>> {
        lock(&self.inner.events).clone()
    }

    /// Every event without its time, in order.
    pub fn values(&self) -> Vec<E> {
        lock(&self.inner.events).iter().map(|r| r.event.clone()).collect()
    }

    /// The events that match `pred`, in order.
    pub fn matching(&self, pred: impl Fn(&E) -> bool) -> Vec<Recorded<E>> {
        lock(&self.inner.events)
            .iter()
            .filter(|r| pred(&r.event))
            .cloned()
            .collect()
    }

    /// Waits until an event matching `pred` has been recorded (possibly
    /// already) and returns the first one. Wrap it in `tokio::time::timeout`
    /// to bound the wait.
    pub async fn wait_for(&self, pred: impl Fn(&E) -> bool) -> Recorded<E> {
        let mut generation = self.inner.generation.subscribe();
        loop {
            if let Some(found) = lock(&self.inner.events).iter().find(|r| pred(&r.event)) {
                return found.clone();
            }
            // The sender lives in `self`, so this only returns after a change.
            let _ = generation.changed().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wait_for_sees_later_events() {
        let events: EventRecorder<u32> = EventRecorder::new();
        let writer = events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            writer.record(1u32);
            writer.record(7u32);
        });
        let found = events.wait_for(|e| *e > 5).await;
        assert_eq!(found.event, 7);
        assert_eq!(found.at, Duration::from_secs(3));
        assert_eq!(events.count(|e| *e == 1), 1);
        events.clear();
        assert!(events.is_empty());
    }
}
