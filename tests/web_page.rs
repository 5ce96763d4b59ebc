//! The operator's page server over real sockets: access off loopback (TLS and a token), the
//! archive's images and nothing else, bounded viewers, a stuck viewer cut, resuming, and a
//! board whose token file others can read refused. The browser test is `tests/test_web_page.py`.

mod common;
#[path = "common/pki.rs"]
mod pki;

use diffad::events::{Event, FrameFacts, Outcome, PartEvent, Record};
use diffad::sinks::netrt::NetRuntime;
use diffad::sinks::web::{PageFacts, WebConfig, WebServer, WebTls};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUN: &str = "20261206-120000-42";

fn facts() -> PageFacts {
    PageFacts {
        run: RUN.into(),
        line: "l".into(),
        threshold: 0.5,
        heartbeat_ms: 500,
        archive: true,
        ..Default::default()
    }
}

fn part(seq: u64, outcome: Outcome) -> Arc<Record> {
    let mut r = Record {
        seq,
        t_ns: seq,
        line: Arc::from("l"),
        run: Arc::from(RUN),
        event: Event::Part(PartEvent {
            part: seq,
            trigger_ns: 0,
            deadline_ns: 0,
            verdict_ns: None,
            score: Some(0.7),
            threshold: 0.5,
            outcome,
            latency_ms: Some(1.0),
            reason: None,
            frame: FrameFacts::default(),
            model: None,
        }),
        json: String::new(),
    };
    r.json = serde_json::to_string(&r).unwrap();
    Arc::new(r)
}

/// One request on a fresh connection; the whole answer (status line, headers, body), or what
/// arrived before `wait` ran out (a live stream never ends by itself).
fn get(addr: SocketAddr, path: &str, headers: &str, wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    // A server that refuses may close before the request is written (plain HTTP to the HTTPS
    // port): what it sent, if anything, is still read.
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
    );
    read_some(&mut s, wait)
}

fn read_some(s: &mut impl Read, wait: Duration) -> String {
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tls_get(addr: SocketAddr, ca: &Path, path: &str, headers: &str) -> Result<String, String> {
    tls_get_as(addr, ca, None, path, headers)
}

fn tls_get_as(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    path: &str,
    headers: &str,
) -> Result<String, String> {
    let cfg = diffad::sinks::tls::client(ca, identity)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
    )
    .map_err(|e| e.to_string())?;
    Ok(read_some(&mut s, Duration::from_secs(2)))
}

fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn off_loopback_the_page_needs_tls_and_the_token_and_says_nothing_without_them() {
    let pki = pki::Pki::make();
    let dir = tempfile::tempdir().unwrap();
    let token = "t0k3n-0123456789abcdef";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let key = pki.path("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = WebConfig {
        listen: "0.0.0.0:0".into(),
        expose: true,
        token_file: Some(token_file),
        tls: Some(WebTls {
            cert_file: pki.path("server.pem"),
            key_file: key,
            client_ca_file: None,
        }),
        ..Default::default()
    };
    let net = NetRuntime::start().unwrap();
    let server = WebServer::start(&cfg, facts(), None, &net.handle()).unwrap();
    let mut sink = server.sink();
    for seq in 1..=5 {
        sink.deliver(&part(seq, Outcome::Reject));
    }
    let addr: SocketAddr = format!("127.0.0.1:{}", server.local_addr().port())
        .parse()
        .unwrap();
    let ca = pki.path("ca.pem");
    for path in ["/", "/events", "/state", "/page.js"] {
        let r = tls_get(addr, &ca, path, "").unwrap();
        assert_eq!(status(&r), 401, "{path} without the token: {r}");
        let b = body(&r);
        assert!(
            !b.contains("event:") && !b.contains(RUN) && !b.contains("counts"),
            "{path}: a refusal carries no event data: {b}"
        );
        let wrong = tls_get(
            addr,
            &ca,
            path,
            "Authorization: Bearer t0k3n-0123456789abcdeX\r\n",
        )
        .unwrap();
        assert_eq!(status(&wrong), 401, "{path} with a wrong token");
    }
    // Plain HTTP to the HTTPS port gets no page.
    let plain = get(addr, "/state", "", Duration::from_secs(1));
    assert!(!plain.contains("counts"), "{plain}");
    // The token, as a bearer header or as the cookie the first visit sets.
    let ok = tls_get(
        addr,
        &ca,
        "/state",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .unwrap();
    assert_eq!(status(&ok), 200, "{ok}");
    assert!(body(&ok).contains("\"rejects\":5"), "{ok}");
    let first = tls_get(addr, &ca, &format!("/?token={token}"), "").unwrap();
    assert_eq!(status(&first), 303, "{first}");
    let cookie = first
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("the first visit sets the cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Secure"),
        "{cookie}"
    );
    let (pair, _) = cookie.split_once(';').unwrap();
    let page = tls_get(addr, &ca, "/", &format!("Cookie: {pair}\r\n")).unwrap();
    assert_eq!(status(&page), 200);
    assert!(body(&page).contains("/page.js"));
    assert!(server.figures().unauthorized >= 8);
}

#[test]
fn with_a_client_ca_only_browsers_with_a_signed_certificate_get_a_page() {
    let pki = pki::Pki::make();
    let key = pki.path("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = WebConfig {
        listen: "0.0.0.0:0".into(),
        expose: true,
        tls: Some(WebTls {
            cert_file: pki.path("server.pem"),
            key_file: key,
            client_ca_file: Some(pki.path("ca.pem")),
        }),
        ..Default::default()
    };
    let net = NetRuntime::start().unwrap();
    let server = WebServer::start(&cfg, facts(), None, &net.handle()).unwrap();
    server.sink().deliver(&part(1, Outcome::Reject));
    let addr: SocketAddr = format!("127.0.0.1:{}", server.local_addr().port())
        .parse()
        .unwrap();
    let ca = pki.path("ca.pem");
    let (cert, ckey) = (pki.path("client.pem"), pki.path("client.key"));
    let (rogue, rkey) = (pki.path("rogue.pem"), pki.path("rogue.key"));
    let ok = tls_get_as(addr, &ca, Some((&cert, &ckey)), "/state", "").unwrap();
    assert_eq!(status(&ok), 200, "{ok}");
    assert!(body(&ok).contains("\"rejects\":1"));
    for (who, id) in [
        ("no certificate", None),
        ("a rogue one", Some((&rogue, &rkey))),
    ] {
        let r = tls_get_as(
            addr,
            &ca,
            id.map(|(c, k)| (c.as_path(), k.as_path())),
            "/state",
            "",
        );
        let got = r.unwrap_or_default();
        assert!(
            !got.contains("counts") && !got.contains(RUN),
            "{who}: nothing of the line: {got}"
        );
    }
}

#[test]
fn only_the_archives_images_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let name = format!("{RUN}_00000003_reject_overlay.png");
    std::fs::write(archive.join(&name), b"\x89PNG fake").unwrap();
    std::fs::write(archive.join(format!("{RUN}_00000003_reject.json")), b"{}").unwrap();
    std::fs::write(dir.path().join("secret.png"), b"secret").unwrap();
    // A link with an archive name that leads outside it.
    std::os::unix::fs::symlink(
        dir.path().join("secret.png"),
        archive.join(format!("{RUN}_00000004_reject_overlay.png")),
    )
    .unwrap();
    let net = NetRuntime::start().unwrap();
    let cfg = WebConfig {
        listen: "127.0.0.1:0".into(),
        ..Default::default()
    };
    let server = WebServer::start(&cfg, facts(), Some(archive), &net.handle()).unwrap();
    let addr = server.local_addr();
    let w = Duration::from_secs(2);
    let r = get(addr, &format!("/archive/{name}"), "", w);
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("content-type: image/png") && body(&r) == "\u{fffd}PNG fake");
    for bad in [
        "/archive/../../etc/passwd".to_string(),
        "/archive/..%2F..%2Fetc%2Fpasswd".into(),
        "/archive/%2e%2e%2f%2e%2e%2fetc%2fpasswd".into(),
        "/archive/..%2Fsecret.png".into(),
        format!("/archive/{RUN}_00000003_reject.json"),
        format!("/archive/{RUN}_00000004_reject_overlay.png"),
        "/../../etc/passwd".into(),
    ] {
        let r = get(addr, &bad, "", w);
        assert!(
            [400, 404].contains(&status(&r)),
            "{bad} must be refused: {r}"
        );
        assert!(!r.contains("root:") && !r.contains("secret"), "{bad}: {r}");
    }
}

#[test]
fn viewers_are_bounded_resume_where_they_left_and_a_stuck_one_is_cut() {
    let net = NetRuntime::start().unwrap();
    let cfg = WebConfig {
        listen: "127.0.0.1:0".into(),
        max_clients: 2,
        client_queue: 16,
        buffer: 64,
        ..Default::default()
    };
    let server = WebServer::start(&cfg, facts(), None, &net.handle()).unwrap();
    let addr = server.local_addr();
    let mut sink = server.sink();
    for seq in 1..=10 {
        sink.deliver(&part(seq, Outcome::Pass));
    }
    // Resuming after seq 7 of this run gets 8, 9, 10 and no snapshot.
    let r = get(
        addr,
        "/events",
        &format!("Last-Event-ID: {RUN}/7\r\n"),
        Duration::from_millis(600),
    );
    assert!(
        r.contains("event: resumed") && !r.contains("event: snapshot"),
        "{r}"
    );
    for seq in 8..=10 {
        assert!(r.contains(&format!("id: {RUN}/{seq}\n")), "{r}");
    }
    assert!(!r.contains(&format!("id: {RUN}/7\n")));
    // A viewer that never reads, holding its place; and one that reads.
    let mut stuck = TcpStream::connect(addr).unwrap();
    write!(stuck, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reader = TcpStream::connect(addr).unwrap();
    write!(reader, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let reading = std::thread::spawn(move || {
        reader
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let (mut parts, mut buf) = (0usize, vec![0u8; 1 << 16]);
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            parts += String::from_utf8_lossy(&buf[..n])
                .matches("event: part")
                .count();
        }
        parts
    });
    let end = Instant::now() + Duration::from_secs(3);
    while server.figures().viewers < 3 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A third viewer is refused while two watch.
    let third = get(addr, "/events", "", Duration::from_secs(1));
    assert_eq!(status(&third), 503, "{third}");
    assert!(body(&third).contains("web.max_clients"));
    // Records far bigger than the kernel's buffers: the stuck viewer's queue fills and it is cut;
    // the reader keeps reading throughout.
    let mut seq = 10;
    let end = Instant::now() + Duration::from_secs(20);
    while server.figures().dropped == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
        for _ in 0..4 {
            seq += 1;
            let mut r = part(seq, Outcome::Pass);
            Arc::get_mut(&mut r).unwrap().json = serde_json::to_string(&*r).unwrap().replacen(
                '{',
                &format!("{{\"pad\":\"{}\",", "x".repeat(16 << 10)),
                1,
            );
            sink.deliver(&r);
        }
    }
    assert_eq!(server.figures().dropped, 1, "the stuck viewer is cut, once");
    // Its connection is closed by the server: reading drains what the kernel holds, then ends.
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut closed = false;
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match stuck.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(closed, "the stuck viewer's connection is closed");
    drop(server);
    assert!(
        reading.join().unwrap() > 16,
        "the reading viewer kept getting parts"
    );
}

#[test]
fn a_token_file_others_can_read_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let board = dir.path().join("b.toml");
    common::sim_board(
        &board,
        &format!(
            "[line]\nparts = 3\n[supervisor]\nlisten = \"\"\n[web]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    for args in [&["check-config"][..], &["run", "--config"]] {
        let cmd = args[0];
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffad"))
            .args(args)
            .arg(&board)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{cmd}: {err}");
        assert!(
            err.contains("web.token_file") && err.contains("chmod 600"),
            "{cmd}: {err}"
        );
    }
}
