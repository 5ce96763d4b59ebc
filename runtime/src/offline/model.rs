//! `diffad model`: the running line's models through its control socket (status, stage,
//! shadow, report, promote, rollback), and `verify` of a model's signature, which needs no line.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// What `diffad model` was asked.
pub enum Action {
    /// Where the models stand.
    Status,
    /// Load and check a candidate beside the live model.
    Stage(PathBuf),
    /// Score the next parts with the candidate too (`None`: until promoted).
    Shadow(Option<u64>),
    /// The shadow run's report, written to a file when given.
    Report(Option<PathBuf>),
    /// Make the candidate live.
    Promote,
    /// Make the previous model live again.
    Rollback,
}

/// `diffad model verify`: `file`'s signature against `keys`, else the board's trusted keys;
/// true when it verifies.
pub fn verify(file: &Path, keys: &[PathBuf], config: Option<&Path>) -> Result<bool> {
    use crate::model::signature;
    let keys = match (keys.is_empty(), config) {
        (false, _) => keys.to_vec(),
        (true, Some(cfg)) => crate::line::board::BoardConfig::load(cfg)?.engine.trusted_keys,
        (true, None) => bail!("name the trusted public key(s): --key FILE.pub, or --config BOARD.toml with engine.trusted_keys"),
    };
    let trusted = signature::load_keys(&keys)?;
    let bytes = crate::files::read_capped(
        file,
        crate::files::mb(crate::files::MODEL_CAP_MB),
        "the model argument",
    )
    .with_context(|| format!("model {}", file.display()))?;
    match signature::verify(file, &bytes, &trusted) {
        Ok(v) => {
            println!(
                "signature good: {} verified by {}{}\ntrusted comment: {}",
                file.display(),
                v.key.display(),
                if v.demo {
                    " (the DEMO key, public in the repository: this proves nothing about where the model came from)"
                } else {
                    ""
                },
                v.trusted_comment
            );
            Ok(true)
        }
        Err(e) => {
            println!("signature BAD: {e}");
            Ok(false)
        }
    }
}

/// The socket: `--socket`, else the `[control] socket` of `--config`.
pub fn socket(socket: Option<&Path>, config: Option<&Path>) -> Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s.to_path_buf());
    }
    let Some(cfg) = config else {
        bail!("name the line's control socket: --socket PATH, or --config BOARD.toml with a [control] section");
    };
    let board = crate::line::board::BoardConfig::load(cfg)?;
    match board.setup.control {
        Some(c) => Ok(c.socket),
        None => bail!(
            "board config {} has no [control] section: add `[control] socket = \"/run/diffad/control.sock\"` and restart the line",
            cfg.display()
        ),
    }
}

/// Carry out `action` on the line behind `socket`; prints the answer (JSON with `json`).
pub fn run(socket: &Path, action: Action, json_out: bool) -> Result<()> {
    let (req, out) = match &action {
        Action::Status => (json!({"cmd": "status"}), None),
        Action::Stage(f) => {
            // The line resolves the path from its own folder: give it an absolute one.
            let abs =
                std::fs::canonicalize(f).with_context(|| format!("model file {}", f.display()))?;
            (json!({"cmd": "stage", "file": abs}), None)
        }
        Action::Shadow(n) => (json!({"cmd": "shadow", "parts": n}), None),
        Action::Report(out) => (json!({"cmd": "report"}), out.clone()),
        Action::Promote => (json!({"cmd": "promote"}), None),
        Action::Rollback => (json!({"cmd": "rollback"}), None),
    };
    let answer = crate::line::control::request(socket, &req).map_err(anyhow::Error::msg)?;
    if answer["ok"] != true {
        bail!(
            "{}",
            answer["error"]
                .as_str()
                .unwrap_or("the line refused without a reason")
        );
    }
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_string_pretty(&answer["report"])?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json_out {
        println!("{answer}");
        return Ok(());
    }
    println!("{}", describe(&action, &answer));
    Ok(())
}

fn slot(v: &Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    format!(
        "{} ({}, threshold {})",
        v["id"].as_str().unwrap_or("?"),
        v["file"].as_str().unwrap_or("?"),
        v["threshold"]
    )
}

fn report(r: &Value) -> String {
    let f = |k: &str| {
        r[k].as_f64()
            .map_or("-".to_string(), |v| format!("{v:+.2}"))
    };
    format!(
        "shadow of {} beside {}: {} parts compared ({} not: no headroom), {} agree; {} the candidate would reject that passed, {} it would pass that were rejected; median score shift {} std (live {}){}",
        r["model"].as_str().unwrap_or("?"),
        r["live_model"].as_str().unwrap_or("?"),
        r["compared"],
        r["not_compared"],
        r["agree"],
        r["would_reject_count"],
        r["would_pass_count"],
        f("shift_std"),
        f("live_shift_std"),
        if r["done"] == true { "; done" } else { "" }
    )
}

fn describe(action: &Action, a: &Value) -> String {
    match action {
        Action::Status => {
            let s = &a["status"];
            let mut out = format!(
                "live:      {}  ({} parts since it went live)\ncandidate: {}\nprevious:  {}",
                slot(&s["live"]),
                s["live_parts"],
                slot(&s["candidate"]),
                slot(&s["previous"])
            );
            if !s["shadow"].is_null() {
                out.push_str(&format!("\n{}", report(&s["shadow"])));
            }
            if a["differs_from_board"] == true {
                out.push_str(&format!(
                    "\nthe board file names {}: a restart goes back to it unless you change engine.model",
                    a["board_model"].as_str().unwrap_or("?")
                ));
            }
            out
        }
        Action::Stage(_) => format!(
            "staged {}: self-test passed on the line's providers, checked against the board file",
            slot(&a["staged"])
        ),
        Action::Shadow(_) => format!(
            "shadowing: {} scores the parts the engine has time for beside {}; verdicts stay the live model's",
            a["shadow"]["model"].as_str().unwrap_or("?"),
            a["shadow"]["live_model"].as_str().unwrap_or("?")
        ),
        Action::Report(_) => report(&a["report"]),
        Action::Promote | Action::Rollback => format!(
            "{} is live: every part after part {} is judged by it; {} stays loaded (rollback / promote)",
            slot(&a["switch"]["to"]),
            a["switch"]["after_part"],
            a["switch"]["from"]["id"].as_str().unwrap_or("?")
        ),
    }
}
