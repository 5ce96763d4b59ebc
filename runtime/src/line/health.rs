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
}

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
            next += period;
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
        let (faults, all_alive) = self.faults(now, &counters);
        self.announce(&faults);
        let ready = faults.is_empty();
        self.drive(ready, all_alive);
        self.events.emit(Event::Heartbeat(HeartbeatEvent {
            ready,
            invariant_ok: counters.balanced(),
            faults,
            counters,
            drift: self.shared.drift().map(Box::new),
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
        // A pin that failed once is not trusted again until a restart.
        if shared.pin_errors.load(Ordering::Relaxed) + counters.pin_errors > 0 {
            faults.push("pin_error".into());
        }
        (faults, all_alive)
    }

    /// An alarm for each fault that appeared and each that cleared.
    fn announce(&mut self, faults: &[String]) {
        for f in faults.iter().filter(|f| !self.active.contains(f)) {
            self.events.emit(Event::alarm(
                f.split(':').next().unwrap_or(f),
                format!("{f}: ready dropped"),
                None,
                true,
            ));
        }
        for f in self.active.iter().filter(|f| !faults.contains(f)) {
            self.events.emit(Event::alarm(
                f.split(':').next().unwrap_or(f),
                format!("{f}: cleared"),
                None,
                false,
            ));
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
        }));
    }
}
