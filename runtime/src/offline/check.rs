//! `diffad check-config`: a board file parsed, validated, summarised and checked on this machine.

use std::path::Path;

use anyhow::Result;

use crate::config::Invalid;
use crate::line::board::BoardConfig;
use crate::line::setup::LineSetup;

/// `diffad check-config`: parse and validate a board file, summarise it, then (with
/// `deployment`) check the files and devices it names and its keys against the model.
pub fn check_config(path: &Path, deployment: bool) -> Result<BoardConfig> {
    let c = BoardConfig::load(path)?;
    print_engine(&c);
    print_camera(&c);
    print_io(&c.setup);
    if deployment {
        let mut problems = c.check_deployment();
        if problems.is_empty() {
            problems.extend(archive_space(&c));
            problems.extend(rehearse(&c));
        }
        if !problems.is_empty() {
            return Err(crate::line::board::ConfigError::Unusable {
                path: path.display().to_string(),
                problems,
            }
            .into());
        }
    } else {
        println!("files:      not checked (--keys-only)");
    }
    println!("ok: {}", path.display());
    Ok(c)
}

/// Frames rehearsed: one to warm the engine, the rest timed.
const REHEARSAL_FRAMES: usize = 6;

/// The archive folder takes a file and has the free space `archive.min_free_mb` keeps.
fn archive_space(c: &BoardConfig) -> Vec<Invalid> {
    let Some(a) = &c.setup.archive else {
        return Vec::new();
    };
    match crate::sinks::archive::check_writable(&a.dir) {
        Err(e) => vec![Invalid::new(
            "archive.dir",
            format!("{e}: rejected parts could not be archived; name a writable folder"),
        )],
        Ok(free) if free < a.reserve_bytes() => vec![Invalid::new(
            "archive.min_free_mb",
            format!(
                "{} has {:.1} MB free, under the {} MB it must leave: no rejected part would be archived; free space or lower archive.min_free_mb",
                a.dir.display(),
                free as f64 / 1048576.0,
                a.min_free_mb
            ),
        )],
        Ok(free) => {
            println!(
                "archive:    writable, {:.0} MB free",
                free as f64 / 1048576.0
            );
            Vec::new()
        }
    }
}

/// What `run` would do before its first part and with it, without the hardware: the model
/// loaded and self-tested on the CPU, a few frames of a simulated or replayed camera through
/// the line's own inspector (ROI, tiling, map shape, scores), the frame time against the belt.
fn rehearse(c: &BoardConfig) -> Vec<Invalid> {
    use crate::sources::camera::config::SourceKind;
    let mut engine_cfg = c.engine.clone();
    let on_cpu_only = engine_cfg.providers.iter().all(|p| p == "cpu");
    engine_cfg.providers = vec!["cpu".into()];
    engine_cfg.allow_fallback = false;
    let problem = |key: &str, msg: String| vec![Invalid::new(key, msg)];
    let engine = match crate::stages::engine::Engine::load(&engine_cfg) {
        Ok(e) => e,
        Err(e) => {
            return problem(
                "engine.model",
                format!("loading it on the CPU (as `run` would, self-test included): {e}"),
            )
        }
    };
    println!(
        "model:      loads on the CPU{}",
        if engine_cfg.self_test.enabled {
            ", self-test passed"
        } else {
            " (self-test off)"
        }
    );
    let s = &c.setup;
    let mut inspector = match crate::stages::tiling::inspector_for(
        engine,
        Some(&s.camera),
        s.line.threshold,
        s.camera.allow_upscale,
    ) {
        Ok(i) => i,
        Err(e) => return problem("camera", e.to_string()),
    };
    if matches!(s.camera.source, SourceKind::V4l2 | SourceKind::Genicam) {
        println!("frames:     not rehearsed (a camera source needs the camera: `diffad doctor`)");
        return Vec::new();
    }
    if s.camera.source == SourceKind::Gstreamer {
        return check_pipeline(&s.camera.gstreamer);
    }
    let clock: std::sync::Arc<dyn crate::clock::Clock> =
        std::sync::Arc::new(crate::clock::SystemClock::new());
    let mut source = match crate::sources::camera::open(&s.camera, 1000.0, clock) {
        Ok(src) => src,
        Err(e) => return problem("camera", format!("{e}")),
    };
    let mut times = Vec::new();
    let mut scores = Vec::new();
    for i in 0..REHEARSAL_FRAMES {
        let frame = match source.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) if i == 0 => {
                return problem(
                    "camera",
                    "the source gave no frame at all: an empty replay folder? (`run` would stop at once)".into(),
                )
            }
            Ok(None) => break,
            Err(e) => return problem("camera", format!("frame {i}: {e}")),
        };
        let t = std::time::Instant::now();
        let result = inspector.inspect(&[&frame]).pop();
        let took = t.elapsed().as_secs_f64() * 1e3;
        match result {
            Some(Ok(insp)) => {
                if i > 0 {
                    times.push(took);
                }
                scores.push(insp.score);
            }
            Some(Err(e)) => {
                return problem(
                    "camera",
                    format!(
                        "frame {} ({}) cannot be inspected: {e}; `run` would fail every part safe",
                        i, frame.origin
                    ),
                )
            }
            None => return problem("engine.model", "the inspector returned no result".into()),
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    let (lo, hi) = scores
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let budget = (s.line.delay_ns().saturating_sub(s.line.margin_ns())) as f64 / 1e6;
    println!(
        "frames:     {} rehearsed on the CPU: {median:.1} ms each (median), scores {lo:.3}..{hi:.3}; the belt leaves {budget:.1} ms before the verdict margin",
        scores.len()
    );
    if on_cpu_only && median >= budget {
        return problem(
            "line.camera_to_ejector_mm",
            format!(
                "the ejector is {:.1} ms after the trigger and the verdict must come {:.1} ms before it, which leaves {budget:.1} ms; one frame takes {median:.1} ms on this CPU: every part would fail safe. Move the ejector further down the belt, slow the belt, or infer on a GPU",
                s.line.delay_ns() as f64 / 1e6,
                s.line.verdict_margin_ms
            ),
        );
    }
    Vec::new()
}

/// A GStreamer pipeline is built as `run` builds it (elements, appsink, caps) but not started:
/// its devices and streams are `diffad doctor`'s and `run`'s.
fn check_pipeline(cfg: &crate::sources::camera::config::GstreamerConfig) -> Vec<Invalid> {
    #[cfg(feature = "gstreamer")]
    let built = crate::sources::camera::gstreamer::elements(cfg);
    #[cfg(not(feature = "gstreamer"))]
    let built: Result<Vec<String>, crate::sources::camera::SourceError> = {
        let _ = cfg;
        Err(crate::sources::camera::SourceError::Config(
            "this diffad was built without the `gstreamer` feature".into(),
        ))
    };
    match built {
        Ok(names) => {
            println!(
                "frames:     not rehearsed (camera.source = \"gstreamer\" starts its pipeline only in `run`); it builds: {}",
                names.join(", ")
            );
            Vec::new()
        }
        Err(crate::sources::camera::SourceError::Config(e)) => {
            let key = "camera.gstreamer.pipeline";
            let msg = e
                .strip_prefix(&format!("{key}: "))
                .unwrap_or(&e)
                .to_string();
            vec![Invalid::new(key, msg)]
        }
        Err(e) => vec![Invalid::new("camera.gstreamer.pipeline", e.to_string())],
    }
}

/// Board, engine, self-test.
fn print_engine(c: &BoardConfig) {
    println!("board:      {} — {}", c.board.name, c.board.description);
    println!(
        "engine:     {} on {}{}",
        c.engine.model.display(),
        c.engine.providers.join(" > "),
        if c.engine.allow_fallback {
            " (fallback allowed)"
        } else {
            ""
        }
    );
    println!(
        "self-test:  {}",
        match (c.engine.self_test.enabled, c.engine.self_test.tolerance) {
            (false, _) => "OFF (engine.self_test.enabled = false)".to_string(),
            (true, Some(t)) => format!("golden cases at start, tolerance {t:e}"),
            (true, None) => "golden cases at start, tolerance by precision".to_string(),
        }
    );
}

/// Where frames come from, the threshold in force, how frames reach the model.
fn print_camera(c: &BoardConfig) {
    let s = &c.setup;
    let region = s.camera.roi.map_or("whole frame".to_string(), |r| {
        format!("roi {}×{} at ({}, {})", r.width, r.height, r.x, r.y)
    });
    let source = match s.camera.source {
        crate::sources::camera::config::SourceKind::Sim => match &s.camera.sim.photo {
            Some(p) => format!("simulated conveyor cutting tiles from {}", p.display()),
            None => "simulated conveyor, procedural texture".to_string(),
        },
        crate::sources::camera::config::SourceKind::Replay => {
            match crate::sources::camera::replay::describe(&s.camera.replay.dir) {
                Ok(d) => format!("replay of {d}"),
                Err(e) => format!("replay: {e}"),
            }
        }
        crate::sources::camera::config::SourceKind::V4l2 => {
            format!("camera {}", s.camera.v4l2.device.display())
        }
        crate::sources::camera::config::SourceKind::Genicam => {
            let g = &s.camera.genicam;
            format!(
                "GenICam camera {} {}×{} {} ({:?} trigger)",
                if g.camera.is_empty() {
                    "(the only one found)"
                } else {
                    &g.camera
                },
                g.width,
                g.height,
                g.pixel_format,
                g.trigger
            )
        }
        crate::sources::camera::config::SourceKind::Gstreamer => format!(
            "GStreamer pipeline `{}` ({} at its appsink `{}`)",
            s.camera.gstreamer.pipeline.trim(),
            match s.camera.gstreamer.color {
                crate::sources::camera::config::ColorMode::Grey => "GRAY8",
                crate::sources::camera::config::ColorMode::Rgb => "RGB",
            },
            s.camera.gstreamer.sink
        ),
    };
    println!("source:     {source}");
    println!(
        "threshold:  {}",
        match (
            s.line.threshold,
            crate::model::manifest::Manifest::read(&c.engine.model).map(|m| m.threshold)
        ) {
            // --keys-only before the model exists: say so, not that it is uncalibrated.
            (Some(t), Err(_)) => format!("{t} (line.threshold; the model was not read)"),
            (None, Err(e)) => format!(
                "not known: {} could not be read ({e})",
                c.engine.model.display()
            ),
            (t, Ok(m)) => threshold_line(t, m),
        }
    );

    println!(
        "camera:     {:?}, {region}, {}",
        s.camera.source,
        if s.camera.tiling.enabled {
            format!(
                "tiled at native resolution (overlap ≥ {} px)",
                s.camera.tiling.overlap
            )
        } else {
            "resized to the model size".to_string()
        }
    );
}

/// The threshold in force: `line.threshold`, else the model's calibrated one with its rates.
fn threshold_line(line: Option<f32>, model: Option<crate::model::manifest::Threshold>) -> String {
    match (line, model) {
            (Some(t), Some(m)) => format!("{t} (line.threshold overrides the model's {})", m.value),
            (Some(t), None) => format!("{t} (line.threshold)"),
            (None, Some(m)) => format!(
                "{} (the model's, {}{}{}){}",
                m.value,
                m.method,
                m.n_images
                    .map_or(String::new(), |n| format!(" on {n} good images")),
                m.rates(),
                match m.worst_false_reject_rate() {
                    Some(f) if f > crate::model::manifest::FALSE_REJECT_CEILING => format!(
                        "\nWARNING:    the model's threshold gave {:.1} % false rejects, above {:.0} %, on the \
                         good images it was calibrated or checked on: this line will reject about \
                         that share of its good parts; recalibrate, or improve the model",
                        100.0 * f,
                        100.0 * crate::model::manifest::FALSE_REJECT_CEILING
                    ),
                    _ => String::new(),
                }
            ),
            (None, None) => "none: the model is not calibrated and line.threshold is not set".into(),
    }
}

/// Pins, belt geometry and the sinks.
fn print_io(s: &LineSetup) {
    let lines: Vec<String> = [
        ("reject", &s.gpio.reject),
        ("ready", &s.gpio.ready),
        ("heartbeat", &s.gpio.heartbeat),
    ]
    .iter()
    .chain([("fault", &s.gpio.fault), ("trigger", &s.gpio.trigger)].iter())
    .filter_map(|(n, l)| l.as_ref().map(|l| format!("{n}={}", l.name)))
    .collect();
    println!(
        "gpio:       {} {} pulse {} ms",
        if s.gpio.sim {
            "simulated"
        } else {
            s.gpio.chip.as_str()
        },
        lines.join(" "),
        s.gpio.pulse_ms
    );
    println!(
        "line:       {} trigger {:?}, ejector {:.1} mm at {:.1} mm/s = {:.1} ms after the trigger, fail-safe {:?}",
        s.line.name,
        s.line.trigger,
        s.line.travel_mm(),
        s.line.belt_speed_mm_s,
        s.line.delay_ns() as f64 / 1e6,
        s.line.fail_safe
    );
    println!(
        "drift:      {}",
        if s.drift.window == 0 {
            "off".to_string()
        } else {
            format!(
                "last {} parts: median score within {} std of the calibration's good median{}",
                s.drift.window,
                s.drift.max_shift_std,
                s.drift.max_reject_rate.map_or(String::new(), |r| format!(
                    ", reject rate at most {:.1} %",
                    100.0 * r
                ))
            )
        }
    );
    println!(
        "supervisor: {}",
        if s.supervisor.listen.is_empty() {
            "off".to_string()
        } else {
            format!(
                "ndjson on {}{}",
                s.supervisor.listen,
                match (&s.supervisor.tls, s.supervisor.expose) {
                    (Some(_), _) => ", TLS with client certificates",
                    (None, true) =>
                        ", exposed WITHOUT TLS: anyone who reaches the port reads the line",
                    (None, false) => "",
                }
            )
        }
    );
    println!(
        "mqtt:       {}",
        s.mqtt.as_ref().map_or("off".to_string(), |m| format!(
            "{} prefix {}",
            m.url, m.prefix
        ))
    );
    println!(
        "archive:    {}",
        s.archive.as_ref().map_or("off".to_string(), |a| format!(
            "{} (cap {} MB)",
            a.dir.display(),
            a.max_mb
        ))
    );
    println!(
        "web:        {}",
        s.web.as_ref().map_or("off".to_string(), |w| format!(
            "operator's page on {}://{}/{}{}",
            if w.tls.is_some() { "https" } else { "http" },
            w.listen,
            if w.token_file.is_some() {
                ", token required"
            } else {
                ""
            },
            if w.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()) {
                ", client certificates required"
            } else {
                ""
            }
        ))
    );
    println!(
        "opcua:      {}",
        s.opcua.as_ref().map_or("off".to_string(), |o| o.describe())
    );
}
