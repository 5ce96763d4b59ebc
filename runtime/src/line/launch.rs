//! `diffad run`: a board file turned into a running line, until it stops.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::line::board::BoardConfig;
use crate::line::Summary;
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
    /// Sampler steps per image (overrides `engine.steps`; multi-step recipes only).
    pub steps: Option<usize>,
}

/// `diffad run`: the line, until the source ends, `line.parts` is reached or a signal arrives.
pub fn run_line(path: &Path, opts: RunOptions) -> Result<Summary> {
    use crate::clock::{Clock, SystemClock};
    use crate::line::{self, Shutdown};
    use std::sync::Arc;

    let board = load_board(path, &opts)?;
    let setup = &board.setup;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    // The plant sees the device (Preoperational) while the engine loads, self-tests and, on a
    // GPU board, builds its TensorRT engine, rather than a refused connection.
    let early_opcua = line::start_opcua_early(setup, &clock)
        .with_context(|| format!("board config {}", path.display()))?;
    // Built here, on the line's own thread, before anything loads ONNX Runtime.
    let cpu = &board.engine.cpu;
    if cpu.shared_pool && !crate::model::ortlib::share_one_pool(cpu.threads) {
        log::warn!("ONNX Runtime was loaded before the line: its sessions keep a thread pool each");
    }
    let engine = Engine::load(&board.engine)?;
    let inspector = crate::stages::tiling::inspector_for(
        engine,
        Some(&setup.camera),
        setup.line.threshold,
        setup.camera.allow_upscale,
    )
    .with_context(|| format!("board config {}", path.display()))?;
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
        board: line::BoardFacts {
            name: board.board.name.clone(),
            file: path.display().to_string(),
            model_file: board.engine.model.clone(),
        },
        board_config: Some(board.clone()),
        early_opcua,
        ..Default::default()
    };
    let start = Instant::now();
    let summary = line::run(setup, inspector, clock, hardware, shutdown, options)?;
    let wall = start.elapsed().as_secs_f64();
    if let Some(dest) = &opts.summary_json {
        let report = RunReport::new(&board, &summary, wall);
        std::fs::write(dest, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", dest.display()))?;
    }
    Ok(summary)
}

/// The board file with the command line's overrides, checked as a whole and on this machine.
fn load_board(path: &Path, opts: &RunOptions) -> Result<BoardConfig> {
    let mut board = BoardConfig::load(path)?;
    if let Some(n) = opts.parts {
        board.setup.line.parts = Some(n);
    }
    if let Some(r) = opts.part_rate_hz {
        board.setup.line.part_rate_hz = r;
    }
    if opts.steps.is_some() {
        board.engine.steps = opts.steps;
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
    if let Some((dir, false)) = tensorrt_cache(&board.engine)? {
        log::warn!(
            "no cached TensorRT engine in {}: building it now delays the start by minutes; run `diffad build-engine --config {}` beforehand",
            dir.display(),
            path.display()
        );
    }
    Ok(board)
}

/// `--summary-json`: the summary, with the run's wall time, throughput and memory, and the
/// part counts at the top where scripts read them.
#[derive(serde::Serialize)]
struct RunReport<'a> {
    board: &'a str,
    line: &'a str,
    wall_s: f64,
    parts: u64,
    passes: u64,
    rejects: u64,
    fault_rejects: u64,
    fault_passes: u64,
    invariant_ok: bool,
    with_truth: u64,
    escapes: u64,
    false_rejects: u64,
    false_fault_rejects: u64,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    max_reject_error_ms: f64,
    late_verdicts: u64,
    queue_full: u64,
    inspect_errors: u64,
    events_delivered: u64,
    events_dropped: u64,
    throughput: Throughput,
    peak_rss_mib: f64,
    summary: &'a Summary,
}

#[derive(serde::Serialize)]
struct Throughput {
    fps: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl<'a> RunReport<'a> {
    fn new(board: &'a BoardConfig, s: &'a Summary, wall_s: f64) -> Self {
        let c = &s.counters;
        // The drain waits for the last part to reach the ejector; that wait is belt travel, not work.
        let busy = (wall_s - board.setup.line.delay_ns() as f64 / 1e9).max(1e-9);
        Self {
            board: &board.board.name,
            line: &board.setup.line.name,
            wall_s,
            parts: c.triggers,
            passes: c.passes,
            rejects: c.rejects,
            fault_rejects: c.fault_rejects,
            fault_passes: c.fault_passes,
            invariant_ok: s.invariant_ok,
            with_truth: s.with_truth,
            escapes: s.escapes,
            false_rejects: s.false_rejects,
            false_fault_rejects: s.false_fault_rejects,
            latency_p50_ms: s.latency_p50_ms,
            latency_p99_ms: s.latency_p99_ms,
            max_reject_error_ms: s.max_reject_error_ms,
            late_verdicts: c.late_verdicts,
            queue_full: c.queue_full,
            inspect_errors: c.inspect_errors,
            events_delivered: s.events_delivered,
            events_dropped: s.events_dropped,
            throughput: Throughput {
                fps: c.triggers as f64 / busy,
                p50_ms: s.latency_p50_ms,
                p99_ms: s.latency_p99_ms,
            },
            peak_rss_mib: peak_rss_mib(),
            summary: s,
        }
    }
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
