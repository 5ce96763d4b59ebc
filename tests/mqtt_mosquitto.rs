//! MQTT publisher against a real Mosquitto broker on loopback, read by `mosquitto_sub` (an
//! independent client): the broker down at start, a broker restart, TLS with client
//! certificates this test makes, overflow, and the broker down at shutdown.

mod common;

#[path = "common/pki.rs"]
mod pki;

use diffad::sinks::mqtt::MqttConfig;
use diffad::sinks::mqtt::Publisher;
use pki::Pki;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn need(tool: &str) -> &str {
    assert!(
        Path::new(tool).exists()
            || Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
        "this test needs {tool} (Debian packages mosquitto, mosquitto-clients, openssl; `scripts/setup --test-deps`)"
    );
    tool
}

/// Start Mosquitto on `port`, plain, or TLS requiring client certificates from `pki`'s CA.
fn broker(port: u16, pki: Option<&Pki>) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    let mut text = format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n");
    if let Some(p) = pki {
        text += &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            p.path("ca.pem").display(),
            p.path("server.pem").display(),
            p.path("server.key").display()
        );
    }
    std::fs::write(&conf, text).unwrap();
    let child = Command::new(need(MOSQUITTO))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not open port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The config file must outlive the broker's start only.
    std::thread::sleep(Duration::from_millis(50));
    Proc(child)
}

fn tls_args(pki: Option<&Pki>) -> Vec<String> {
    pki.map_or_else(Vec::new, |p| {
        vec![
            "--cafile".into(),
            p.path("ca.pem").display().to_string(),
            "--cert".into(),
            p.path("client.pem").display().to_string(),
            "--key".into(),
            p.path("client.key").display().to_string(),
        ]
    })
}

/// `mosquitto_sub` on `plant/#`, lines `topic payload`, ready once it received a probe.
struct Sub {
    _p: Proc,
    rx: mpsc::Receiver<String>,
}

impl Sub {
    fn start(port: u16, pki: Option<&Pki>) -> Self {
        let mut child = Command::new(need("mosquitto_sub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "plant/#",
                "-q",
                "1",
                "-v",
            ])
            .args(tls_args(pki))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let sub = Self {
            _p: Proc(child),
            rx,
        };
        // Subscribed once a probe published now comes back.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "mosquitto_sub never subscribed");
            let _ = Command::new(need("mosquitto_pub"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-t",
                    "plant/probe",
                    "-m",
                    "probe",
                    "-q",
                    "1",
                ])
                .args(tls_args(pki))
                .output();
            if let Ok(l) = sub.rx.recv_timeout(Duration::from_millis(200)) {
                if l == "plant/probe probe" {
                    break;
                }
            }
        }
        sub
    }

    /// Payloads received on `plant/l1/...` until `want` distinct ones or `within` passes.
    fn collect(&self, want: usize, within: Duration) -> BTreeSet<String> {
        self.collect_until(|got| got.len() >= want, within)
    }

    /// Payloads received on `plant/l1/...` until `done` or `within` passes.
    fn collect_until(
        &self,
        done: impl Fn(&BTreeSet<String>) -> bool,
        within: Duration,
    ) -> BTreeSet<String> {
        let mut got = BTreeSet::new();
        let end = Instant::now() + within;
        while !done(&got) && Instant::now() < end {
            if let Ok(l) = self.rx.recv_timeout(Duration::from_millis(50)) {
                if let Some((topic, payload)) = l.split_once(' ') {
                    if topic.starts_with("plant/l1/") && !topic.ends_with("/state") {
                        got.insert(payload.to_string());
                    }
                }
            }
        }
        got
    }
}

fn payload(i: u64) -> Arc<[u8]> {
    Arc::from(format!("{{\"seq\":{i}}}").into_bytes())
}

fn seqs(range: std::ops::RangeInclusive<u64>) -> BTreeSet<String> {
    range.map(|i| format!("{{\"seq\":{i}}}")).collect()
}

#[test]
fn broker_down_at_start_then_up_then_restarted_loses_nothing() {
    let port = common::free_port();
    let cfg = MqttConfig {
        url: format!("mqtt://127.0.0.1:{port}"),
        // Long enough for the subscriber to be ready before the publisher retries.
        reconnect_ms: 3000,
        outbox: 100,
        ..Default::default()
    };
    let mut publisher = Publisher::start(&cfg, "l1", "r1").unwrap();
    // Broker down: everything waits in the outbox, nothing blocks.
    let t = Instant::now();
    for i in 1..=30 {
        assert!(publisher.publish(
            format!("plant/l1/{}", if i % 2 == 0 { "parts" } else { "alarms" }),
            payload(i)
        ));
    }
    assert!(t.elapsed() < Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(100));
    let b = broker(port, None);
    let sub = Sub::start(port, None);
    assert_eq!(sub.collect(30, Duration::from_secs(10)), seqs(1..=30));

    // Broker restart: messages published while it is down arrive after it comes back.
    drop(sub);
    drop(b);
    for i in 31..=40 {
        publisher.publish("plant/l1/parts".into(), payload(i));
    }
    let _b = broker(port, None);
    let sub = Sub::start(port, None);
    let want = seqs(31..=40);
    let got = sub.collect_until(|g| want.is_subset(g), Duration::from_secs(10));
    assert!(
        want.is_subset(&got),
        "nothing lost across the restart: {got:?}"
    );
    // QoS 1: a message the old broker took but did not acknowledge in time comes again.
    assert!(
        got.difference(&want).all(|p| seqs(1..=30).contains(p)),
        "only repeats besides: {got:?}"
    );
    publisher.stop(Duration::from_secs(2));
    assert_eq!(publisher.stats().undelivered.load(Ordering::Relaxed), 0);
    assert!(publisher.stats().connects.load(Ordering::Relaxed) >= 2);
}

#[test]
fn mutual_tls_with_certificates_the_test_makes() {
    let pki = Pki::make();
    let port = common::free_port();
    let _b = broker(port, Some(&pki));
    let sub = Sub::start(port, Some(&pki));
    let cfg = MqttConfig {
        url: format!("mqtts://127.0.0.1:{port}"),
        ca_file: Some(pki.path("ca.pem")),
        cert_file: Some(pki.path("client.pem")),
        key_file: Some(pki.path("client.key")),
        ..Default::default()
    };
    let mut publisher = Publisher::start(&cfg, "l1", "r1").unwrap();
    for i in 1..=20 {
        publisher.publish("plant/l1/parts".into(), payload(i));
    }
    assert_eq!(sub.collect(20, Duration::from_secs(10)), seqs(1..=20));
    publisher.stop(Duration::from_secs(2));
    assert_eq!(publisher.stats().undelivered.load(Ordering::Relaxed), 0);

    // A client certificate from another CA: the broker refuses, nothing arrives, all is held.
    let rogue = MqttConfig {
        cert_file: Some(pki.path("rogue.pem")),
        key_file: Some(pki.path("rogue.key")),
        reconnect_ms: 200,
        ..cfg.clone()
    };
    let mut publisher = Publisher::start(&rogue, "l1", "r1").unwrap();
    publisher.publish("plant/l1/parts".into(), payload(99));
    assert!(sub.collect(1, Duration::from_secs(2)).is_empty());
    publisher.stop(Duration::ZERO);
    assert_eq!(publisher.stats().connects.load(Ordering::Relaxed), 0);
    // The message and the goodbye state.
    assert_eq!(publisher.stats().undelivered.load(Ordering::Relaxed), 2);

    // A CA file that is not one is refused at start, naming the key.
    let bad = MqttConfig {
        ca_file: Some(pki.path("client.key")),
        ..cfg
    };
    let err = Publisher::start(&bad, "l1", "r1").err().expect("refused");
    assert_eq!(err.key, "mqtt.ca_file", "{err}");
}

#[test]
fn overflow_is_counted_not_blocking() {
    let port = common::free_port();
    let cfg = MqttConfig {
        url: format!("mqtt://127.0.0.1:{port}"),
        outbox: 5,
        ..Default::default()
    };
    let publisher = Publisher::start(&cfg, "l1", "r1").unwrap();
    let accepted = (0..8)
        .filter(|&i| publisher.publish("plant/l1/parts".into(), payload(i)))
        .count();
    assert_eq!(accepted, 5);
    assert_eq!(publisher.stats().overflow.load(Ordering::Relaxed), 3);
}

/// The case: the broker is down when the line stops. What could not be delivered is in
/// the summary and its JSON, not only in a log line.
#[test]
fn broker_down_at_shutdown_is_counted_in_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let board = dir.path().join("board.toml");
    common::sim_board(
        &board,
        &format!(
            "[line]\nname = \"l1\"\npart_rate_hz = 50\nparts = 20\nrealtime_priority = 0\n\
             [supervisor]\nlisten = \"\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n"
        ),
    );
    let summary = dir.path().join("summary.json");
    let out = Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["run", "--quiet", "--config"])
        .arg(&board)
        .arg("--summary-json")
        .arg(&summary)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let undelivered = s["summary"]["mqtt_undelivered"].as_u64().unwrap();
    // 20 parts, their rejects, heartbeats: at least one message per part.
    assert!(undelivered >= 20, "{s}");
    assert!(
        text.contains(&format!("undelivered {undelivered}")),
        "{text}"
    );
}

/// The retained state of a line, as a new subscriber gets it (`-C 1 -W S`: one message, waiting
/// at most `wait_s`); `None` when none came or it was not JSON.
fn retained_state(port: u16, wait_s: u32) -> Option<Value> {
    let out = Command::new(need("mosquitto_sub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "plant/l1/state",
        ])
        .args(["-C", "1", "-W", &wait_s.to_string()])
        .output()
        .unwrap();
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).ok()
}

/// A supervisor that subscribes late still learns whether each line is up and ready (retained
/// state), and a line that dies without a goodbye is marked offline by the broker (last will).
#[test]
fn retained_ready_state_and_last_will_for_a_dead_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let _b = broker(port, None);
    let board = dir.path().join("board.toml");
    common::sim_board(&board, &format!("[line]\nname = \"l1\"\npart_rate_hz = 20\nparts = 100000\nrealtime_priority = 0\nheartbeat_ms = 100\n\
             [supervisor]\nlisten = \"\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n"));
    let mut line = Proc(
        Command::new(env!("CARGO_BIN_EXE_diffad"))
            .args(["run", "--quiet", "--config"])
            .arg(&board)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let up = loop {
        if let Some(v) = retained_state(port, 1).filter(|v| v["ready"] == true) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the line never published a ready state"
        );
    };
    assert_eq!(up["online"], true, "{up}");
    let run = up["run"].as_str().unwrap().to_string();
    // Killed: no goodbye. The broker publishes the will.
    line.0.kill().unwrap();
    line.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let down = loop {
        let v = retained_state(port, 5).expect("a retained state within 5 s");
        if v["online"] == false || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (&down["online"], &down["ready"], down["run"].as_str()),
        (&Value::Bool(false), &Value::Bool(false), Some(run.as_str())),
        "{down}"
    );
}
