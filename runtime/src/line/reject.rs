//! The reject thread: every message about a part reaches the reject scheduler, which fires
//! the pulses on time; on SCHED_FIFO with its memory locked when `line.realtime_priority` is set.

use super::inbox::Inbox;
use super::shared::{CAPTURE, INSPECT, REJECT, TRIGGER};
use super::spin::{SpinBudget, SpinWindow};
use super::Ctx;
use crate::clock::US;
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
/// its outcome; the last stretch before each pulse is spent awake (see [`SpinWindow`]).
pub(super) fn reject_loop(
    s: &mut Scheduler,
    ctx: &Ctx<'_>,
    rx: &mut Inbox<SchedMsg>,
) -> RejectStats {
    let (clock, shared, tick) = (ctx.clock, ctx.shared, ctx.tick);
    let line = &ctx.setup.line;
    let mut spin = SpinWindow::new(line.reject_spin_us * US, line.reject_spin_adaptive);
    let mut budget = SpinBudget::new(line.reject_spin_us * US);
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
        let window = spin.ns();
        if let Some(pulse) = s.next_pulse_ns().filter(|_| window > 0) {
            if pulse <= now + window {
                if budget.take(now, pulse) {
                    clock.spin_until(pulse);
                    spin.spun(pulse.saturating_sub(now), window);
                    continue;
                }
            } else {
                wake = wake.min(pulse - window);
            }
        }
        let woken_by_mail = clock.wait_until(Some(wake), &rx.has_mail());
        let late = clock.now_ns().saturating_sub(wake);
        // Only a real sleep that ran to its deadline says how late this kernel wakes it (a
        // deadline already past measures the loop's own work instead).
        if !woken_by_mail && wake > now {
            spin.observe(late);
        }
        shared.note_wake(late);
    }
    s.release_pin();
    let mut stats = s.stats().clone();
    stats.spin_refused = budget.refused;
    stats.spin_widest_ns = spin.widest_ns;
    stats.spin_window_ns = spin.ns();
    stats.spun_ns = spin.spun_ns;
    stats
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
