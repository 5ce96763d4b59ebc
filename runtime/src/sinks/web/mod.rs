//! The operator's page: a read-only live view of the line, served by the runtime itself on the
//! network sinks' async runtime (`sinks::netrt`). It reads only what the bus hands its sink.
//!
//! - `GET /`: the page (HTML, its script and style served from here; nothing is fetched from
//!   elsewhere). `GET /events`: server-sent events (`info`, then `snapshot` or `resumed`, then
//!   `part`, `alarm`, `heartbeat` as they happen, `end` when the line stops), resumable with
//!   `Last-Event-ID: RUN/SEQ`. `GET /state`: the page's state as JSON. `GET /archive/NAME`: a
//!   rejected part's image from `[archive]`, by a name the archive writes and nothing else.
//! - Access: loopback by default; off loopback only with TLS and a credential (a token from a
//!   mode-0600 file, or client certificates), which `WebConfig::validate` enforces.
//! - Bounds: `web.max_clients` live viewers (one more gets 503), a bounded queue per viewer (a
//!   stuck one is cut, never waited for), a bounded number of connections, headers read within
//!   [`HEADER_TIMEOUT`], TLS handshakes within [`HANDSHAKE_TIMEOUT`].

mod config;
mod state;

pub use config::{WebConfig, WebTls};
pub use state::{parse_last_id, Hub, HubSink, PageFacts, Refusal, WebStats};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};

/// A connection must send its request headers within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A TLS handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest archive image served.
const MAX_IMAGE: u64 = 32 << 20;
/// Name of the cookie that carries the token after the first visit with `?token=`.
const COOKIE: &str = "diffad_token";

const INDEX_HTML: &str = include_str!("assets/index.html");
const PAGE_JS: &str = include_str!("assets/page.js");
const PAGE_CSS: &str = include_str!("assets/page.css");

/// Why the page could not start; each names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// A key of `[web]` is unusable here.
    #[error(transparent)]
    Config(#[from] crate::config::Invalid),
    /// The address could not be bound.
    #[error("web.listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What a request's connection carries to its handlers.
#[derive(Clone)]
struct Conn {
    /// Cuts this connection (a viewer dropped as stuck).
    kill: Arc<Notify>,
}

#[derive(Clone)]
struct App {
    hub: Arc<Hub>,
    token: Option<Arc<str>>,
    archive: Option<Arc<Path>>,
    secure: bool,
}

/// What the page's server counted, for the run's summary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WebFigures {
    /// Where it was served.
    pub address: String,
    /// Live viewers served.
    pub viewers: u64,
    /// Viewers that resumed after a dropped connection.
    pub resumed: u64,
    /// Viewers dropped as stuck.
    pub dropped: u64,
    /// Viewers refused (`web.max_clients` watching).
    pub refused: u64,
    /// Connections refused (every place taken).
    pub connections_refused: u64,
    /// Requests refused for a missing or wrong token.
    pub unauthorized: u64,
}

impl std::fmt::Display for WebFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}  viewers {} (resumed {})  dropped as stuck {}  refused {}  connections refused {}  unauthorized {}",
            self.address,
            self.viewers,
            self.resumed,
            self.dropped,
            self.refused,
            self.connections_refused,
            self.unauthorized
        )
    }
}

/// The headline figures of the model's card (`MODEL.md` beside it): its evaluation line and
/// calibration; empty when there is no card.
pub fn card_figures(model: &Path) -> Vec<String> {
    let card = model.with_file_name("MODEL.md");
    let Ok(meta) = std::fs::metadata(&card) else {
        return Vec::new();
    };
    if !meta.is_file() || meta.len() > 1 << 20 {
        return Vec::new();
    }
    let text = std::fs::read_to_string(&card).unwrap_or_default();
    let first = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l.trim_start_matches("- ").replace(" | ", " · "))
    };
    [first("image AUROC"), first("- threshold")]
        .into_iter()
        .flatten()
        .collect()
}

/// The page's server.
pub struct WebServer {
    hub: Arc<Hub>,
    addr: SocketAddr,
    secure: bool,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    rt: tokio::runtime::Handle,
}

impl WebServer {
    /// Bind `cfg.listen` and serve the page of `facts` on `rt`; `archive` is the `[archive]`
    /// folder whose images the page may show.
    pub fn start(
        cfg: &WebConfig,
        facts: PageFacts,
        archive: Option<PathBuf>,
        rt: &tokio::runtime::Handle,
    ) -> Result<Self, WebError> {
        use crate::config::Invalid;
        cfg.validate()?;
        for (key, path, want) in cfg.files() {
            if let Some(bad) = crate::config::check_path(key, path, want, "fix the path in [web]") {
                return Err(bad.into());
            }
        }
        let token = cfg.token_file.as_deref().map(read_token).transpose()?;
        let tls = match &cfg.tls {
            Some(t) => Some(tls_acceptor(t).map_err(|m| Invalid::new("web.tls", m))?),
            None => None,
        };
        let addr = cfg.addr()?;
        let bind_err = |source| WebError::Bind {
            addr: cfg.listen.clone(),
            source,
        };
        let std_listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = std_listener.local_addr().map_err(bind_err)?;
        let listener = {
            let _in_rt = rt.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?
        };
        let secure = tls.is_some();
        let hub = Arc::new(Hub::new(facts, cfg.clone()));
        let app = App {
            hub: hub.clone(),
            token: token.map(Arc::from),
            archive: archive.map(Arc::from),
            secure,
        };
        let (stop, stop_rx) = watch::channel(false);
        // Viewers, plus the page, its script and images being fetched beside them.
        let places = Arc::new(Semaphore::new(2 * cfg.max_clients + 16));
        let task = rt.spawn(accept_loop(
            listener,
            router(app),
            tls,
            stop_rx,
            places,
            hub.clone(),
        ));
        log::info!(
            "operator page on {}://{addr}/ (run {}{})",
            if secure { "https" } else { "http" },
            hub.facts().run,
            match (
                cfg.token_file.is_some(),
                cfg.tls.as_ref().and_then(|t| t.client_ca_file.as_ref())
            ) {
                (true, _) => ", token required",
                (false, Some(_)) => ", client certificate required",
                _ => "",
            }
        );
        Ok(Self {
            hub,
            addr,
            secure,
            stop,
            task: Some(task),
            rt: rt.clone(),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The sink to put on the event bus.
    pub fn sink(&self) -> Box<dyn crate::events::Sink> {
        Box::new(HubSink(self.hub.clone()))
    }

    /// Counters.
    pub fn stats(&self) -> &WebStats {
        &self.hub.stats
    }

    /// The counters as the summary reports them.
    pub fn figures(&self) -> WebFigures {
        let s = &self.hub.stats;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        WebFigures {
            address: format!(
                "{}://{}/",
                if self.secure { "https" } else { "http" },
                self.addr
            ),
            viewers: n(&s.viewers),
            resumed: n(&s.resumed),
            dropped: n(&s.dropped),
            refused: n(&s.refused),
            connections_refused: n(&s.connections_refused),
            unauthorized: n(&s.unauthorized),
        }
    }

    /// Stop accepting and close the connections, within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(grace, t).await });
        }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

/// The token in `path`: trimmed, at least 16 characters, cookie-safe.
fn read_token(path: &Path) -> Result<String, crate::config::Invalid> {
    use crate::config::Invalid;
    let meta = std::fs::metadata(path)
        .map_err(|e| Invalid::new("web.token_file", format!("{}: {e}", path.display())))?;
    if !meta.is_file() || meta.len() > 4096 {
        return Err(Invalid::new(
            "web.token_file",
            format!("{}: must be a small file holding one token", path.display()),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Invalid::new("web.token_file", format!("{}: {e}", path.display())))?;
    let token = text.trim();
    let safe = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    if token.len() < 16 || !token.chars().all(safe) {
        return Err(Invalid::new(
            "web.token_file",
            format!(
                "{}: the token must be at least 16 characters of A-Z a-z 0-9 - . _ ~ \
                 (e.g. `openssl rand -hex 24 > FILE; chmod 600 FILE`)",
                path.display()
            ),
        ));
    }
    Ok(token.to_string())
}

fn tls_acceptor(t: &WebTls) -> Result<tokio_rustls::TlsAcceptor, String> {
    use crate::sinks::tls::{certs, key, provider, roots};
    let chain = certs(&t.cert_file).map_err(|e| format!("cert_file: {e}"))?;
    let key = key(&t.key_file).map_err(|e| format!("key_file: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &t.client_ca_file {
        Some(ca) => {
            let roots = roots(ca).map_err(|e| format!("client_ca_file: {e}"))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| format!("client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("key_file does not fit cert_file: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/page.js",
            get(|| async { asset(PAGE_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/page.css",
            get(|| async { asset(PAGE_CSS, "text/css; charset=utf-8") }),
        )
        .route("/events", get(events))
        .route("/state", get(state_json))
        .route("/archive/{name}", get(archive_file))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// Equal without telling by its timing how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token the request presents: bearer header, cookie or `?token=`.
fn presented<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Vec<&'a str> {
    let mut out = Vec::new();
    if let Some(b) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        out.push(b.trim());
    }
    for c in headers.get_all(header::COOKIE) {
        if let Ok(c) = c.to_str() {
            out.extend(c.split(';').filter_map(|kv| {
                kv.trim()
                    .strip_prefix(COOKIE)
                    .and_then(|v| v.strip_prefix('='))
            }));
        }
    }
    if let Some(q) = query {
        out.extend(q.split('&').filter_map(|kv| kv.strip_prefix("token=")));
    }
    out
}

/// Every response: no caching of live data, no sniffing, nothing from elsewhere; and the token
/// checked first when there is one.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    let mut resp = match &app.token {
        None => next.run(req).await,
        Some(token) => {
            let query = req.uri().query();
            let by_query = query.is_some_and(|q| {
                presented(&HeaderMap::new(), Some(q))
                    .iter()
                    .any(|t| same(t.as_bytes(), token.as_bytes()))
            });
            let ok = presented(req.headers(), query)
                .iter()
                .any(|t| same(t.as_bytes(), token.as_bytes()));
            if by_query && req.uri().path() == "/" {
                // The address with `?token=` is bookmarked once; the cookie keeps it out of
                // the address bar and the history from then on.
                let secure = if app.secure { "; Secure" } else { "" };
                let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
                let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            } else if ok {
                next.run(req).await
            } else {
                app.hub.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
                (
                    StatusCode::UNAUTHORIZED,
                    "401: this page needs the line's access token. Open it once as /?token=TOKEN \
                     (the token is in the file web.token_file names on the device).\n",
                )
                    .into_response()
            }
        }
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn events(State(app): State<App>, req: Request) -> Response {
    use tokio_stream::StreamExt as _;
    let conn = req.extensions().get::<Conn>().cloned();
    let kill = conn.map(|c| c.kill).unwrap_or_default();
    let from_header = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("resume="))
            .map(|v| v.replace("%2F", "/").replace("%2f", "/"))
    });
    let last = from_header.or(from_query);
    match app.hub.register(last.as_deref().and_then(parse_last_id), kill) {
        Err(Refusal::TooMany(n)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("503: {n} viewers are watching (web.max_clients); close one or raise it in the board file\n"),
        )
            .into_response(),
        Ok((first, rx)) => {
            let mut head = vec![bytes::Bytes::from_static(b"retry: 1000\n\n")];
            head.extend(first);
            let stream = tokio_stream::iter(head)
                .chain(tokio_stream::wrappers::ReceiverStream::new(rx))
                .map(Ok::<_, std::convert::Infallible>);
            (
                [
                    (header::CONTENT_TYPE, "text/event-stream"),
                    (header::HeaderName::from_static("x-accel-buffering"), "no"),
                ],
                Body::from_stream(stream),
            )
                .into_response()
        }
    }
}

async fn state_json(State(app): State<App>) -> Response {
    let body = app.hub.snapshot();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Whether `name` is one the archive writes: `RUN_PART_TAG[-N][_overlay|_map].png|jpg`, with
/// RUN `YYYYMMDD-HHMMSS-PID`. Nothing else is served, so no request can name another file.
pub fn archive_name_ok(name: &str) -> bool {
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return false;
    };
    if !(ext == "png" || ext == "jpg") || name.len() > 96 {
        return false;
    }
    let stem = stem
        .strip_suffix("_overlay")
        .or_else(|| stem.strip_suffix("_map"))
        .unwrap_or(stem);
    let mut parts = stem.split('_');
    let (Some(run), Some(part), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let digits = |s: &str, n: Option<usize>| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && n.is_none_or(|n| s.len() == n)
    };
    let run_ok = {
        let f: Vec<&str> = run.split('-').collect();
        f.len() == 3 && digits(f[0], Some(8)) && digits(f[1], Some(6)) && digits(f[2], None)
    };
    let (tag, dup) = tag.split_once('-').unwrap_or((tag, "1"));
    run_ok && digits(part, Some(8)) && (tag == "reject" || tag == "fault") && digits(dup, None)
}

async fn archive_file(State(app): State<App>, UrlPath(name): UrlPath<String>) -> Response {
    let Some(dir) = app.archive.clone() else {
        return (StatusCode::NOT_FOUND, "this line keeps no [archive]\n").into_response();
    };
    if !archive_name_ok(&name) {
        return (StatusCode::NOT_FOUND, "not an archive image\n").into_response();
    }
    let path = dir.join(&name);
    // Not a link, a regular file, of a sane size: the archive writes nothing else.
    match tokio::fs::symlink_metadata(&path).await {
        Ok(m) if m.is_file() && m.len() <= MAX_IMAGE => {}
        _ => return (StatusCode::NOT_FOUND, "no such archive image (yet)\n").into_response(),
    }
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let kind = if name.ends_with(".jpg") {
                "image/jpeg"
            } else {
                "image/png"
            };
            ([(header::CONTENT_TYPE, kind)], bytes).into_response()
        }
        Err(_) => (StatusCode::NOT_FOUND, "no such archive image\n").into_response(),
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    places: Arc<Semaphore>,
    hub: Arc<Hub>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    log::warn!(target: "diffad::sinks::web", "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            let n = hub
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                log::warn!(target: "diffad::sinks::web", "page: refused connection from {peer}: every connection place is taken ({n} so far)");
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls, stop) = (app.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            let _place = place;
            match tls {
                None => serve(tcp, app, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(io)) => serve(io, app, stop).await,
                        Ok(Err(e)) => {
                            log::debug!(target: "diffad::sinks::web", "TLS handshake from {peer}: {e}")
                        }
                        Err(_) => {
                            log::debug!(target: "diffad::sinks::web", "TLS handshake from {peer}: timed out")
                        }
                    }
                }
            }
        });
    }
}

async fn serve<I>(io: I, app: Router, mut stop: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt as _;
    let kill = Arc::new(Notify::new());
    let conn_kill = kill.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Conn {
            kill: conn_kill.clone(),
        });
        app.clone().oneshot(req.map(Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = kill.notified() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_millis(300), conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_the_archive_writes_are_served() {
        for ok in [
            "20261206-120000-42_00000007_reject.png",
            "20261206-120000-42_00000007_reject_overlay.png",
            "20261206-120000-42_00000007_fault_map.png",
            "20261206-120000-42_00000007_reject-2_overlay.png",
            "20261206-120000-42_00000007_reject.jpg",
        ] {
            assert!(archive_name_ok(ok), "{ok}");
        }
        for bad in [
            "../../etc/passwd",
            "..",
            "20261206-120000-42_00000007_reject.json",
            "20261206-120000-42_00000007_reject_overlay.png/../x.png",
            "20261206-120000-42_7_reject.png",
            "x_00000007_reject.png",
            "20261206-120000-42_00000007_other.png",
            "20261206-120000-42_00000007_reject.png.png",
            ".png",
            "",
        ] {
            assert!(!archive_name_ok(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_come_from_header_cookie_or_query_and_compare_whole() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        h.insert(header::COOKIE, "x=1; diffad_token=def".parse().unwrap());
        assert_eq!(
            presented(&h, Some("a=1&token=ghi")),
            vec!["abc", "def", "ghi"]
        );
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd") && !same(b"abc", b"abcd") && !same(b"", b"a"));
    }

    #[test]
    fn a_token_file_must_hold_a_usable_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "short\n").unwrap();
        assert_eq!(read_token(&p).unwrap_err().key, "web.token_file");
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        assert_eq!(read_token(&p).unwrap(), "0123456789abcdef0123");
        std::fs::write(&p, "0123456789abcdef 0123\n").unwrap();
        assert!(read_token(&p).is_err());
    }
}
