//! The inspect thread's models: the live one, whose verdicts decide; a staged candidate, which
//! may shadow it (score the same frames and decide nothing); the previous live one, kept loaded
//! until the next stage so that a rollback is instant. Commands arrive from the control socket
//! (`line::control`) and are carried out between two batches, so every part is judged by exactly
//! one model, and its part event names it.

use crate::events::{Event, Events, ShadowEvent, ShadowReport};
use crate::frame::Frame;
use crate::sinks::reject::Judge;
use crate::stages::drift::Reference;
use crate::stages::inspect::Inspector;
use crate::stages::triage::ServiceTime;
use crossbeam_channel::Sender;
use serde::Serialize;
use std::sync::Arc;

/// Parts listed by name in a shadow report (the counts go on).
const LISTED: usize = 200;

/// A loaded model and what identifies it.
pub struct Slot {
    /// The inspector over its engine.
    pub inspector: Box<dyn Inspector>,
    /// Its model id.
    pub id: Arc<str>,
    /// The file it came from.
    pub file: String,
    /// Its threshold (the line's override applied).
    pub threshold: f32,
    /// Its calibration's good scores, when the manifest has them.
    pub reference: Option<Reference>,
}

impl Slot {
    /// A slot for `inspector`, loaded from `file`.
    pub fn new(inspector: Box<dyn Inspector>, file: impl Into<String>) -> Self {
        Self {
            id: Arc::from(inspector.model_id()),
            threshold: inspector.threshold(),
            reference: inspector.good_scores().ok(),
            file: file.into(),
            inspector,
        }
    }

    /// What its verdicts are judged by.
    pub fn judge(&self) -> Judge {
        Judge {
            model: self.id.clone(),
            threshold: self.threshold,
        }
    }

    fn info(&self) -> SlotInfo {
        SlotInfo {
            id: self.id.to_string(),
            file: self.file.clone(),
            threshold: self.threshold,
        }
    }
}

/// A model as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SlotInfo {
    /// Model id.
    pub id: String,
    /// File.
    pub file: String,
    /// Threshold in force for it.
    pub threshold: f32,
}

/// The line's models, as `diffad model status` shows them.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ModelStatus {
    /// The model deciding now.
    pub live: SlotInfo,
    /// The staged candidate.
    pub candidate: Option<SlotInfo>,
    /// The model a rollback returns to.
    pub previous: Option<SlotInfo>,
    /// The shadow run, when one is on or was last.
    pub shadow: Option<ShadowReport>,
    /// Parts judged so far by the live model since it went live.
    pub live_parts: u64,
}

/// A promote or a rollback, done.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Switch {
    /// The model that decided until now.
    pub from: SlotInfo,
    /// The model that decides from now on.
    pub to: SlotInfo,
    /// The last part judged by `from`: every later part is judged by `to`.
    pub after_part: u64,
    /// When the switch took effect (the line's clock, as events' `t_ns` and `verdict_ns`).
    pub at_ns: u64,
}

/// What the control socket asks of the inspect thread; each answers on its channel.
pub enum ModelCmd {
    /// Where the models stand.
    Status(Sender<ModelStatus>),
    /// Hold this candidate (it replaces one staged before, and drops the previous model).
    Stage(Box<Slot>, Sender<Result<SlotInfo, String>>),
    /// Score the next parts with the candidate too (`None`: until promoted or replaced).
    Shadow(Option<u64>, Sender<Result<ShadowReport, String>>),
    /// The shadow run's figures so far.
    Report(Sender<Result<ShadowReport, String>>),
    /// Make the candidate live at the next part boundary.
    Promote(Sender<Result<Switch, String>>),
    /// Make the previous model live again.
    Rollback(Sender<Result<Switch, String>>),
}

struct ShadowRun {
    limit: Option<u64>,
    report: ShadowReport,
    scores: Vec<f64>,
    live_scores: Vec<f64>,
    /// Frame copies the candidate scores after the live verdicts went out (reused).
    frames: Vec<Frame>,
    service: ServiceTime,
}

/// Copies of one batch's frames, taken for the candidate before the live verdicts went out.
pub struct ShadowBatch {
    frames: Vec<Frame>,
    parts: Vec<u64>,
}

/// Live, candidate, previous, and the shadow run.
pub struct Models {
    live: Slot,
    candidate: Option<Slot>,
    previous: Option<Slot>,
    shadow: Option<ShadowRun>,
    /// The last report of a finished shadow run, for `status`.
    last_report: Option<ShadowReport>,
    live_parts: u64,
    last_part: u64,
    /// Expected time between parts (`line.part_rate_hz`), for the shadow's headroom.
    part_interval_ns: u64,
    /// Without headroom, one batch in this many parts is shadowed all the same (0: never).
    shadow_every: u64,
    /// Parts inspected since the candidate last scored one.
    since_shadow: u64,
}

impl Models {
    /// The line starts with `live`; see [`Models::shadow_wanted`] for the other two.
    pub fn new(live: Slot, part_interval_ns: u64, shadow_every: u64) -> Self {
        Self {
            live,
            candidate: None,
            previous: None,
            shadow: None,
            last_report: None,
            live_parts: 0,
            last_part: 0,
            part_interval_ns,
            shadow_every,
            since_shadow: 0,
        }
    }

    /// The live model.
    pub fn live(&mut self) -> &mut Slot {
        &mut self.live
    }

    /// `n` more parts, up to part `last`, were judged by the live model.
    pub fn judged(&mut self, n: usize, last: u64) {
        self.live_parts += n as u64;
        self.last_part = self.last_part.max(last);
    }

    /// Carry out one command; true when the live model changed (the drift watch starts again).
    pub fn handle(&mut self, cmd: ModelCmd, events: &Events, now_ns: u64) -> bool {
        match cmd {
            ModelCmd::Status(tx) => {
                let _ = tx.send(ModelStatus {
                    live: self.live.info(),
                    candidate: self.candidate.as_ref().map(Slot::info),
                    previous: self.previous.as_ref().map(Slot::info),
                    shadow: self
                        .shadow
                        .as_ref()
                        .map(|s| s.report.clone())
                        .or_else(|| self.last_report.clone()),
                    live_parts: self.live_parts,
                });
                false
            }
            ModelCmd::Stage(slot, tx) => {
                self.end_shadow(events);
                let info = slot.info();
                log::info!(
                    "model {} ({}) staged beside live {}; the previous model is unloaded",
                    slot.id,
                    slot.file,
                    self.live.id
                );
                self.candidate = Some(*slot);
                self.previous = None;
                let _ = tx.send(Ok(info));
                false
            }
            ModelCmd::Shadow(limit, tx) => {
                if self.candidate.is_some() {
                    self.end_shadow(events);
                }
                let r = match &self.candidate {
                    None => Err("no candidate staged: `diffad model stage FILE` first".to_string()),
                    Some(c) => {
                        let report = ShadowReport {
                            model: c.id.to_string(),
                            file: c.file.clone(),
                            live_model: self.live.id.to_string(),
                            ..Default::default()
                        };
                        self.shadow = Some(ShadowRun {
                            limit,
                            report: report.clone(),
                            scores: Vec::new(),
                            live_scores: Vec::new(),
                            frames: Vec::new(),
                            service: ServiceTime::default(),
                        });
                        log::info!(
                            "shadow: candidate {} scores {} beside live {}; verdicts stay the live model's",
                            c.id,
                            limit.map_or("every part it has time for".to_string(), |n| format!("the next {n} parts it has time for")),
                            self.live.id
                        );
                        Ok(report)
                    }
                };
                let _ = tx.send(r);
                false
            }
            ModelCmd::Report(tx) => {
                let r = self
                    .shadow
                    .as_ref()
                    .map(|s| s.report.clone())
                    .or_else(|| self.last_report.clone())
                    .ok_or_else(|| "no shadow run yet: `diffad model shadow`".to_string());
                if let Ok(rep) = &r {
                    events.emit(Event::ShadowReport(Box::new(rep.clone())));
                }
                let _ = tx.send(r);
                false
            }
            ModelCmd::Promote(tx) => match self.candidate.take() {
                None => {
                    let _ = tx.send(Err(
                        "no candidate staged: `diffad model stage FILE` first".to_string()
                    ));
                    false
                }
                Some(c) => {
                    self.end_shadow(events);
                    let old = std::mem::replace(&mut self.live, c);
                    let switch = self.switched(&old, "promoted", now_ns);
                    self.previous = Some(old);
                    let _ = tx.send(Ok(switch));
                    true
                }
            },
            ModelCmd::Rollback(tx) => match self.previous.take() {
                None => {
                    let _ = tx.send(Err("no previous model to roll back to (one is kept from a promote until the next stage)".to_string()));
                    false
                }
                Some(p) => {
                    self.end_shadow(events);
                    let old = std::mem::replace(&mut self.live, p);
                    let switch = self.switched(&old, "rolled back", now_ns);
                    // Undoing the promote: the model rolled back from is the candidate again,
                    // to be shadowed or promoted once more, or replaced by the next stage.
                    self.candidate = Some(old);
                    let _ = tx.send(Ok(switch));
                    true
                }
            },
        }
    }

    fn switched(&mut self, old: &Slot, how: &str, at_ns: u64) -> Switch {
        log::warn!(
            "model {how}: {} ({}) decides from the part after {}; {} ({}) stays loaded",
            self.live.id,
            self.live.file,
            self.last_part,
            old.id,
            old.file
        );
        self.live_parts = 0;
        Switch {
            from: old.info(),
            to: self.live.info(),
            after_part: self.last_part,
            at_ns,
        }
    }

    /// The line is stopping: a shadow run still on ends with its report.
    pub fn finish(&mut self, events: &Events) {
        self.end_shadow(events);
    }

    fn end_shadow(&mut self, events: &Events) {
        if let Some(mut s) = self.shadow.take() {
            s.report.done = true;
            events.emit(Event::ShadowReport(Box::new(s.report.clone())));
            self.last_report = Some(s.report);
        }
    }

    /// Whether the candidate scores this batch: nothing else waits, and either the next part
    /// is not expected before the candidate would be done (its time measured, or guessed as
    /// the live model's until measured), or `shadow_every` parts went by without a shadow.
    pub fn shadow_wanted(
        &mut self,
        queue_empty: bool,
        live: &ServiceTime,
        n: usize,
        now: u64,
        last_trigger: u64,
    ) -> bool {
        let Some(s) = &self.shadow else {
            return false;
        };
        self.since_shadow += n as u64;
        if !queue_empty {
            return false;
        }
        let need = match s.service.typical(n) {
            0 => live.typical(n),
            t => t,
        };
        // The live batch runs first: the candidate starts after it.
        let next_part = last_trigger.saturating_add(self.part_interval_ns);
        let headroom = now.saturating_add(live.typical(n)).saturating_add(need) <= next_part;
        let due = self.shadow_every > 0 && self.since_shadow >= self.shadow_every;
        if headroom || due {
            self.since_shadow = 0;
        }
        headroom || due
    }

    /// Copy the batch's frames for the candidate into reused buffers.
    pub fn copy_for_shadow(&mut self, frames: &[&Frame], parts: Vec<u64>) -> Option<ShadowBatch> {
        let s = self.shadow.as_mut()?;
        let mut out = Vec::with_capacity(frames.len());
        for f in frames {
            let mut copy = s.frames.pop().unwrap_or_else(|| (*f).clone());
            copy.clone_from(f);
            out.push(copy);
        }
        Some(ShadowBatch { frames: out, parts })
    }

    /// Parts the candidate could not score (no headroom): counted in the report.
    pub fn not_compared(&mut self, n: usize) {
        if let Some(s) = self.shadow.as_mut() {
            s.report.not_compared += n as u64;
        }
    }

    /// Score `batch` with the candidate beside the live scores (`None` where the live model
    /// gave no verdict), emit a `shadow` event per part and count it in the report.
    pub fn shadow(
        &mut self,
        batch: ShadowBatch,
        live_scores: &[Option<f32>],
        clock: &dyn crate::clock::Clock,
        events: &Events,
    ) {
        let (Some(s), Some(c)) = (self.shadow.as_mut(), self.candidate.as_mut()) else {
            return;
        };
        let refs: Vec<&Frame> = batch.frames.iter().collect();
        let t0 = clock.now_ns();
        let results =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.inspector.inspect(&refs)));
        let took = clock.now_ns().saturating_sub(t0);
        let results = match results {
            Ok(r) if r.len() == refs.len() => {
                s.service.record(refs.len(), took);
                r
            }
            _ => {
                s.report.not_compared += refs.len() as u64;
                s.frames.extend(batch.frames);
                return;
            }
        };
        for ((part, result), live) in batch.parts.iter().zip(results).zip(live_scores) {
            let (Ok(insp), Some(live)) = (result, live) else {
                s.report.not_compared += 1;
                continue;
            };
            let would_reject = insp.score >= c.threshold;
            let live_rejects = *live >= self.live.threshold;
            let r = &mut s.report;
            r.compared += 1;
            if would_reject == live_rejects {
                r.agree += 1;
            } else if would_reject {
                r.would_reject_count += 1;
                if r.would_reject.len() < LISTED {
                    r.would_reject.push(*part);
                }
            } else {
                r.would_pass_count += 1;
                if r.would_pass.len() < LISTED {
                    r.would_pass.push(*part);
                }
            }
            s.scores.push(f64::from(insp.score));
            s.live_scores.push(f64::from(*live));
            events.emit(Event::Shadow(ShadowEvent {
                part: *part,
                model: c.id.clone(),
                score: insp.score,
                threshold: c.threshold,
                would_reject,
                live_score: *live,
                live_rejects,
            }));
            c.inspector.recycle_map(insp.map);
        }
        let shift = |scores: &mut Vec<f64>, reference: Option<Reference>| {
            let median = median(scores);
            (
                median,
                median.zip(reference).map(|(m, r)| (m - r.median) / r.std),
            )
        };
        (s.report.median, s.report.shift_std) = shift(&mut s.scores, c.reference);
        (s.report.live_median, s.report.live_shift_std) =
            shift(&mut s.live_scores, self.live.reference);
        s.frames.extend(batch.frames);
        if s.limit.is_some_and(|n| s.report.compared >= n) {
            log::info!(
                "shadow: {} parts compared, {} agree; done",
                s.report.compared,
                s.report.agree
            );
            self.end_shadow(events);
        }
    }
}

/// The median of `v` (reordered), `None` when empty.
fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    Some(if v.len() % 2 == 1 {
        m
    } else {
        let lower = v[..mid].iter().copied().fold(f64::MIN, f64::max);
        (lower + m) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
