//! Random bytes into a Python worker end in a clean non-zero exit with a
//! message on stderr, never a hang (property test).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;

/// How long a worker may take to exit after its input ends.
const EXIT_BOUND: Duration = Duration::from_secs(5);

fn app() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps/basic.py")
}

/// Starts `python -m portpool basic.py` and reads its hello frame.
fn start() -> Child {
    let mut child = Command::new(portpool_testkit::runtime_python().unwrap())
        .args(["-m", "portpool"])
        .arg(app())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let stdout = child.stdout.as_mut().unwrap();
    let mut header = [0u8; 4];
    stdout.read_exact(&mut header).expect("hello header");
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stdout.read_exact(&mut body).expect("hello body");
    assert!(body.windows(5).any(|w| w == b"hello"), "first frame is the hello");
    child
}

/// Waits up to `EXIT_BOUND`; kills the worker and fails if it hangs.
fn wait_bounded(child: &mut Child) -> Result<(ExitStatus, String), String> {
    let until = Instant::now() + EXIT_BOUND;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let mut stderr = String::new();
            child.stderr.take().unwrap().read_to_string(&mut stderr).ok();
            return Ok((status, stderr));
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "worker still running {EXIT_BOUND:?} after its input ended"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Feeds `bytes` after the hello, closes stdin, and checks the ending.
fn feed(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut child = start();
    {
        let mut stdin = child.stdin.take().unwrap();
        // The worker may exit (and close the pipe) before taking it all.
        let _ = stdin.write_all(bytes);
    }
    let (status, stderr) = wait_bounded(&mut child).map_err(TestCaseError::fail)?;
    prop_assert!(
        !status.success(),
        "input {:02x?} ended in {status}; stderr: {stderr}",
        &bytes[..bytes.len().min(32)]
    );
    prop_assert!(
        stderr.contains("portpool["),
        "no diagnostic on stderr for {:02x?} ({status}): {stderr:?}",
        &bytes[..bytes.len().min(32)]
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_end_in_a_clean_nonzero_exit_with_a_message(
        bytes in prop::collection::vec(any::<u8>(), 1..4096)
    ) {
        feed(&bytes)?;
    }

    #[test]
    fn a_plausible_header_with_a_random_body_ends_cleanly_too(
        body in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        // A well-formed frame whose body is garbage: the framing passes and
        // the MessagePack validation must catch it.
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        feed(&frame)?;
    }
}

#[test]
fn edge_cases_end_cleanly() {
    for bytes in [
        &[0xff, 0xff, 0xff, 0xff][..], // header over the maximum frame
        &[0, 0][..],                   // truncated header
        &[0, 0, 0, 9, 1, 2][..],       // truncated body
        &[0, 0, 0, 0][..],             // empty body
        &[0, 0, 0, 1, 0xc1][..],       // the one byte MessagePack never uses
        &[0, 0, 0, 1, 0x90][..],       // a valid MessagePack array, not a map
    ] {
        feed(bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"));
    }
}

#[test]
fn stdin_closed_right_after_the_hello_is_a_clean_zero_exit() {
    let mut child = start();
    drop(child.stdin.take());
    let (status, _) = wait_bounded(&mut child).unwrap();
    assert!(status.success(), "{status}");
}
