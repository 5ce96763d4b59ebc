//! `diffad check-config`: a board file parsed, validated, summarised and checked on this machine.

use std::path::Path;

use anyhow::Result;

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
        let problems = c.check_deployment();
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
    };
    println!("source:     {source}");
    println!(
        "threshold:  {}",
        match (
            s.line.threshold,
            crate::model::manifest::Manifest::read(&c.engine.model)
                .ok()
                .and_then(|m| m.threshold)
        ) {
            (Some(t), Some(m)) => format!("{t} (line.threshold overrides the model's {})", m.value),
            (Some(t), None) => format!("{t} (line.threshold)"),
            (None, Some(m)) => format!(
                "{} (the model's, {}{})",
                m.value,
                m.method,
                m.n_images
                    .map_or(String::new(), |n| format!(" on {n} good images"))
            ),
            (None, None) =>
                "none: the model is not calibrated and line.threshold is not set".into(),
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
}
