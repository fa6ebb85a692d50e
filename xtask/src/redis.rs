//! `redis-server` for the session crate's `RedisStore` tests: `setup`
//! installs the Debian package when `redis-server` is not on `PATH`
//! (`apt-get update` once, then `apt-get install -y redis-server`), without
//! starting the system service. The tests start (and stop) their own
//! server on a free loopback port; nothing here runs one.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run;

/// The binary the tests start.
pub(crate) const SERVER: &str = "redis-server";

/// Where `name` is on `PATH`, if it is.
pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Installs `redis-server` unless it is on `PATH`.
pub(crate) fn setup() -> Result<(), String> {
    if let Some(found) = on_path(SERVER) {
        println!("xtask: {SERVER} found at {}", found.display());
        return Ok(());
    }
    println!("xtask: {SERVER} not on PATH; installing the Debian package redis-server");
    // The package's maintainer script would start the system service
    // through invoke-rc.d; a policy-rc.d that answers 101 ("action
    // forbidden") stops it. Put one in place for the install only, unless
    // the machine has its own (as Docker images do).
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        write_policy(policy)?;
    }
    let installed =
        apt(&["update"]).and_then(|()| apt(&["install", "-y", "--no-install-recommends", SERVER]));
    if ours {
        if let Err(e) = std::fs::remove_file(policy) {
            eprintln!("xtask: cannot remove {}: {e}", policy.display());
        }
    }
    installed?;
    match on_path(SERVER) {
        Some(found) => {
            println!("xtask: {SERVER} installed at {}", found.display());
            Ok(())
        }
        None => Err(format!(
            "apt-get installed redis-server but {SERVER} is still not on PATH"
        )),
    }
}

fn write_policy(path: &Path) -> Result<(), String> {
    std::fs::write(
        path,
        "#!/bin/sh\n# cargo xtask setup: no service starts during the install\nexit 101\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    run(Command::new("chmod").arg("755").arg(path))
}

fn apt(args: &[&str]) -> Result<(), String> {
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(args))
}
