//! portpool transport: the [`Worker`] and [`Launcher`] traits, and their
//! implementation over real processes.

mod error;
mod id;
mod process;
mod worker;

pub use error::{CallError, LaunchError};
pub use id::{WorkerExit, WorkerId};
pub use portpool_protocol::{Hello, RemoteError, Value};
pub use process::{
    find_python, ProcessLauncher, ProcessWorker, WorkerCommand, DEFAULT_INIT_TIMEOUT, DEFAULT_STDERR_TAIL_LINES,
};
pub use worker::{CallRequest, CallStream, Launcher, Worker, WorkerInfo};
