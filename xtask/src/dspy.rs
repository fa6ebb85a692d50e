//! The DSPy environment: `.venv-dspy`, separate from `.venv` because DSPy
//! (and LiteLLM, OpenAI, ...) are heavy. It holds the runtime (`python/`,
//! editable) with its `test` and `dspy` extras (`dspy==3.4.*`).
//!
//! `setup` creates it; `ci` points `PORTPOOL_DSPY_PYTHON` at it, so the
//! `portpool-dspy` tests run (they skip only when neither is there), and
//! runs `python/tests/test_dspy.py` with it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run;

/// The variable the `portpool-dspy` tests and example read.
pub(crate) const PYTHON_VAR: &str = "PORTPOOL_DSPY_PYTHON";

/// Path of the DSPy environment's interpreter.
pub(crate) fn python(root: &Path) -> PathBuf {
    root.join(".venv-dspy/bin/python")
}

/// Creates `.venv-dspy` if missing and installs `python/[test,dspy]` into it
/// unless the installed copy matches the current pyproject.toml.
pub(crate) fn setup(root: &Path) -> Result<PathBuf, String> {
    super::venv_with_runtime(root, ".venv-dspy", "test,dspy", "dspy-")
}

/// `ci`: creates the environment and exports [`PYTHON_VAR`] for the steps
/// after it (the workspace's `cargo test` runs the `portpool-dspy` tests).
pub(crate) fn ci_setup(root: &Path) -> Result<(), String> {
    let python = setup(root)?;
    std::env::set_var(PYTHON_VAR, &python);
    Ok(())
}

/// `ci`: the DSPy pytest file, run with the DSPy environment (the main
/// `.venv` skips it).
pub(crate) fn ci_pytest(root: &Path) -> Result<(), String> {
    run(Command::new(python(root)).current_dir(root.join("python")).args([
        "-m",
        "pytest",
        "-q",
        "tests/test_dspy.py",
    ]))
}
