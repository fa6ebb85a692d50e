use std::time::Duration;

/// Where a session's calls may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affinity {
    /// Always on the bound worker; wait for a free slot there (bounded by
    /// the pool's checkout time-out).
    #[default]
    Strict,
    /// Always on the bound worker; if it has no free slot, fail at once
    /// with [`SessionError::WorkerBusy`](crate::SessionError::WorkerBusy).
    FailFast,
    /// Prefer the bound worker; if it is busy, run on any ready worker
    /// (which does not see the session's state).
    Hint,
}

/// What happens when the worker holding a session dies or is recycled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnLost {
    /// The next call fails once with
    /// [`SessionError::SessionLost`](crate::SessionError::SessionLost); the
    /// call after it starts a fresh session on another worker.
    #[default]
    Report,
    /// Rebind to another worker silently (the state starts empty).
    Rebind,
}

/// Settings of a [`SessionPool`](crate::SessionPool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Routing of a session's calls. Default [`Affinity::Strict`].
    pub affinity: Affinity,
    /// Handling of a lost worker. Default [`OnLost::Report`].
    pub on_lost: OnLost,
    /// Sessions unused this long are closed (their worker drops the state).
    /// Default 30 minutes; `None` keeps sessions until closed.
    pub idle_ttl: Option<Duration>,
    /// At most this many bound sessions; binding one more evicts the least
    /// recently used idle session. Default 10,000.
    ///
    /// With a store shared by several front ends it counts only the
    /// sessions this front end owns (bound, or last started a call of),
    /// and eviction picks only among those: no front end evicts another's
    /// session on its own count. Sessions taken over from another front
    /// end count from then on; the next bind evicts down to the limit.
    pub max_sessions: usize,
    /// This front end's name in a shared store's bindings (the `owner`
    /// of the sessions it binds or uses). Default `None`: a random name
    /// per session pool. Give each replica a stable, distinct name (its
    /// pod name, say) so that it owns its sessions again after a restart.
    pub front_end: Option<String>,
    /// The longest any one store operation may take before the call
    /// fails with [`SessionError::Store`](crate::SessionError::Store).
    /// Default 5 s (stores such as `RedisStore` have shorter time-outs of
    /// their own; this bounds any store).
    pub store_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            affinity: Affinity::Strict,
            on_lost: OnLost::Report,
            idle_ttl: Some(Duration::from_secs(30 * 60)),
            max_sessions: 10_000,
            front_end: None,
            store_timeout: Duration::from_secs(5),
        }
    }
}

impl SessionConfig {
    /// Sets the affinity mode.
    pub fn affinity(mut self, affinity: Affinity) -> Self {
        self.affinity = affinity;
        self
    }

    /// Sets the lost-worker handling.
    pub fn on_lost(mut self, on_lost: OnLost) -> Self {
        self.on_lost = on_lost;
        self
    }

    /// Sets (or with `None` disables) the idle time-to-live.
    pub fn idle_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Sets the maximum number of bound sessions.
    pub fn max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max;
        self
    }

    /// Names this front end in a shared store's bindings.
    pub fn front_end(mut self, name: impl Into<String>) -> Self {
        self.front_end = Some(name.into());
        self
    }

    /// Sets the time-out of each store operation.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), crate::SessionError> {
        if self.max_sessions == 0 {
            return Err(crate::SessionError::Config {
                field: "max_sessions",
                reason: "must be at least 1".into(),
            });
        }
        if self.idle_ttl == Some(Duration::ZERO) {
            return Err(crate::SessionError::Config {
                field: "idle_ttl",
                reason: "must be positive (use None to disable)".into(),
            });
        }
        if self.store_timeout.is_zero() {
            return Err(crate::SessionError::Config {
                field: "store_timeout",
                reason: "must be positive".into(),
            });
        }
        if let Some(name) = &self.front_end {
            if name.is_empty()
                || name.len() > 128
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(crate::SessionError::Config {
                    field: "front_end",
                    reason: "must be 1-128 characters without spaces or control characters".into(),
                });
            }
        }
        Ok(())
    }
}
