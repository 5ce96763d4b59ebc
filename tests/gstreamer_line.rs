//! `camera.source = "gstreamer"` through the line, on real GStreamer pipelines (no mocks): a
//! test pattern, a video the test encodes from tile images (compared with a replay of the same
//! tiles), pipelines that end, fail and stall mid-run, and the configuration errors `run` and
//! `check-config` refuse. The line runs on the system clock: GStreamer keeps real time.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{root, run_line, run_line_on, Run};
use diffad::clock::{Clock, SystemClock};
use diffad::events::Outcome;
use diffad::line::setup::LineSetup;
use diffad::stages::engine::{Engine, EngineConfig};
use diffad::stages::inspect::{EngineInspector, Inspector};

/// The 128×128 grey stand-in model: its score is the top-5 mean of sigmoid(pixel), so a tile
/// rejects (threshold 0.6) when a few pixels are brighter than about 103.
fn model() -> PathBuf {
    root().join("tests/fixtures/sigmoid-b4.onnx")
}

fn inspector(_: Arc<dyn Clock>) -> Box<dyn Inspector> {
    Box::new(
        EngineInspector::new(
            Engine::load(&EngineConfig::cpu(model())).unwrap(),
            None,
            None,
        )
        .unwrap(),
    )
}

/// A line on simulated pins whose camera is `camera` (the `[camera]` table's keys and
/// sub-tables), 500 ms from camera to ejector.
fn setup(camera: &str, parts: Option<u64>) -> LineSetup {
    let mut s = LineSetup::from_toml(&format!(
        r#"
        [camera]
        {camera}
        [gpio]
        sim = true
        pulse_ms = 15
        [gpio.reject]
        name = "PAC.06"
        [line]
        name = "gst"
        part_rate_hz = 20
        belt_speed_mm_s = 500
        camera_to_ejector_mm = 250
        verdict_margin_ms = 5
        heartbeat_ms = 100
        queue = 8
        [supervisor]
        listen = ""
        "#
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    s.line.parts = parts;
    s
}

fn run_live(setup: &LineSetup) -> Run {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let run = run_line_on(clock, setup, inspector, None, None);
    println!("{}", run.summary);
    run
}

/// Every part got exactly one outcome, numbered 1..=n, and the counters balance.
fn accounted(run: &Run, n: u64) {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for p in run.parts() {
        *seen.entry(p.part).or_default() += 1;
    }
    assert_eq!(seen.len() as u64, n, "{}", run.summary);
    assert!(seen.values().all(|&k| k == 1), "a part with two outcomes");
    assert!((1..=n).all(|p| seen.contains_key(&p)));
    let c = &run.summary.counters;
    assert!(run.summary.invariant_ok, "{}", run.summary);
    assert_eq!(
        c.passes + c.rejects + c.fault_rejects + c.fault_passes,
        n,
        "{}",
        run.summary
    );
}

/// Inspected in time, and each verdict is its score against the threshold.
fn decided_by_scores(run: &Run) {
    for p in run.parts() {
        let score = p.score.unwrap_or_else(|| panic!("not scored: {p:?}"));
        let want = if score >= p.threshold {
            Outcome::Reject
        } else {
            Outcome::Pass
        };
        assert_eq!(p.outcome, want, "{p:?}");
    }
}

#[test]
fn a_test_pattern_runs_the_line_and_every_part_is_accounted_for() {
    let run = run_live(&setup(
        r#"source = "gstreamer"
        [camera.gstreamer]
        pipeline = 'videotestsrc is-live=true num-buffers=40 pattern=ball ! video/x-raw,width=160,height=128,framerate=20/1 ! videoconvert ! appsink name=sink'
        eos = "end""#,
        None,
    ));
    accounted(&run, 40);
    decided_by_scores(&run);
    let c = &run.summary.counters;
    assert_eq!(c.camera_errors, 0, "{}", run.summary);
    assert_eq!(c.frames_dropped, 0, "{}", run.summary);
    // Frames come in order, one part each, stamped on the line's clock 50 ms apart.
    let parts = run.parts();
    let mut by_part: Vec<_> = parts.iter().collect();
    by_part.sort_by_key(|p| p.part);
    for w in by_part.windows(2) {
        assert_eq!(w[1].frame.frame_seq, w[0].frame.frame_seq + 1);
        let gap_ms = (w[1].trigger_ns - w[0].trigger_ns) as f64 / 1e6;
        assert!((20.0..80.0).contains(&gap_ms), "frames {gap_ms} ms apart");
    }
    // The ball is white on black: the stand-in model rejects it.
    assert!(c.rejects > 0, "{}", run.summary);
}

/// `n` tiles of 128×128 grey: dark noise, every third one with a bright spot (a defect the
/// stand-in model rejects), as `tile000.png`… in `dir`.
fn write_tiles(dir: &Path, n: u32) {
    for i in 0..n {
        let mut img = image::GrayImage::new(128, 128);
        for (x, y, p) in img.enumerate_pixels_mut() {
            let h = (x * 7919 + y * 104_729 + i * 1_299_709) % 81;
            p.0 = [10 + h as u8];
        }
        if i % 3 == 0 {
            let (x0, y0) = (10 + i * 4 % 100, 20 + i * 7 % 90);
            for y in y0..y0 + 6 {
                for x in x0..x0 + 6 {
                    img.put_pixel(x, y, image::Luma([150 + (i * 3 % 100) as u8]));
                }
            }
        }
        img.save(dir.join(format!("tile{i:03}.png"))).unwrap();
    }
}

/// Encode the tiles as a lossless (raw GRAY8) AVI at 20 fps with `gst-launch-1.0`.
fn encode_video(tiles: &Path, video: &Path) {
    let out = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "multifilesrc",
            &format!("location={}/tile%03d.png", tiles.display()),
            "caps=image/png,framerate=20/1",
            "!",
            "pngdec",
            "!",
            "videoconvert",
            "!",
            "video/x-raw,format=GRAY8",
            "!",
            "avimux",
            "!",
            "filesink",
            &format!("location={}", video.display()),
        ])
        .output()
        .expect("gst-launch-1.0 (gstreamer1.0-tools; scripts/setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_recorded_video_gives_the_verdicts_a_replay_of_its_tiles_gives() {
    let dir = tempfile::tempdir().unwrap();
    let tiles = dir.path().join("tiles");
    std::fs::create_dir(&tiles).unwrap();
    write_tiles(&tiles, 30);
    let video = dir.path().join("line.avi");
    encode_video(&tiles, &video);

    let gst = run_live(&setup(
        &format!(
            r#"source = "gstreamer"
            [camera.gstreamer]
            pipeline = 'filesrc location={} ! decodebin ! videoconvert ! appsink name=sink'
            eos = "end""#,
            video.display()
        ),
        None,
    ));
    accounted(&gst, 30);
    decided_by_scores(&gst);
    let replay = run_line(
        &setup(
            &format!(
                "source = \"replay\"\n[camera.replay]\ndir = \"{}\"",
                tiles.display()
            ),
            None,
        ),
        inspector,
        None,
        None,
    );
    accounted(&replay, 30);
    let sorted = |r: &Run| {
        let mut v: Vec<(u64, f32, Outcome)> = r
            .parts()
            .iter()
            .map(|p| (p.part, p.score.unwrap(), p.outcome))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    };
    let (g, r) = (sorted(&gst), sorted(&replay));
    // Lossless frames: the same pixels, so the same scores to the bit, part by part.
    assert_eq!(g, r);
    let rejects = g.iter().filter(|x| x.2 == Outcome::Reject).count();
    assert_eq!(rejects, 10, "the ten tiles with a spot: {g:?}");
}

#[test]
fn a_pipeline_that_ends_and_fails_mid_run_alarms_reconnects_and_loses_no_part() {
    // Each build gives 12 frames, then an end of stream (rebuilt: "reconnect"); the second
    // pipeline's identity element raises a real element error after 5 buffers instead.
    for (pipeline, says) in [
        (
            "videotestsrc is-live=true num-buffers=12 ! video/x-raw,width=128,height=128,framerate=20/1 ! videoconvert ! appsink name=sink",
            "end of stream",
        ),
        (
            "videotestsrc is-live=true ! video/x-raw,width=128,height=128,framerate=20/1 ! identity error-after=5 ! videoconvert ! appsink name=sink",
            "identity",
        ),
    ] {
        let run = run_live(&setup(
            &format!(
                r#"source = "gstreamer"
                stall_ms = 5000
                [camera.gstreamer]
                pipeline = '{pipeline}'"#
            ),
            Some(30),
        ));
        accounted(&run, 30);
        decided_by_scores(&run);
        let alarms = run.alarms("camera_error");
        let raised: Vec<_> = alarms.iter().filter(|a| a.active).collect();
        let cleared = alarms.iter().filter(|a| !a.active).count();
        // 30 parts need at least three builds of 12 (or six of 5): two or more failures,
        // each alarmed once and cleared once frames flowed again.
        assert!(raised.len() >= 2, "{alarms:?}");
        assert!(
            raised.iter().all(|a| a.message.contains(says)),
            "{alarms:?}"
        );
        assert!(cleared + 1 >= raised.len() && cleared >= 2, "{alarms:?}");
        for w in alarms.windows(2) {
            assert_ne!(w[0].active, w[1].active, "raised and cleared in turn: {alarms:?}");
        }
        assert!(
            run.summary.counters.camera_errors >= raised.len() as u64,
            "{}",
            run.summary
        );
    }
}

/// A board file for the binary with a gstreamer camera.
fn board(dir: &Path, gst: &str) -> PathBuf {
    let path = dir.join("gst.toml");
    std::fs::write(
        &path,
        format!(
            "[board]\nname = \"t\"\n[engine]\nmodel = \"{}\"\n[camera]\nsource = \"gstreamer\"\n[camera.gstreamer]\n{gst}\n[gpio]\nsim = true\n[supervisor]\nlisten = \"\"\n[line]\nparts = 5\n",
            model().display()
        ),
    )
    .unwrap();
    path
}

fn diffad(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn pipeline_errors_are_refused_naming_the_key_and_the_element() {
    let dir = tempfile::tempdir().unwrap();
    for (gst, want) in [
        (
            "pipeline = \"\"",
            "required when camera.source = \"gstreamer\"",
        ),
        (
            "pipeline = \"nosuchcamerasrc ! videoconvert ! appsink name=sink\"",
            "no GStreamer element `nosuchcamerasrc`",
        ),
        (
            "pipeline = \"videotestsrc ! videoconvert ! autovideosink\"",
            "no appsink named `sink`",
        ),
        (
            "pipeline = \"videotestsrc ! videoconvert ! appsink name=frames\"",
            "no appsink named `sink`",
        ),
        (
            "pipeline = \"videotestsrc ! appsink name=sink\"\ncolor = \"rgb\"",
            "the model takes 1 channel",
        ),
    ] {
        let path = board(dir.path(), gst);
        let (code, t) = diffad(&["check-config", path.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{gst}: {t}");
        assert!(t.contains("camera.gstreamer."), "{gst}: {t}");
        assert!(t.contains(want), "{gst}: want {want:?}: {t}");
        let (code, t) = diffad(&["run", "--quiet", "--config", path.to_str().unwrap()]);
        assert_ne!(code, Some(0), "{gst}: {t}");
        assert!(
            t.contains("camera.gstreamer.") && t.contains(want),
            "{gst}: {t}"
        );
    }
    // A pipeline that cannot produce the format (no converter before the appsink) stops the
    // line naming the key and the fix, rather than being retried for ever.
    let path = board(
        dir.path(),
        "pipeline = \"videotestsrc ! video/x-raw,format=I420 ! appsink name=sink\"",
    );
    let (code, t) = diffad(&["run", "--quiet", "--config", path.to_str().unwrap()]);
    assert_ne!(code, Some(0), "{t}");
    assert!(
        t.contains("camera.gstreamer.pipeline") && t.contains("videoconvert"),
        "{t}"
    );
}

#[test]
fn the_shipped_desktop_board_runs_its_pipeline() {
    let photo = root().join("target/tiles/photos/brick.png");
    assert!(
        photo.exists(),
        "{} missing: run scripts/texture-photos (scripts/test does)",
        photo.display()
    );
    let dir = tempfile::tempdir().unwrap();
    // The shipped file with its paths made absolute, a short run, and nothing listening or
    // written outside the test's folder.
    let board_dir = root().join("board-configs");
    let text = std::fs::read_to_string(board_dir.join("desktop-gstreamer.toml"))
        .unwrap()
        .replace("\"../", &format!("\"{}/../", board_dir.display()))
        .replace(
            "location=target/",
            &format!("location={}/target/", root().display()),
        );
    let mut t: toml::Table = text.parse().unwrap();
    for section in ["web", "control"] {
        t.remove(section);
    }
    let set = |t: &mut toml::Table, section: &str, key: &str, v: toml::Value| {
        t[section].as_table_mut().unwrap().insert(key.into(), v);
    };
    set(&mut t, "supervisor", "listen", "".into());
    set(&mut t, "line", "parts", 12.into());
    set(&mut t, "line", "realtime_priority", 0.into());
    set(
        &mut t,
        "archive",
        "dir",
        dir.path().join("archive").display().to_string().into(),
    );
    let copy = dir.path().join("board.toml");
    std::fs::write(&copy, toml::to_string(&t).unwrap()).unwrap();
    let (code, out) = diffad(&["run", "--quiet", "--config", copy.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("12 parts"), "{out}");
    assert!(out.contains("[every part accounted for]"), "{out}");
    let (code, out) = diffad(&["check-config", copy.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("GStreamer pipeline"), "{out}");
}

#[test]
fn parts_at_the_photo_eye_while_the_pipeline_is_down_fail_safe_and_the_rest_are_inspected() {
    use diffad::events::{Event, TapSink};
    use diffad::gpio::{ActiveLevel, LineRef};
    use diffad::line::{Hardware, Options, Shutdown};
    use diffad::sim::doubles::FakeEdgeRequest;
    use diffad::sinks::pins::LinePins;
    use diffad::sources::trigger::request_trigger;
    // A camera at 10 fps whose pipeline fails after 20 frames (a real element error) and is
    // rebuilt after a backoff; a photo-eye sees 60 parts at 10 Hz meanwhile.
    let mut setup = setup(
        r#"source = "gstreamer"
        stall_ms = 5000
        [camera.gstreamer]
        pipeline = 'videotestsrc is-live=true pattern=black ! video/x-raw,width=128,height=128,framerate=10/1 ! identity error-after=20 ! videoconvert ! appsink name=sink'"#,
        Some(60),
    );
    setup.line.trigger = diffad::line::setup::Trigger::Gpio;
    setup.gpio.trigger = Some(LineRef {
        name: "PAA.01".into(),
        active: ActiveLevel::High,
    });
    setup.validate().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let (pins, _logs) = LinePins::sim(&setup.gpio, clock.clone());
    let mut kernel = None;
    let trigger = request_trigger(&setup.gpio, |_, req| {
        let k = FakeEdgeRequest::new(clock.clone(), req, 1, false);
        kernel = Some(k.clone());
        Ok(k)
    })
    .unwrap();
    let kernel = kernel.unwrap();
    let source = diffad::sources::camera::open(&setup.camera, 10.0, clock.clone()).unwrap();
    // The first part once the pipeline is surely streaming.
    let t0 = clock.now_ns() + 1000 * diffad::clock::MS;
    for i in 0..60 {
        let t = t0 + i * 100 * diffad::clock::MS;
        kernel.drive(0, t, true);
        kernel.drive(0, t + 5 * diffad::clock::MS, false);
    }
    let (tap, rx) = crossbeam_channel::unbounded();
    let opts = Options {
        sinks: vec![Box::new(TapSink(tap))],
        live_log: false,
        ..Default::default()
    };
    let hw = Hardware {
        source,
        pins,
        trigger: Some(trigger),
    };
    let summary = diffad::line::run(
        &setup,
        inspector(clock.clone()),
        clock,
        hw,
        Shutdown::new(),
        opts,
    )
    .unwrap();
    let run = Run {
        summary,
        records: rx.try_iter().collect(),
        pins: _logs,
    };
    println!("{}", run.summary);
    accounted(&run, 60);
    let c = &run.summary.counters;
    assert_eq!(c.triggers, 60, "{}", run.summary);
    // 60 parts over 6 s at 10 fps need three pipelines: two outages, parts in them fail safe.
    assert!(c.fault_rejects >= 2, "{}", run.summary);
    assert!(c.passes >= 30, "black frames pass: {}", run.summary);
    for p in run.parts() {
        match p.outcome {
            Outcome::FaultReject => assert!(p.score.is_none(), "{p:?}"),
            Outcome::Pass => assert!(p.score.is_some_and(|s| s < p.threshold), "{p:?}"),
            _ => panic!("{p:?}"),
        }
    }
    let alarms = run.alarms("camera_error");
    assert!(
        alarms.iter().filter(|a| a.active).count() >= 2,
        "{alarms:?}"
    );
    assert!(
        alarms.iter().filter(|a| !a.active).count() >= 2,
        "{alarms:?}"
    );
    assert!(
        run.records.iter().any(|r| matches!(&r.event, Event::Alarm(a) if a.code == "camera_error" && a.message.contains("identity"))),
        "the element's own error text is in the alarm"
    );
}

#[test]
fn a_stalled_pipeline_is_rebuilt_and_a_looped_video_plays_again_without_an_alarm() {
    use diffad::sources::camera::{self, SourceError};
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    // A live source that never delivers (every buffer dropped): stalled within the start
    // timeout, rebuilt on the next call after a backoff.
    let s = setup(
        r#"source = "gstreamer"
        [camera.gstreamer]
        pipeline = 'videotestsrc is-live=true ! identity drop-probability=1.0 ! videoconvert ! appsink name=sink'
        start_timeout_ms = 300"#,
        None,
    );
    let mut src = camera::open(&s.camera, 10.0, clock.clone()).unwrap();
    let t = std::time::Instant::now();
    let mut stalls = 0;
    while stalls < 2 {
        match src.next_frame() {
            Err(SourceError::Timeout(_)) => {}
            Err(SourceError::Disconnected(e)) => {
                assert!(
                    e.contains("stalled") && e.contains("start_timeout_ms"),
                    "{e}"
                );
                stalls += 1;
            }
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed().as_secs() < 10, "no stall seen");
    }
    // Two starts of 300 ms and one backoff of 250 ms between them.
    assert!(t.elapsed().as_millis() >= 800, "{:?}", t.elapsed());

    // A 5-frame clip on "loop": 12 frames in a row, no error, frame numbers continuing.
    let s = setup(
        r#"source = "gstreamer"
        [camera.gstreamer]
        pipeline = 'videotestsrc num-buffers=5 ! video/x-raw,width=64,height=64,framerate=100/1 ! videoconvert ! appsink name=sink'
        eos = "loop""#,
        None,
    );
    let mut src = camera::open(&s.camera, 10.0, clock).unwrap();
    let mut seqs = Vec::new();
    while seqs.len() < 12 {
        match src.next_frame() {
            Ok(Some(f)) => {
                seqs.push(f.seq);
                src.recycle(f.data);
            }
            Err(SourceError::Timeout(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seqs, (1..=12).collect::<Vec<u64>>());
    assert_eq!(src.dropped(), 0);
}

#[test]
fn doctor_names_a_missing_element_and_its_package() {
    let dir = tempfile::tempdir().unwrap();
    let path = board(
        dir.path(),
        "pipeline = \"nvarguscamerasrc sensor-id=0 ! nvvidconv ! video/x-raw,format=GRAY8 ! appsink name=sink\"",
    );
    let (_, t) = diffad(&["doctor", "--config", path.to_str().unwrap()]);
    let line = t
        .lines()
        .skip_while(|l| !l.contains(" camera "))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        line.contains('✗') && line.contains("`nvarguscamerasrc`"),
        "{t}"
    );
    assert!(line.contains("nvidia-l4t-gstreamer"), "{t}");
    let path = board(
        dir.path(),
        "pipeline = \"videotestsrc ! videoconvert ! appsink name=sink\"",
    );
    let (_, t) = diffad(&["doctor", "--config", path.to_str().unwrap()]);
    let line = t
        .lines()
        .find(|l| l.contains(" camera "))
        .unwrap_or_default();
    assert!(line.contains('✓') && line.contains("videotestsrc"), "{t}");
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time of the whole process (GStreamer's streaming threads too), in nanoseconds.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn megapixel_frames_reuse_their_buffers_and_the_source_costs_little_per_frame() {
    use diffad::sources::camera::{self, SourceError};
    // 1280×1024 as a machine-vision camera gives it: the source's own cost (pull, map, row
    // copy on the capture thread), and the pipeline's (drawing YUY2, converting to GRAY8).
    let n = 150;
    let s = setup(
        &format!(
            r#"source = "gstreamer"
            [camera.gstreamer]
            pipeline = 'videotestsrc num-buffers={n} pattern=snow ! video/x-raw,format=YUY2,width=1280,height=1024 ! videoconvert ! appsink name=sink'
            sync = false
            eos = "end""#
        ),
        None,
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let mut src = camera::open(&s.camera, 10.0, clock).unwrap();
    let mut seen = std::collections::HashSet::new();
    let (mut frames, mut fresh_after_warmup) = (0, 0);
    let (t0, p0) = (thread_cpu_ns(), process_cpu_ns());
    let wall = std::time::Instant::now();
    loop {
        match src.next_frame() {
            Ok(Some(f)) => {
                assert_eq!(f.data.len(), 1280 * 1024);
                frames += 1;
                // The line holds a few frames in flight; here each goes straight back.
                if seen.insert(f.data.as_ptr() as usize) && frames > 2 {
                    fresh_after_warmup += 1;
                }
                src.recycle(f.data);
            }
            Ok(None) => break,
            Err(SourceError::Timeout(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let per = |ns: u64| ns as f64 / 1e6 / frames as f64;
    let (own, all) = (per(thread_cpu_ns() - t0), per(process_cpu_ns() - p0));
    println!(
        "{frames} frames 1280×1024 GRAY8 from YUY2: source {own:.3} ms CPU per frame on the capture thread, \
         {all:.3} ms for the whole process (drawing and conversion included), {:.1} frames/s",
        frames as f64 / wall.elapsed().as_secs_f64()
    );
    assert_eq!(frames, n);
    assert_eq!(
        fresh_after_warmup, 0,
        "a frame buffer was allocated after warm-up"
    );
    assert!(own < 5.0, "{own} ms per frame on the capture thread");
}

#[test]
fn the_jetson_boards_csi_example_is_a_valid_camera_section() {
    for name in [
        "jetson-orin-nano",
        "jetson-orin-nx",
        "jetson-agx-orin",
        "jetson-xavier-nx",
    ] {
        let text =
            std::fs::read_to_string(root().join(format!("board-configs/{name}.toml"))).unwrap();
        let camera: String = text
            .lines()
            .skip_while(|l| *l != "# [camera]")
            .take_while(|l| l.starts_with("# "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        assert!(camera.contains("nvarguscamerasrc"), "{name}: {camera}");
        let s = LineSetup::from_toml(&format!("{camera}[gpio]\nsim = true\n"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            s.camera.source,
            diffad::sources::camera::config::SourceKind::Gstreamer
        );
        // On a desktop only JetPack's own elements are missing: the rest of it is sound.
        match diffad::sources::camera::gstreamer::parse(&s.camera.gstreamer.pipeline) {
            Err(diffad::sources::camera::gstreamer::ParseFailure::Missing(m)) => {
                assert!(m.iter().all(|e| e.starts_with("nv")), "{name}: {m:?}")
            }
            Ok(_) => {} // on a Jetson
            Err(e) => panic!("{name}: {e:?}"),
        }
    }
}

#[test]
fn bad_gstreamer_keys_name_their_key() {
    let pipeline = "pipeline = \"videotestsrc ! videoconvert ! appsink name=sink\"";
    for (keys, key) in [
        ("pipeline = \"  \"", "camera.gstreamer.pipeline"),
        (
            &format!("{pipeline}\nsink = \"\"") as &str,
            "camera.gstreamer.sink",
        ),
        (
            &format!("{pipeline}\nbuffers = 0"),
            "camera.gstreamer.buffers",
        ),
        (
            &format!("{pipeline}\ntimeout_ms = 0"),
            "camera.gstreamer.timeout_ms",
        ),
        (
            &format!("{pipeline}\nstart_timeout_ms = 0"),
            "camera.gstreamer.start_timeout_ms",
        ),
        (
            &format!("{pipeline}\neos = \"stop\""),
            "camera.gstreamer.eos",
        ),
        (
            &format!("{pipeline}\ncolour = \"rgb\""),
            "camera.gstreamer.colour",
        ),
    ] {
        let toml = format!("[camera]\nsource = \"gstreamer\"\n[camera.gstreamer]\n{keys}\n");
        match LineSetup::from_toml(&toml) {
            Ok(_) => panic!("accepted: {toml}"),
            Err(e) => assert_eq!(e.key, key, "{toml}: {e}"),
        }
    }
}

#[test]
fn twenty_rebuilds_leave_no_thread_or_memory_behind() {
    use diffad::sources::camera::{self, SourceError};
    // Threads and memory are the process's: counted in a process of its own, not beside the
    // other tests of this file running in parallel.
    if !common::in_own_process("twenty_rebuilds_leave_no_thread_or_memory_behind", &[]) {
        return;
    }
    // A camera that ends after 3 frames every time: each end is a failure and a rebuild.
    let s = setup(
        r#"source = "gstreamer"
        [camera.gstreamer]
        pipeline = 'videotestsrc num-buffers=3 ! video/x-raw,width=320,height=240,framerate=200/1 ! videoconvert ! appsink name=sink'"#,
        None,
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let mut src = camera::open(&s.camera, 10.0, clock).unwrap();
    let rebuild = |src: &mut Box<dyn camera::Source>| loop {
        match src.next_frame() {
            Ok(Some(f)) => src.recycle(f.data),
            Err(SourceError::Timeout(_)) => {}
            Err(SourceError::Disconnected(e)) => {
                assert!(e.contains("end of stream"), "{e}");
                return;
            }
            other => panic!("{other:?}"),
        }
    };
    // Warm up: GStreamer's thread pool and registry settle in the first rounds.
    for _ in 0..3 {
        rebuild(&mut src);
    }
    let (threads0, rss0) = common::threads_and_rss();
    for _ in 0..20 {
        rebuild(&mut src);
    }
    let (threads1, rss1) = common::threads_and_rss();
    println!("threads {threads0} -> {threads1}, rss {rss0} -> {rss1} KiB over 20 rebuilds");
    assert!(threads1 <= threads0, "threads {threads0} -> {threads1}");
    assert!(rss1 < rss0 + 4096, "rss {rss0} -> {rss1} KiB");
}
