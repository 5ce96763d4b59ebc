//! Tiled inspection: the ROI cut into model-sized tiles at native resolution, tiles batched
//! through the engine, the part scored by its worst tile and the map stitched at ROI size.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::root;
use diffad::frame::Roi;
use diffad::frame::{Frame, PixelFormat};
use diffad::line::setup::LineSetup;
use diffad::sources::camera::config::TilingConfig;
use diffad::stages::engine::{Engine, EngineConfig};
use diffad::stages::inspect::{EngineInspector, Inspection, Inspector};
use diffad::stages::tiling::{self, TiledInspector};

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn grey(width: u32, height: u32, px: impl Fn(u32, u32) -> u8) -> Frame {
    let data = (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .map(|(x, y)| px(x, y))
        .collect();
    Frame {
        seq: 0,
        timestamp_ns: 0,
        width,
        height,
        format: PixelFormat::Grey8,
        data,
        truth: None,
        origin: "test".into(),
    }
}

fn sig(p: u8) -> f32 {
    1.0 / (1.0 + (-(p as f32) / 255.0).exp())
}

fn b4(roi: Option<Roi>, overlap: u32) -> TiledInspector {
    let engine = Engine::load(&EngineConfig::cpu(fixture("sigmoid-b4.onnx"))).unwrap();
    assert_eq!(engine.batch_size(), 4);
    TiledInspector::new(
        engine,
        roi,
        &TilingConfig {
            enabled: true,
            overlap,
        },
        None,
    )
    .unwrap()
}

/// Top-5 mean of the map inside one tile (what the fixture graph computes per tile).
fn tile_score(r: &Inspection, x0: u32, y0: u32, t: u32) -> f32 {
    let mut v: Vec<f32> = (y0..y0 + t)
        .flat_map(|y| (x0..x0 + t).map(move |x| (x, y)))
        .map(|(x, y)| r.map[(y * r.map_width + x) as usize])
        .collect();
    v.sort_by(|a, b| b.total_cmp(a));
    v[..5].iter().sum::<f32>() / 5.0
}

/// The stitched map is the pointwise map of the region: each pixel value always maps to the
/// same map value (no resize, no blending) and that value is the sigmoid of the pixel.
fn assert_pointwise(frame: &Frame, roi: Roi, r: &Inspection) {
    assert_eq!((r.map_width, r.map_height), (roi.width, roi.height));
    let mut lut = [None::<f32>; 256];
    for y in 0..roi.height {
        for x in 0..roi.width {
            let p = frame.data[((roi.y + y) * frame.width + roi.x + x) as usize];
            let m = r.map[(y * roi.width + x) as usize];
            match lut[p as usize] {
                None => lut[p as usize] = Some(m),
                Some(v) => assert_eq!(v.to_bits(), m.to_bits(), "pixel {p} at ({x}, {y})"),
            }
            assert!((m - sig(p)).abs() <= 1e-6, "({x}, {y}): {m} vs {}", sig(p));
        }
    }
}

#[test]
fn vga_frame_is_twenty_tiles_in_five_calls_and_stitches_exactly() {
    let mut insp = b4(None, 0);
    let calls = insp.engine().session_calls();
    let frame = grey(640, 480, |x, y| ((x * 7 + y * 13) % 256) as u8);
    let r = insp.inspect(&[&frame]).pop().unwrap().unwrap();
    assert_eq!(
        insp.engine().session_calls() - calls,
        5,
        "20 tiles / batch 4"
    );
    assert_eq!(insp.tiles_inspected(), 20);
    let grid = insp.last_grid().to_vec();
    assert_eq!(grid.len(), 20);
    assert!(
        grid.contains(&(512, 352)),
        "last row/column on the edges: {grid:?}"
    );
    let whole = Roi {
        x: 0,
        y: 0,
        width: 640,
        height: 480,
    };
    assert_pointwise(&frame, whole, &r);
    let best = grid
        .iter()
        .map(|&(x, y)| tile_score(&r, x, y, 128))
        .fold(f32::MIN, f32::max);
    assert!((r.score - best).abs() <= 1e-6, "{} vs {best}", r.score);
}

#[test]
fn odd_roi_with_overlap_pads_the_last_batch() {
    let roi = Roi {
        x: 17,
        y: 9,
        width: 301,
        height: 203,
    };
    let mut insp = b4(Some(roi), 16);
    let frame = grey(333, 251, |x, y| ((x * x + 3 * y) % 251) as u8);
    let calls = insp.engine().session_calls();
    let r = insp.inspect(&[&frame]).pop().unwrap().unwrap();
    // x: 0, 112, 173; y: 0, 75 → 6 tiles: a full batch and one padded with 2 empty slots.
    assert_eq!(
        insp.last_grid(),
        [(0, 0), (112, 0), (173, 0), (0, 75), (112, 75), (173, 75)]
    );
    assert_eq!(insp.engine().session_calls() - calls, 2);
    assert_pointwise(&frame, roi, &r);
    let best = insp
        .last_grid()
        .iter()
        .map(|&(x, y)| tile_score(&r, x, y, 128))
        .fold(f32::MIN, f32::max);
    assert!((r.score - best).abs() <= 1e-6);
    // Buffers are reused: the same frame again gives the same result.
    let again = insp.inspect(&[&frame]).pop().unwrap().unwrap();
    assert_eq!(again.map, r.map);
    assert_eq!(again.score, r.score);
}

#[test]
fn a_small_defect_in_a_corner_tile_drives_the_part_score() {
    let good = grey(640, 480, |_, _| 20);
    let bad = grey(640, 480, |x, y| {
        if (630..633).contains(&x) && (470..473).contains(&y) {
            255
        } else {
            20
        }
    });
    let mut insp = b4(None, 0);
    let thr = insp.threshold();
    let results = insp.inspect(&[&good, &bad]);
    let (g, b) = (results[0].as_ref().unwrap(), results[1].as_ref().unwrap());
    assert!(
        (g.score - sig(20)).abs() <= 1e-6 && g.score < thr,
        "{}",
        g.score
    );
    // The bottom-right tile holds all 9 bright pixels: its top-5 mean is sigmoid(1).
    assert!(
        (b.score - sig(255)).abs() <= 1e-6 && b.score >= thr,
        "{}",
        b.score
    );
    assert!((b.map[(471 * 640 + 631) as usize] - sig(255)).abs() <= 1e-6);

    // Resizing the whole frame to 128×128 instead blurs the 3×3 defect under the threshold.
    let engine = Engine::load(&EngineConfig::cpu(fixture("sigmoid-b4.onnx"))).unwrap();
    let mut resized = EngineInspector::new(engine, None, None).unwrap();
    let r = resized.inspect(&[&bad]).pop().unwrap().unwrap();
    assert!(r.score < thr, "resized score {}", r.score);
}

#[test]
fn real_model_scores_each_tile_as_its_golden_case() {
    // A 256×256 frame made of four golden inputs of tiles-brick: each tile is one golden case.
    let dir = root().join("models/tiles-brick");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.golden.json")).unwrap())
            .unwrap();
    let cases = &golden["cases"].as_array().unwrap()[..4];
    let tiles: Vec<Frame> = cases
        .iter()
        .map(|c| diffad::sources::imagefile::load(&dir.join(c["image"].as_str().unwrap())).unwrap())
        .collect();
    assert!(tiles
        .iter()
        .all(|t| t.format == PixelFormat::Grey8 && t.width == 128));
    let frame = grey(256, 256, |x, y| {
        let t = &tiles[(y / 128 * 2 + x / 128) as usize];
        t.data[((y % 128) * 128 + x % 128) as usize]
    });
    let engine = Engine::load(&EngineConfig::cpu(dir.join("model.onnx"))).unwrap();
    assert_eq!(engine.batch_size(), 1);
    let mut insp = TiledInspector::new(
        engine,
        None,
        &TilingConfig {
            enabled: true,
            overlap: 0,
        },
        None,
    )
    .unwrap();
    let calls = insp.engine().session_calls();
    let r = insp.inspect(&[&frame]).pop().unwrap().unwrap();
    assert_eq!(insp.engine().session_calls() - calls, 4);
    assert_eq!((r.map_width, r.map_height), (256, 256));
    let mut best = f64::MIN;
    for (i, c) in cases.iter().enumerate() {
        let (x0, y0) = ((i % 2) * 128, (i / 2) * 128);
        let quadrant: Vec<f32> = (y0..y0 + 128)
            .flat_map(|y| (x0..x0 + 128).map(move |x| (x, y)))
            .map(|(x, y)| r.map[y * 256 + x])
            .collect();
        let max = quadrant.iter().copied().fold(f32::MIN, f32::max) as f64;
        let mean = quadrant.iter().map(|&v| v as f64).sum::<f64>() / quadrant.len() as f64;
        assert!(
            (max - c["map_max"].as_f64().unwrap()).abs() <= 1e-5,
            "case {i} max"
        );
        assert!(
            (mean - c["map_mean"].as_f64().unwrap()).abs() <= 1e-5,
            "case {i} mean"
        );
        best = best.max(c["score"].as_f64().unwrap());
    }
    assert!(
        (r.score as f64 - best).abs() <= 1e-5,
        "{} vs {best}",
        r.score
    );
}

#[test]
fn tiling_keys_are_checked_and_named() {
    let setup = LineSetup::from_toml(
        "[camera]\nroi = { x = 8, y = 4, width = 600, height = 400 }\n[camera.tiling]\nenabled = true\noverlap = 8\n",
    )
    .unwrap();
    assert_eq!(
        setup.camera.roi,
        Some(Roi {
            x: 8,
            y: 4,
            width: 600,
            height: 400
        })
    );
    assert_eq!(setup.camera.tiling.overlap, 8);
    let key = |text: &str| LineSetup::from_toml(text).unwrap_err().key;
    assert_eq!(
        key("[camera.tiling]\noverlapp = 3\n"),
        "camera.tiling.overlapp"
    );
    assert_eq!(
        key("[camera]\nroi = { x = 0, y = 0, width = 0, height = 4 }\n"),
        "camera.roi.width"
    );
    assert_eq!(
        key("[camera]\nroi = { x = 0, y = 0, width = 4 }\n"),
        "camera.roi"
    );
    assert_eq!(
        key("[camera]\nsource = \"v4l2\"\nroi = { x = 600, y = 0, width = 128, height = 128 }\n"),
        "camera.roi"
    );
    // Against the model: a region smaller than a tile.
    let engine = Engine::load(&EngineConfig::cpu(fixture("sigmoid-b4.onnx"))).unwrap();
    let mut cam = setup.camera.clone();
    cam.roi = Some(Roi {
        x: 0,
        y: 0,
        width: 100,
        height: 400,
    });
    let err = tiling::check(&cam, &engine.manifest().input).unwrap_err();
    assert_eq!(err.key, "camera.roi.width");
    assert!(err.message.contains("128×128"), "{err}");
}

fn board(dir: &std::path::Path, camera: &str) -> PathBuf {
    let path = dir.join("board.toml");
    std::fs::write(
        &path,
        format!(
            "[board]\nname = \"t\"\n[engine]\nmodel = \"{}\"\n{camera}\n[gpio]\nsim = true\n[line]\nparts = 3\npart_rate_hz = 50\n[supervisor]\nlisten = \"\"\n",
            fixture("sigmoid-b4.onnx").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn run_refuses_a_region_smaller_than_a_tile_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = board(
        dir.path(),
        "[camera]\nsource = \"sim\"\nroi = { x = 0, y = 0, width = 64, height = 64 }\n[camera.tiling]\nenabled = true\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["run", "--quiet", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("camera.roi.width") && err.contains("board.toml"),
        "{err}"
    );
}

#[test]
fn infer_with_a_tiling_board_scores_the_whole_frame_at_native_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let path = board(dir.path(), "[camera.tiling]\nenabled = true\n");
    let img = image::GrayImage::from_fn(300, 200, |x, y| {
        image::Luma([if (296..299).contains(&x) && (196..199).contains(&y) {
            255
        } else {
            10
        }])
    });
    img.save(dir.path().join("part.png")).unwrap();
    let heat = dir.path().join("heat");
    let run = |config: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffad"));
        cmd.args(["infer", "--json", "--heatmaps"])
            .arg(&heat)
            .arg("--model")
            .arg(fixture("sigmoid-b4.onnx"))
            .arg(dir.path().join("part.png"));
        if config {
            cmd.arg("--config").arg(&path);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        line
    };
    let tiled = run(true);
    assert_eq!(tiled["verdict"], "reject");
    assert!(
        (tiled["score"].as_f64().unwrap() - sig(255) as f64).abs() < 1e-6,
        "{tiled}"
    );
    // Without the board file: the whole image resized, as before, which dilutes the defect.
    let resized = run(false);
    assert!(
        resized["score"].as_f64().unwrap() < tiled["score"].as_f64().unwrap() - 1e-3,
        "{resized}"
    );
    let overlay = image::open(heat.join("part_heatmap.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (300, 200));
}

#[test]
fn run_inspects_every_part_by_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let path = board(
        dir.path(),
        "[camera]\nsource = \"sim\"\n[camera.sim]\ntile = 256\ndefect_rate = 0.5\n[camera.tiling]\nenabled = true\noverlap = 16\n[archive]\ndir = \"archive\"\n",
    );
    let summary = dir.path().join("summary.json");
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["run", "--quiet", "--config"])
        .arg(&path)
        .arg("--summary-json")
        .arg(&summary)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("tiling: 128×128 tiles") && err.contains("self-test passed"),
        "{err}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["parts"], 3, "{s}");
    assert_eq!(s["invariant_ok"], true);
    assert_eq!(s["inspect_errors"], 0, "{s}");
    assert_eq!(s["fault_rejects"], 0, "{s}");
    // Archived maps cover the whole 256×256 region, not one 128×128 tile.
    let maps: Vec<PathBuf> = std::fs::read_dir(dir.path().join("archive"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let maps: Vec<&PathBuf> = maps
        .iter()
        .filter(|p| p.to_string_lossy().ends_with("_map.png"))
        .collect();
    assert!(
        !maps.is_empty(),
        "bright sim texture: sigmoid fixture rejects"
    );
    for m in maps {
        let img = image::open(m).unwrap();
        assert_eq!((img.width(), img.height()), (256, 256), "{}", m.display());
    }
}
