//! The reject thread: every message about a part reaches the reject scheduler, which fires
//! the pulses on time; on SCHED_FIFO with its memory locked when `line.realtime_priority` is set.

use super::inbox::Inbox;
use super::shared::{CAPTURE, INSPECT, REJECT, TRIGGER};
use super::Ctx;
use crate::events::FrameFacts;
use crate::frame::Frame;
use crate::sinks::reject::{Judge, PartInfo, RejectStats, Scheduler};
use crate::stages::inspect::Inspection;

/// What the other stages tell the reject stage about a part.
pub(super) enum SchedMsg {
    Arm(PartInfo),
    Matched {
        part: u64,
        frame: FrameFacts,
    },
    Inspected {
        part: u64,
        trigger_ns: u64,
        result: Result<Inspection, String>,
        frame: Frame,
        judge: Judge,
    },
    Skipped {
        part: u64,
        reason: String,
        frame: Frame,
    },
    NotQueued {
        part: u64,
        reason: String,
        frame: Option<Frame>,
    },
    Incomplete {
        part: u64,
        reason: String,
    },
}

/// Deliver messages and fire pulses until every stage before it is done and every part has
/// its outcome; the last `spin_ns` before each pulse are spent awake (see [`SpinBudget`]).
pub(super) fn reject_loop(
    s: &mut Scheduler,
    ctx: &Ctx<'_>,
    rx: &mut Inbox<SchedMsg>,
) -> RejectStats {
    let (clock, shared, tick) = (ctx.clock, ctx.shared, ctx.tick);
    let spin_ns = ctx.setup.line.reject_spin_us * 1_000;
    let mut budget = SpinBudget::new(spin_ns);
    let max_failed = u64::from(ctx.setup.line.max_failed_inspections);
    loop {
        shared.stamp(REJECT, clock);
        // Edges that are due go out before a burst of messages is worked through.
        s.poll();
        rx.drain(|msg| deliver(s, msg));
        let next = s.poll();
        let failing = max_failed > 0 && s.failures_in_row() >= max_failed;
        if failing && !ctx.setup.line.run_on_failures && !ctx.shutdown.is_requested() {
            let why = format!(
                "{} inspections failed in a row (line.max_failed_inspections = {max_failed}): \
                 the line cannot judge parts; stopped after draining (line.run_on_failures = true keeps it running, every part fail-safe)",
                s.failures_in_row()
            );
            log::error!("{why}");
            shared.set_stop_fault(why);
            ctx.shutdown.request();
        }
        let upstream_done =
            shared.is_done(CAPTURE) && shared.is_done(INSPECT) && shared.is_done(TRIGGER);
        if upstream_done && rx.is_empty() && s.idle() {
            break;
        }
        let now = clock.now_ns();
        let mut wake = next.map_or(now + tick, |n| n.min(now + tick));
        if let Some(pulse) = s.next_pulse_ns().filter(|_| spin_ns > 0) {
            if pulse <= now + spin_ns {
                if budget.take(now, pulse) {
                    clock.spin_until(pulse);
                    continue;
                }
            } else {
                wake = wake.min(pulse - spin_ns);
            }
        }
        clock.wait_until(Some(wake), &rx.has_mail());
        shared.note_wake(clock.now_ns().saturating_sub(wake));
    }
    s.release_pin();
    let mut stats = s.stats().clone();
    stats.spin_refused = budget.refused;
    stats
}

/// How much CPU the reject thread may spend spinning: at most half of every 100 ms.
///
/// Past the kernel's real-time share (`sched_rt_runtime_us`, 95 % of each second by default)
/// a SCHED_FIFO thread is stopped for the rest of the second, tens of ms, far worse than any
/// late wake-up; pulses closer together than the spin window would get there. Over budget,
/// the thread sleeps towards the pulse as it would with no spin window.
#[derive(Debug)]
struct SpinBudget {
    window_start: u64,
    spent: u64,
    /// Pulses refused (each counted once, however often the thread asked for it).
    refused: u64,
    last_refused: Option<u64>,
    enabled: bool,
}

const SPIN_WINDOW_NS: u64 = 100 * crate::clock::MS;
const SPIN_PER_WINDOW_NS: u64 = SPIN_WINDOW_NS / 2;

impl SpinBudget {
    fn new(spin_ns: u64) -> Self {
        Self {
            window_start: 0,
            spent: 0,
            refused: 0,
            last_refused: None,
            enabled: spin_ns > 0,
        }
    }

    /// Whether spinning from `now` to `until` fits; if so, it is charged.
    fn take(&mut self, now: u64, until: u64) -> bool {
        if !self.enabled {
            return false;
        }
        if now.saturating_sub(self.window_start) >= SPIN_WINDOW_NS {
            self.window_start = now;
            self.spent = 0;
        }
        let cost = until.saturating_sub(now);
        if self.spent + cost > SPIN_PER_WINDOW_NS {
            if self.last_refused != Some(until) {
                self.refused += 1;
                self.last_refused = Some(until);
            }
            return false;
        }
        self.spent += cost;
        true
    }
}

fn deliver(s: &mut Scheduler, msg: SchedMsg) {
    match msg {
        SchedMsg::Arm(info) => s.arm(info),
        SchedMsg::Matched { part, frame } => s.matched(part, frame),
        SchedMsg::Inspected {
            part,
            trigger_ns,
            result,
            frame,
            judge,
        } => s.inspected(part, trigger_ns, result, Some(frame), Some(judge)),
        SchedMsg::Skipped {
            part,
            reason,
            frame,
        } => s.skipped(part, &reason, Some(frame)),
        SchedMsg::NotQueued {
            part,
            reason,
            frame,
        } => s.not_queued(part, &reason, frame),
        SchedMsg::Incomplete { part, reason } => s.incomplete(part, &reason),
    }
}

/// Lock the pages mapped now (the binary, ONNX Runtime, the model, the heap) into memory.
///
/// A real-time thread that touches a page the kernel dropped under memory pressure waits for
/// the disk (this 2-core VM was reclaiming page cache under the trainings' load). Only current
/// pages are locked: locking future mappings too would turn a memlock limit into allocation
/// failures.
pub(super) fn lock_memory() {
    // SAFETY: plain syscall without pointers.
    if unsafe { libc::mlockall(libc::MCL_CURRENT) } != 0 {
        log::warn!(
            "mlockall refused ({}): pages of the reject path may be paged out under memory pressure; \
             give the service CAP_IPC_LOCK or LimitMEMLOCK=infinity",
            std::io::Error::last_os_error()
        );
    }
}

/// Put the calling thread on SCHED_FIFO at `prio` (0: leave it alone).
pub(super) fn set_realtime(prio: u8) {
    if prio == 0 {
        return;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(prio),
    };
    // SAFETY: plain syscall on the current thread with a valid parameter struct.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        log::warn!(
            "reject thread: SCHED_FIFO {prio} refused ({}); pulses run at normal priority",
            std::io::Error::from_raw_os_error(rc)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MS;

    #[test]
    fn the_spin_budget_is_half_of_each_window() {
        let mut b = SpinBudget::new(2 * MS);
        let t0 = 1_000 * MS;
        // 25 spins of 2 ms fill the 50 ms a 100 ms window allows; the 26th sleeps.
        for i in 0..25 {
            assert!(
                b.take(t0 + i * 3 * MS, t0 + i * 3 * MS + 2 * MS),
                "spin {i}"
            );
        }
        assert!(!b.take(t0 + 75 * MS, t0 + 77 * MS));
        assert!(
            !b.take(t0 + 76 * MS, t0 + 77 * MS),
            "the same pulse, asked again"
        );
        assert_eq!(b.refused, 1);
        // A new window starts the count again.
        assert!(b.take(t0 + 101 * MS, t0 + 103 * MS));
        assert!(!SpinBudget::new(0).take(t0, t0 + MS), "spin 0 never spins");
    }
}
