//! What a client may send (requests) and the notices it may get, as stream lines.

use super::*;

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
pub(super) enum Notice<'a> {
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

pub(super) fn notice(n: &Notice) -> String {
    serde_json::to_string(n).unwrap_or_else(|_| "{\"type\":\"error\"}".into())
}

/// Request bytes read so far, bounded by [`MAX_REQUEST`].
pub(super) struct Requests {
    pub(super) buf: Vec<u8>,
}

pub(super) enum Polled {
    Lines(Vec<String>),
    Eof,
    TooLong,
}

impl Requests {
    /// Read what the client sent so far: the socket's short read timeout ends the wait. At most
    /// a few KB per call, so a chatty client cannot keep its thread from the events.
    pub(super) fn poll(&mut self, conn: &mut dyn Read) -> Polled {
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
