//! Board configs: every shipped file is valid; bad files are refused naming the file and the key.

mod common;

use common::root;

use diffad::line::board::{BoardConfig, ConfigError};

#[test]
fn every_shipped_board_config_is_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("board-configs"))
        .unwrap()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let c = BoardConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                c.engine.model.is_absolute()
                    || c.engine.model.starts_with(root().join("board-configs"))
            );
            n += 1;
        }
    }
    assert!(
        n >= 5,
        "desktop-sim plus four Jetson boards expected, found {n}"
    );
}

#[test]
fn desktop_sim_points_at_a_shipped_model() {
    let c = BoardConfig::load(&root().join("board-configs/desktop-sim.toml")).unwrap();
    assert!(c.engine.model.exists(), "{}", c.engine.model.display());
    assert_eq!(c.engine.providers, ["cpu"]);
    assert!(c.setup.gpio.sim);
}

fn refuse(text: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("board.toml");
    std::fs::write(&path, text).unwrap();
    let err = BoardConfig::load(&path).expect_err("must be refused");
    let shown = err.to_string();
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    let err_text = shown.clone();
    match err {
        ConfigError::Invalid { invalid, .. } => (invalid.key, invalid.message),
        ConfigError::Syntax { message, .. } => ("<syntax>".into(), message),
        ConfigError::Io { .. } | ConfigError::Unusable { .. } => panic!("{err_text}"),
    }
}

const BASE: &str = "[board]\nname = \"t\"\n[engine]\nmodel = \"m.onnx\"\n";

#[test]
fn bad_configs_name_the_key() {
    assert_eq!(refuse("[engine]\nmodel = \"m.onnx\"\n").0, "board");
    assert_eq!(refuse("[board]\nname = \"t\"\n").0, "engine");
    assert_eq!(
        refuse(&format!("{BASE}providers = [\"gpu\"]\n")).0,
        "engine.providers[0]"
    );
    assert_eq!(refuse(&format!("{BASE}threads = 2\n")).0, "engine.threads");
    assert_eq!(
        refuse(&format!("{BASE}[camera]\nsource = \"usb\"\n")).0,
        "camera.source"
    );
    assert_eq!(
        refuse(&format!("{BASE}[gpio]\nrejec = {{ name = \"a\" }}\n")).0,
        "gpio.rejec"
    );
    assert_eq!(
        refuse(&format!("{BASE}[gpio]\npulse_ms = 0.0\n")).0,
        "gpio.pulse_ms"
    );
    let (key, msg) = refuse(&format!("{BASE}[line]\nbelt_speed_mm_s = \"fast\"\n"));
    assert_eq!(key, "line.belt_speed_mm_s");
    assert!(msg.contains("expected f64"), "{msg}");
    assert_eq!(
        refuse(&format!("{BASE}[supervisor]\nlisten = \"localhost\"\n")).0,
        "supervisor.listen"
    );
    assert_eq!(refuse(&format!("{BASE}[cameras]\n")).0, "cameras");
    assert_eq!(refuse("[board\n").0, "<syntax>");
}

#[test]
fn self_test_and_tiling_keys_are_named() {
    assert_eq!(
        refuse(&format!("{BASE}[engine.self_test]\ntolerence = 1e-3\n")).0,
        "engine.self_test.tolerence"
    );
    assert_eq!(
        refuse(&format!("{BASE}[engine.self_test]\ntolerance = -1.0\n")).0,
        "engine.self_test.tolerance"
    );
    assert_eq!(
        refuse(&format!("{BASE}[camera.tiling]\nenabled = \"yes\"\n")).0,
        "camera.tiling.enabled"
    );
    assert_eq!(
        refuse(&format!(
            "{BASE}[camera]\nroi = {{ x = 0, y = 0, width = 64, height = 0 }}\n"
        ))
        .0,
        "camera.roi.height"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("board.toml");
    std::fs::write(
        &path,
        format!("{BASE}[engine.self_test]\nenabled = false\ntolerance = 0.05\n[camera]\nroi = {{ x = 4, y = 4, width = 256, height = 128 }}\n[camera.tiling]\nenabled = true\noverlap = 8\n"),
    )
    .unwrap();
    let c = BoardConfig::load(&path).unwrap();
    assert!(!c.engine.self_test.enabled);
    assert_eq!(c.engine.self_test.tolerance, Some(0.05));
    assert!(c.setup.camera.tiling.enabled);
    assert_eq!(c.setup.camera.roi.unwrap().width, 256);
    // Defaults: self-test on, no tiling.
    let c = BoardConfig::load(&root().join("board-configs/desktop-sim.toml")).unwrap();
    assert!(c.engine.self_test.enabled && c.engine.self_test.tolerance.is_none());
    assert!(!c.setup.camera.tiling.enabled && c.setup.camera.roi.is_none());
}
