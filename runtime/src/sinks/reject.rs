//! The reject stage: every part is armed at its trigger, a timely pass verdict cancels it, and
//! anything else (late, missing or failed inspection) leaves it rejected. Owns the reject pin and
//! fires pulses at deadlines on the clock; overlapping pulses extend each other.

use crate::clock::Clock;
use crate::events::{Counters, Event, Events, FrameFacts, Outcome, PartEvent, RejectEvent};
use crate::frame::Frame;
use crate::sinks::archive::ArchiveJob;
use crate::sinks::pins::Output;
use crate::stages::decide::{decide, Verdict};
use crate::stages::inspect::Inspection;
use crate::tally::Tally;
use crossbeam_channel::Sender;
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// A part as it is armed at its trigger.
#[derive(Debug, Clone)]
pub struct PartInfo {
    /// Part number.
    pub part: u64,
    /// Trigger time.
    pub trigger_ns: u64,
    /// Time the part reaches the ejector.
    pub deadline_ns: u64,
    /// Its frame (frame 0 and no ground truth until one is matched).
    pub frame: FrameFacts,
}

/// Which model judged an inspection, and at what threshold: with a model swapped on the running
/// line (`diffad model promote`) every verdict carries its own.
#[derive(Debug, Clone)]
pub struct Judge {
    /// The model's id.
    pub model: std::sync::Arc<str>,
    /// Its threshold (the line's override applied).
    pub threshold: f32,
}

/// How a part's outcome was fixed, and what goes with it to the sinks.
struct Ending {
    /// The model whose verdict fixed it, and its threshold.
    judge: Option<Judge>,
    outcome: Outcome,
    score: Option<f32>,
    /// When the verdict reached this stage, if it did.
    verdict_ns: Option<u64>,
    /// Why a fault outcome happened.
    reason: Option<String>,
    frame: Option<Frame>,
    inspection: Option<Inspection>,
}

/// How the stage decides and fires.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Outcome of a part whose inspection is late, missing or failed.
    pub fail_safe: FailSafe,
    /// A verdict must reach this stage this long before the deadline.
    pub margin_ns: u64,
    /// Reject pulse width.
    pub pulse_ns: u64,
    /// Threshold in force.
    pub threshold: f32,
    /// A pulse starting later than this after its deadline misses its part.
    pub late_ns: u64,
    /// Fire such a pulse anyway (it is counted as late either way).
    pub fire_late: bool,
}

/// Outcomes of the parts of one ground-truth kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KindTally {
    /// Parts of this kind.
    pub parts: u64,
    /// Passed by verdict.
    pub passes: u64,
    /// Rejected by verdict.
    pub rejects: u64,
    /// Rejected by fail-safe.
    pub fault_rejects: u64,
    /// Passed by fail-safe.
    pub fault_passes: u64,
    /// Rejected (by verdict or fail-safe) with a pulse too late to hit the part.
    pub late_ejections: u64,
}

/// Totals of the stage, beyond the counters.
#[derive(Debug, Clone)]
pub struct RejectStats {
    /// Trigger-to-verdict latencies (ns) of every inspected part, in time or not.
    pub latency_ns: Histogram<u64>,
    /// |actual − scheduled| of fired pulses (ns).
    pub timing_error_ns: Histogram<u64>,
    /// Largest |actual − scheduled| of fired pulses (ns).
    pub max_timing_error_ns: u64,
    /// Defective parts that passed (ground truth known).
    pub escapes: u64,
    /// Outcomes per ground-truth kind (`good` for good parts), when known.
    pub by_kind: std::collections::BTreeMap<String, KindTally>,
    /// Good parts rejected by verdict (ground truth known).
    pub false_rejects: u64,
    /// Good parts rejected by fail-safe (ground truth known).
    pub false_fault_rejects: u64,
    /// Parts with ground truth.
    pub with_truth: u64,
    /// Rejects the archive had no room for.
    pub archive_dropped: u64,
    /// Rejects handed to the archive writer (each is then written or counted lost there).
    pub archive_jobs: u64,
    /// Pin writes that failed.
    pub pin_errors: u64,
    /// Pulses the reject thread slept towards instead of spinning, its spin budget spent.
    pub spin_refused: u64,
    /// The reject thread's spin window before a pulse at the end (ns; see `line.reject_spin_adaptive`).
    pub spin_window_ns: u64,
    /// The widest spin window a pulse was spun under (ns).
    pub spin_widest_ns: u64,
    /// Time the reject thread spent spinning before pulses (ns): the CPU the spin cost.
    pub spun_ns: u64,
    /// Pulses too late to hit their part (fired or held).
    pub late_ejections: u64,
    /// Of those, pulses held (not fired) as known to be too late.
    pub late_held: u64,
    /// Defective parts among the late ejections (counted in `escapes` too).
    pub late_escapes: u64,
}

/// A histogram of nanoseconds, 1 µs to 1 h at three significant digits; values beyond saturate.
pub fn ns_histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3).expect("valid bounds");
    h.auto(false);
    h
}

impl Default for RejectStats {
    fn default() -> Self {
        Self {
            latency_ns: ns_histogram(),
            timing_error_ns: ns_histogram(),
            max_timing_error_ns: 0,
            escapes: 0,
            by_kind: std::collections::BTreeMap::new(),
            false_rejects: 0,
            false_fault_rejects: 0,
            with_truth: 0,
            archive_dropped: 0,
            archive_jobs: 0,
            pin_errors: 0,
            spin_refused: 0,
            spin_window_ns: 0,
            spin_widest_ns: 0,
            spun_ns: 0,
            late_ejections: 0,
            late_held: 0,
            late_escapes: 0,
        }
    }
}

/// A reject pulse waiting for its time, with what the part's ground truth says (to count it
/// as a possible escape should the pulse come too late).
#[derive(Debug, Clone, Copy)]
struct Pulse {
    part: u64,
    at: u64,
    defective: Option<bool>,
    /// Index into the scheduler's kind names.
    kind: Option<usize>,
}

/// The reject scheduler's state (driven by the reject thread, or directly by unit tests).
pub struct Scheduler {
    policy: Policy,
    clock: Arc<dyn Clock>,
    pin: Output,
    events: Events,
    ledger: BTreeMap<u64, PartInfo>,
    last_armed: u64,
    pulses: VecDeque<Pulse>,
    /// Ground-truth kinds seen, so a pulse names its part's kind without an allocation.
    kinds: Vec<String>,
    active_until: Option<u64>,
    counters: Counters,
    shared: Arc<Tally>,
    stats: RejectStats,
    archive: Option<Sender<ArchiveJob>>,
    recycle: Option<rtrb::Producer<Vec<u8>>>,
    maps: Option<rtrb::Producer<Vec<f32>>>,
}

impl Scheduler {
    /// A scheduler owning `pin`; `shared` mirrors the counters for the health thread.
    pub fn new(
        policy: Policy,
        clock: Arc<dyn Clock>,
        pin: Output,
        events: Events,
        shared: Arc<Tally>,
    ) -> Self {
        Self {
            policy,
            clock,
            pin,
            events,
            ledger: BTreeMap::new(),
            last_armed: 0,
            pulses: VecDeque::new(),
            kinds: Vec::new(),
            active_until: None,
            counters: Counters::default(),
            shared,
            stats: RejectStats::default(),
            archive: None,
            recycle: None,
            maps: None,
        }
    }

    /// Where rejected frames go (bounded; full = skipped and counted).
    pub fn with_archive(mut self, tx: Sender<ArchiveJob>) -> Self {
        self.archive = Some(tx);
        self
    }

    /// Where frame buffers go back to the source (a wait-free ring: the reject thread never
    /// waits for the stage that takes them; full = the buffer is freed).
    pub fn with_recycle(mut self, tx: rtrb::Producer<Vec<u8>>) -> Self {
        self.recycle = Some(tx);
        self
    }

    /// Where anomaly-map buffers go back to the inspector (a wait-free ring, as for frames).
    pub fn with_map_recycle(mut self, tx: rtrb::Producer<Vec<f32>>) -> Self {
        self.maps = Some(tx);
        self
    }

    /// Arm the reject for a part that was just triggered.
    pub fn arm(&mut self, info: PartInfo) {
        self.counters.triggers += 1;
        self.counters.pending += 1;
        self.last_armed = self.last_armed.max(info.part);
        self.ledger.insert(info.part, info);
        self.publish();
    }

    /// A frame was matched to a part armed at its photo-eye edge.
    pub fn matched(&mut self, part: u64, frame: FrameFacts) {
        if let Some(p) = self.ledger.get_mut(&part) {
            p.frame = frame;
        }
    }

    /// The part's frame could not be queued for inspection: it fails safe now.
    pub fn not_queued(&mut self, part: u64, reason: &str, frame: Option<Frame>) {
        self.counters.queue_full += 1;
        self.fail_uninspected(part, reason.to_string(), frame);
        self.events
            .emit(Event::alarm("queue_full", reason, Some(part), true));
    }

    /// The part's frame arrived incomplete: it fails safe, uninspected.
    pub fn incomplete(&mut self, part: u64, reason: &str) {
        self.counters.frames_incomplete += 1;
        self.fail_uninspected(part, reason.to_string(), None);
    }

    /// The engine gave up on the part: its verdict could no longer come in time.
    pub fn skipped(&mut self, part: u64, reason: &str, frame: Option<Frame>) {
        self.counters.skipped += 1;
        self.fail_uninspected(part, format!("skipped: {reason}"), frame);
    }

    /// A part that will not be inspected fails safe now (if its outcome is still open).
    fn fail_uninspected(&mut self, part: u64, reason: String, frame: Option<Frame>) {
        match self.ledger.remove(&part) {
            Some(info) => {
                let ending = self.fault_ending(reason, frame);
                self.finish(info, ending)
            }
            None => {
                self.publish();
                self.give_back(frame);
            }
        }
    }

    /// An inspection result reached this stage (`trigger_ns`: when its part was triggered),
    /// judged by `judge` (else by the policy's threshold, the model's id unknown).
    pub fn inspected(
        &mut self,
        part: u64,
        trigger_ns: u64,
        result: Result<Inspection, String>,
        frame: Option<Frame>,
        judge: Option<Judge>,
    ) {
        let now = self.clock.now_ns();
        if result.is_ok() {
            // Every inspected part counts, in time or not: a figure over on-time parts only
            // would look best exactly when the line is failing.
            self.stats
                .latency_ns
                .saturating_record(now.saturating_sub(trigger_ns).max(1));
        }
        let Some(info) = self.ledger.remove(&part) else {
            self.verdict_for_no_part(part, result, frame);
            return;
        };
        let threshold = judge
            .as_ref()
            .map_or(self.policy.threshold, |j| j.threshold);
        let decided = match &result {
            Ok(insp) => decide(insp.score, threshold).map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        match &decided {
            Err(e) => {
                self.counters.inspect_errors += 1;
                self.counters.inspect_failures_in_row += 1;
                self.events
                    .emit(Event::alarm("inspect_failed", e.clone(), Some(part), true));
            }
            Ok(_) => self.counters.inspect_failures_in_row = 0,
        }
        let mut ending = Ending {
            judge: None,
            outcome: self.fault(),
            score: result.as_ref().ok().map(|i| i.score),
            verdict_ns: Some(now),
            reason: None,
            frame,
            inspection: result.ok(),
        };
        let due = info.deadline_ns.saturating_sub(self.policy.margin_ns);
        if now > due {
            self.counters.late_verdicts += 1;
            let late_ms = (now - due) as f64 / 1e6;
            let reason = format!("verdict {late_ms:.1} ms past the ejector deadline minus margin");
            self.events.emit(Event::alarm(
                "late_verdict",
                reason.clone(),
                Some(part),
                true,
            ));
            ending.reason = Some(reason);
        } else {
            match decided {
                Ok(v) => {
                    ending.outcome = match v {
                        Verdict::Pass => Outcome::Pass,
                        Verdict::Reject => Outcome::Reject,
                    };
                    ending.judge = judge;
                }
                Err(e) => ending.reason = Some(format!("inspection failed: {e}")),
            }
        }
        self.finish(info, ending);
    }

    /// A verdict whose part is no longer (or never was) waiting: counted and alarmed.
    fn verdict_for_no_part(
        &mut self,
        part: u64,
        result: Result<Inspection, String>,
        frame: Option<Frame>,
    ) {
        self.counters.late_verdicts += 1;
        let what = if part <= self.last_armed {
            "verdict came after the part's outcome was fixed"
        } else {
            "verdict for a part never armed"
        };
        let score = result
            .as_ref()
            .map_or("failed".to_string(), |i| format!("score {:.4}", i.score));
        self.events.emit(Event::alarm(
            "late_verdict",
            format!("{what} ({score})"),
            Some(part),
            true,
        ));
        self.publish();
        self.give_back_map(result.ok());
        self.give_back(frame);
    }

    /// A fail-safe outcome without a verdict.
    fn fault_ending(&self, reason: String, frame: Option<Frame>) -> Ending {
        Ending {
            judge: None,
            outcome: self.fault(),
            score: None,
            verdict_ns: None,
            reason: Some(reason),
            frame,
            inspection: None,
        }
    }

    fn fault(&self) -> Outcome {
        match self.policy.fail_safe {
            FailSafe::Reject => Outcome::FaultReject,
            FailSafe::Pass => Outcome::FaultPass,
        }
    }

    /// Fix a part's outcome: count it, schedule its pulse, tell the sinks, archive a reject.
    fn finish(&mut self, info: PartInfo, e: Ending) {
        let kind = self.count(&info, e.outcome);
        if e.outcome.rejects() {
            self.counters.pulses += 1;
            let at = info.deadline_ns;
            let pos = self.pulses.partition_point(|p| p.at <= at);
            let pulse = Pulse {
                part: info.part,
                at,
                defective: info.frame.defective,
                kind,
            };
            self.pulses.insert(pos, pulse);
        }
        let threshold = e
            .judge
            .as_ref()
            .map_or(self.policy.threshold, |j| j.threshold);
        let model = e.judge.map(|j| j.model);
        self.events.emit(Event::Part(PartEvent {
            part: info.part,
            trigger_ns: info.trigger_ns,
            deadline_ns: info.deadline_ns,
            verdict_ns: e.verdict_ns,
            score: e.score,
            threshold,
            outcome: e.outcome,
            latency_ms: e
                .verdict_ns
                .map(|v| v.saturating_sub(info.trigger_ns) as f64 / 1e6),
            reason: e.reason,
            frame: info.frame,
            model: model.clone(),
        }));
        match (e.outcome.rejects(), e.frame, &self.archive) {
            (true, Some(frame), Some(tx)) => {
                let sent = tx.try_send(ArchiveJob {
                    part: info.part,
                    outcome: e.outcome,
                    frame,
                    inspection: e.inspection,
                    threshold,
                    model,
                });
                if sent.is_ok() {
                    self.stats.archive_jobs += 1;
                }
                if let Err(err) = sent {
                    self.stats.archive_dropped += 1;
                    self.counters.archive_lost += 1;
                    let job = err.into_inner();
                    self.give_back_map(job.inspection);
                    self.give_back(Some(job.frame));
                }
            }
            (_, frame, _) => {
                self.give_back_map(e.inspection);
                self.give_back(frame);
            }
        }
        self.publish();
    }

    /// The outcome in the counters, and against the ground truth when the part has one;
    /// returns the index of the part's kind.
    fn count(&mut self, info: &PartInfo, outcome: Outcome) -> Option<usize> {
        self.counters.pending -= 1;
        match outcome {
            Outcome::Pass => self.counters.passes += 1,
            Outcome::Reject => self.counters.rejects += 1,
            Outcome::FaultReject => self.counters.fault_rejects += 1,
            Outcome::FaultPass => self.counters.fault_passes += 1,
        }
        let defective = info.frame.defective?;
        self.stats.with_truth += 1;
        let kind =
            info.frame
                .kind
                .as_deref()
                .unwrap_or(if defective { "defective" } else { "good" });
        // One allocation per kind for the whole run, not per part.
        if !self.stats.by_kind.contains_key(kind) {
            self.stats
                .by_kind
                .insert(kind.to_string(), KindTally::default());
            self.kinds.push(kind.to_string());
        }
        let index = self.kinds.iter().position(|k| k == kind);
        if let Some(t) = self.stats.by_kind.get_mut(kind) {
            t.parts += 1;
            match outcome {
                Outcome::Pass => t.passes += 1,
                Outcome::Reject => t.rejects += 1,
                Outcome::FaultReject => t.fault_rejects += 1,
                Outcome::FaultPass => t.fault_passes += 1,
            }
        }
        match (defective, outcome) {
            (true, Outcome::Pass | Outcome::FaultPass) => self.stats.escapes += 1,
            (false, Outcome::Reject) => self.stats.false_rejects += 1,
            (false, Outcome::FaultReject) => self.stats.false_fault_rejects += 1,
            _ => {}
        }
        index
    }

    /// A pulse that started (or would start) too late to hit its part: counted, and its part
    /// a possible escape; a defective one counts as an escape.
    fn late_ejection(&mut self, p: Pulse, fired: bool) {
        self.counters.late_ejections += 1;
        self.stats.late_ejections += 1;
        if !fired {
            self.stats.late_held += 1;
        }
        if p.defective == Some(true) {
            self.stats.escapes += 1;
            self.stats.late_escapes += 1;
        }
        if let Some(t) = p
            .kind
            .and_then(|k| self.kinds.get(k))
            .and_then(|k| self.stats.by_kind.get_mut(k))
        {
            t.late_ejections += 1;
        }
        self.publish();
    }

    fn give_back(&mut self, frame: Option<Frame>) {
        if let (Some(f), Some(tx)) = (frame, &mut self.recycle) {
            let _ = tx.push(f.data);
        }
    }

    fn give_back_map(&mut self, inspection: Option<Inspection>) {
        if let (Some(i), Some(tx)) = (inspection, &mut self.maps) {
            let _ = tx.push(i.map);
        }
    }

    fn publish(&self) {
        let mut c = self.counters.clone();
        c.events_dropped = self.events.dropped();
        self.shared.publish(&c);
        if !self.counters.balanced() {
            self.events.emit(Event::alarm(
                "invariant",
                format!("part accounting off: {:?}", self.counters),
                None,
                true,
            ));
        }
    }

    fn set_pin(&mut self, on: bool) {
        if let Err(e) = self.pin.set(on) {
            self.stats.pin_errors += 1;
            self.counters.pin_errors += 1;
            self.publish();
            self.events.emit(Event::alarm(
                "pin_error",
                format!("reject line: {e}"),
                None,
                true,
            ));
        }
    }

    /// Do what is due now (fail-safe decisions, pulse edges); returns when to call again.
    pub fn poll(&mut self) -> Option<u64> {
        let now = self.clock.now_ns();
        let margin = self.policy.margin_ns;
        let overdue: Vec<u64> = self
            .ledger
            .values()
            .filter(|p| now > p.deadline_ns.saturating_sub(margin))
            .map(|p| p.part)
            .collect();
        for part in overdue {
            let info = self.ledger.remove(&part).expect("listed above");
            let reason = format!(
                "no verdict {:.1} ms before the ejector",
                margin as f64 / 1e6
            );
            self.events.emit(Event::alarm(
                "verdict_missing",
                reason.clone(),
                Some(part),
                true,
            ));
            let ending = self.fault_ending(reason, None);
            self.finish(info, ending);
        }
        while let Some(&p) = self.pulses.front() {
            if p.at > now {
                break;
            }
            self.pulses.pop_front();
            let at = p.at;
            // Known too late before the edge: a stalled line must not blow air at whatever
            // part is at the nozzle now; the part is counted as a possible escape instead.
            let due_late = self.clock.now_ns().saturating_sub(at) > self.policy.late_ns;
            if due_late && !self.policy.fire_late {
                let actual = self.clock.now_ns();
                self.late_ejection(p, false);
                self.events.emit(Event::Reject(RejectEvent {
                    part: p.part,
                    scheduled_ns: at,
                    actual_ns: actual,
                    error_us: (actual as i64 - at as i64) / 1000,
                    extended: false,
                    late: true,
                    fired: false,
                }));
                continue;
            }
            // A pulse that ended before this one was due (its end passed during a stall) is
            // ended first: this one is not an extension of it.
            if self.active_until.is_some_and(|u| u < at) {
                self.set_pin(false);
                self.active_until = None;
            }
            let extended = self.active_until.is_some();
            if !extended {
                self.set_pin(true);
            }
            let actual = self.clock.now_ns();
            let err = actual as i64 - at as i64;
            let late = err > self.policy.late_ns as i64;
            // On time, a pulse ends on schedule; one fired late (`fire_late_pulses`) still gets
            // its full width, or it would be cut off at once.
            let end = if late { actual } else { at } + self.policy.pulse_ns;
            self.active_until = Some(self.active_until.map_or(end, |u| u.max(end)));
            self.stats.max_timing_error_ns = self.stats.max_timing_error_ns.max(err.unsigned_abs());
            self.stats
                .timing_error_ns
                .saturating_record(err.unsigned_abs().max(1));
            if late {
                self.late_ejection(p, true);
            }
            self.events.emit(Event::Reject(RejectEvent {
                part: p.part,
                scheduled_ns: at,
                actual_ns: actual,
                error_us: err / 1000,
                extended,
                late,
                fired: true,
            }));
        }
        if let Some(end) = self.active_until {
            if now >= end {
                self.set_pin(false);
                self.active_until = None;
            }
        }
        let next_decision = self
            .ledger
            .values()
            .map(|p| p.deadline_ns.saturating_sub(margin) + 1)
            .min();
        [
            next_decision,
            self.pulses.front().map(|p| p.at),
            self.active_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When the next pulse starts, if one is scheduled.
    pub fn next_pulse_ns(&self) -> Option<u64> {
        self.pulses.front().map(|p| p.at)
    }

    /// Inspections failed in a row now.
    pub fn failures_in_row(&self) -> u64 {
        self.counters.inspect_failures_in_row
    }

    /// Nothing armed, nothing scheduled, the line is off.
    pub fn idle(&self) -> bool {
        self.ledger.is_empty() && self.pulses.is_empty() && self.active_until.is_none()
    }

    /// Current counters.
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// Statistics so far.
    pub fn stats(&self) -> &RejectStats {
        &self.stats
    }

    /// Force the reject line off (shutdown after an error).
    pub fn release_pin(&mut self) {
        self.set_pin(false);
        self.active_until = None;
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Also on a panic: an air jet must not be left blowing.
        if self.active_until.is_some() {
            let _ = self.pin.set(false);
        }
    }
}

/// What a part does when its inspection is late, missing or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailSafe {
    /// Reject it (the safe default: a wasted good part, never a shipped bad one).
    #[default]
    Reject,
    /// Let it pass (warned at start).
    Pass,
}

#[cfg(test)]
mod tests;
