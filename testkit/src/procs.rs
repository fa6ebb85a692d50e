//! Process checks for tests about real worker processes (Linux `/proc`).

use std::time::{Duration, Instant};

/// Whether process `pid` is gone, or a zombie that nobody reaped yet (as
/// good as gone: it runs nothing and holds no pipes).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses, which may
        // itself contain spaces or parentheses.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Waits until process `pid` is gone, at most `within` of real time
/// (polling every 20 ms); returns whether it is.
pub async fn wait_process_gone(pid: u32, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process_gone(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_live_process_is_not_gone_until_it_ends() {
        assert!(!process_gone(std::process::id()));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = child.id();
        assert!(!process_gone(pid));
        child.kill().unwrap();
        // Killed but not yet reaped: a zombie, which counts as gone.
        assert!(wait_process_gone(pid, Duration::from_secs(2)).await);
        child.wait().unwrap();
        assert!(process_gone(pid));
    }
}
