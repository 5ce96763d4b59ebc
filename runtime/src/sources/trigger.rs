//! The photo-eye: one part per rising edge, read from the kernel's numbered events (or
//! simulated), with the edges the kernel dropped counted.

use crate::clock::Clock;
use crate::gpio::{cdev, events_lost, GpioConfig, LineEvents, LineRef, PinError, TriggerRequest};
use std::sync::Arc;

/// A photo-eye edge: a part entered the trigger point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerEdge {
    /// Kernel (or simulated) timestamp on the line's clock.
    pub t_ns: u64,
    /// Kernel sequence number of the edge on its line.
    pub seq: u64,
    /// Part edges the kernel dropped (event buffer full) since the previous one read: parts
    /// that passed the photo-eye and were never armed.
    pub lost: u64,
}

/// Source of photo-eye edges.
pub trait TriggerInput: Send {
    /// Wait up to `timeout_ms` for the next edge.
    fn next_edge(&mut self, timeout_ms: u64) -> Result<Option<TriggerEdge>, PinError>;
    /// Whether an edge is already waiting to be read (false: none happened up to now).
    fn pending(&mut self) -> Result<bool, PinError>;
}

/// The photo-eye as the kernel reports it: one part per rising event, with the events the
/// kernel dropped counted from its own numbering. The same code reads the character device
/// and the fakes.
pub struct EdgeTrigger<E> {
    events: E,
    last_seqno: Option<u32>,
    lost: u64,
}

impl<E: LineEvents> EdgeTrigger<E> {
    /// Read parts from `events`, a request made with [`TriggerRequest::for_line`].
    pub fn new(events: E) -> Self {
        Self {
            events,
            last_seqno: None,
            lost: 0,
        }
    }
}

impl<E: LineEvents> TriggerInput for EdgeTrigger<E> {
    fn pending(&mut self) -> Result<bool, PinError> {
        self.events.has_event()
    }

    fn next_edge(&mut self, timeout_ms: u64) -> Result<Option<TriggerEdge>, PinError> {
        if !self.events.wait_event(timeout_ms)? {
            return Ok(None);
        }
        let ev = self.events.read_event()?;
        // Every event read advances the numbering, parts or not, so only real drops show.
        self.lost += events_lost(self.last_seqno, ev.line_seqno);
        self.last_seqno = Some(ev.line_seqno);
        if !ev.rising {
            return Ok(None);
        }
        Ok(Some(TriggerEdge {
            t_ns: ev.t_ns,
            seq: u64::from(ev.line_seqno),
            lost: std::mem::take(&mut self.lost),
        }))
    }
}

/// Simulated photo-eye: replays a list of edge times on the clock.
pub struct SimTrigger {
    clock: Arc<dyn Clock>,
    times: std::collections::VecDeque<u64>,
    seq: u64,
}

impl SimTrigger {
    /// Edges at the given clock times (ascending).
    pub fn new(clock: Arc<dyn Clock>, times: impl IntoIterator<Item = u64>) -> Self {
        Self {
            clock,
            times: times.into_iter().collect(),
            seq: 0,
        }
    }
}

impl TriggerInput for SimTrigger {
    fn pending(&mut self) -> Result<bool, PinError> {
        Ok(self
            .times
            .front()
            .is_some_and(|&t| t <= self.clock.now_ns()))
    }

    fn next_edge(&mut self, timeout_ms: u64) -> Result<Option<TriggerEdge>, PinError> {
        let limit = self.clock.now_ns() + timeout_ms * crate::clock::MS;
        match self.times.front().copied() {
            Some(t) if t <= limit => {
                self.clock.sleep_until(t);
                self.times.pop_front();
                self.seq += 1;
                Ok(Some(TriggerEdge {
                    t_ns: t,
                    seq: self.seq,
                    lost: 0,
                }))
            }
            _ => {
                self.clock.sleep_until(limit);
                Ok(None)
            }
        }
    }
}

/// Open the configured photo-eye line from the GPIO character device.
pub fn open_trigger(cfg: &GpioConfig) -> Result<Box<dyn TriggerInput>, PinError> {
    request_trigger(cfg, |line, req| cdev::trigger(&cfg.chip, &line.name, req))
}

/// The configured photo-eye, requested through `request` (the character device, or a fake)
/// with [`TriggerRequest::for_line`] and read by [`EdgeTrigger`].
pub fn request_trigger<E: LineEvents + 'static>(
    cfg: &GpioConfig,
    request: impl FnOnce(&LineRef, TriggerRequest) -> Result<E, PinError>,
) -> Result<Box<dyn TriggerInput>, PinError> {
    let line = cfg.trigger.as_ref().ok_or_else(|| PinError::NotFound {
        chip: cfg.chip.clone(),
        line: "<none>".into(),
    })?;
    let events = request(
        line,
        TriggerRequest::for_line(line, cfg.trigger_debounce_us),
    )?;
    Ok(Box::new(EdgeTrigger::new(events)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpio::ActiveLevel;
    use crate::sim::clock::{SimClock, SimMode};

    fn photo_eye(active: ActiveLevel) -> GpioConfig {
        GpioConfig {
            trigger: Some(LineRef {
                name: "PAA.01".into(),
                active,
            }),
            ..Default::default()
        }
    }

    /// The configured photo-eye, requested from a fake kernel (idle at its inactive level).
    fn fake_photo_eye(
        clock: &Arc<dyn Clock>,
        active: ActiveLevel,
    ) -> (Box<dyn TriggerInput>, crate::sim::doubles::FakeEdgeRequest) {
        let mut kernel = None;
        let input = request_trigger(&photo_eye(active), |line, req| {
            let idle_high = line.active == ActiveLevel::Low;
            let k = crate::sim::doubles::FakeEdgeRequest::new(clock.clone(), req, 1, idle_high);
            kernel = Some(k.clone());
            Ok(k)
        })
        .unwrap();
        (input, kernel.unwrap())
    }

    /// A part in front of the photo-eye from `t` for 5 ms, electrically as the sensor drives it.
    fn part(kernel: &crate::sim::doubles::FakeEdgeRequest, active: ActiveLevel, t: u64) {
        let present_high = active == ActiveLevel::High;
        kernel.drive(0, t, present_high);
        kernel.drive(0, t + 5 * crate::clock::MS, !present_high);
    }

    fn read_all(input: &mut dyn TriggerInput) -> Vec<TriggerEdge> {
        let mut out = Vec::new();
        while let Some(e) = input.next_edge(1000).unwrap() {
            out.push(e);
        }
        out
    }

    #[test]
    fn one_part_per_rising_edge_and_no_false_losses() {
        use crate::clock::MS;
        for active in [ActiveLevel::High, ActiveLevel::Low] {
            let clock: Arc<dyn Clock> = Arc::new(SimClock::new(SimMode::Auto, 1_000 * MS));
            let (mut input, kernel) = fake_photo_eye(&clock, active);
            let times: Vec<u64> = (1..=50).map(|i| 1_000 * MS + i * 20 * MS).collect();
            for &t in &times {
                part(&kernel, active, t);
            }
            let edges = read_all(&mut *input);
            // Parts are born when they arrive, whatever the sensor's polarity.
            assert_eq!(
                edges.iter().map(|e| e.t_ns).collect::<Vec<_>>(),
                times,
                "{active:?}"
            );
            // Every event the kernel numbered is a part: the departures were never queued.
            assert_eq!(
                edges.iter().map(|e| e.seq).collect::<Vec<_>>(),
                (1..=50).collect::<Vec<_>>(),
                "{active:?}"
            );
            assert!(edges.iter().all(|e| e.lost == 0), "{active:?}: {edges:?}");
            assert_eq!(kernel.dropped(), 0);
        }
    }

    #[test]
    fn edges_dropped_by_a_full_kernel_buffer_are_counted_exactly() {
        use crate::clock::MS;
        let t0 = 1_000 * MS;
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(SimMode::Auto, t0));
        let (mut input, kernel) = fake_photo_eye(&clock, ActiveLevel::Low);
        for i in 1..=60 {
            part(&kernel, ActiveLevel::Low, t0 + i * 10 * MS);
        }
        // The reader starts late: parts 1..=20 came, the buffer holds the last 16.
        clock.sleep_until(t0 + 205 * MS);
        let first = input.next_edge(0).unwrap().unwrap();
        assert_eq!((first.seq, first.lost), (5, 4));
        let mut edges = vec![first];
        for _ in 0..15 {
            edges.push(input.next_edge(0).unwrap().unwrap());
        }
        assert_eq!(edges.last().unwrap().seq, 20);
        // Keeps up for a while, then stalls through parts 31..=55: 25 for 16 places.
        while clock.now_ns() < t0 + 300 * MS {
            edges.push(input.next_edge(1000).unwrap().unwrap());
        }
        clock.sleep_until(t0 + 555 * MS);
        edges.extend(read_all(&mut *input));
        let lost: Vec<(u64, u64)> = edges
            .iter()
            .filter(|e| e.lost > 0)
            .map(|e| (e.seq, e.lost))
            .collect();
        assert_eq!(lost, vec![(5, 4), (40, 9)]);
        let total: u64 = edges.iter().map(|e| e.lost).sum();
        assert_eq!(total, kernel.dropped());
        assert_eq!(edges.len() as u64 + total, 60, "every part read or counted");
    }
}
