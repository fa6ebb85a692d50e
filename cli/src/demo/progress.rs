//! The demo's progress line: an [`indicatif`] bar redrawn in place on a
//! terminal; elsewhere (a pipe, a CI log) one plain line per second.

use std::io::{IsTerminal as _, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What the progress line shows besides the time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Counts {
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Workers ready.
    pub ready: usize,
    /// The pool's size.
    pub size: usize,
    /// Worker replacements so far.
    pub restarts: u64,
    /// The breaker's state.
    pub breaker: &'static str,
}

impl Counts {
    fn text(&self) -> String {
        format!(
            "ok {:>6}  errors {:>3}  ready {}/{}  restarts {}  breaker {}",
            self.ok, self.errors, self.ready, self.size, self.restarts, self.breaker
        )
    }
}

/// Where progress goes.
pub(super) enum Progress {
    /// A bar redrawn in place (a terminal).
    Bar(ProgressBar),
    /// Plain lines, at most one a second (anything else).
    Lines {
        /// Where the lines are written.
        out: Box<dyn Write + Send>,
        /// The whole second of the last line written.
        printed: Option<u64>,
    },
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Bar(bar) => f.debug_tuple("Bar").field(bar).finish(),
            Progress::Lines { printed, .. } => f.debug_struct("Lines").field("printed", printed).finish(),
        }
    }
}

impl Progress {
    /// A bar on stdout when it is a terminal, else plain lines on stdout.
    pub(super) fn stdout(total: Duration) -> Self {
        if std::io::stdout().is_terminal() {
            Progress::bar(total, ProgressDrawTarget::stdout())
        } else {
            Progress::lines(Box::new(std::io::stdout()))
        }
    }

    /// A bar over `total`, drawn to `target`.
    pub(super) fn bar(total: Duration, target: ProgressDrawTarget) -> Self {
        let bar = ProgressBar::with_draw_target(Some(millis(total)), target);
        // The template is a constant: it parses (see the tests).
        if let Ok(style) = ProgressStyle::with_template("  [{bar:30}] {prefix:>6}  {msg}") {
            bar.set_style(style.progress_chars("##."));
        }
        Progress::Bar(bar)
    }

    /// Plain lines to `out`.
    pub(super) fn lines(out: Box<dyn Write + Send>) -> Self {
        Progress::Lines { out, printed: None }
    }

    /// Shows `elapsed` (of the bar's total) and `counts`; `last` is the
    /// final update, always shown (and the bar is left on screen).
    pub(super) fn update(&mut self, elapsed: Duration, counts: &Counts, last: bool) {
        let seconds = format!("{:.1}s", elapsed.as_secs_f64());
        match self {
            Progress::Bar(bar) => {
                bar.set_prefix(seconds);
                bar.set_message(counts.text());
                bar.set_position(millis(elapsed).min(bar.length().unwrap_or(u64::MAX)));
                if last {
                    bar.finish();
                }
            }
            Progress::Lines { out, printed } => {
                let second = elapsed.as_secs();
                if !last && *printed == Some(second) {
                    return;
                }
                *printed = Some(second);
                let _ = writeln!(out, "  {seconds:>6}  {}", counts.text());
                let _ = out.flush();
            }
        }
    }

    /// A line of its own, above the bar on a terminal.
    pub(super) fn println(&mut self, line: &str) {
        match self {
            Progress::Bar(bar) => bar.println(line),
            Progress::Lines { out, .. } => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use indicatif::TermLike;

    use super::*;

    /// Collects what is written, as a pipe would.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A terminal 100 columns wide that keeps what is drawn on it (a
    /// clone shares it: indicatif takes the terminal by value).
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.write_str("<clear>")
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn counts(ok: u64) -> Counts {
        Counts {
            ok,
            errors: 2,
            ready: 3,
            size: 4,
            restarts: 1,
            breaker: "closed",
        }
    }

    /// Not a terminal: no bar, no carriage returns or escape codes, at most
    /// one line per second, and the final update always.
    #[test]
    fn lines_without_a_terminal() {
        let out = Captured::default();
        let mut progress = Progress::lines(Box::new(out.clone()));
        for (ms, ok) in [(200, 1), (400, 2), (1_100, 3), (1_300, 4), (2_050, 5)] {
            progress.update(Duration::from_millis(ms), &counts(ok), false);
        }
        progress.println("  >> kill -9 worker in slot 1");
        progress.update(Duration::from_millis(2_100), &counts(6), true);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "    0.2s  ok      1  errors   2  ready 3/4  restarts 1  breaker closed",
                "    1.1s  ok      3  errors   2  ready 3/4  restarts 1  breaker closed",
                "    2.0s  ok      5  errors   2  ready 3/4  restarts 1  breaker closed",
                "  >> kill -9 worker in slot 1",
                "    2.1s  ok      6  errors   2  ready 3/4  restarts 1  breaker closed",
            ],
            "{text}"
        );
        assert!(!text.contains('\r') && !text.contains('\u{1b}') && !text.contains('#'));
    }

    /// On a terminal the bar fills with the time and carries the counts.
    #[test]
    fn bar_on_a_terminal() {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let mut progress = Progress::bar(Duration::from_secs(10), target);
        progress.update(Duration::from_secs(5), &counts(7), false);
        progress.println("  >> kill -9");
        // Past the total: the bar is full, not overfull.
        progress.update(Duration::from_secs(11), &counts(9), true);
        let drawn = screen.0.lock().unwrap().clone();
        assert!(
            drawn.contains(&format!("  [{}]  11.0s  ok      9", "#".repeat(30))),
            "{drawn}"
        );
        assert!(drawn.contains("  >> kill -9"), "{drawn}");
        let Progress::Bar(bar) = &progress else {
            panic!("a bar")
        };
        assert!(bar.is_finished());
        assert_eq!(bar.position(), 10_000);
    }
}
