//! `[opcua]`: an OPC UA server with the core of the Machine Vision companion model (OPC 40100-1,
//! namespace `http://opcfoundation.org/UA/MachineVision`), on the network sinks' runtime.
//!
//! Its sink, in the bus's fan-out thread, only queues records (`try_send`, counted when full);
//! one task on the runtime turns them into variable values and `ResultReady` events, so neither
//! a client nor the server's locks can reach a stage thread or the other sinks.

pub mod auth;
pub mod config;
mod methods;
mod model;

pub use methods::ModelCommands;

pub use config::OpcuaConfig;

use crate::events::{Event, Record, Sink};
use auth::{Authenticator, Users, USERS_TOKEN_ID};
use model::{Model, VisionState};
use opcua::crypto::SecurityPolicy;
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::simple_node_manager;
use opcua::server::{ServerBuilder, ServerHandle, ServerUserToken, ANONYMOUS_USER_TOKEN_ID};
use opcua::types::MessageSecurityMode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The Machine Vision companion specification's namespace.
pub const MV_NAMESPACE: &str = "http://opcfoundation.org/UA/MachineVision";

/// After the line stops, the server stays up this long so that subscribers get `Halted` and the
/// last results on their next publish (the longest publishing interval plants use is ~1 s).
const HALT_LINGER: Duration = Duration::from_millis(1500);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpcuaError {
    /// A key of `[opcua]` is unusable here.
    #[error(transparent)]
    Config(#[from] crate::config::Invalid),
    /// The address could not be bound.
    #[error("opcua.listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The users file is unusable.
    #[error("opcua.users_file: {0}")]
    Users(#[from] auth::UsersError),
    /// async-opcua refused the configuration or the certificate.
    #[error("opcua server: {0}")]
    Server(String),
}

/// What the server says of the line from its start.
#[derive(Debug, Clone, Default)]
pub struct OpcuaFacts {
    /// Line name.
    pub line: String,
    /// The live model's id (the active recipe); empty while the server is started ahead of the
    /// engine (`OpcuaServer::loaded` tells it later).
    pub model_id: String,
}

/// Counters the server keeps, for the summary.
#[derive(Debug, Default)]
pub struct OpcuaStats {
    /// `ResultReady` events published.
    pub results: AtomicU64,
    /// Records the server's queue had no room for (each a result or update it never showed).
    pub lost: AtomicU64,
    /// Logins refused.
    pub auth_failures: Arc<AtomicU64>,
    /// Set once the task has shown `Halted`.
    halted: AtomicBool,
}

/// The figures of a finished server, for the summary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OpcuaFigures {
    /// The endpoint URL.
    pub url: String,
    /// `ResultReady` events published.
    pub results: u64,
    /// Records lost before the server saw them.
    pub lost: u64,
    /// Logins refused.
    pub auth_failures: u64,
}

enum Msg {
    Rec(Arc<Record>),
    /// The engine is loaded: its model is the active recipe.
    Loaded(String),
    Halt,
}

/// The running server.
pub struct OpcuaServer {
    handle: ServerHandle,
    tx: tokio::sync::mpsc::Sender<Msg>,
    stats: Arc<OpcuaStats>,
    addr: std::net::SocketAddr,
    url: String,
    task: Option<tokio::task::JoinHandle<()>>,
    rt: tokio::runtime::Handle,
    /// Where the model methods find the line's commands once it runs (`None`: no methods).
    methods: Option<methods::Answerer>,
}

impl OpcuaServer {
    /// Bind, build the address space and start serving on `rt`; `clock` dates the results.
    pub fn start(
        cfg: &OpcuaConfig,
        facts: OpcuaFacts,
        clock: Arc<dyn crate::clock::Clock>,
        rt: &tokio::runtime::Handle,
    ) -> Result<Self, OpcuaError> {
        cfg.validate()?;
        let want = cfg.addr()?;
        let users = match &cfg.users_file {
            Some(f) => Users::load(f)?,
            None => Users::default(),
        };
        if !cfg.open_endpoint() && users.is_empty() {
            return Err(OpcuaError::Config(crate::config::Invalid::new(
                "opcua.users_file",
                "names no user: without the loopback endpoint nobody could log in",
            )));
        }
        let std_listener =
            std::net::TcpListener::bind(want).map_err(|source| OpcuaError::Bind {
                addr: cfg.listen.clone(),
                source,
            })?;
        let addr = std_listener
            .local_addr()
            .map_err(|source| OpcuaError::Bind {
                addr: cfg.listen.clone(),
                source,
            })?;
        std_listener
            .set_nonblocking(true)
            .map_err(|source| OpcuaError::Bind {
                addr: cfg.listen.clone(),
                source,
            })?;
        let url = cfg.url(addr.port());
        let stats = Arc::new(OpcuaStats::default());
        // async-opcua spawns its status task while it builds: inside the runtime.
        let _guard = rt.enter();
        let (server, handle) = build(cfg, &facts, addr, &url, users, &stats)?;
        let model = Model::build(&handle, &facts).map_err(OpcuaError::Server)?;
        // The methods are in the address space from the start, so that a client browsing
        // during Preoperational finds them; they answer once the line gives them its commands.
        let methods = match cfg.model_methods {
            true => Some(
                methods::add(&handle, &model::line_namespace(&facts.line), rt.clone())
                    .map_err(OpcuaError::Server)?,
            ),
            false => None,
        };
        let listener =
            tokio::net::TcpListener::from_std(std_listener).map_err(|source| OpcuaError::Bind {
                addr: cfg.listen.clone(),
                source,
            })?;
        rt.spawn(async move {
            if let Err(e) = server.run_with(listener).await {
                log::error!("opcua server stopped: {e}");
            }
        });
        let (tx, rx) = tokio::sync::mpsc::channel(cfg.queue);
        let task = rt.spawn(apply(rx, model, stats.clone(), clock));
        log::info!(
            "opcua: {url} ({}; {})",
            if cfg.open_endpoint() {
                "anonymous on loopback without security, and signed endpoints"
            } else {
                "signed endpoints only, users from opcua.users_file"
            },
            cfg.policies
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Self {
            handle,
            tx,
            stats,
            addr,
            url,
            task: Some(task),
            rt: rt.clone(),
            methods,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The endpoint URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The engine has loaded `model_id` (a server started ahead of it showed no recipe): it
    /// is the active recipe from now on.
    pub fn loaded(&self, model_id: &str) {
        if self.tx.try_send(Msg::Loaded(model_id.to_string())).is_err() {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Answer the model methods (`opcua.model_methods`, in the address space from the start)
    /// with `commands`; until then they answer that the line is starting.
    pub fn answer_model_methods(&self, commands: ModelCommands) -> Result<(), OpcuaError> {
        let slot = self.methods.as_ref().ok_or_else(|| {
            OpcuaError::Server("opcua.model_methods is off: there are no model methods".into())
        })?;
        slot.set(commands)
            .map_err(|_| OpcuaError::Server("the model methods are answered already".into()))
    }

    /// The sink that feeds the server from the bus.
    pub fn sink(&self) -> Box<dyn Sink> {
        Box::new(OpcuaSink {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        })
    }

    /// After the bus closed: wait (at most `grace`) for `Halted` to be shown, leave it up for
    /// subscribers to read, then stop the server.
    pub fn stop(&mut self, grace: Duration) {
        let end = std::time::Instant::now() + grace;
        while !self.stats.halted.load(Ordering::Acquire) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.stats.halted.load(Ordering::Acquire) {
            std::thread::sleep(HALT_LINGER);
        }
        self.handle.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = &self.rt;
    }

    /// Its figures so far.
    pub fn figures(&self) -> OpcuaFigures {
        OpcuaFigures {
            url: self.url.clone(),
            results: self.stats.results.load(Ordering::Relaxed),
            lost: self.stats.lost.load(Ordering::Relaxed),
            auth_failures: self.stats.auth_failures.load(Ordering::Relaxed),
        }
    }
}

/// The server as configured: endpoints, limits, certificate store, users.
fn build(
    cfg: &OpcuaConfig,
    facts: &OpcuaFacts,
    addr: std::net::SocketAddr,
    url: &str,
    users: Users,
    stats: &Arc<OpcuaStats>,
) -> Result<(opcua::server::Server, ServerHandle), OpcuaError> {
    let has_users = !users.is_empty();
    let mut b = ServerBuilder::new()
        .application_name(format!("diffad-edge {}", facts.line))
        .application_uri(format!("urn:diffad-edge:{}", facts.line))
        .product_uri("urn:diffad-edge")
        .host(addr.ip().to_string())
        .port(addr.port())
        .discovery_urls(vec![url.to_string()])
        .pki_dir(&cfg.pki_dir)
        // The certificate is made at the first start (deploy) and kept in pki_dir/own.
        .create_sample_keypair(true)
        // A client certificate is trusted only when an administrator copied it into
        // pki_dir/trusted; others land in pki_dir/rejected for review.
        .trust_client_certs(false)
        .check_cert_time(true)
        .max_sessions(cfg.max_sessions)
        .diagnostics_enabled(false)
        // Results are pushed as they come; a short poll keeps the trigger-to-notification
        // latency near the client's publishing interval.
        .subscription_poll_interval_ms(10)
        .with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: MV_NAMESPACE.into(),
                ..Default::default()
            },
            model::MV_MANAGER,
        ))
        .with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: model::line_namespace(&facts.line),
                ..Default::default()
            },
            model::LINE_MANAGER,
        ))
        .with_authenticator(Arc::new(Authenticator::new(
            users,
            stats.auth_failures.clone(),
        )));
    {
        let limits = b.limits_mut();
        limits.subscriptions.max_subscriptions_per_session = cfg.max_subscriptions;
        limits.subscriptions.max_monitored_items_per_sub = cfg.max_monitored_items;
        limits.subscriptions.max_queued_notifications = cfg.max_queued_notifications;
        // async-opcua caps a monitored item's queue at 10 and gives an event item that asks
        // for 0 (the server's default) a queue of 1: results faster than the client publishes
        // would be dropped. Clients ask for the queue they need (README); this lets them.
        limits.subscriptions.max_monitored_item_queue_size = cfg.max_queued_notifications;
        // Clients may ask for results as fast as every 10 ms (async-opcua's floor is 100 ms).
        limits.subscriptions.min_publishing_interval_ms = 10.0;
        // Values are written when they change, never polled: a client asking for sampling
        // interval 0 gets every change (async-opcua's default floor of 100 ms would merge them).
        limits.subscriptions.min_sampling_interval_ms = 0.0;
    }
    if has_users {
        // async-opcua checks that an endpoint's token ids exist; the users themselves are
        // checked by `Authenticator` against their hashes, never against this entry.
        b = b.add_user_token(USERS_TOKEN_ID, ServerUserToken::user_pass("users-file", ""));
    }
    let open = cfg.open_endpoint();
    if open {
        b = b.add_endpoint(
            "none",
            (
                "/",
                SecurityPolicy::None,
                MessageSecurityMode::None,
                &[ANONYMOUS_USER_TOKEN_ID] as &[&str],
            ),
        );
    }
    let mut tokens: Vec<&str> = Vec::new();
    if open {
        tokens.push(ANONYMOUS_USER_TOKEN_ID);
    }
    if has_users {
        tokens.push(USERS_TOKEN_ID);
    }
    for p in &cfg.policies {
        let policy = match p {
            config::Policy::Basic256Sha256 => SecurityPolicy::Basic256Sha256,
            config::Policy::Aes256Sha256RsaPss => SecurityPolicy::Aes256Sha256RsaPss,
            config::Policy::Aes128Sha256RsaOaep => SecurityPolicy::Aes128Sha256RsaOaep,
        };
        for m in &cfg.modes {
            let mode = match m {
                config::Mode::Sign => MessageSecurityMode::Sign,
                config::Mode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
            };
            b = b.add_endpoint(format!("{p:?}-{m:?}"), ("/", policy, mode, &tokens[..]));
        }
    }
    b.build().map_err(OpcuaError::Server)
}

struct OpcuaSink {
    tx: tokio::sync::mpsc::Sender<Msg>,
    stats: Arc<OpcuaStats>,
}

impl Sink for OpcuaSink {
    fn deliver(&mut self, rec: &Arc<Record>) {
        if matches!(rec.event, Event::Log(_) | Event::Reject(_)) {
            return;
        }
        if self.tx.try_send(Msg::Rec(rec.clone())).is_err() {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn close(&mut self) {
        // The line has stopped; waiting here for room delays only the bus's last flush.
        let _ = self.tx.blocking_send(Msg::Halt);
    }
}

/// How often the task writes the state and the refused logins again when nothing changed them
/// (see `Model::write_state`).
const REFRESH: Duration = Duration::from_millis(200);

/// The task that shows the records: one at a time, in bus order.
async fn apply(
    mut rx: tokio::sync::mpsc::Receiver<Msg>,
    mut model: Model,
    stats: Arc<OpcuaStats>,
    clock: Arc<dyn crate::clock::Clock>,
) {
    // Trigger times are the line clock's; the wall time they map to is anchored once here.
    let anchor = (std::time::SystemTime::now(), clock.now_ns());
    let mut refreshed = tokio::time::Instant::now();
    loop {
        match tokio::time::timeout(REFRESH, rx.recv()).await {
            Ok(Some(Msg::Rec(rec))) => {
                if model.show(&rec, anchor) {
                    stats.results.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Some(Msg::Loaded(id))) => model.set_active_recipe(&id),
            Ok(Some(Msg::Halt)) => {
                model.set_state(VisionState::Halted);
                stats.halted.store(true, Ordering::Release);
            }
            Ok(None) => break,
            Err(_) => {}
        }
        if refreshed.elapsed() >= REFRESH {
            refreshed = tokio::time::Instant::now();
            model.write_state();
            model.show_logins_refused(stats.auth_failures.load(Ordering::Relaxed));
        }
    }
}
