//! Continuous draining of a worker's stderr into tracing and a ring buffer.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use crate::WorkerId;

/// Longest line kept; longer output is split so memory stays bounded.
const MAX_LINE: usize = 4096;

/// The last lines a worker wrote to stderr.
#[derive(Debug)]
pub(crate) struct StderrLog {
    lines: Mutex<VecDeque<String>>,
    capacity: usize,
    done: watch::Sender<bool>,
}

impl StderrLog {
    pub(crate) fn new(capacity: usize) -> Self {
        StderrLog {
            lines: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
            done: watch::channel(false).0,
        }
    }

    fn push(&self, worker: WorkerId, pid: Option<u32>, raw: &[u8]) {
        let line = String::from_utf8_lossy(raw);
        let line = line.trim_end_matches(['\r', '\n']);
        tracing::info!(target: "portpool::worker", worker = %worker, pid, "{line}");
        self.record(line);
    }

    /// Keeps one line in the ring (without logging it).
    pub(crate) fn record(&self, line: &str) {
        if self.capacity == 0 {
            return;
        }
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line.to_string());
    }

    /// The kept lines, oldest first, joined with newlines.
    pub(crate) fn tail(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for line in lines.iter() {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Marks the stream read to its end (for a reader other than [`drain`](Self::drain)).
    pub(crate) fn mark_drained(&self) {
        self.done.send_replace(true);
    }

    /// Waits (at most `limit`) until stderr reached end of file, so a tail
    /// taken afterwards holds the worker's last words.
    pub(crate) async fn wait_drained(&self, limit: Duration) {
        let mut done = self.done.subscribe();
        let _ = tokio::time::timeout(limit, done.wait_for(|d| *d)).await;
    }

    /// Reads `stderr` until end of file, line by line.
    pub(crate) async fn drain<R: AsyncRead + Unpin>(
        &self,
        mut stderr: R,
        worker: WorkerId,
        pid: Option<u32>,
    ) {
        let mut buf = Vec::with_capacity(MAX_LINE);
        let mut chunk = [0u8; 4096];
        loop {
            match stderr.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                        self.push(worker, pid, &buf[..end]);
                        buf.drain(..=end);
                    }
                    if buf.len() >= MAX_LINE {
                        self.push(worker, pid, &buf);
                        buf.clear();
                    }
                }
            }
        }
        if !buf.is_empty() {
            self.push(worker, pid, &buf);
        }
        self.done.send_replace(true);
    }
}
