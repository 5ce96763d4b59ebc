//! Virtual time for simulations and tests: a conservative discrete-event clock.
//!
//! In auto mode it advances to the earliest pending deadline only when no registered thread is
//! running and no waiting thread is ready to wake (e.g. has a message queued), so results do
//! not depend on how fast the machine is.

use crate::clock::{Clock, Ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// How a [`SimClock`] moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimMode {
    /// Time moves only when the test calls [`SimClock::advance_to`].
    Manual,
    /// Time jumps to the next deadline as soon as every held unit of work is waiting.
    Auto,
}

struct Waiter {
    id: u64,
    deadline: Option<u64>,
    // Borrowed from the waiting thread's stack while it is registered: `Registered` removes the
    // entry before `wait_until` returns or unwinds, so no pointer outlives its borrow.
    ready: *const Ready<'static>,
}

struct SimState {
    now: u64,
    busy: i64,
    waiters: Vec<Waiter>,
}

// SAFETY: the raw `ready` pointers are only dereferenced under the state lock while their
// owners are inside `wait_until` (see `Registered`), and `Ready` is `Sync`.
unsafe impl Send for SimState {}

/// Virtual time for simulations and tests.
pub struct SimClock {
    mode: SimMode,
    state: Mutex<SimState>,
    cv: Condvar,
    next_id: AtomicU64,
}

/// A waiter's registration: on unwinding (a `ready` that panics) it removes the entry, so no
/// other thread ever calls through a pointer to a dead stack frame.
struct Registered<'a> {
    clock: &'a SimClock,
    id: u64,
    armed: bool,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut s = lock(&self.clock.state);
            s.waiters.retain(|w| w.id != self.id);
            s.busy += 1;
        }
    }
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
            }),
            cv: Condvar::new(),
            next_id: AtomicU64::new(0),
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

    /// Threads registered in `wait_until` now.
    pub fn waiting(&self) -> usize {
        lock(&self.state).waiters.len()
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Declared before the state guard, so on unwinding the guard is released first.
        let mut registered = Registered {
            clock: self,
            id,
            armed: true,
        };
        let mut s = lock(&self.state);
        // SAFETY: erases the borrow's lifetime; `registered` removes the entry on every exit.
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
        // Leave under the same lock that decided the result, so no other thread sees this one
        // as waiting while it already runs.
        s.waiters.retain(|w| w.id != id);
        s.busy += 1;
        registered.armed = false;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Held, MS};
    use crate::line::inbox::inbox;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

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
        let (tx, mut rx) = inbox::<u64>(&clock, 1, 4);
        let mut tx = tx.into_iter().next().expect("one ring");
        // Both threads count as running before either starts, or time could run ahead.
        let (held_c, held_p) = (Held::new(clock.clone()), Held::new(clock.clone()));
        let c = clock.clone();
        let held = held_c;
        let consumer = thread::spawn(move || {
            let _h = held;
            let mut seen = Vec::new();
            while c.wait_until(Some(1_000 * MS), &rx.has_mail()) {
                rx.drain(|v| seen.push((v, c.now_ns())));
            }
            seen
        });
        let c = clock.clone();
        let held = held_p;
        let producer = thread::spawn(move || {
            let _h = held;
            for i in 1..=3 {
                c.sleep_until(i * 100 * MS);
                tx.send(i).unwrap();
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
    fn a_panicking_ready_leaves_no_waiter_behind() {
        let clock = Arc::new(SimClock::new(SimMode::Auto, 0));
        let c = clock.clone();
        let r = thread::spawn(move || {
            let ready = || -> bool { panic!("ready fails") };
            c.wait_until(Some(10 * MS), &ready)
        })
        .join();
        assert!(r.is_err(), "the panic reaches the waiting thread");
        assert_eq!(clock.waiting(), 0, "its registration went with it");
        // Time still moves for the next waiter: nothing calls the dead closure.
        let _held = Held::new(clock.clone() as Arc<dyn Clock>);
        assert!(!clock.wait_until(Some(20 * MS), &|| false));
        assert_eq!(clock.now_ns(), 20 * MS);
    }
}
