//! The supervisor stream over real sockets: the hello and run id, resume without gaps or
//! duplicates (early, late, across a restart of the line), loss reporting, stuck clients that
//! cannot slow the line, and bounds on clients and request lines.

mod common;

use diffad::clock::SystemClock;
use diffad::events::{Bus, Event};
use diffad::sinks::supervisor::SupervisorConfig;
use diffad::sinks::supervisor::{Supervisor, MAX_REQUEST};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(buffer: usize, client_queue: usize, max_clients: usize) -> SupervisorConfig {
    SupervisorConfig {
        listen: "127.0.0.1:0".into(),
        buffer,
        client_queue,
        max_clients,
        log_level: "off".into(),
        ..Default::default()
    }
}

fn start_run(cfg: &SupervisorConfig, run: &str) -> (Supervisor, Bus) {
    let sup = Supervisor::start(cfg, "sup", run).expect("bind loopback");
    let bus = Bus::start(
        "sup",
        run,
        100_000,
        Arc::new(SystemClock::new()),
        vec![sup.sink()],
    );
    (sup, bus)
}

fn start(buffer: usize, client_queue: usize) -> (Supervisor, Bus) {
    start_run(&config(buffer, client_queue, 16), "run-a")
}

fn emit(bus: &Bus, from: u64, to: u64) {
    let ev = bus.events();
    for i in from..=to {
        ev.emit(Event::alarm("test", format!("event {i}"), Some(i), true));
    }
}

/// Let the fan-out thread deliver what was emitted.
fn delivered() {
    std::thread::sleep(Duration::from_millis(100));
}

struct Client {
    s: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    /// Connect and read the hello.
    fn connect(addr: std::net::SocketAddr) -> (Self, Value) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        let mut c = Self { s, r };
        let hello = c.read();
        assert_eq!(hello["type"], "hello", "{hello}");
        (c, hello)
    }

    fn send(&mut self, line: &str) {
        self.s.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("a line within 5 s");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Read until `n` events (records with a seq) came; notices are returned beside them.
    fn events(&mut self, n: usize) -> (Vec<u64>, Vec<Value>) {
        let (mut seqs, mut notices) = (Vec::new(), Vec::new());
        while seqs.len() < n {
            let v = self.read();
            match v["seq"].as_u64() {
                Some(s) if v["type"] != "hello" => seqs.push(s),
                _ => notices.push(v),
            }
        }
        (seqs, notices)
    }
}

fn stat(v: &std::sync::atomic::AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

#[test]
fn hello_names_the_run_and_every_event_carries_it() {
    let (sup, bus) = start(100, 100);
    emit(&bus, 1, 3);
    delivered();
    let (mut c, hello) = Client::connect(sup.local_addr());
    assert_eq!(
        (
            hello["run"].as_str(),
            hello["line"].as_str(),
            hello["seq"].as_u64()
        ),
        (Some("run-a"), Some("sup"), Some(3))
    );
    assert!(hello.get("protocol").is_some());
    emit(&bus, 4, 5);
    let v = c.read();
    assert_eq!(
        (v["seq"].as_u64(), v["run"].as_str()),
        (Some(4), Some("run-a"))
    );
    drop(bus);
}

#[test]
fn client_that_disconnects_and_resumes_gets_every_event_once() {
    let (sup, bus) = start(1000, 1000);
    let (mut c, hello) = Client::connect(sup.local_addr());
    let run = hello["run"].as_str().unwrap().to_string();
    c.send(&format!("resume {run} 0"));
    emit(&bus, 1, 50);
    let (mut seqs, _) = c.events(20);
    drop(c);
    emit(&bus, 51, 100);
    // While disconnected the line went on; resume after the last seq we saw.
    let last = *seqs.last().unwrap();
    let (mut c2, _) = Client::connect(sup.local_addr());
    c2.send(&format!("resume {run} {last}"));
    emit(&bus, 101, 120);
    let (more, notices) = c2.events(100);
    seqs.extend(more);
    assert!(
        notices.iter().all(|n| n["type"] == "resumed"),
        "nothing lost or restarted: {notices:?}"
    );
    assert_eq!(
        seqs,
        (1..=120).collect::<Vec<u64>>(),
        "every event exactly once, in order"
    );
    drop(bus);
}

#[test]
fn resume_past_the_buffer_reports_the_loss() {
    let (sup, bus) = start(10, 100);
    emit(&bus, 1, 100);
    delivered();
    let (mut c, _) = Client::connect(sup.local_addr());
    c.send("resume run-a 5");
    let lost = c.read();
    assert_eq!(lost["type"], "lost");
    assert_eq!(
        (
            lost["from_seq"].as_u64(),
            lost["to_seq"].as_u64(),
            lost["count"].as_u64()
        ),
        (Some(6), Some(90), Some(85))
    );
    assert_eq!(c.read()["type"], "resumed");
    for want in 91..=100 {
        assert_eq!(c.read()["seq"].as_u64(), Some(want));
    }
    assert_eq!(stat(&sup.stats().resume_lost), 85);
    drop(bus);
}

/// The case: a client read run A to seq 20; the line restarted as run B and emitted
/// more than 20 events; `resume A 20` must not continue with B's 21.
#[test]
fn resume_across_a_restart_of_the_line_gets_the_new_run_from_its_start() {
    let cfg = config(1000, 1000, 16);
    let (sup_a, bus_a) = start_run(&cfg, "run-a");
    let (mut c, _) = Client::connect(sup_a.local_addr());
    c.send("resume run-a 0");
    emit(&bus_a, 1, 20);
    let (seen_a, _) = c.events(20);
    assert_eq!(seen_a, (1..=20).collect::<Vec<u64>>());
    drop(c);
    drop(bus_a);
    drop(sup_a);

    let (sup_b, bus_b) = start_run(&cfg, "run-b");
    emit(&bus_b, 1, 30);
    delivered();
    let (mut c, hello) = Client::connect(sup_b.local_addr());
    assert_eq!(hello["run"], "run-b");
    c.send("resume run-a 20");
    let restarted = c.read();
    assert_eq!(restarted["type"], "restarted", "{restarted}");
    assert_eq!(
        (
            restarted["previous_run"].as_str(),
            restarted["run"].as_str()
        ),
        (Some("run-a"), Some("run-b"))
    );
    let (seqs, _) = c.events(30);
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>(), "B from its start");
    drop(bus_b);
}

#[test]
fn a_late_resume_is_honoured_without_loss_or_duplicates() {
    let (sup, bus) = start(1000, 1000);
    emit(&bus, 1, 40);
    delivered();
    let (mut c, hello) = Client::connect(sup.local_addr());
    assert_eq!(hello["seq"].as_u64(), Some(40));
    // The live stream starts before the client asks for what it missed.
    std::thread::sleep(Duration::from_millis(500));
    emit(&bus, 41, 60);
    let (mut seqs, _) = c.events(20);
    assert_eq!(seqs, (41..=60).collect::<Vec<u64>>());
    c.send("resume run-a 10");
    let resumed = c.read();
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(
        (
            resumed["from_seq"].as_u64(),
            resumed["to_seq"].as_u64(),
            resumed["late"].as_bool()
        ),
        (Some(11), Some(40), Some(true))
    );
    emit(&bus, 61, 70);
    let (more, _) = c.events(40);
    seqs.extend(more);
    seqs.sort_unstable();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(n, seqs.len(), "no duplicates");
    assert_eq!(seqs, (11..=70).collect::<Vec<u64>>(), "nothing missing");
    // A second resume on the same connection is answered, not silently ignored.
    c.send("resume run-a 0");
    let v = c.read();
    assert_eq!(v["type"], "error", "{v}");
    drop(bus);
}

#[test]
fn requests_without_a_run_or_not_a_resume_get_an_error_notice() {
    let (sup, bus) = start(100, 100);
    let (mut c, _) = Client::connect(sup.local_addr());
    c.send("resume 5");
    let v = c.read();
    assert_eq!(v["type"], "error");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("resume <run> <seq>"),
        "{v}"
    );
    c.send("stop the line");
    assert_eq!(c.read()["type"], "error");
    assert_eq!(stat(&sup.stats().ignored_lines), 2);
    drop(bus);
}

#[test]
fn stuck_client_is_dropped_and_does_not_slow_the_line() {
    let (sup, bus) = start(100, 16);
    // A client that never reads.
    let stuck = TcpStream::connect(sup.local_addr()).unwrap();
    let (mut reader, _) = Client::connect(sup.local_addr());
    let t = Instant::now();
    let payload = "x".repeat(2000);
    let ev = bus.events();
    for i in 0..20_000u64 {
        ev.emit(Event::alarm("flood", payload.clone(), Some(i), true));
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "emitting must not wait for clients"
    );
    // The reading client keeps up (or is dropped too, but the stuck one must be).
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&sup.stats().clients_dropped) == 0 && Instant::now() < deadline {
        let mut line = String::new();
        if reader.r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
    }
    assert!(stat(&sup.stats().clients_dropped) >= 1);
    assert!(stat(&sup.stats().client_drops) >= 1);
    drop(stuck);
    drop(bus);
}

#[test]
fn clients_over_the_cap_are_refused_with_a_reason_and_places_free_up() {
    let (sup, bus) = start_run(&config(100, 100, 2), "run-a");
    let (a, _) = Client::connect(sup.local_addr());
    let (_b, _) = Client::connect(sup.local_addr());
    let s = TcpStream::connect(sup.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["type"], "refused", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("max_clients"),
        "{v}"
    );
    assert_eq!(stat(&sup.stats().refused), 1);
    assert_eq!(sup.active_clients(), 2);
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sup.active_clients() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_c, hello) = Client::connect(sup.local_addr());
    assert_eq!(hello["run"], "run-a", "a freed place is given again");
    drop(bus);
}

#[test]
fn an_endless_request_line_closes_that_client_only() {
    let (sup, bus) = start(100, 100);
    let (mut ok, _) = Client::connect(sup.local_addr());
    let (mut bad, _) = Client::connect(sup.local_addr());
    let junk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    // The server closes after MAX_REQUEST bytes; writing then fails.
    while sent < 10 << 20 {
        match bad.s.write(&junk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let v = bad.read();
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["message"].as_str().unwrap().contains("too long"), "{v}");
    let mut rest = Vec::new();
    let _ = bad.r.read_to_end(&mut rest);
    assert_eq!(stat(&sup.stats().oversized_requests), 1);
    assert!(
        sent < 10 << 20 || MAX_REQUEST < sent,
        "the server stopped reading"
    );
    emit(&bus, 1, 1);
    assert_eq!(ok.read()["seq"].as_u64(), Some(1), "others are unaffected");
    drop(bus);
}

/// `VmRSS` and `Threads` of a process, from /proc.
fn rss_kb_and_threads(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("Threads:"))
}

/// The hostile peers against `diffad run`: 1,000 connection attempts (most over the
/// cap) and 10 MB request lines leave memory within 20 MB of the idle figure and threads within
/// the cap, and the line still accounts for every part.
#[test]
fn a_thousand_connections_and_huge_request_lines_leave_the_line_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let board = dir.path().join("board.toml");
    common::sim_board(&board, &format!("[line]\nname = \"hostile\"\npart_rate_hz = 20\nparts = 100000\nrealtime_priority = 0\n\
             [supervisor]\nlisten = \"127.0.0.1:{port}\"\nmax_clients = 8\n"));
    let summary = dir.path().join("summary.json");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_diffad"))
        .args(["run", "--quiet", "--config"])
        .arg(&board)
        .arg("--summary-json")
        .arg(&summary)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A failed assertion must not leave a 100 000-part line running.
    let _reaper = common::KillOnPanic(pid);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the line never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Idle: running, one short client seen.
    std::thread::sleep(Duration::from_secs(2));
    let (idle_kb, idle_threads) = rss_kb_and_threads(pid);

    // One well-behaved client that stays and must keep its stream.
    let (mut watcher, hello) = Client::connect(addr);
    let run = hello["run"].as_str().unwrap().to_string();
    watcher.send(&format!("resume {run} 0"));

    let mut peak = (0u64, 0u64);
    let attempts = 1000;
    let mut refused = 0;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                scope.spawn(move || {
                    let junk = vec![b'x'; 256 * 1024];
                    let mut refused = 0;
                    for i in (w..attempts).step_by(8) {
                        let Ok(mut s) = TcpStream::connect(addr) else {
                            continue;
                        };
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                        if i % 100 == 0 {
                            // 10 MB without a newline.
                            for _ in 0..40 {
                                if s.write_all(&junk).is_err() {
                                    break;
                                }
                            }
                        } else {
                            let _ = s.write_all(b"resume x 1\n");
                        }
                        let mut first = String::new();
                        let _ = BufReader::new(&s).read_line(&mut first);
                        refused += u64::from(first.contains("\"refused\""));
                    }
                    refused
                })
            })
            .collect();
        while workers.iter().any(|w| !w.is_finished()) {
            let (kb, th) = rss_kb_and_threads(pid);
            peak = (peak.0.max(kb), peak.1.max(th));
            std::thread::sleep(Duration::from_millis(20));
        }
        refused = workers.into_iter().map(|w| w.join().unwrap()).sum();
    });
    std::thread::sleep(Duration::from_secs(1));
    let (after_kb, _) = rss_kb_and_threads(pid);
    eprintln!(
        "idle {idle_kb} kB {idle_threads} threads; peak {} kB {} threads; after {after_kb} kB; {refused} of {attempts} refused",
        peak.0, peak.1
    );
    assert!(
        peak.0 < idle_kb + 20 * 1024 && after_kb < idle_kb + 20 * 1024,
        "memory within 20 MB of idle {idle_kb} kB: peak {} kB, after {after_kb} kB",
        peak.0
    );
    // The cap is 8 clients, one thread each (the watcher's place counts among them). A place is
    // given back as its thread returns, so a few threads may still be exiting when the next
    // clients' start (three were seen on a CI machine whose both cores were busy): bounded by
    // the cap plus those, never growing with the attempts (the thread-per-client design this
    // replaced had 412 threads for 200 clients).
    assert!(
        peak.1 <= idle_threads + 8 + 4,
        "threads: idle {idle_threads}, peak {}",
        peak.1
    );
    // The watcher kept a gapless stream through it all.
    let (seqs, _) = watcher.events(50);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gapless: {seqs:?}"
    );

    // SIGTERM: the line drains and reports.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let s: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let s = &s["summary"];
    assert_eq!(s["invariant_ok"], true, "{s}");
    assert_eq!(s["run"].as_str(), Some(run.as_str()));
    assert!(s["supervisor_refused"].as_u64().unwrap() >= 1, "{s}");
}

#[test]
fn a_resume_from_the_future_is_answered_by_one_error_and_the_live_stream() {
    let (sup, bus) = start(1000, 1000);
    emit(&bus, 1, 10);
    delivered();
    let (mut c, hello) = Client::connect(sup.local_addr());
    assert_eq!(hello["seq"].as_u64(), Some(10));
    c.send("resume run-a 500");
    let answer = c.read();
    assert_eq!(answer["type"], "error", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("ahead"),
        "{answer}"
    );
    emit(&bus, 11, 15);
    // No `resumed` for an empty range: the next lines are the live events.
    let (seqs, notices) = c.events(5);
    assert_eq!(seqs, (11..=15).collect::<Vec<u64>>());
    assert!(notices.is_empty(), "{notices:?}");
    drop(bus);
}
