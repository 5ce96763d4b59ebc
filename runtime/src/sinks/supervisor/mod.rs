//! The supervisor stream: newline-delimited JSON over TCP, read-only, resumable.
//!
//! The protocol (docs/line.md "The supervisor stream protocol"):
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

mod client;
mod config;
mod protocol;

use client::serve;
pub use config::SupervisorConfig;
use protocol::{notice, Notice};
pub use protocol::{parse_request, Request};

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
