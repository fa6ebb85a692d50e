//! The scheduler's rules, driven event by event with a fake worker handle
//! and a hand-moved clock: no runtime, no sleeping, fully deterministic.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portpool_transport::{LaunchError, WorkerExit, WorkerId};
use proptest::prelude::*;

use super::outcome::{Outcome, Streak, Verdict};
use super::{Admission, Checkout, Expiry, Grant, Liveness, Request, Scheduler, SlotId, WaiterId};
use crate::{BreakerConfig, BreakerState, CrashLoop, PoolConfig, PoolError};

/// A worker handle whose liveness the test flips.
#[derive(Debug, Clone)]
struct Fake(Rc<Cell<bool>>);

impl Liveness for Fake {
    fn is_alive(&self) -> bool {
        self.0.get()
    }
}

impl PartialEq for Fake {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Fake {}

fn config() -> PoolConfig {
    PoolConfig {
        name: "t".into(),
        min_workers: 2,
        max_workers: 2,
        max_queue: 4,
        breaker: None,
        ..PoolConfig::default()
    }
}

const SHARED: Request = Request {
    kind: Checkout::Shared,
    target: None,
    fail_fast: false,
    may_probe: true,
};
const EXCLUSIVE: Request = Request {
    kind: Checkout::Exclusive,
    target: None,
    fail_fast: false,
    may_probe: false,
};

fn on(worker: WorkerId, fail_fast: bool) -> Request {
    Request {
        target: Some(worker),
        fail_fast,
        ..SHARED
    }
}

struct Pool {
    s: Scheduler<Fake>,
    t: Instant,
    alive: HashMap<WorkerId, Fake>,
    next_worker: u64,
}

impl Pool {
    fn new(cfg: PoolConfig) -> Self {
        let mut s = Scheduler::new(Arc::new(cfg));
        for _ in 0..s.cfg.min_workers {
            s.new_slot();
        }
        s.take_outbox();
        Pool {
            s,
            t: Instant::now(),
            alive: HashMap::new(),
            next_worker: 0,
        }
    }

    /// A worker with `capacity` becomes ready in `slot`.
    fn up(&mut self, slot: SlotId, capacity: usize) -> WorkerId {
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        let fake = Fake(Rc::new(Cell::new(true)));
        self.alive.insert(id, fake.clone());
        self.s.on_ready(slot, id, fake, capacity, self.t);
        id
    }

    fn acquire(&mut self, req: Request) -> Admission<Fake> {
        self.s.acquire(req, self.t)
    }

    fn granted(&mut self, req: Request) -> Grant<Fake> {
        match self.acquire(req) {
            Admission::Granted(g) => g,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn queued(&mut self, req: Request) -> WaiterId {
        match self.acquire(req) {
            Admission::Queued(id) => id,
            other => panic!("expected to queue, got {other:?}"),
        }
    }

    fn refused(&mut self, req: Request) -> PoolError {
        match self.acquire(req) {
            Admission::Refused(e) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn release(&mut self, g: &Grant<Fake>) {
        self.s.release(g.worker, g.kind, false, self.t);
    }

    /// Who was woken with a slot, in order.
    fn woken(&mut self) -> Vec<(WaiterId, WorkerId)> {
        let out = self.s.take_outbox();
        out.grants.iter().map(|(w, g)| (*w, g.worker)).collect()
    }

    fn failed(&mut self) -> Vec<(WaiterId, PoolError)> {
        self.s.take_outbox().failures
    }
}

fn launch_error() -> LaunchError {
    LaunchError::Other {
        worker: WorkerId(99),
        reason: "no python".into(),
    }
}

#[test]
fn shared_calls_go_to_the_least_loaded_worker() {
    let mut p = Pool::new(config());
    let a = p.up(0, 2);
    let b = p.up(1, 2);
    let first = p.granted(SHARED);
    let second = p.granted(SHARED);
    assert_eq!((first.worker, second.worker), (a, b), "spread before stacking");
    assert_eq!(p.granted(SHARED).worker, a);
    assert_eq!(p.granted(SHARED).worker, b);
    p.queued(SHARED);
    p.release(&second);
    assert_eq!(p.woken().iter().map(|w| w.1).collect::<Vec<_>>(), vec![b]);
}

#[test]
fn exclusive_takes_an_unused_worker_and_blocks_the_queue_behind_it() {
    let mut p = Pool::new(config());
    let a = p.up(0, 4);
    let b = p.up(1, 4);
    let on_a = p.granted(SHARED);
    let on_b = p.granted(SHARED);
    assert_eq!((on_a.worker, on_b.worker), (a, b));
    let ex = p.queued(EXCLUSIVE);
    // Workers have room for shared calls, but a queued exclusive waiter
    // comes first: later callers queue behind it (no starvation).
    let later = p.queued(SHARED);
    p.release(&on_a);
    assert_eq!(p.woken(), vec![(ex, a), (later, b)]);
    assert_eq!(p.s.entries[0].state(), crate::WorkerState::Leased);
}

#[test]
fn targeted_calls_never_block_others_but_wait_behind_a_reserved_worker() {
    let mut p = Pool::new(config());
    let a = p.up(0, 1);
    let b = p.up(1, 1);
    let held_a = p.granted(on(a, false));
    let early_for_a = p.queued(on(a, false));
    // A caller for any worker is not blocked by one waiting for `a`.
    let any = p.granted(SHARED);
    assert_eq!(any.worker, b);
    assert!(matches!(p.refused(on(a, true)), PoolError::WorkerBusy { worker, .. } if worker == a));
    p.release(&held_a);
    assert_eq!(p.woken(), vec![(early_for_a, a)]);
    // An exclusive waiter reserves the least-loaded worker (`a`): a call
    // for `a` queued after it waits behind it.
    let ex = p.queued(EXCLUSIVE);
    let late_for_a = p.queued(on(a, false));
    p.s.release(a, Checkout::Shared, false, p.t);
    assert_eq!(p.woken(), vec![(ex, a)], "the exclusive waiter gets `a` first");
    p.s.release(a, Checkout::Exclusive, false, p.t);
    assert_eq!(p.woken(), vec![(late_for_a, a)]);
}

#[test]
fn refusals() {
    let mut cfg = config();
    cfg.max_queue = 1;
    let mut p = Pool::new(cfg);
    let a = p.up(0, 1);
    assert!(matches!(
        p.refused(on(WorkerId(42), false)),
        PoolError::WorkerGone { .. }
    ));
    let _held = p.granted(SHARED);
    p.queued(SHARED);
    assert!(matches!(p.refused(SHARED), PoolError::QueueFull { max: 1, .. }));
    p.s.close();
    let failed = p.failed();
    assert_eq!(failed.len(), 1);
    assert!(matches!(failed[0].1, PoolError::PoolClosed { .. }));
    assert!(matches!(p.refused(on(a, false)), PoolError::PoolClosed { .. }));
}

#[test]
fn failing_starts_make_the_pool_unavailable_at_once() {
    let mut p = Pool::new(config());
    let w = p.queued(SHARED);
    p.s.on_launch_failed(0, launch_error(), true, p.t);
    assert!(p.failed().is_empty(), "slot 1 has not failed yet");
    p.s.on_launch_failed(1, launch_error(), true, p.t);
    let failed = p.failed();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, w);
    assert!(matches!(
        failed[0].1,
        PoolError::Unavailable {
            crash_loop: false,
            ..
        }
    ));
    assert!(matches!(p.refused(SHARED), PoolError::Unavailable { .. }));
    // A failed replacement while the old worker serves does not count.
    let mut p = Pool::new(config());
    p.up(0, 1);
    p.s.on_launch_failed(0, launch_error(), false, p.t);
    p.s.on_launch_failed(1, launch_error(), true, p.t);
    assert!(p.s.unavailable(p.t).is_none(), "a worker still serves");
}

#[test]
fn crash_loop_makes_the_pool_unavailable() {
    let mut cfg = config();
    cfg.min_workers = 1;
    cfg.crash_loop = CrashLoop {
        max_restarts: 2,
        window: Duration::from_secs(10),
    };
    let mut p = Pool::new(cfg);
    let w0 = p.up(0, 1);
    assert_eq!(p.s.on_crash(0, w0, &WorkerExit::default(), p.t), None);
    let w1 = p.up(0, 1);
    let _held = p.granted(on(w1, false));
    let waiting = p.queued(on(w1, false));
    let _ = p.s.take_outbox();
    assert_eq!(p.s.on_crash(0, w1, &WorkerExit::default(), p.t), Some(2));
    let failed = p.failed();
    assert!(
        matches!(&failed[..], [(id, PoolError::WorkerGone { worker, .. })] if *id == waiting && *worker == w1),
        "{failed:?}"
    );
    assert!(matches!(
        p.refused(SHARED),
        PoolError::Unavailable { crash_loop: true, .. }
    ));
    p.t += Duration::from_secs(11);
    assert!(
        matches!(p.acquire(SHARED), Admission::Queued(_)),
        "the loop is over"
    );
}

#[test]
fn waiting_for_the_first_worker_is_not_a_checkout_timeout() {
    let mut p = Pool::new(config());
    let w = p.queued(SHARED);
    assert_eq!(p.s.expire(w, p.t), Expiry::Extend);
    let a = p.up(0, 1);
    assert_eq!(p.woken(), vec![(w, a)]);
    assert_eq!(p.s.expire(w, p.t), Expiry::Answered);
    let late = p.queued(SHARED);
    p.up(1, 1);
    let _ = p.s.take_outbox();
    let again = p.queued(SHARED);
    assert_ne!(late, again);
    let _ = late;
    assert_eq!(p.s.expire(again, p.t), Expiry::TimedOut);
    assert!(!p.s.queue.contains(again));
}

#[test]
fn an_undelivered_grant_goes_to_the_next_waiter() {
    let mut p = Pool::new(config());
    let a = p.up(0, 1);
    let held = p.granted(SHARED);
    let _gone = p.queued(SHARED);
    let next = p.queued(SHARED);
    p.release(&held);
    let out = p.s.take_outbox();
    let (_, grant) = &out.grants[0];
    p.s.ungrant(grant, p.t);
    p.s.dispatch(p.t);
    assert_eq!(p.woken(), vec![(next, a)]);
}

#[test]
fn the_breaker_opens_lets_one_probe_through_and_closes() {
    let mut cfg = config();
    cfg.breaker = Some(BreakerConfig {
        failure_threshold: 2,
        open_for: Duration::from_secs(5),
        half_open_probes: 1,
    });
    let mut p = Pool::new(cfg);
    let a = p.up(0, 4);
    let fault = Outcome {
        verdict: Verdict::Fault,
        streak: Streak::Grow,
    };
    let crash = Outcome {
        verdict: Verdict::Crash(a),
        streak: Streak::Reset,
    };
    p.s.finish_call(a, false, crash, p.t);
    p.s.finish_call(a, false, crash, p.t);
    assert_eq!(
        p.s.breaker_state(p.t),
        BreakerState::Closed,
        "one crash is one fault"
    );
    p.s.finish_call(a, false, fault, p.t);
    assert!(p.s.take_outbox().breaker);
    assert!(
        matches!(p.refused(SHARED), PoolError::CircuitOpen { retry_after, .. } if retry_after == Duration::from_secs(5))
    );
    p.t += Duration::from_secs(5);
    let lease = p.granted(EXCLUSIVE);
    assert!(!lease.probe, "a lease is never the probe");
    p.release(&lease);
    let probe = p.granted(SHARED);
    assert!(probe.probe);
    assert!(matches!(p.refused(SHARED), PoolError::CircuitOpen { retry_after, .. } if retry_after.is_zero()));
    // The probe's checkout given back without an outcome frees its place.
    p.s.release(probe.worker, probe.kind, true, p.t);
    let probe = p.granted(SHARED);
    assert!(probe.probe);
    let ok = Outcome {
        verdict: Verdict::Healthy,
        streak: Streak::Reset,
    };
    p.s.finish_call(a, true, ok, p.t);
    assert_eq!(p.s.breaker_state(p.t), BreakerState::Closed);
}

#[test]
fn calls_served_and_timeouts_in_a_row_ask_for_a_recycle() {
    let mut cfg = config();
    cfg.recycle.max_requests = Some(3);
    cfg.recycle.max_consecutive_timeouts = Some(2);
    let mut p = Pool::new(cfg);
    let a = p.up(0, 1);
    let timeout = Outcome {
        verdict: Verdict::Neutral,
        streak: Streak::Grow,
    };
    p.s.finish_call(a, false, timeout, p.t);
    assert!(p.s.take_outbox().recycle.is_empty());
    p.s.finish_call(a, false, timeout, p.t);
    assert_eq!(p.s.take_outbox().recycle, vec![0]);
    assert_eq!(p.s.recycle_reason(a), Some("timeouts"));
    let ok = Outcome {
        verdict: Verdict::Healthy,
        streak: Streak::Reset,
    };
    p.s.finish_call(a, false, ok, p.t);
    assert_eq!(p.s.recycle_reason(a), Some("max_requests"));
}

#[test]
fn scale_up_retire_and_pins() {
    let mut cfg = config();
    cfg.min_workers = 1;
    cfg.max_workers = 2;
    cfg.idle_timeout = Some(Duration::from_secs(60));
    let mut p = Pool::new(cfg);
    let a = p.up(0, 1);
    let held = p.granted(SHARED);
    p.queued(SHARED);
    let out = p.s.take_outbox();
    assert_eq!(out.start, vec![1], "a queued caller starts another slot");
    p.queued(SHARED);
    assert!(p.s.take_outbox().start.is_empty(), "max_workers reached");
    let b = p.up(1, 1);
    p.release(&held);
    let _ = p.s.take_outbox();
    let (ga, gb) = (p.s.entries[0].in_use, p.s.entries[1].in_use);
    assert_eq!((ga, gb), (1, 1));
    p.s.release(a, Checkout::Shared, false, p.t);
    p.s.release(b, Checkout::Shared, false, p.t);
    p.t += Duration::from_secs(61);
    assert!(p.s.pin(b, true));
    assert!(!p.s.try_retire(1, b, p.t), "a pinned worker stays");
    assert!(p.s.pin(b, false));
    assert!(p.s.take_outbox().changed, "unpinned: drain watchers look again");
    assert!(p.s.try_retire(1, b, p.t));
    assert!(!p.s.try_retire(0, a, p.t), "never below min_workers");
    assert_eq!(p.s.ready_workers(), vec![a]);
    assert!(p.s.serving(b), "a retiring worker still serves its sessions");
}

#[test]
fn draining_and_dead_workers_take_no_new_calls() {
    let mut p = Pool::new(config());
    let a = p.up(0, 2);
    let b = p.up(1, 2);
    p.s.mark_draining(a, p.t);
    p.alive[&b].0.set(false);
    assert!(!p.s.has_ready_worker());
    p.queued(SHARED);
    assert_eq!(
        p.granted(on(a, false)).worker,
        a,
        "a draining worker serves its sessions"
    );
    assert!(matches!(p.refused(on(b, false)), PoolError::WorkerGone { .. }));
    let status = p.s.snapshot(p.t).0;
    assert_eq!((status.ready, status.queue_depth), (0, 1));
}

// ---- property: random event sequences keep the invariants ---------------

#[derive(Debug, Clone)]
enum Event {
    Acquire {
        kind: Checkout,
        target: Option<u8>,
        fail_fast: bool,
        may_probe: bool,
    },
    Release(u8),
    Finish(u8, u8),
    Cancel(u8),
    Abandon(u8),
    Expire(u8),
    Ready(u8, u8),
    LaunchFailed(u8),
    Crash(u8),
    Die(u8),
    Drain(u8),
    Gone(u8),
    Retire(u8),
    Pin(u8, bool),
    Advance(u16),
    Close,
}

fn event() -> impl Strategy<Value = Event> {
    let kind = prop_oneof![Just(Checkout::Shared), Just(Checkout::Exclusive)];
    prop_oneof![
        6 => (kind, proptest::option::of(0u8..6), any::<bool>(), any::<bool>())
            .prop_map(|(kind, target, fail_fast, may_probe)| Event::Acquire { kind, target, fail_fast, may_probe }),
        4 => any::<u8>().prop_map(Event::Release),
        3 => (any::<u8>(), 0u8..5).prop_map(|(i, o)| Event::Finish(i, o)),
        1 => any::<u8>().prop_map(Event::Cancel),
        1 => any::<u8>().prop_map(Event::Abandon),
        1 => any::<u8>().prop_map(Event::Expire),
        3 => (any::<u8>(), 1u8..4).prop_map(|(i, c)| Event::Ready(i, c)),
        1 => any::<u8>().prop_map(Event::LaunchFailed),
        1 => any::<u8>().prop_map(Event::Crash),
        1 => any::<u8>().prop_map(Event::Die),
        1 => any::<u8>().prop_map(Event::Drain),
        1 => any::<u8>().prop_map(Event::Gone),
        1 => any::<u8>().prop_map(Event::Retire),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(i, add)| Event::Pin(i, add)),
        2 => (0u16..3000).prop_map(Event::Advance),
    ]
}

/// What the shell would know: callers holding slots, callers waiting.
#[derive(Default)]
struct Model {
    held: Vec<Grant<Fake>>,
    waiting: Vec<(WaiterId, Request)>,
    abandoned: BTreeSet<WaiterId>,
    answered: BTreeSet<WaiterId>,
    pins: HashMap<WorkerId, usize>,
}

fn nth<T>(v: &[T], i: u8) -> Option<usize> {
    (!v.is_empty()).then(|| i as usize % v.len())
}

impl Pool {
    fn worker_at(&self, i: u8) -> Option<(SlotId, WorkerId)> {
        let n = nth(&self.s.entries, i)?;
        Some((self.s.entries[n].slot, self.s.entries[n].id))
    }

    fn empty_slot_at(&self, i: u8) -> Option<SlotId> {
        let empty: Vec<SlotId> = self
            .s
            .slots
            .iter()
            .filter(|s| !self.s.entries.iter().any(|e| e.slot == s.id))
            .map(|s| s.id)
            .collect();
        Some(empty[nth(&empty, i)?])
    }

    fn apply(&mut self, m: &mut Model, ev: &Event) {
        let now = self.t;
        match *ev {
            Event::Acquire {
                kind,
                target,
                fail_fast,
                may_probe,
            } => {
                let target = target.map(|t| WorkerId(u64::from(t)));
                let req = Request {
                    kind,
                    target,
                    fail_fast,
                    may_probe,
                };
                match self.s.acquire(req, now) {
                    Admission::Granted(g) => {
                        self.deliver(m);
                        assert!(
                            !m.waiting.iter().any(|(_, r)| r.target == target),
                            "served at once past a caller waiting for the same"
                        );
                        m.held.push(g);
                    }
                    Admission::Queued(id) => m.waiting.push((id, req)),
                    Admission::Refused(_) => {}
                }
            }
            Event::Release(i) => {
                if let Some(n) = nth(&m.held, i) {
                    let g = m.held.remove(n);
                    self.s.release(g.worker, g.kind, g.probe, now);
                }
            }
            Event::Finish(i, o) => {
                if let Some(n) = nth(&m.held, i) {
                    let g = m.held.remove(n);
                    let verdict = match o {
                        0 => Verdict::Healthy,
                        1 => Verdict::Fault,
                        2 => Verdict::Crash(g.worker),
                        _ => Verdict::Neutral,
                    };
                    let streak = if o == 1 { Streak::Grow } else { Streak::Reset };
                    self.s
                        .finish_call(g.worker, g.probe, Outcome { verdict, streak }, now);
                    self.s.release(g.worker, g.kind, false, now);
                }
            }
            Event::Cancel(i) => {
                if let Some(n) = nth(&m.waiting, i) {
                    let (id, _) = m.waiting.remove(n);
                    self.s.cancel(id, now);
                }
            }
            Event::Abandon(i) => {
                if let Some(n) = nth(&m.waiting, i) {
                    m.abandoned.insert(m.waiting[n].0);
                }
            }
            Event::Expire(i) => {
                if let Some(n) = nth(&m.waiting, i) {
                    let id = m.waiting[n].0;
                    match self.s.expire(id, now) {
                        Expiry::TimedOut => {
                            m.waiting.remove(n);
                            assert!(m.answered.insert(id));
                        }
                        Expiry::Extend => assert!(!self.s.ever_ready),
                        Expiry::Answered => panic!("waiter {id} is still waiting in the model"),
                    }
                }
            }
            Event::Ready(i, capacity) => {
                if let Some(slot) = self.empty_slot_at(i) {
                    self.up(slot, capacity as usize);
                }
            }
            Event::LaunchFailed(i) => {
                if let Some(slot) = self.empty_slot_at(i) {
                    self.s.on_launch_failed(slot, launch_error(), true, now);
                }
            }
            Event::Crash(i) => {
                if let Some((slot, id)) = self.worker_at(i) {
                    self.alive[&id].0.set(false);
                    self.s.on_crash(slot, id, &WorkerExit::default(), now);
                }
            }
            Event::Die(i) => {
                if let Some((_, id)) = self.worker_at(i) {
                    self.alive[&id].0.set(false);
                    // Its supervisor reports the crash soon; until then the
                    // scheduler is not told, so let the next event see it.
                    self.s.dispatch(now);
                }
            }
            Event::Drain(i) => {
                if let Some((_, id)) = self.worker_at(i) {
                    self.s.mark_draining(id, now);
                }
            }
            Event::Gone(i) => {
                if let Some((_, id)) = self.worker_at(i) {
                    self.s.remove_entry(id, now);
                }
            }
            Event::Retire(i) => {
                if let Some((slot, id)) = self.worker_at(i) {
                    self.s.try_retire(slot, id, now);
                }
            }
            Event::Pin(i, add) => {
                if let Some((_, id)) = self.worker_at(i) {
                    let pins = m.pins.entry(id).or_default();
                    if add || *pins > 0 {
                        *pins = if add { *pins + 1 } else { *pins - 1 };
                        assert!(self.s.pin(id, add));
                    }
                }
            }
            Event::Advance(ms) => self.t += Duration::from_millis(u64::from(ms)),
            Event::Close => self.s.close(),
        }
        self.deliver(m);
    }

    /// Plays the shell: delivers the outbox, checking who is woken.
    fn deliver(&mut self, m: &mut Model) {
        loop {
            let out = self.s.take_outbox();
            let mut undelivered = false;
            for (id, g) in out.grants {
                let n = m
                    .waiting
                    .iter()
                    .position(|(w, _)| *w == id)
                    .unwrap_or_else(|| panic!("granted waiter {id} was not waiting"));
                let (_, req) = m.waiting.remove(n);
                assert!(m.answered.insert(id), "waiter {id} answered twice");
                assert!(
                    req.target.map_or(true, |t| t == g.worker),
                    "granted the wrong worker"
                );
                assert_eq!(req.kind, g.kind);
                // FIFO among equals: nobody queued earlier for the same
                // thing (any worker; or this worker, same kind) is left.
                for (w, r) in &m.waiting {
                    let equal = r.target == req.target && (req.target.is_none() || r.kind == req.kind);
                    assert!(!(equal && *w < id), "waiter {id} served before {w}");
                }
                if m.abandoned.contains(&id) {
                    self.s.ungrant(&g, self.t);
                    undelivered = true;
                } else {
                    m.held.push(g);
                }
            }
            if undelivered {
                self.s.dispatch(self.t);
            }
            for (id, _) in out.failures {
                let n = m
                    .waiting
                    .iter()
                    .position(|(w, _)| *w == id)
                    .unwrap_or_else(|| panic!("failed waiter {id} was not waiting"));
                m.waiting.remove(n);
                assert!(m.answered.insert(id), "waiter {id} answered twice");
            }
            if !undelivered {
                break;
            }
        }
    }

    fn check(&mut self, m: &mut Model) {
        // No slot leaked: each worker's count is the slots held on it.
        for e in &self.s.entries {
            let held: Vec<_> = m.held.iter().filter(|g| g.worker == e.id).collect();
            assert_eq!(e.in_use, held.len(), "worker {} in_use", e.id);
            assert!(e.in_use <= e.capacity);
            let exclusive = held.iter().any(|g| g.kind == Checkout::Exclusive);
            assert_eq!(e.exclusive, exclusive);
            if exclusive {
                assert_eq!(e.in_use, 1, "an exclusive checkout is alone");
            }
        }
        let on_live: usize = m
            .held
            .iter()
            .filter(|g| self.s.entries.iter().any(|e| e.id == g.worker))
            .count();
        assert_eq!(self.s.entries.iter().map(|e| e.in_use).sum::<usize>(), on_live);
        // The queue is what the model waits for, in order.
        let queued: Vec<WaiterId> = self.s.queue.iter().map(|w| w.id).collect();
        let waiting: Vec<WaiterId> = m.waiting.iter().map(|(w, _)| *w).collect();
        assert_eq!(queued, waiting);
        // No probe place leaked.
        let holders =
            m.held.iter().filter(|g| g.probe).count() + self.s.queue.iter().filter(|w| w.probe).count();
        if holders == 0 {
            assert_eq!(self.s.breaker.probes(), 0, "a probe place leaked");
        }
        // Nobody waits while a slot they could take is free.
        self.s.dispatch(self.t);
        let out = self.s.take_outbox();
        assert!(
            out.grants.is_empty(),
            "a free slot was left unused: {:?}",
            out.grants
        );
        if self.s.is_closed() {
            assert!(m.waiting.is_empty());
        }
    }
}

fn prop_config() -> PoolConfig {
    PoolConfig {
        name: "prop".into(),
        min_workers: 2,
        max_workers: 4,
        max_queue: 6,
        breaker: Some(BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_millis(1500),
            half_open_probes: 2,
        }),
        crash_loop: CrashLoop {
            max_restarts: 3,
            window: Duration::from_secs(5),
        },
        idle_timeout: Some(Duration::from_secs(2)),
        ..PoolConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_events_keep_the_invariants(events in proptest::collection::vec(event(), 1..120), close_at in proptest::option::of(0usize..120)) {
        let mut p = Pool::new(prop_config());
        let mut m = Model::default();
        for (i, ev) in events.iter().enumerate() {
            let ev = if close_at == Some(i) { &Event::Close } else { ev };
            p.apply(&mut m, ev);
            p.check(&mut m);
        }
    }
}
