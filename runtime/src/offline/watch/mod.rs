//! `diffad watch`: the supervisor's view of one or more lines, and the reference client of the
//! stream protocol (README "The supervisor stream protocol").
//!
//! One follower thread per line keeps `(run, seq)` of the last event it passed on and, after
//! every disconnect, reconnects and sends `resume <run> <seq>`. Duplicates are dropped, and
//! restarts, losses and gaps are announced as `watch` notices, so what comes out is every event
//! of every run once, or a notice saying what is missing.

use crossbeam_channel::Receiver;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod follow;

pub use follow::{follow, start, FollowStats};

/// Wait between reconnect attempts.
pub const RECONNECT: Duration = Duration::from_millis(500);

/// What a follower passes on.
#[derive(Debug, Clone)]
pub enum Update {
    /// Connected; the hello said this run and last seq.
    Connected {
        /// The address given.
        source: String,
        /// The hello's run.
        run: String,
    },
    /// The connection failed or ended.
    Disconnected {
        /// The address given.
        source: String,
        /// Why.
        reason: String,
    },
    /// An event of the line (with `run` and `seq`), passed on once.
    Event {
        /// The address given.
        source: String,
        /// The event as the line sent it.
        value: Value,
        /// The line as the line sent it.
        raw: String,
    },
    /// A notice: the stream's (`restarted`, `lost`, `error`, `refused`) or the follower's own
    /// (`gap`, `run_changed`), with `source` added.
    Notice {
        /// The address given.
        source: String,
        /// The notice.
        value: Value,
    },
}

/// What the table shows of one line.
#[derive(Debug, Default)]
pub struct LineView {
    /// The address given.
    pub source: String,
    /// Line name (from events).
    pub line: String,
    /// Current run.
    pub run: String,
    /// Connected now.
    pub connected: bool,
    /// Counters of the last heartbeat.
    pub counters: Value,
    /// Ready flag of the last heartbeat.
    pub ready: Option<bool>,
    /// When the last heartbeat came.
    pub last_heartbeat: Option<Instant>,
    /// Part events in the last seconds, for parts/s.
    pub recent_parts: VecDeque<Instant>,
    /// Latencies of the last parts (ms).
    pub latencies: VecDeque<f64>,
    /// Active alarms by code.
    pub alarms: BTreeMap<String, String>,
    /// Restarts and losses seen.
    pub restarts: u64,
    /// Events reported lost.
    pub lost: u64,
}

/// Window over which parts/s is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl LineView {
    fn apply(&mut self, u: &Update, now: Instant) {
        match u {
            Update::Connected { run, .. } => {
                self.connected = true;
                self.run.clone_from(run);
            }
            Update::Disconnected { .. } => self.connected = false,
            Update::Notice { value, .. } => match value["type"].as_str() {
                Some("restarted") | Some("run_changed") => {
                    self.restarts += 1;
                    self.run = value["run"].as_str().unwrap_or_default().to_string();
                    self.alarms.clear();
                }
                Some("lost") | Some("gap") => self.lost += value["count"].as_u64().unwrap_or(0),
                _ => {}
            },
            Update::Event { value, .. } => {
                if let Some(l) = value["line"].as_str() {
                    self.line = l.to_string();
                }
                match value["type"].as_str() {
                    Some("part") => {
                        self.recent_parts.push_back(now);
                        if let Some(l) = value["latency_ms"].as_f64() {
                            self.latencies.push_back(l);
                            if self.latencies.len() > 200 {
                                self.latencies.pop_front();
                            }
                        }
                    }
                    Some("heartbeat") => {
                        self.counters = value["counters"].clone();
                        self.ready = value["ready"].as_bool();
                        self.last_heartbeat = Some(now);
                    }
                    Some("alarm") => {
                        let code = value["code"].as_str().unwrap_or("?").to_string();
                        if value["active"].as_bool() == Some(true) {
                            let msg = value["message"].as_str().unwrap_or_default().to_string();
                            self.alarms.insert(code, msg);
                        } else {
                            self.alarms.remove(&code);
                        }
                    }
                    _ => {}
                }
            }
        }
        while self
            .recent_parts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RATE_WINDOW)
        {
            self.recent_parts.pop_front();
        }
    }

    /// Parts per second over the last [`RATE_WINDOW`].
    pub fn parts_per_s(&self) -> f64 {
        self.recent_parts.len() as f64 / RATE_WINDOW.as_secs_f64()
    }

    /// Median latency of the last parts.
    pub fn latency_p50(&self) -> Option<f64> {
        let mut v: Vec<f64> = self.latencies.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }
}

/// The view of all lines, in the order given, and the last notices.
#[derive(Debug, Default)]
pub struct View {
    /// One per source.
    pub lines: Vec<LineView>,
    /// Latest notices and connection changes, newest last.
    pub log: VecDeque<String>,
}

impl View {
    /// An empty view of `sources`.
    pub fn new(sources: &[String]) -> Self {
        Self {
            lines: sources
                .iter()
                .map(|s| LineView {
                    source: s.clone(),
                    ..Default::default()
                })
                .collect(),
            log: VecDeque::new(),
        }
    }

    /// Take one update.
    pub fn apply(&mut self, u: &Update, now: Instant) {
        let source = match u {
            Update::Connected { source, .. }
            | Update::Disconnected { source, .. }
            | Update::Event { source, .. }
            | Update::Notice { source, .. } => source,
        };
        let text = match u {
            Update::Connected { run, .. } => Some(format!("{source}: connected, run {run}")),
            Update::Disconnected { reason, .. } => {
                Some(format!("{source}: disconnected: {reason}"))
            }
            Update::Notice { value, .. } => Some(format!("{source}: {value}")),
            Update::Event { .. } => None,
        };
        if let Some(t) = text {
            self.log.push_back(t);
            if self.log.len() > 50 {
                self.log.pop_front();
            }
        }
        if let Some(l) = self.lines.iter_mut().find(|l| &l.source == source) {
            l.apply(u, now);
        }
    }
}

/// `--json`: every event and notice, merged, one JSON line each, until the followers stop.
pub fn run_json(
    rx: &Receiver<Update>,
    out: &mut impl Write,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let Ok(u) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        match u {
            Update::Event { raw, .. } => writeln!(out, "{raw}")?,
            Update::Notice { value, .. } => writeln!(out, "{value}")?,
            Update::Connected { source, run } => writeln!(
                out,
                "{}",
                json!({"type": "watch_connected", "source": source, "run": run})
            )?,
            Update::Disconnected { source, reason } => writeln!(
                out,
                "{}",
                json!({"type": "watch_disconnected", "source": source, "reason": reason})
            )?,
        }
        out.flush()?;
    }
    Ok(())
}

/// The terminal table, redrawn four times a second; `q` or Esc quits.
pub fn run_tui(
    rx: &Receiver<Update>,
    sources: &[String],
    stop: &AtomicBool,
) -> std::io::Result<()> {
    use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyModifiers};
    let mut terminal = ratatui::init();
    let mut view = View::new(sources);
    let result = (|| -> std::io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let end = Instant::now() + Duration::from_millis(250);
            while let Ok(u) = rx.recv_deadline(end) {
                view.apply(&u, Instant::now());
            }
            terminal.draw(|f| draw(f, &view))?;
            while event::poll(Duration::ZERO)? {
                if let TermEvent::Key(k) = event::read()? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result
}

fn draw(f: &mut ratatui::Frame, view: &View) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Color, Modifier, Style};
    use ratatui::widgets::{Block, Borders, List, ListItem, Row, Table};
    let [top, bottom] = Layout::vertical([
        Constraint::Length(view.lines.len() as u16 + 3),
        Constraint::Min(3),
    ])
    .areas(f.area());
    let now = Instant::now();
    let n = |c: &Value, k: &str| c[k].as_u64().map_or("-".to_string(), |v| v.to_string());
    let rows = view.lines.iter().map(|l| {
        let state = match (l.connected, l.ready) {
            (false, _) => ("DOWN", Color::Red),
            (true, Some(true)) => ("ready", Color::Green),
            (true, Some(false)) => ("NOT READY", Color::Yellow),
            (true, None) => ("connected", Color::Gray),
        };
        let hb = l.last_heartbeat.map_or("-".into(), |t| {
            format!("{:.1} s ago", now.duration_since(t).as_secs_f64())
        });
        let alarms = if l.alarms.is_empty() {
            "-".to_string()
        } else {
            l.alarms.keys().cloned().collect::<Vec<_>>().join(",")
        };
        Row::new(vec![
            if l.line.is_empty() {
                l.source.clone()
            } else {
                format!("{} ({})", l.line, l.source)
            },
            state.0.to_string(),
            format!("{:.1}", l.parts_per_s()),
            n(&l.counters, "triggers"),
            n(&l.counters, "passes"),
            n(&l.counters, "rejects"),
            n(&l.counters, "fault_rejects"),
            alarms,
            l.latency_p50().map_or("-".into(), |v| format!("{v:.1} ms")),
            hb,
            format!("{}/{}", l.restarts, l.lost),
            l.run.clone(),
        ])
        .style(Style::default().fg(state.1))
    });
    let widths = [
        Constraint::Min(18),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Min(10),
        Constraint::Length(10),
        Constraint::Length(11),
        Constraint::Length(9),
        Constraint::Min(22),
    ];
    let header = Row::new(vec![
        "line",
        "state",
        "parts/s",
        "parts",
        "passes",
        "rejects",
        "fail-safe",
        "alarms",
        "latency",
        "heartbeat",
        "restart/lost",
        "run",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let table = Table::new(rows, widths).header(header).block(
        Block::default()
            .borders(Borders::ALL)
            .title(" diffad watch (q quits) "),
    );
    f.render_widget(table, top);
    let items: Vec<ListItem> = view
        .log
        .iter()
        .rev()
        .take(bottom.height.saturating_sub(2) as usize)
        .map(|t| ListItem::new(t.as_str()))
        .collect();
    f.render_widget(
        List::new(items).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" notices, newest first "),
        ),
        bottom,
    );
}

#[cfg(test)]
mod tests;
