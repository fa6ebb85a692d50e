//! Programs the tests and the bench need from Debian's packages, installed
//! when missing from `PATH` (`apt-get update`, then `apt-get install -y
//! PACKAGE`), without starting any system service:
//!
//! - `redis-server` for the session crate's `RedisStore` tests: they start
//!   (and stop) their own server on a free loopback port; nothing here runs one.
//! - `escript` (Erlang, package `erlang-base`) for the bench's BEAM baseline
//!   (scenario 9: a pool of Erlang ports to the same Python worker) and the
//!   CLI test that runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run;

/// What is needed: (program on `PATH`, the Debian package that has it).
pub(crate) const NEEDED: [(&str, &str); 2] = [("redis-server", "redis-server"), ("escript", "erlang-base")];

/// Where `name` is on `PATH`, if it is.
pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Installs every program of [`NEEDED`] that is not on `PATH`.
pub(crate) fn setup() -> Result<(), String> {
    NEEDED
        .iter()
        .try_for_each(|(program, package)| ensure(program, package))
}

/// Installs `package` unless `program` is on `PATH`.
fn ensure(program: &str, package: &str) -> Result<(), String> {
    if let Some(found) = on_path(program) {
        println!("xtask: {program} found at {}", found.display());
        return Ok(());
    }
    println!("xtask: {program} not on PATH; installing the Debian package {package}");
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
        apt(&["update"]).and_then(|()| apt(&["install", "-y", "--no-install-recommends", package]));
    if ours {
        if let Err(e) = std::fs::remove_file(policy) {
            eprintln!("xtask: cannot remove {}: {e}", policy.display());
        }
    }
    installed?;
    match on_path(program) {
        Some(found) => {
            println!("xtask: {program} installed at {}", found.display());
            Ok(())
        }
        None => Err(format!(
            "apt-get installed {package} but {program} is still not on PATH"
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
