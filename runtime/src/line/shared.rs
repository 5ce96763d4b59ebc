//! What the stage threads share with each other and the health thread: liveness stamps, done
//! flags, and the counters no single stage owns.

use super::LineError;
use crate::clock::Clock;
use crate::events::DriftFigures;
use crate::events::{CameraFigures, Counters};
use crate::tally::Tally;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The stage threads, in the order of their liveness stamps and done flags.
pub(super) const STAGES: [&str; 4] = ["capture", "inspect", "reject", "trigger"];
pub(super) const CAPTURE: usize = 0;
pub(super) const INSPECT: usize = 1;
pub(super) const REJECT: usize = 2;
pub(super) const TRIGGER: usize = 3;

/// Marks a stage finished when its thread ends, by return or by panic, so the stages after it
/// drain and stop instead of waiting forever.
pub(super) struct Done<'a>(pub &'a Shared, pub usize, pub &'a dyn Clock);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.finish(self.1, self.2);
    }
}

/// State the stage threads share with the health thread.
pub(super) struct Shared {
    pub counters: Arc<Tally>,
    /// Time the engine spent inspecting, and the frames it inspected (its capacity).
    pub engine_busy_ns: AtomicU64,
    pub inspections: AtomicU64,
    /// First and last part trigger times (the span the line ran parts).
    pub first_trigger_ns: AtomicU64,
    pub last_trigger_ns: AtomicU64,
    pub last_frame_ns: AtomicU64,
    pub alive: [AtomicU64; 4],
    pub done: [AtomicBool; 4],
    pub frames_dropped: AtomicU64,
    pub packets_missing: AtomicU64,
    pub packets_resent: AtomicU64,
    pub stream_underruns: AtomicU64,
    /// The source reported the camera gone; cleared by the next frame.
    pub camera_down: AtomicBool,
    pub camera_errors: AtomicU64,
    pub pin_errors: AtomicU64,
    pub trigger_progress: AtomicU64,
    pub trigger_edges_lost: AtomicU64,
    /// The trigger thread waits for an edge with none queued.
    pub trigger_idle: AtomicBool,
    pub fatal: Mutex<Option<LineError>>,
    /// The drift watch's figures after the last inspected part (the inspect thread writes).
    pub drift: Mutex<Option<DriftFigures>>,
    /// The longest a stage thread woke past its deadline since the health thread last looked
    /// (a process stopped, swapped out or starved shows here).
    pub stall_ns: AtomicU64,
    /// Why the line stopped itself (it then exits non-zero after draining).
    pub stop_fault: Mutex<Option<String>>,
    /// Rejected parts the archive writer could not write (its own thread counts them).
    pub archive_errors: Arc<AtomicU64>,
    /// What the camera's source measures of itself, as of its last report.
    pub camera: Mutex<Option<CameraFigures>>,
    /// CPU seconds per thread name, taken when capture ended.
    pub threads_cpu: Mutex<Vec<(String, f64)>>,
}

impl Shared {
    /// Every stage stamped alive now; the trigger stage counts as done when there is none.
    pub fn new(clock: &dyn Clock, has_trigger: bool) -> Self {
        let shared = Self {
            counters: Arc::new(Tally::default()),
            engine_busy_ns: AtomicU64::new(0),
            inspections: AtomicU64::new(0),
            first_trigger_ns: AtomicU64::new(u64::MAX),
            last_trigger_ns: AtomicU64::new(0),
            last_frame_ns: AtomicU64::new(clock.now_ns()),
            alive: Default::default(),
            done: Default::default(),
            frames_dropped: AtomicU64::new(0),
            packets_missing: AtomicU64::new(0),
            packets_resent: AtomicU64::new(0),
            stream_underruns: AtomicU64::new(0),
            camera_down: AtomicBool::new(false),
            camera_errors: AtomicU64::new(0),
            pin_errors: AtomicU64::new(0),
            trigger_progress: AtomicU64::new(0),
            trigger_edges_lost: AtomicU64::new(0),
            trigger_idle: AtomicBool::new(false),
            fatal: Mutex::new(None),
            drift: Mutex::new(None),
            stall_ns: AtomicU64::new(0),
            stop_fault: Mutex::new(None),
            archive_errors: Arc::new(AtomicU64::new(0)),
            camera: Mutex::new(None),
            threads_cpu: Mutex::new(Vec::new()),
        };
        for s in 0..STAGES.len() {
            shared.stamp(s, clock);
        }
        if !has_trigger {
            shared.done[TRIGGER].store(true, Ordering::SeqCst);
        }
        shared
    }

    pub fn stamp(&self, stage: usize, clock: &dyn Clock) {
        self.alive[stage].store(clock.now_ns(), Ordering::Relaxed);
    }

    pub fn finish(&self, stage: usize, clock: &dyn Clock) {
        self.done[stage].store(true, Ordering::SeqCst);
        clock.notify();
    }

    pub fn is_done(&self, stage: usize) -> bool {
        self.done[stage].load(Ordering::SeqCst)
    }

    /// A part was triggered at `t_ns`: widen the span the line ran parts.
    pub fn note_trigger(&self, t_ns: u64) {
        self.first_trigger_ns.fetch_min(t_ns, Ordering::Relaxed);
        self.last_trigger_ns.fetch_max(t_ns, Ordering::Relaxed);
    }

    /// Record a fatal error a stage met; the line reports it at the end.
    pub fn set_fatal(&self, e: LineError) {
        *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    /// The fatal error, if a stage met one.
    pub fn take_fatal(&self) -> Option<LineError> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// A thread woke `late_ns` after it meant to.
    pub fn note_wake(&self, late_ns: u64) {
        self.stall_ns.fetch_max(late_ns, Ordering::Relaxed);
    }

    /// The line stops itself for `why` (the first reason stands).
    pub fn set_stop_fault(&self, why: String) {
        let mut f = self.stop_fault.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
    }

    /// Why the line stopped itself, if it did.
    pub fn stop_fault(&self) -> Option<String> {
        self.stop_fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The camera source's latest figures.
    pub fn camera(&self) -> Option<CameraFigures> {
        *self.camera.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The drift watch's latest figures.
    pub fn drift(&self) -> Option<DriftFigures> {
        *self.drift.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reject stage's counters completed with what the other stages count themselves.
    pub fn complete(&self, mut c: Counters, events_dropped: u64) -> Counters {
        c.frames_dropped = self.frames_dropped.load(Ordering::Relaxed);
        c.packets_missing = self.packets_missing.load(Ordering::Relaxed);
        c.packets_resent = self.packets_resent.load(Ordering::Relaxed);
        c.stream_underruns = self.stream_underruns.load(Ordering::Relaxed);
        c.camera_errors = self.camera_errors.load(Ordering::Relaxed);
        c.trigger_edges_lost = self.trigger_edges_lost.load(Ordering::Relaxed);
        c.archive_lost += self.archive_errors.load(Ordering::Relaxed);
        c.events_dropped = events_dropped;
        c
    }
}
