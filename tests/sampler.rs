//! The runtime's sampler (AnoDDPM) against the PyTorch reference sampler, through real ONNX
//! Runtime: parity at every step count the goldens hold, the step-count knob, and refusals.
//! Fixtures: tests/fixtures/make_recipe_fixtures.py.

mod common;

use common::root;

use std::path::PathBuf;
use std::process::Command;

use diffad::stages::engine::{Engine, EngineConfig, EngineError};

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn config(name: &str, steps: Option<usize>) -> EngineConfig {
    let mut c = EngineConfig::cpu(fixture(name));
    c.steps = steps;
    c
}

#[test]
fn the_sampler_matches_the_pytorch_reference_at_every_step_count() {
    for (name, default, more) in [
        ("anoddpm-ddpm.onnx", 4, [2, 8]),
        ("anoddpm-ddim.onnx", 3, [1, 6]),
    ] {
        let mut engine = Engine::load(&config(name, None)).unwrap();
        let r = engine.self_test().expect("self-test ran at load").clone();
        assert_eq!(r.cases, 4, "{name}");
        assert!(r.worst() <= 1e-4, "{name}: {r}");
        assert_eq!(engine.sampler_steps(), Some(default), "{name}");
        let checked = engine.check_more_steps().unwrap();
        let steps: Vec<usize> = checked.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, more, "{name}");
        for (s, devs) in &checked {
            assert!(
                devs.iter().all(|d| *d <= 1e-4),
                "{name} at {s} steps: {devs:?}"
            );
        }
        assert_eq!(
            engine.sampler_steps(),
            Some(default),
            "{name}: the check leaves the step count as it was"
        );
    }
}

#[test]
fn the_step_count_is_the_number_of_network_calls_and_changes_the_result() {
    let mut scores = Vec::new();
    for steps in [1, 2, 8] {
        let mut engine = Engine::load(&config("anoddpm-ddpm.onnx", Some(steps))).unwrap();
        assert_eq!(engine.sampler_steps(), Some(steps));
        assert_eq!(engine.calls_per_batch(), steps);
        let len = engine.image_len();
        for (i, v) in engine.input_mut()[..len].iter_mut().enumerate() {
            *v = ((i * 37 % 101) as f32 / 50.0) - 1.0;
        }
        let before = engine.session_calls();
        let out = engine.run(1).unwrap();
        assert_eq!(engine.session_calls() - before, steps as u64);
        let (score, map) = (out[0].score, &out[0].map);
        assert!(score.is_finite() && (0.0..=1.0).contains(&score), "{score}");
        assert!(map.iter().all(|v| (0.0..=1.0).contains(v)));
        scores.push(score);
    }
    assert!(
        scores[0] != scores[1] && scores[1] != scores[2],
        "{scores:?}"
    );
}

#[test]
fn a_manifest_naming_another_noise_seed_fails_the_self_test() {
    let err = Engine::load(&config("anoddpm-seed.onnx", None))
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::SelfTest { .. }), "{err}");
    assert!(err.to_string().contains("anoddpm-seed.onnx"), "{err}");
}

#[test]
fn step_counts_are_refused_where_they_cannot_apply() {
    let err = Engine::load(&config("anoddpm-ddpm.onnx", Some(41)))
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::Steps { .. }), "{err}");
    assert!(err.to_string().contains("engine.steps") && err.to_string().contains("t_start = 40"));

    let err = Engine::load(&config("sigmoid.onnx", Some(5)))
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::Steps { .. }), "{err}");
    assert!(err.to_string().contains("no sampler steps"), "{err}");

    let mut engine = Engine::load(&config("anoddpm-ddim.onnx", None)).unwrap();
    assert!(engine.set_sampler_steps(31).is_err());
    assert_eq!(engine.sampler_steps(), Some(3));
}

#[test]
fn infer_and_bench_take_the_step_count() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.png");
    image::GrayImage::from_fn(32, 32, |x, y| image::Luma([((x * 7 + y * 3) % 256) as u8]))
        .save(&img)
        .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let model = fixture("anoddpm-ddpm.onnx");
    let model = model.to_str().unwrap();
    let img = img.to_str().unwrap();
    let score = |steps: &str| {
        let (code, out, err) = run(&[
            "infer",
            "--json",
            "--threshold",
            "0.5",
            "--steps",
            steps,
            "--model",
            model,
            img,
        ]);
        assert_eq!(code, Some(0), "{err}");
        let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        v["score"].as_f64().unwrap()
    };
    assert_ne!(score("2"), score("8"));
    let (code, _, err) = run(&[
        "infer",
        "--threshold",
        "0.5",
        "--steps",
        "99",
        "--model",
        model,
        img,
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("engine.steps"), "{err}");

    let (code, out, err) = run(&[
        "bench",
        "--iterations",
        "3",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--model",
        model,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("network calls per image 2"), "{out}");

    let (code, out, err) = run(&["inspect", model]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("sampler:      4 steps by default")
            && out.contains("at 2 steps")
            && out.contains("8 steps"),
        "{out}"
    );
}

#[test]
fn a_threshold_holds_only_at_the_step_count_it_was_calibrated_at() {
    use diffad::stages::inspect::EngineInspector;
    let at = |steps: Option<usize>, threshold: Option<f32>| {
        EngineInspector::new(
            Engine::load(&config("anoddpm-cal.onnx", steps)).unwrap(),
            None,
            threshold,
        )
    };
    assert!(at(None, None).is_ok());
    assert!(at(Some(4), None).is_ok());
    let err = at(Some(2), None).err().unwrap().to_string();
    assert!(
        err.contains("calibrated at 4 sampler steps but runs 2") && err.contains("--steps 2"),
        "{err}"
    );
    assert!(
        at(Some(2), Some(0.4)).is_ok(),
        "an explicit threshold is the user's call"
    );
}
