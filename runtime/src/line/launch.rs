//! `diffad run`: a board file turned into a running line, until it stops.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::stages::engine::tensorrt_cache;
use crate::stages::engine::Engine;

/// Options of `diffad run` beyond the board file.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Stop after this many parts (overrides `line.parts`).
    pub parts: Option<u64>,
    /// Override the part rate of simulated and replayed sources.
    pub part_rate_hz: Option<f64>,
    /// No line per part.
    pub quiet: bool,
    /// Write the summary as JSON here.
    pub summary_json: Option<PathBuf>,
}

/// `diffad run`: the line, until the source ends, `line.parts` is reached or a signal arrives.
pub fn run_line(path: &Path, opts: RunOptions) -> Result<crate::line::Summary> {
    use crate::clock::{Clock, SystemClock};
    use crate::line::{self, Shutdown};
    use std::sync::Arc;

    let mut board = crate::line::board::BoardConfig::load(path)?;
    if let Some(n) = opts.parts {
        board.setup.line.parts = Some(n);
    }
    if let Some(r) = opts.part_rate_hz {
        board.setup.line.part_rate_hz = r;
    }
    board
        .setup
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let problems = board.check_deployment();
    if !problems.is_empty() {
        return Err(crate::line::board::ConfigError::Unusable {
            path: path.display().to_string(),
            problems,
        }
        .into());
    }
    let setup = &board.setup;
    if let Some((dir, built)) = tensorrt_cache(&board.engine)? {
        if !built {
            log::warn!(
                "no cached TensorRT engine in {}: building it now delays the start by minutes; run `diffad build-engine --config {}` beforehand",
                dir.display(),
                path.display()
            );
        }
    }
    let engine = Engine::load(&board.engine)?;
    let inspector = crate::stages::tiling::inspector_for(
        engine,
        Some(&setup.camera),
        setup.line.threshold,
        setup.camera.allow_upscale,
    )
    .with_context(|| format!("board config {}", path.display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let (hardware, _sim_pin_logs) = line::open_hardware(setup, clock.clone())
        .with_context(|| format!("opening the camera and pins of {}", path.display()))?;
    log::info!(
        "line {} on board {}: camera {}",
        setup.line.name,
        board.board.name,
        hardware.source.describe()
    );
    let shutdown = Shutdown::new();
    shutdown
        .install_signals()
        .context("installing SIGINT/SIGTERM handlers")?;
    let options = line::Options {
        notifier: crate::line::watchdog::Notifier::from_env().context("NOTIFY_SOCKET")?,
        live_log: !opts.quiet,
        ..Default::default()
    };
    let start = Instant::now();
    let summary = line::run(setup, inspector, clock, hardware, shutdown, options)?;
    let wall = start.elapsed().as_secs_f64();
    if let Some(dest) = &opts.summary_json {
        let c = &summary.counters;
        // The drain waits for the last part to reach the ejector; that wait is belt travel, not work.
        let busy = (wall - setup.line.delay_ns() as f64 / 1e9).max(1e-9);
        let fps = c.triggers as f64 / busy;
        let report = json!({
            "board": board.board.name, "line": setup.line.name, "wall_s": wall,
            "parts": c.triggers, "passes": c.passes, "rejects": c.rejects, "fault_rejects": c.fault_rejects,
            "fault_passes": c.fault_passes, "invariant_ok": summary.invariant_ok,
            "with_truth": summary.with_truth, "escapes": summary.escapes, "false_rejects": summary.false_rejects,
            "false_fault_rejects": summary.false_fault_rejects,
            "latency_p50_ms": summary.latency_p50_ms, "latency_p99_ms": summary.latency_p99_ms,
            "max_reject_error_ms": summary.max_reject_error_ms,
            "late_verdicts": c.late_verdicts, "queue_full": c.queue_full, "inspect_errors": c.inspect_errors,
            "events_delivered": summary.events_delivered, "events_dropped": summary.events_dropped,
            "throughput": {"fps": fps, "p50_ms": summary.latency_p50_ms, "p99_ms": summary.latency_p99_ms},
            "peak_rss_mib": peak_rss_mib(),
            "summary": &summary,
        });
        std::fs::write(dest, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", dest.display()))?;
    }
    Ok(summary)
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
