//! CPU time and context switches of the bench process (the host) and of
//! worker processes, read before and after a measurement window.

use nix::sys::resource::{getrusage, UsageWho};
use serde::Serialize;

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, 100 per second on
/// Linux whatever the kernel's HZ.
const USER_HZ: f64 = 100.0;

/// Cumulative CPU time and context switches at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Usage {
    /// User + system CPU seconds.
    pub cpu_s: f64,
    /// Voluntary + involuntary context switches.
    pub switches: f64,
    /// Minor page faults (memory first touched, e.g. a growing buffer).
    pub faults: f64,
}

impl Usage {
    /// The bench process itself, every thread (getrusage, microsecond
    /// resolution). Zero where unavailable.
    pub(super) fn host() -> Usage {
        getrusage(UsageWho::RUSAGE_SELF).map_or(Usage::default(), |u| {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            Usage {
                cpu_s: secs(u.user_time()) + secs(u.system_time()),
                switches: (u.voluntary_context_switches() + u.involuntary_context_switches()) as f64,
                faults: u.minor_page_faults() as f64,
            }
        })
    }

    /// A child process: utime + stime and minor faults from
    /// `/proc/<pid>/stat` (all its threads), and the context switches of each of its live threads from
    /// `/proc/<pid>/task/*/status`. Zero where unreadable.
    pub(super) fn process(pid: u32) -> Usage {
        let (cpu_s, faults) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| parse_stat(&stat))
            .unwrap_or((0.0, 0.0));
        let mut switches = 0.0;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
                    switches += parse_status_switches(&status);
                }
            }
        }
        Usage {
            cpu_s,
            switches,
            faults,
        }
    }

    /// The sum over several processes.
    pub(super) fn processes(pids: &[u32]) -> Usage {
        pids.iter()
            .map(|&pid| Usage::process(pid))
            .fold(Usage::default(), |a, b| Usage {
                cpu_s: a.cpu_s + b.cpu_s,
                switches: a.switches + b.switches,
                faults: a.faults + b.faults,
            })
    }

    /// What was spent between `before` and `self`.
    pub(super) fn since(self, before: Usage) -> Usage {
        Usage {
            cpu_s: self.cpu_s - before.cpu_s,
            switches: self.switches - before.switches,
            faults: self.faults - before.faults,
        }
    }
}

/// The cost of one call, host side and worker side.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(super) struct PerCall {
    pub host_cpu_us: f64,
    pub host_switches: f64,
    pub worker_cpu_us: f64,
    pub worker_switches: f64,
    pub host_faults: f64,
    pub worker_faults: f64,
}

impl PerCall {
    /// Spread `host` and `worker` usage over `calls` calls.
    pub(super) fn new(host: Usage, worker: Usage, calls: u64) -> PerCall {
        let n = calls.max(1) as f64;
        PerCall {
            host_cpu_us: host.cpu_s * 1e6 / n,
            host_switches: host.switches / n,
            worker_cpu_us: worker.cpu_s * 1e6 / n,
            worker_switches: worker.switches / n,
            host_faults: host.faults / n,
            worker_faults: worker.faults / n,
        }
    }
}

/// utime + stime in seconds, and minor faults, from the text of
/// `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses: fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state (3), ppid (4), ... minflt (10), utime (14), stime (15).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    Some(((field(14)? + field(15)?) / USER_HZ, field(10)?))
}

/// voluntary + nonvoluntary context switches from `/proc/<pid>/status`.
fn parse_status_switches(status: &str) -> f64 {
    status
        .lines()
        .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let stat = "1234 (py (odd) name) S 1 1234 1234 0 -1 4194304 500 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat(stat), Some((3.0, 500.0)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_proc_status() {
        let status = "Name:\tpython3\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_status_switches(status), 15.0);
    }

    #[test]
    fn reads_this_process() {
        let me = Usage::process(std::process::id());
        assert!(me.switches >= 0.0 && me.cpu_s >= 0.0);
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {}
        let host = Usage::host();
        assert!(host.cpu_s > 0.0);
        // Touching fresh memory faults pages in, here and in /proc.
        let (before, before_proc) = (Usage::host().faults, Usage::process(std::process::id()).faults);
        let memory = vec![1u8; 16 << 20];
        assert_eq!(
            memory.iter().step_by(4096).map(|&b| b as usize).sum::<usize>(),
            4096
        );
        assert!(Usage::host().faults > before, "getrusage minflt");
        assert!(
            Usage::process(std::process::id()).faults > before_proc,
            "/proc minflt"
        );
        drop(memory);
        let per = PerCall::new(host.since(Usage::default()), Usage::default(), 0);
        assert!(per.host_cpu_us > 0.0);
    }
}

/// One measured run of one contestant.
#[derive(Debug, Clone, Default)]
pub(super) struct Run {
    /// Per-call latency (sequential runs only).
    pub samples: crate::stats::Samples,
    /// Calls completed inside the measurement window.
    pub calls: u64,
    /// The window's length in seconds.
    pub secs: f64,
    /// CPU and context switches per call inside the window.
    pub per_call: PerCall,
}

impl Run {
    /// Calls per second.
    pub(super) fn rate(&self) -> f64 {
        self.calls as f64 / self.secs.max(1e-9)
    }
}

/// The CPU time `pid` has used so far, every thread, in seconds, from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds; `/proc/<pid>/stat`
/// counts 10 ms ticks, too coarse for a start-up of tens of ms). Zero
/// where unreadable.
pub(super) fn start_cpu_s(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|ns| ns.parse::<f64>().ok()))
        .sum::<f64>()
        / 1e9
}
