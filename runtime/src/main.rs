//! `diffad`: the line runtime's command-line entry point.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use diffad::sources::camera::config::CameraConfig;
use diffad::stages::engine::EngineConfig;
use diffad::{line, offline};

#[derive(Parser)]
#[command(
    name = "diffad",
    version,
    about = "Diffusion anomaly detection on the conveyor line"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// The model and how to run it, shared by `infer` and `eval`.
#[derive(clap::Args)]
struct ModelArgs {
    /// The exported .onnx model.
    #[arg(long)]
    model: PathBuf,
    /// Take the execution providers and their options from this board config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the model's calibrated threshold (within the model's score range).
    #[arg(long)]
    threshold: Option<f32>,
    /// Resize images smaller than the model's input up to it (with a warning) instead of
    /// refusing them.
    #[arg(long)]
    allow_upscale: bool,
    /// Sampler steps per image for multi-step recipes (anoddpm); default: the board's
    /// engine.steps, else the model's.
    #[arg(long)]
    steps: Option<usize>,
}

impl ModelArgs {
    /// The engine settings (CPU defaults, or the `[engine]` section of the board config) and,
    /// with a board config, its `[camera]` (whose `roi` and `tiling` apply as on the line).
    fn engine(&self) -> Result<(EngineConfig, Option<CameraConfig>)> {
        Ok(match &self.config {
            Some(path) => {
                let board = diffad::line::board::BoardConfig::load(path)?;
                let mut engine = board.engine;
                engine.model = self.model.clone();
                engine.steps = self.steps.or(engine.steps);
                (engine, Some(board.setup.camera))
            }
            None => {
                let mut engine = EngineConfig::cpu(&self.model);
                engine.steps = self.steps;
                (engine, None)
            }
        })
    }

    /// `--threshold` and `--allow-upscale`.
    fn options(&self) -> offline::infer::InspectOptions {
        offline::infer::InspectOptions {
            threshold: self.threshold,
            allow_upscale: self.allow_upscale,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's manifest, inputs/outputs, the ONNX Runtime found and its providers.
    Inspect {
        /// The exported .onnx model.
        model: PathBuf,
    },
    /// Score images (files or folders): one line per image with score and verdict.
    Infer {
        /// Image files or folders of images.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
        /// Write heatmap overlay PNGs into this folder.
        #[arg(long)]
        heatmaps: Option<PathBuf>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate on an MVTec-AD-style folder: AUROC, pixel AUROC, PRO, rates at the threshold.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// Dataset folder holding test/<kind>/ and ground_truth/<kind>/.
        #[arg(long)]
        dataset: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write figures (ROC, score histograms, tiles per defect kind) and index.md here.
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
        /// Also print the trade-off: the threshold for each escape and false-reject target
        /// (the same table as `python -m exporter evaluate --sweep`).
        #[arg(long)]
        sweep: bool,
    },
    /// Run the line: camera → inspection → reject pulses, events to the supervisor.
    Run {
        /// The board TOML.
        #[arg(long)]
        config: PathBuf,
        /// Stop after this many parts (overrides line.parts).
        #[arg(long)]
        parts: Option<u64>,
        /// Part rate of simulated/replayed sources (overrides line.part_rate_hz).
        #[arg(long)]
        part_rate: Option<f64>,
        /// No line per part, only the summary.
        #[arg(long)]
        quiet: bool,
        /// Write the summary as JSON to this file.
        #[arg(long)]
        summary_json: Option<PathBuf>,
        /// Sampler steps per image (overrides engine.steps; multi-step recipes only).
        #[arg(long)]
        steps: Option<usize>,
    },
    /// Parse and validate a board config and check the files, devices and model it names;
    /// errors name the file and the key.
    CheckConfig {
        /// The board TOML.
        config: PathBuf,
        /// Check keys and values only, not the files, devices and model the config names (to
        /// check a board file away from its board).
        #[arg(long)]
        keys_only: bool,
    },
    /// Build (or verify) the cached TensorRT engine for a board config's model.
    BuildEngine {
        /// The board TOML.
        #[arg(long)]
        config: PathBuf,
    },
    /// Follow one or more lines' supervisor streams: a live table per line (parts/s, passes,
    /// rejects, fail-safe rejects, alarms, latency, heartbeat), resuming after every disconnect.
    Watch {
        /// Stream addresses, HOST:PORT (the boards' `supervisor.listen`).
        #[arg(required = true)]
        addrs: Vec<String>,
        /// Print every event and notice as one JSON line instead of the table.
        #[arg(long)]
        json: bool,
        /// Start with everything the lines still hold, not only what comes next.
        #[arg(long)]
        from_start: bool,
        /// TLS: the CA (PEM) that signed the lines' stream certificates.
        #[arg(long, value_name = "PEM")]
        ca: Option<PathBuf>,
        /// TLS: this supervisor's client certificate (PEM), signed by the lines' client CA.
        #[arg(long, value_name = "PEM", requires = "ca", requires = "key")]
        cert: Option<PathBuf>,
        /// TLS: the client certificate's key (PEM).
        #[arg(long, value_name = "PEM", requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Check this device for a board file: ONNX Runtime and providers, model self-test, GPIO,
    /// camera, ports, archive, systemd unit, clock. Exits 1 when something the board needs fails.
    Doctor {
        /// The board TOML (without it: ONNX Runtime and the host only).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Look up /dev, /sys, /etc and /run under this folder instead of `/`.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// The running line's models through its control socket: status, stage a candidate,
    /// shadow it, report, promote, roll back.
    Model {
        #[command(subcommand)]
        action: ModelAction,
        /// The line's control socket (`[control] socket`).
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        /// Read the socket's path from this board file's `[control]` section.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Print the line's answer as JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// A GigE Vision camera showing a sim board's tiles (Aravis's fake camera, real GVCP and
    /// GVSP), to rehearse a GenICam board without a camera; runs until stopped.
    FakeCamera {
        /// The board whose `[camera.sim]` tiles it shows (photo, tile, seed, defect_rate).
        #[arg(long)]
        config: PathBuf,
        /// Interface name or address to answer on.
        #[arg(long, default_value = "127.0.0.1")]
        interface: String,
        /// Serial number: the camera's id is `Aravis-Fake-<SERIAL>`.
        #[arg(long, default_value = "GV01")]
        serial: String,
        /// Stream packets to lose, per thousand (to rehearse a bad cable).
        #[arg(long, default_value_t = 0.0)]
        lost_per_mille: f64,
    },
    /// A line for `[opcua] users_file`: NAME and an Argon2id hash of the password read from
    /// standard input (one line).
    OpcuaPasswd {
        /// The OPC UA user name.
        name: String,
    },
    /// Frames per second and latency: bare session call vs decode→preprocess→infer→decide.
    Bench {
        /// The exported .onnx model.
        #[arg(long)]
        model: PathBuf,
        /// Images to cycle through (default: the model's golden inputs).
        #[arg(long, num_args = 1..)]
        images: Vec<PathBuf>,
        /// Timed iterations per loop.
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// Untimed warm-up iterations.
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Intra-op threads for the CPU provider (0 = one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Execution provider: cpu, cuda or tensorrt (no fallback: a missing one is an error).
        #[arg(long, default_value = "cpu")]
        provider: String,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Sampler steps per image for multi-step recipes (default: the model's).
        #[arg(long)]
        steps: Option<usize>,
    },
}

#[derive(Subcommand)]
enum ModelAction {
    /// The live model, the staged candidate, the previous one, the shadow run.
    Status,
    /// Load FILE beside the live model, self-test it on the line's providers and check it
    /// against the board file; the live line is untouched if it is refused.
    Stage {
        /// The candidate .onnx model.
        file: PathBuf,
    },
    /// Score the parts the engine has time for with the candidate too; verdicts stay live.
    Shadow {
        /// Stop after this many parts compared (default: until promoted or replaced).
        #[arg(long)]
        parts: Option<u64>,
    },
    /// The shadow run's figures (also streamed as a `shadow_report` event).
    Report {
        /// Also write the report as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make the candidate live at the next part boundary; the live one stays loaded.
    Promote,
    /// Make the previous model live again.
    Rollback,
    /// Check FILE's signature (FILE.minisig) against trusted public keys; needs no line.
    Verify {
        /// The .onnx model.
        file: PathBuf,
        /// A trusted public key (minisign .pub); repeat for several. Default: the board's
        /// engine.trusted_keys (--config).
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    // The bridge writes like env_logger (RUST_LOG, default info) and also feeds the supervisor stream.
    if let Err(e) = diffad::events::LogBridge::install() {
        eprintln!("error: logger: {e}");
        return ExitCode::from(2);
    }
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(feature = "genicam")]
fn fake_camera(config: &Path, interface: &str, serial: &str, lost: f64) -> Result<ExitCode> {
    let board = diffad::line::board::BoardConfig::load(config)?;
    let sim = &board.setup.camera.sim;
    let camera =
        diffad::sources::camera::fake_gv::FakeGvCamera::start(interface, serial, sim, lost)
            .with_context(|| format!("starting the fake camera for {}", config.display()))?;
    println!(
        "Aravis-Fake-{serial} on {interface}: {t}x{t} Mono8 tiles of {} (seed {}, {} % defective); \
         stop with Ctrl-C",
        sim.photo
            .as_ref()
            .map_or("a procedural texture".into(), |p| p.display().to_string()),
        sim.seed,
        100.0 * sim.defect_rate,
        t = sim.tile
    );
    let mut shown = 0;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let n = camera.frames();
        if n != shown {
            log::debug!("fake camera: {n} frames sent");
            shown = n;
        }
    }
}

#[cfg(not(feature = "genicam"))]
fn fake_camera(_: &Path, _: &str, _: &str, _: f64) -> Result<ExitCode> {
    anyhow::bail!("this diffad was built without the `genicam` feature (rebuild with it, after `scripts/setup` installed libaravis-dev)")
}

fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Doctor { config, root } => Ok(doctor(config.as_deref(), root)),
        Command::FakeCamera {
            config,
            interface,
            serial,
            lost_per_mille,
        } => fake_camera(&config, &interface, &serial, lost_per_mille),
        Command::OpcuaPasswd { name } => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                anyhow::bail!("empty password on standard input");
            }
            let line = diffad::sinks::opcua::auth::hash_line(&name, password)
                .map_err(anyhow::Error::msg)?;
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch {
            addrs,
            json,
            from_start,
            ca,
            cert,
            key,
        } => {
            let tls = ca
                .map(|ca| diffad::sinks::tls::client(&ca, cert.as_deref().zip(key.as_deref())))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            watch(&addrs, json, from_start, tls)
        }
        Command::Model {
            action,
            socket,
            config,
            json,
        } => {
            use offline::model::Action;
            if let ModelAction::Verify { file, keys } = &action {
                return offline::model::verify(file, keys, config.as_deref()).map(exit_code);
            }
            let action = match action {
                ModelAction::Verify { .. } => unreachable!("answered above"),
                ModelAction::Status => Action::Status,
                ModelAction::Stage { file } => Action::Stage(file),
                ModelAction::Shadow { parts } => Action::Shadow(parts),
                ModelAction::Report { out } => Action::Report(out),
                ModelAction::Promote => Action::Promote,
                ModelAction::Rollback => Action::Rollback,
            };
            let socket = offline::model::socket(socket.as_deref(), config.as_deref())?;
            offline::model::run(&socket, action, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Inspect { model } => offline::infer::inspect(&model).map(|()| ExitCode::SUCCESS),
        Command::Run {
            config,
            parts,
            part_rate,
            quiet,
            summary_json,
            steps,
        } => {
            let opts = line::launch::RunOptions {
                parts,
                part_rate_hz: part_rate,
                quiet,
                summary_json,
                steps,
            };
            let summary = line::launch::run_line(&config, opts)?;
            println!("{summary}");
            Ok(exit_code(summary.invariant_ok && summary.fault.is_none()))
        }
        Command::CheckConfig { config, keys_only } => {
            offline::check::check_config(&config, !keys_only).map(|_| ExitCode::SUCCESS)
        }
        Command::BuildEngine { config } => {
            let board = diffad::line::board::BoardConfig::load(&config)?;
            offline::engine_cache::build_engine(&board.engine).map(|()| ExitCode::SUCCESS)
        }
        Command::Infer {
            images,
            model,
            heatmaps,
            json,
        } => infer(&model, &images, heatmaps.as_deref(), json),
        Command::Eval {
            model,
            dataset,
            json,
            report,
            sweep,
        } => eval(&model, &dataset, json, report.as_deref(), sweep),
        Command::Bench {
            model,
            images,
            iterations,
            warmup,
            threads,
            provider,
            json,
            steps,
        } => bench(
            BenchArgs {
                model,
                iterations,
                warmup,
                threads,
                provider,
                steps,
            },
            &images,
            json.as_deref(),
        ),
    }
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `diffad doctor`: every check printed, then how many failed.
fn doctor(config: Option<&std::path::Path>, root: PathBuf) -> ExitCode {
    let report = diffad::offline::doctor::run(
        config,
        &diffad::offline::doctor::Root::new(root),
        &mut std::io::stdout(),
    );
    let n = report.failures();
    println!(
        "{}",
        if n == 0 {
            "all checks passed".to_string()
        } else {
            format!("{n} check(s) failed")
        }
    );
    exit_code(n == 0)
}

/// `diffad watch`: the table (or JSON lines) until SIGINT or SIGTERM.
fn watch(
    addrs: &[String],
    json: bool,
    from_start: bool,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<ExitCode> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let rx = diffad::offline::watch::start(addrs, from_start, tls, stop.clone())?;
    if json {
        diffad::offline::watch::run_json(&rx, &mut std::io::stdout().lock(), &stop)?;
    } else {
        diffad::offline::watch::run_tui(&rx, addrs, &stop)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `diffad eval`: the report (written as figures too with `--report`), as text or JSON.
fn eval(
    model: &ModelArgs,
    dataset: &std::path::Path,
    json: bool,
    report_dir: Option<&std::path::Path>,
    sweep: bool,
) -> Result<ExitCode> {
    let (engine, camera) = model.engine()?;
    let report = match report_dir {
        Some(dir) => {
            let (report, written) = offline::eval::eval_report(
                &engine,
                camera.as_ref(),
                dataset,
                model.options(),
                dir,
            )?;
            eprintln!(
                "report: {} figures and index.md in {}",
                written.figures.len(),
                written.dir.display()
            );
            report
        }
        None => offline::eval::eval(&engine, camera.as_ref(), dataset, model.options())?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
        if let Some(s) = report.sweep.as_ref().filter(|_| sweep) {
            println!(
                "\ntrade-off ({} good, {} defective images):",
                s.good, s.defective
            );
            print!("{s}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `diffad bench` runs.
struct BenchArgs {
    model: PathBuf,
    iterations: usize,
    warmup: usize,
    threads: usize,
    provider: String,
    steps: Option<usize>,
}

/// `diffad bench`: the report printed, and written as JSON when asked.
fn bench(a: BenchArgs, images: &[PathBuf], json: Option<&std::path::Path>) -> Result<ExitCode> {
    let mut config = EngineConfig::cpu(a.model);
    config.cpu.threads = a.threads;
    config.providers = vec![a.provider];
    config.steps = a.steps;
    config.validate()?;
    let report = offline::bench::bench(&config, images, a.iterations.max(1), a.warmup)?;
    print!("{report}");
    if let Some(path) = json {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `diffad infer`: a verdict per image; exit 1 when any image could not be scored.
fn infer(
    model: &ModelArgs,
    images: &[PathBuf],
    heatmaps: Option<&std::path::Path>,
    json: bool,
) -> Result<ExitCode> {
    let (engine, camera) = model.engine()?;
    let failed = offline::infer::infer(
        &engine,
        camera.as_ref(),
        images,
        heatmaps,
        json,
        model.options(),
    )?;
    if failed > 0 {
        eprintln!("error: {failed} image(s) could not be scored (see the lines above)");
    }
    Ok(exit_code(failed == 0))
}
