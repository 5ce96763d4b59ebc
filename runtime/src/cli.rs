//! The offline commands: `inspect`, `infer`, `eval`, `bench`. Errors get their context here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ort::ep::{self, ExecutionProvider};
use serde_json::json;

use crate::frame::Frame;
use crate::offline::metrics::{auroc, percentile, pro};
use crate::sinks::heatmap;
use crate::sources::camera::config::CameraConfig;
use crate::sources::dataset;
use crate::sources::imagefile;
use crate::stages::engine::{Engine, EngineConfig};
use crate::stages::inspect::{EngineInspector, Inspector};
use crate::stages::tiling::TiledInspector;

/// How `infer` and `eval` judge images beyond the model and board file.
#[derive(Debug, Clone, Copy, Default)]
pub struct InspectOptions {
    /// `--threshold`: replaces the model's calibrated threshold.
    pub threshold: Option<f32>,
    /// `--allow-upscale`: resize images smaller than the model's input instead of refusing them.
    pub allow_upscale: bool,
}

/// Load a model on the CPU (or as `config` says) and wrap it for inspection; with a board
/// file's `[camera]`, its `roi`, `tiling` and `allow_upscale` apply as on the line.
pub fn inspector(
    config: &EngineConfig,
    camera: Option<&CameraConfig>,
    opts: InspectOptions,
) -> Result<Box<dyn Inspector>> {
    let engine = Engine::load(config)?;
    if let Some(t) = opts.threshold {
        engine.manifest().check_threshold(t).map_err(|e| {
            anyhow::anyhow!(
                "--threshold {e} (model {}): it would pass or reject every image alike; give one within the range",
                engine.path().display()
            )
        })?;
    }
    let upscale = opts.allow_upscale || camera.is_some_and(|c| c.allow_upscale);
    line_inspector(engine, camera, opts.threshold, upscale)
}

/// Wrap a loaded engine as the line does: tiled when `camera.tiling.enabled`, else the whole
/// ROI (or frame) resized to the model size (refusing smaller ones unless `allow_upscale`).
pub fn line_inspector(
    engine: Engine,
    camera: Option<&CameraConfig>,
    threshold: Option<f32>,
    allow_upscale: bool,
) -> Result<Box<dyn Inspector>> {
    match camera {
        Some(cam) if cam.tiling.enabled => {
            crate::stages::tiling::check(cam, &engine.manifest().input)?;
            Ok(Box::new(TiledInspector::new(
                engine,
                cam.roi,
                &cam.tiling,
                threshold,
            )?))
        }
        _ => Ok(Box::new(
            EngineInspector::new(engine, camera.and_then(|c| c.roi), threshold)?
                .allow_upscale(allow_upscale),
        )),
    }
}

/// `diffad inspect MODEL`: manifest, graph I/O, ONNX Runtime and its providers.
pub fn inspect(model: &Path) -> Result<()> {
    let mut engine = Engine::load_unchecked(&EngineConfig::cpu(model))?;
    let lib = engine.runtime();
    println!("model:        {}", model.display());
    println!(
        "model id:     {} (graph sha256: weights and graph, not the manifest; calibrate keeps it)",
        engine.model_id()
    );
    println!("file sha256:  {}", engine.sha256());
    println!("onnxruntime:  {} ({})", lib.version, lib.path.display());
    let avail = |ok: ort::Result<bool>| {
        if ok.unwrap_or(false) {
            "available"
        } else {
            "not in this build"
        }
    };
    println!(
        "providers:    tensorrt: {}, cuda: {}, cpu: available",
        avail(ep::TensorRT::is_available()),
        avail(ep::CUDA::is_available())
    );
    let m = engine.manifest();
    let i = &m.input;
    println!(
        "input:        {} float32 [{}, {}, {}, {}] range [{}, {}]",
        i.name, i.batch, i.channels, i.height, i.width, i.range[0], i.range[1]
    );
    println!(
        "outputs:      {} float32 [{}, 1, {}, {}], {} float32 [{}]",
        m.outputs.map, i.batch, i.height, i.width, m.outputs.score, i.batch
    );
    match &m.threshold {
        Some(t) => println!(
            "threshold:    {} ({}, target FRR {:?}, {} images)",
            t.value,
            t.method,
            t.target_frr,
            t.n_images.unwrap_or(0)
        ),
        None => println!("threshold:    not calibrated (run `python -m exporter calibrate`)"),
    }
    println!("manifest:\n{}", serde_json::to_string_pretty(m)?);
    // Last, so that a model failing it still shows what it is.
    match engine.run_self_test() {
        Ok(r) => {
            println!("self-test:    {r}");
            Ok(())
        }
        Err(e) => {
            println!("self-test:    FAILED");
            Err(e.into())
        }
    }
}

/// Expand folders into their image files; files are kept as given.
fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let files = dataset::sorted_dir(p)
                .with_context(|| format!("reading folder {}", p.display()))?;
            out.extend(files.into_iter().filter(|f| dataset::is_image(f)));
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// `diffad infer`: score and verdict per image; returns the number of images that failed.
pub fn infer(
    config: &EngineConfig,
    camera: Option<&CameraConfig>,
    images: &[PathBuf],
    heatmaps: Option<&Path>,
    as_json: bool,
    opts: InspectOptions,
) -> Result<usize> {
    let mut insp = inspector(config, camera, opts)?;
    let thr = insp.threshold();
    if let Some(dir) = heatmaps {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating heatmap folder {}", dir.display()))?;
    }
    let mut failed = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for path in expand(images)? {
        let result = imagefile::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|frame| {
                let r = insp
                    .inspect(&[&frame])
                    .pop()
                    .expect("one result per frame")
                    .map_err(|e| e.to_string())?;
                Ok((frame, r))
            });
        match result {
            Ok((frame, r)) => {
                let verdict = if r.score >= thr { "reject" } else { "pass" };
                let mut heat = None;
                if let Some(dir) = heatmaps {
                    let name = path
                        .file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .to_string();
                    let dest = dir.join(format!("{name}_heatmap.png"));
                    heatmap::overlay_in(&frame, &r.map, r.map_width, r.map_height, r.map_roi, thr)
                        .map_err(anyhow::Error::msg)
                        .and_then(|img| img.save(&dest).map_err(Into::into))
                        .with_context(|| format!("writing {}", dest.display()))?;
                    heat = Some(dest);
                }
                if as_json {
                    let line = json!({"image": path, "score": r.score, "threshold": thr, "verdict": verdict, "heatmap": heat});
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(out, "{:<8} {:>9.5}  {}", verdict, r.score, path.display())?;
                }
            }
            Err(e) => {
                failed += 1;
                if as_json {
                    writeln!(out, "{}", json!({"image": path, "error": e}))?;
                } else {
                    writeln!(out, "error    {:>9}  {}: {e}", "-", path.display())?;
                }
            }
        }
    }
    Ok(failed)
}

/// Everything `eval` measures.
#[derive(Debug, serde::Serialize)]
pub struct EvalReport {
    /// Dataset folder.
    pub dataset: String,
    /// Threshold used for rates.
    pub threshold: f32,
    /// Images scored.
    pub images: usize,
    /// Images that could not be read (always 0: `eval` refuses to report on a partial dataset).
    pub failed: usize,
    /// Image-level AUROC.
    pub image_auroc: Option<f64>,
    /// Pixel-level AUROC over all test pixels.
    pub pixel_auroc: Option<f64>,
    /// PRO integrated to 30 % FPR.
    pub pro: Option<f64>,
    /// Good images rejected / good images.
    pub false_reject_rate: f64,
    /// Defective images passed / defective images.
    pub escape_rate: f64,
    /// Per defect kind: count, mean score, rejected share.
    pub kinds: Vec<KindRow>,
    /// Images per second through decode → preprocess → infer.
    pub images_per_s: f64,
    /// The false-reject / escape trade-off (printed by `eval --sweep`).
    pub sweep: Option<crate::offline::sweep::Sweep>,
}

/// One defect kind's line in the report.
#[derive(Debug, serde::Serialize)]
pub struct KindRow {
    /// Kind (`good` for normal images).
    pub kind: String,
    /// Images.
    pub n: usize,
    /// Mean score.
    pub mean_score: f64,
    /// Share rejected at the threshold.
    pub rejected: f64,
}

/// One scored test image, as `eval` saw it; `eval --report` draws its figures from these.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Image path.
    pub image: PathBuf,
    /// Defect kind (its folder name); `good` for normal images.
    pub kind: String,
    /// True for defective images.
    pub defective: bool,
    /// Image score.
    pub score: f32,
    /// Anomaly map, `map_width` × `map_height`.
    pub map: Vec<f32>,
    /// Ground-truth mask at the map's size (all false for good images and missing masks).
    pub mask: Vec<bool>,
    /// Map width.
    pub map_width: u32,
    /// Map height.
    pub map_height: u32,
}

/// Why `eval` reports no metrics.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Some test images or masks could not be used; metrics without them would look complete.
    #[error(
        "{} of {total} test images of {root} could not be evaluated, so no metrics are reported \
         (they would silently leave those images out); fix or remove them:\n  {}",
        failures.len(),
        shown(failures)
    )]
    Unusable {
        /// The dataset folder.
        root: String,
        /// Test images found.
        total: usize,
        /// One line per image: the file and why.
        failures: Vec<String>,
    },
}

/// The first failures, one per line, and how many more there are.
fn shown(failures: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut lines: Vec<String> = failures.iter().take(SHOWN).cloned().collect();
    if failures.len() > SHOWN {
        lines.push(format!(
            "… and {} more (each logged above)",
            failures.len() - SHOWN
        ));
    }
    lines.join("\n  ")
}

/// `diffad eval`: image/pixel AUROC, PRO and rates at the threshold on an MVTec-style folder.
pub fn eval(
    config: &EngineConfig,
    camera: Option<&CameraConfig>,
    root: &Path,
    opts: InspectOptions,
) -> Result<EvalReport> {
    eval_scored(config, camera, root, opts).map(|(report, _)| report)
}

/// `eval` and the per-image results its figures are computed from.
pub fn eval_scored(
    config: &EngineConfig,
    camera: Option<&CameraConfig>,
    root: &Path,
    opts: InspectOptions,
) -> Result<(EvalReport, Vec<Scored>)> {
    let samples = dataset::scan(root).map_err(anyhow::Error::msg)?;
    let roi = camera.and_then(|c| c.roi);
    let mut insp = inspector(config, camera, opts)?;
    let thr = insp.threshold();
    let mut scored = Vec::with_capacity(samples.len());
    let mut failures = Vec::new();
    let start = Instant::now();
    for s in &samples {
        let shown = s.image.display().to_string();
        // Every error names its file: image and inspection errors carry the image's path.
        let r = imagefile::load(&s.image)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                insp.inspect(&[&f])
                    .pop()
                    .expect("one result")
                    .map(|r| (r, (f.width, f.height)))
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| {
                if e.contains(&shown) {
                    e
                } else {
                    format!("{shown}: {e}")
                }
            });
        let (r, size) = match r {
            Ok(r) => r,
            Err(e) => {
                log::error!("{e}");
                failures.push(e);
                continue;
            }
        };
        let mask = match &s.mask {
            Some(m) => {
                match dataset::load_mask(m, &s.image, size, roi, (r.map_width, r.map_height)) {
                    Ok(mask) => mask,
                    Err(e) => {
                        log::error!("{e}");
                        failures.push(e.to_string());
                        continue;
                    }
                }
            }
            None if s.defective() => {
                log::warn!(
                    "{}: no mask; pixel metrics treat it as all-defect-free",
                    s.image.display()
                );
                vec![false; r.map.len()]
            }
            None => vec![false; r.map.len()],
        };
        scored.push(Scored {
            image: s.image.clone(),
            kind: s.kind.clone(),
            defective: s.defective(),
            score: r.score,
            map: r.map,
            mask,
            map_width: r.map_width,
            map_height: r.map_height,
        });
    }
    let elapsed = start.elapsed().as_secs_f64();
    if !failures.is_empty() {
        return Err(EvalError::Unusable {
            root: root.display().to_string(),
            total: samples.len(),
            failures,
        }
        .into());
    }
    let scores: Vec<f32> = scored.iter().map(|s| s.score).collect();
    let labels: Vec<bool> = scored.iter().map(|s| s.defective).collect();
    let width = scored.last().map_or(0, |s| s.map_width as usize);
    let flat_scores: Vec<f32> = scored.iter().flat_map(|s| s.map.iter().copied()).collect();
    let flat_labels: Vec<bool> = scored.iter().flat_map(|s| s.mask.iter().copied()).collect();
    let map_refs: Vec<&[f32]> = scored.iter().map(|s| s.map.as_slice()).collect();
    let mask_refs: Vec<&[bool]> = scored.iter().map(|s| s.mask.as_slice()).collect();
    let rate = |want_defective: bool, rejected: bool| {
        let group: Vec<f32> = scores
            .iter()
            .zip(&labels)
            .filter(|(_, &l)| l == want_defective)
            .map(|(s, _)| *s)
            .collect();
        let hit = group.iter().filter(|&&s| (s >= thr) == rejected).count();
        if group.is_empty() {
            f64::NAN
        } else {
            hit as f64 / group.len() as f64
        }
    };
    let mut kind_names: Vec<String> = scored.iter().map(|s| s.kind.clone()).collect();
    kind_names.sort();
    kind_names.dedup();
    let kinds_rows = kind_names
        .into_iter()
        .map(|k| {
            let ks: Vec<f32> = scored
                .iter()
                .filter(|s| s.kind == k)
                .map(|s| s.score)
                .collect();
            KindRow {
                n: ks.len(),
                mean_score: ks.iter().map(|&s| s as f64).sum::<f64>() / ks.len() as f64,
                rejected: ks.iter().filter(|&&s| s >= thr).count() as f64 / ks.len() as f64,
                kind: k,
            }
        })
        .collect();
    let report = EvalReport {
        dataset: root.display().to_string(),
        threshold: thr,
        images: scores.len(),
        failed: 0,
        image_auroc: auroc(&scores, &labels),
        pixel_auroc: auroc(&flat_scores, &flat_labels),
        pro: pro(&map_refs, &mask_refs, width, 0.3),
        false_reject_rate: rate(false, true),
        escape_rate: rate(true, false),
        kinds: kinds_rows,
        images_per_s: scores.len() as f64 / elapsed,
        sweep: Some(crate::offline::sweep::sweep(
            &scored
                .iter()
                .filter(|s| !s.defective)
                .map(|s| s.score)
                .collect::<Vec<_>>(),
            &scored
                .iter()
                .filter(|s| s.defective)
                .map(|s| s.score)
                .collect::<Vec<_>>(),
        )),
    };
    Ok((report, scored))
}

/// `diffad eval --report DIR`: `eval`, then its figures and `index.md` in `dir` (checked
/// writable, and the font loaded, before any image is scored).
pub fn eval_report(
    config: &EngineConfig,
    camera: Option<&CameraConfig>,
    root: &Path,
    opts: InspectOptions,
    dir: &Path,
) -> Result<(EvalReport, crate::offline::report::Written)> {
    crate::offline::report::prepare(dir)?;
    let (report, scored) = eval_scored(config, camera, root, opts)?;
    let written = crate::offline::report::write(dir, &config.model, &report, &scored)?;
    Ok((report, written))
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        writeln!(f, "dataset          {}", self.dataset)?;
        writeln!(
            f,
            "images           {} ({} unreadable)",
            self.images, self.failed
        )?;
        writeln!(f, "image AUROC      {}", opt(self.image_auroc))?;
        writeln!(f, "pixel AUROC      {}", opt(self.pixel_auroc))?;
        if self.pixel_auroc.is_some_and(|a| a < 0.5) {
            writeln!(
                f,
                "  note: below 0.5 ranks defect pixels BELOW good ones. Usually the masks mark more than \
                 what changed (large smears or blobs whose inside looks normal, so the map fires on their \
                 edges only), or they are inverted or misaligned: look at the overlays of `--report` \
                 before trusting the figure"
            )?;
        }
        writeln!(f, "PRO (FPR ≤ 0.3)  {}", opt(self.pro))?;
        writeln!(f, "threshold        {:.5}", self.threshold)?;
        writeln!(
            f,
            "false rejects    {:.2} %",
            100.0 * self.false_reject_rate
        )?;
        writeln!(f, "escapes          {:.2} %", 100.0 * self.escape_rate)?;
        writeln!(f, "throughput       {:.1} images/s", self.images_per_s)?;
        writeln!(
            f,
            "{:<16} {:>5} {:>11} {:>10}",
            "kind", "n", "mean score", "rejected"
        )?;
        for k in &self.kinds {
            writeln!(
                f,
                "{:<16} {:>5} {:>11.5} {:>9.1} %",
                k.kind,
                k.n,
                k.mean_score,
                100.0 * k.rejected
            )?;
        }
        Ok(())
    }
}

/// Latency statistics of one timed loop.
#[derive(Debug, serde::Serialize)]
pub struct Timing {
    /// Frames per second (1 / mean latency).
    pub fps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Mean latency, ms.
    pub mean_ms: f64,
}

impl Timing {
    fn of(seconds: &[f64]) -> Self {
        let ms: Vec<f64> = seconds.iter().map(|s| s * 1e3).collect();
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        Self {
            fps: 1e3 / mean,
            p50_ms: percentile(&ms, 50.0),
            p99_ms: percentile(&ms, 99.0),
            mean_ms: mean,
        }
    }
}

/// What `bench` measured.
#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    /// Model path.
    pub model: String,
    /// Providers the session registered.
    pub providers: Vec<String>,
    /// ONNX Runtime version.
    pub onnxruntime: String,
    /// Timed iterations per loop.
    pub iterations: usize,
    /// The bare session call.
    pub session: Timing,
    /// decode → preprocess → infer → decide.
    pub pipeline: Timing,
    /// pipeline FPS ÷ session FPS.
    pub ratio: f64,
    /// FLOPs per frame from the manifest.
    pub flops_per_frame: f64,
    /// Achieved GFLOP/s in the bare session loop.
    pub session_gflops: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

/// `diffad bench`: bare session vs the whole per-frame path, same model, same images.
pub fn bench(
    config: &EngineConfig,
    images: &[PathBuf],
    iterations: usize,
    warmup: usize,
) -> Result<BenchReport> {
    let mut insp = EngineInspector::new(Engine::load(config)?, None, Some(f32::INFINITY))?;
    let files = if images.is_empty() {
        golden_images(&config.model)?
    } else {
        expand(images)?
    };
    if files.is_empty() {
        bail!("no images to benchmark with; pass --images");
    }
    let encoded: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|p| {
            Ok((
                p.display().to_string(),
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            ))
        })
        .collect::<Result<_>>()?;
    let thr = insp.manifest_threshold();
    let one = |insp: &mut EngineInspector, bytes: &[u8], origin: &str| -> Result<bool> {
        let frame: Frame = imagefile::decode(bytes, origin).map_err(anyhow::Error::msg)?;
        let r = insp
            .inspect(&[&frame])
            .pop()
            .expect("one result")
            .map_err(|e| anyhow::anyhow!(e.to_string()))?;
        Ok(r.score >= thr)
    };
    for i in 0..warmup {
        let (o, b) = &encoded[i % encoded.len()];
        one(&mut insp, b, o)?;
    }
    // Interleave the two loops in blocks so drift in machine load hits both alike.
    let (mut bare, mut pipe) = (
        Vec::with_capacity(iterations),
        Vec::with_capacity(iterations),
    );
    let block = 10.min(iterations.max(1));
    while pipe.len() < iterations {
        bare.extend(insp.engine_mut().time_bare(block)?);
        for _ in 0..block {
            let (o, b) = &encoded[pipe.len() % encoded.len()];
            let t = Instant::now();
            std::hint::black_box(one(&mut insp, b, o)?);
            pipe.push(t.elapsed().as_secs_f64());
        }
    }
    let engine = insp.engine();
    let session = Timing::of(&bare);
    let pipeline = Timing::of(&pipe);
    let flops = engine.manifest().flops_per_frame * engine.batch_size() as f64;
    Ok(BenchReport {
        model: config.model.display().to_string(),
        providers: engine.providers().to_vec(),
        onnxruntime: engine.runtime().version.clone(),
        iterations: pipe.len(),
        ratio: pipeline.fps / session.fps,
        session_gflops: flops * session.fps / 1e9,
        flops_per_frame: engine.manifest().flops_per_frame,
        session,
        pipeline,
        peak_rss_mib: peak_rss_mib(),
    })
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "model {} on {} (ONNX Runtime {}), {} iterations",
            self.model,
            self.providers.join(" > "),
            self.onnxruntime,
            self.iterations
        )?;
        writeln!(f, "{:<34} {:>8} {:>9} {:>9}", "", "FPS", "p50 ms", "p99 ms")?;
        for (name, t) in [
            ("session call (bare)", &self.session),
            ("decode→preprocess→infer→decide", &self.pipeline),
        ] {
            writeln!(
                f,
                "{:<34} {:>8.1} {:>9.2} {:>9.2}",
                name, t.fps, t.p50_ms, t.p99_ms
            )?;
        }
        writeln!(f, "pipeline ÷ session FPS            {:.3}", self.ratio)?;
        writeln!(
            f,
            "pipeline p99 ÷ p50                {:.3}",
            self.pipeline.p99_ms / self.pipeline.p50_ms
        )?;
        writeln!(
            f,
            "FLOPs per frame {:.3} G, session {:.1} GFLOP/s, peak RSS {:.0} MiB",
            self.flops_per_frame / 1e9,
            self.session_gflops,
            self.peak_rss_mib
        )
    }
}

/// The golden inputs shipped beside a model (`NAME.golden/*.png`).
pub fn golden_images(model: &Path) -> Result<Vec<PathBuf>> {
    let dir = model.with_extension("golden");
    let files = dataset::sorted_dir(&dir)
        .with_context(|| format!("no images given and no golden inputs at {}", dir.display()))?;
    Ok(files.into_iter().filter(|f| dataset::is_image(f)).collect())
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

/// Whether the TensorRT cache for `config`'s model already holds a built engine.
pub fn tensorrt_cache(config: &EngineConfig) -> Result<Option<(PathBuf, bool)>> {
    if !config.providers.iter().any(|p| p == "tensorrt") {
        return Ok(None);
    }
    let lib = crate::model::ortlib::load()?;
    let bytes = std::fs::read(&config.model)
        .with_context(|| format!("reading model {}", config.model.display()))?;
    let sha = crate::model::onnxfile::file_sha256(&bytes);
    let dir = crate::stages::engine::tensorrt_cache_dir(&config.tensorrt, &sha, &lib.version);
    let built = dataset::sorted_dir(&dir)
        .map(|files| {
            files
                .iter()
                .any(|f| f.extension().is_some_and(|e| e == "engine"))
        })
        .unwrap_or(false);
    Ok(Some((dir, built)))
}

/// `diffad build-engine`: build (or reuse) the TensorRT engine for the configured model.
pub fn build_engine(config: &EngineConfig) -> Result<()> {
    let Some((dir, built)) = tensorrt_cache(config)? else {
        bail!("engine.providers does not list \"tensorrt\": there is no engine to build");
    };
    let mut config = config.clone();
    // Building must not quietly end up on another provider.
    config.allow_fallback = false;
    if built {
        println!(
            "build-engine: cached engine found in {}; verifying it loads",
            dir.display()
        );
    } else {
        println!(
            "build-engine: no cached engine in {}; building (this takes minutes on a Jetson)",
            dir.display()
        );
    }
    let start = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_secs(10));
                if !done.load(std::sync::atomic::Ordering::Relaxed) {
                    println!(
                        "build-engine: still building… {:.0} s",
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        })
    };
    let result = Engine::load(&config).and_then(|mut e| {
        // TensorRT builds lazily on the first run.
        let n = e.batch_size();
        e.run(n).map(|_| e)
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    ticker.join().ok();
    let engine = result?;
    println!(
        "build-engine: ready in {:.1} s on {}; cache {}",
        start.elapsed().as_secs_f64(),
        engine.providers().join(" > "),
        dir.display()
    );
    match engine.self_test() {
        Some(r) => println!("build-engine: self-test {r}"),
        None => println!("build-engine: self-test skipped (engine.self_test.enabled = false)"),
    }
    Ok(())
}

/// `diffad check-config`: parse and validate a board file, summarise it, then (with
/// `deployment`) check the files and devices it names and its keys against the model.
pub fn check_config(path: &Path, deployment: bool) -> Result<crate::line::board::BoardConfig> {
    let c = crate::line::board::BoardConfig::load(path)?;
    let s = &c.setup;
    println!("board:      {} — {}", c.board.name, c.board.description);
    println!(
        "engine:     {} on {}{}",
        c.engine.model.display(),
        c.engine.providers.join(" > "),
        if c.engine.allow_fallback {
            " (fallback allowed)"
        } else {
            ""
        }
    );
    println!(
        "self-test:  {}",
        match (c.engine.self_test.enabled, c.engine.self_test.tolerance) {
            (false, _) => "OFF (engine.self_test.enabled = false)".to_string(),
            (true, Some(t)) => format!("golden cases at start, tolerance {t:e}"),
            (true, None) => "golden cases at start, tolerance by precision".to_string(),
        }
    );
    let region = s.camera.roi.map_or("whole frame".to_string(), |r| {
        format!("roi {}×{} at ({}, {})", r.width, r.height, r.x, r.y)
    });
    let source = match s.camera.source {
        crate::sources::camera::config::SourceKind::Sim => match &s.camera.sim.photo {
            Some(p) => format!("simulated conveyor cutting tiles from {}", p.display()),
            None => "simulated conveyor, procedural texture".to_string(),
        },
        crate::sources::camera::config::SourceKind::Replay => {
            match crate::sources::camera::replay::describe(&s.camera.replay.dir) {
                Ok(d) => format!("replay of {d}"),
                Err(e) => format!("replay: {e}"),
            }
        }
        crate::sources::camera::config::SourceKind::V4l2 => {
            format!("camera {}", s.camera.v4l2.device.display())
        }
    };
    println!("source:     {source}");
    println!(
        "threshold:  {}",
        match (
            s.line.threshold,
            crate::model::manifest::Manifest::read(&c.engine.model)
                .ok()
                .and_then(|m| m.threshold)
        ) {
            (Some(t), Some(m)) => format!("{t} (line.threshold overrides the model's {})", m.value),
            (Some(t), None) => format!("{t} (line.threshold)"),
            (None, Some(m)) => format!(
                "{} (the model's, {}{})",
                m.value,
                m.method,
                m.n_images
                    .map_or(String::new(), |n| format!(" on {n} good images"))
            ),
            (None, None) =>
                "none: the model is not calibrated and line.threshold is not set".into(),
        }
    );
    println!(
        "camera:     {:?}, {region}, {}",
        s.camera.source,
        if s.camera.tiling.enabled {
            format!(
                "tiled at native resolution (overlap ≥ {} px)",
                s.camera.tiling.overlap
            )
        } else {
            "resized to the model size".to_string()
        }
    );
    let lines: Vec<String> = [
        ("reject", &s.gpio.reject),
        ("ready", &s.gpio.ready),
        ("heartbeat", &s.gpio.heartbeat),
    ]
    .iter()
    .chain([("fault", &s.gpio.fault), ("trigger", &s.gpio.trigger)].iter())
    .filter_map(|(n, l)| l.as_ref().map(|l| format!("{n}={}", l.name)))
    .collect();
    println!(
        "gpio:       {} {} pulse {} ms",
        if s.gpio.sim {
            "simulated"
        } else {
            s.gpio.chip.as_str()
        },
        lines.join(" "),
        s.gpio.pulse_ms
    );
    println!(
        "line:       {} trigger {:?}, ejector {:.1} mm at {:.1} mm/s = {:.1} ms after the trigger, fail-safe {:?}",
        s.line.name,
        s.line.trigger,
        s.line.travel_mm(),
        s.line.belt_speed_mm_s,
        s.line.delay_ns() as f64 / 1e6,
        s.line.fail_safe
    );
    println!(
        "supervisor: {}",
        if s.supervisor.listen.is_empty() {
            "off".to_string()
        } else {
            format!(
                "ndjson on {}{}",
                s.supervisor.listen,
                match (&s.supervisor.tls, s.supervisor.expose) {
                    (Some(_), _) => ", TLS with client certificates",
                    (None, true) =>
                        ", exposed WITHOUT TLS: anyone who reaches the port reads the line",
                    (None, false) => "",
                }
            )
        }
    );
    println!(
        "mqtt:       {}",
        s.mqtt.as_ref().map_or("off".to_string(), |m| format!(
            "{} prefix {}",
            m.url, m.prefix
        ))
    );
    println!(
        "archive:    {}",
        s.archive.as_ref().map_or("off".to_string(), |a| format!(
            "{} (cap {} MB)",
            a.dir.display(),
            a.max_mb
        ))
    );
    if deployment {
        let problems = c.check_deployment();
        if !problems.is_empty() {
            return Err(crate::line::board::ConfigError::Unusable {
                path: path.display().to_string(),
                problems,
            }
            .into());
        }
    } else {
        println!("files:      not checked (--keys-only)");
    }
    println!("ok: {}", path.display());
    Ok(c)
}

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
    let inspector = line_inspector(
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
