//! The silent paths closed (issue #13): the real binary on hostile inputs. A NaN or
//! out-of-range score is an inspection error (`infer`, `eval` fail naming image and model; `run`
//! fail-safe rejects), a threshold outside the model's score range is refused, `eval` refuses
//! unreadable images and masks of another size, `check-config` checks the files and pins it
//! names, and an image smaller than the model is not upscaled without being asked to.
//!
//! `hostile.onnx` (tests/fixtures/make_fixtures.py) is the 16×16 sigmoid fixture except that a
//! black pixel maps to NaN and a white one to −3.27, below the [0, 1] score range.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::root;

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn diffad(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(args)
        .args(paths)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn grey(path: &Path, size: u32, value: u8) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    image::GrayImage::from_pixel(size, size, image::Luma([value]))
        .save(path)
        .unwrap();
}

/// `infer --json` lines by image file name.
fn infer_lines(out: &Output) -> std::collections::HashMap<String, serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            let name = Path::new(v["image"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, v)
        })
        .collect()
}

#[test]
fn infer_fails_naming_image_and_model_on_a_nan_or_out_of_range_score() {
    let dir = tempfile::tempdir().unwrap();
    for (name, v) in [("black.png", 0), ("grey.png", 128), ("white.png", 255)] {
        grey(&dir.path().join(name), 16, v);
    }
    let out = diffad(
        &["infer", "--json", "--model"],
        &[&fixture("hostile.onnx"), dir.path()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = infer_lines(&out);
    let black = lines["black.png"]["error"].as_str().expect("black: error");
    assert!(
        black.contains("black.png")
            && black.contains("hostile.onnx")
            && black.contains("not a finite number"),
        "{black}"
    );
    let white = lines["white.png"]["error"].as_str().expect("white: error");
    assert!(
        white.contains("white.png")
            && white.contains("hostile.onnx")
            && white.contains("outside the model's score range [0, 1]"),
        "{white}"
    );
    assert_eq!(lines["grey.png"]["verdict"], "reject", "0.623 ≥ 0.6");
    assert!(stderr(&out).contains("2 image(s) could not be scored"));

    // Text output: no `pass NaN` line.
    let out = diffad(
        &["infer", "--model"],
        &[&fixture("hostile.onnx"), &dir.path().join("black.png")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("error"), "{}", stdout(&out));
}

#[test]
fn eval_fails_naming_images_whose_score_is_nan() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    for i in 0..3 {
        grey(&d.join(format!("test/good/{i}.png")), 16, 100 + i);
    }
    grey(&d.join("test/hole/000.png"), 16, 200);
    grey(&d.join("ground_truth/hole/000_mask.png"), 16, 255);
    grey(&d.join("test/hole/001.png"), 16, 0);
    grey(&d.join("ground_truth/hole/001_mask.png"), 16, 255);
    let out = diffad(
        &["eval", "--json", "--model"],
        &[&fixture("hostile.onnx"), Path::new("--dataset"), d],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("hole/001.png")
            && err.contains("hostile.onnx")
            && err.contains("not a finite number")
            && err.contains("1 of 5 test images"),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "no report: {}", stdout(&out));
}

#[test]
fn eval_fails_on_unreadable_images_and_on_masks_of_another_size() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    for i in 0..2 {
        grey(&d.join(format!("test/good/{i}.png")), 32, 60 + i);
    }
    grey(&d.join("test/hole/000.png"), 32, 250);
    grey(&d.join("ground_truth/hole/000_mask.png"), 32, 255);
    let eval = || {
        diffad(
            &["eval", "--json", "--model"],
            &[&fixture("sigmoid.onnx"), Path::new("--dataset"), d],
        )
    };
    let out = eval();
    assert!(out.status.success(), "{}", stderr(&out));

    std::fs::write(d.join("test/good/broken.png"), b"\x89PNG truncated").unwrap();
    let out = eval();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("broken.png") && err.contains("1 of 4"),
        "{err}"
    );
    std::fs::remove_file(d.join("test/good/broken.png")).unwrap();

    // A 16×16 mask for a 32×32 image would be stretched over it: refused, naming both sizes.
    grey(&d.join("ground_truth/hole/000_mask.png"), 16, 255);
    let out = eval();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("000_mask.png") && err.contains("16×16") && err.contains("32×32"),
        "{err}"
    );
}

/// A board file in `dir` for `model` with extra sections `rest`.
fn board(dir: &Path, model: &Path, rest: &str) -> PathBuf {
    let path = dir.join("board.toml");
    std::fs::write(
        &path,
        format!(
            "[board]\nname = \"t\"\n[engine]\nmodel = \"{}\"\n[gpio]\nsim = true\n[supervisor]\nlisten = \"\"\n{rest}\n",
            model.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_threshold_outside_the_score_range_is_refused_by_check_config_run_and_infer() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("models/tiles-brick/model.onnx");
    let path = board(dir.path(), &model, "[line]\nparts = 4\nthreshold = 5.0\n");
    for cmd in [&["check-config"][..], &["run", "--quiet", "--config"][..]] {
        let out = diffad(cmd, &[&path]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(
            err.contains("`line.threshold`: 5.0 is outside the model's score range [0, 1]")
                && err.contains("board.toml"),
            "{cmd:?}: {err}"
        );
    }
    grey(&dir.path().join("part.png"), 128, 90);
    let out = diffad(
        &["infer", "--threshold", "5", "--model"],
        &[&model, &dir.path().join("part.png")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--threshold 5.0 is outside the model's score range [0, 1]"),
        "{err}"
    );
}

#[test]
fn check_config_names_missing_files_and_colliding_pins() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let check = |path: &Path| {
        let out = diffad(&["check-config"], &[path]);
        (out.status.code(), stderr(&out), stdout(&out))
    };
    let (code, err, out) = check(&board(d, &fixture("sigmoid.onnx"), ""));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ok:"), "{out}");

    let path = board(
        d,
        &d.join("gone.onnx"),
        "[camera.sim]\nphoto = \"photos/brick.png\"\n[mqtt]\nusername = \"u\"\npassword_file = \"mqtt.pw\"\n",
    );
    let (code, err, out) = check(&path);
    assert_eq!(code, Some(2), "{err}");
    assert!(!out.contains("ok:"), "{out}");
    for (key, file) in [
        ("`engine.model`", "gone.onnx does not exist"),
        ("`camera.sim.photo`", "photos/brick.png does not exist"),
        ("`mqtt.password_file`", "mqtt.pw does not exist"),
    ] {
        assert!(err.contains(key) && err.contains(file), "{key}: {err}");
    }

    let path = board(
        d,
        &fixture("sigmoid.onnx"),
        "[camera]\nsource = \"replay\"\n[camera.replay]\ndir = \"images\"\n",
    );
    let (code, err, _) = check(&path);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`camera.replay.dir`") && err.contains("images does not exist"),
        "{err}"
    );
    // Without golden outputs the self-test cannot run: that is named too.
    std::fs::copy(fixture("sigmoid.onnx"), d.join("bare.onnx")).unwrap();
    let (code, err, _) = check(&board(d, &d.join("bare.onnx"), ""));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bare.golden.json does not exist")
            && err.contains("engine.self_test.enabled = false"),
        "{err}"
    );

    // `reject` and `ready` on one line.
    let path = d.join("pins.toml");
    std::fs::write(
        &path,
        format!(
            "[board]\nname = \"t\"\n[engine]\nmodel = \"{}\"\n[gpio]\nsim = false\nchip = \"tegra234-gpio\"\nreject = {{ name = \"PAC.06\" }}\nready = {{ name = \"PAC.06\" }}\n",
            fixture("sigmoid.onnx").display()
        ),
    )
    .unwrap();
    let (code, err, _) = check(&path);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`gpio.ready.name`") && err.contains("gpio.reject"),
        "{err}"
    );
}

#[test]
fn an_image_smaller_than_the_model_is_refused_unless_upscaling_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.png");
    grey(&tiny, 1, 200);
    let out = diffad(&["infer", "--model"], &[&fixture("sigmoid.onnx"), &tiny]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("tiny.png")
            && text.contains("1×1")
            && text.contains("16×16")
            && text.contains("--allow-upscale"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["infer", "--allow-upscale", "--model"])
        .arg(fixture("sigmoid.onnx"))
        .arg(&tiny)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("reject"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("tiny.png: 1×1 is upscaled"),
        "{}",
        stderr(&out)
    );

    // On the line: a simulated frame smaller than the model is refused before the start.
    let path = board(
        dir.path(),
        &fixture("sigmoid-b4.onnx"),
        "[camera.sim]\ntile = 64\n",
    );
    let out = diffad(&["check-config"], &[&path]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`camera.sim.tile`")
            && err.contains("64×64")
            && err.contains("128×128")
            && err.contains("camera.allow_upscale"),
        "{err}"
    );
    let path = board(
        dir.path(),
        &fixture("sigmoid-b4.onnx"),
        "[camera]\nallow_upscale = true\n[camera.sim]\ntile = 64\n",
    );
    let out = diffad(&["check-config"], &[&path]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn run_fail_safe_rejects_parts_whose_score_is_nan_or_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    for (name, v) in [("a.png", 0), ("b.png", 128), ("c.png", 255), ("d.png", 20)] {
        grey(&images.join(name), 16, v);
    }
    let path = board(
        dir.path(),
        &fixture("hostile.onnx"),
        "[camera]\nsource = \"replay\"\n[camera.replay]\ndir = \"images\"\n[line]\nparts = 4\npart_rate_hz = 20\n",
    );
    let summary = dir.path().join("summary.json");
    let out = diffad(
        &["run", "--quiet", "--config"],
        &[&path, Path::new("--summary-json"), &summary],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["parts"], 4, "{s}");
    assert_eq!(s["inspect_errors"], 2, "black (NaN) and white (−3.27): {s}");
    assert_eq!(s["fault_rejects"], 2, "{s}");
    assert_eq!(s["passes"], 1, "d.png: 0.52 < 0.6: {s}");
    assert_eq!(s["rejects"], 1, "b.png: 0.62 ≥ 0.6: {s}");
}

#[test]
fn check_config_refuses_step_counts_the_model_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("models/tiles-brick/model.onnx", "5", "has no sampler steps"),
        ("tests/fixtures/anoddpm-cal.onnx", "41", "at most 40"),
        (
            "tests/fixtures/anoddpm-cal.onnx",
            "2",
            "was calibrated at 4",
        ),
    ];
    for (model, steps, want) in cases {
        let path = board(dir.path(), &root().join(model), "");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("[gpio]", &format!("steps = {steps}\n[gpio]"));
        std::fs::write(&path, text).unwrap();
        let out = diffad(&["check-config"], &[&path]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{model} {steps}: {err}");
        assert!(
            err.contains("`engine.steps`") && err.contains(want),
            "{model} {steps}: {err}"
        );
    }
}

#[test]
fn run_takes_a_sampler_model_and_its_step_count_from_the_board_or_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    for (name, v) in [("a.png", 60), ("b.png", 128), ("c.png", 200)] {
        grey(&images.join(name), 32, v);
    }
    let path = board(
        dir.path(),
        &fixture("anoddpm-cal.onnx"),
        "[camera]\nsource = \"replay\"\n[camera.replay]\ndir = \"images\"\n[line]\nparts = 3\npart_rate_hz = 20\n",
    );
    let summary = dir.path().join("summary.json");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--quiet"];
        args.extend_from_slice(extra);
        args.push("--config");
        diffad(&args, &[&path, Path::new("--summary-json"), &summary])
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["parts"], 3, "{s}");
    assert_eq!(
        s["passes"].as_u64().unwrap() + s["rejects"].as_u64().unwrap(),
        3,
        "{s}"
    );
    assert_eq!(s["fault_rejects"], 0, "{s}");
    // Another step count than the threshold's is refused before the line starts.
    let out = run(&["--steps", "2"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`engine.steps`") && stderr(&out).contains("was calibrated at 4"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn infer_scores_a_folder_of_folders_whole_and_refuses_one_with_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("defects-calib");
    // Same file names in two kinds: each gets its own line and its own heatmap.
    for kind in ["good", "scratch"] {
        grey(&data.join(kind).join("000.png"), 128, 120);
        grey(&data.join(kind).join("001.png"), 128, 130);
    }
    let maps = dir.path().join("maps");
    let out = diffad(
        &["infer", "--json", "--model"],
        &[
            &fixture("sigmoid-b4.onnx"),
            &data,
            Path::new("--heatmaps"),
            &maps,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 4, "{}", stdout(&out));
    let mut written: Vec<String> = std::fs::read_dir(&maps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            "good_000_heatmap.png",
            "good_001_heatmap.png",
            "scratch_000_heatmap.png",
            "scratch_001_heatmap.png"
        ]
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    let out = diffad(
        &["infer", "--model"],
        &[&fixture("sigmoid-b4.onnx"), &empty],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds no PNG or JPEG image"),
        "{}",
        stderr(&out)
    );
}
