//! The line simulation with the real reference model in the loop: 300 parts from the simulated
//! conveyor (brick photograph, x ≥ 384), scored by ONNX Runtime, on the virtual clock.

mod common;

use std::collections::HashMap;

use common::{root, run_line, sim_setup};
use diffad::clock::MS;
use diffad::events::Outcome;
use diffad::stages::engine::{Engine, EngineConfig};
use diffad::stages::inspect::EngineInspector;

#[test]
fn three_hundred_parts_through_the_real_model() {
    let photo = root().join("target/tiles/photos/brick.png");
    assert!(
        photo.exists(),
        "{} missing: run scripts/texture-photos (scripts/test does)",
        photo.display()
    );
    let mut setup = sim_setup(300);
    setup.camera.sim.photo = Some(photo);
    let model = root().join("models/tiles-brick/model.onnx");
    let run = run_line(
        &setup,
        |_| {
            Box::new(
                EngineInspector::new(
                    Engine::load(&EngineConfig::cpu(&model)).unwrap(),
                    None,
                    None,
                )
                .unwrap(),
            )
        },
        None,
        None,
    );
    let s = &run.summary;
    println!("{s}");

    // One outcome per part; nothing failed safe, since virtual time waits for the engine.
    let parts = run.parts();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for p in &parts {
        *seen.entry(p.part).or_default() += 1;
    }
    assert_eq!(seen.len(), 300);
    assert!(seen.values().all(|&n| n == 1));
    assert!(s.invariant_ok, "{s}");
    assert_eq!(s.counters.passes + s.counters.rejects, 300, "{s}");
    assert_eq!(
        s.counters.fault_rejects + s.counters.inspect_errors,
        0,
        "{s}"
    );

    // Verdicts follow the model's scores and threshold, and every reject lands on time.
    for p in &parts {
        let score = p.score.expect("scored");
        assert!(score.is_finite() && (0.0..=1.0).contains(&score), "{p:?}");
        let rejected = matches!(p.outcome, Outcome::Reject);
        assert_eq!(rejected, score >= p.threshold, "{p:?}");
    }
    let deadlines: HashMap<u64, u64> = parts.iter().map(|p| (p.part, p.deadline_ns)).collect();
    let rejects = run.rejects();
    assert_eq!(rejects.len() as u64, s.counters.rejects);
    for r in &rejects {
        assert_eq!(r.scheduled_ns, deadlines[&r.part]);
        assert!(r.actual_ns.abs_diff(r.scheduled_ns) <= 2 * MS, "{r:?}");
    }

    // The model sees the painted defects: defective tiles score higher on average.
    let mean = |want: bool| {
        let v: Vec<f64> = parts
            .iter()
            .filter(|p| p.frame.defective == Some(want))
            .map(|p| p.score.unwrap() as f64)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(
        mean(true) > mean(false),
        "defective mean {} vs good mean {}",
        mean(true),
        mean(false)
    );
}

/// Every survey recipe shipped under models/ (brick-*) runs through the unchanged line: one
/// outcome per part, none failed safe; the sampler recipe at the step count it was calibrated at.
#[test]
fn every_recipe_model_runs_the_line() {
    let photo = root().join("target/tiles/photos/brick.png");
    assert!(
        photo.exists(),
        "{} missing: run scripts/texture-photos",
        photo.display()
    );
    let mut models: Vec<_> = std::fs::read_dir(root().join("models"))
        .unwrap()
        .flatten()
        .map(|d| d.path().join("model.onnx"))
        .filter(|m| m.exists())
        .collect();
    models.sort();
    let mut methods = Vec::new();
    for model in models {
        let mut config = EngineConfig::cpu(&model);
        let manifest = diffad::model::manifest::Manifest::read(&model).unwrap();
        if manifest.method == "diffusionad" {
            continue;
        }
        config.steps = manifest.calibrated_steps();
        let mut setup = sim_setup(40);
        setup.camera.sim.photo = Some(photo.clone());
        let engine = Engine::load(&config).unwrap();
        let threshold = engine.manifest().threshold.as_ref().map(|t| t.value);
        assert!(threshold.is_some(), "{}: not calibrated", model.display());
        let run = run_line(
            &setup,
            move |_| Box::new(EngineInspector::new(engine, None, None).unwrap()),
            None,
            None,
        );
        let s = &run.summary;
        let parts = run.parts();
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for p in &parts {
            *seen.entry(p.part).or_default() += 1;
        }
        assert_eq!(seen.len(), 40, "{}: {s}", model.display());
        assert!(seen.values().all(|&n| n == 1), "{}", model.display());
        assert!(s.invariant_ok, "{}: {s}", model.display());
        assert_eq!(
            s.counters.passes + s.counters.rejects,
            40,
            "{}: {s}",
            model.display()
        );
        assert_eq!(
            s.counters.fault_rejects + s.counters.inspect_errors,
            0,
            "{}: {s}",
            model.display()
        );
        methods.push(manifest.method);
    }
    methods.sort();
    methods.dedup();
    assert_eq!(
        methods,
        ["advrad", "anoddpm", "dte"],
        "recipes shipped under models/"
    );
}
