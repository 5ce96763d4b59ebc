//! The line simulation with the real engine (ONNX Runtime, `models/tiles-brick/model.onnx`)
//! instead of the stand-in inspector. Inference takes no virtual time on the simulated clock, so
//! every verdict is in time; this checks the seam, not the speed (`scripts/bench` does that).

mod common;

use common::{run_line, sim_setup};
use diffad::clock::MS;
use diffad::engine::{Engine, EngineConfig};
use diffad::inspect::EngineInspector;
use std::path::Path;

#[test]
fn real_model_on_the_simulated_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let model = root.join("models/tiles-brick/model.onnx");
    assert!(model.exists(), "{} missing", model.display());
    let mut setup = sim_setup(40);
    // The brick photo when `scripts/demo` has cut it, else the procedural texture.
    let photo = root.join("target/tiles/photos/brick.png");
    if photo.exists() {
        setup.camera.sim.photo = Some(photo);
    }
    let run = run_line(
        &setup,
        move |_clock| {
            let engine = Engine::load(&EngineConfig::cpu(&model)).expect("model loads");
            Box::new(EngineInspector::new(engine, None, None).expect("calibrated model"))
        },
        None,
        None,
    );
    let s = &run.summary;
    println!("{s}");
    assert_eq!(s.counters.triggers, 40);
    assert!(s.invariant_ok);
    assert_eq!(
        s.counters.fault_rejects + s.counters.inspect_errors,
        0,
        "{s}"
    );
    let parts = run.parts();
    assert_eq!(parts.len(), 40);
    let scores: Vec<f32> = parts.iter().map(|p| p.score.expect("scored")).collect();
    assert!(
        scores
            .iter()
            .all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
        "{scores:?}"
    );
    assert!(
        scores.iter().any(|&v| v != scores[0]),
        "the model sees different tiles"
    );
    for r in run.rejects() {
        assert!(r.actual_ns.abs_diff(r.scheduled_ns) <= 2 * MS);
    }
}
