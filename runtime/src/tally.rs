//! The reject stage's counters, published without a lock.
//!
//! The SCHED_FIFO reject thread writes; the health thread and the summary read. A shared mutex
//! let the reject thread wait behind an ordinary thread that was preempted while holding it
//! (priority inversion: pulses tens of ms late). This is a single-writer seqlock: the writer
//! never waits, a reader retries while a write is under way and so never sees a torn set (a
//! half-written set could break `triggers = passes + … + pending` and raise a false alarm).

use crate::events::Counters;
use std::sync::atomic::{fence, AtomicU64, Ordering};

macro_rules! fields {
    ($m:ident) => {
        $m!(
            triggers,
            passes,
            rejects,
            fault_rejects,
            fault_passes,
            pending,
            queue_full,
            skipped,
            late_verdicts,
            inspect_errors,
            pulses,
            frames_dropped,
            camera_errors,
            events_dropped,
            pin_errors,
            trigger_edges_lost,
            late_ejections,
            inspect_failures_in_row,
            archive_lost,
            frames_incomplete,
            packets_missing,
            packets_resent,
            stream_underruns
        )
    };
}

macro_rules! count {
    ($($f:ident),*) => { [$(stringify!($f)),*].len() };
}

const N: usize = fields!(count);

/// Counters that one thread publishes and any thread reads, lock-free.
#[derive(Debug, Default)]
pub struct Tally {
    seq: AtomicU64,
    cells: [AtomicU64; N],
}

fn to_cells(c: &Counters) -> [u64; N] {
    macro_rules! pack {
        ($($f:ident),*) => { [$(c.$f),*] };
    }
    fields!(pack)
}

fn from_cells(v: [u64; N]) -> Counters {
    macro_rules! unpack {
        ($($f:ident),*) => {{
            let mut it = v.into_iter();
            Counters { $($f: it.next().unwrap_or_default()),* }
        }};
    }
    fields!(unpack)
}

impl Tally {
    /// Publish `c`. Only one thread may write (the reject stage); it never blocks.
    pub fn publish(&self, c: &Counters) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (cell, v) in self.cells.iter().zip(to_cells(c)) {
            cell.store(v, Ordering::Relaxed);
        }
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// The last complete set published.
    pub fn read(&self) -> Counters {
        let mut tries = 0u32;
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 % 2 == 0 {
                let mut v = [0u64; N];
                for (out, cell) in v.iter_mut().zip(&self.cells) {
                    *out = cell.load(Ordering::Relaxed);
                }
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return from_cells(v);
                }
            }
            tries += 1;
            if tries % 64 == 0 {
                // The writer was preempted mid-write: let it run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_field_round_trips() {
        let mut c = Counters::default();
        macro_rules! set {
            ($($f:ident),*) => {{ let mut i = 1; $( c.$f = i; i += 1; )* let _ = i; }};
        }
        fields!(set);
        let t = Tally::default();
        t.publish(&c);
        assert_eq!(t.read(), c);
    }

    #[test]
    fn readers_never_see_a_torn_set() {
        let t = Arc::new(Tally::default());
        let w = t.clone();
        let writer = std::thread::spawn(move || {
            let mut c = Counters::default();
            for i in 0..200_000u64 {
                // keeps `balanced()` true in every complete set, false in most torn ones
                c.triggers = 2 * i;
                c.passes = i;
                c.pending = i;
                w.publish(&c);
            }
        });
        let mut reads = 0u64;
        while !writer.is_finished() || reads == 0 {
            let c = t.read();
            assert!(c.balanced(), "torn read: {c:?}");
            reads += 1;
        }
        writer.join().unwrap();
        assert!(reads > 0);
    }
}
