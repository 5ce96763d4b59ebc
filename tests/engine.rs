//! Engine against real ONNX Runtime: refusals, providers, fixture arithmetic, and golden parity
//! with every shipped model.

mod common;

use common::root;

use std::path::PathBuf;
use std::process::Command;

use diffad::engine::{Engine, EngineConfig, EngineError};
use diffad::frame::{Frame, PixelFormat};
use diffad::imagefile;
use diffad::inspect::{EngineInspector, Inspector};
use diffad::manifest::ManifestError;

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
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .arg("inspect")
        .arg(fixture("no-manifest.onnx"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-manifest.onnx"));
}
