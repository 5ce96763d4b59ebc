//! `diffad inspect` and `diffad infer`: what a model is, and its verdict on images.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ort::ep::{self, ExecutionProvider};
use serde_json::json;

use crate::sinks::heatmap;
use crate::sources::camera::config::CameraConfig;
use crate::sources::dataset;
use crate::sources::imagefile;
use crate::stages::engine::{Engine, EngineConfig};
use crate::stages::inspect::Inspector;

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
    Ok(crate::stages::tiling::inspector_for(
        engine,
        camera,
        opts.threshold,
        upscale,
    )?)
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
            "threshold:    {} ({}, target FRR {:?}, {} images{})",
            t.value,
            t.method,
            t.target_frr,
            t.n_images.unwrap_or(0),
            t.rates()
        ),
        None => println!("threshold:    not calibrated (run `python -m exporter calibrate`)"),
    }
    println!("manifest:\n{}", serde_json::to_string_pretty(m)?);
    // Last, so that a model failing it still shows what it is.
    match engine.run_self_test() {
        Ok(r) => println!("self-test:    {r}"),
        Err(e) => {
            println!("self-test:    FAILED");
            return Err(e.into());
        }
    }
    if let Some(steps) = engine.sampler_steps() {
        // The sampler's parity with the exporter's at the goldens' other step counts.
        let more = engine.check_more_steps().inspect_err(|_| {
            println!("sampler:      {steps} steps by default; parity at other step counts FAILED")
        })?;
        let at: Vec<String> = more
            .iter()
            .map(|(s, d)| format!("{s} steps {:.2e}", d.iter().copied().fold(0.0, f64::max)))
            .collect();
        println!(
            "sampler:      {steps} steps by default; largest deviation from the PyTorch sampler at {}",
            if at.is_empty() { "no other step count".into() } else { at.join(", ") }
        );
    }
    Ok(())
}

/// Expand folders into their image files, subfolders included; files are kept as given. A
/// folder without an image, or no input at all, is an error: scoring nothing is not a result.
pub fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(expand_named(inputs)?.into_iter().map(|(p, _)| p).collect())
}

/// [`expand`], each image with a name unique in the run: its path below the folder given,
/// `/` as `_` (`hole/000.png` → `hole_000`), for the files written per image.
pub fn expand_named(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let before = out.len();
            walk(p, p, &mut out)?;
            if out.len() == before {
                anyhow::bail!(
                    "folder {} holds no PNG or JPEG image, in it or in its subfolders",
                    p.display()
                );
            }
        } else {
            let name = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            out.push((p.clone(), name));
        }
    }
    if out.is_empty() {
        anyhow::bail!("no images given");
    }
    Ok(out)
}

/// The images below `dir`, in name order, subfolders in place (an MVTec `test/` with a folder
/// per kind is scored whole).
fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
    let entries =
        dataset::sorted_dir(dir).with_context(|| format!("reading folder {}", dir.display()))?;
    for f in entries {
        if f.is_dir() {
            walk(root, &f, out)?;
        } else if dataset::is_image(&f) {
            let rel = f.strip_prefix(root).unwrap_or(&f).with_extension("");
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("_");
            out.push((f, name));
        }
    }
    Ok(())
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
    for (path, name) in expand_named(images)? {
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

/// The golden inputs shipped beside a model (`NAME.golden/*.png`).
pub fn golden_images(model: &Path) -> Result<Vec<PathBuf>> {
    let dir = model.with_extension("golden");
    let files = dataset::sorted_dir(&dir)
        .with_context(|| format!("no images given and no golden inputs at {}", dir.display()))?;
    Ok(files.into_iter().filter(|f| dataset::is_image(f)).collect())
}
