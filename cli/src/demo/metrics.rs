//! The pool's metrics the way a user sees them: `metrics-exporter-prometheus`
//! installed as the process's recorder, its scrape text printed after the
//! run (no listener: the handle renders the text in place).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder for this process; `Err` with the reason
/// when it cannot be (another recorder is installed).
pub(super) fn install() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))
}

/// The `portpool_*` families of a scrape text (their `# HELP` / `# TYPE`
/// lines and samples), without blank lines.
pub(super) fn portpool_series(scrape: &str) -> String {
    scrape
        .lines()
        .filter(|line| {
            let name = line
                .strip_prefix("# TYPE ")
                .or_else(|| line.strip_prefix("# HELP "))
                .unwrap_or(line);
            name.starts_with("portpool_")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use portpool::pool::metrics::{CALLS, CALL_DURATION, WORKERS};

    use super::*;

    /// What the recorder renders for series named and labelled as the pool
    /// emits them (the end-to-end check, a real demo's series, is in
    /// `tests/cli.rs`).
    #[test]
    fn renders_portpool_series_only() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!(CALLS, "pool" => "demo", "outcome" => "ok").increment(3);
            metrics::gauge!(WORKERS, "pool" => "demo", "state" => "ready").set(4.0);
            metrics::histogram!(CALL_DURATION, "pool" => "demo").record(0.002);
            metrics::counter!("other_total").increment(1);
        });
        let text = portpool_series(&handle.render());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"# TYPE portpool_calls_total counter"), "{text}");
        assert!(
            lines.contains(&r#"portpool_calls_total{pool="demo",outcome="ok"} 3"#),
            "{text}"
        );
        assert!(
            lines.contains(&r#"portpool_workers{pool="demo",state="ready"} 4"#),
            "{text}"
        );
        assert!(
            lines.contains(&r#"portpool_call_duration_seconds_count{pool="demo"} 1"#),
            "{text}"
        );
        assert!(!text.contains("other_total") && !text.contains("\n\n"), "{text}");
    }
}
