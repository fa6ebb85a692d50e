//! The Python interpreter with the portpool runtime, for this workspace's own
//! tests: created on first use, so `cargo test -p <crate>` needs no set-up
//! step on a clean checkout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// A lock older than this was left by a killed test process.
const STALE_LOCK: Duration = Duration::from_secs(600);

/// The interpreter the workspace's tests run the runtime with: `$PORTPOOL_PYTHON`
/// when set; else the workspace's `.venv`, created and filled with the
/// runtime (`pip install -e python[test]`, as `cargo xtask setup` does) when
/// it is missing or cannot import it. Once per test process; concurrent
/// test processes wait for one another on a lock file. Outside this
/// workspace (no `python/pyproject.toml` beside the testkit) it returns
/// [`portpool_transport::find_python`]'s choice unchanged.
///
/// `WorkerCommand::python` finds the same `.venv` by itself once it exists,
/// so calling this once before the first launch is enough.
pub fn runtime_python() -> Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON.get_or_init(prepare).clone()
}

fn prepare() -> Result<PathBuf, String> {
    if let Some(explicit) = std::env::var_os("PORTPOOL_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(explicit));
    }
    let Some(root) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() else {
        return Ok(portpool_transport::find_python());
    };
    if !root.join("python/pyproject.toml").exists() {
        return Ok(portpool_transport::find_python());
    }
    let python = root.join(".venv/bin/python");
    if imports_the_runtime(&python) {
        return Ok(python);
    }
    let _lock = LockFile::acquire(&root.join("target/.portpool-test-venv.lock"))?;
    if imports_the_runtime(&python) {
        return Ok(python); // another test process made it meanwhile
    }
    if !python.exists() {
        let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(&base).args(["-m", "venv"]).arg(root.join(".venv")))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-e",
        ])
        .arg(format!("{}[test]", root.join("python").display())))?;
    if imports_the_runtime(&python) {
        Ok(python)
    } else {
        Err(format!(
            "{} still cannot import portpool after installing it",
            python.display()
        ))
    }
}

fn imports_the_runtime(python: &Path) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", "import portpool, msgpack"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        Err(format!("{command:?} failed with {}:\n{tail}", output.status))
    }
}

/// A lock file created exclusively and removed on drop.
struct LockFile(PathBuf);

impl LockFile {
    fn acquire(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(_) => return Ok(LockFile(path.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > STALE_LOCK);
                    if stale {
                        let _ = std::fs::remove_file(path);
                    } else {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            }
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_python_imports_the_runtime() {
        let python = runtime_python().expect("a Python with the runtime");
        assert!(imports_the_runtime(&python), "{}", python.display());
    }

    #[test]
    fn a_lock_is_exclusive_until_dropped() {
        let path = std::env::temp_dir().join(format!("portpool-lock-test-{}", std::process::id()));
        let first = LockFile::acquire(&path).unwrap();
        assert!(std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .is_err());
        drop(first);
        assert!(!path.exists());
        drop(LockFile::acquire(&path).unwrap());
    }
}
