//! The reject thread: every message about a part reaches the reject scheduler, which fires
//! the pulses on time; on SCHED_FIFO with its memory locked when `line.realtime_priority` is set.

use super::shared::{Shared, CAPTURE, INSPECT, REJECT, TRIGGER};
use crate::clock::{chan, Clock};
use crate::events::FrameFacts;
use crate::frame::Frame;
use crate::sinks::reject::{PartInfo, RejectStats, Scheduler};
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
}

/// Deliver messages and fire pulses until every stage before it is done and every part has
/// its outcome.
pub(super) fn reject_loop(
    s: &mut Scheduler,
    clock: &dyn Clock,
    shared: &Shared,
    rx: &chan::Rx<SchedMsg>,
    tick: u64,
) -> RejectStats {
    loop {
        shared.stamp(REJECT, clock);
        while let Some(msg) = rx.try_recv() {
            deliver(s, msg);
        }
        let next = s.poll();
        let upstream_done =
            shared.is_done(CAPTURE) && shared.is_done(INSPECT) && shared.is_done(TRIGGER);
        if upstream_done && rx.is_empty() && s.idle() {
            break;
        }
        let now = clock.now_ns();
        let wake = next.map_or(now + tick, |n| n.min(now + tick));
        clock.wait_until(Some(wake), &|| !rx.is_empty());
    }
    s.release_pin();
    s.stats().clone()
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
        } => s.inspected(part, trigger_ns, result, Some(frame)),
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
