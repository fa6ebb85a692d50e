//! `fake-worker`: a portpool worker without Python, for process-level tests.
//!
//! It speaks the wire protocol over stdin/stdout (hello first, then one
//! thread per request, writes serialized by a mutex) and misbehaves as its
//! flags say. See `portpool_testkit::FakeWorkerArgs` for the flags and the
//! methods it serves.

use std::io::{self, Stdout, Write};
use std::process::exit;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use portpool_protocol::blocking::{read_message, write_message};
use portpool_protocol::{
    Chunk, Hello, Message, Pong, ProtocolError, RemoteError, Request, Response, Value, DEFAULT_MAX_FRAME,
};
use portpool_testkit::FakeWorkerArgs;

const METHODS: &[&str] = &[
    "echo",
    "sleep",
    "fail",
    "stream",
    "pid",
    "big",
    "stderr",
    "crash",
    "exit",
    "garbage",
    "huge_header",
];

/// Exit code of a scripted crash.
const CRASH_CODE: i32 = 101;

/// A header announcing a 1 GiB frame.
const HUGE_HEADER: [u8; 4] = (1u32 << 30).to_be_bytes();

type Out = Arc<Mutex<Stdout>>;

fn main() {
    let args = match FakeWorkerArgs::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("fake-worker: {error}");
            exit(2);
        }
    };
    exit(run(&args));
}

fn run(args: &FakeWorkerArgs) -> i32 {
    for i in 0..args.stderr_lines {
        eprintln!("fake-worker: stderr line {i}");
    }
    if args.init_delay_ms > 0 {
        thread::sleep(Duration::from_millis(args.init_delay_ms));
    }
    if let Some(code) = args.exit_during_init {
        eprintln!("fake-worker: exiting during init with code {code}");
        return code;
    }
    let out: Out = Arc::new(Mutex::new(io::stdout()));
    if args.no_hello {
        eprintln!("fake-worker: not sending a hello");
        return idle(args);
    }
    if args.garbage_before_hello {
        raw(&out, b"this is not a frame\n");
    }
    if args.huge_header {
        eprintln!("fake-worker: announcing a 1 GiB frame");
        raw(&out, &HUGE_HEADER);
        return idle(args);
    }
    if args.bad_msgpack {
        eprintln!("fake-worker: sending a frame that is not MessagePack");
        // 0xc1 is never used in MessagePack.
        raw(&out, &[0, 0, 0, 1, 0xc1]);
        return idle(args);
    }
    let hello = Message::Hello(Hello {
        protocol_major: args.protocol_major,
        protocol_minor: portpool_protocol::PROTOCOL_VERSION.minor,
        runtime: "fake-worker".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        max_concurrency: args.max_concurrency,
        methods: METHODS.iter().map(|m| m.to_string()).collect(),
        capabilities: vec!["stream".into(), "cancel".into()],
        instance: None,
    });
    send(&out, &hello);
    serve(args, out)
}

/// Waits without speaking: until stdin ends (exit 0) or forever.
fn idle(args: &FakeWorkerArgs) -> i32 {
    if args.exit_on_eof {
        let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
        0
    } else {
        loop {
            thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Writes raw bytes to stdout.
fn raw(out: &Out, bytes: &[u8]) {
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    if out.write_all(bytes).and_then(|()| out.flush()).is_err() {
        exit(0);
    }
}

/// Writes one message. The host is gone if stdout is closed: exit quietly.
fn send(out: &Out, message: &Message) {
    let result = {
        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
        write_message(&mut *out, message, DEFAULT_MAX_FRAME)
    };
    match result {
        Ok(()) => {}
        Err(ProtocolError::Io(_)) => exit(0),
        Err(error) => {
            eprintln!("fake-worker: cannot send {}: {error}", message.kind());
            if let Message::Response(Response { id, .. }) = message {
                send(
                    out,
                    &Message::Response(Response::err(*id, err("FrameTooLarge", error.to_string()))),
                );
            }
        }
    }
}

fn err(kind: &str, message: impl Into<String>) -> RemoteError {
    RemoteError {
        kind: kind.into(),
        message: message.into(),
        traceback: None,
        data: None,
    }
}

/// Counts requests being handled, to finish them before exiting.
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

impl InFlight {
    fn add(&self, delta: isize) {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self) {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        while *count > 0 {
            count = self.idle.wait(count).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn serve(args: &FakeWorkerArgs, out: Out) -> i32 {
    let in_flight = Arc::new(InFlight::default());
    let mut served = 0u64;
    let mut stdin = io::stdin().lock();
    loop {
        match read_message(&mut stdin, DEFAULT_MAX_FRAME) {
            Ok(Some(Message::Request(request))) => {
                if let Some(n) = args.crash_after {
                    if served >= n {
                        eprintln!("fake-worker: crashing after {n} requests");
                        exit(CRASH_CODE);
                    }
                }
                served += 1;
                in_flight.add(1);
                let out = Arc::clone(&out);
                let in_flight = Arc::clone(&in_flight);
                thread::spawn(move || {
                    handle(request, &out);
                    in_flight.add(-1);
                });
            }
            Ok(Some(Message::Ping(ping))) => send(&out, &Message::Pong(Pong { id: ping.id })),
            Ok(Some(Message::Cancel(_) | Message::SessionClose(_))) => {}
            Ok(Some(Message::Shutdown(_))) => {
                if args.ignore_shutdown {
                    eprintln!("fake-worker: ignoring shutdown");
                } else {
                    in_flight.wait_idle();
                    return 0;
                }
            }
            Ok(Some(other)) => {
                eprintln!("fake-worker: unexpected {} message from the host", other.kind());
                return 3;
            }
            Ok(None) => {
                if args.exit_on_eof {
                    in_flight.wait_idle();
                    return 0;
                }
                loop {
                    thread::sleep(Duration::from_secs(3600));
                }
            }
            Err(error) => {
                eprintln!("fake-worker: bad frame from the host: {error}");
                return 3;
            }
        }
    }
}

fn handle(request: Request, out: &Out) {
    let Request {
        id, method, params, ..
    } = request;
    let outcome = match method.as_str() {
        "echo" => Ok(params),
        "sleep" => {
            thread::sleep(Duration::from_millis(params.as_u64().unwrap_or(0)));
            Ok(params)
        }
        "fail" => Err(err("ValueError", params.as_str().unwrap_or("failed on purpose"))),
        "stream" => {
            for i in 0..params.as_u64().unwrap_or(0) {
                send(
                    out,
                    &Message::Chunk(Chunk {
                        id,
                        data: Value::from(i),
                    }),
                );
            }
            Ok(Value::Nil)
        }
        "pid" => Ok(Value::from(std::process::id())),
        "big" => Ok(Value::Binary(vec![0x5a; params.as_u64().unwrap_or(0) as usize])),
        "stderr" => {
            eprintln!("{}", params.as_str().unwrap_or_default());
            Ok(Value::Nil)
        }
        "crash" => {
            eprintln!("fake-worker: crashing on request");
            exit(CRASH_CODE);
        }
        "exit" => exit(params.as_i64().unwrap_or(0) as i32),
        "garbage" => {
            eprintln!("fake-worker: writing garbage to stdout");
            raw(out, b"\xff\xff\xff\xffgarbage");
            return;
        }
        "huge_header" => {
            eprintln!("fake-worker: announcing a 1 GiB frame");
            raw(out, &HUGE_HEADER);
            return;
        }
        _ => Err(err("MethodNotFound", format!("no method named {method:?}"))),
    };
    send(out, &Message::Response(Response { id, outcome }));
}
