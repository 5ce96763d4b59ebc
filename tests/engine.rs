//! Engine against real ONNX Runtime: refusals, providers, fixture arithmetic, and golden parity
//! with every shipped model.

mod common;

use common::root;

use std::path::PathBuf;
use std::process::Command;

use diffad::frame::{Frame, PixelFormat};
use diffad::model::manifest::ManifestError;
use diffad::sources::imagefile;
use diffad::stages::engine::{Engine, EngineConfig, EngineError};
use diffad::stages::inspect::{EngineInspector, Inspector};

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn load(name: &str) -> Result<Engine, EngineError> {
    Engine::load(&EngineConfig::cpu(fixture(name)))
}

#[test]
fn refuses_files_that_are_not_deployable_models() {
    let err = Engine::load(&EngineConfig::cpu(root().join("Cargo.toml")))
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::NotOnnx { .. }), "{err}");
    assert!(err.to_string().contains("Cargo.toml"));

    let err = Engine::load(&EngineConfig::cpu(fixture("missing.onnx")))
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::Io { .. }), "{err}");

    let err = load("no-manifest.onnx").err().unwrap();
    assert!(
        matches!(
            err,
            EngineError::Manifest {
                source: ManifestError::Missing,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("python -m exporter export"));

    let err = load("schema-v2.onnx").err().unwrap();
    assert!(
        matches!(
            err,
            EngineError::Manifest {
                source: ManifestError::Schema(2),
                ..
            }
        ),
        "{err}"
    );

    let err = load("other-method.onnx").err().unwrap();
    assert!(
        matches!(
            err,
            EngineError::Manifest {
                source: ManifestError::Method(_),
                ..
            }
        ),
        "{err}"
    );

    let err = load("io-mismatch.onnx").err().unwrap();
    assert!(matches!(err, EngineError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("[1, 1, 8, 8]"), "{err}");
}

#[test]
fn gpu_provider_missing_is_loud_unless_fallback_allowed() {
    // The PyPI onnxruntime wheel is CPU-only: asking for CUDA or TensorRT must not silently run on CPU.
    for gpu in ["cuda", "tensorrt"] {
        let mut config = EngineConfig::cpu(fixture("sigmoid.onnx"));
        config.providers = vec![gpu.into(), "cpu".into()];
        config.tensorrt.cache_dir = std::env::temp_dir().join("diffad-test-trt");
        let err = Engine::load(&config)
            .err()
            .expect("GPU provider must be refused");
        assert!(
            matches!(&err, EngineError::Provider { name, .. } if name == gpu),
            "{err}"
        );
        assert!(err.to_string().contains("allow_fallback"));

        config.allow_fallback = true;
        let engine = Engine::load(&config).unwrap();
        assert_eq!(engine.providers(), ["cpu"]);
    }
}

#[test]
fn fixture_scores_match_hand_computation() {
    let mut insp = EngineInspector::new(load("sigmoid.onnx").unwrap(), None, None).unwrap();
    assert_eq!(insp.threshold(), 0.6);
    let data: Vec<u8> = (0..=255).collect();
    let frame = Frame {
        seq: 0,
        timestamp_ns: 0,
        width: 16,
        height: 16,
        format: PixelFormat::Grey8,
        data,
        truth: None,
        origin: "ramp".into(),
    };
    let r = insp.inspect(&[&frame]).pop().unwrap().unwrap();
    let sig = |p: f32| 1.0 / (1.0 + (-p / 255.0).exp());
    let top5 = (251..=255).map(|p| sig(p as f32)).sum::<f32>() / 5.0;
    assert!((r.score - top5).abs() < 1e-6, "{} vs {top5}", r.score);
    assert!((r.map[0] - 0.5).abs() < 1e-6);
    assert_eq!(r.map.len(), 256);

    // A frame of the wrong size is resized; one with bad bytes fails alone.
    let big = Frame {
        width: 32,
        height: 32,
        data: vec![255; 1024],
        ..frame.clone()
    };
    let bad = Frame {
        data: vec![0; 7],
        origin: "short".into(),
        ..frame.clone()
    };
    let results = insp.inspect(&[&big, &bad, &frame]);
    assert!((results[0].as_ref().unwrap().score - sig(255.0)).abs() < 1e-6);
    assert!(results[1]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("short"));
    assert!(results[2].is_ok());
}

#[test]
fn uncalibrated_model_needs_a_threshold() {
    let err = EngineInspector::new(load("uncalibrated.onnx").unwrap(), None, None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("exporter calibrate"), "{err}");
    assert!(EngineInspector::new(load("uncalibrated.onnx").unwrap(), None, Some(0.5)).is_ok());
}

/// Every model under models/ with golden outputs: Rust scores equal the exporter's.
#[test]
fn golden_parity_with_every_shipped_model() {
    let mut checked = 0;
    for dir in std::fs::read_dir(root().join("models")).unwrap().flatten() {
        let model = dir.path().join("model.onnx");
        let golden = dir.path().join("model.golden.json");
        if !model.exists() || !golden.exists() {
            continue;
        }
        let g: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&golden).unwrap()).unwrap();
        let mut insp = EngineInspector::new(
            Engine::load(&EngineConfig::cpu(&model)).unwrap(),
            None,
            Some(0.5),
        )
        .unwrap();
        for case in g["cases"].as_array().unwrap() {
            let image = dir.path().join(case["image"].as_str().unwrap());
            let frame = imagefile::load(&image).unwrap();
            let r = insp.inspect(&[&frame]).pop().unwrap().unwrap();
            let want = case["score"].as_f64().unwrap();
            assert!(
                (r.score as f64 - want).abs() <= 1e-5,
                "{}: score {} vs golden {want}",
                image.display(),
                r.score
            );
            let n = r.map.len() as f64;
            let sum: f64 = r.map.iter().map(|&v| v as f64).sum();
            let max = r.map.iter().copied().fold(f32::MIN, f32::max) as f64;
            assert!(
                (sum / n - case["map_mean"].as_f64().unwrap()).abs() <= 1e-5,
                "{}: map mean",
                image.display()
            );
            assert!(
                (max - case["map_max"].as_f64().unwrap()).abs() <= 1e-5,
                "{}: map max",
                image.display()
            );
            assert!(
                (sum - case["map_sum"].as_f64().unwrap()).abs() <= 1e-5 * n,
                "{}: map sum",
                image.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected golden cases from the shipped models, checked {checked}"
    );
}

#[test]
fn infer_cli_reports_bad_images_and_scores_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    image::GrayImage::from_pixel(16, 16, image::Luma([200]))
        .save(dir.path().join("a.png"))
        .unwrap();
    image::RgbImage::from_pixel(40, 30, image::Rgb([1, 2, 3]))
        .save(dir.path().join("b.png"))
        .unwrap();
    std::fs::write(dir.path().join("c.png"), b"\x89PNG truncated").unwrap();
    let heat = dir.path().join("heat");
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["infer", "--json", "--model"])
        .arg(fixture("sigmoid.onnx"))
        .arg("--heatmaps")
        .arg(&heat)
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["verdict"], "reject"); // sigmoid(200/255) = 0.687 ≥ 0.6
    assert_eq!(lines[1]["verdict"], "pass"); // near-black: 0.5
    assert!(lines[2]["error"].as_str().unwrap().contains("c.png"));
    assert!(heat.join("a_heatmap.png").exists() && heat.join("b_heatmap.png").exists());
    let overlay = image::open(heat.join("b_heatmap.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (40, 30));
}

#[test]
fn inspect_cli_prints_manifest_and_runtime() {
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .arg("inspect")
        .arg(fixture("sigmoid.onnx"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("onnxruntime:") && text.contains("\"method\": \"diffusionad\""),
        "{text}"
    );
    assert!(
        text.contains("self-test:    passed, 4 golden cases on cpu")
            && text.contains("tolerance 1e-4, fp32 default"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .arg("inspect")
        .arg(fixture("no-manifest.onnx"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-manifest.onnx"));
}

/// A temporary folder holding `model.onnx` (from `bytes`) and, when given, golden files.
fn staged(
    bytes: &[u8],
    golden_json: Option<&str>,
    golden_pngs: Option<&std::path::Path>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.onnx"), bytes).unwrap();
    if let Some(j) = golden_json {
        std::fs::write(dir.path().join("model.golden.json"), j).unwrap();
    }
    if let Some(src) = golden_pngs {
        let dst = dir.path().join("model.golden");
        std::fs::create_dir(&dst).unwrap();
        for f in std::fs::read_dir(src).unwrap().flatten() {
            std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
        }
    }
    dir
}

#[test]
fn self_test_passes_on_shipped_models_and_fixtures() {
    let mut models: Vec<PathBuf> = std::fs::read_dir(root().join("models"))
        .unwrap()
        .flatten()
        .map(|d| d.path().join("model.onnx"))
        .filter(|m| m.exists())
        .collect();
    assert!(models.len() >= 3);
    models.extend(["sigmoid.onnx", "sigmoid-b4.onnx", "uncalibrated.onnx"].map(fixture));
    for model in models {
        let engine = Engine::load(&EngineConfig::cpu(&model)).unwrap();
        let r = engine.self_test().expect("self-test ran at load");
        assert!(r.cases >= 4, "{}: {r}", model.display());
        assert_eq!(r.tolerance, 1e-4, "{}", model.display());
        assert!(r.worst() <= 1e-5, "{}: {r}", model.display());
        assert_eq!(r.providers, ["cpu"]);
    }
}

#[test]
fn perturbed_model_is_refused_naming_output_and_deviation() {
    let patch: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("perturbed-brick.patch.json")).unwrap(),
    )
    .unwrap();
    let mut bytes = std::fs::read(root().join(patch["source"].as_str().unwrap())).unwrap();
    let (offset, count) = (
        patch["offset"].as_u64().unwrap() as usize,
        patch["count"].as_u64().unwrap() as usize,
    );
    let scale = patch["scale"].as_f64().unwrap() as f32;
    for w in bytes[offset..offset + 4 * count].chunks_exact_mut(4) {
        let v = f32::from_le_bytes(w.try_into().unwrap()) * scale;
        w.copy_from_slice(&v.to_le_bytes());
    }
    assert_eq!(
        diffad::model::onnxfile::graph_sha256(&bytes).unwrap(),
        patch["perturbed_sha256"].as_str().unwrap()
    );
    let golden = std::fs::read_to_string(fixture("perturbed-brick.golden.json")).unwrap();
    let dir = staged(
        &bytes,
        Some(&golden),
        Some(&root().join("models/tiles-brick/model.golden")),
    );
    let mut config = EngineConfig::cpu(dir.path().join("model.onnx"));
    let err = Engine::load(&config)
        .err()
        .expect("perturbed model must be refused");
    let EngineError::SelfTest { deviation, .. } = &err else {
        panic!("{err}");
    };
    assert!(deviation.difference > 1e-4, "{err}");
    assert_eq!(deviation.tolerance, 1e-4);
    let text = err.to_string();
    assert!(
        text.contains("model.golden/00.png")
            && text.contains(deviation.output)
            && text.contains("golden")
            && text.contains("difference")
            && text.contains("tolerance 1e-4"),
        "{text}"
    );
    // On the CPU already there is nothing to fall back to.
    config.allow_fallback = true;
    assert!(matches!(
        Engine::load(&config),
        Err(EngineError::SelfTest { .. })
    ));
    // A wide enough tolerance lets it start (and says so in the report).
    config.self_test.tolerance = Some(0.1);
    let engine = Engine::load(&config).unwrap();
    let r = engine.self_test().unwrap();
    assert!(
        r.worst() > 1e-4 && r.tolerance_from == "engine.self_test.tolerance",
        "{r}"
    );
}

#[test]
fn fp16_model_passes_at_fp16_tolerance_and_not_at_a_forced_tight_one() {
    let mut config = EngineConfig::cpu(fixture("tiny-fp16.onnx"));
    let engine = Engine::load(&config).unwrap();
    let r = engine.self_test().unwrap();
    println!("{r}");
    assert_eq!(r.tolerance, 2e-2);
    assert_eq!(r.tolerance_from, "fp16 model default");
    config.self_test.tolerance = Some(1e-7);
    let err = Engine::load(&config).err().expect("1e-7 must refuse");
    assert!(
        matches!(err, EngineError::SelfTest { .. }) && err.to_string().contains("1e-7"),
        "{err}"
    );
}

#[test]
fn missing_or_foreign_goldens_refuse_unless_the_self_test_is_off() {
    let bytes = std::fs::read(fixture("sigmoid.onnx")).unwrap();
    let dir = staged(&bytes, None, None);
    let mut config = EngineConfig::cpu(dir.path().join("model.onnx"));
    let err = Engine::load(&config).err().expect("no goldens: refused");
    assert!(matches!(err, EngineError::GoldenMissing { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("model.golden.json")
            && text.contains("python -m exporter export")
            && text.contains("engine.self_test.enabled = false"),
        "{text}"
    );
    config.self_test.enabled = false;
    let engine = Engine::load(&config).unwrap();
    assert!(engine.self_test().is_none());

    // Goldens of another graph.
    let other = std::fs::read_to_string(fixture("sigmoid-b4.golden.json")).unwrap();
    let dir = staged(&bytes, Some(&other), None);
    let config = EngineConfig::cpu(dir.path().join("model.onnx"));
    let err = Engine::load(&config)
        .err()
        .expect("foreign goldens: refused");
    assert!(matches!(err, EngineError::GoldenForeign { .. }), "{err}");
    assert!(err.to_string().contains("belong to another model"), "{err}");

    // A golden image that is gone is named.
    let own = std::fs::read_to_string(fixture("sigmoid.golden.json"))
        .unwrap()
        .replace("sigmoid.golden/", "model.golden/");
    let dir = staged(&bytes, Some(&own), None);
    let err = Engine::load(&EngineConfig::cpu(dir.path().join("model.onnx")))
        .err()
        .unwrap();
    assert!(err.to_string().contains("model.golden/00.png"), "{err}");
}

#[test]
fn manifest_tolerance_applies_unless_the_board_file_sets_one() {
    // sigmoid-tol's goldens are 0.01 off in score; its manifest allows 0.05.
    let mut config = EngineConfig::cpu(fixture("sigmoid-tol.onnx"));
    let engine = Engine::load(&config).unwrap();
    let r = engine.self_test().unwrap();
    assert_eq!(r.tolerance, 0.05);
    assert_eq!(r.tolerance_from, "manifest self_test.tolerance");
    assert!((r.max_deviation[0] - 0.01).abs() < 1e-6, "{r}");
    config.self_test.tolerance = Some(1e-3);
    let err = Engine::load(&config).err().expect("board tolerance wins");
    assert!(err.to_string().contains("score"), "{err}");
    // Same graph as sigmoid.onnx, another manifest: the graph hash ignores metadata.
    let hash = |name: &str| {
        diffad::model::onnxfile::graph_sha256(&std::fs::read(fixture(name)).unwrap()).unwrap()
    };
    assert_eq!(hash("sigmoid-tol.onnx"), hash("sigmoid.onnx"));
    assert_ne!(
        std::fs::read(fixture("sigmoid-tol.onnx")).unwrap(),
        std::fs::read(fixture("sigmoid.onnx")).unwrap()
    );
}
