//! The supervisor stream over TLS with client certificates, against `diffad run`: a supervisor
//! with a certificate the CA signed reads the line through `diffad watch`; clients without one
//! (plain TCP, TLS without or with a foreign certificate) read nothing, are counted, and 100 of
//! them do not slow the line. A private key others may read is refused.

mod common;
#[path = "common/pki.rs"]
mod pki;

use pki::Pki;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn board(dir: &Path, pki: &Pki, port: u16, parts: u64) -> PathBuf {
    let board = dir.join(format!("board-{port}.toml"));
    common::sim_board(
        &board,
        &format!(
            "[line]\nname = \"belt\"\npart_rate_hz = 20\nparts = {parts}\nrealtime_priority = 0\n\
             [supervisor]\nlisten = \"127.0.0.1:{port}\"\nmax_clients = 16\n\
             [supervisor.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            pki.path("server.pem").display(),
            pki.path("server.key").display(),
            pki.path("ca.pem").display()
        ),
    );
    board
}

/// Run a line while `during` runs beside it, to its end (or stopped after `during` with
/// SIGTERM when `stop`); its summary JSON.
fn run_line(board: &Path, port: u16, stop: bool, during: impl FnOnce()) -> Value {
    let summary = board.with_extension("json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["run", "--quiet", "--config"])
        .arg(board)
        .arg("--summary-json")
        .arg(&summary)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _reaper = common::KillOnPanic(child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the line never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    during();
    if stop {
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    s["summary"].clone()
}

/// `diffad watch --json` with these TLS options; its output lines until it is stopped.
fn watch(port: u16, tls: &[String], for_: Duration) -> Vec<Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["watch", "--json", "--from-start"])
        .args(tls)
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _reaper = common::KillOnPanic(child.id());
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .map(|l| serde_json::from_str::<Value>(&l).unwrap())
            .collect::<Vec<_>>()
    });
    std::thread::sleep(for_);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    reader.join().unwrap()
}

fn args(pki: &Pki, cert: Option<&str>) -> Vec<String> {
    let mut a = vec!["--ca".to_string(), pki.path("ca.pem").display().to_string()];
    if let Some(c) = cert {
        a.extend([
            "--cert".into(),
            pki.path(&format!("{c}.pem")).display().to_string(),
            "--key".into(),
            pki.path(&format!("{c}.key")).display().to_string(),
        ]);
    }
    a
}

#[test]
fn only_supervisors_with_a_signed_certificate_read_the_stream() {
    let pki = Pki::make();
    let dir = tempfile::tempdir().unwrap();

    // The key as the test made it (mode 644): refused, naming the file and the mode.
    let port = common::free_port();
    let b = board(dir.path(), &pki, port, 100_000);
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["run", "--quiet", "--config"])
        .arg(&b)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("supervisor.tls.key_file")
            && err.contains("server.key")
            && err.contains("0644"),
        "{err}"
    );
    std::fs::set_permissions(
        pki.path("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let mut seen = Vec::new();
    let mut nothing: Vec<(String, Vec<Value>)> = Vec::new();
    let summary = run_line(&b, port, true, || {
        seen = watch(port, &args(&pki, Some("client")), Duration::from_secs(2));
        for (what, tls) in [
            ("no certificate", args(&pki, None)),
            ("a self-signed certificate", args(&pki, Some("rogue"))),
        ] {
            nothing.push((what.into(), watch(port, &tls, Duration::from_millis(1500))));
        }
        // Plain TCP to the TLS port: it never sees a line of JSON.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(7))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(
            !got.windows(5).any(|w| w == b"\"seq\""),
            "plain TCP read events"
        );
    });
    let parts = seen.iter().filter(|v| v["type"] == "part").count();
    assert!(parts >= 10, "the signed supervisor reads parts: {seen:?}");
    for (what, lines) in &nothing {
        assert!(
            !lines
                .iter()
                .any(|v| v.get("seq").is_some() || v["type"] == "hello"),
            "{what}: read {lines:?}"
        );
        assert!(
            lines.iter().any(|v| v["type"] == "watch_disconnected"),
            "{what}: the refusal is shown: {lines:?}"
        );
    }
    assert!(
        summary["supervisor_tls_rejected"].as_u64().unwrap() >= 3,
        "{summary}"
    );
    assert_eq!(summary["invariant_ok"], true);
}

#[test]
fn a_hundred_failed_handshakes_do_not_slow_the_line() {
    let pki = Pki::make();
    std::fs::set_permissions(
        pki.path("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let parts = 60;
    let quiet_port = common::free_port();
    let quiet = run_line(
        &board(dir.path(), &pki, quiet_port, parts),
        quiet_port,
        false,
        || {},
    );
    let port = common::free_port();
    let no_cert = diffad::sinks::tls::client(&pki.path("ca.pem"), None).unwrap();
    let attacked = run_line(&board(dir.path(), &pki, port, parts), port, false, || {
        std::thread::scope(|s| {
            for _ in 0..10 {
                let cfg = no_cert.clone();
                s.spawn(move || {
                    for _ in 0..10 {
                        let Ok(sock) = TcpStream::connect(("127.0.0.1", port)) else {
                            continue;
                        };
                        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                        let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
                        let mut tls = rustls::StreamOwned::new(conn, sock);
                        let mut buf = [0u8; 64];
                        assert!(
                            !matches!(tls.read(&mut buf), Ok(n) if n > 0),
                            "a client without a certificate read something"
                        );
                    }
                });
            }
        });
    });
    eprintln!(
        "inspected in time: quiet {} of {parts}, with 100 failed handshakes {} of {parts}; rejected {}",
        quiet["inspected_in_time"], attacked["inspected_in_time"], attacked["supervisor_tls_rejected"]
    );
    assert_eq!(quiet["inspected_in_time"].as_u64(), Some(parts));
    assert_eq!(attacked["inspected_in_time"].as_u64(), Some(parts));
    assert!(
        attacked["supervisor_tls_rejected"].as_u64().unwrap() >= 100,
        "{attacked}"
    );
}
