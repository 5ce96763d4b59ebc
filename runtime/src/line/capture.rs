//! The capture thread: frames from the source, each armed as a part (free-running) or matched
//! to its photo-eye edge, then queued for the engine by deadline.

use super::inbox::Sender;
use super::reject::SchedMsg;
use super::shared::{CAPTURE, TRIGGER};
use super::Ctx;
use crate::clock::MS;
use crate::events::{Event, FrameFacts};
use crate::frame::Frame;
use crate::line::setup::Trigger;
use crate::sinks::reject::PartInfo;
use crate::sources::camera::{Source, SourceError};
use crate::stages::triage::{Job, Pushed, Triage};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// Parts armed at the photo-eye and still waiting for their frame: (part, trigger time).
pub(super) type Awaiting = Mutex<VecDeque<(u64, u64)>>;

/// What the source gave.
enum Next {
    Frame(Frame),
    /// A frame that arrived but not whole: its part fails safe.
    Incomplete(Box<Frame>, String),
    /// Nothing this time (timeout, a camera error already reported); try again.
    Again,
    /// The source ended, or cannot go on.
    End,
}

/// Capture until the source ends, the part count is reached, a stop is requested or (photo-eye)
/// every triggered part got its frame after the trigger thread stopped.
pub(super) fn capture_loop(
    ctx: &Ctx<'_>,
    mut source: Box<dyn Source>,
    sched: &mut Sender<SchedMsg>,
    triage: &Triage,
    recycle: &mut rtrb::Consumer<Vec<u8>>,
) {
    let mut camera_failing = false;
    let mut published = 0;
    log::info!("capture from {}", source.describe());
    loop {
        ctx.shared.stamp(CAPTURE, ctx.clock);
        if capture_done(ctx) {
            break;
        }
        while let Ok(buf) = recycle.pop() {
            source.recycle(buf);
        }
        let next = next_frame(ctx, &mut *source, &mut camera_failing);
        // The stream counters are the camera library's (an FFI call each): read them at the
        // heartbeat's pace, not per frame.
        let now = ctx.clock.now_ns();
        if now.saturating_sub(published) >= PUBLISH_NS {
            publish_stream(ctx, &*source);
            published = now;
        }
        let frame = match next {
            Next::Frame(f) => f,
            Next::Incomplete(frame, why) => {
                incomplete(ctx, sched, *frame, why);
                continue;
            }
            Next::Again => continue,
            Next::End => break,
        };
        match arm(ctx, sched, &frame) {
            Some((part, trigger_ns)) => queue(ctx, sched, triage, part, trigger_ns, frame),
            None => source.recycle(frame.data),
        }
    }
    // Final figures for the summary, and the threads' CPU while the source's own threads
    // (a camera library's receivers) still exist: dropping the source ends them.
    publish_stream(ctx, &*source);
    *ctx.shared
        .threads_cpu
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = super::cpu::threads();
}

/// How often the capture thread copies the source's stream counters for the health thread.
const PUBLISH_NS: u64 = 200 * MS;

/// The part a frame belongs to: made by it (free-running) or the photo-eye part it matches.
fn arm(ctx: &Ctx<'_>, sched: &mut Sender<SchedMsg>, frame: &Frame) -> Option<(u64, u64)> {
    if ctx.setup.line.trigger == Trigger::Frame {
        Some(arm_by_frame(ctx, sched, frame))
    } else {
        match_to_trigger(ctx, sched, frame)
    }
}

fn capture_done(ctx: &Ctx<'_>) -> bool {
    if ctx.shutdown.is_requested() {
        log::info!("stop requested: capture ends, draining in-flight parts");
        return true;
    }
    let line = &ctx.setup.line;
    if line.trigger == Trigger::Frame {
        return line
            .parts
            .is_some_and(|n| ctx.next_part.load(Ordering::SeqCst) >= n);
    }
    // Photo-eye mode: once the trigger thread has stopped and every edge got its frame (or
    // was given up on), there is nothing left to match.
    ctx.shared.is_done(TRIGGER)
        && ctx
            .awaiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
}

/// The next frame, with camera errors alarmed once per failing spell and counted.
fn next_frame(ctx: &Ctx<'_>, source: &mut dyn Source, camera_failing: &mut bool) -> Next {
    let (shared, events) = (ctx.shared, ctx.events);
    let frame = match source.next_frame() {
        Ok(Some(f)) => f,
        Ok(None) => return Next::End,
        Err(SourceError::Timeout(ms)) => {
            log::debug!("camera: no frame within {ms} ms");
            return Next::Again;
        }
        Err(SourceError::Incomplete { frame, why }) => {
            // The camera is there and streaming: not a camera failure, a part without a frame.
            return Next::Incomplete(frame, why);
        }
        Err(SourceError::Config(e)) => {
            events.emit(Event::alarm("camera_config", e.clone(), None, true));
            log::error!("camera: {e}");
            shared.set_fatal(SourceError::Config(e).into());
            return Next::End;
        }
        Err(e) => {
            shared.camera_errors.fetch_add(1, Ordering::Relaxed);
            if matches!(e, SourceError::Disconnected(_)) {
                shared.camera_down.store(true, Ordering::SeqCst);
            }
            if !*camera_failing {
                events.emit(Event::alarm("camera_error", e.to_string(), None, true));
                *camera_failing = true;
            }
            return Next::Again;
        }
    };
    if *camera_failing {
        events.emit(Event::alarm("camera_error", "frames again", None, false));
        *camera_failing = false;
    }
    shared.camera_down.store(false, Ordering::SeqCst);
    shared
        .last_frame_ns
        .store(ctx.clock.now_ns(), Ordering::Relaxed);
    Next::Frame(frame)
}

/// The source's loss counters, for the heartbeat and the summary.
fn publish_stream(ctx: &Ctx<'_>, source: &dyn Source) {
    let shared = ctx.shared;
    shared
        .frames_dropped
        .store(source.dropped(), Ordering::Relaxed);
    let s = source.stream_stats();
    shared
        .packets_missing
        .store(s.packets_missing, Ordering::Relaxed);
    shared
        .packets_resent
        .store(s.packets_resent, Ordering::Relaxed);
    shared
        .stream_underruns
        .store(s.underruns, Ordering::Relaxed);
    if let Some(f) = source.figures() {
        *shared.camera.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }
}

/// A frame that came in pieces: its part (made by it, or the photo-eye part it matches) fails
/// safe, never inspected on what arrived.
fn incomplete(ctx: &Ctx<'_>, sched: &mut Sender<SchedMsg>, frame: Frame, why: String) {
    ctx.shared
        .last_frame_ns
        .store(ctx.clock.now_ns(), Ordering::Relaxed);
    if let Some((part, _)) = arm(ctx, sched, &frame) {
        let _ = sched.send(SchedMsg::Incomplete {
            part,
            reason: format!("incomplete frame {}: {why}", frame.seq),
        });
    }
}

/// Free-running: the frame is the part. Returns (part, trigger time).
fn arm_by_frame(ctx: &Ctx<'_>, sched: &mut Sender<SchedMsg>, frame: &Frame) -> (u64, u64) {
    let part = ctx.next_part.fetch_add(1, Ordering::SeqCst) + 1;
    ctx.shared.note_trigger(frame.timestamp_ns);
    let info = PartInfo {
        part,
        trigger_ns: frame.timestamp_ns,
        deadline_ns: frame.timestamp_ns + ctx.delay_ns,
        frame: FrameFacts::of(frame),
    };
    let _ = sched.send(SchedMsg::Arm(info));
    (part, frame.timestamp_ns)
}

/// Photo-eye: the part whose edge this frame belongs to, or `None` (a stray frame, alarmed).
fn match_to_trigger(
    ctx: &Ctx<'_>,
    sched: &mut Sender<SchedMsg>,
    frame: &Frame,
) -> Option<(u64, u64)> {
    let shared = ctx.shared;
    // Let the trigger thread catch up to this frame's time first (it may run behind).
    let ts = frame.timestamp_ns;
    ctx.clock.wait_until(Some(ts + MATCH_WINDOW_NS), &|| {
        shared.trigger_progress.load(Ordering::SeqCst) >= ts
            || shared.trigger_idle.load(Ordering::SeqCst)
            || shared.is_done(TRIGGER)
    });
    let Some((part, trigger_ns)) = match_trigger(ctx.awaiting, ts) else {
        ctx.events.emit(Event::alarm(
            "stray_frame",
            format!("frame {} matches no photo-eye trigger", frame.seq),
            None,
            true,
        ));
        return None;
    };
    let _ = sched.send(SchedMsg::Matched {
        part,
        frame: FrameFacts::of(frame),
    });
    Some((part, trigger_ns))
}

/// Hand the frame to the engine queue; what it pushes out fails safe.
fn queue(
    ctx: &Ctx<'_>,
    sched: &mut Sender<SchedMsg>,
    triage: &Triage,
    part: u64,
    trigger_ns: u64,
    frame: Frame,
) {
    let line = &ctx.setup.line;
    let job = Job {
        part,
        trigger_ns,
        due_ns: (trigger_ns + ctx.delay_ns).saturating_sub(ctx.margin_ns),
        frame,
    };
    match triage.push(job, ctx.clock) {
        Pushed::Queued => {}
        Pushed::Evicted(old) => {
            let _ = sched.send(SchedMsg::Skipped {
                part: old.part,
                reason: format!(
                    "engine queue full ({} frames): the oldest frame made room for a new one",
                    line.queue
                ),
                frame: old.frame,
            });
        }
        Pushed::Closed(job) => {
            let _ = sched.send(SchedMsg::NotQueued {
                part: job.part,
                reason: "engine stopped".to_string(),
                frame: Some(job.frame),
            });
        }
    }
}

/// How far a frame may precede or follow its photo-eye edge.
const MATCH_WINDOW_NS: u64 = 200 * MS;

/// Pair a frame with the oldest waiting trigger in its window: (part, trigger time). Older
/// triggers are given up on (they fail safe at their deadline).
fn match_trigger(awaiting: &Awaiting, frame_ns: u64) -> Option<(u64, u64)> {
    let mut given_up = Vec::new();
    let found = {
        let mut q = awaiting.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match q.front() {
                Some(&(part, t)) if t + MATCH_WINDOW_NS < frame_ns => {
                    q.pop_front();
                    given_up.push(part);
                }
                Some(&(part, t)) if t <= frame_ns + MATCH_WINDOW_NS => {
                    q.pop_front();
                    break Some((part, t));
                }
                _ => break None,
            }
        }
    };
    // Logged after the lock is released: log output may block on I/O.
    for part in given_up {
        log::warn!(
            "part {part}: no frame within {} ms of its trigger",
            MATCH_WINDOW_NS / MS
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_match_in_order_within_window() {
        let q = Mutex::new(VecDeque::from(vec![(1, 0), (2, 100 * MS), (3, 700 * MS)]));
        assert_eq!(
            match_trigger(&q, 400 * MS),
            None,
            "1 and 2 too old, 3 too far ahead"
        );
        assert_eq!(q.lock().unwrap().len(), 1);
        assert_eq!(match_trigger(&q, 650 * MS), Some((3, 700 * MS)));
        assert_eq!(match_trigger(&q, 650 * MS), None);
    }
}
