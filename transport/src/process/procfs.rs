//! What `/proc` says about a worker process (Linux; `None` elsewhere).

use std::time::Duration;

/// Resident memory in bytes (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time of all the process's threads (`utime` and
/// `stime` of `/proc/<pid>/stat`).
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // fields from the last ')'. After it come field 3 (state) onwards.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?; // field 14
    let stime: u64 = fields.next()?.parse().ok()?; // field 15
    let ticks = clock_ticks_per_second();
    let total = utime.saturating_add(stime);
    Some(Duration::from_secs(total / ticks) + Duration::from_nanos((total % ticks) * 1_000_000_000 / ticks))
}

fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).is_some_and(|b| b > 0));
        let before = cpu_time(pid).expect("cpu time of this process");
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_time(pid).expect("cpu time of this process");
        assert!(after > before, "{before:?} -> {after:?}");
    }

    #[test]
    fn unknown_pid_is_none() {
        assert_eq!(cpu_time(u32::MAX), None);
        assert_eq!(rss_bytes(u32::MAX), None);
    }
}
