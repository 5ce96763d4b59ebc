//! `diffad watch` as the reference client of the stream protocol, against real `diffad run`
//! lines: a cut connection and a restart of the line lose and duplicate nothing, and both are
//! announced.

mod common;

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP relay whose open connections the test can cut.
struct Relay {
    addr: String,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(upstream: String) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (o, st) = (open.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let Ok(up) = TcpStream::connect(&upstream) else {
                    continue;
                };
                o.lock()
                    .unwrap()
                    .extend([down.try_clone().unwrap(), up.try_clone().unwrap()]);
                for (mut a, mut b) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { addr, open, stop }
    }

    fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn line(dir: &Path, name: &str, port: u16, parts: u64) -> (Proc, std::path::PathBuf) {
    let board = dir.join(format!("{name}.toml"));
    common::sim_board(&board, &format!("[line]\nname = \"belt\"\npart_rate_hz = 20\nparts = {parts}\nrealtime_priority = 0\nheartbeat_ms = 200\n\
             [supervisor]\nlisten = \"127.0.0.1:{port}\"\n"));
    let summary = dir.join(format!("{name}.json"));
    let child = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["run", "--quiet", "--config"])
        .arg(&board)
        .arg("--summary-json")
        .arg(&summary)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "line {name} never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Proc(child), summary)
}

/// Events delivered by a finished line: its last seq.
fn last_seq(summary: &Path) -> u64 {
    let s: Value = serde_json::from_slice(&std::fs::read(summary).unwrap()).unwrap();
    s["summary"]["events_delivered"].as_u64().unwrap()
}

#[test]
fn watch_gets_every_event_once_across_a_cut_and_a_restart_of_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let relay = Relay::start(format!("127.0.0.1:{port}"));
    let (mut a, a_summary) = line(dir.path(), "a", port, 100_000);

    let mut watch = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["watch", "--json", "--from-start", &relay.addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = watch.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let watch = Proc(watch);
    let mut seen: Vec<Value> = Vec::new();
    let wait_for = |seen: &mut Vec<Value>, pred: &dyn Fn(&[Value]) -> bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pred(seen) {
            assert!(
                Instant::now() < deadline,
                "watch never showed {what}: {seen:?}"
            );
            if let Ok(v) = rx.recv_timeout(Duration::from_millis(100)) {
                seen.push(v);
            }
        }
    };
    let parts = |s: &[Value]| s.iter().filter(|v| v["type"] == "part").count();
    wait_for(&mut seen, &|s| parts(s) >= 10, "10 parts");
    // Cut the connection in the middle of run A: the watch resumes within the run.
    relay.cut();
    wait_for(&mut seen, &|s| parts(s) >= 25, "25 parts after the cut");
    // Stop line A (it flushes its stream), start B on the same port.
    unsafe { libc::kill(a.0.id() as i32, libc::SIGTERM) };
    assert!(a.0.wait().unwrap().success());
    let a_last = last_seq(&a_summary);
    let (_b, b_summary) = line(dir.path(), "b", port, 30);
    wait_for(
        &mut seen,
        &|s| s.iter().any(|v| v["type"] == "restarted"),
        "the restart",
    );
    // B stops by itself after 30 parts; wait for its summary, then for its last event.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&b_summary).map_or(true, |m| m.len() == 0) {
        assert!(Instant::now() < deadline, "line b did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    let b_last = last_seq(&b_summary);
    let restarted = seen
        .iter()
        .find(|v| v["type"] == "restarted")
        .unwrap()
        .clone();
    let b_run = restarted["run"].as_str().unwrap().to_string();
    wait_for(
        &mut seen,
        &|s| {
            s.iter()
                .any(|v| v["run"] == b_run.as_str() && v["seq"].as_u64() == Some(b_last))
        },
        "run B's last event",
    );
    drop(watch);

    let mut by_run: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for v in &seen {
        if let (Some(run), Some(seq)) = (v["run"].as_str(), v["seq"].as_u64()) {
            if v["type"] != "hello" {
                by_run.entry(run.to_string()).or_default().push(seq);
            }
        }
    }
    assert_eq!(by_run.len(), 2, "two runs: {:?}", by_run.keys());
    let a_run = restarted["previous_run"].as_str().unwrap();
    assert_ne!(a_run, b_run);
    assert_eq!(
        by_run[a_run],
        (1..=a_last).collect::<Vec<u64>>(),
        "run A once each"
    );
    assert_eq!(
        by_run[&b_run],
        (1..=b_last).collect::<Vec<u64>>(),
        "run B once each"
    );
    for bad in ["lost", "gap", "run_changed"] {
        assert!(!seen.iter().any(|v| v["type"] == bad), "{bad}: {seen:?}");
    }
    let connects = seen
        .iter()
        .filter(|v| v["type"] == "watch_connected")
        .count();
    let disconnects = seen
        .iter()
        .filter(|v| v["type"] == "watch_disconnected")
        .count();
    assert!(
        connects >= 3 && disconnects >= 2,
        "cut and restart announced: {connects} {disconnects}"
    );
}
