//! Monotonic time for the line: the system's `CLOCK_MONOTONIC`, or a virtual clock for simulations.
//!
//! Every wait on the trigger-to-reject path goes through [`Clock::wait_until`], so a simulation
//! can run the real threads on virtual time (`sim::clock::SimClock` in tests and simulations).

use std::sync::Arc;
use std::time::Duration;

/// Nanoseconds in one millisecond.
pub const MS: u64 = 1_000_000;
/// One microsecond in nanoseconds.
pub const US: u64 = 1_000;

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
    /// Reach `t_ns` without giving up the CPU, for the last stretch before a timed edge
    /// (a virtual clock just sleeps).
    fn spin_until(&self, t_ns: u64) {
        self.sleep_until(t_ns);
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

    fn spin_until(&self, t_ns: u64) {
        // A thread that never sleeps needs no wake-up: on a kernel without PREEMPT_RT (or in a
        // VM) the wake-up is what comes late, by milliseconds, while reading the vDSO clock
        // in a loop stays within microseconds of `t_ns`.
        while monotonic_ns() < t_ns {
            std::hint::spin_loop();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_monotonic_and_sleeps() {
        let c = SystemClock::new();
        let a = c.now_ns();
        c.sleep_until(a + 2 * MS);
        assert!(c.now_ns() >= a + 2 * MS);
    }

    #[test]
    fn system_clock_spins_to_the_instant() {
        let c = SystemClock::new();
        let t = c.now_ns() + 2 * MS;
        c.spin_until(t);
        let after = c.now_ns();
        assert!(after >= t);
    }
}
