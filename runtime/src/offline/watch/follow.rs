//! The follower of one line: connect, say where to resume, and pass every event on once,
//! announcing restarts, losses and gaps; reconnect after every disconnect.

use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Update, RECONNECT};

/// Counters of one follower.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FollowStats {
    /// Connections made.
    pub connects: u64,
    /// Events passed on.
    pub events: u64,
    /// Events received twice and dropped.
    pub duplicates: u64,
}

/// Follow one line until `stop`; with `from_start`, the first connection asks for the whole
/// ring, else it starts live.
pub fn follow(
    source: &str,
    from_start: bool,
    tls: Option<&Arc<rustls::ClientConfig>>,
    tx: &Sender<Update>,
    stop: &AtomicBool,
) -> FollowStats {
    let mut cursor: Option<(String, u64)> = None;
    let mut stats = FollowStats::default();
    let mut down_reported = false;
    while !stop.load(Ordering::Relaxed) {
        let before = stats.connects;
        let reason = match session(source, from_start, tls, &mut cursor, tx, stop, &mut stats) {
            Ok(()) => "the line closed the stream".to_string(),
            Err(e) => e,
        };
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Every lost connection is announced; failed retries only once per outage.
        if stats.connects > before || !down_reported {
            let _ = tx.send(Update::Disconnected {
                source: source.to_string(),
                reason,
            });
        }
        down_reported = true;
        let end = Instant::now() + RECONNECT;
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    stats
}

fn resolve(source: &str) -> Result<SocketAddr, String> {
    source
        .to_socket_addrs()
        .map_err(|e| format!("{source}: {e}"))?
        .next()
        .ok_or_else(|| format!("{source}: no address"))
}

/// A stream connection: plain TCP, or TLS over it.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// One connection to `source`, from hello to its end; `Ok` when the line closed it or `stop`
/// was set, else why it failed.
#[allow(clippy::too_many_arguments)]
fn session(
    source: &str,
    from_start: bool,
    tls: Option<&Arc<rustls::ClientConfig>>,
    cursor: &mut Option<(String, u64)>,
    tx: &Sender<Update>,
    stop: &AtomicBool,
    stats: &mut FollowStats,
) -> Result<(), String> {
    let mut reader = connect(source, tls)?;
    let mut line = String::new();
    let hello_by = std::time::Instant::now() + HELLO_TIMEOUT;
    let Some(hello) = read_line(&mut reader, &mut line, stop, Some(hello_by))? else {
        return Ok(());
    };
    let (run, live_after) = greeting(&hello)?;
    stats.connects += 1;
    let _ = tx.send(Update::Connected {
        source: source.to_string(),
        run: run.clone(),
    });
    if let Some(r) = resume_request(cursor, from_start, &run, live_after) {
        let w = reader.get_mut();
        w.write_all(r.as_bytes())
            .and_then(|()| w.flush())
            .map_err(|e| format!("resume: {e}"))?;
    }
    relay(&mut reader, source, &run, cursor, tx, stop, stats)
}

/// A connection to `source`, TLS when `tls` is given, reading with a short timeout.
fn connect(
    source: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<BufReader<Box<dyn Conn>>, String> {
    let addr = resolve(source)?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    // Short reads so that `stop` is seen; a silent line still sends heartbeats.
    stream
        .set_read_timeout(Some(Duration::from_millis(250)))
        .map_err(|e| e.to_string())?;
    let sock = stream.try_clone().map_err(|e| e.to_string())?;
    let conn: Box<dyn Conn> = match tls {
        None => Box::new(sock),
        Some(cfg) => {
            let host = source.rsplit_once(':').map_or(source, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| format!("{host}: not a name TLS can check: {e}"))?;
            let c = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
            Box::new(rustls::StreamOwned::new(c, sock))
        }
    };
    Ok(BufReader::new(conn))
}

/// The run and last seq of the line's first line, which must be a hello.
fn greeting(hello: &Value) -> Result<(String, u64), String> {
    match hello["type"].as_str() {
        Some("hello") => {}
        Some("refused") => return Err(format!("refused: {}", hello["message"])),
        _ => return Err(format!("not a diffad stream: first line {hello}")),
    }
    let run = hello["run"].as_str().unwrap_or_default().to_string();
    let live_after = hello["seq"].as_u64().unwrap_or(0);
    Ok((run, live_after))
}

/// The `resume` line to send, if any: from the cursor, or the whole ring with `from_start` on
/// the first connection; a live start only sets the cursor.
fn resume_request(
    cursor: &mut Option<(String, u64)>,
    from_start: bool,
    run: &str,
    live_after: u64,
) -> Option<String> {
    match cursor.as_ref() {
        Some((r, s)) => Some(format!("resume {r} {s}\n")),
        None if from_start => {
            *cursor = Some((run.to_string(), 0));
            Some(format!("resume {run} 0\n"))
        }
        None => {
            *cursor = Some((run.to_string(), live_after));
            None
        }
    }
}

/// Pass on every event after the cursor once, moving the cursor, and the stream's notices;
/// announce run changes and gaps.
fn relay(
    reader: &mut BufReader<Box<dyn Conn>>,
    source: &str,
    run: &str,
    cursor: &mut Option<(String, u64)>,
    tx: &Sender<Update>,
    stop: &AtomicBool,
    stats: &mut FollowStats,
) -> Result<(), String> {
    let mut line = String::new();
    let notice = |value: Value| {
        let mut value = value;
        value["source"] = json!(source);
        let _ = tx.send(Update::Notice {
            source: source.to_string(),
            value,
        });
    };
    loop {
        let Some(v) = read_line(reader, &mut line, stop, None)? else {
            return Ok(());
        };
        let (cur_run, last) = cursor.get_or_insert_with(|| (run.to_string(), 0));
        let Some(seq) = v["seq"].as_u64().filter(|_| v["type"] != "hello") else {
            if v["type"] == "restarted" {
                *cur_run = v["run"].as_str().unwrap_or_default().to_string();
                *last = 0;
            }
            if v["type"] != "resumed" {
                notice(v);
            }
            continue;
        };
        let ev_run = v["run"].as_str().unwrap_or_default();
        if ev_run != cur_run.as_str() {
            // Only a `restarted` notice may change the run; say so if it changed without one.
            notice(json!({"type": "run_changed", "from_run": cur_run.clone(), "run": ev_run}));
            *cur_run = ev_run.to_string();
            *last = 0;
        }
        if seq <= *last {
            stats.duplicates += 1;
            continue;
        }
        if seq > *last + 1 {
            notice(
                json!({"type": "gap", "run": cur_run.clone(), "from_seq": *last + 1, "to_seq": seq - 1, "count": seq - 1 - *last}),
            );
        }
        *last = seq;
        stats.events += 1;
        let raw = line.trim_end().to_string();
        let _ = tx.send(Update::Event {
            source: source.to_string(),
            value: v,
            raw,
        });
    }
}

/// Longest line accepted from a line: events are a few KB; a peer sending more without a
/// newline is not a diffad stream, and must not fill the supervisor's memory.
pub(super) const MAX_LINE: usize = 1 << 20;
/// A line greets within this time of the connection, or it is not answering as one.
pub(super) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The next JSON line, `None` when the stream ended or `stop` was set; an error past
/// `deadline` (when given) or for a line over [`MAX_LINE`].
fn read_line(
    reader: &mut BufReader<Box<dyn Conn>>,
    line: &mut String,
    stop: &AtomicBool,
    deadline: Option<std::time::Instant>,
) -> Result<Option<Value>, String> {
    line.clear();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Err(format!(
                "no hello within {} s of connecting: not a diffad stream, or a line that does not answer",
                HELLO_TIMEOUT.as_secs()
            ));
        }
        let room = (MAX_LINE + 1).saturating_sub(line.len()) as u64;
        match reader.by_ref().take(room).read_line(line) {
            Ok(0) if line.len() > MAX_LINE => {
                return Err(format!(
                    "a line of over {} KB without a newline: not a diffad stream",
                    MAX_LINE >> 10
                ))
            }
            Ok(0) => return Ok(None),
            Ok(_) if line.ends_with('\n') => {
                return serde_json::from_str(line.trim_end())
                    .map(Some)
                    .map_err(|e| format!("bad line from the line ({e}): {}", preview(line)));
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The start of a bad line, for an error message that stays short.
fn preview(line: &str) -> String {
    let t = line.trim_end();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}… ({} bytes)", &t[..i], t.len()),
        None => t.to_string(),
    }
}

/// Start one follower thread per source; updates come merged on the receiver.
pub fn start(
    sources: &[String],
    from_start: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Receiver<Update>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for s in sources {
        let (s, tx, stop, tls) = (s.clone(), tx.clone(), stop.clone(), tls.clone());
        std::thread::Builder::new()
            .name(format!("watch {s}"))
            .spawn(move || follow(&s, from_start, tls.as_ref(), &tx, &stop))?;
    }
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// The first reason `follow` gives for losing a peer that `serve` answers.
    fn first_loss(serve: impl FnOnce(TcpStream) + Send + 'static) -> (String, Duration) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            serve(s);
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, st) = (addr.clone(), stop.clone());
        let t0 = Instant::now();
        let h = std::thread::spawn(move || follow(&a, false, None, &tx, &st));
        let reason = loop {
            match rx.recv_timeout(Duration::from_secs(20)).expect("an update") {
                Update::Disconnected { source, reason } => {
                    assert_eq!(source, addr);
                    break reason;
                }
                _ => continue,
            }
        };
        let took = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
        (reason, took)
    }

    #[test]
    fn a_peer_sending_an_endless_line_is_cut_at_the_line_limit() {
        let (reason, _) = first_loss(|mut s| {
            let chunk = vec![b'x'; 64 << 10];
            // 8 MB without a newline; the watcher stops reading after 1 MB.
            for _ in 0..128 {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        assert!(reason.contains("without a newline"), "{reason}");
    }

    #[test]
    fn a_peer_that_never_says_hello_is_reported() {
        let (reason, took) = first_loss(|s| {
            std::thread::sleep(HELLO_TIMEOUT * 2);
            drop(s);
        });
        assert!(reason.contains("no hello within"), "{reason}");
        assert!(
            took >= HELLO_TIMEOUT && took < HELLO_TIMEOUT * 2,
            "{took:?}"
        );
    }
}
