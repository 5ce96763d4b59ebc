//! The reject thread's inbox: one wait-free single-producer ring per sending stage.
//!
//! A multi-producer channel is lock-free but not wait-free for its receiver: crossbeam's
//! `try_recv` waits (spinning, then yielding) for a sender that has claimed a slot and not yet
//! written it. A sender preempted in that window by the SCHED_FIFO reject thread on the same
//! CPU cannot finish until the load balancer moves it, and the reject thread yields in a loop
//! meanwhile: pulses 48–59 ms late in 5 of 26 runs of 20 s on the 2-core dev VM (perf: the
//! reject thread in `sched_yield` for the whole stall). A single-producer ring (`rtrb`) makes
//! a message visible only once it is written, so the receiver never waits.
//!
//! Stages form a causal chain (trigger → capture → inspect: a part is armed before its frame
//! is matched, matched before it is inspected). [`Inbox::drain`] reads how much each ring
//! holds from the last stage back to the first, then takes those messages first stage first,
//! so a message is never seen before one that happened before it.

use crate::clock::{Clock, MS};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Messages one ring holds: the reject thread drains every ring at least once a millisecond
/// (its polling sleep), so a full ring means it has stalled for seconds.
pub const RING_CAPACITY: usize = 4096;

/// What the senders and the inbox share.
struct Common {
    /// Messages pushed and not yet taken, over all rings: the `ready` test of a waiting
    /// receiver, which must be `Sync` (a ring's consumer is not).
    pending: AtomicUsize,
    /// The inbox is gone: sends fail instead of waiting for room.
    closed: AtomicBool,
}

/// One stage's sending end.
pub struct Sender<T> {
    ring: rtrb::Producer<T>,
    common: Arc<Common>,
    clock: Arc<dyn Clock>,
}

/// The receiving end: every stage's ring, in causal order.
pub struct Inbox<T> {
    rings: Vec<rtrb::Consumer<T>>,
    /// Each ring's count at the start of a drain; kept so a drain allocates nothing.
    counts: Vec<usize>,
    common: Arc<Common>,
}

/// An inbox fed by `stages` senders, in causal order (the first stage's messages happen before
/// the second's that concern the same part).
pub fn inbox<T>(
    clock: &Arc<dyn Clock>,
    stages: usize,
    capacity: usize,
) -> (Vec<Sender<T>>, Inbox<T>) {
    let common = Arc::new(Common {
        pending: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
    });
    let (senders, rings): (Vec<_>, Vec<_>) = (0..stages)
        .map(|_| {
            let (ring, rx) = rtrb::RingBuffer::new(capacity);
            let tx = Sender {
                ring,
                common: common.clone(),
                clock: clock.clone(),
            };
            (tx, rx)
        })
        .unzip();
    let inbox = Inbox {
        counts: Vec::with_capacity(rings.len()),
        rings,
        common,
    };
    (senders, inbox)
}

impl<T> Sender<T> {
    /// Queue `msg`. A full ring is waited out (nothing is dropped: a message may be a verdict);
    /// the message comes back only when the inbox is gone.
    pub fn send(&mut self, msg: T) -> Result<(), T> {
        let mut msg = msg;
        loop {
            if self.common.closed.load(Ordering::Acquire) || self.ring.is_abandoned() {
                return Err(msg);
            }
            match self.ring.push(msg) {
                Ok(()) => {
                    self.common.pending.fetch_add(1, Ordering::Release);
                    self.clock.notify();
                    return Ok(());
                }
                Err(rtrb::PushError::Full(back)) => {
                    msg = back;
                    let now = self.clock.now_ns();
                    self.clock.sleep_until(now + MS);
                }
            }
        }
    }
}

impl<T> Inbox<T> {
    /// True when no message waits in any ring.
    pub fn is_empty(&self) -> bool {
        self.common.pending.load(Ordering::Acquire) == 0
    }

    /// A `Sync` test for "a message waits", for [`Clock::wait_until`].
    pub fn has_mail(&self) -> impl Fn() -> bool + Sync + '_ {
        let common = &*self.common;
        move || common.pending.load(Ordering::Acquire) > 0
    }

    /// Hand every message queued now to `f`, earlier stages first; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(T)) -> usize {
        // Counted last stage first: whatever a counted message of a later stage depends on
        // was pushed before it, so it is in its ring's count too.
        self.counts.clear();
        self.counts
            .extend(self.rings.iter().rev().map(|r| r.slots()));
        let mut taken = 0;
        for (ring, &n) in self.rings.iter_mut().zip(self.counts.iter().rev()) {
            for _ in 0..n {
                match ring.pop() {
                    Ok(msg) => {
                        taken += 1;
                        f(msg);
                    }
                    Err(_) => break,
                }
            }
        }
        self.common.pending.fetch_sub(taken, Ordering::AcqRel);
        taken
    }
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        self.common.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn clock() -> Arc<dyn Clock> {
        Arc::new(SystemClock::new())
    }

    #[test]
    fn messages_come_out_earlier_stages_first_and_in_order() {
        let (mut tx, mut rx) = inbox::<(usize, u32)>(&clock(), 3, 8);
        tx[2].send((2, 0)).unwrap();
        tx[0].send((0, 0)).unwrap();
        tx[1].send((1, 0)).unwrap();
        tx[0].send((0, 1)).unwrap();
        assert!(!rx.is_empty() && rx.has_mail()());
        let mut seen = Vec::new();
        assert_eq!(rx.drain(|m| seen.push(m)), 4);
        assert_eq!(seen, vec![(0, 0), (0, 1), (1, 0), (2, 0)]);
        assert!(rx.is_empty() && !rx.has_mail()());
    }

    #[test]
    fn a_message_is_never_seen_before_one_it_depends_on() {
        // Stage 0 arms part i, then hands i to stage 1 (through a side channel, as a frame
        // goes through triage), which reports it. The inbox must never show a report first.
        let (tx, mut rx) = inbox::<u64>(&clock(), 2, 64);
        let mut tx = tx.into_iter();
        let (mut arm, mut report) = (tx.next().unwrap(), tx.next().unwrap());
        let (hand_tx, hand_rx) = crossbeam_channel::unbounded::<u64>();
        const N: u64 = 20_000;
        let a = std::thread::spawn(move || {
            for i in 0..N {
                arm.send(i).unwrap();
                hand_tx.send(i).unwrap();
            }
        });
        let b = std::thread::spawn(move || {
            for i in hand_rx {
                report.send(i | 1 << 63).unwrap();
            }
        });
        let (mut armed, mut reported) = (0u64, 0u64);
        while reported < N {
            rx.drain(|m| {
                if m & 1 << 63 == 0 {
                    assert_eq!(m, armed);
                    armed += 1;
                } else {
                    let part = m & !(1 << 63);
                    assert!(part < armed, "report of part {part} before it was armed");
                    assert_eq!(part, reported);
                    reported += 1;
                }
            });
        }
        a.join().unwrap();
        b.join().unwrap();
    }

    #[test]
    fn a_full_ring_is_waited_out_and_a_closed_inbox_gives_the_message_back() {
        let (tx, mut rx) = inbox::<u32>(&clock(), 1, 2);
        let mut tx = tx.into_iter().next().unwrap();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        let sender = std::thread::spawn(move || {
            tx.send(3).unwrap(); // waits for room
            tx
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut seen = Vec::new();
        while seen.len() < 3 {
            rx.drain(|m| seen.push(m));
        }
        assert_eq!(seen, vec![1, 2, 3]);
        let mut tx = sender.join().unwrap();
        drop(rx);
        assert_eq!(tx.send(4), Err(4));
    }
}
