//! The process implementation of the transport traits.

mod command;
mod exit;
mod launcher;
mod limits;
mod procfs;
mod reaper;
mod signal;
mod spin;
mod stderr;
mod worker;
mod zygote;

pub use command::{
    find_python, WorkerCommand, DEFAULT_INIT_TIMEOUT, DEFAULT_MAX_STREAM_BUFFER, DEFAULT_STDERR_TAIL_LINES,
};
pub use launcher::ProcessLauncher;
pub(crate) use worker::ProcessPeer;
pub use worker::ProcessWorker;
