//! The real binary on inputs that used to pass as `ok` or read without end (issue #32):
//! endless model files, boards `run` refuses or that would reject every part, an archive that
//! cannot take a file, and a line where every inspection fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::root;

fn diffad(args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(args)
        .output()
        .unwrap();
    (out, t.elapsed())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A sim board on `model` with `rest` appended; its path.
fn board(dir: &Path, name: &str, model: &Path, rest: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[board]\nname = \"t\"\n[engine]\nmodel = \"{}\"\n[camera]\nsource = \"sim\"\n[gpio]\nsim = true\n[supervisor]\nlisten = \"\"\n{rest}",
            model.display()
        ),
    )
    .unwrap();
    path
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// `check-config` refuses `path`, naming `key` and saying `what`.
fn refused(path: &Path, key: &str, what: &str) {
    let (out, _) = diffad(&["check-config", path.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(!t.contains("ok:"), "{t}");
    assert!(
        t.contains(&format!("`{key}`")) && t.contains(what),
        "want `{key}` and {what:?}: {t}"
    );
}

#[test]
fn an_endless_model_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    for dev in ["/dev/zero", "/dev/urandom"] {
        let path = board(dir.path(), "zero", Path::new(dev), "");
        for args in [
            vec!["check-config", path.to_str().unwrap()],
            vec!["run", "--quiet", "--config", path.to_str().unwrap()],
            vec!["infer", "--model", dev, "x.png"],
        ] {
            let (out, took) = diffad(&args);
            let t = text(&out);
            assert!(!out.status.success(), "{args:?}: {t}");
            assert!(t.contains("a device, not a regular file"), "{args:?}: {t}");
            assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
        }
    }
    // A model over the board's cap is refused by size.
    let path = board(dir.path(), "cap", &fixture("sigmoid-b4.onnx"), "");
    let mut t = std::fs::read_to_string(&path).unwrap();
    t = t.replace("[engine]\n", "[engine]\nmax_model_mb = 0.00001\n");
    std::fs::write(&path, t).unwrap();
    let (out, _) = diffad(&["check-config", path.to_str().unwrap()]);
    assert!(text(&out).contains("engine.max_model_mb"), "{}", text(&out));
}

#[test]
fn check_config_rehearses_what_run_would_refuse_or_fail_safe() {
    let dir = tempfile::tempdir().unwrap();
    let sigmoid = fixture("sigmoid-b4.onnx");
    // A ROI outside the 128×128 simulated frame: every part would fail safe.
    let path = board(
        dir.path(),
        "roi",
        &sigmoid,
        "[camera.roi]\nx = 200\ny = 0\nwidth = 128\nheight = 128\n",
    );
    refused(&path, "camera", "fix camera.roi");

    // Goldens of another graph beside the model: the self-test fails on the CPU.
    let model = dir.path().join("m.onnx");
    std::fs::copy(&sigmoid, &model).unwrap();
    std::fs::copy(
        fixture("sigmoid-tol.golden.json"),
        dir.path().join("m.golden.json"),
    )
    .unwrap();
    let golden = dir.path().join("m.golden");
    std::fs::create_dir_all(&golden).unwrap();
    for f in std::fs::read_dir(fixture("sigmoid-tol.golden")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, golden.join(f.file_name().unwrap())).unwrap();
    }
    let path = board(dir.path(), "golden", &model, "");
    refused(&path, "engine.model", "self-test");

    // A graph whose shapes are not its manifest's (8×8 against 16×16): `run` refuses it at
    // load; `check-config` read only the manifest and said `ok`.
    let path = board(
        dir.path(),
        "shapes",
        &fixture("io-mismatch.onnx"),
        "[engine.self_test]\nenabled = false\n[line]\nthreshold = 0.5\n",
    );
    refused(&path, "engine.model", "does not match its manifest");

    // An empty replay folder.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let path = board(dir.path(), "replay", &sigmoid, "");
    let t = std::fs::read_to_string(&path).unwrap().replace(
        "source = \"sim\"",
        &format!(
            "source = \"replay\"\n[camera.replay]\ndir = \"{}\"",
            empty.display()
        ),
    );
    std::fs::write(&path, t).unwrap();
    refused(&path, "camera", "");

    // An archive folder that cannot be created (its parent is a file).
    let path = board(
        dir.path(),
        "archive",
        &sigmoid,
        "[archive]\ndir = \"/dev/null/archive\"\n",
    );
    refused(&path, "archive.dir", "cannot create");

    // The belt's travel shorter than the real model's frame time on this CPU: 10 mm at
    // 500 mm/s is 20 ms, less the 5 ms margin; tiles-brick takes ~35 ms per frame here.
    let brick = root().join("models/tiles-brick/model.onnx");
    let path = board(
        dir.path(),
        "belt",
        &brick,
        "[line]\nbelt_speed_mm_s = 500.0\ncamera_to_ejector_mm = 10.0\nverdict_margin_ms = 5.0\n",
    );
    refused(
        &path,
        "line.camera_to_ejector_mm",
        "every part would fail safe",
    );

    // The same board with room on the belt passes, and says what it rehearsed.
    let path = board(dir.path(), "fine", &brick, "");
    let (out, _) = diffad(&["check-config", path.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("self-test passed") && t.contains("rehearsed on the CPU"),
        "{t}"
    );
}

#[test]
fn a_read_only_archive_is_refused_by_check_config_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    // Root writes through file modes: a read-only mount is the real thing.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&ro)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        mounted,
        "mounting a read-only tmpfs (this test needs root, as CI has)"
    );
    let path = board(
        dir.path(),
        "ro",
        &fixture("sigmoid-b4.onnx"),
        &format!("[archive]\ndir = \"{}\"\n", ro.display()),
    );
    refused(&path, "archive.dir", "cannot write into");
    let (out, _) = diffad(&["run", "--quiet", "--config", path.to_str().unwrap()]);
    let t = text(&out);
    let _ = Command::new("umount").arg(&ro).status();
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("archive.dir") && t.contains("Read-only"), "{t}");
}

#[test]
fn a_line_whose_every_inspection_fails_stops_loudly_with_every_part_decided() {
    let dir = tempfile::tempdir().unwrap();
    // The self-test off and a ROI outside the frame: every inspection fails.
    let path = board(
        dir.path(),
        "failing",
        &fixture("sigmoid-b4.onnx"),
        "[engine.self_test]\nenabled = false\n[camera.roi]\nx = 200\ny = 0\nwidth = 128\nheight = 128\n\
         [line]\npart_rate_hz = 50.0\nparts = 400\nmax_failed_inspections = 10\n",
    );
    let json = dir.path().join("summary.json");
    let (out, took) = diffad(&[
        "run",
        "--quiet",
        "--config",
        path.to_str().unwrap(),
        "--summary-json",
        json.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("LINE FAULT") && t.contains("10 inspections failed in a row"),
        "{t}"
    );
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let c = &s["summary"]["counters"];
    assert_eq!(s["summary"]["invariant_ok"], true, "{s}");
    // It stopped long before its 400 parts, and every part it took has its outcome.
    let parts = c["triggers"].as_u64().unwrap();
    assert!((10..100).contains(&parts), "{parts} parts");
    assert_eq!(c["fault_rejects"].as_u64().unwrap(), parts);
    assert!(took < Duration::from_secs(8), "{took:?}");

    // With `run_on_failures` the line keeps going, every part fail-safe, and exits 0.
    let t = std::fs::read_to_string(&path)
        .unwrap()
        .replace("parts = 400", "parts = 60\nrun_on_failures = true");
    std::fs::write(&path, t).unwrap();
    // Without --quiet the alarms are logged as they are raised.
    let (out, _) = diffad(&["run", "--config", path.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("parts 60 ") && t.contains("fault-rejects 60"),
        "{t}"
    );
    assert!(
        t.contains("inspection_failing: ready dropped"),
        "the fault is alarmed: {t}"
    );
}

/// A TCP client with a 4 KB receive buffer that never reads: the kernel absorbs little, so the
/// line's own bound on the client is what it meets.
fn non_reader(port: u16) -> std::net::TcpStream {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket calls on a fresh descriptor with valid arguments; the descriptor is
    // owned by the returned stream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(set, 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        std::net::TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn a_stuck_stream_client_of_a_real_line_is_dropped_and_the_line_keeps_time() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let path = board(
        dir.path(),
        "stuck",
        &fixture("sigmoid-b4.onnx"),
        &format!(
            // The reject thread on SCHED_FIFO as on a line (CI runs as root): what is measured
            // is the stuck client, not the tests running beside this one.
            "[line]\npart_rate_hz = 50.0\nparts = 400\nrealtime_priority = 50\n[supervisor]\nlisten = \"127.0.0.1:{port}\"\nclient_queue = 16\n"
        ),
    );
    let t = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[supervisor]\nlisten = \"\"\n", "");
    std::fs::write(&path, t).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["run", "--quiet", "--config", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _kill = common::KillOnPanic(child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let stuck = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break non_reader(port);
        }
        assert!(Instant::now() < deadline, "the line did not listen");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    drop(stuck);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("supervisor clients dropped 1 "), "{t}");
    assert!(t.contains("[every part accounted for]"), "{t}");
    let p99: f64 = t
        .split("reject timing error max ")
        .nth(1)
        .and_then(|r| r.split(" p99 ").nth(1))
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        p99 < 5.0,
        "a stuck client moved the reject edges: p99 {p99} ms: {t}"
    );
}
