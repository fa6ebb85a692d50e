//! The order of a session's calls and closes: a call counts as running
//! while it lives; a close marks the session closing, waits for the calls
//! running when it began (up to a limit), and calls arriving meanwhile
//! wait behind it.

use std::time::Duration;

use tokio::time::Instant;

use super::{Inner, SessionPool};
use crate::SessionId;

/// What is going on in one session (absent: nothing).
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// Calls running.
    calls: usize,
    /// A close (explicit, expiry or eviction) is in progress: new calls
    /// wait for it.
    closing: bool,
}

/// Marks a session as having a call running, for as long as it lives.
pub(super) struct ActiveGuard<'a> {
    inner: &'a Inner,
    session: SessionId,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        let mut active = self.inner.active();
        if let Some(activity) = active.get_mut(&self.session) {
            activity.calls = activity.calls.saturating_sub(1);
            if activity.calls == 0 {
                if !activity.closing {
                    active.remove(&self.session);
                }
                drop(active);
                // A close may be waiting for the calls to end.
                self.inner.activity_changed.notify_waiters();
            }
        }
    }
}

/// Marks a session as being closed until dropped: calls of it that arrive
/// meanwhile wait.
pub(super) struct ClosingGuard<'a> {
    inner: &'a Inner,
    session: SessionId,
}

impl<'a> ClosingGuard<'a> {
    /// For expiry and eviction: `None` if the session has a call running
    /// (or is already closing).
    pub(super) fn begin(inner: &'a Inner, session: &SessionId) -> Option<Self> {
        let mut active = inner.active();
        if active.contains_key(session) {
            return None;
        }
        active.insert(
            session.clone(),
            Activity {
                calls: 0,
                closing: true,
            },
        );
        Some(ClosingGuard {
            inner,
            session: session.clone(),
        })
    }

    /// For an explicit close: after any other close of the session in
    /// progress, marks it closing at once, so that calls arriving from now
    /// on wait behind the close; then waits for the calls already running
    /// to end, at most `limit`.
    pub(super) async fn wait_begin(inner: &'a Inner, session: &SessionId, limit: Duration) -> Self {
        loop {
            let changed = inner.activity_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut active = inner.active();
                let activity = active.entry(session.clone()).or_default();
                if !activity.closing {
                    activity.closing = true;
                    break;
                }
            }
            changed.await;
        }
        let guard = ClosingGuard {
            inner,
            session: session.clone(),
        };
        let deadline = Instant::now() + limit;
        loop {
            let changed = inner.activity_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let running = inner.active().get(session).map_or(0, |a| a.calls);
            if running == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                tracing::warn!(
                    %session,
                    calls = running,
                    "closing the session with calls still running after the drain time-out ({limit:?})"
                );
                break;
            }
        }
        guard
    }
}

impl Drop for ClosingGuard<'_> {
    fn drop(&mut self) {
        let mut active = self.inner.active();
        if let Some(activity) = active.get_mut(&self.session) {
            if activity.calls == 0 {
                active.remove(&self.session);
            } else {
                // Closed past the drain time-out: the stragglers still count.
                activity.closing = false;
            }
        }
        drop(active);
        self.inner.activity_changed.notify_waiters();
    }
}

impl SessionPool {
    /// Counts a call of `session` as running; waits while a close, expiry
    /// or eviction of it is in progress.
    pub(super) async fn activate(&self, session: &SessionId) -> ActiveGuard<'_> {
        loop {
            let closed = self.inner.activity_changed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            {
                let mut active = self.inner.active();
                let activity = active.entry(session.clone()).or_default();
                if !activity.closing {
                    activity.calls += 1;
                    return self.active_guard(session);
                }
            }
            closed.await;
        }
    }

    pub(super) fn active_guard(&self, session: &SessionId) -> ActiveGuard<'_> {
        ActiveGuard {
            inner: &self.inner,
            session: session.clone(),
        }
    }
}
