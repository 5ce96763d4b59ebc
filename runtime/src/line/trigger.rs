//! The trigger thread: one part armed per photo-eye edge, with the edges the kernel dropped
//! alarmed (those parts pass the ejector unarmed).

use super::inbox::Sender;
use super::reject::SchedMsg;
use super::shared::{CAPTURE, TRIGGER};
use super::Ctx;
use crate::clock::MS;
use crate::events::{Event, FrameFacts};
use crate::sinks::reject::PartInfo;
use crate::sources::camera::SoftTrigger;
use crate::sources::trigger::{TriggerEdge, TriggerInput};
use std::sync::atomic::Ordering;

/// Arm parts from photo-eye edges until capture ends, the part count is reached or a stop is
/// requested; a camera triggered in software (`fire`) is fired for each part.
pub(super) fn trigger_loop(
    ctx: &Ctx<'_>,
    input: &mut dyn TriggerInput,
    sched: &mut Sender<SchedMsg>,
    mut fire: Option<Box<dyn SoftTrigger>>,
) {
    let (shared, clock) = (ctx.shared, ctx.clock);
    loop {
        shared.stamp(TRIGGER, clock);
        if ctx.shutdown.is_requested()
            || shared.is_done(CAPTURE)
            || ctx
                .setup
                .line
                .parts
                .is_some_and(|n| ctx.next_part.load(Ordering::SeqCst) >= n)
        {
            break;
        }
        // Blocked with no edge queued: every part up to now is armed, frames may be matched.
        if let Ok(false) = input.pending() {
            shared.trigger_idle.store(true, Ordering::SeqCst);
            clock.notify();
        }
        let got = input.next_edge(ctx.tick / MS);
        shared.trigger_idle.store(false, Ordering::SeqCst);
        let progress = clock.now_ns();
        match got {
            Ok(Some(edge)) => {
                let part = arm_edge(ctx, sched, edge);
                if let Some(f) = fire.as_mut() {
                    // A refused trigger leaves the part waiting for a frame that never comes:
                    // it fails safe at its deadline; the camera's own failure is alarmed by
                    // the capture thread.
                    if let Err(e) = f.fire() {
                        shared.camera_errors.fetch_add(1, Ordering::Relaxed);
                        log::warn!("part {part}: software trigger refused: {e}");
                    }
                }
                shared
                    .trigger_progress
                    .store(progress.max(edge.t_ns), Ordering::SeqCst);
                clock.notify();
            }
            Ok(None) => {
                shared
                    .trigger_progress
                    .fetch_max(progress, Ordering::SeqCst);
                clock.notify();
            }
            Err(e) => {
                shared.pin_errors.fetch_add(1, Ordering::Relaxed);
                log::error!("photo-eye: {e}");
                clock.sleep_until(clock.now_ns() + ctx.tick);
            }
        }
    }
}

/// One edge: a new part, armed with its deadline and left waiting for its frame.
fn arm_edge(ctx: &Ctx<'_>, sched: &mut Sender<SchedMsg>, edge: TriggerEdge) -> u64 {
    let part = ctx.next_part.fetch_add(1, Ordering::SeqCst) + 1;
    ctx.shared.note_trigger(edge.t_ns);
    if edge.lost > 0 {
        // Those parts pass the ejector unarmed: no fail-safe covers them.
        let total = ctx
            .shared
            .trigger_edges_lost
            .fetch_add(edge.lost, Ordering::Relaxed)
            + edge.lost;
        ctx.events.emit(Event::alarm(
            "trigger_edges_lost",
            format!(
                "photo-eye: {} part edges dropped by the kernel before part {part} ({total} in all): those parts were not inspected",
                edge.lost
            ),
            Some(part),
            true,
        ));
    }
    let info = PartInfo {
        part,
        trigger_ns: edge.t_ns,
        deadline_ns: edge.t_ns + ctx.delay_ns,
        frame: FrameFacts {
            origin: "photo-eye".into(),
            ..FrameFacts::default()
        },
    };
    let _ = sched.send(SchedMsg::Arm(info));
    ctx.awaiting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_back((part, edge.t_ns));
    part
}
