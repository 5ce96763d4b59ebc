//! MQTT publisher: parts, rejects, alarms and heartbeats to `<prefix>/<line>/<kind>`.
//!
//! A small MQTT 3.1.1 client over std TCP, QoS 1. Messages stay in a bounded outbox until the
//! broker acknowledges them, so a broker outage or restart loses nothing that fits (a message
//! may arrive twice after a reconnect: consumers dedupe by `seq`). What does not fit is counted.
//! Publishing never blocks the line.

use crate::events::{Event, Record, Sink};
use crate::setup::MqttConfig;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const KEEP_ALIVE_S: u16 = 30;
const WINDOW: usize = 64;

/// Publisher counters.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// Messages acknowledged by the broker.
    pub acked: AtomicU64,
    /// Messages that did not fit in the outbox.
    pub overflow: AtomicU64,
    /// Successful connections.
    pub connects: AtomicU64,
}

struct Outbox {
    queue: Mutex<VecDeque<(String, Arc<[u8]>)>>,
    cv: Condvar,
    cap: usize,
}

/// The MQTT publisher thread and its outbox.
pub struct Publisher {
    outbox: Arc<Outbox>,
    stats: Arc<MqttStats>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    topic_base: String,
}

/// Topic suffix for an event, `None` for events not published.
pub fn topic_kind(e: &Event) -> Option<&'static str> {
    match e {
        Event::Part(_) => Some("parts"),
        Event::Reject(_) => Some("rejects"),
        Event::Alarm(_) => Some("alarms"),
        Event::Heartbeat(_) => Some("heartbeat"),
        Event::Log(_) => None,
    }
}

impl Publisher {
    /// Start the publisher for line `line`; it connects (and reconnects) in the background.
    pub fn start(cfg: &MqttConfig, line: &str) -> Result<Self, crate::config::Invalid> {
        cfg.validate()?;
        let (_, host, port) = cfg.endpoint()?;
        let password = match (&cfg.password, &cfg.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| {
                        crate::config::Invalid::new(
                            "mqtt.password_file",
                            format!("{}: {e}", f.display()),
                        )
                    })?
                    .trim_end()
                    .to_string(),
            ),
            _ => None,
        };
        let conn = ConnParams {
            host,
            port,
            client_id: cfg
                .client_id
                .clone()
                .unwrap_or_else(|| format!("diffad-{line}")),
            username: cfg.username.clone(),
            password,
            reconnect: Duration::from_millis(cfg.reconnect_ms.max(10)),
        };
        let outbox = Arc::new(Outbox {
            queue: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
            cap: cfg.outbox,
        });
        let stats = Arc::new(MqttStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (o, s, st) = (outbox.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("mqtt".into())
                .spawn(move || run(conn, o, s, st))
                .map_err(|e| {
                    crate::config::Invalid::new("mqtt", format!("cannot start thread: {e}"))
                })?
        };
        Ok(Self {
            outbox,
            stats,
            stop,
            handle: Some(handle),
            topic_base: format!("{}/{}", cfg.prefix.trim_end_matches('/'), line),
        })
    }

    /// Queue a message; returns false (and counts it) when the outbox is full.
    pub fn publish(&self, topic: String, payload: Arc<[u8]>) -> bool {
        let mut q = self.outbox.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.outbox.cap {
            self.stats.overflow.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.push_back((topic, payload));
        self.outbox.cv.notify_all();
        true
    }

    /// Counters.
    pub fn stats(&self) -> &MqttStats {
        &self.stats
    }

    /// Messages not yet acknowledged.
    pub fn queued(&self) -> usize {
        self.outbox
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// A sink for the event bus that publishes through this publisher.
    pub fn sink(self: &Arc<Self>) -> Box<dyn Sink> {
        Box::new(MqttSink(self.clone()))
    }

    /// Wait up to `grace` for the outbox to drain, then disconnect.
    pub fn stop(&mut self, grace: Duration) {
        let end = Instant::now() + grace;
        while self.queued() > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.queued();
        if left > 0 {
            log::warn!("mqtt: {left} messages not delivered at shutdown");
        }
        self.stop.store(true, Ordering::Relaxed);
        self.outbox.cv.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

struct MqttSink(Arc<Publisher>);

impl Sink for MqttSink {
    fn deliver(&mut self, rec: &Arc<Record>) {
        if let Some(kind) = topic_kind(&rec.event) {
            self.0.publish(
                format!("{}/{kind}", self.0.topic_base),
                Arc::from(rec.json.as_bytes()),
            );
        }
    }
}

struct ConnParams {
    host: String,
    port: u16,
    client_id: String,
    username: Option<String>,
    password: Option<String>,
    reconnect: Duration,
}

fn run(p: ConnParams, outbox: Arc<Outbox>, stats: Arc<MqttStats>, stop: Arc<AtomicBool>) {
    let mut pkid: u16 = 0;
    // Warn once per outage, not once per retry.
    let mut warned_after: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = session(&p, &outbox, &stats, &stop, &mut pkid) {
            let connects = stats.connects.load(Ordering::Relaxed);
            if warned_after != Some(connects) {
                log::warn!(
                    "mqtt {}:{}: {e}; retrying every {:?}, {} messages held",
                    p.host,
                    p.port,
                    p.reconnect,
                    outbox.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
                );
                warned_after = Some(connects);
            }
        }
        let q = outbox.queue.lock().unwrap_or_else(|e| e.into_inner());
        let _ = outbox
            .cv
            .wait_timeout_while(q, p.reconnect, |_| !stop.load(Ordering::Relaxed));
    }
}

fn session(
    p: &ConnParams,
    outbox: &Outbox,
    stats: &MqttStats,
    stop: &AtomicBool,
    pkid: &mut u16,
) -> std::io::Result<()> {
    let addr = (p.host.as_str(), p.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&connect_packet(
        &p.client_id,
        p.username.as_deref(),
        p.password.as_deref(),
    ))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(std::io::Error::other(format!(
            "broker refused connection (CONNACK code {})",
            ack[3]
        )));
    }
    stats.connects.fetch_add(1, Ordering::Relaxed);
    log::info!("mqtt connected to {}:{}", p.host, p.port);
    s.set_read_timeout(Some(Duration::from_millis(20)))?;
    // In-flight packet ids, in send order; they match the outbox's first entries.
    let mut inflight: VecDeque<u16> = VecDeque::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut last_sent = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            let _ = s.write_all(&[0xE0, 0x00]);
            return Ok(());
        }
        let to_send: Vec<(String, Arc<[u8]>)> = {
            let q = outbox.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.iter()
                .skip(inflight.len())
                .take(WINDOW.saturating_sub(inflight.len()))
                .cloned()
                .collect()
        };
        for (topic, payload) in to_send {
            *pkid = if *pkid == u16::MAX { 1 } else { *pkid + 1 };
            s.write_all(&publish_packet(&topic, *pkid, &payload))?;
            inflight.push_back(*pkid);
            last_sent = Instant::now();
        }
        if last_sent.elapsed() > Duration::from_secs(KEEP_ALIVE_S as u64 / 2) {
            s.write_all(&[0xC0, 0x00])?;
            last_sent = Instant::now();
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return Err(std::io::Error::other("broker closed the connection")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
        while let Some((kind, body, used)) = parse_packet(&buf) {
            if kind >> 4 == 4 && body.len() >= 2 {
                let id = u16::from_be_bytes([body[0], body[1]]);
                // QoS 1 acks come in publish order; anything else is a protocol surprise we skip.
                if let Some(pos) = inflight.iter().position(|&x| x == id) {
                    let mut q = outbox.queue.lock().unwrap_or_else(|e| e.into_inner());
                    for _ in 0..=pos {
                        inflight.pop_front();
                        q.pop_front();
                    }
                    stats.acked.fetch_add(pos as u64 + 1, Ordering::Relaxed);
                }
            }
            buf.drain(..used);
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn with_header(first: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend(body);
    out
}

/// An MQTT 3.1.1 CONNECT with a clean session.
pub fn connect_packet(client_id: &str, user: Option<&str>, pass: Option<&str>) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, b"MQTT");
    b.push(4);
    let mut flags = 0x02;
    if user.is_some() {
        flags |= 0x80;
    }
    if pass.is_some() {
        flags |= 0x40;
    }
    b.push(flags);
    b.extend_from_slice(&KEEP_ALIVE_S.to_be_bytes());
    put_str(&mut b, client_id.as_bytes());
    if let Some(u) = user {
        put_str(&mut b, u.as_bytes());
    }
    if let Some(p) = pass {
        put_str(&mut b, p.as_bytes());
    }
    with_header(0x10, b)
}

/// A QoS 1 PUBLISH.
pub fn publish_packet(topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(topic.len() + payload.len() + 4);
    put_str(&mut b, topic.as_bytes());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(payload);
    with_header(0x32, b)
}

/// Split one whole packet off `buf`: (first byte, body, bytes used).
pub fn parse_packet(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    let first = *buf.first()?;
    let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
    loop {
        let b = *buf.get(i)?;
        len += (b & 0x7F) as usize * mult;
        mult *= 128;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return None;
        }
    }
    let end = i + len;
    (buf.len() >= end).then(|| (first, &buf[i..end], end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_encode_and_parse() {
        let p = publish_packet("a/b", 7, &[1u8; 200]);
        let (first, body, used) = parse_packet(&p).unwrap();
        assert_eq!((first, used), (0x32, p.len()));
        assert_eq!(&body[..5], &[0, 3, b'a', b'/', b'b']);
        assert_eq!(&body[5..7], &[0, 7]);
        assert!(parse_packet(&p[..p.len() - 1]).is_none());
        let c = connect_packet("id", Some("u"), Some("p"));
        assert_eq!(c[0], 0x10);
        assert_eq!(c[1] as usize, c.len() - 2);
        assert_eq!(c[2 + 7], 0x02 | 0x80 | 0x40);
    }
}
