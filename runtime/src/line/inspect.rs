//! The inspect thread: batches from the deadline queue through the inspector; parts that can
//! no longer make their deadline are skipped (fail-safe) before they cost engine time. Every
//! score also goes past the drift watch, which alarms when the scores as a whole move away
//! from the calibration.

use super::inbox::Sender;
use super::reject::SchedMsg;
use super::shared::{CAPTURE, INSPECT};
use super::Ctx;
use crate::events::{Event, Events};
use crate::frame::Frame;
use crate::stages::drift::DriftWatch;
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
    let mut watch = drift_watch(&*inspector, ctx);
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
                ctx,
                &mut service,
                &mut watch,
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

/// The drift watch for this line, and a log line saying what it watches.
fn drift_watch(inspector: &dyn Inspector, ctx: &Ctx<'_>) -> DriftWatch {
    let cfg = &ctx.setup.drift;
    let reference = match inspector.good_scores() {
        Ok(r) => Some(r),
        Err(why) if cfg.window > 0 => {
            log::warn!("drift: the score-shift watch is off: {why}");
            None
        }
        Err(_) => None,
    };
    let watch = DriftWatch::new(cfg, reference, inspector.threshold());
    if watch.is_on() {
        log::info!(
            "drift: watching the last {} parts{}{}",
            cfg.window,
            reference.map_or(String::new(), |r| format!(
                ": median score against the calibration's good median {:.4} (alarm beyond {} x std {:.4})",
                r.median, cfg.max_shift_std, r.std
            )),
            cfg.max_reject_rate.map_or(String::new(), |m| format!(
                "; reject rate against {:.1} %",
                100.0 * m
            )),
        );
    }
    watch
}

/// One batch through the inspector, timed; a panic or a wrong result count fails every part
/// of the batch safe instead of taking the thread down.
fn run_batch(
    inspector: &mut dyn Inspector,
    ctx: &Ctx<'_>,
    service: &mut ServiceTime,
    watch: &mut DriftWatch,
    jobs: Vec<Job>,
    sched: &mut Sender<SchedMsg>,
) {
    let (clock, shared) = (ctx.clock, ctx.shared);
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
        let alarms = match &result {
            Ok(i) => {
                let alarms = watch.observe(i.score);
                if let Some(f) = watch.figures() {
                    *shared.drift.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
                }
                alarms
            }
            Err(_) => Vec::new(),
        };
        let part = job.part;
        let _ = sched.send(SchedMsg::Inspected {
            part,
            trigger_ns: job.trigger_ns,
            result,
            frame: job.frame,
        });
        emit(ctx.events, alarms, part);
    }
}

fn emit(events: &Events, alarms: Vec<crate::stages::drift::Alarm>, part: u64) {
    for a in alarms {
        events.emit(Event::alarm(a.code, a.message, Some(part), a.active));
    }
}
