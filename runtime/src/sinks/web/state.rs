//! What the page shows, kept from the bus: counts, the recent scores and rejects, alarms, the
//! last heartbeat; and the viewers' queues. Every record is turned into one server-sent-events
//! frame once and shared by every viewer.
//!
//! A viewer that reconnects with `Last-Event-ID: RUN/SEQ` gets the frames it missed from a
//! bounded ring (a `resumed` frame says which); one from another run, or whose frames left the
//! ring, gets a fresh `snapshot` instead. Registration and delivery share one lock, so a viewer
//! sees every frame after its starting point exactly once.

use crate::events::{Event, Outcome, Record};
use bytes::Bytes;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};

/// What the page says about the line that does not change during a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PageFacts {
    /// This run's id.
    pub run: String,
    /// Line name.
    pub line: String,
    /// `[board] name`.
    pub board: String,
    /// The board file.
    pub board_file: String,
    /// The camera, as the source describes itself.
    pub camera: String,
    /// The model's id (graph hash).
    pub model_id: String,
    /// The model's file.
    pub model_file: String,
    /// The card's headline figures (`MODEL.md` beside the model), when there is one.
    pub card: Vec<String>,
    /// Threshold in force.
    pub threshold: f32,
    /// The calibration's good median and standard deviation (the drift band's centre and unit).
    pub good_median: Option<f64>,
    /// See `good_median`.
    pub good_std: Option<f64>,
    /// `drift.max_shift_std`: the band's half-width in standard deviations.
    pub max_shift_std: f64,
    /// Heartbeat period: the page calls the stream silent after a few of them.
    pub heartbeat_ms: u64,
    /// Whether rejected parts are archived (their heatmaps can be shown).
    pub archive: bool,
    /// Scores the chart keeps (`web.scores`).
    pub keep_scores: usize,
    /// Rejected parts the page shows (`web.rejects`).
    pub keep_rejects: usize,
}

/// Counters of the page's server.
#[derive(Debug, Default)]
pub struct WebStats {
    /// Live viewers accepted.
    pub viewers: AtomicU64,
    /// Viewers refused because `web.max_clients` were watching.
    pub refused: AtomicU64,
    /// Viewers dropped because their queue filled (stuck or too slow).
    pub dropped: AtomicU64,
    /// Requests refused for a missing or wrong credential.
    pub unauthorized: AtomicU64,
    /// Connections refused because every connection place was taken.
    pub connections_refused: AtomicU64,
    /// Viewers that resumed from the ring instead of a snapshot.
    pub resumed: AtomicU64,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Counts {
    parts: u64,
    passes: u64,
    rejects: u64,
    fault_rejects: u64,
    fault_passes: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Point {
    part: u64,
    score: Option<f32>,
    outcome: Outcome,
}

#[derive(Debug, Clone, Serialize)]
struct RejectCard {
    part: u64,
    score: Option<f32>,
    outcome: Outcome,
    bus_ms: f64,
    origin: String,
    kind: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct AlarmRow {
    code: String,
    message: String,
    active: bool,
    part: Option<u64>,
    bus_ms: f64,
}

struct Viewer {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    /// Cuts the viewer's connection when it is dropped as stuck (its writes may be blocked).
    kill: Arc<Notify>,
}

struct Page {
    counts: Counts,
    last_seq: u64,
    heartbeat: Option<serde_json::Value>,
    heartbeat_ms: f64,
    scores: VecDeque<Point>,
    rejects: VecDeque<RejectCard>,
    alarms: VecDeque<AlarmRow>,
    active: BTreeMap<String, String>,
    /// Frames of the streamed kinds, for viewers that resume.
    ring: VecDeque<(u64, Bytes)>,
    /// Every streamed frame after this seq is still in the ring.
    ring_floor: u64,
    viewers: Vec<Viewer>,
    next_id: u64,
    closed: bool,
}

/// How many alarm rows the page keeps.
const ALARM_ROWS: usize = 50;

/// Why a viewer was not registered.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `web.max_clients` viewers are watching.
    TooMany(usize),
}

/// The page's state and its viewers.
pub struct Hub {
    page: Mutex<Page>,
    facts: PageFacts,
    info_frame: Bytes,
    cfg: super::WebConfig,
    /// Counters.
    pub stats: WebStats,
}

/// Wall-clock milliseconds since the epoch: the browser compares its own clock with it.
pub fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn frame(id: Option<&str>, event: &str, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 48);
    if let Some(id) = id {
        s.push_str("id: ");
        s.push_str(id);
        s.push('\n');
    }
    s.push_str("event: ");
    s.push_str(event);
    s.push_str("\ndata: ");
    s.push_str(data);
    s.push_str("\n\n");
    Bytes::from(s)
}

/// `RUN/SEQ` of a `Last-Event-ID` header or `resume` query value.
pub fn parse_last_id(v: &str) -> Option<(&str, u64)> {
    let (run, seq) = v.trim().rsplit_once('/')?;
    Some((run, seq.parse().ok()?))
}

impl Hub {
    /// A hub for one run, with nothing seen yet.
    pub fn new(mut facts: PageFacts, cfg: super::WebConfig) -> Self {
        facts.keep_scores = cfg.scores;
        facts.keep_rejects = cfg.rejects;
        let info = serde_json::to_string(&facts).unwrap_or_else(|_| "{}".into());
        Self {
            page: Mutex::new(Page {
                counts: Counts::default(),
                last_seq: 0,
                heartbeat: None,
                heartbeat_ms: 0.0,
                scores: VecDeque::new(),
                rejects: VecDeque::new(),
                alarms: VecDeque::new(),
                active: BTreeMap::new(),
                ring: VecDeque::new(),
                ring_floor: 0,
                viewers: Vec::new(),
                next_id: 1,
                closed: false,
            }),
            info_frame: frame(None, "info", &info),
            facts,
            cfg,
            stats: WebStats::default(),
        }
    }

    /// The run's facts.
    pub fn facts(&self) -> &PageFacts {
        &self.facts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Page> {
        self.page.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take one record from the bus: update the page and queue its frame to every viewer.
    pub fn deliver(&self, rec: &Record) {
        let bus_ms = unix_ms();
        let mut p = self.lock();
        p.last_seq = rec.seq;
        let kind = match &rec.event {
            Event::Part(e) => {
                let c = &mut p.counts;
                c.parts += 1;
                match e.outcome {
                    Outcome::Pass => c.passes += 1,
                    Outcome::Reject => c.rejects += 1,
                    Outcome::FaultReject => c.fault_rejects += 1,
                    Outcome::FaultPass => c.fault_passes += 1,
                }
                p.scores.push_back(Point {
                    part: e.part,
                    score: e.score,
                    outcome: e.outcome,
                });
                while p.scores.len() > self.cfg.scores {
                    p.scores.pop_front();
                }
                if e.outcome.rejects() {
                    p.rejects.push_back(RejectCard {
                        part: e.part,
                        score: e.score,
                        outcome: e.outcome,
                        bus_ms,
                        origin: e.frame.origin.clone(),
                        kind: e.frame.kind.clone(),
                        reason: e.reason.clone(),
                    });
                    while p.rejects.len() > self.cfg.rejects {
                        p.rejects.pop_front();
                    }
                }
                "part"
            }
            Event::Alarm(a) => {
                if a.active {
                    p.active.insert(a.code.clone(), a.message.clone());
                } else {
                    p.active.remove(&a.code);
                }
                p.alarms.push_back(AlarmRow {
                    code: a.code.clone(),
                    message: a.message.clone(),
                    active: a.active,
                    part: a.part,
                    bus_ms,
                });
                while p.alarms.len() > ALARM_ROWS {
                    p.alarms.pop_front();
                }
                "alarm"
            }
            Event::Heartbeat(h) => {
                p.heartbeat = serde_json::to_value(h).ok();
                p.heartbeat_ms = bus_ms;
                "heartbeat"
            }
            // Pulses and log records are the supervisor stream's; the page has no place for them.
            Event::Reject(_) | Event::Log(_) | Event::Shadow(_) | Event::ShadowReport(_) => return,
        };
        // The record is serialized already: the frame only prefixes the bus time to it.
        let data = format!("{{\"bus_ms\":{bus_ms:.1},{}", &rec.json[1..]);
        let id = format!("{}/{}", rec.run, rec.seq);
        let f = frame(Some(&id), kind, &data);
        p.ring.push_back((rec.seq, f.clone()));
        while p.ring.len() > self.cfg.buffer {
            if let Some((seq, _)) = p.ring.pop_front() {
                p.ring_floor = seq;
            }
        }
        let stats = &self.stats;
        p.viewers.retain(|v| match v.tx.try_send(f.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                log::warn!(target: "diffad::sinks::web", "page viewer {} too slow: dropped after seq {}", v.id, rec.seq - 1);
                v.kill.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// The bus closed: tell every viewer the line stopped, and end their streams.
    pub fn close(&self) {
        let mut p = self.lock();
        p.closed = true;
        let end = frame(None, "end", &format!("{{\"bus_ms\":{:.1}}}", unix_ms()));
        for v in p.viewers.drain(..) {
            let _ = v.tx.try_send(end.clone());
        }
    }

    /// The page's state as JSON (the `snapshot` frame and `GET /state`).
    pub fn snapshot(&self) -> String {
        let p = self.lock();
        self.snapshot_of(&p)
    }

    fn snapshot_of(&self, p: &Page) -> String {
        serde_json::json!({
            "run": self.facts.run,
            "seq": p.last_seq,
            "counts": p.counts,
            "heartbeat": p.heartbeat,
            "heartbeat_bus_ms": p.heartbeat_ms,
            "scores": p.scores,
            "rejects": p.rejects,
            "alarms": p.alarms,
            "active_alarms": p.active,
            "stopped": p.closed,
            "bus_ms": unix_ms(),
        })
        .to_string()
    }

    /// A new viewer: the frames it starts with (info, then a snapshot or what it missed) and
    /// its queue of live frames, and the notifier that cuts its connection.
    pub fn register(
        &self,
        last: Option<(&str, u64)>,
        kill: Arc<Notify>,
    ) -> Result<(Vec<Bytes>, mpsc::Receiver<Bytes>), Refusal> {
        let mut p = self.lock();
        p.viewers.retain(|v| !v.tx.is_closed());
        if p.viewers.len() >= self.cfg.max_clients {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TooMany(self.cfg.max_clients));
        }
        let mut first = vec![self.info_frame.clone()];
        let resumable = last.filter(|&(run, seq)| {
            run == self.facts.run && seq >= p.ring_floor && seq <= p.last_seq
        });
        match resumable {
            Some((_, seq)) => {
                self.stats.resumed.fetch_add(1, Ordering::Relaxed);
                let missed: Vec<Bytes> = p
                    .ring
                    .iter()
                    .filter(|(s, _)| *s > seq)
                    .map(|(_, f)| f.clone())
                    .collect();
                first.push(frame(
                    None,
                    "resumed",
                    &format!(
                        "{{\"from_seq\":{},\"to_seq\":{},\"count\":{}}}",
                        seq + 1,
                        p.last_seq,
                        missed.len()
                    ),
                ));
                first.extend(missed);
            }
            None => {
                let id = format!("{}/{}", self.facts.run, p.last_seq);
                first.push(frame(Some(&id), "snapshot", &self.snapshot_of(&p)));
            }
        }
        let (tx, rx) = mpsc::channel(self.cfg.client_queue);
        if p.closed {
            first.push(frame(
                None,
                "end",
                &format!("{{\"bus_ms\":{:.1}}}", unix_ms()),
            ));
            // The sender goes with this scope: the stream ends after the frames above.
        } else {
            let id = p.next_id;
            p.next_id += 1;
            p.viewers.push(Viewer { id, tx, kill });
            self.stats.viewers.fetch_add(1, Ordering::Relaxed);
        }
        Ok((first, rx))
    }

    /// Viewers watching now.
    pub fn viewers(&self) -> usize {
        let mut p = self.lock();
        p.viewers.retain(|v| !v.tx.is_closed());
        p.viewers.len()
    }
}

/// The hub as a sink on the bus.
pub struct HubSink(pub Arc<Hub>);

impl crate::events::Sink for HubSink {
    fn deliver(&mut self, rec: &Arc<Record>) {
        self.0.deliver(rec);
    }

    fn close(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{AlarmEvent, FrameFacts, PartEvent};

    fn hub(buffer: usize, max_clients: usize, client_queue: usize) -> Hub {
        let cfg = super::super::WebConfig {
            buffer,
            max_clients,
            client_queue,
            rejects: 2,
            ..Default::default()
        };
        let facts = PageFacts {
            run: "r1".into(),
            ..Default::default()
        };
        Hub::new(facts, cfg)
    }

    fn part(seq: u64, outcome: Outcome) -> Record {
        let mut r = Record {
            seq,
            t_ns: seq,
            line: Arc::from("l"),
            run: Arc::from("r1"),
            event: Event::Part(PartEvent {
                part: seq,
                trigger_ns: 0,
                deadline_ns: 0,
                verdict_ns: None,
                score: Some(0.5),
                threshold: 0.6,
                outcome,
                latency_ms: None,
                reason: None,
                frame: FrameFacts::default(),
                model: None,
            }),
            json: String::new(),
        };
        r.json = serde_json::to_string(&r).unwrap();
        r
    }

    fn text(frames: &[Bytes]) -> String {
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    #[test]
    fn counts_rejects_and_alarms_follow_the_records() {
        let h = hub(16, 4, 64);
        for (i, o) in [
            Outcome::Pass,
            Outcome::Reject,
            Outcome::FaultReject,
            Outcome::Reject,
        ]
        .into_iter()
        .enumerate()
        {
            h.deliver(&part(i as u64 + 1, o));
        }
        let mut alarm = Record {
            event: Event::Alarm(AlarmEvent {
                code: "overload".into(),
                message: "m".into(),
                part: None,
                active: true,
            }),
            ..part(5, Outcome::Pass)
        };
        alarm.json = serde_json::to_string(&alarm).unwrap();
        h.deliver(&alarm);
        let s: serde_json::Value = serde_json::from_str(&h.snapshot()).unwrap();
        assert_eq!(s["counts"]["parts"], 4);
        assert_eq!(s["counts"]["rejects"], 2);
        assert_eq!(s["counts"]["fault_rejects"], 1);
        // `web.rejects = 2`: only the last two rejected parts are kept.
        let parts: Vec<u64> = s["rejects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["part"].as_u64().unwrap())
            .collect();
        assert_eq!(parts, vec![3, 4]);
        assert_eq!(s["active_alarms"]["overload"], "m");
        assert_eq!(s["seq"], 5);
    }

    #[test]
    fn a_viewer_resumes_from_the_ring_or_gets_a_snapshot() {
        let h = hub(4, 4, 64);
        for seq in 1..=6 {
            h.deliver(&part(seq, Outcome::Pass));
        }
        // Seqs 3..=6 are in the ring: resuming after 4 sends 5 and 6, nothing else.
        let (first, _rx) = h.register(Some(("r1", 4)), Arc::default()).unwrap();
        let t = text(&first);
        assert!(t.contains("event: resumed"), "{t}");
        assert!(t.contains("\"from_seq\":5,\"to_seq\":6,\"count\":2"), "{t}");
        assert!(t.contains("id: r1/5\n") && t.contains("id: r1/6\n"));
        assert!(!t.contains("id: r1/4\n") && !t.contains("snapshot"));
        // Seq 1 left the ring, and another run is another run: both get a snapshot.
        for last in [("r1", 1), ("r0", 5)] {
            let (first, _rx) = h.register(Some(last), Arc::default()).unwrap();
            let t = text(&first);
            assert!(
                t.contains("event: snapshot") && !t.contains("resumed"),
                "{t}"
            );
            assert!(t.contains("id: r1/6\n"));
        }
    }

    #[test]
    fn live_frames_reach_viewers_once_and_a_stuck_viewer_is_cut() {
        let h = hub(64, 2, 16);
        let kill = Arc::new(Notify::new());
        let (_first, mut live) = h.register(None, Arc::default()).unwrap();
        let (_f, _stuck) = h.register(None, kill.clone()).unwrap();
        assert_eq!(
            h.register(None, Arc::default()).unwrap_err(),
            Refusal::TooMany(2)
        );
        for seq in 1..=16 {
            h.deliver(&part(seq, Outcome::Pass));
            // One viewer reads as it goes, the other never does.
            let f = live.try_recv().unwrap();
            assert!(String::from_utf8_lossy(&f).contains(&format!("id: r1/{seq}\n")));
        }
        assert_eq!(h.stats.dropped.load(Ordering::Relaxed), 0);
        h.deliver(&part(17, Outcome::Pass));
        assert_eq!(h.stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(h.viewers(), 1);
        assert!(String::from_utf8_lossy(&live.try_recv().unwrap()).contains("id: r1/17\n"));
        // The notifier holds a permit for the connection task, which ends it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(100), kill.notified())
                .await
                .expect("the stuck viewer's connection is told to close")
        });
        h.close();
        assert!(String::from_utf8_lossy(&live.try_recv().unwrap()).contains("event: end"));
    }
}
