/// Identifies one worker for its whole life. A replacement gets a new id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker-{}", self.0)
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerExit {
    /// The exit code, when it exited by itself.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
}

impl WorkerExit {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
                Ok(name) => write!(f, "killed by signal {signal} ({name})"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            (None, None) => write!(f, "exit status unknown"),
        }
    }
}

/// A stable name for a worker that every front end understands (see
/// `docs/remote.md`): session bindings kept in a store shared by several
/// processes hold it, never a process-local [`WorkerId`].
///
/// - a worker reached over the network: `tcp://HOST:PORT#INSTANCE`, the
///   endpoint and the random instance id of the worker process's life, so
///   a reconnection to the same process keeps the address and a restarted
///   process gets a new one;
/// - a local child process: `local:NONCE/ID`, with a random nonce of this
///   host process, so an address written by another process is never
///   mistaken for one of ours.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerAddress(String);

impl WorkerAddress {
    /// The address of local worker `id` of this host process.
    pub fn local(id: WorkerId) -> Self {
        WorkerAddress(format!("local:{:016x}/{}", process_nonce(), id.0))
    }

    /// The address of the worker process `instance` reached at `endpoint`
    /// (`HOST:PORT`).
    pub fn remote(endpoint: &str, instance: &str) -> Self {
        WorkerAddress(format!("tcp://{endpoint}#{instance}"))
    }

    /// An address as stored (for stores that keep it as text).
    pub fn from_stored(address: impl Into<String>) -> Self {
        WorkerAddress(address.into())
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it names a local child process (of whichever host process).
    pub fn is_local(&self) -> bool {
        self.0.starts_with("local:")
    }
}

impl std::fmt::Display for WorkerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A random number chosen once per host process.
fn process_nonce() -> u64 {
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NONCE.get_or_init(rand::random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_name_the_worker_and_this_process() {
        let a = WorkerAddress::local(WorkerId(7));
        assert!(a.is_local());
        assert!(a.as_str().ends_with("/7"), "{a}");
        assert_eq!(a, WorkerAddress::local(WorkerId(7)), "stable within a process");
        assert_ne!(a, WorkerAddress::local(WorkerId(8)));
        assert_eq!(WorkerAddress::from_stored(a.as_str()), a);
    }

    #[test]
    fn remote_addresses_name_the_endpoint_and_the_instance() {
        let a = WorkerAddress::remote("10.0.0.5:7000", "ab12");
        assert_eq!(a.as_str(), "tcp://10.0.0.5:7000#ab12");
        assert!(!a.is_local());
        assert_ne!(a, WorkerAddress::remote("10.0.0.5:7000", "cd34"));
    }
}
