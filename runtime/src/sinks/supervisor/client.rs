//! One client's thread: TLS when configured, the hello, requests answered, live events sent.

use super::protocol::*;
use super::*;

/// A client connection: plain TCP or TLS over it.
pub(super) trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

/// Write what `out` holds and empty it; false when the client is gone.
pub(super) fn send(conn: &mut dyn Conn, out: &mut Vec<u8>) -> bool {
    let ok = conn.write_all(out).and_then(|()| conn.flush()).is_ok();
    out.clear();
    ok
}

/// How long a TLS client has to finish its handshake.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read for requests waits before the thread turns to the events.
pub(super) const READ_POLL: Duration = Duration::from_millis(1);

/// The TLS handshake; the client must present a certificate the CA signed.
pub(super) fn handshake(
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

/// Kernel send buffer per client: without a bound the kernel grows it to megabytes for a
/// client that does not read, hiding a stuck client from its queue bound for minutes.
const SEND_BUFFER: libc::c_int = 64 << 10;

/// Cap what the kernel holds for one client at [`SEND_BUFFER`].
fn bound_send_buffer(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setsockopt on an open socket with a valid int option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&SEND_BUFFER as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        log::debug!(target: "diffad::sinks::supervisor", "SO_SNDBUF: {}", std::io::Error::last_os_error());
    }
}

/// One client: hello, then live events, answering a `resume` whenever it comes.
pub(super) fn serve(mut stream: TcpStream, peer: SocketAddr, hub: &Hub) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    bound_send_buffer(&stream);
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
pub(super) fn connect(
    stream: &mut TcpStream,
    peer: SocketAddr,
    hub: &Hub,
) -> Option<Box<dyn Conn>> {
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
pub(super) fn session(
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
pub(super) fn answer(
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
        // The error is the answer: a `resumed` for an empty range would name seqs this run
        // never sent (to_seq below from_seq).
        put(&Notice::Error {
            run: &hub.run,
            message: "resume seq is ahead of this run's last event: nothing to resend; live events follow",
        });
        return;
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
