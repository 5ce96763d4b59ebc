//! Stand-ins for simulations, demos and tests: an inspector (the real one is the ORT engine)
//! and GPIO lines that behave like the kernel's character device (the real ones need a board).

use crate::clock::{Clock, MS};
use crate::frame::{Frame, PixelFormat};
use crate::gpio::{EdgeSel, LineEvent, LineEvents, OutputRequest, PinError, TriggerRequest};
use crate::sinks::pins::{PinLog, SimPin};
use crate::stages::inspect::{InspectError, Inspection, Inspector};
use embedded_hal::digital::OutputPin;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// Scores by ground truth when the frame has it (defect mask fraction), else by pixel statistics
/// (share of pixels far from the frame mean). Optionally takes virtual time per batch, and
/// can be made slow or failing for chosen frames to exercise the fail-safe paths.
pub struct TruthInspector {
    clock: Arc<dyn Clock>,
    /// Threshold reported to the line.
    pub threshold: f32,
    /// Frames per call.
    pub batch: usize,
    /// Clock time each call takes.
    pub delay_ns: u64,
    /// Extra clock time for frames whose `seq % slow_every == 0`.
    pub slow_every: Option<(u64, u64)>,
    /// Fail frames whose `seq % fail_every == 0`.
    pub fail_every: Option<u64>,
}

impl TruthInspector {
    /// An instant, never-failing inspector with threshold 0.5 and batch 4.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            threshold: 0.5,
            batch: 4,
            delay_ns: 0,
            slow_every: None,
            fail_every: None,
        }
    }

    fn score(frame: &Frame) -> (f32, Vec<f32>) {
        if let Some(mask) = frame.truth.as_ref().and_then(|t| t.mask.as_ref()) {
            let map: Vec<f32> = mask
                .iter()
                .map(|&m| if m > 0 { 1.0 } else { 0.0 })
                .collect();
            let defect = map.iter().any(|&v| v > 0.0);
            let frac = map.iter().sum::<f32>() / map.len().max(1) as f32;
            return (if defect { 0.75 + 0.25 * frac } else { 0.1 }, map);
        }
        if let Some(t) = frame.truth.as_ref() {
            return (if t.defective { 0.9 } else { 0.1 }, Vec::new());
        }
        let px: Vec<f32> = match frame.format {
            PixelFormat::Grey8 => frame.data.iter().map(|&p| p as f32).collect(),
            PixelFormat::Rgb8 => frame
                .data
                .chunks(3)
                .map(|c| crate::frame::luma([c[0], c[1], c[2]]) as f32)
                .collect(),
            PixelFormat::Yuyv => frame.data.iter().step_by(2).map(|&p| p as f32).collect(),
            PixelFormat::Mjpeg => return (0.0, Vec::new()),
        };
        let mean = px.iter().sum::<f32>() / px.len().max(1) as f32;
        let map: Vec<f32> = px
            .iter()
            .map(|p| if (p - mean).abs() > 60.0 { 1.0 } else { 0.0 })
            .collect();
        let frac = map.iter().sum::<f32>() / map.len().max(1) as f32;
        ((frac * 20.0).min(1.0), map)
    }
}

impl Inspector for TruthInspector {
    fn batch_size(&self) -> usize {
        self.batch
    }

    fn threshold(&self) -> f32 {
        self.threshold
    }

    fn inspect(&mut self, frames: &[&Frame]) -> Vec<Result<Inspection, InspectError>> {
        let mut delay = self.delay_ns;
        if let Some((every, extra)) = self.slow_every {
            if frames.iter().any(|f| f.seq % every == 0) {
                delay += extra;
            }
        }
        if delay > 0 {
            self.clock.sleep_until(self.clock.now_ns() + delay);
        }
        frames
            .iter()
            .map(|f| {
                if self.fail_every.is_some_and(|n| f.seq % n == 0) {
                    return Err(InspectError(format!("frame {} failed on purpose", f.seq)));
                }
                let (score, map) = Self::score(f);
                let (w, h) = if map.len() == (f.width * f.height) as usize {
                    (f.width, f.height)
                } else {
                    (0, 0)
                };
                Ok(Inspection {
                    score,
                    map: if w > 0 { map } else { Vec::new() },
                    map_width: w,
                    map_height: h,
                    map_roi: None,
                })
            })
            .collect()
    }
}

/// An output line as the kernel grants it: it takes the request's level at the moment of the
/// request, and the log records that level before any write.
pub fn fake_output(clock: Arc<dyn Clock>, req: OutputRequest) -> (SimPin, PinLog) {
    let (mut pin, log) = SimPin::new(clock);
    let set = if req.initial_high {
        pin.set_high()
    } else {
        pin.set_low()
    };
    set.expect("sim pins never fail");
    (pin, log)
}

/// Events the kernel queues per line of a request when the request names no buffer size.
pub const KERNEL_EVENTS_PER_LINE: usize = 16;

/// An edge-detecting line request as the GPIO character device (v2) handles it, without a
/// kernel. The world drives electrical levels at clock times; the fake turns them into events
/// the way gpiolib-cdev does: edges are logical (inverted on an active-low request), only the
/// requested edges are queued and numbered, each line counts its own `line_seqno` and the
/// request counts `seqno` over all its lines (the same number when it has one line), and a
/// full buffer drops its oldest event, so the numbers read skip the dropped ones.
///
/// Clones share the line: a test keeps one to drive and inspect it while [`crate::sources::trigger::EdgeTrigger`]
/// reads another.
#[derive(Clone)]
pub struct FakeEdgeRequest {
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<FakeState>>,
}

struct FakeState {
    req: TriggerRequest,
    capacity: usize,
    /// Electrical level of each line.
    high: Vec<bool>,
    line_seqno: Vec<u32>,
    seqno: u32,
    /// Future level changes `(t_ns, line, high)`, in time order.
    script: VecDeque<(u64, usize, bool)>,
    queue: VecDeque<LineEvent>,
    dropped: u64,
    /// The reading thread is off the CPU over `[from, until)`.
    stall: Option<(u64, u64)>,
}

impl FakeState {
    /// What the kernel does when the level of `line` changes at `t_ns`.
    fn change(&mut self, t_ns: u64, line: usize, high: bool) {
        if self.high[line] == high {
            return;
        }
        self.high[line] = high;
        let active = high != self.req.active_low;
        let wanted = match self.req.edges {
            EdgeSel::Rising => active,
            EdgeSel::Falling => !active,
            EdgeSel::Both => true,
        };
        if !wanted {
            return;
        }
        self.line_seqno[line] = self.line_seqno[line].wrapping_add(1);
        self.seqno = self.seqno.wrapping_add(1);
        let ev = LineEvent {
            t_ns,
            rising: active,
            line_seqno: self.line_seqno[line],
            seqno: if self.high.len() == 1 {
                self.line_seqno[line]
            } else {
                self.seqno
            },
        };
        if self.queue.len() == self.capacity {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(ev);
    }

    /// Apply every level change due by `now`.
    fn catch_up(&mut self, now: u64) {
        while let Some(&(t, line, high)) = self.script.front() {
            if t > now {
                break;
            }
            self.script.pop_front();
            self.change(t, line, high);
        }
    }
}

impl FakeEdgeRequest {
    /// A request of `lines` lines (offsets 0..lines), all idle at electrical level
    /// `idle_high`, configured as `req`, with the kernel's default buffer.
    pub fn new(clock: Arc<dyn Clock>, req: TriggerRequest, lines: usize, idle_high: bool) -> Self {
        Self::with_capacity(clock, req, lines, idle_high, KERNEL_EVENTS_PER_LINE * lines)
    }

    /// As [`FakeEdgeRequest::new`] with a buffer of `capacity` events.
    pub fn with_capacity(
        clock: Arc<dyn Clock>,
        req: TriggerRequest,
        lines: usize,
        idle_high: bool,
        capacity: usize,
    ) -> Self {
        Self {
            clock,
            state: Arc::new(Mutex::new(FakeState {
                req,
                capacity: capacity.max(1),
                high: vec![idle_high; lines],
                line_seqno: vec![0; lines],
                seqno: 0,
                script: VecDeque::new(),
                queue: VecDeque::new(),
                dropped: 0,
                stall: None,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The electrical level of `line` becomes `high` at clock time `t_ns`.
    pub fn drive(&self, line: usize, t_ns: u64, high: bool) {
        let mut st = self.state();
        let at = st.script.partition_point(|&(t, _, _)| t <= t_ns);
        st.script.insert(at, (t_ns, line, high));
    }

    /// The reading thread gets no CPU from `from_ns` until `until_ns` (the way a kernel buffer
    /// fills on a board): a read or wait in that span returns no earlier than `until_ns`.
    pub fn stall_reads(&self, from_ns: u64, until_ns: u64) {
        self.state().stall = Some((from_ns, until_ns));
    }

    /// Events the buffer dropped so far (what the kernel knows and the reader must infer).
    pub fn dropped(&self) -> u64 {
        self.state().dropped
    }

    /// Sleep through a stall covering now, then apply the level changes due.
    fn settle(&self) -> MutexGuard<'_, FakeState> {
        let now = self.clock.now_ns();
        let stalled = self.state().stall.filter(|&(a, b)| a <= now && now < b);
        if let Some((_, until)) = stalled {
            self.clock.sleep_until(until);
        }
        let mut st = self.state();
        st.catch_up(self.clock.now_ns());
        st
    }
}

impl LineEvents for FakeEdgeRequest {
    fn wait_event(&mut self, timeout_ms: u64) -> Result<bool, PinError> {
        let limit = self.clock.now_ns() + timeout_ms * MS;
        loop {
            let next = {
                let st = self.settle();
                if !st.queue.is_empty() {
                    return Ok(true);
                }
                st.script.front().map(|&(t, _, _)| t)
            };
            let now = self.clock.now_ns();
            if now >= limit {
                return Ok(false);
            }
            self.clock.sleep_until(next.map_or(limit, |t| t.min(limit)));
        }
    }

    fn has_event(&mut self) -> Result<bool, PinError> {
        Ok(!self.settle().queue.is_empty())
    }

    fn read_event(&mut self) -> Result<LineEvent, PinError> {
        self.settle()
            .queue
            .pop_front()
            .ok_or_else(|| PinError::Io("read with no edge event queued".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::clock::{SimClock, SimMode};
    use crate::sources::trigger::{EdgeTrigger, TriggerEdge, TriggerInput};

    #[test]
    fn fake_kernel_numbers_every_requested_edge_per_line_and_per_request() {
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(SimMode::Auto, 0));
        let both = TriggerRequest {
            active_low: false,
            edges: EdgeSel::Both,
            debounce_us: 0,
        };
        let mut k = FakeEdgeRequest::new(clock.clone(), both, 2, false);
        k.drive(0, 10, true);
        k.drive(1, 20, true);
        k.drive(0, 30, false);
        k.drive(0, 35, false); // no change, no event
        k.drive(1, 40, false);
        let mut got = Vec::new();
        while k.wait_event(1).unwrap() {
            let e = k.read_event().unwrap();
            got.push((e.t_ns, e.rising, e.line_seqno, e.seqno));
        }
        assert_eq!(
            got,
            vec![
                (10, true, 1, 1),
                (20, true, 1, 2),
                (30, false, 2, 3),
                (40, false, 2, 4)
            ]
        );
        // Both edges requested: a reader that took gaps between part edges for losses would
        // report one lost per part; the reader counts every event, so it reports none.
        let (mut input, kernel) = {
            let k = FakeEdgeRequest::new(
                clock.clone(),
                TriggerRequest {
                    edges: EdgeSel::Both,
                    ..both
                },
                1,
                false,
            );
            (EdgeTrigger::new(k.clone()), k)
        };
        for i in 0..3 {
            kernel.drive(0, 100 + i * 10, true);
            kernel.drive(0, 105 + i * 10, false);
        }
        // A departure reads as "no part yet", so read by events, not until the first gap.
        let parts: Vec<TriggerEdge> = (0..6)
            .filter_map(|_| input.next_edge(1000).unwrap())
            .collect();
        assert_eq!(
            parts.iter().map(|e| (e.seq, e.lost)).collect::<Vec<_>>(),
            vec![(1, 0), (3, 0), (5, 0)]
        );
    }
}
