//! The supervisor stream: newline-delimited JSON over TCP, read-only, resumable.
//!
//! The protocol (README "Supervisor stream"):
//! - On connecting, a client gets `{"type":"hello","run":R,"line":L,"seq":S,...}`: the live
//!   stream that follows starts after event `S` of run `R`.
//! - Every event carries `run` and `seq` (from 1 in each run, without gaps).
//! - A client may send `resume <run> <seq>` at any time, once per connection. It gets a
//!   `resumed` notice and the events of the ring it missed up to `S`. Sent within
//!   [`RESUME_WAIT`] of the hello, these come before the live stream; later, they come after what
//!   was already sent live (the notice says `"late":true`). A `run` other than this one gets a
//!   `restarted` notice and this run's events from its start; events that left the ring are
//!   reported in a `lost` notice and counted.
//! - Notices (`hello`, `resumed`, `restarted`, `lost`, `error`, `refused`) carry no `seq`.
//!
//! Bounds: at most `max_clients` at once (one more gets `refused` and is closed), one thread and
//! one bounded queue per client, request lines of at most [`MAX_REQUEST`] bytes. A stuck client
//! is dropped; the line never waits for it. Nothing a client sends changes the line.

use crate::config::Invalid;
use crate::events::{Record, Sink};
use crate::sinks::tls::StreamTls;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long after the hello a `resume` still comes before the live stream.
pub const RESUME_WAIT: Duration = Duration::from_millis(300);
/// A client whose socket accepts nothing for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request line a client may send; a longer one closes the connection.
pub const MAX_REQUEST: usize = 256;
/// Version of the protocol in the hello.
pub const PROTOCOL: u32 = 2;

/// How often a client thread looks at its socket for requests while no event comes.
const POLL: Duration = Duration::from_millis(20);

/// Counters of the stream.
#[derive(Debug, Default)]
pub struct SupervisorStats {
    /// Clients accepted.
    pub clients: AtomicU64,
    /// Clients refused because `max_clients` were connected.
    pub refused: AtomicU64,
    /// Clients dropped because their queue filled up.
    pub clients_dropped: AtomicU64,
    /// Records not delivered to dropped clients.
    pub client_drops: AtomicU64,
    /// Resume requests answered.
    pub resumes: AtomicU64,
    /// Records a resuming client asked for that had left the ring.
    pub resume_lost: AtomicU64,
    /// Request lines that were not a valid first `resume <run> <seq>` (answered, else ignored).
    pub ignored_lines: AtomicU64,
    /// Clients closed for a request line over [`MAX_REQUEST`] bytes.
    pub oversized_requests: AtomicU64,
    /// TLS clients refused in the handshake (no certificate, or one the CA did not sign).
    pub tls_rejected: AtomicU64,
}

struct Slot {
    id: u64,
    tx: Sender<Arc<Record>>,
    stream: TcpStream,
}

struct HubState {
    ring: VecDeque<Arc<Record>>,
    last_seq: u64,
    clients: Vec<Slot>,
    closed: bool,
    next_id: u64,
}

struct Hub {
    state: Mutex<HubState>,
    ring_cap: usize,
    client_queue: usize,
    max_clients: usize,
    line: Arc<str>,
    run: Arc<str>,
    /// TLS with client certificates, when configured.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Client threads running (registered or still saying hello).
    active: AtomicUsize,
    stats: SupervisorStats,
}

/// What a client needs to serve a `resume`: the events it missed, and what left the ring.
struct Backfill {
    records: Vec<Arc<Record>>,
    lost: Option<(u64, u64)>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a client for the live stream; returns its id, queue and the last seq before it.
    fn register(&self, stream: &TcpStream) -> Option<(u64, Receiver<Arc<Record>>, u64)> {
        let mut s = self.lock();
        if s.closed {
            return None;
        }
        let (tx, rx) = crossbeam_channel::bounded(self.client_queue);
        let id = s.next_id;
        s.next_id += 1;
        let stream = stream.try_clone().ok()?;
        s.clients.push(Slot { id, tx, stream });
        Some((id, rx, s.last_seq))
    }

    /// The ring's events in `(after, upto]`, and the range of them that has left it.
    fn backfill(&self, after: u64, upto: u64) -> Backfill {
        let s = self.lock();
        let oldest = s.ring.front().map_or(s.last_seq + 1, |r| r.seq);
        let lost =
            (after + 1 < oldest && after < upto).then(|| (after + 1, (oldest - 1).min(upto)));
        let records = s
            .ring
            .iter()
            .filter(|r| r.seq > after && r.seq <= upto)
            .cloned()
            .collect();
        Backfill { records, lost }
    }

    fn remove(&self, id: u64) {
        self.lock().clients.retain(|c| c.id != id);
    }
}

struct HubSink(Arc<Hub>);

impl Sink for HubSink {
    fn deliver(&mut self, rec: &Arc<Record>) {
        let hub = &self.0;
        let mut s = hub.lock();
        s.last_seq = rec.seq;
        s.ring.push_back(rec.clone());
        while s.ring.len() > hub.ring_cap {
            s.ring.pop_front();
        }
        s.clients.retain(|c| match c.tx.try_send(rec.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                hub.stats.clients_dropped.fetch_add(1, Ordering::Relaxed);
                hub.stats.client_drops.fetch_add(1 + c.tx.len() as u64, Ordering::Relaxed);
                log::warn!(target: "diffad::sinks::supervisor", "supervisor client {} too slow: dropped after seq {}", c.id, rec.seq - 1);
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    fn close(&mut self) {
        let mut s = self.0.lock();
        s.closed = true;
        // Dropping the senders lets each writer finish its queue and stop.
        s.clients.clear();
    }
}

/// The TCP event stream server.
pub struct Supervisor {
    hub: Arc<Hub>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    writers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Supervisor {
    /// Bind `cfg.listen` and start accepting clients of run `run` of line `line`.
    pub fn start(cfg: &SupervisorConfig, line: &str, run: &str) -> std::io::Result<Self> {
        let tls = match &cfg.tls {
            Some(t) => Some(crate::sinks::tls::stream_server(t).map_err(std::io::Error::other)?),
            None => None,
        };
        let listener = TcpListener::bind(&cfg.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let hub = Arc::new(Hub {
            state: Mutex::new(HubState {
                ring: VecDeque::new(),
                last_seq: 0,
                clients: Vec::new(),
                closed: false,
                next_id: 1,
            }),
            ring_cap: cfg.buffer,
            client_queue: cfg.client_queue,
            max_clients: cfg.max_clients,
            line: Arc::from(line),
            run: Arc::from(run),
            tls,
            active: AtomicUsize::new(0),
            stats: SupervisorStats::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let writers = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (hub, stop, writers) = (hub.clone(), stop.clone(), writers.clone());
            std::thread::Builder::new()
                .name("supervisor".into())
                .spawn(move || accept_loop(listener, hub, stop, writers))?
        };
        log::info!(
            "supervisor stream on {addr} (run {run}{})",
            if cfg.tls.is_some() {
                ", TLS with client certificates"
            } else {
                ""
            }
        );
        Ok(Self {
            hub,
            addr,
            stop,
            accept: Some(accept),
            writers,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The sink to put on the event bus.
    pub fn sink(&self) -> Box<dyn Sink> {
        Box::new(HubSink(self.hub.clone()))
    }

    /// Counters.
    pub fn stats(&self) -> &SupervisorStats {
        &self.hub.stats
    }

    /// Client threads running now.
    pub fn active_clients(&self) -> usize {
        self.hub.active.load(Ordering::Relaxed)
    }

    /// Stop accepting, give writers up to `grace` to flush, then disconnect everyone.
    pub fn stop(&mut self, grace: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        HubSink(self.hub.clone()).close();
        let end = Instant::now() + grace;
        let handles: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.writers.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            while !h.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

/// Releases a client's place when its thread ends, however it ends.
struct Place(Arc<Hub>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn accept_loop(
    listener: TcpListener,
    hub: Arc<Hub>,
    stop: Arc<AtomicBool>,
    writers: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if hub.active.load(Ordering::Relaxed) >= hub.max_clients {
                    refuse(&hub, stream, peer);
                    continue;
                }
                hub.active.fetch_add(1, Ordering::Relaxed);
                hub.stats.clients.fetch_add(1, Ordering::Relaxed);
                let place = Place(hub.clone());
                let h = std::thread::Builder::new()
                    .name("supervisor-client".into())
                    .spawn(move || {
                        let hub = place.0.clone();
                        serve(stream, peer, &hub);
                        drop(place);
                    });
                match h {
                    Ok(h) => {
                        let mut w = writers.lock().unwrap_or_else(|e| e.into_inner());
                        w.retain(|h| !h.is_finished());
                        w.push(h);
                    }
                    Err(e) => {
                        log::warn!(target: "diffad::sinks::supervisor", "client {peer}: no thread: {e}")
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => {
                log::warn!(target: "diffad::sinks::supervisor", "accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn refuse(hub: &Hub, mut stream: TcpStream, peer: SocketAddr) {
    let n = hub.stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
    // A fresh socket's send buffer takes one short line without blocking.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = writeln!(
        stream,
        "{}",
        notice(&Notice::Refused {
            run: &hub.run,
            max_clients: hub.max_clients,
            message: "too many clients: supervisor.max_clients are connected; try again later or raise it in the board file",
        })
    );
    let _ = stream.shutdown(std::net::Shutdown::Both);
    // Logged at the first refusal and then rarely, so a flood cannot flood the log.
    if n.is_power_of_two() {
        log::warn!(target: "diffad::sinks::supervisor", "refused client {peer}: {} clients connected (supervisor.max_clients); {n} refused so far", hub.max_clients);
    }
}

/// A request a client may send.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `resume <run> <seq>`: the events after `seq` of run `run`.
    Resume {
        /// The run the client last read.
        run: String,
        /// The last seq it read of that run (0: from the start).
        seq: u64,
    },
}

/// Parse a request line; the error says what a valid one looks like.
pub fn parse_request(line: &str) -> Result<Request, &'static str> {
    let mut it = line.split_whitespace();
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some("resume"), Some(run), Some(n), None) => n
            .parse()
            .map(|seq| Request::Resume {
                run: run.to_string(),
                seq,
            })
            .map_err(|_| "resume: the seq must be a number: resume <run> <seq>"),
        (Some("resume"), Some(_), None, None) => Err(
            "resume needs the run too: resume <run> <seq>, with the run from the hello or any event",
        ),
        _ => Err("unknown request: the stream is read-only; the only request is resume <run> <seq>"),
    }
}

/// Notices: stream lines without a `seq`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Notice<'a> {
    Hello {
        protocol: u32,
        line: &'a str,
        run: &'a str,
        /// The live stream starts after this seq.
        seq: u64,
        /// Events the ring holds for `resume`.
        buffer: usize,
    },
    Resumed {
        run: &'a str,
        /// Events sent after this notice, `from_seq..=to_seq` (count 0: nothing was missing).
        from_seq: u64,
        to_seq: u64,
        count: usize,
        /// True when live events were already sent: these come after them.
        late: bool,
    },
    Restarted {
        run: &'a str,
        previous_run: &'a str,
        resume: u64,
        message: &'a str,
    },
    Lost {
        run: &'a str,
        from_seq: u64,
        to_seq: u64,
        count: u64,
    },
    Error {
        run: &'a str,
        message: &'a str,
    },
    Refused {
        run: &'a str,
        max_clients: usize,
        message: &'a str,
    },
}

fn notice(n: &Notice) -> String {
    serde_json::to_string(n).unwrap_or_else(|_| "{\"type\":\"error\"}".into())
}

/// Request bytes read so far, bounded by [`MAX_REQUEST`].
struct Requests {
    buf: Vec<u8>,
}

enum Polled {
    Lines(Vec<String>),
    Eof,
    TooLong,
}

impl Requests {
    /// Read what the client sent so far: the socket's short read timeout ends the wait. At most
    /// a few KB per call, so a chatty client cannot keep its thread from the events.
    fn poll(&mut self, conn: &mut dyn Read) -> Polled {
        let mut lines = Vec::new();
        let mut chunk = [0u8; 1024];
        for _ in 0..8 {
            let n = match conn.read(&mut chunk) {
                Ok(0) => return Polled::Eof,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(_) => return Polled::Eof,
            };
            for &b in &chunk[..n] {
                if b == b'\n' {
                    lines.push(String::from_utf8_lossy(&self.buf).trim().to_string());
                    self.buf.clear();
                } else if self.buf.len() == MAX_REQUEST {
                    return Polled::TooLong;
                } else {
                    self.buf.push(b);
                }
            }
        }
        Polled::Lines(lines)
    }
}

/// A client connection: plain TCP or TLS over it.
trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

/// Write what `out` holds and empty it; false when the client is gone.
fn send(conn: &mut dyn Conn, out: &mut Vec<u8>) -> bool {
    let ok = conn.write_all(out).and_then(|()| conn.flush()).is_ok();
    out.clear();
    ok
}

/// How long a TLS client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read for requests waits before the thread turns to the events.
const READ_POLL: Duration = Duration::from_millis(1);

/// The TLS handshake; the client must present a certificate the CA signed.
fn handshake(
    cfg: &Arc<rustls::ServerConfig>,
    stream: &mut TcpStream,
) -> Result<rustls::ServerConnection, String> {
    let mut tls = rustls::ServerConnection::new(cfg.clone()).map_err(|e| e.to_string())?;
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    while tls.is_handshaking() {
        tls.complete_io(stream).map_err(|e| e.to_string())?;
    }
    Ok(tls)
}

/// One client: hello, then live events, answering a `resume` whenever it comes.
fn serve(mut stream: TcpStream, peer: SocketAddr, hub: &Hub) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Some(mut conn) = connect(&mut stream, peer, hub) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(READ_POLL));
    let Some((id, rx, upto)) = hub.register(&stream) else {
        return;
    };
    log::debug!(target: "diffad::sinks::supervisor", "client {id} {peer} connected after seq {upto}");
    session(conn.as_mut(), hub, id, peer, &rx, upto);
    drop(conn);
    hub.remove(id);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The client's connection, plain or after a TLS handshake; `None` (the client closed, counted
/// and logged) when the handshake fails: such a client gets nothing, no hello, no events.
fn connect(stream: &mut TcpStream, peer: SocketAddr, hub: &Hub) -> Option<Box<dyn Conn>> {
    let sock = stream.try_clone().ok()?;
    let Some(cfg) = &hub.tls else {
        return Some(Box::new(sock));
    };
    match handshake(cfg, stream) {
        Ok(tls) => Some(Box::new(rustls::StreamOwned::new(tls, sock))),
        Err(e) => {
            let n = hub.stats.tls_rejected.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                log::warn!(target: "diffad::sinks::supervisor", "client {peer}: TLS refused ({e}); {n} refused so far");
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            None
        }
    }
}

/// Hello, then requests answered and live events sent until either side is done.
fn session(
    conn: &mut dyn Conn,
    hub: &Hub,
    id: u64,
    peer: SocketAddr,
    rx: &Receiver<Arc<Record>>,
    upto: u64,
) {
    let mut out: Vec<u8> = Vec::new();
    let _ = writeln!(
        out,
        "{}",
        notice(&Notice::Hello {
            protocol: PROTOCOL,
            line: &hub.line,
            run: &hub.run,
            seq: upto,
            buffer: hub.ring_cap,
        })
    );
    let mut ok = send(conn, &mut out);
    let mut requests = Requests {
        buf: Vec::with_capacity(MAX_REQUEST),
    };
    let hello_at = Instant::now();
    let mut resumed = false;
    let mut live_sent = false;
    let mut open = true;
    while ok && open {
        match requests.poll(conn) {
            Polled::Lines(lines) => {
                for line in lines.iter().filter(|l| !l.is_empty()) {
                    answer(hub, id, &mut out, line, upto, &mut resumed, live_sent);
                }
                if !out.is_empty() {
                    ok &= send(conn, &mut out);
                }
            }
            // The client closed its side: it is gone.
            Polled::Eof => break,
            Polled::TooLong => {
                hub.stats.oversized_requests.fetch_add(1, Ordering::Relaxed);
                log::warn!(target: "diffad::sinks::supervisor", "client {id} {peer}: request line over {MAX_REQUEST} bytes: disconnected");
                let _ = writeln!(
                    out,
                    "{}",
                    notice(&Notice::Error {
                        run: &hub.run,
                        message: "request line too long (over 256 bytes): disconnected",
                    })
                );
                send(conn, &mut out);
                break;
            }
        }
        // A resume that comes soon after the hello keeps the stream in order.
        if !resumed && !live_sent && hello_at.elapsed() < RESUME_WAIT {
            std::thread::sleep(POLL.min(RESUME_WAIT.saturating_sub(hello_at.elapsed())));
            continue;
        }
        match rx.recv_timeout(POLL) {
            Ok(rec) => {
                live_sent = true;
                let _ = writeln!(out, "{}", rec.json);
                // Batch writes while more is queued, send when caught up.
                while let Ok(rec) = rx.try_recv() {
                    let _ = writeln!(out, "{}", rec.json);
                }
                ok &= send(conn, &mut out);
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The line closed (or dropped this client): what was queued has been written.
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
    }
}

/// Answer one request line into `out`.
fn answer(
    hub: &Hub,
    id: u64,
    out: &mut Vec<u8>,
    line: &str,
    upto: u64,
    resumed: &mut bool,
    live_sent: bool,
) {
    let (run, seq) = match parse_request(line) {
        Ok(Request::Resume { run, seq }) if !*resumed => (run, seq),
        refused => {
            let message = match refused {
                Ok(_) => "resume already answered on this connection: reconnect to resume again",
                Err(m) => m,
            };
            hub.stats.ignored_lines.fetch_add(1, Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{}",
                notice(&Notice::Error {
                    run: &hub.run,
                    message
                })
            );
            return;
        }
    };
    *resumed = true;
    hub.stats.resumes.fetch_add(1, Ordering::Relaxed);
    // Writes into a Vec cannot fail; `send` reports the socket.
    let mut put = |n: &Notice| {
        let _ = writeln!(out, "{}", notice(n));
    };
    let mut after = seq;
    if run != *hub.run {
        put(&Notice::Restarted {
            run: &hub.run,
            previous_run: &run,
            resume: seq,
            message: "the line restarted since: this run's events follow from its start",
        });
        after = 0;
    } else if after > upto {
        put(&Notice::Error {
            run: &hub.run,
            message: "resume seq is ahead of this run's last event: nothing to resend",
        });
        after = upto;
    }
    let Backfill { records, lost } = hub.backfill(after, upto);
    if let Some((from, to)) = lost {
        let n = to - from + 1;
        hub.stats.resume_lost.fetch_add(n, Ordering::Relaxed);
        log::warn!(target: "diffad::sinks::supervisor", "client {id} resumed after seq {after}: {n} events had left the buffer");
        put(&Notice::Lost {
            run: &hub.run,
            from_seq: from,
            to_seq: to,
            count: n,
        });
    }
    put(&Notice::Resumed {
        run: &hub.run,
        from_seq: records.first().map_or(upto + 1, |r| r.seq),
        to_seq: records.last().map_or(upto, |r| r.seq),
        count: records.len(),
        late: live_sent,
    });
    for rec in records {
        let _ = writeln!(out, "{}", rec.json);
    }
}

/// `[supervisor]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Listen address of the NDJSON stream; empty string disables it.
    pub listen: String,
    /// Events kept for `resume <run> <seq>`.
    pub buffer: usize,
    /// Events queued per client before it is dropped as stuck.
    pub client_queue: usize,
    /// Clients served at once; one more is refused with a line that says why.
    pub max_clients: usize,
    /// Must be true for `listen` to be an address other machines can reach: the deliberate
    /// choice to put the line's events on the plant network.
    pub expose: bool,
    /// TLS with client certificates: only supervisors whose certificate the CA signed may read.
    pub tls: Option<StreamTls>,
    /// Log records at or above this level go on the stream: error, warn, info, debug, trace, off.
    pub log_level: String,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7878".into(),
            buffer: 10_000,
            client_queue: 1024,
            max_clients: 16,
            expose: false,
            tls: None,
            log_level: "warn".into(),
        }
    }
}

impl SupervisorConfig {
    /// Check the address, sizes and level.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.listen.is_empty() {
            let Ok(addr) = self.listen.parse::<std::net::SocketAddr>() else {
                return Err(Invalid::new(
                    "supervisor.listen",
                    "must be IP:PORT, e.g. \"127.0.0.1:7878\", or \"\"",
                ));
            };
            if !addr.ip().is_loopback() && !self.expose {
                return Err(Invalid::new(
                    "supervisor.expose",
                    format!(
                        "supervisor.listen = \"{}\" can be reached from the network: set supervisor.expose = true \
                         to mean it (and give [supervisor.tls] to say who may read), or listen on 127.0.0.1",
                        self.listen
                    ),
                ));
            }
        }
        if self.buffer == 0 {
            return Err(Invalid::new("supervisor.buffer", "must be > 0"));
        }
        if self.client_queue == 0 {
            return Err(Invalid::new("supervisor.client_queue", "must be > 0"));
        }
        // Each client holds one thread and up to `client_queue` events: bound both.
        if !(1..=1024).contains(&self.max_clients) {
            return Err(Invalid::new(
                "supervisor.max_clients",
                "must be 1..=1024 (each client costs a thread)",
            ));
        }
        self.level()?;
        Ok(())
    }

    /// The parsed `log_level`.
    pub fn level(&self) -> Result<log::LevelFilter, Invalid> {
        self.log_level.parse().map_err(|_| {
            Invalid::new(
                "supervisor.log_level",
                "must be one of off, error, warn, info, debug, trace",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_request("resume r1 42"),
            Ok(Request::Resume {
                run: "r1".into(),
                seq: 42
            })
        );
        assert_eq!(
            parse_request(" resume  r1  7 "),
            Ok(Request::Resume {
                run: "r1".into(),
                seq: 7
            })
        );
        assert!(parse_request("resume 7").unwrap_err().contains("run"));
        assert!(parse_request("resume r1 x").unwrap_err().contains("number"));
        assert!(parse_request("reject 1").unwrap_err().contains("read-only"));
        assert!(parse_request("resume").is_err());
    }
}
