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

/// One line of `parts` parts from `photo` under the shipped `tiles-MODEL`, with the drift watch
/// over `window` parts and, if given, a reject-rate limit.
fn drift_run(
    model: &str,
    photo: &str,
    parts: u64,
    window: usize,
    rate: Option<f64>,
) -> common::Run {
    let photo = root().join(format!("target/tiles/photos/{photo}.png"));
    assert!(
        photo.exists(),
        "{} missing: run scripts/texture-photos",
        photo.display()
    );
    let mut setup = sim_setup(parts);
    setup.camera.sim.photo = Some(photo);
    setup.drift.window = window;
    setup.drift.max_reject_rate = rate;
    let model = root().join(format!("models/tiles-{model}/model.onnx"));
    run_line(
        &setup,
        |_| {
            let engine = Engine::load(&EngineConfig::cpu(&model)).unwrap();
            Box::new(EngineInspector::new(engine, None, None).unwrap())
        },
        None,
        None,
    )
}

/// The drift watch with the shipped models: gravel parts under the brick model (another
/// material) raise `score_drift` and `reject_rate` once each, at the part that fills the window,
/// and keep them raised; grass parts, 20 % of them defective, under the grass model raise neither.
#[test]
fn the_drift_watch_sees_parts_unlike_the_calibration() {
    let window = 100;
    let wrong = drift_run("brick", "gravel", 160, window, Some(0.5));
    let mut parts = wrong.parts();
    parts.sort_by_key(|p| p.part);
    let filled = parts[window - 1].part;
    for code in ["score_drift", "reject_rate"] {
        let a = wrong.alarms(code);
        assert_eq!(a.len(), 1, "{code}: {a:?}");
        assert!(a[0].active, "{a:?}");
        assert_eq!(a[0].part, Some(filled), "{a:?}");
    }
    let drift = &wrong.alarms("score_drift")[0].message;
    assert!(
        drift.contains(&format!("median score of the last {window} parts"))
            && drift.contains("std above the calibration's good median")
            && drift.contains("recalibrate"),
        "{drift}"
    );
    let rate = &wrong.alarms("reject_rate")[0].message;
    assert!(
        rate.contains("more than drift.max_reject_rate 50.0 %"),
        "{rate}"
    );
    // The verdicts themselves are untouched by the watch.
    assert_eq!(
        wrong.summary.counters.passes + wrong.summary.counters.rejects,
        160
    );
    // The last window's figures ride on the heartbeats and end in the summary.
    let figures = wrong.summary.drift.expect("the window filled");
    assert_eq!(figures.window, window);
    assert!(figures.shift_std.unwrap() > 0.5, "{figures}");
    assert!(figures.reject_rate > 0.5, "{figures}");
    let beats: Vec<_> = wrong
        .records
        .iter()
        .filter_map(|r| match &r.event {
            diffad::events::Event::Heartbeat(h) => Some(h),
            _ => None,
        })
        .collect();
    assert!(
        beats.first().is_some_and(|h| h.drift.is_none()),
        "not before the window is full"
    );
    assert_eq!(
        beats.last().and_then(|h| h.drift.as_deref()),
        Some(&figures)
    );
    assert!(wrong
        .summary
        .to_string()
        .contains(&format!("drift: {figures}")));

    let own = drift_run("grass", "grass", 160, window, Some(0.5));
    assert!(own.summary.counters.triggers == 160 && own.summary.invariant_ok);
    for code in ["score_drift", "reject_rate"] {
        assert!(
            own.alarms(code).is_empty(),
            "{code}: {:?}",
            own.alarms(code)
        );
    }
    let figures = own.summary.drift.expect("the window filled");
    assert!(figures.shift_std.unwrap().abs() < 0.5, "{figures}");
}
