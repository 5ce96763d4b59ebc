//! The supervisor stream: newline-delimited JSON over TCP, read-only, resumable.
//!
//! A client may send `resume <seq>` (within 300 ms of connecting) as its first line to get what
//! it missed from a bounded ring; what fell out of the ring is reported to it as
//! `{"type":"lost","from_seq":a,"to_seq":b,"count":n}` and counted, and a number from a previous
//! run of the line gets `{"type":"restarted",...}` before this run's events. These two notices
//! carry no `seq`. Each client has its own bounded queue and writer thread: a stuck client is
//! dropped and disconnected, the line never waits for it. Nothing a client sends changes the line.

use crate::events::{Record, Sink};
use crate::setup::SupervisorConfig;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a new client has to send `resume <seq>` before it gets the live stream only.
pub const RESUME_WAIT: Duration = Duration::from_millis(300);
/// A client whose socket accepts nothing for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of the stream.
#[derive(Debug, Default)]
pub struct SupervisorStats {
    /// Clients accepted.
    pub clients: AtomicU64,
    /// Clients dropped because their queue filled up.
    pub clients_dropped: AtomicU64,
    /// Records not delivered to dropped clients.
    pub client_drops: AtomicU64,
    /// Records a resuming client asked for that had left the ring.
    pub resume_lost: AtomicU64,
    /// Lines clients sent that were not a leading `resume <seq>` (ignored).
    pub ignored_lines: AtomicU64,
}

struct Slot {
    id: u64,
    tx: Sender<Arc<Record>>,
    stream: TcpStream,
}

/// A newly registered client: its id, live queue, backlog and the range that left the ring.
struct Registered {
    id: u64,
    rx: Receiver<Arc<Record>>,
    backlog: Vec<Arc<Record>>,
    lost: Option<(u64, u64)>,
    /// The `resume` number was ahead of this stream: the line restarted since.
    restarted: Option<u64>,
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
    stats: SupervisorStats,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a client; returns its id, its live queue, the backlog and the count of lost records.
    fn register(&self, stream: &TcpStream, resume: Option<u64>) -> Option<Registered> {
        let mut s = self.lock();
        if s.closed {
            return None;
        }
        let (tx, rx) = crossbeam_channel::bounded(self.client_queue);
        let mut backlog = Vec::new();
        let mut lost = None;
        let mut restarted = None;
        if let Some(mut after) = resume {
            if after > s.last_seq {
                // The client saw a previous run of the line (sequence numbers restart with the
                // process): say so and give it everything this run still holds.
                restarted = Some(after);
                after = 0;
            }
            let oldest = s.ring.front().map_or(s.last_seq + 1, |r| r.seq);
            if after + 1 < oldest && after < s.last_seq {
                lost = Some((after + 1, oldest - 1));
            }
            backlog.extend(s.ring.iter().filter(|r| r.seq > after).cloned());
        }
        let id = s.next_id;
        s.next_id += 1;
        let stream = stream.try_clone().ok()?;
        s.clients.push(Slot { id, tx, stream });
        Some(Registered {
            id,
            rx,
            backlog,
            lost,
            restarted,
        })
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
                log::warn!(target: "diffad::supervisor", "supervisor client {} too slow: dropped after seq {}", c.id, rec.seq - 1);
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
    /// Bind `cfg.listen` and start accepting clients.
    pub fn start(cfg: &SupervisorConfig) -> std::io::Result<Self> {
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
        log::info!("supervisor stream on {addr}");
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

fn accept_loop(
    listener: TcpListener,
    hub: Arc<Hub>,
    stop: Arc<AtomicBool>,
    writers: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                hub.stats.clients.fetch_add(1, Ordering::Relaxed);
                let hub = hub.clone();
                let h = std::thread::Builder::new()
                    .name("supervisor-client".into())
                    .spawn(move || serve(stream, peer, hub));
                if let Ok(h) = h {
                    let mut w = writers.lock().unwrap_or_else(|e| e.into_inner());
                    w.retain(|h| !h.is_finished());
                    w.push(h);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => {
                log::warn!(target: "diffad::supervisor", "accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Parse a `resume <seq>` request.
pub fn parse_resume(line: &str) -> Option<u64> {
    let mut it = line.split_whitespace();
    match (it.next(), it.next(), it.next()) {
        (Some("resume"), Some(n), None) => n.parse().ok(),
        _ => None,
    }
}

fn serve(stream: TcpStream, peer: SocketAddr, hub: Arc<Hub>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let _ = reader.get_ref().set_read_timeout(Some(RESUME_WAIT));
    let mut first = String::new();
    let resume = match reader.read_line(&mut first) {
        Ok(n) if n > 0 => {
            let r = parse_resume(first.trim());
            if r.is_none() {
                hub.stats.ignored_lines.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
        _ => None,
    };
    let Some(Registered {
        id,
        rx,
        backlog,
        lost,
        restarted,
    }) = hub.register(&stream, resume)
    else {
        return;
    };
    log::debug!(target: "diffad::supervisor", "client {id} {peer} connected (resume {resume:?})");
    // Whatever else the client sends is read, counted and ignored; its EOF ends the session.
    let reader_stream = reader.get_ref().try_clone();
    let ignored = {
        let hub = hub.clone();
        std::thread::Builder::new()
            .name("supervisor-read".into())
            .spawn(move || {
                let _ = reader.get_ref().set_read_timeout(None);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            hub.stats.ignored_lines.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
    };
    let mut out = std::io::BufWriter::new(&stream);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut ok = true;
    if let Some(asked) = restarted {
        ok &= writeln!(
            out,
            "{{\"type\":\"restarted\",\"resume\":{asked},\"message\":\"the line restarted: sequence numbers began again at 1\"}}"
        )
        .is_ok();
    }
    if let Some((from, to)) = lost {
        let n = to - from + 1;
        hub.stats.resume_lost.fetch_add(n, Ordering::Relaxed);
        log::warn!(target: "diffad::supervisor", "client {id} resumed after seq {}: {n} events had left the buffer", from - 1);
        ok &= writeln!(
            out,
            "{{\"type\":\"lost\",\"from_seq\":{from},\"to_seq\":{to},\"count\":{n}}}"
        )
        .is_ok();
    }
    for rec in backlog {
        if !ok {
            break;
        }
        ok &= writeln!(out, "{}", rec.json).is_ok();
    }
    ok &= out.flush().is_ok();
    while ok {
        match rx.recv() {
            Ok(rec) => {
                ok &= writeln!(out, "{}", rec.json).is_ok();
                // Batch writes while more is queued, flush when caught up.
                if rx.is_empty() {
                    ok &= out.flush().is_ok();
                }
            }
            Err(_) => break,
        }
    }
    let _ = out.flush();
    drop(out);
    hub.remove(id);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if let Ok(s) = reader_stream {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    if let Ok(h) = ignored {
        let _ = h.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_requests_parse() {
        assert_eq!(parse_resume("resume 42"), Some(42));
        assert_eq!(parse_resume("resume  7 "), Some(7));
        assert_eq!(parse_resume("resume"), None);
        assert_eq!(parse_resume("reject 1"), None);
        assert_eq!(parse_resume("resume x"), None);
    }
}
