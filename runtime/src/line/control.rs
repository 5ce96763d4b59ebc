//! `[control]`: the running line's control socket, a Unix socket that `diffad model` talks to
//! (status, stage, shadow, report, promote, rollback). It runs on the network runtime
//! (`sinks::netrt`); staging loads and self-tests the candidate on a blocking thread there, so
//! the line's threads never wait for it. Only the socket's owner (or members of
//! `control.group`) get an answer: the file's mode says so to the kernel, and each peer's
//! credentials are checked again on accept.
//!
//! One request per connection, one line of JSON each way:
//! `{"cmd":"status"}`, `{"cmd":"stage","file":"M.onnx"}`, `{"cmd":"shadow","parts":N}`,
//! `{"cmd":"report"}`, `{"cmd":"promote"}`, `{"cmd":"rollback"}`; the answer is
//! `{"ok":true,...}` or `{"ok":false,"error":"..."}`.

use super::board::BoardConfig;
use super::models::{ModelCmd, Slot};
use crate::config::Invalid;
use crossbeam_channel::Sender;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// The longest request line.
pub const MAX_REQUEST: usize = 4096;
/// How long a peer may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command may wait for the inspect thread (one batch, normally).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// `[control]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The socket's path (its folder must exist and should be private to the service).
    pub socket: PathBuf,
    /// A group whose members may use the socket too (mode 0660); else the owner only (0600).
    pub group: Option<String>,
    /// While shadowing without engine headroom, the candidate still scores one batch in every
    /// this many parts (a part arriving then may wait one candidate inference); 0: only with
    /// headroom.
    #[serde(default = "default_shadow_every")]
    pub shadow_every: u64,
}

fn default_shadow_every() -> u64 {
    20
}

impl ControlConfig {
    /// Check the path's shape (whether its folder exists is a deployment check).
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.socket.as_os_str().is_empty() {
            return Err(Invalid::new(
                "control.socket",
                "must name the socket's path",
            ));
        }
        // sun_path holds 108 bytes with its NUL.
        if self.socket.as_os_str().len() > 107 {
            return Err(Invalid::new(
                "control.socket",
                format!(
                    "{} is longer than a Unix socket path may be (107 bytes)",
                    self.socket.display()
                ),
            ));
        }
        if let Some(g) = &self.group {
            if g.is_empty() {
                return Err(Invalid::new(
                    "control.group",
                    "must name a group, or be left out",
                ));
            }
        }
        Ok(())
    }

    /// The group's id.
    fn gid(&self) -> Result<Option<u32>, Invalid> {
        let Some(name) = &self.group else {
            return Ok(None);
        };
        let c = std::ffi::CString::new(name.as_str())
            .map_err(|_| Invalid::new("control.group", "contains a NUL byte"))?;
        // SAFETY: getgrnam reads a NUL-terminated name and returns a pointer to static storage,
        // read at once on this thread.
        let gr = unsafe { libc::getgrnam(c.as_ptr()) };
        if gr.is_null() {
            return Err(Invalid::new(
                "control.group",
                format!("no group named {name} on this machine"),
            ));
        }
        // SAFETY: non-null result of getgrnam.
        Ok(Some(unsafe { (*gr).gr_gid }))
    }
}

/// Loads a candidate as the board file would load it, and checks it against the board.
pub struct Stager {
    board: BoardConfig,
    /// The live model's input (channels, height, width), which the line's camera is set up for.
    live_input: Option<(usize, usize, usize)>,
}

impl Stager {
    /// A stager for the line of `board` (its engine section gives the providers).
    pub fn new(board: BoardConfig) -> Self {
        let live_input = crate::model::manifest::Manifest::read(&board.engine.model)
            .ok()
            .map(|m| (m.input.channels, m.input.height, m.input.width));
        Self { board, live_input }
    }

    /// The board file's own model.
    pub fn board_model(&self) -> &Path {
        &self.board.engine.model
    }

    /// Load `file` on the line's providers, run its self-test there, and check it against the
    /// board file; the candidate, or every reason it was refused.
    pub fn stage(&self, file: &Path) -> Result<Slot, String> {
        let e = &self.board.engine;
        // Before anything else of an untrusted file is read; the engine checks the bytes it
        // loads again.
        if crate::stages::engine::signature_checked(e, file) {
            use crate::model::signature;
            let keys = signature::load_keys(&e.trusted_keys).map_err(|e| e.to_string())?;
            let bytes = e
                .read_model(file)
                .map_err(|err| format!("{}: {err}", file.display()))?;
            signature::verify(file, &bytes, &keys).map_err(|e| e.to_string())?;
        }
        let mut board = self.board.clone();
        board.engine.model = file.to_path_buf();
        let problems = board.check_deployment();
        if !problems.is_empty() {
            return Err(format!(
                "{} refused for this board ({}):\n  {}",
                file.display(),
                self.board.path.display(),
                problems
                    .iter()
                    .map(Invalid::to_string)
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ));
        }
        let m = crate::model::manifest::Manifest::read(file)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let input = (m.input.channels, m.input.height, m.input.width);
        if let Some(live) = self.live_input.filter(|l| *l != input) {
            return Err(format!(
                "{} takes {}x{}x{} (channels x height x width) but the live model takes {}x{}x{}: \
                 the line's camera, region and tiling are set up for the live model's input; \
                 change the board file and restart to move to another input",
                file.display(),
                input.0,
                input.1,
                input.2,
                live.0,
                live.1,
                live.2
            ));
        }
        let engine = crate::stages::engine::Engine::load(&board.engine)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let setup = &board.setup;
        let inspector = crate::stages::tiling::inspector_for(
            engine,
            Some(&setup.camera),
            setup.line.threshold,
            setup.camera.allow_upscale,
        )
        .map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(Slot::new(inspector, file.display().to_string()))
    }
}

#[derive(Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Status,
    Stage { file: PathBuf },
    Shadow { parts: Option<u64> },
    Report,
    Promote,
    Rollback,
}

/// The control socket's server.
pub struct ControlServer {
    path: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
    rt: tokio::runtime::Handle,
}

impl ControlServer {
    /// Bind `cfg.socket` (a stale socket there is replaced; anything else refuses) and answer
    /// requests on `rt`, passing model commands to the inspect thread through `cmds`.
    pub fn start(
        cfg: &ControlConfig,
        stager: Option<Stager>,
        cmds: Sender<ModelCmd>,
        rt: &tokio::runtime::Handle,
    ) -> Result<Self, Invalid> {
        use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
        cfg.validate()?;
        let gid = cfg.gid()?;
        let path = cfg.socket.clone();
        let shown = path.display().to_string();
        match std::fs::symlink_metadata(&path) {
            // A socket someone answers on is another line's, not a stale one.
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                    return Err(Invalid::new(
                        "control.socket",
                        format!("{shown}: another process answers on it (another line with this board file?): give each line its own socket"),
                    ));
                }
                let _ = std::fs::remove_file(&path);
            }
            Ok(_) => {
                return Err(Invalid::new(
                    "control.socket",
                    format!("{shown} exists and is not a socket: remove it or name another path"),
                ))
            }
            Err(_) => {}
        }
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    Invalid::new("control.socket", format!("creating {}: {e}", dir.display()))
                })?;
        }
        let listener = {
            let _in_rt = rt.enter();
            tokio::net::UnixListener::bind(&path).map_err(|e| {
                Invalid::new(
                    "control.socket",
                    format!("{shown}: {e} (its folder must exist and be writable by the service)"),
                )
            })?
        };
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Invalid::new("control.socket", format!("{shown}: chmod: {e}")))?;
        if let Some(g) = gid {
            std::os::unix::fs::chown(&path, None, Some(g))
                .map_err(|e| Invalid::new("control.group", format!("{shown}: chown: {e}")))?;
        }
        log::info!(
            "control socket on {shown} ({}): `diffad model status --socket {shown}`",
            match &cfg.group {
                Some(g) => format!("owner and group {g}"),
                None => "owner only".into(),
            }
        );
        let stager = std::sync::Arc::new(stager);
        let task = rt.spawn(accept_loop(listener, gid, stager, cmds));
        Ok(Self {
            path,
            task: Some(task),
            rt: rt.clone(),
        })
    }

    /// Stop answering and remove the socket.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            self.rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
            });
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the peer may use the socket: the same user, or a member of the group.
fn allowed(cred: &tokio::net::unix::UCred, gid: Option<u32>) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if cred.uid() == me {
        return true;
    }
    let Some(g) = gid else {
        return false;
    };
    if cred.gid() == g {
        return true;
    }
    // Supplementary groups are not in the credentials; the peer's /proc entry has them.
    cred.pid()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|l| l.split_whitespace().any(|x| x.parse() == Ok(g)))
        })
        .unwrap_or(false)
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    gid: Option<u32>,
    stager: std::sync::Arc<Option<Stager>>,
    cmds: Sender<ModelCmd>,
) {
    // One request at a time: a second stage waits for the first, and a flood queues on the
    // listener's backlog instead of in memory.
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let cred = stream.peer_cred();
        let ok = cred.as_ref().is_ok_and(|c| allowed(c, gid));
        if !ok {
            let who = cred.map_or("unknown".to_string(), |c| {
                format!("uid {} gid {}", c.uid(), c.gid())
            });
            log::warn!(target: "diffad::line::control", "control socket: refused a peer ({who}): not the owner or control.group");
            let mut s = stream;
            let _ = s
                .write_all(b"{\"ok\":false,\"error\":\"refused: only the line's user (or control.group) may use this socket\"}\n")
                .await;
            continue;
        }
        serve(stream, &stager, &cmds).await;
    }
}

async fn serve(
    stream: tokio::net::UnixStream,
    stager: &std::sync::Arc<Option<Stager>>,
    cmds: &Sender<ModelCmd>,
) {
    let (rd, mut wr) = stream.into_split();
    let mut line = Vec::new();
    let mut rd = tokio::io::BufReader::new(rd.take(MAX_REQUEST as u64 + 1));
    let got = tokio::time::timeout(READ_TIMEOUT, rd.read_until(b'\n', &mut line)).await;
    let answer = match got {
        Err(_) => error("no request within 5 s"),
        Ok(Err(e)) => error(&format!("reading the request: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => {
            error(&format!("request longer than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => error(&format!(
                "not a request ({e}); one JSON line such as {{\"cmd\":\"status\"}}"
            )),
            Ok(req) => answer(req, stager, cmds).await,
        },
    };
    let mut out = answer.to_string();
    out.push('\n');
    let _ = wr.write_all(out.as_bytes()).await;
}

fn error(msg: &str) -> serde_json::Value {
    serde_json::json!({"ok": false, "error": msg})
}

/// Send `make(reply)` to the inspect thread and wait (off the runtime's worker) for the reply.
async fn ask<T: Send + 'static>(
    cmds: &Sender<ModelCmd>,
    make: impl FnOnce(Sender<T>) -> ModelCmd,
) -> Result<T, String> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    cmds.send(make(tx))
        .map_err(|_| "the line is stopping".to_string())?;
    tokio::task::spawn_blocking(move || rx.recv_timeout(REPLY_TIMEOUT))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the inspect thread did not answer (the line is stopping?)".to_string())
}

async fn answer(
    req: Request,
    stager: &std::sync::Arc<Option<Stager>>,
    cmds: &Sender<ModelCmd>,
) -> serde_json::Value {
    let json = |v: Result<serde_json::Value, String>| match v {
        Ok(v) => v,
        Err(e) => error(&e),
    };
    match req {
        Request::Status => json(ask(cmds, ModelCmd::Status).await.map(|s| {
            let board = stager.as_ref().as_ref().map(|s| s.board_model().display().to_string());
            let differs = board.as_ref().is_some_and(|b| *b != s.live.file);
            serde_json::json!({"ok": true, "status": s, "board_model": board, "differs_from_board": differs})
        })),
        Request::Stage { file } => {
            let stager = stager.clone();
            let staged = tokio::task::spawn_blocking(move || match stager.as_ref() {
                Some(s) => s.stage(&file),
                None => Err("this line was started without a board file: nothing to stage against".into()),
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            match staged {
                Err(e) => {
                    log::warn!(target: "diffad::line::control", "stage refused: {e}");
                    error(&e)
                }
                Ok(slot) => json(
                    ask(cmds, |tx| ModelCmd::Stage(Box::new(slot), tx))
                        .await
                        .and_then(|r| r)
                        .map(|i| serde_json::json!({"ok": true, "staged": i})),
                ),
            }
        }
        Request::Shadow { parts } => json(
            ask(cmds, |tx| ModelCmd::Shadow(parts, tx))
                .await
                .and_then(|r| r)
                .map(|r| serde_json::json!({"ok": true, "shadow": r})),
        ),
        Request::Report => json(
            ask(cmds, ModelCmd::Report)
                .await
                .and_then(|r| r)
                .map(|r| serde_json::json!({"ok": true, "report": r})),
        ),
        Request::Promote | Request::Rollback => {
            let promote = matches!(req, Request::Promote);
            // From the request to the switch: the inspect thread finishes the batch it is on.
            let t0 = std::time::Instant::now();
            let r = if promote {
                ask(cmds, ModelCmd::Promote).await
            } else {
                ask(cmds, ModelCmd::Rollback).await
            };
            let waited_ms = t0.elapsed().as_secs_f64() * 1e3;
            json(r.and_then(|r| r).map(
                |s| serde_json::json!({"ok": true, "switch": s, "waited_ms": waited_ms}),
            ))
        }
    }
}

/// The control requests as a function of their JSON, for the OPC UA server's model methods:
/// the same requests, checks and answers as the socket's.
pub fn commands(
    stager: Option<Stager>,
    cmds: Sender<ModelCmd>,
) -> crate::sinks::opcua::ModelCommands {
    let stager = std::sync::Arc::new(stager);
    std::sync::Arc::new(move |req: serde_json::Value| {
        let (stager, cmds) = (stager.clone(), cmds.clone());
        Box::pin(async move {
            match serde_json::from_value::<Request>(req) {
                Ok(req) => answer(req, &stager, &cmds).await,
                Err(e) => error(&format!("not a request: {e}")),
            }
        })
    })
}

/// Send one request to the socket at `path` and return its answer (the `diffad model` client).
pub fn request(path: &Path, req: &serde_json::Value) -> Result<serde_json::Value, String> {
    use std::io::{BufRead, Write};
    let shown = path.display();
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!("control socket {shown}: {e} (is the line running with [control] socket = \"{shown}\"? as its user?)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(|e| e.to_string())?;
    let mut line = req.to_string();
    line.push('\n');
    // A refused peer is answered before its request is read: what it says comes first.
    let wrote = s.write_all(line.as_bytes());
    let mut answer = String::new();
    let read = std::io::BufReader::new(std::io::Read::take(s, 16 << 20)).read_line(&mut answer);
    if answer.trim().is_empty() {
        let e = wrote.err().map_or_else(
            || {
                read.err()
                    .map_or("no answer".to_string(), |e| e.to_string())
            },
            |e| e.to_string(),
        );
        return Err(format!("control socket {shown}: {e}"));
    }
    serde_json::from_str(&answer).map_err(|e| {
        format!(
            "control socket {shown}: answer is not JSON ({e}): {}",
            answer.trim()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_in_use_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ControlConfig {
            socket: dir.path().join("sub/c.sock"),
            group: None,
            shadow_every: 20,
        };
        let net = crate::sinks::netrt::NetRuntime::start().unwrap();
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let first = ControlServer::start(&cfg, None, tx.clone(), &net.handle()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cfg.socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = ControlServer::start(&cfg, None, tx.clone(), &net.handle())
            .err()
            .unwrap();
        assert_eq!(e.key, "control.socket");
        assert!(e.message.contains("another process answers"), "{e}");
        // A socket file nobody answers on (a line that was killed) is taken over.
        std::mem::forget(first);
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let cfg2 = ControlConfig {
            socket: stale,
            ..cfg
        };
        ControlServer::start(&cfg2, None, tx, &net.handle()).unwrap();
    }
}
