//! `diffad bench`: the bare ONNX Runtime session against the whole per-frame path.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::frame::Frame;
use crate::line::launch::peak_rss_mib;
use crate::line::percentile_ms;
use crate::offline::infer::{expand, golden_images};
use crate::sources::imagefile;
use crate::stages::engine::{Engine, EngineConfig};
use crate::stages::inspect::{EngineInspector, Inspector};

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
        // The line's own latency histogram and percentile, so bench and run figures compare.
        let mut h = crate::sinks::reject::ns_histogram();
        for s in seconds {
            h.saturating_record((s * 1e9).round().max(1.0) as u64);
        }
        let mean = seconds.iter().sum::<f64>() * 1e3 / seconds.len() as f64;
        Self {
            fps: 1e3 / mean,
            p50_ms: percentile_ms(&h, 0.5).unwrap_or(f64::NAN),
            p99_ms: percentile_ms(&h, 0.99).unwrap_or(f64::NAN),
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
    /// FLOPs per frame: the manifest's per network call × network calls per image.
    pub flops_per_frame: f64,
    /// Network calls per image (the sampler's steps for multi-step recipes, else 1).
    pub network_calls: usize,
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
                crate::files::read_capped(p, crate::files::IMAGE_CAP, "the image argument")
                    .with_context(|| format!("reading {}", p.display()))?,
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
    let calls = engine.calls_per_batch();
    let per_frame = engine.manifest().flops_per_frame * calls as f64;
    let flops = per_frame * engine.batch_size() as f64;
    Ok(BenchReport {
        model: config.model.display().to_string(),
        providers: engine.providers().to_vec(),
        onnxruntime: engine.runtime().version.clone(),
        iterations: pipe.len(),
        ratio: pipeline.fps / session.fps,
        session_gflops: flops * session.fps / 1e9,
        flops_per_frame: per_frame,
        network_calls: calls,
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
            "network calls per image {}, FLOPs per frame {:.3} G, session {:.1} GFLOP/s, peak RSS {:.0} MiB",
            self.network_calls,
            self.flops_per_frame / 1e9,
            self.session_gflops,
            self.peak_rss_mib
        )
    }
}
