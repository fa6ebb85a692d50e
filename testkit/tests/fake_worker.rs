//! Tests of the `fake-worker` binary: spawned with std::process, spoken to
//! with portpool_protocol::blocking.

use std::io::Read;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use portpool_protocol::blocking::{read_message, write_message};
use portpool_protocol::{
    Hello, Message, Ping, ProtocolError, Request, Response, Shutdown, Value, DEFAULT_MAX_FRAME,
};
use portpool_testkit::{fake_worker_path, FakeWorkerArgs};

/// Long enough for a loaded CI machine; only reached when something is wrong.
const PATIENCE: Duration = Duration::from_secs(20);

type NextFrame = Result<Option<Message>, String>;

/// A running fake-worker: frames are read on a thread so reads can time out.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<NextFrame>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: FakeWorkerArgs) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-worker"))
        .args(args.to_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fake-worker");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, frames) = mpsc::channel();
    thread::spawn(move || loop {
        let read = read_message(&mut stdout, DEFAULT_MAX_FRAME).map_err(|e| match e {
            ProtocolError::FrameTooLarge { len, .. } => format!("FrameTooLarge {len}"),
            ProtocolError::Malformed { .. } => "Malformed".to_string(),
            other => other.to_string(),
        });
        let last = !matches!(read, Ok(Some(_)));
        if tx.send(read).is_err() || last {
            break;
        }
    });
    let stdin = child.stdin.take();
    Proc { child, stdin, frames }
}

impl Proc {
    fn next(&mut self) -> NextFrame {
        self.frames
            .recv_timeout(PATIENCE)
            .expect("fake-worker said nothing")
    }

    fn message(&mut self) -> Message {
        match self.next() {
            Ok(Some(message)) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn hello(&mut self) -> Hello {
        match self.message() {
            Message::Hello(hello) => hello,
            other => panic!("expected hello, got {other:?}"),
        }
    }

    fn response(&mut self) -> Response {
        match self.message() {
            Message::Response(response) => response,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn send(&mut self, message: Message) {
        write_message(self.stdin.as_mut().unwrap(), &message, DEFAULT_MAX_FRAME).unwrap();
    }

    fn request(&mut self, id: u64, method: &str, params: impl Into<Value>) {
        self.send(Message::Request(Request {
            id,
            method: method.into(),
            params: params.into(),
            session: None,
            deadline_ms: None,
            trace: None,
        }));
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < PATIENCE, "fake-worker did not exit");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn still_running_after(&mut self, wait: Duration) -> bool {
        thread::sleep(wait);
        self.child.try_wait().unwrap().is_none()
    }

    /// Everything written to stderr; call after the process exited.
    fn stderr(&mut self) -> String {
        let mut text = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }
}

#[test]
fn hello_then_echo_pid_fail_ping_and_unknown() {
    let mut w = spawn(FakeWorkerArgs::new());
    let hello = w.hello();
    hello.validate().unwrap();
    assert_eq!(hello.pid, w.child.id());
    assert_eq!(hello.max_concurrency, 4);
    assert_eq!(hello.runtime, "fake-worker");
    for method in ["echo", "sleep", "fail", "stream", "pid"] {
        assert!(hello.methods.iter().any(|m| m == method), "{method} missing");
    }

    w.request(1, "echo", "hi");
    assert_eq!(w.response(), Response::ok(1, Value::from("hi")));
    w.request(2, "pid", Value::Nil);
    assert_eq!(w.response(), Response::ok(2, Value::from(w.child.id())));
    w.request(3, "fail", "nope");
    let response = w.response();
    let error = response.outcome.unwrap_err();
    assert_eq!(
        (response.id, error.kind.as_str(), error.message.as_str()),
        (3, "ValueError", "nope")
    );
    w.send(Message::Ping(Ping { id: 77 }));
    assert!(matches!(w.message(), Message::Pong(p) if p.id == 77));
    w.request(4, "what", Value::Nil);
    assert_eq!(w.response().outcome.unwrap_err().kind, "MethodNotFound");
}

#[test]
fn concurrent_sleeps_reply_out_of_order() {
    let mut w = spawn(FakeWorkerArgs::new());
    w.hello();
    let start = Instant::now();
    w.request(1, "sleep", 800);
    w.request(2, "sleep", 400);
    w.request(3, "echo", 3);
    let ids: Vec<u64> = (0..3).map(|_| w.response().id).collect();
    assert_eq!(ids, [3, 2, 1]);
    // Concurrent: the whole took about the longest sleep, not the sum.
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn stream_sends_chunks_then_a_nil_response() {
    let mut w = spawn(FakeWorkerArgs::new());
    w.hello();
    w.request(5, "stream", 3);
    for i in 0..3 {
        match w.message() {
            Message::Chunk(chunk) => assert_eq!((chunk.id, chunk.data), (5, Value::from(i))),
            other => panic!("expected a chunk, got {other:?}"),
        }
    }
    assert_eq!(w.response(), Response::ok(5, Value::Nil));
}

#[test]
fn large_frames() {
    let mut w = spawn(FakeWorkerArgs::new());
    w.hello();
    w.request(1, "big", 5_000_000);
    match w.response().outcome.unwrap() {
        Value::Binary(bytes) => assert_eq!(bytes.len(), 5_000_000),
        other => panic!("expected bin, got {other:?}"),
    }
    // Larger than the frame limit: an error response instead.
    w.request(2, "big", DEFAULT_MAX_FRAME as u64 + 1);
    assert_eq!(w.response().outcome.unwrap_err().kind, "FrameTooLarge");
}

#[test]
fn shutdown_finishes_in_flight_work_then_exits_zero() {
    let mut w = spawn(FakeWorkerArgs::new());
    w.hello();
    w.request(1, "sleep", 200);
    w.send(Message::Shutdown(Shutdown {}));
    assert_eq!(w.response(), Response::ok(1, Value::from(200)));
    assert_eq!(w.wait().code(), Some(0));
}

#[test]
fn stdin_eof_exits_zero() {
    let mut w = spawn(FakeWorkerArgs::new());
    w.hello();
    w.request(1, "sleep", 100);
    w.close_stdin();
    assert_eq!(w.response().id, 1);
    assert_eq!(w.wait().code(), Some(0));
    assert!(matches!(w.next(), Ok(None)));
}

#[test]
fn no_exit_on_eof_keeps_running() {
    let mut w = spawn(FakeWorkerArgs::new().exit_on_eof(false));
    w.hello();
    w.close_stdin();
    assert!(w.still_running_after(Duration::from_millis(300)));
}

#[test]
fn ignore_shutdown_keeps_serving_until_eof() {
    let mut w = spawn(FakeWorkerArgs::new().ignore_shutdown());
    w.hello();
    w.send(Message::Shutdown(Shutdown {}));
    w.request(1, "echo", 1);
    assert_eq!(w.response().id, 1);
    assert!(w.still_running_after(Duration::from_millis(100)));
    w.close_stdin();
    assert_eq!(w.wait().code(), Some(0));
    assert!(w.stderr().contains("ignoring shutdown"));
}

#[test]
fn crash_after_n_requests_exits_101() {
    let mut w = spawn(FakeWorkerArgs::new().crash_after(2));
    w.hello();
    w.request(1, "echo", 1);
    w.request(2, "echo", 2);
    let mut ids = [w.response().id, w.response().id];
    ids.sort();
    assert_eq!(ids, [1, 2]);
    w.request(3, "echo", 3);
    assert_eq!(w.wait().code(), Some(101));
    assert!(matches!(w.next(), Ok(None)));
    assert!(w.stderr().contains("crashing after 2 requests"));
}

#[test]
fn crash_and_exit_methods() {
    let mut w = spawn(FakeWorkerArgs::new());
    w.hello();
    w.request(1, "crash", Value::Nil);
    assert_eq!(w.wait().code(), Some(101));

    let mut w = spawn(FakeWorkerArgs::new());
    w.hello();
    w.request(1, "exit", 7);
    assert_eq!(w.wait().code(), Some(7));
}

#[test]
fn exit_during_init_writes_stderr_and_no_frames() {
    let mut w = spawn(FakeWorkerArgs::new().exit_during_init(3).stderr_lines(2));
    assert_eq!(w.wait().code(), Some(3));
    assert!(matches!(w.next(), Ok(None)));
    let stderr = w.stderr();
    assert!(stderr.contains("exiting during init with code 3"), "{stderr}");
    assert!(stderr.contains("stderr line 1"), "{stderr}");
}

#[test]
fn stderr_lines_at_start() {
    let mut w = spawn(FakeWorkerArgs::new().stderr_lines(3));
    w.hello();
    w.close_stdin();
    w.wait();
    let stderr = w.stderr();
    assert_eq!(
        stderr.lines().filter(|l| l.contains("stderr line")).count(),
        3,
        "{stderr}"
    );
}

#[test]
fn no_hello_stays_silent_until_eof() {
    let mut w = spawn(FakeWorkerArgs::new().no_hello());
    assert!(
        w.frames.recv_timeout(Duration::from_millis(300)).is_err(),
        "no frame expected"
    );
    assert!(w.child.try_wait().unwrap().is_none());
    w.close_stdin();
    assert_eq!(w.wait().code(), Some(0));
    assert!(matches!(w.next(), Ok(None)));
    assert!(w.stderr().contains("not sending a hello"));
}

#[test]
fn init_delay_delays_the_hello() {
    let start = Instant::now();
    let mut w = spawn(FakeWorkerArgs::new().init_delay_ms(300).max_concurrency(9));
    assert_eq!(w.hello().max_concurrency, 9);
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[test]
fn garbage_before_hello_is_an_oversize_header() {
    let mut w = spawn(FakeWorkerArgs::new().garbage_before_hello());
    // "this" read as a big-endian length.
    let len = u32::from_be_bytes(*b"this");
    assert_eq!(w.next(), Err(format!("FrameTooLarge {len}")));
}

#[test]
fn huge_header_announces_one_gib() {
    let mut w = spawn(FakeWorkerArgs::new().huge_header());
    assert_eq!(w.next(), Err(format!("FrameTooLarge {}", 1u64 << 30)));
    w.close_stdin();
    assert_eq!(w.wait().code(), Some(0));
}

#[test]
fn bad_msgpack_is_malformed() {
    let mut w = spawn(FakeWorkerArgs::new().bad_msgpack());
    assert_eq!(w.next(), Err("Malformed".into()));
}

#[test]
fn other_protocol_major_fails_validation() {
    let mut w = spawn(FakeWorkerArgs::new().protocol_major(2));
    let hello = w.hello();
    assert_eq!(hello.protocol_major, 2);
    assert!(matches!(
        hello.validate(),
        Err(ProtocolError::VersionMismatch { .. })
    ));
}

#[test]
fn garbage_and_huge_header_methods_break_the_stream() {
    let mut w = spawn(FakeWorkerArgs::new());
    w.hello();
    w.request(1, "garbage", Value::Nil);
    assert_eq!(w.next(), Err(format!("FrameTooLarge {}", u32::MAX)));

    let mut w = spawn(FakeWorkerArgs::new());
    w.hello();
    w.request(1, "huge_header", Value::Nil);
    assert_eq!(w.next(), Err(format!("FrameTooLarge {}", 1u64 << 30)));
}

#[test]
fn bad_arguments_exit_2() {
    let status = Command::new(env!("CARGO_BIN_EXE_fake-worker"))
        .arg("--bogus")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

#[test]
fn fake_worker_path_finds_the_built_binary() {
    let found = fake_worker_path().unwrap();
    let expected = std::path::Path::new(env!("CARGO_BIN_EXE_fake-worker"));
    assert_eq!(found.canonicalize().unwrap(), expected.canonicalize().unwrap());
    let command = FakeWorkerArgs::new().crash_after(1).command().unwrap();
    assert_eq!(command.get_args().collect::<Vec<_>>(), ["--crash-after", "1"]);
}

/// `worker_command()` is what a transport launcher or a pool takes.
#[tokio::test]
async fn worker_command_launches_through_the_transport() {
    use portpool_transport::{CallRequest, ProcessLauncher, Worker, WorkerId};
    let command = FakeWorkerArgs::new()
        .max_concurrency(3)
        .worker_command()
        .unwrap()
        .init_timeout(Duration::from_secs(5));
    let worker = ProcessLauncher::new(command).spawn(WorkerId(1)).await.unwrap();
    assert_eq!(worker.info().max_concurrency, 3);
    assert_eq!(
        worker.call(CallRequest::new("echo", 5)).await.unwrap(),
        portpool_protocol::Value::from(5)
    );
    worker.shutdown(Duration::from_secs(2)).await;
}
