//! MQTT publisher against a real Mosquitto broker on loopback: the broker is down when the line
//! starts, queued messages arrive once it is up, and a broker restart loses nothing either.

use diffad::mqtt::{connect_packet, parse_packet, Publisher};
use diffad::setup::MqttConfig;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_broker(port: u16) -> Broker {
    assert!(
        std::path::Path::new(MOSQUITTO).exists(),
        "this test needs Mosquitto at {MOSQUITTO} (Debian package `mosquitto`)"
    );
    let child = Command::new(MOSQUITTO)
        .args(["-p", &port.to_string()])
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
    Broker(child)
}

/// A QoS 1 subscriber speaking just enough MQTT 3.1.1.
struct Sub {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Sub {
    fn new(port: u16, filter: &str) -> Self {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&connect_packet("diffad-test-sub", None, None))
            .unwrap();
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).unwrap();
        assert_eq!(ack[3], 0);
        let mut body = vec![0, 1];
        body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        body.extend_from_slice(filter.as_bytes());
        body.push(1);
        let mut pkt = vec![0x82, body.len() as u8];
        pkt.extend(body);
        s.write_all(&pkt).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut me = Self { s, buf: Vec::new() };
        // Wait for SUBACK so nothing published after this returns is missed.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "no SUBACK");
            if me.poll().iter().any(|(k, _)| *k == 0x90) {
                return me;
            }
        }
    }

    /// Read what is there: (packet type byte, topic + payload for PUBLISH).
    fn poll(&mut self) -> Vec<(u8, (String, String))> {
        let mut chunk = [0u8; 8192];
        if let Ok(n) = self.s.read(&mut chunk) {
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let mut out = Vec::new();
        while let Some((first, body, used)) = parse_packet(&self.buf) {
            let kind = first & 0xF0;
            let mut item = (String::new(), String::new());
            if kind == 0x30 {
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                let topic = String::from_utf8_lossy(&body[2..2 + tl]).to_string();
                let qos = (first >> 1) & 3;
                let mut p = 2 + tl;
                if qos > 0 {
                    let id = [body[p], body[p + 1]];
                    p += 2;
                    self.s.write_all(&[0x40, 0x02, id[0], id[1]]).unwrap();
                }
                item = (topic, String::from_utf8_lossy(&body[p..]).to_string());
            }
            out.push((kind, item));
            self.buf.drain(..used);
        }
        out
    }

    fn collect(&mut self, want: usize, within: Duration) -> Vec<(String, String)> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            got.extend(
                self.poll()
                    .into_iter()
                    .filter(|(k, _)| *k == 0x30)
                    .map(|(_, v)| v),
            );
        }
        got
    }
}

fn payload(i: u64) -> Arc<[u8]> {
    Arc::from(format!("{{\"seq\":{i}}}").into_bytes())
}

#[test]
fn broker_down_at_start_then_up_then_restarted_loses_nothing() {
    let port = free_port();
    let cfg = MqttConfig {
        url: format!("mqtt://127.0.0.1:{port}"),
        reconnect_ms: 1500,
        outbox: 100,
        ..Default::default()
    };
    let mut publisher = Publisher::start(&cfg, "l1").unwrap();
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
    let broker = start_broker(port);
    let mut sub = Sub::new(port, "plant/l1/#");
    let got = sub.collect(30, Duration::from_secs(8));
    let seqs: BTreeSet<String> = got.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(seqs.len(), 30, "all 30 queued messages arrive: {got:?}");
    assert!(got.iter().any(|(t, _)| t == "plant/l1/parts"));
    assert!(got.iter().any(|(t, _)| t == "plant/l1/alarms"));

    // Broker restart: messages published while it is down arrive after it comes back.
    drop(sub);
    drop(broker);
    for i in 31..=40 {
        publisher.publish("plant/l1/parts".into(), payload(i));
    }
    std::thread::sleep(Duration::from_millis(200));
    let _broker = start_broker(port);
    let mut sub = Sub::new(port, "plant/l1/#");
    let got = sub.collect(10, Duration::from_secs(8));
    let seqs: BTreeSet<String> = got.iter().map(|(_, p)| p.clone()).collect();
    for i in 31..=40 {
        assert!(
            seqs.contains(&format!("{{\"seq\":{i}}}")),
            "seq {i} missing after restart: {got:?}"
        );
    }
    publisher.stop(Duration::from_secs(1));
}

#[test]
fn overflow_is_counted_not_blocking() {
    let port = free_port();
    let cfg = MqttConfig {
        url: format!("mqtt://127.0.0.1:{port}"),
        outbox: 5,
        ..Default::default()
    };
    let publisher = Publisher::start(&cfg, "l1").unwrap();
    let accepted = (0..8)
        .filter(|&i| publisher.publish("plant/l1/parts".into(), payload(i)))
        .count();
    assert_eq!(accepted, 5);
    assert_eq!(
        publisher
            .stats()
            .overflow
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}
