//! The DSPy environment: `.venv-dspy`, separate from `.venv` because DSPy
//! (and LiteLLM, OpenAI, ...) are heavy. It holds the runtime (`python/`,
//! editable) with its `test` and `dspy` extras (`dspy==3.4.*`).
//!
//! `setup` creates it; `ci` points `PORTPOOL_DSPY_PYTHON` at it, so the
//! `portpool-dspy` tests run (they skip only when neither is there), and
//! runs `python/tests/test_dspy.py` with it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{fnv1a, run};

/// The variable the `portpool-dspy` tests and example read.
pub const PYTHON_VAR: &str = "PORTPOOL_DSPY_PYTHON";

/// Path of the DSPy environment's interpreter.
pub fn python(root: &Path) -> PathBuf {
    root.join(".venv-dspy/bin/python")
}

/// Creates `.venv-dspy` if missing and installs `python/[test,dspy]` into it
/// unless the installed copy matches the current pyproject.toml.
pub fn setup(root: &Path) -> Result<PathBuf, String> {
    let python = python(root);
    if !python.exists() {
        let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        println!("xtask: creating .venv-dspy with {base}");
        run(Command::new(&base)
            .args(["-m", "venv"])
            .arg(root.join(".venv-dspy")))?;
    }
    let pyproject = std::fs::read(root.join("python/pyproject.toml"))
        .map_err(|e| format!("cannot read python/pyproject.toml: {e}"))?;
    let stamp_path = root.join(".venv-dspy/.portpool-installed");
    let stamp = format!("dspy-{:x}", fnv1a(&pyproject));
    if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(python);
    }
    println!("xtask: installing python/[test,dspy] into .venv-dspy (DSPy is large: about a minute)");
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-e",
        ])
        .arg(format!("{}[test,dspy]", root.join("python").display())))?;
    std::fs::write(&stamp_path, stamp).map_err(|e| format!("cannot write {}: {e}", stamp_path.display()))?;
    Ok(python)
}

/// `ci`: creates the environment and exports [`PYTHON_VAR`] for the steps
/// after it (the workspace's `cargo test` runs the `portpool-dspy` tests).
pub fn ci_setup(root: &Path) -> Result<(), String> {
    let python = setup(root)?;
    std::env::set_var(PYTHON_VAR, &python);
    Ok(())
}

/// `ci`: the DSPy pytest file, run with the DSPy environment (the main
/// `.venv` skips it).
pub fn ci_pytest(root: &Path) -> Result<(), String> {
    run(Command::new(python(root)).current_dir(root.join("python")).args([
        "-m",
        "pytest",
        "-q",
        "tests/test_dspy.py",
    ]))
}
