//! How long the reject thread stays awake before a pulse: a window sized to the wake-up
//! lateness this thread has measured, within a CPU budget.
//!
//! Sleeping to a pulse makes it as late as the wake-up; spinning the last stretch keeps it on
//! time but takes a core from the engine, whose parallel loops then wait for it: at 2.5 × the
//! engine's rate a fixed 2 ms spin per pulse cut the parts inspected in time by a third on a
//! 2-core machine. The window covers what this kernel was seen to need, not a guess.

use crate::clock::{MS, US};

/// Timer wake-ups per bucket. The lateness estimate is the third largest of the last one or
/// two buckets (about their 99th percentile): a single stall of the VM, which no window short
/// of the cap would cover, does not hold the window wide for seconds after it.
const BUCKET: u32 = 256;
/// Timer wake-ups measured before the window leaves the cap (under a second).
const WARM_UP: u32 = 64;
/// Added to twice the lateness estimate, for the pulse's own few microseconds of work.
const FLOOR_NS: u64 = 50 * US;

/// The spin window before each pulse.
#[derive(Debug)]
pub(super) struct SpinWindow {
    cap_ns: u64,
    adaptive: bool,
    /// The three largest lateness values of the bucket being filled, largest first.
    cur_top: [u64; 3],
    /// The third largest of the last full bucket.
    prev_third: Option<u64>,
    in_bucket: u32,
    /// Largest window used (ns).
    pub widest_ns: u64,
    /// Time spent spinning (ns).
    pub spun_ns: u64,
}

impl SpinWindow {
    /// At most `cap_ns`; `adaptive` false: always `cap_ns` (the window while warming up, too).
    pub(super) fn new(cap_ns: u64, adaptive: bool) -> Self {
        Self {
            cap_ns,
            adaptive,
            cur_top: [0; 3],
            prev_third: None,
            in_bucket: 0,
            widest_ns: 0,
            spun_ns: 0,
        }
    }

    /// The window now (ns): twice the third largest lateness in the last 256 to 512 timer
    /// wake-ups, plus 50 us, at most the cap; the cap until 64 are known.
    pub(super) fn ns(&self) -> u64 {
        let late = match self.prev_third {
            Some(prev) => prev.max(self.cur_top[2]),
            None if self.in_bucket >= WARM_UP => self.cur_top[2],
            None => return self.cap_ns,
        };
        if self.adaptive {
            (2 * late + FLOOR_NS).min(self.cap_ns)
        } else {
            self.cap_ns
        }
    }

    /// A sleep meant to end at its deadline ended `late_ns` after it.
    pub(super) fn observe(&mut self, late_ns: u64) {
        let top = &mut self.cur_top;
        if late_ns > top[2] {
            top[2] = late_ns;
            top.sort_unstable_by(|a, b| b.cmp(a));
        }
        self.in_bucket += 1;
        if self.in_bucket == BUCKET {
            self.prev_third = Some(top[2]);
            *top = [0; 3];
            self.in_bucket = 0;
        }
    }

    /// A spin of `ns` before a pulse, with the window it was taken under.
    pub(super) fn spun(&mut self, ns: u64, window_ns: u64) {
        self.spun_ns += ns;
        self.widest_ns = self.widest_ns.max(window_ns);
    }
}

/// How much CPU the reject thread may spend spinning: at most half of every 100 ms.
///
/// Past the kernel's real-time share (`sched_rt_runtime_us`, 95 % of each second by default)
/// a SCHED_FIFO thread is stopped for the rest of the second, tens of ms, far worse than any
/// late wake-up; pulses closer together than the spin window would get there. Over budget,
/// the thread sleeps towards the pulse as it would with no spin window.
#[derive(Debug)]
pub(super) struct SpinBudget {
    window_start: u64,
    spent: u64,
    /// Pulses refused (each counted once, however often the thread asked for it).
    pub refused: u64,
    last_refused: Option<u64>,
    enabled: bool,
}

const SPIN_WINDOW_NS: u64 = 100 * MS;
const SPIN_PER_WINDOW_NS: u64 = SPIN_WINDOW_NS / 2;

impl SpinBudget {
    pub(super) fn new(spin_ns: u64) -> Self {
        Self {
            window_start: 0,
            spent: 0,
            refused: 0,
            last_refused: None,
            enabled: spin_ns > 0,
        }
    }

    /// Whether spinning from `now` to `until` fits; if so, it is charged.
    pub(super) fn take(&mut self, now: u64, until: u64) -> bool {
        if !self.enabled {
            return false;
        }
        if now.saturating_sub(self.window_start) >= SPIN_WINDOW_NS {
            self.window_start = now;
            self.spent = 0;
        }
        let cost = until.saturating_sub(now);
        if self.spent + cost > SPIN_PER_WINDOW_NS {
            if self.last_refused != Some(until) {
                self.refused += 1;
                self.last_refused = Some(until);
            }
            return false;
        }
        self.spent += cost;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spin_budget_is_half_of_each_window() {
        let mut b = SpinBudget::new(2 * MS);
        let t0 = 1_000 * MS;
        // 25 spins of 2 ms fill the 50 ms a 100 ms window allows; the 26th sleeps.
        for i in 0..25 {
            assert!(
                b.take(t0 + i * 3 * MS, t0 + i * 3 * MS + 2 * MS),
                "spin {i}"
            );
        }
        assert!(!b.take(t0 + 75 * MS, t0 + 77 * MS));
        assert!(
            !b.take(t0 + 76 * MS, t0 + 77 * MS),
            "the same pulse, asked again"
        );
        assert_eq!(b.refused, 1);
        // A new window starts the count again.
        assert!(b.take(t0 + 101 * MS, t0 + 103 * MS));
        assert!(!SpinBudget::new(0).take(t0, t0 + MS), "spin 0 never spins");
    }

    #[test]
    fn the_window_follows_the_lateness_seen_and_ignores_a_lone_stall() {
        let mut w = SpinWindow::new(2 * MS, true);
        assert_eq!(w.ns(), 2 * MS, "nothing measured yet: the cap");
        for _ in 0..WARM_UP - 1 {
            w.observe(40 * US);
        }
        assert_eq!(w.ns(), 2 * MS, "still warming up");
        w.observe(40 * US);
        assert_eq!(w.ns(), 130 * US, "twice 40 us, plus 50 us");
        // One or two stalls of the VM do not widen it; a third in the same span does.
        w.observe(3 * MS);
        w.observe(900 * US);
        assert_eq!(w.ns(), 130 * US);
        w.observe(300 * US);
        assert_eq!(w.ns(), 650 * US);
        // It stays that wide through the next bucket, then follows what is seen now.
        for _ in 0..BUCKET {
            w.observe(40 * US);
        }
        assert_eq!(w.ns(), 650 * US, "the last full bucket still counts");
        for _ in 0..BUCKET {
            w.observe(40 * US);
        }
        assert_eq!(w.ns(), 130 * US, "two buckets on");
        // Never beyond the cap, however late.
        for _ in 0..3 {
            w.observe(10 * MS);
        }
        assert_eq!(w.ns(), 2 * MS);
        // Not adaptive: the cap, whatever is seen.
        let mut fixed = SpinWindow::new(2 * MS, false);
        for _ in 0..2 * BUCKET {
            fixed.observe(10 * US);
        }
        assert_eq!(fixed.ns(), 2 * MS);
        assert_eq!(SpinWindow::new(0, true).ns(), 0, "spin 0: never");
    }
}
