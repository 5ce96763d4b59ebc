//! The health thread: heartbeats with the counters, the `ready`, `fault` and heartbeat pins,
//! the systemd watchdog, and alarms when a stage stalls, the camera stops, pins fail, events
//! are dropped or the engine is overloaded.

use super::capture::Awaiting;
use super::shared::{Shared, CAPTURE, REJECT, STAGES};
use super::watchdog::Notifier;
use crate::clock::{Clock, MS};
use crate::events::{Counters, Event, Events, HeartbeatEvent};
use crate::line::setup::{LineSetup, Trigger};
use crate::sinks::pins::Output;
use std::sync::atomic::Ordering;

/// The pins only the health thread drives.
pub(super) struct Pins {
    pub ready: Output,
    pub heartbeat: Output,
    pub fault: Output,
}

/// What the health thread watches with, and what it has already said.
pub(super) struct Health<'a> {
    setup: &'a LineSetup,
    clock: &'a dyn Clock,
    shared: &'a Shared,
    events: &'a Events,
    awaiting: &'a Awaiting,
    notifier: Option<&'a Notifier>,
    pins: Pins,
    /// A camera without a frame for this long has stalled (`camera.stall_ms`).
    stall: u64,
    /// A stage that has not looped for this long is wedged.
    liveness: u64,
    active: Vec<String>,
    hb: bool,
    told_ready: bool,
    told_stopping: bool,
    dropped_seen: u64,
    skipped_seen: u64,
    overloaded: bool,
    /// Late ejections counted at the last beat, and the beats left to hold their fault.
    late_seen: u64,
    late_hold: u32,
    /// A stall alarm is up.
    stalled: bool,
    /// Archive losses counted at the last beat, and whether their alarm is up.
    lost_seen: u64,
    losing: bool,
}

/// A thread that wakes this much past its deadline was stopped (SIGSTOP, a VM pause, swapping):
/// far beyond any scheduling jitter of a working line, short enough to catch a 0.1 s stop.
const STALL_NS: u64 = 75 * MS;
/// Beats the `late_ejection` fault holds `ready` down after the last late pulse, so that a PLC
/// polling `ready` sees it.
const LATE_HOLD_BEATS: u32 = 4;

impl<'a> Health<'a> {
    pub fn new(
        setup: &'a LineSetup,
        clock: &'a dyn Clock,
        shared: &'a Shared,
        events: &'a Events,
        awaiting: &'a Awaiting,
        notifier: Option<&'a Notifier>,
        pins: Pins,
    ) -> Self {
        let period = setup.line.heartbeat_ms * MS;
        let stall = setup.camera.stall_ms * MS;
        let tick = (period / 2).clamp(5 * MS, 250 * MS);
        Self {
            setup,
            clock,
            shared,
            events,
            awaiting,
            notifier,
            pins,
            stall,
            // The source may block up to `stall`.
            liveness: (2 * stall).max(10 * tick).max(3 * period),
            active: Vec::new(),
            hb: false,
            told_ready: false,
            told_stopping: false,
            dropped_seen: 0,
            skipped_seen: 0,
            overloaded: false,
            late_seen: 0,
            late_hold: 0,
            stalled: false,
            lost_seen: 0,
            losing: false,
        }
    }

    /// A heartbeat every `line.heartbeat_ms` until the reject stage is done; then the pins go
    /// low and a last heartbeat says "stopped".
    pub fn run(mut self) {
        let period = self.setup.line.heartbeat_ms * MS;
        let mut next = self.clock.now_ns();
        loop {
            let shared = self.shared;
            self.clock
                .wait_until(Some(next), &|| shared.is_done(REJECT));
            if shared.is_done(CAPTURE) && !self.told_stopping {
                // Capture has ended: from here on the line only drains.
                if let Some(n) = self.notifier {
                    let _ = n.stopping();
                }
                self.told_stopping = true;
            }
            if shared.is_done(REJECT) {
                break;
            }
            let now = self.clock.now_ns();
            shared.note_wake(now.saturating_sub(next));
            // After a stall the missed beats are not made up in a burst.
            next = (next + period).max(now + period / 2);
            self.beat();
        }
        self.finish();
    }

    fn beat(&mut self) {
        let now = self.clock.now_ns();
        let counters = self
            .shared
            .complete(self.shared.counters.read(), self.events.dropped());
        self.counter_alarms(&counters);
        self.stall_alarm();
        let (mut faults, all_alive) = self.faults(now, &counters);
        if counters.late_ejections > self.late_seen {
            self.late_seen = counters.late_ejections;
            self.late_hold = LATE_HOLD_BEATS;
        }
        if self.late_hold > 0 {
            self.late_hold -= 1;
            faults.push("late_ejection".into());
        }
        self.announce(&faults);
        let ready = faults.is_empty();
        self.drive(ready, all_alive);
        self.events.emit(Event::Heartbeat(HeartbeatEvent {
            ready,
            invariant_ok: counters.balanced(),
            faults,
            counters,
            drift: self.shared.drift().map(Box::new),
            camera: self.shared.camera(),
        }));
    }

    /// Dropped events and overload: said once when they start (and overload once when it ends).
    fn counter_alarms(&mut self, counters: &Counters) {
        if counters.events_dropped > self.dropped_seen {
            // Said loudly; the count also rides on every heartbeat, which outlives a full bus.
            self.events.emit(Event::alarm(
                "events_dropped",
                format!(
                    "{} events dropped: the event bus was full",
                    counters.events_dropped
                ),
                None,
                true,
            ));
            self.dropped_seen = counters.events_dropped;
        }
        // Overload is not a fault of the line (ready stays up), but every skipped part is
        // rejected unseen: say so once when it starts and once when it ends.
        let skipping = counters.skipped > self.skipped_seen;
        if skipping != self.overloaded {
            let message = if skipping {
                format!(
                    "overload: {} parts skipped uninspected since the last heartbeat (fail-safe)",
                    counters.skipped - self.skipped_seen
                )
            } else {
                format!("overload over: {} parts skipped in all", counters.skipped)
            };
            self.events
                .emit(Event::alarm("overload", message, None, skipping));
            self.overloaded = skipping;
        }
        self.skipped_seen = counters.skipped;
        // Lost evidence does not stop the line, but is said once when it starts and once when
        // archive writes succeed again (a beat without a new loss).
        let losing = counters.archive_lost > self.lost_seen;
        if losing != self.losing {
            let message = if losing {
                format!(
                    "rejected parts not archived: {} lost so far (disk full, unwritable or the writer behind)",
                    counters.archive_lost
                )
            } else {
                format!(
                    "archive writing again: {} rejected parts lost in all",
                    counters.archive_lost
                )
            };
            self.events
                .emit(Event::alarm("archive_lost", message, None, losing));
            self.losing = losing;
        }
        self.lost_seen = counters.archive_lost;
    }

    /// A thread woke far past its deadline since the last beat: the process was stopped.
    fn stall_alarm(&mut self) {
        let late = self.shared.stall_ns.swap(0, Ordering::Relaxed);
        let stalled = late > STALL_NS;
        if stalled && !self.stalled {
            self.events.emit(Event::alarm(
                "process_stalled",
                format!(
                    "the line's threads were stopped for {:.0} ms (SIGSTOP, a VM pause, swapping): pulses due then are late",
                    late as f64 / 1e6
                ),
                None,
                true,
            ));
        } else if stalled {
            log::warn!("line stalled again: {:.0} ms", late as f64 / 1e6);
        } else if self.stalled {
            self.events.emit(Event::alarm(
                "process_stalled",
                "running again on time",
                None,
                false,
            ));
        }
        self.stalled = stalled;
    }

    /// The faults that drop `ready` now, and whether every running stage is alive.
    fn faults(&self, now: u64, counters: &Counters) -> (Vec<String>, bool) {
        let (shared, stall) = (self.shared, self.stall);
        let mut faults: Vec<String> = Vec::new();
        // Free-running: frames must keep coming. Photo-eye: a camera triggered by the parts is
        // quiet while the belt is empty; it has stalled when a triggered part waits for its frame.
        let waiting_since = if self.setup.line.trigger == Trigger::Frame {
            Some(shared.last_frame_ns.load(Ordering::Relaxed))
        } else {
            self.awaiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .front()
                .map(|&(_, t)| t.max(shared.last_frame_ns.load(Ordering::Relaxed)))
        };
        if !shared.is_done(CAPTURE) && waiting_since.is_some_and(|t| now.saturating_sub(t) > stall)
        {
            faults.push("camera_stalled".into());
        }
        if !shared.is_done(CAPTURE) && shared.camera_down.load(Ordering::SeqCst) {
            faults.push("camera_disconnected".into());
        }
        let mut all_alive = true;
        for (i, name) in STAGES.iter().enumerate() {
            if !shared.is_done(i)
                && now.saturating_sub(shared.alive[i].load(Ordering::Relaxed)) > self.liveness
            {
                faults.push(format!("stage_stalled:{name}"));
                all_alive = false;
            }
        }
        if !counters.balanced() {
            faults.push("invariant".into());
        }
        let max_failed = u64::from(self.setup.line.max_failed_inspections);
        if max_failed > 0 && counters.inspect_failures_in_row >= max_failed {
            faults.push("inspection_failing".into());
        }
        // A pin that failed once is not trusted again until a restart.
        if shared.pin_errors.load(Ordering::Relaxed) + counters.pin_errors > 0 {
            faults.push("pin_error".into());
        }
        (faults, all_alive)
    }

    /// An alarm for each fault code that appeared and each that cleared.
    ///
    /// Faults that share a code (`stage_stalled:capture`, `stage_stalled:inspect`) are one
    /// alarm, raised when the first appears and cleared when the last goes: a consumer that
    /// keeps alarm state by code (the operator's page does) never sees one cleared while
    /// another of its kind is still up.
    fn announce(&mut self, faults: &[String]) {
        let code = |f: &String| f.split(':').next().unwrap_or(f).to_string();
        let now: std::collections::BTreeSet<String> = faults.iter().map(code).collect();
        let before: std::collections::BTreeSet<String> = self.active.iter().map(code).collect();
        for c in now.difference(&before) {
            let which: Vec<&str> = faults
                .iter()
                .filter(|f| code(f) == *c)
                .map(String::as_str)
                .collect();
            self.events.emit(Event::alarm(
                c,
                format!("{}: ready dropped", which.join(", ")),
                None,
                true,
            ));
        }
        for c in before.difference(&now) {
            self.events
                .emit(Event::alarm(c, format!("{c}: cleared"), None, false));
        }
        self.active = faults.to_vec();
    }

    /// `ready`, `fault`, the heartbeat pin and the systemd watchdog.
    fn drive(&mut self, ready: bool, all_alive: bool) {
        let r = self.pins.ready.set(ready);
        self.pin_result(r);
        let r = self.pins.fault.set(!ready);
        self.pin_result(r);
        if all_alive && !self.told_stopping {
            self.hb = !self.hb;
            let r = self.pins.heartbeat.set(self.hb);
            self.pin_result(r);
            if let Some(n) = self.notifier {
                if !self.told_ready {
                    let _ = n.ready();
                    self.told_ready = true;
                }
                let _ = n.ping();
            }
        }
    }

    fn pin_result(&self, r: Result<(), crate::gpio::PinError>) {
        if let Err(e) = r {
            self.shared.pin_errors.fetch_add(1, Ordering::Relaxed);
            self.events
                .emit(Event::alarm("pin_error", e.to_string(), None, true));
        }
    }

    fn finish(mut self) {
        if let (Some(n), false) = (self.notifier, self.told_stopping) {
            let _ = n.stopping();
        }
        let _ = self.pins.ready.set(false);
        let _ = self.pins.heartbeat.set(false);
        let _ = self.pins.fault.set(false);
        let c = self
            .shared
            .complete(self.shared.counters.read(), self.events.dropped());
        self.events.emit(Event::Heartbeat(HeartbeatEvent {
            ready: false,
            invariant_ok: c.balanced(),
            faults: vec!["stopped".into()],
            counters: c,
            drift: self.shared.drift().map(Box::new),
            camera: self.shared.camera(),
        }));
    }
}
