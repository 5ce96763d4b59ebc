//! The inspect thread: batches from the deadline queue through the live model's inspector;
//! parts that can no longer make their deadline are skipped (fail-safe) before they cost engine
//! time. Every score also goes past the drift watch, which alarms when the scores as a whole
//! move away from the calibration. Between two batches it carries out the model commands of
//! the control socket (`line::models`), and gives a shadowing candidate the frames it has time
//! for after their live verdicts went out.

use super::inbox::Sender;
use super::models::{ModelCmd, Models};
use super::reject::SchedMsg;
use super::shared::{CAPTURE, INSPECT};
use super::Ctx;
use crate::events::{Event, Events};
use crate::frame::Frame;
use crate::sinks::reject::Judge;
use crate::stages::drift::DriftWatch;
use crate::stages::inspect::{Inspection, Inspector};
use crate::stages::triage::{Job, ServiceTime, Triage};
use std::sync::atomic::Ordering;

/// Inspect until capture has ended and the queue is empty; then fail safe what is left.
pub(super) fn inspect_loop(
    mut models: Models,
    cmds: Option<crossbeam_channel::Receiver<ModelCmd>>,
    ctx: &Ctx<'_>,
    triage: &Triage,
    sched: &mut Sender<SchedMsg>,
    maps: &mut rtrb::Consumer<Vec<f32>>,
) {
    let (clock, shared, tick) = (ctx.clock, ctx.shared, ctx.tick);
    let mut service = ServiceTime::default();
    let mut watch = drift_watch(&*models.live().inspector, ctx);
    // The live scores of the batch just run, for a shadowing candidate (reused).
    let mut live_scores = Vec::new();
    loop {
        shared.stamp(INSPECT, clock);
        // Model commands between batches: a switch lands on a part boundary.
        while let Some(cmd) = cmds.as_ref().and_then(|c| c.try_recv().ok()) {
            if models.handle(cmd, ctx.events, clock.now_ns()) {
                watch = drift_watch(&*models.live().inspector, ctx);
                service = ServiceTime::default();
            }
        }
        if triage.is_empty() {
            // A model command wakes it too: a promote on an idle line lands at once, not a
            // tick later.
            let cmd_waiting = || cmds.as_ref().is_some_and(|c| !c.is_empty());
            clock.wait_until(Some(clock.now_ns() + tick), &|| {
                !triage.is_empty() || cmd_waiting()
            });
            if cmd_waiting() {
                continue;
            }
            if triage.is_empty() {
                if shared.is_done(CAPTURE) {
                    break;
                }
                continue;
            }
        }
        let batch = models.live().inspector.batch_size().max(1);
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
            models.live().inspector.recycle_map(map);
        }
        if !taken.batch.is_empty() {
            let n = taken.batch.len();
            let last_part = taken.batch.iter().map(|j| j.part).max().unwrap_or(0);
            let last_trigger = shared.last_trigger_ns.load(Ordering::Relaxed);
            let copies = if models.shadow_wanted(
                triage.is_empty(),
                &service,
                n,
                clock.now_ns(),
                last_trigger,
            ) {
                let frames: Vec<&Frame> = taken.batch.iter().map(|j| &j.frame).collect();
                let parts = taken.batch.iter().map(|j| j.part).collect();
                models.copy_for_shadow(&frames, parts)
            } else {
                models.not_compared(n);
                None
            };
            let judge = models.live().judge();
            run_batch(
                &mut *models.live().inspector,
                judge,
                ctx,
                &mut service,
                &mut watch,
                taken.batch,
                sched,
                &mut live_scores,
            );
            models.judged(n, last_part);
            if let Some(copies) = copies {
                // Only when nothing arrived meanwhile: a live part never waits for the candidate.
                if triage.is_empty() {
                    models.shadow(copies, &live_scores, clock, ctx.events);
                } else {
                    models.not_compared(n);
                }
            }
        }
    }
    models.finish(ctx.events);
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
/// of the batch safe instead of taking the thread down. `scores` gets the scores, in the
/// batch's order.
#[allow(clippy::too_many_arguments)]
fn run_batch(
    inspector: &mut dyn Inspector,
    judge: Judge,
    ctx: &Ctx<'_>,
    service: &mut ServiceTime,
    watch: &mut DriftWatch,
    jobs: Vec<Job>,
    sched: &mut Sender<SchedMsg>,
    scores: &mut Vec<Option<f32>>,
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
    scores.clear();
    for (job, result) in jobs.into_iter().zip(results) {
        scores.push(result.as_ref().ok().map(|i| i.score));
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
            judge: judge.clone(),
        });
        emit(ctx.events, alarms, part);
    }
}

fn emit(events: &Events, alarms: Vec<crate::stages::drift::Alarm>, part: u64) {
    for a in alarms {
        events.emit(Event::alarm(a.code, a.message, Some(part), a.active));
    }
}
