//! What the table shows: per line its state and counters, kept up to date from the updates,
//! and the last notices.

use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::Update;

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
    /// The drift watch's figures of the last heartbeat (null until its window is full).
    pub drift: Value,
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
                        self.drift = value["drift"].clone();
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

    /// The last heartbeat's drift: the median score's shift in calibration standard
    /// deviations, else the share rejected of the window; `-` before the window is full.
    pub fn drift_text(&self) -> String {
        let d = &self.drift;
        match (d["shift_std"].as_f64(), d["reject_rate"].as_f64()) {
            (Some(s), _) => format!("{s:+.2} std"),
            (None, Some(r)) => format!("{:.1} % rej", 100.0 * r),
            (None, None) => "-".into(),
        }
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
