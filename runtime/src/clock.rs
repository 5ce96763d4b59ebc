//! Monotonic time for the line: the system's `CLOCK_MONOTONIC`, or a virtual clock for simulations.
//!
//! Every wait on the trigger-to-reject path goes through [`Clock::wait_until`], so a simulation
//! can run the real threads on virtual time. [`SimClock`] in auto mode is a conservative
//! discrete-event clock: it advances to the earliest pending deadline only when no registered
//! thread is running and no waiting thread is ready to wake (e.g. has a message queued), so
//! results do not depend on how fast the machine is.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Nanoseconds in one millisecond.
pub const MS: u64 = 1_000_000;

/// The condition a waiter wakes on.
pub type Ready<'a> = dyn Fn() -> bool + Sync + 'a;

/// A monotonic clock the line's threads wait on.
pub trait Clock: Send + Sync {
    /// Monotonic time in nanoseconds.
    fn now_ns(&self) -> u64;
    /// Block until `ready()` holds (returns true) or the clock reaches `deadline_ns` (false).
    ///
    /// `ready` may be evaluated often and from another waiting thread (the simulated clock holds
    /// its lock meanwhile); it must be cheap and must not block or touch the clock.
    fn wait_until(&self, deadline_ns: Option<u64>, ready: &Ready<'_>) -> bool;
    /// Wake waiters so they re-check their `ready` condition; call after making something ready.
    fn notify(&self);
    /// Count one running thread that holds virtual time (see [`Held`]).
    fn hold(&self) {}
    /// Give back one unit counted by [`Clock::hold`].
    fn release(&self) {}
    /// Block until the clock reaches `t_ns`.
    fn sleep_until(&self, t_ns: u64) {
        self.wait_until(Some(t_ns), &|| false);
    }
}

/// Holds one unit of clock work for as long as it lives (a stage thread's whole life).
///
/// Create every thread's guard before spawning any of them: a simulated clock advances as soon
/// as the units it knows about are all waiting.
pub struct Held(Arc<dyn Clock>);

impl Held {
    /// Count the calling context as running on `clock` until the guard drops.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        clock.hold();
        Self(clock)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The system's `CLOCK_MONOTONIC` (the clock kernel GPIO and V4L2 timestamps use).
///
/// Waiters poll their condition in short sleeps instead of sharing a mutex and condvar: with a
/// shared lock, the SCHED_FIFO reject thread could wait behind a preempted ordinary thread that
/// holds it (priority inversion; seen as rejects tens of ms late on a loaded machine).
#[derive(Debug, Default)]
pub struct SystemClock;

/// Longest sleep between two checks of a waiter's condition: the most a message waits.
const POLL_NS: u64 = 1_000_000;

impl SystemClock {
    /// A new handle on the system clock.
    pub fn new() -> Self {
        Self
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }

    fn wait_until(&self, deadline_ns: Option<u64>, ready: &Ready<'_>) -> bool {
        loop {
            if ready() {
                return true;
            }
            let now = monotonic_ns();
            let slice = match deadline_ns {
                Some(d) if now >= d => return false,
                Some(d) => (d - now).min(POLL_NS),
                None => POLL_NS,
            };
            std::thread::sleep(Duration::from_nanos(slice));
        }
    }

    fn notify(&self) {
        // Waiters poll; nothing to wake.
    }
}

/// Receive from `rx` by polling (1 ms sleeps) instead of blocking; `None` once it is closed.
///
/// A receiver blocked in `recv` registers with the channel, and every sender then takes the
/// channel's waker lock to wake it. For queues the SCHED_FIFO reject thread sends into (events,
/// archive) that lock could make it wait behind a preempted ordinary thread; a polling
/// receiver never registers, so sending stays lock-free.
pub fn poll_recv<T>(rx: &crossbeam_channel::Receiver<T>) -> Option<T> {
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
            Err(crossbeam_channel::TryRecvError::Empty) => {
                std::thread::sleep(Duration::from_nanos(POLL_NS))
            }
        }
    }
}

/// How a [`SimClock`] moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimMode {
    /// Time moves only when the test calls [`SimClock::advance_to`] / [`SimClock::advance_by`].
    Manual,
    /// Time jumps to the next deadline as soon as every held unit of work is waiting.
    Auto,
}

struct Waiter {
    id: u64,
    deadline: Option<u64>,
    // Borrowed from the waiting thread's stack for as long as it is registered (see wait_until).
    ready: *const Ready<'static>,
}

struct SimState {
    now: u64,
    busy: i64,
    waiters: Vec<Waiter>,
    next_id: u64,
}

// SAFETY: the raw `ready` pointers are only dereferenced under the state lock while their
// owners are blocked inside `wait_until`, and `Ready` is `Sync`.
unsafe impl Send for SimState {}

/// Virtual time for simulations and tests.
pub struct SimClock {
    mode: SimMode,
    state: Mutex<SimState>,
    cv: Condvar,
}

impl SimClock {
    /// A virtual clock starting at `start_ns`.
    pub fn new(mode: SimMode, start_ns: u64) -> Self {
        Self {
            mode,
            state: Mutex::new(SimState {
                now: start_ns,
                busy: 0,
                waiters: Vec::new(),
                next_id: 0,
            }),
            cv: Condvar::new(),
        }
    }

    /// Move virtual time forward to `t_ns` (never backwards) and wake whoever is due.
    pub fn advance_to(&self, t_ns: u64) {
        let mut s = lock(&self.state);
        if t_ns > s.now {
            s.now = t_ns;
        }
        self.cv.notify_all();
    }

    /// Move virtual time forward by `dt_ns`.
    pub fn advance_by(&self, dt_ns: u64) {
        let now = self.now_ns();
        self.advance_to(now + dt_ns);
    }

    fn maybe_advance(&self, s: &mut SimState) {
        if self.mode != SimMode::Auto || s.busy > 0 {
            return;
        }
        // SAFETY: see `SimState`: each pointer is live while its waiter is registered.
        if s.waiters.iter().any(|w| unsafe { (*w.ready)() }) {
            // Someone can make progress at the current time; it was notified and will run.
            self.cv.notify_all();
            return;
        }
        if let Some(next) = s.waiters.iter().filter_map(|w| w.deadline).min() {
            if next > s.now {
                s.now = next;
            }
            self.cv.notify_all();
        }
    }
}

impl Clock for SimClock {
    fn now_ns(&self) -> u64 {
        lock(&self.state).now
    }

    fn wait_until(&self, deadline_ns: Option<u64>, ready: &Ready<'_>) -> bool {
        let mut s = lock(&self.state);
        let id = s.next_id;
        s.next_id += 1;
        // SAFETY: erases the borrow's lifetime; the entry is removed below before returning.
        let ready_ptr: *const Ready<'static> =
            unsafe { std::mem::transmute::<&Ready<'_>, &'static Ready<'static>>(ready) };
        s.waiters.push(Waiter {
            id,
            deadline: deadline_ns,
            ready: ready_ptr,
        });
        s.busy -= 1;
        let result = loop {
            if ready() {
                break true;
            }
            if deadline_ns.is_some_and(|d| s.now >= d) {
                break false;
            }
            self.maybe_advance(&mut s);
            if deadline_ns.is_some_and(|d| s.now >= d) {
                continue;
            }
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        };
        s.waiters.retain(|w| w.id != id);
        s.busy += 1;
        result
    }

    fn notify(&self) {
        let _g = lock(&self.state);
        self.cv.notify_all();
    }

    fn hold(&self) {
        lock(&self.state).busy += 1;
    }

    fn release(&self) {
        let mut s = lock(&self.state);
        s.busy -= 1;
        self.maybe_advance(&mut s);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking thread must not take the clock down with it: the data stays consistent
    // because every critical section here is a few plain assignments.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A channel whose receiver waits on the clock (so a simulated clock sees queued messages).
pub mod chan {
    use super::Clock;
    use crossbeam_channel::{Receiver, Sender, TrySendError};
    use std::sync::Arc;

    /// Sending half; `try_send` never blocks.
    pub struct Tx<T> {
        tx: Sender<T>,
        clock: Arc<dyn Clock>,
    }

    impl<T> Clone for Tx<T> {
        fn clone(&self) -> Self {
            Self {
                tx: self.tx.clone(),
                clock: self.clock.clone(),
            }
        }
    }

    /// Receiving half; waits on the clock.
    pub struct Rx<T> {
        rx: Receiver<T>,
        clock: Arc<dyn Clock>,
    }

    /// A clocked channel of `cap` messages (`None`: unbounded).
    pub fn channel<T>(clock: &Arc<dyn Clock>, cap: Option<usize>) -> (Tx<T>, Rx<T>) {
        let (tx, rx) = match cap {
            Some(c) => crossbeam_channel::bounded(c),
            None => crossbeam_channel::unbounded(),
        };
        (
            Tx {
                tx,
                clock: clock.clone(),
            },
            Rx {
                rx,
                clock: clock.clone(),
            },
        )
    }

    impl<T> Tx<T> {
        /// Queue `msg` without blocking; gives it back when the queue is full or closed.
        pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
            self.tx.try_send(msg)?;
            self.clock.notify();
            Ok(())
        }

        /// Messages waiting in the queue.
        pub fn len(&self) -> usize {
            self.tx.len()
        }

        /// True when no message waits.
        pub fn is_empty(&self) -> bool {
            self.tx.is_empty()
        }
    }

    impl<T: Send> Rx<T> {
        /// Take one message if there is one.
        pub fn try_recv(&self) -> Option<T> {
            self.rx.try_recv().ok()
        }

        /// Wait for a message until `deadline_ns` (clock time); `None` on timeout.
        pub fn recv_until(&self, deadline_ns: Option<u64>) -> Option<T> {
            self.clock.wait_until(deadline_ns, &|| !self.rx.is_empty());
            self.try_recv()
        }

        /// True when no message waits.
        pub fn is_empty(&self) -> bool {
            self.rx.is_empty()
        }

        /// Messages waiting in the queue.
        pub fn len(&self) -> usize {
            self.rx.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn auto_clock_jumps_to_earliest_deadline_when_all_wait() {
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(SimMode::Auto, 0));
        let mut handles = Vec::new();
        let guards: Vec<Held> = (0..3).map(|_| Held::new(clock.clone())).collect();
        for (d, held) in [30 * MS, 10 * MS, 20 * MS].into_iter().zip(guards) {
            let c = clock.clone();
            handles.push(thread::spawn(move || {
                let _h = held;
                c.sleep_until(d);
                c.now_ns()
            }));
        }
        let woke: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(woke, vec![30 * MS, 10 * MS, 20 * MS]);
    }

    #[test]
    fn auto_clock_waits_for_undelivered_messages() {
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(SimMode::Auto, 0));
        let (tx, rx) = chan::channel::<u64>(&clock, Some(4));
        // Both threads count as running before either starts, or time could run ahead.
        let (held_c, held_p) = (Held::new(clock.clone()), Held::new(clock.clone()));
        let c = clock.clone();
        let held = held_c;
        let consumer = thread::spawn(move || {
            let _h = held;
            let mut seen = Vec::new();
            while let Some(v) = rx.recv_until(Some(1_000 * MS)) {
                seen.push((v, c.now_ns()));
            }
            seen
        });
        let c = clock.clone();
        let held = held_p;
        let producer = thread::spawn(move || {
            let _h = held;
            for i in 1..=3 {
                c.sleep_until(i * 100 * MS);
                tx.try_send(i).unwrap();
            }
        });
        producer.join().unwrap();
        let seen = consumer.join().unwrap();
        assert_eq!(seen, vec![(1, 100 * MS), (2, 200 * MS), (3, 300 * MS)]);
    }

    #[test]
    fn manual_clock_only_moves_when_told() {
        let clock = Arc::new(SimClock::new(SimMode::Manual, 5));
        let c = clock.clone();
        let t = thread::spawn(move || {
            c.sleep_until(50);
            c.now_ns()
        });
        thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished());
        clock.advance_to(60);
        assert_eq!(t.join().unwrap(), 60);
    }

    #[test]
    fn system_clock_is_monotonic_and_sleeps() {
        let c = SystemClock::new();
        let a = c.now_ns();
        c.sleep_until(a + 2 * MS);
        assert!(c.now_ns() >= a + 2 * MS);
    }
}
