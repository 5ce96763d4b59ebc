//! The inference checks: ONNX Runtime and its GPU providers, the model and its self-test, and
//! the board keys that must fit the model.

use super::Check;
use crate::line::board::BoardConfig;
use crate::stages::engine::{Engine, EngineConfig};

/// The library, its version, and each GPU provider the board file lists.
pub(super) fn check_ort(engine: Option<&EngineConfig>) -> Vec<Check> {
    let lib = match crate::model::ortlib::load() {
        Ok(lib) => lib,
        Err(e) => {
            let what = match &e {
                crate::model::ortlib::OrtLibError::NotFound { .. } => "not found".to_string(),
                crate::model::ortlib::OrtLibError::Load { path, .. } => {
                    format!("{path} did not load")
                }
            };
            let mut checks = vec![Check::fail("onnxruntime", what, e.to_string())];
            for p in engine.map(|e| e.providers.as_slice()).unwrap_or_default() {
                if p != "cpu" {
                    checks.push(Check::skip(&format!("provider {p}"), "needs ONNX Runtime"));
                }
            }
            return checks;
        }
    };
    let mut checks = vec![Check::pass(
        "onnxruntime",
        format!("{} ({})", lib.version, lib.path.display()),
    )];
    use ort::ep::ExecutionProvider;
    for (name, available) in [
        ("tensorrt", ort::ep::TensorRT::is_available()),
        ("cuda", ort::ep::CUDA::is_available()),
    ] {
        let wanted = engine.is_some_and(|e| e.providers.iter().any(|p| p == name));
        let label = format!("provider {name}");
        let ok = matches!(available, Ok(true));
        let what = match &available {
            Ok(true) => "in this ONNX Runtime build".to_string(),
            Ok(false) => "not in this ONNX Runtime build".to_string(),
            Err(e) => format!("cannot be asked: {e}"),
        };
        checks.push(match (wanted, ok) {
            (true, true) => Check::pass(&label, what),
            (true, false) => Check::fail(
                &label,
                format!("{what}; engine.providers lists it"),
                "point ORT_DYLIB_PATH at a GPU build of ONNX Runtime (on a Jetson: onnxruntime-gpu \
                 for your JetPack, see `scripts/setup`), or remove it from engine.providers",
            ),
            (false, _) => Check::skip(&label, format!("{what} (not listed in engine.providers)")),
        });
    }
    checks
}

/// The manifest (read without ONNX Runtime), then a session on the configured providers and
/// the golden self-test in it, then the board keys that depend on the model.
pub(super) fn check_model(b: &BoardConfig, ort_ok: bool) -> Vec<Check> {
    let model = &b.engine.model;
    let manifest = match crate::model::manifest::Manifest::read(model) {
        Ok(m) => m,
        Err(e) => {
            let fix = if model.exists() {
                "re-export it with `python -m exporter export`"
            } else {
                "copy the model (with NAME.golden.json and NAME.golden/) there (`scripts/deploy`), or fix engine.model"
            };
            return vec![
                Check::fail("model", format!("{}: {e}", model.display()), fix),
                Check::skip("self-test", "needs the model"),
            ];
        }
    };
    let mut checks = vec![Check::pass(
        "model",
        format!("{} ({})", manifest.name, model.display()),
    )];
    checks.push(check_signature(b));
    checks.push(if !ort_ok {
        Check::skip("self-test", "needs ONNX Runtime")
    } else {
        self_test(&b.engine)
    });
    let covered = [
        "engine.model",
        "camera.sim.photo",
        "camera.replay.dir",
        "camera.v4l2.device",
        "archive.dir",
    ];
    let problems: Vec<String> = b
        .check_deployment()
        .into_iter()
        .filter(|p| !covered.contains(&p.key.as_str()))
        .map(|p| p.to_string())
        .collect();
    checks.push(if problems.is_empty() {
        Check::pass("board vs model", "threshold and region fit the model")
    } else {
        Check::fail(
            "board vs model",
            problems.join("; "),
            "change the keys named (`diffad check-config FILE` explains each)",
        )
    });
    checks
}

/// The model's signature under the board's trusted keys; the repository's demo key among them
/// fails on a board with real pins (a production line), where it would prove nothing.
fn check_signature(b: &BoardConfig) -> Check {
    use crate::model::signature;
    let e = &b.engine;
    if e.trusted_keys.is_empty() {
        return Check::skip(
            "signature",
            "no engine.trusted_keys: models are not checked for a signature",
        )
        .needed(false);
    }
    let keys = match signature::load_keys(&e.trusted_keys) {
        Ok(k) => k,
        Err(err) => return Check::fail(
            "signature",
            err.to_string(),
            "install your public key where engine.trusted_keys says (`scripts/deploy --model-key`)",
        ),
    };
    let demo = keys.iter().find(|k| k.is_demo());
    if let (Some(k), false) = (demo, b.setup.gpio.sim) {
        return Check::fail(
            "signature",
            format!(
                "{} is the DEMO key, public in the repository, trusted on a board with real pins: anyone can sign a model it accepts",
                k.path.display()
            ),
            "make your own key (`python -m exporter keygen`), sign your models with it and install its .pub (`scripts/deploy --model-key`)",
        );
    }
    let bytes = match e.read_model(&e.model) {
        Ok(b) => b,
        Err(err) => {
            return Check::fail(
                "signature",
                format!("{}: {err}", e.model.display()),
                "fix engine.model",
            )
        }
    };
    match signature::verify(&e.model, &bytes, &keys) {
        Ok(v) => Check::pass(
            "signature",
            format!(
                "verified by {}{}",
                v.key.display(),
                if v.demo { " (the demo key: fine on a simulated line)" } else { "" }
            ),
        ),
        Err(err) if !e.require_signature && matches!(err, signature::SignatureError::Missing { .. }) => {
            Check::skip("signature", "the model is not signed (engine.require_signature is off)").needed(false)
        }
        Err(err) => Check::fail(
            "signature",
            err.to_string(),
            "sign the model with your key (`python -m exporter sign MODEL --key KEY`), or deploy the one you signed",
        ),
    }
}

/// A session on the configured providers, and the golden self-test run in it.
fn self_test(engine: &EngineConfig) -> Check {
    let mut e = match Engine::load_unchecked(engine) {
        Ok(e) => e,
        Err(err) => {
            return Check::fail(
                "self-test",
                format!("the session did not start: {err}"),
                "see the message; `diffad inspect MODEL` shows what the model needs",
            )
        }
    };
    let off = if engine.self_test.enabled {
        ""
    } else {
        " (engine.self_test.enabled = false: the line would start without it)"
    };
    match e.run_self_test() {
        Ok(r) => Check::pass("self-test", format!("{r}{off}")),
        Err(err) => Check::fail(
            "self-test",
            err.to_string(),
            "re-export the model with its goldens, or run it on the provider it was checked on",
        ),
    }
}
