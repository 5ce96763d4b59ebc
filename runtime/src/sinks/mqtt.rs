//! MQTT publisher: parts, rejects, alarms and heartbeats to `<prefix>/<line>/<kind>`, QoS 1,
//! on `rumqttc` (TLS through rustls for `mqtts://`).
//!
//! Messages stay in a bounded outbox of our own until the broker acknowledges them: rumqttc
//! forgets unacknowledged messages when a broker comes back without the session (a restart
//! without persistence), so after every reconnect this publisher sends again what was not
//! acknowledged. A message may therefore arrive twice; consumers dedupe by `(run, seq)`. What
//! does not fit in the outbox is counted, and so is what is still in it at shutdown. Publishing
//! never blocks the line.

use crate::config::Invalid;
use crate::events::{Event, Record, Sink};
use crossbeam_channel::{Receiver, Sender};
use rumqttc::{Client, Connection, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const KEEP_ALIVE: Duration = Duration::from_secs(30);

mod config;
pub use config::MqttConfig;

/// Messages handed to the client and not yet acknowledged.
const WINDOW: usize = 64;
/// How long the oldest handed message may wait for its acknowledgement before everything
/// unacknowledged is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(1);

/// Largest message either way; part events with long reasons stay far below it.
const MAX_PACKET: usize = 1 << 20;

/// Publisher counters.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// Messages that did not fit in the outbox.
    pub overflow: AtomicU64,
    /// Successful connections.
    pub connects: AtomicU64,
    /// Messages still unacknowledged when the publisher stopped.
    pub undelivered: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting to be handed to the client (again, after a reconnect).
    Unsent,
    /// Handed to the client in this connection.
    Handed,
    Acked,
}

struct Message {
    topic: String,
    payload: Arc<[u8]>,
    retain: bool,
    state: State,
    /// When it was last handed to the client.
    handed_at: Option<Instant>,
}

/// Messages not yet acknowledged, oldest first.
struct Outbox {
    queue: Mutex<VecDeque<Message>>,
    cap: usize,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The MQTT publisher thread and its outbox.
pub struct Publisher {
    outbox: Arc<Outbox>,
    stats: Arc<MqttStats>,
    stop: Arc<AtomicBool>,
    wake: Sender<()>,
    handle: Option<JoinHandle<()>>,
    topic_base: String,
    run: String,
}

/// Topic suffix for an event, `None` for events not published.
pub fn topic_kind(e: &Event) -> Option<&'static str> {
    match e {
        Event::Part(_) => Some("parts"),
        Event::Reject(_) => Some("rejects"),
        Event::Alarm(_) => Some("alarms"),
        Event::Heartbeat(_) => Some("heartbeat"),
        Event::Log(_) | Event::Shadow(_) | Event::ShadowReport(_) => None,
    }
}

/// The rustls client configuration for `mqtts://`: the CA file (else the system's roots) and,
/// for mutual TLS, the client certificate and key.
pub fn tls_config(cfg: &MqttConfig) -> Result<rustls::ClientConfig, Invalid> {
    let roots = match &cfg.ca_file {
        Some(f) => crate::sinks::tls::roots(f).map_err(|e| Invalid::new("mqtt.ca_file", e))?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(Invalid::new(
                    "mqtt.ca_file",
                    "mqtts:// without ca_file needs the system's CA certificates (Debian: ca-certificates); or give the broker's CA file",
                ));
            }
            roots
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(crate::sinks::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Invalid::new("mqtt.url", format!("TLS: {e}")))?
        .with_root_certificates(roots);
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let chain =
                crate::sinks::tls::certs(cert).map_err(|e| Invalid::new("mqtt.cert_file", e))?;
            let key = crate::sinks::tls::key(key).map_err(|e| Invalid::new("mqtt.key_file", e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Invalid::new("mqtt.key_file", format!("does not fit cert_file: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The retained `<prefix>/<line>/state` payload: whether the line is up and ready, for which run.
pub fn state_payload(online: bool, ready: bool, run: &str) -> Arc<[u8]> {
    Arc::from(
        serde_json::json!({"online": online, "ready": ready, "run": run})
            .to_string()
            .into_bytes(),
    )
}

impl Publisher {
    /// Start the publisher for run `run` of line `line`; it connects (and reconnects) in the
    /// background. The broker holds `<prefix>/<line>/state` retained, and publishes it as
    /// offline (the last will) if the connection dies without a goodbye.
    pub fn start(cfg: &MqttConfig, line: &str, run: &str) -> Result<Self, Invalid> {
        cfg.validate()?;
        let (tls, host, port) = cfg.endpoint()?;
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("diffad-{line}"));
        let mut opts = MqttOptions::new(client_id, host.clone(), port);
        opts.set_keep_alive(KEEP_ALIVE)
            // The outbox, not the broker's session, is what survives a reconnect.
            .set_clean_session(true)
            .set_inflight(WINDOW as u16)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let topic_base = format!("{}/{}", cfg.prefix.trim_end_matches('/'), line);
        opts.set_last_will(rumqttc::LastWill::new(
            format!("{topic_base}/state"),
            state_payload(false, false, run).to_vec(),
            QoS::AtLeastOnce,
            true,
        ));
        let password = match (&cfg.password, &cfg.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| {
                        Invalid::new("mqtt.password_file", format!("{}: {e}", f.display()))
                    })?
                    .trim_end()
                    .to_string(),
            ),
            _ => None,
        };
        if let Some(user) = &cfg.username {
            opts.set_credentials(user.clone(), password.unwrap_or_default());
        }
        if tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(cfg)?)),
            ));
        }
        let (client, connection) = Client::new(opts, WINDOW);
        let outbox = Arc::new(Outbox {
            queue: Mutex::new(VecDeque::new()),
            cap: cfg.outbox,
        });
        let stats = Arc::new(MqttStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, woken) = crossbeam_channel::bounded(1);
        let (net_tx, net_rx) = crossbeam_channel::bounded(4 * WINDOW);
        let reconnect = Duration::from_millis(cfg.reconnect_ms.max(10));
        let endpoint = format!("{host}:{port}");
        let spawn_err =
            |e: std::io::Error| Invalid::new("mqtt", format!("cannot start thread: {e}"));
        {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("mqtt-net".into())
                .spawn(move || network(connection, net_tx, stop, reconnect))
                .map_err(spawn_err)?;
        }
        let handle = {
            let (o, s, st) = (outbox.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("mqtt".into())
                .spawn(move || publish_loop(client, net_rx, woken, o, s, st, endpoint))
                .map_err(spawn_err)?
        };
        Ok(Self {
            outbox,
            stats,
            stop,
            wake,
            handle: Some(handle),
            topic_base,
            run: run.to_string(),
        })
    }

    /// Queue a message; returns false (and counts it) when the outbox is full.
    pub fn publish(&self, topic: String, payload: Arc<[u8]>) -> bool {
        self.enqueue(topic, payload, false)
    }

    /// Queue the retained state of the line.
    fn publish_state(&self, online: bool, ready: bool) -> bool {
        self.enqueue(
            format!("{}/state", self.topic_base),
            state_payload(online, ready, &self.run),
            true,
        )
    }

    fn enqueue(&self, topic: String, payload: Arc<[u8]>, retain: bool) -> bool {
        {
            let mut q = self.outbox.lock();
            if q.len() >= self.outbox.cap {
                self.stats.overflow.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            q.push_back(Message {
                topic,
                payload,
                retain,
                state: State::Unsent,
                handed_at: None,
            });
        }
        let _ = self.wake.try_send(());
        true
    }

    /// Counters.
    pub fn stats(&self) -> &MqttStats {
        &self.stats
    }

    /// Messages not yet acknowledged.
    pub fn queued(&self) -> usize {
        self.outbox.lock().len()
    }

    /// A sink for the event bus that publishes through this publisher.
    pub fn sink(self: &Arc<Self>) -> Box<dyn Sink> {
        Box::new(MqttSink {
            publisher: self.clone(),
            ready: None,
        })
    }

    /// Wait up to `grace` for the outbox to drain, then disconnect; what is left is counted in
    /// `undelivered`.
    pub fn stop(&mut self, grace: Duration) {
        if self.handle.is_none() {
            return;
        }
        // A goodbye replaces the last will: the line stopped on purpose.
        self.publish_state(false, false);
        let end = Instant::now() + grace;
        while self.queued() > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.queued() as u64;
        self.stats.undelivered.store(left, Ordering::Relaxed);
        if left > 0 {
            log::warn!(
                "mqtt: {left} messages not delivered at shutdown (counted as mqtt undelivered)"
            );
        }
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.try_send(());
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

struct MqttSink {
    publisher: Arc<Publisher>,
    /// The `ready` last published in the retained state.
    ready: Option<bool>,
}

impl Sink for MqttSink {
    fn deliver(&mut self, rec: &Arc<Record>) {
        let p = &self.publisher;
        if let Some(kind) = topic_kind(&rec.event) {
            p.publish(
                format!("{}/{kind}", p.topic_base),
                Arc::from(rec.json.as_bytes()),
            );
        }
        if let Event::Heartbeat(h) = &rec.event {
            if self.ready != Some(h.ready) && p.publish_state(true, h.ready) {
                self.ready = Some(h.ready);
            }
        }
    }
}

/// What the network thread reports.
enum Net {
    Connected,
    Sent(u16),
    Acked(u16),
    Down(String),
}

/// Drives rumqttc's event loop: it connects, writes, reads and reconnects; this thread only
/// reports what happened, and waits `reconnect` after each failure.
fn network(mut conn: Connection, tx: Sender<Net>, stop: Arc<AtomicBool>, reconnect: Duration) {
    for ev in conn.iter() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let msg = match ev {
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => Net::Connected,
            Ok(rumqttc::Event::Outgoing(Outgoing::Publish(pkid))) => Net::Sent(pkid),
            Ok(rumqttc::Event::Incoming(Packet::PubAck(a))) => Net::Acked(a.pkid),
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(Net::Down(e.to_string()));
                let end = Instant::now() + reconnect;
                while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
        };
        if tx.send(msg).is_err() {
            break;
        }
    }
}

/// Messages handed to the client and not yet acknowledged, by their place in the outbox.
#[derive(Default)]
struct InFlight {
    /// Messages are numbered for good: the front of the outbox is number `retired`.
    retired: u64,
    /// Handed messages waiting for their packet id, in the order handed (rumqttc keeps it).
    awaiting_id: VecDeque<u64>,
    by_pkid: HashMap<u16, u64>,
}

impl InFlight {
    /// Hand unsent messages to the client while fewer than `WINDOW` are unacknowledged.
    fn hand_out(&mut self, client: &Client, outbox: &Outbox) {
        let mut q = outbox.lock();
        let handed = q.iter().filter(|m| m.state == State::Handed).count();
        let mut room = WINDOW.saturating_sub(handed);
        for (i, m) in q
            .iter_mut()
            .enumerate()
            .filter(|(_, m)| m.state == State::Unsent)
        {
            if room == 0 {
                break;
            }
            match client.try_publish(
                m.topic.clone(),
                QoS::AtLeastOnce,
                m.retain,
                m.payload.to_vec(),
            ) {
                Ok(()) => {
                    m.state = State::Handed;
                    m.handed_at = Some(Instant::now());
                    self.awaiting_id.push_back(self.retired + i as u64);
                    room -= 1;
                }
                Err(_) => break,
            }
        }
    }

    fn sent(&mut self, pkid: u16) {
        if let Some(n) = self.awaiting_id.pop_front() {
            self.by_pkid.insert(pkid, n);
        }
    }

    /// The broker acknowledged `pkid`: retire every acknowledged message at the front.
    fn acked(&mut self, pkid: u16, outbox: &Outbox) {
        let Some(n) = self.by_pkid.remove(&pkid) else {
            return;
        };
        let mut q = outbox.lock();
        if let Some(m) = q.get_mut((n - self.retired) as usize) {
            m.state = State::Acked;
        }
        while q.front().is_some_and(|m| m.state == State::Acked) {
            q.pop_front();
            self.retired += 1;
        }
    }

    /// The oldest message was handed `RESEND_AFTER` ago and is still not acknowledged: its
    /// acknowledgement was lost or went to another message. Packet ids are matched to messages
    /// by the order rumqttc reports sends, and a reconnect can replay requests rumqttc still
    /// held, which shifts that order; sending everything unacknowledged again (QoS 1 allows
    /// repeats) is what gets the outbox moving again, where waiting would hold it forever.
    fn stalled(&self, outbox: &Outbox) -> bool {
        outbox.lock().front().is_some_and(|m| {
            m.state == State::Handed && m.handed_at.is_some_and(|t| t.elapsed() > RESEND_AFTER)
        })
    }

    /// The connection dropped: rumqttc drops what it had in flight with a clean session, so
    /// everything handed is sent again.
    fn lost(&mut self, outbox: &Outbox) {
        for m in outbox
            .lock()
            .iter_mut()
            .filter(|m| m.state == State::Handed)
        {
            m.state = State::Unsent;
        }
        self.by_pkid.clear();
        self.awaiting_id.clear();
    }
}

/// Hands outbox messages to the client within the window and retires them as acks come.
fn publish_loop(
    client: Client,
    net: Receiver<Net>,
    woken: Receiver<()>,
    outbox: Arc<Outbox>,
    stats: Arc<MqttStats>,
    stop: Arc<AtomicBool>,
    endpoint: String,
) {
    let mut connected = false;
    let mut flight = InFlight::default();
    let mut outage_warned = false;
    while !stop.load(Ordering::Relaxed) {
        if connected {
            if flight.stalled(&outbox) {
                log::warn!("mqtt {endpoint}: no acknowledgement for {RESEND_AFTER:?}: sending the unacknowledged messages again");
                flight.lost(&outbox);
            }
            flight.hand_out(&client, &outbox);
        }
        crossbeam_channel::select! {
            recv(net) -> ev => match ev {
                Ok(Net::Connected) => {
                    connected = true;
                    outage_warned = false;
                    stats.connects.fetch_add(1, Ordering::Relaxed);
                    log::info!("mqtt connected to {endpoint}");
                }
                Ok(Net::Sent(pkid)) => flight.sent(pkid),
                Ok(Net::Acked(pkid)) => flight.acked(pkid, &outbox),
                Ok(Net::Down(e)) => {
                    if connected || !outage_warned {
                        log::warn!(
                            "mqtt {endpoint}: {e}; reconnecting, {} messages held",
                            outbox.lock().len()
                        );
                        outage_warned = true;
                    }
                    connected = false;
                    flight.lost(&outbox);
                }
                Err(_) => break,
            },
            recv(woken) -> _ => {}
            default(Duration::from_millis(200)) => {}
        }
    }
    if connected {
        let _ = client.try_disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handed(ago: Duration) -> Message {
        Message {
            topic: "plant/l1/parts".into(),
            payload: Arc::from(&b"{}"[..]),
            retain: false,
            state: State::Handed,
            handed_at: Some(Instant::now() - ago),
        }
    }

    #[test]
    fn an_oldest_message_left_unacknowledged_is_sent_again() {
        let outbox = Outbox {
            queue: Mutex::new(VecDeque::from([
                handed(Duration::ZERO),
                handed(Duration::ZERO),
            ])),
            cap: 8,
        };
        let mut flight = InFlight::default();
        assert!(!flight.stalled(&outbox), "just handed");
        outbox.lock()[0].handed_at =
            Some(Instant::now() - RESEND_AFTER - Duration::from_millis(50));
        assert!(flight.stalled(&outbox), "waited past RESEND_AFTER");
        // A packet id matched to the wrong message by a replayed send:
        flight.by_pkid.insert(7, 1);
        flight.lost(&outbox);
        assert!(outbox.lock().iter().all(|m| m.state == State::Unsent));
        assert!(flight.by_pkid.is_empty() && flight.awaiting_id.is_empty());
        // Its late ack retires nothing: the messages go out again and wait for their own.
        flight.acked(7, &outbox);
        assert_eq!(outbox.lock().len(), 2);
        assert!(!flight.stalled(&outbox));
    }
}
