//! The inspect thread: batches from the deadline queue through the inspector; parts that can
//! no longer make their deadline are skipped (fail-safe) before they cost engine time.

use super::inbox::Sender;
use super::reject::SchedMsg;
use super::shared::{Shared, CAPTURE, INSPECT};
use super::Ctx;
use crate::clock::Clock;
use crate::frame::Frame;
use crate::stages::inspect::{Inspection, Inspector};
use crate::stages::triage::{Job, ServiceTime, Triage};
use std::sync::atomic::Ordering;

/// Inspect until capture has ended and the queue is empty; then fail safe what is left.
pub(super) fn inspect_loop(
    mut inspector: Box<dyn Inspector>,
    ctx: &Ctx<'_>,
    triage: &Triage,
    sched: &mut Sender<SchedMsg>,
    maps: &mut rtrb::Consumer<Vec<f32>>,
) {
    let (clock, shared, tick) = (ctx.clock, ctx.shared, ctx.tick);
    let batch = inspector.batch_size().max(1);
    let mut service = ServiceTime::default();
    loop {
        shared.stamp(INSPECT, clock);
        if triage.is_empty() {
            clock.wait_until(Some(clock.now_ns() + tick), &|| !triage.is_empty());
            if triage.is_empty() {
                if shared.is_done(CAPTURE) {
                    break;
                }
                continue;
            }
        }
        let now = clock.now_ns();
        let taken = triage.take(now, batch, |n| service.typical(n), |n| service.estimate(n));
        for job in taken.skipped {
            let reason = format!(
                "verdict due in {:.1} ms, the engine needs {:.1} ms",
                job.due_ns.saturating_sub(now) as f64 / 1e6,
                service.typical(1) as f64 / 1e6
            );
            let _ = sched.send(SchedMsg::Skipped {
                part: job.part,
                reason,
                frame: job.frame,
            });
        }
        while let Ok(map) = maps.pop() {
            inspector.recycle_map(map);
        }
        if !taken.batch.is_empty() {
            run_batch(
                &mut *inspector,
                clock,
                shared,
                &mut service,
                taken.batch,
                sched,
            );
        }
    }
    for job in triage.close() {
        let _ = sched.send(SchedMsg::NotQueued {
            part: job.part,
            reason: "engine stopped".to_string(),
            frame: Some(job.frame),
        });
    }
}

/// One batch through the inspector, timed; a panic or a wrong result count fails every part
/// of the batch safe instead of taking the thread down.
fn run_batch(
    inspector: &mut dyn Inspector,
    clock: &dyn Clock,
    shared: &Shared,
    service: &mut ServiceTime,
    jobs: Vec<Job>,
    sched: &mut Sender<SchedMsg>,
) {
    let refs: Vec<&Frame> = jobs.iter().map(|j| &j.frame).collect();
    let t0 = clock.now_ns();
    let results =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inspector.inspect(&refs)));
    let took = clock.now_ns().saturating_sub(t0);
    shared.engine_busy_ns.fetch_add(took, Ordering::Relaxed);
    shared
        .inspections
        .fetch_add(jobs.len() as u64, Ordering::Relaxed);
    let results: Vec<Result<Inspection, String>> = match results {
        Ok(r) if r.len() == jobs.len() => {
            service.record(jobs.len(), took);
            r.into_iter().map(|r| r.map_err(|e| e.0)).collect()
        }
        Ok(r) => vec![
            Err(format!(
                "inspector returned {} results for {} frames",
                r.len(),
                jobs.len()
            ));
            jobs.len()
        ],
        Err(_) => vec![Err("inspector panicked".to_string()); jobs.len()],
    };
    for (job, result) in jobs.into_iter().zip(results) {
        let _ = sched.send(SchedMsg::Inspected {
            part: job.part,
            trigger_ns: job.trigger_ns,
            result,
            frame: job.frame,
        });
    }
}
