//! Which parts the engine spends its time on.
//!
//! A first-in-first-out engine under overload scores stale frames whose verdicts then arrive
//! after their part has passed the ejector: capacity spent for nothing, and the parts behind
//! them miss their deadline too (at 2.5× overload, 5 of 1800 parts were inspected in time).
//! Here every queued job carries the time its verdict is due, the engine's service time is
//! measured as it runs, and each batch is chosen so that it can still finish in time:
//! - a job that can no longer make its deadline, even alone, is skipped at once (its part fails
//!   safe now, and no engine time is spent on it);
//! - while the queue can be served oldest first with every job in time, it is (earliest
//!   deadline first: optimal for a feasible load, and no frame starves behind newer ones near
//!   capacity);
//! - otherwise the line is overloaded and the newest go first: they have the most slack, so a
//!   slow batch costs the fewest deadlines, and in steady overload the engine's whole capacity
//!   goes to parts that make it;
//! - a full queue evicts its oldest job (the one with the least slack) to admit a new frame.

use crate::clock::Clock;
use crate::frame::Frame;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A frame waiting for the engine.
#[derive(Debug)]
pub struct Job {
    /// Part number.
    pub part: u64,
    /// When the part was triggered.
    pub trigger_ns: u64,
    /// The latest time its verdict may reach the reject stage (deadline minus margin).
    pub due_ns: u64,
    /// The frame to inspect.
    pub frame: Frame,
}

/// The engine's queue: bounded, deadline-aware, newest first.
pub struct Triage {
    jobs: Mutex<VecDeque<Job>>,
    // Read by clock waiters, which must not take the lock (a simulated clock evaluates them
    // under its own lock).
    len: AtomicUsize,
    cap: usize,
    closed: std::sync::atomic::AtomicBool,
}

/// What became of a pushed job.
#[derive(Debug)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Queued; the queue was full and gave up its oldest job (to be skipped).
    Evicted(Job),
    /// The queue is closed (the engine stopped): the job comes back.
    Closed(Job),
}

/// What `take` decided.
#[derive(Default)]
pub struct Taken {
    /// Jobs to inspect now, newest first.
    pub batch: Vec<Job>,
    /// Jobs that cannot make their deadline: fail them safe, do not inspect them.
    pub skipped: Vec<Job>,
}

impl Triage {
    /// A queue of at most `cap` jobs.
    pub fn new(cap: usize) -> Self {
        Self {
            jobs: Mutex::new(VecDeque::with_capacity(cap)),
            len: AtomicUsize::new(0),
            cap: cap.max(1),
            closed: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `job`; when full, the oldest job is evicted and returned (to be skipped).
    pub fn push(&self, job: Job, clock: &dyn Clock) -> Pushed {
        if self.is_closed() {
            return Pushed::Closed(job);
        }
        let evicted = {
            let mut q = self.lock();
            let evicted = if q.len() >= self.cap {
                q.pop_front()
            } else {
                None
            };
            // Kept in due order so the oldest is at the front even if frames come out of order.
            let pos = q.partition_point(|j| j.due_ns <= job.due_ns);
            q.insert(pos, job);
            self.len.store(q.len(), Ordering::SeqCst);
            evicted
        };
        clock.notify();
        match evicted {
            Some(old) => Pushed::Evicted(old),
            None => Pushed::Queued,
        }
    }

    /// Choose the next batch of at most `max` jobs, given the time to inspect a batch of n
    /// frames: `typical` (what it usually takes) and `planned` (with headroom for noise).
    ///
    /// Giving up on a part cannot be undone, so a job is skipped only when it cannot make its
    /// deadline even at the typical speed, and the queue is served oldest first while every
    /// job could make it at that speed; batches are sized with the headroom.
    pub fn take(
        &self,
        now_ns: u64,
        max: usize,
        typical: impl Fn(usize) -> u64,
        planned: impl Fn(usize) -> u64,
    ) -> Taken {
        let mut q = self.lock();
        let mut out = Taken::default();
        let alone = now_ns + typical(1);
        let mut keep = VecDeque::with_capacity(q.len());
        for job in q.drain(..) {
            if job.due_ns < alone {
                out.skipped.push(job);
            } else {
                keep.push_back(job);
            }
        }
        let n = keep.len().min(max.max(1));
        if fifo_feasible(&keep, now_ns, &typical) {
            // Every queued job makes its deadline served oldest first: earliest deadline first
            // is optimal while the load is feasible, and keeps the oldest from starving behind
            // a steady stream of newer frames near capacity. The batch is as large as the
            // oldest allows.
            let k = batch_size(n, now_ns, |_| keep[0].due_ns, &planned);
            out.batch.extend(keep.drain(..k));
        } else {
            // Overloaded: the k newest finish together at now + service(k), the oldest of them
            // binds; the engine's time goes to parts that can still make it.
            let k = batch_size(n, now_ns, |k| keep[keep.len() - k].due_ns, &planned);
            out.batch.extend((0..k).filter_map(|_| keep.pop_back()));
        }
        *q = keep;
        self.len.store(q.len(), Ordering::SeqCst);
        out
    }

    /// Jobs waiting (lock-free).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// True when no job waits (lock-free).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuse new jobs (the engine stopped); returns those still queued.
    pub fn close(&self) -> Vec<Job> {
        self.closed.store(true, Ordering::SeqCst);
        let mut q = self.lock();
        self.len.store(0, Ordering::SeqCst);
        q.drain(..).collect()
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// The largest batch of at most `n` (at least 1 when n is) that finishes at
/// `now + planned(k)` by `due(k)`, the deadline of the job that binds a batch of k.
fn batch_size(
    n: usize,
    now_ns: u64,
    due: impl Fn(usize) -> u64,
    planned: &impl Fn(usize) -> u64,
) -> usize {
    let mut k = n;
    while k > 1 && due(k) < now_ns + planned(k) {
        k -= 1;
    }
    k
}

/// Whether serving `jobs` (in due order) oldest first lets each one make its deadline: the
/// i-th can finish no earlier than the work of the i + 1 oldest.
fn fifo_feasible(jobs: &VecDeque<Job>, now_ns: u64, service: &impl Fn(usize) -> u64) -> bool {
    jobs.iter()
        .enumerate()
        .all(|(i, j)| j.due_ns >= now_ns + service(i + 1))
}

/// The engine's measured time per batch: a mean and mean deviation per frame (as TCP estimates
/// round trips), so a noisy engine is planned with headroom.
#[derive(Debug, Clone, Default)]
pub struct ServiceTime {
    per_frame_ns: f64,
    dev_ns: f64,
    samples: u64,
}

impl ServiceTime {
    /// Record that a batch of `n` frames took `took_ns`.
    pub fn record(&mut self, n: usize, took_ns: u64) {
        let x = took_ns as f64 / n.max(1) as f64;
        if self.samples == 0 {
            self.per_frame_ns = x;
            self.dev_ns = x / 4.0;
        } else {
            self.dev_ns += 0.25 * ((x - self.per_frame_ns).abs() - self.dev_ns);
            // One slow batch (a page fault, another process) widens the headroom but barely
            // moves the typical time; a lasting slowdown still moves it within a few dozen.
            let bounded = x.clamp(0.5 * self.per_frame_ns, 1.5 * self.per_frame_ns);
            self.per_frame_ns += 0.125 * (bounded - self.per_frame_ns);
        }
        self.samples += 1;
    }

    /// Planned time for a batch of `n` frames, with headroom for noise (0 before the first
    /// measurement).
    pub fn estimate(&self, n: usize) -> u64 {
        (n as f64 * (self.per_frame_ns + 2.0 * self.dev_ns)) as u64
    }

    /// What a batch of `n` frames usually takes (0 before the first measurement).
    pub fn typical(&self, n: usize) -> u64 {
        (n as f64 * self.per_frame_ns) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MS;
    use crate::sim::clock::{SimClock, SimMode};

    fn job(part: u64, due: u64) -> Job {
        Job {
            part,
            trigger_ns: 0,
            due_ns: due,
            frame: Frame {
                seq: part,
                timestamp_ns: 0,
                width: 1,
                height: 1,
                format: crate::frame::PixelFormat::Grey8,
                data: vec![0],
                truth: None,
                origin: String::new(),
            },
        }
    }

    fn per100(n: usize) -> u64 {
        n as u64 * 100 * MS
    }

    fn parts(v: &[Job]) -> Vec<u64> {
        v.iter().map(|j| j.part).collect()
    }

    #[test]
    fn newest_first_and_hopeless_jobs_skipped() {
        let clock = SimClock::new(SimMode::Manual, 0);
        let t = Triage::new(8);
        for (p, due) in [(1, 50), (2, 150), (3, 250), (4, 290)] {
            assert!(matches!(t.push(job(p, due * MS), &clock), Pushed::Queued));
        }
        // 100 ms per frame at t = 0: part 1 (due at 50) cannot make it. Served oldest first
        // part 4 would end at 300, past its 290: overloaded, so the newest go first; a batch of
        // 2 ends at 200, which parts 3 and 4 both make.
        let got = t.take(0, 2, per100, per100);
        assert_eq!(parts(&got.skipped), vec![1]);
        assert_eq!(parts(&got.batch), vec![4, 3]);
        assert_eq!(t.len(), 1);
        // At 100 ms part 2 (due 150) cannot finish even alone (100 + 100 > 150).
        let got = t.take(100 * MS, 2, per100, per100);
        assert_eq!(parts(&got.skipped), vec![2]);
        assert!(got.batch.is_empty() && t.is_empty());
    }

    #[test]
    fn oldest_first_while_every_job_can_make_it() {
        let clock = SimClock::new(SimMode::Manual, 0);
        let t = Triage::new(8);
        for (p, due) in [(1, 250), (2, 350), (3, 400), (4, 500)] {
            t.push(job(p, due * MS), &clock);
        }
        // 100 ms per frame: served oldest first, two at a time, all make it (1 and 2 end at 200,
        // 3 and 4 at 400); newest first would have left parts 1 and 2 to the end (400 > 250).
        let got = t.take(0, 2, per100, per100);
        assert!(got.skipped.is_empty());
        assert_eq!(parts(&got.batch), vec![1, 2]);
        let got = t.take(200 * MS, 2, per100, per100);
        assert_eq!(parts(&got.batch), vec![3, 4]);
        // At 100 ms the third would end at 400, past its 390: overloaded, newest first again.
        for (p, due) in [(5, 300), (6, 350), (7, 390)] {
            t.push(job(p, due * MS), &clock);
        }
        let got = t.take(100 * MS, 1, per100, per100);
        assert_eq!(parts(&got.batch), vec![7]);
    }

    #[test]
    fn batch_shrinks_until_its_oldest_member_makes_it() {
        let clock = SimClock::new(SimMode::Manual, 0);
        let t = Triage::new(8);
        for (p, due) in [(1, 150), (2, 250), (3, 260)] {
            t.push(job(p, due * MS), &clock);
        }
        // Overloaded (oldest first, part 3 would end at 300, past its 260), so newest first:
        // three together end at 300 ms (part 2 would miss), two end at 200 (part 2 makes it).
        let got = t.take(0, 3, per100, per100);
        assert!(got.skipped.is_empty());
        assert_eq!(parts(&got.batch), vec![3, 2]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn full_queue_evicts_the_oldest_and_closed_queue_refuses() {
        let clock = SimClock::new(SimMode::Manual, 0);
        let t = Triage::new(2);
        t.push(job(1, 100), &clock);
        t.push(job(2, 200), &clock);
        assert!(matches!(t.push(job(3, 300), &clock), Pushed::Evicted(j) if j.part == 1));
        assert_eq!(parts(&t.close()), vec![2, 3]);
        assert!(matches!(t.push(job(4, 400), &clock), Pushed::Closed(j) if j.part == 4));
    }

    #[test]
    fn service_estimate_has_headroom_for_noise() {
        let mut s = ServiceTime::default();
        assert_eq!(s.estimate(4), 0);
        for took in [80, 120, 80, 120, 80, 120] {
            s.record(1, took * MS);
        }
        let one = s.estimate(1);
        assert!(one > 100 * MS && one < 200 * MS, "{one}");
        assert!(s.estimate(2).abs_diff(2 * one) <= 1);
    }

    #[test]
    fn one_slow_batch_widens_the_headroom_not_the_typical_time() {
        let mut s = ServiceTime::default();
        for _ in 0..5 {
            s.record(1, 80 * MS);
        }
        s.record(1, 330 * MS);
        assert!(s.typical(1) < 90 * MS, "{}", s.typical(1));
        assert!(s.estimate(1) > 150 * MS, "{}", s.estimate(1));
    }
}
