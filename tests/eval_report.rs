//! `diffad eval --report`: the real binary and the shipped brick model on a small MVTec-style
//! folder cut from the brick photograph (x ≥ 384) with painted defects; every figure is written,
//! decodes, has its size and content, the index lists it, and the numbers behind the figures are
//! the eval's own. Bad input (unwritable folder, empty or one-class dataset, missing font) is a
//! clear error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::root;
use diffad::offline::report::{GRID_COLS, KIND_SIZE, ROC_SIZE, SCORES_SIZE};
use diffad::sources::camera::sim::{paint_defect, Rng, DEFECT_KINDS, EVAL_X0};

const TILE: u32 = 128;

fn model() -> PathBuf {
    root().join("models/tiles-brick/model.onnx")
}

/// `good` tiles and `per_kind` tiles of every simulated defect kind, with masks.
fn make_dataset(dir: &Path, good: u32, per_kind: u32) {
    let photo = root().join("target/tiles/photos/brick.png");
    assert!(
        photo.exists(),
        "{} missing: run scripts/texture-photos (scripts/test does)",
        photo.display()
    );
    let img = image::open(&photo).unwrap().into_luma8();
    let (pw, ph) = img.dimensions();
    let cut = |y: u32, flip: bool| -> image::GrayImage {
        let t = image::imageops::crop_imm(&img, EVAL_X0.min(pw - TILE), y, TILE, TILE).to_image();
        if flip {
            image::imageops::flip_horizontal(&t)
        } else {
            t
        }
    };
    let good_dir = dir.join("test/good");
    std::fs::create_dir_all(&good_dir).unwrap();
    let span = ph - TILE;
    for i in 0..good {
        let y = (i / 2) * span / (good / 2).max(1);
        cut(y, i % 2 == 1)
            .save(good_dir.join(format!("{i:03}.png")))
            .unwrap();
    }
    let mut rng = Rng::new(11);
    for kind in DEFECT_KINDS {
        let (t, m) = (
            dir.join("test").join(kind),
            dir.join("ground_truth").join(kind),
        );
        std::fs::create_dir_all(&t).unwrap();
        std::fs::create_dir_all(&m).unwrap();
        for i in 0..per_kind {
            let base = cut(rng.int(0, span), rng.f64() < 0.5);
            let mut data = base.into_raw();
            let mask = paint_defect(&mut data, TILE, kind, &mut rng);
            image::GrayImage::from_raw(TILE, TILE, data)
                .unwrap()
                .save(t.join(format!("{i:03}.png")))
                .unwrap();
            image::GrayImage::from_raw(TILE, TILE, mask)
                .unwrap()
                .save(m.join(format!("{i:03}_mask.png")))
                .unwrap();
        }
    }
}

fn eval(dataset: &Path, report: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["eval", "--json", "--model"])
        .arg(model())
        .arg("--dataset")
        .arg(dataset)
        .arg("--report")
        .arg(report)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Trapezoidal area, computed here rather than with the report's own helper.
fn trapezoid(points: &[serde_json::Value]) -> f64 {
    let p: Vec<(f64, f64)> = points
        .iter()
        .map(|v| (v[0].as_f64().unwrap(), v[1].as_f64().unwrap()))
        .collect();
    p.windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum()
}

/// Decodes, has `size`, and is a picture rather than one flat colour.
fn check_png(path: &Path, size: (u32, u32)) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_rgb8();
    assert_eq!(img.dimensions(), size, "{}", path.display());
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(
        colours.len() > 50,
        "{}: {} colours",
        path.display(),
        colours.len()
    );
    assert!(
        inked * 50 > img.pixels().len(),
        "{}: almost blank",
        path.display()
    );
}

#[test]
fn report_figures_are_written_from_the_evals_own_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("brick-small");
    make_dataset(&data, 6, 4);
    let dir = tmp.path().join("out/report");
    let out = eval(&data, &dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"], 6 + 4 * DEFECT_KINDS.len() as u64);

    let mut pngs = vec![
        ("roc_image.png".to_string(), ROC_SIZE),
        ("roc_pixel.png".to_string(), ROC_SIZE),
        ("scores.png".to_string(), SCORES_SIZE),
    ];
    pngs.extend(
        DEFECT_KINDS
            .iter()
            .map(|k| (format!("kind_{k}.png"), KIND_SIZE)),
    );
    pngs.push(("good_highest.png".to_string(), KIND_SIZE));
    for (name, size) in &pngs {
        check_png(&dir.join(name), *size);
    }
    let written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".png"))
        .collect();
    assert_eq!(written.len(), pngs.len(), "{written:?}");

    // The index links every figure and quotes the eval's summary.
    let index = std::fs::read_to_string(dir.join("index.md")).unwrap();
    for (name, _) in &pngs {
        assert!(index.contains(&format!("]({name})")), "{name} not in index");
    }
    let f4 = |k: &str| format!("{:.4}", report[k].as_f64().unwrap());
    for k in ["image_auroc", "pixel_auroc", "pro"] {
        assert!(
            index.contains(&f4(k)),
            "{k} {} not in index:\n{index}",
            f4(k)
        );
    }

    // The numbers behind the figures are the eval's.
    let fig: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("figures.json")).unwrap()).unwrap();
    let image_auroc = report["image_auroc"].as_f64().unwrap();
    let roc = fig["image_roc"]["points"].as_array().unwrap();
    assert!((trapezoid(roc) - image_auroc).abs() < 1e-9);
    let pixel_auroc = report["pixel_auroc"].as_f64().unwrap();
    assert!((fig["pixel_roc"]["auroc_trapezoid"].as_f64().unwrap() - pixel_auroc).abs() < 1e-6);
    assert!((trapezoid(fig["pixel_roc"]["points"].as_array().unwrap()) - pixel_auroc).abs() < 2e-3);
    let f32_of = |v: &serde_json::Value| v.as_f64().unwrap() as f32;
    assert_eq!(f32_of(&fig["threshold"]), f32_of(&report["threshold"]));
    let sum = |k: &str| -> u64 {
        fig["histogram"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("good"), 6);
    assert_eq!(sum("defective"), 4 * DEFECT_KINDS.len() as u64);
    let scores = fig["scores"].as_array().unwrap();
    // The good panel: the highest-scoring good tiles, descending, the false rejects counted at
    // the eval's threshold (what a newcomer's weak model costs in good parts is seen, not only
    // what it catches).
    let thr = report["threshold"].as_f64().unwrap();
    let mut good: Vec<f64> = scores
        .iter()
        .filter(|s| s["kind"] == "good")
        .map(|s| s["score"].as_f64().unwrap())
        .collect();
    good.sort_by(|a, b| b.total_cmp(a));
    let panel = &fig["good_highest"];
    let shown: Vec<f64> = panel["highest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["score"].as_f64().unwrap())
        .collect();
    assert_eq!(shown, good[..good.len().min(2 * GRID_COLS)].to_vec());
    assert_eq!(
        panel["rejected"].as_u64().unwrap(),
        good.iter().filter(|&&s| s >= thr).count() as u64
    );
    for s in panel["highest"].as_array().unwrap() {
        assert_eq!(
            s["rejected"].as_bool().unwrap(),
            s["score"].as_f64().unwrap() >= thr
        );
    }
    for row in report["kinds"].as_array().unwrap() {
        let kind = row["kind"].as_str().unwrap();
        let of: Vec<f64> = scores
            .iter()
            .filter(|s| s["kind"] == kind)
            .map(|s| s["score"].as_f64().unwrap())
            .collect();
        let mean = of.iter().sum::<f64>() / of.len() as f64;
        assert_eq!(of.len() as u64, row["n"].as_u64().unwrap(), "{kind}");
        assert!(
            (mean - row["mean_score"].as_f64().unwrap()).abs() < 1e-6,
            "{kind}"
        );
        if kind == "good" {
            continue;
        }
        // Best caught: descending, all at or above the threshold; worst missed: ascending.
        let k = &fig["kinds"][kind];
        let get = |key: &str| -> Vec<f64> {
            k[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["score"].as_f64().unwrap())
                .collect()
        };
        let (best, worst) = (get("best_caught"), get("worst_missed"));
        let thr = report["threshold"].as_f64().unwrap();
        assert!(best.windows(2).all(|w| w[0] >= w[1]) && best.iter().all(|&s| s >= thr));
        assert!(worst.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(best.len() + worst.len(), of.len().min(2 * GRID_COLS));
        assert_eq!(
            worst.first().copied(),
            of.iter().copied().reduce(f64::min),
            "{kind}"
        );
    }
}

#[test]
fn report_refuses_bad_input_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    // A report folder below a plain file cannot be made.
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let data = tmp.path().join("one-class");
    make_dataset(&data, 2, 0);
    for kind in DEFECT_KINDS {
        std::fs::remove_dir_all(data.join("test").join(kind)).unwrap();
    }
    let out = eval(&data, &file.join("report"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("plain-file/report"),
        "{}",
        stderr(&out)
    );

    // Only good images: no ROC, no escapes to show.
    let dir = tmp.path().join("r1");
    let out = eval(&data, &dir, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("2 good and 0 defective"),
        "{}",
        stderr(&out)
    );
    let pngs = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    assert_eq!(pngs, 0, "nothing drawn");

    // Defective images without masks: no pixel ROC, and the index says why.
    let no_masks = tmp.path().join("no-masks");
    make_dataset(&no_masks, 2, 1);
    std::fs::remove_dir_all(no_masks.join("ground_truth")).unwrap();
    let dir = tmp.path().join("r4");
    let out = eval(&no_masks, &dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("roc_image.png").exists() && !dir.join("roc_pixel.png").exists());
    let index = std::fs::read_to_string(dir.join("index.md")).unwrap();
    assert!(index.contains("roc_pixel.png not drawn"), "{index}");

    // An empty dataset.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("test/good")).unwrap();
    let out = eval(&empty, &tmp.path().join("r2"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no images under test/<kind>/"),
        "{}",
        stderr(&out)
    );

    // No font: the error names the file and the package.
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .env("DIFFAD_FONT", tmp.path().join("missing.ttf"))
        .args(["eval", "--model"])
        .arg(model())
        .arg("--dataset")
        .arg(&data)
        .arg("--report")
        .arg(tmp.path().join("r3"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("missing.ttf") && err.contains("fonts-dejavu-core"),
        "{err}"
    );
}

/// The trade-off table, and the same data replayed through a line: the sweep's recommended
/// threshold for "escapes <= 10 %" holds on the line, every rejected part has a sidecar saying
/// where it came from, and the summary counts outcomes per defect kind.
#[test]
fn sweep_threshold_replayed_through_a_line_with_traceable_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data, 12, 3);
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["eval", "--sweep", "--model"])
        .arg(model())
        .arg("--dataset")
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains("trade-off (12 good") && text.contains("escapes <= 10%"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["eval", "--json", "--model"])
        .arg(model())
        .arg("--dataset")
        .arg(&data)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let point = report["sweep"]["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["target"] == "escapes<=0.1")
        .expect("an escapes <= 10 % point")
        .clone();
    let threshold = point["threshold"].as_f64().unwrap();

    // Replay the test/ folder itself (not the root) at that threshold.
    let archive = dir.path().join("archive");
    let board = dir.path().join("board.toml");
    std::fs::write(
        &board,
        format!(
            "[board]\nname = \"t\"\n[engine]\nmodel = \"{}\"\n[camera]\nsource = \"replay\"\n[camera.replay]\ndir = \"{}\"\n\
             [gpio]\nsim = true\n[line]\npart_rate_hz = 10\nrealtime_priority = 0\nthreshold = {threshold}\n\
             [supervisor]\nlisten = \"\"\n[archive]\ndir = \"{}\"\n",
            model().display(),
            data.join("test").display(),
            archive.display()
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .arg("check-config")
        .arg(&board)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        shown.contains("replay of MVTec root") && shown.contains("ground truth on"),
        "{shown}"
    );
    assert!(
        shown.contains("line.threshold overrides the model's"),
        "{shown}"
    );
    let summary_path = dir.path().join("summary.json");
    let n = 12 + 3 * DEFECT_KINDS.len() as u64;
    let run = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["run", "--quiet", "--config"])
        .arg(&board)
        .arg("--parts")
        .arg(n.to_string())
        .arg("--summary-json")
        .arg(&summary_path)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();
    let s = &s["summary"];
    assert_eq!(s["with_truth"].as_u64(), Some(n), "{s}");
    let by_kind = s["by_kind"].as_object().unwrap();
    assert_eq!(by_kind.len(), DEFECT_KINDS.len() + 1, "{s}");
    let defective = (3 * DEFECT_KINDS.len()) as f64;
    // The sweep predicts verdicts: a defective part rejected by verdict whose pulse came too
    // late (a loaded CI machine, no real-time priority) is the line's escape, not the sweep's.
    let escapes = (s["escapes"].as_u64().unwrap() - s["late_escapes"].as_u64().unwrap()) as f64;
    assert!(
        escapes / defective <= point["escape"].as_f64().unwrap() + 1e-9,
        "the line escapes {escapes} of {defective}, the sweep said {point}"
    );
    // Every reject has its sidecar naming the image it came from.
    let sidecars: Vec<serde_json::Value> = std::fs::read_dir(&archive)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect();
    let rejected = s["counters"]["rejects"].as_u64().unwrap()
        + s["counters"]["fault_rejects"].as_u64().unwrap();
    assert_eq!(sidecars.len() as u64, rejected, "{s}");
    assert!(
        sidecars.iter().all(
            |v| v["origin"].as_str().is_some_and(|o| o.ends_with(".png"))
                && v["model_id"].as_str().is_some_and(|m| m.len() == 12)
        ),
        "{sidecars:?}"
    );
}
