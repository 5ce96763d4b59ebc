//! The supervisor stream over real sockets: resume without gaps or duplicates, loss reporting,
//! stuck clients that cannot slow the line.

use diffad::clock::SystemClock;
use diffad::events::{Bus, Event};
use diffad::setup::SupervisorConfig;
use diffad::supervisor::Supervisor;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn start(buffer: usize, client_queue: usize) -> (Supervisor, Bus) {
    let cfg = SupervisorConfig {
        listen: "127.0.0.1:0".into(),
        buffer,
        client_queue,
        log_level: "off".into(),
    };
    let sup = Supervisor::start(&cfg).expect("bind loopback");
    let bus = Bus::start(
        "sup",
        100_000,
        Arc::new(SystemClock::new()),
        vec![sup.sink()],
    );
    (sup, bus)
}

fn emit(bus: &Bus, from: u64, to: u64) {
    let ev = bus.events();
    for i in from..=to {
        ev.emit(Event::alarm("test", format!("event {i}"), Some(i), true));
    }
}

fn connect(sup: &Supervisor, first_line: Option<&str>) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(sup.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if let Some(l) = first_line {
        (&s).write_all(format!("{l}\n").as_bytes()).unwrap();
    }
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn read_json(r: &mut BufReader<TcpStream>) -> serde_json::Value {
    let mut line = String::new();
    r.read_line(&mut line).expect("a line within 5 s");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Wait until the server has registered the client (it waits up to 300 ms for `resume`).
fn settle() {
    std::thread::sleep(Duration::from_millis(450));
}

#[test]
fn client_that_disconnects_and_resumes_gets_every_event_once() {
    let (sup, bus) = start(1000, 1000);
    let (s, mut r) = connect(&sup, Some("resume 0"));
    settle();
    emit(&bus, 1, 50);
    let mut seqs = Vec::new();
    for _ in 0..20 {
        seqs.push(read_json(&mut r)["seq"].as_u64().unwrap());
    }
    drop(r);
    s.shutdown(std::net::Shutdown::Both).unwrap();
    emit(&bus, 51, 100);
    // While disconnected the line went on; resume after the last seq we saw.
    let last = *seqs.last().unwrap();
    let (_s2, mut r2) = connect(&sup, Some(&format!("resume {last}")));
    settle();
    emit(&bus, 101, 120);
    while seqs.len() < 120 {
        let v = read_json(&mut r2);
        assert_ne!(v["type"], "lost", "nothing may be reported lost: {v}");
        seqs.push(v["seq"].as_u64().unwrap());
    }
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
    // Let the fan-out thread deliver into the ring.
    std::thread::sleep(Duration::from_millis(100));
    let (_s, mut r) = connect(&sup, Some("resume 5"));
    let lost = read_json(&mut r);
    assert_eq!(lost["type"], "lost");
    assert_eq!(
        (
            lost["from_seq"].as_u64(),
            lost["to_seq"].as_u64(),
            lost["count"].as_u64()
        ),
        (Some(6), Some(90), Some(85))
    );
    for want in 91..=100 {
        assert_eq!(read_json(&mut r)["seq"].as_u64(), Some(want));
    }
    assert_eq!(
        sup.stats()
            .resume_lost
            .load(std::sync::atomic::Ordering::Relaxed),
        85
    );
    drop(bus);
}

#[test]
fn stuck_client_is_dropped_and_does_not_slow_the_line_and_input_is_ignored() {
    let (sup, bus) = start(100, 16);
    // A client that never reads.
    let stuck = TcpStream::connect(sup.local_addr()).unwrap();
    // A client that talks nonsense, then reads.
    let (_s, mut chatty) = connect(&sup, Some("reject everything"));
    (&_s).write_all(b"stop the line\nresume 1\n").unwrap();
    settle();
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
    while sup
        .stats()
        .clients_dropped
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
        && Instant::now() < deadline
    {
        let _ = read_json(&mut chatty);
    }
    assert!(
        sup.stats()
            .clients_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert!(
        sup.stats()
            .client_drops
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert!(
        sup.stats()
            .ignored_lines
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
    drop(stuck);
    drop(bus);
}

#[test]
fn resume_from_a_previous_run_is_told_the_line_restarted() {
    let (sup, bus) = start(100, 100);
    emit(&bus, 1, 20);
    std::thread::sleep(Duration::from_millis(100));
    let (_s, mut r) = connect(&sup, Some("resume 5000"));
    let first = read_json(&mut r);
    assert_eq!(first["type"], "restarted", "{first}");
    assert_eq!(first["resume"].as_u64(), Some(5000));
    for want in 1..=20 {
        assert_eq!(read_json(&mut r)["seq"].as_u64(), Some(want));
    }
    drop(bus);
}
