//! The line's report at shutdown, gathered from the reject stage, the shared counters and the
//! sinks.

use crate::events::Counters;
use crate::sinks::archive::ArchiveStats;
use crate::sinks::reject::RejectStats;
use std::fmt;

/// The line's report at shutdown (`Display` for people, `Serialize` for tools).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// This run's id, as every event on the stream carries it.
    pub run: String,
    /// Final counters (parts = `counters.triggers`).
    pub counters: Counters,
    /// Whether every part got exactly one outcome.
    pub invariant_ok: bool,
    /// Parts with ground truth.
    pub with_truth: u64,
    /// Defective parts that passed.
    pub escapes: u64,
    /// Good parts rejected by verdict.
    pub false_rejects: u64,
    /// Good parts rejected by fail-safe.
    pub false_fault_rejects: u64,
    /// Outcomes per ground-truth kind (`good` included), when the source knows it.
    pub by_kind: std::collections::BTreeMap<String, crate::sinks::reject::KindTally>,
    /// Parts whose inspection decided their outcome in time (passes + rejects).
    pub inspected_in_time: u64,
    /// Frames the engine inspected (in time or not).
    pub inspections: u64,
    /// Time the engine spent inspecting (s).
    pub engine_busy_s: f64,
    /// Time from the first part's trigger to the last's (s).
    pub trigger_span_s: f64,
    /// Median trigger-to-verdict latency over every inspected part.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile trigger-to-verdict latency over every inspected part.
    pub latency_p99_ms: Option<f64>,
    /// Largest |actual − scheduled| of reject pulses.
    pub max_reject_error_ms: f64,
    /// 99th percentile |actual − scheduled| of reject pulses.
    pub reject_error_p99_ms: f64,
    /// Reject pulses whose timing was measured.
    pub reject_pulses_timed: u64,
    /// Pulses slept towards instead of spun for (`line.reject_spin_us`), the spin budget spent.
    pub reject_spin_refused: u64,
    /// The spin window before a pulse at the end of the run (us).
    pub reject_spin_window_us: f64,
    /// The widest spin window a pulse was spun under (us).
    pub reject_spin_widest_us: f64,
    /// CPU seconds the reject thread spent spinning before pulses.
    pub reject_spin_s: f64,
    /// Events delivered to the sinks.
    pub events_delivered: u64,
    /// Events dropped (bus full).
    pub events_dropped: u64,
    /// Supervisor clients dropped as too slow.
    pub supervisor_clients_dropped: u64,
    /// Supervisor clients refused (`supervisor.max_clients` connected).
    pub supervisor_refused: u64,
    /// Supervisor clients refused in the TLS handshake (no valid client certificate).
    pub supervisor_tls_rejected: u64,
    /// MQTT messages that did not fit in the outbox.
    pub mqtt_overflow: u64,
    /// MQTT messages the broker had not acknowledged at shutdown (e.g. it was down).
    pub mqtt_undelivered: u64,
    /// Rejected parts not archived (queue full).
    pub archive_dropped: u64,
    /// Rejected parts handed to the archive writer (written or lost there).
    pub archive_jobs: u64,
    /// Archive writer totals.
    pub archive: ArchiveStats,
    /// Pin write failures.
    pub pin_errors: u64,
    /// The drift watch's last window, when it filled.
    pub drift: Option<crate::events::DriftFigures>,
    /// The operator's page, when `[web]` served one.
    pub web: Option<crate::sinks::web::WebFigures>,
    /// The OPC UA server, when `[opcua]` ran one.
    pub opcua: Option<crate::sinks::opcua::OpcuaFigures>,
    /// Reject pulses too late to hit their part (each a possible escape).
    pub late_ejections: u64,
    /// Of those, pulses held back as known too late.
    pub late_held: u64,
    /// Defective parts among them (in `escapes` too).
    pub late_escapes: u64,
    /// Rejected parts whose evidence (frame, map) did not reach the archive.
    pub archive_lost: u64,
    /// Why the line stopped itself, when it did (it exits non-zero).
    pub fault: Option<String>,
    /// What the camera's source measured of itself, for sources that do (GenICam).
    pub camera: Option<crate::events::CameraFigures>,
    /// CPU seconds per thread name (a thread carries the name of the one that started it:
    /// ONNX Runtime's pool the process's), taken when capture ended: where the line's CPU went.
    pub threads_cpu_s: std::collections::BTreeMap<String, f64>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        writeln!(
            f,
            "parts {}  passes {}  rejects {}  fault-rejects {}  fault-passes {}  pending {}  [{}]",
            c.triggers,
            c.passes,
            c.rejects,
            c.fault_rejects,
            c.fault_passes,
            c.pending,
            if self.invariant_ok {
                "every part accounted for"
            } else {
                "ACCOUNTING MISMATCH"
            }
        )?;
        if let Some(why) = &self.fault {
            writeln!(f, "LINE FAULT: {why}")?;
        }
        writeln!(
            f,
            "ground truth on {}: escapes {} ({} by late ejection)  false rejects {} (+{} by fail-safe)",
            self.with_truth,
            self.escapes,
            self.late_escapes,
            self.false_rejects,
            self.false_fault_rejects
        )?;
        if self.late_ejections > 0 {
            writeln!(
                f,
                "LATE EJECTIONS {}: pulses too late to hit their part ({} held, {} fired late); each part is a possible escape",
                self.late_ejections,
                self.late_held,
                self.late_ejections - self.late_held
            )?;
        }
        if !self.by_kind.is_empty() {
            let kinds: Vec<String> = self
                .by_kind
                .iter()
                .map(|(k, t)| format!("{k} {}/{} rejected", t.rejects + t.fault_rejects, t.parts))
                .collect();
            writeln!(f, "by kind: {}", kinds.join(", "))?;
        }
        writeln!(
            f,
            "inspected {} (in time {})  skipped {}  latency p50 {}  p99 {} (every inspected part)  late verdicts {}  queue full {}  inspect errors {}",
            self.inspections,
            self.inspected_in_time,
            c.skipped,
            ms(self.latency_p50_ms),
            ms(self.latency_p99_ms),
            c.late_verdicts,
            c.queue_full,
            c.inspect_errors
        )?;
        if let Some(d) = &self.drift {
            writeln!(f, "drift: {d}")?;
        }
        writeln!(
            f,
            "reject timing error max {:.3} ms  p99 {:.3} ms over {} pulses; spin window {:.0} us (widest {:.0}), {:.2} s spun, {} slept to (spin budget spent)",
            self.max_reject_error_ms,
            self.reject_error_p99_ms,
            self.reject_pulses_timed,
            self.reject_spin_window_us,
            self.reject_spin_widest_us,
            self.reject_spin_s,
            self.reject_spin_refused
        )?;
        write!(
            f,
            "run {}  events delivered {}  dropped {}  frames dropped {}  camera errors {}  photo-eye edges lost {}  supervisor clients dropped {} refused {} tls-rejected {}  mqtt overflow {} undelivered {}  archive lost {} (queue full {}, write failed {})",
            self.run,
            self.events_delivered,
            self.events_dropped,
            c.frames_dropped,
            c.camera_errors,
            c.trigger_edges_lost,
            self.supervisor_clients_dropped,
            self.supervisor_refused,
            self.supervisor_tls_rejected,
            self.mqtt_overflow,
            self.mqtt_undelivered,
            self.archive_lost,
            self.archive_dropped,
            self.archive.errors
        )?;
        if c.frames_incomplete + c.packets_missing + c.packets_resent + c.stream_underruns > 0 {
            write!(
                f,
                "\ncamera stream: frames incomplete {} (failed safe, not inspected)  packets missing {}  resent {}  underruns {}",
                c.frames_incomplete, c.packets_missing, c.packets_resent, c.stream_underruns
            )?;
        }
        if let Some(w) = &self.web {
            write!(f, "\npage: {w}")?;
        }
        if let Some(o) = &self.opcua {
            write!(
                f,
                "\nopcua: {}  results {}  lost {}  logins refused {}",
                o.url, o.results, o.lost, o.auth_failures
            )?;
        }
        Ok(())
    }
}

/// The `q` quantile of a histogram of nanoseconds, in ms; `None` when it is empty.
pub fn percentile_ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e6)
}

/// What the sinks counted, gathered as they close.
#[derive(Debug, Default)]
pub(super) struct SinkStats {
    pub events_delivered: u64,
    pub events_dropped: u64,
    pub supervisor_clients_dropped: u64,
    pub supervisor_refused: u64,
    pub supervisor_tls_rejected: u64,
    pub mqtt_overflow: u64,
    pub mqtt_undelivered: u64,
    pub archive: ArchiveStats,
    pub web: Option<crate::sinks::web::WebFigures>,
    pub opcua: Option<crate::sinks::opcua::OpcuaFigures>,
}

/// What the engine and the trigger side counted.
pub(super) struct LineTimes {
    pub inspections: u64,
    pub engine_busy_ns: u64,
    pub first_trigger_ns: u64,
    pub last_trigger_ns: u64,
    pub pin_errors: u64,
    pub drift: Option<crate::events::DriftFigures>,
    pub fault: Option<String>,
    pub camera: Option<crate::events::CameraFigures>,
    pub threads_cpu: Vec<(String, f64)>,
}

impl Summary {
    /// The report from the reject stage's figures, the completed counters and the sinks'.
    pub(super) fn collect(
        run: String,
        counters: Counters,
        stats: &RejectStats,
        times: LineTimes,
        sinks: SinkStats,
    ) -> Self {
        Self {
            run,
            invariant_ok: counters.balanced() && counters.pending == 0,
            inspected_in_time: counters.passes + counters.rejects,
            inspections: times.inspections,
            engine_busy_s: times.engine_busy_ns as f64 / 1e9,
            trigger_span_s: times.last_trigger_ns.saturating_sub(times.first_trigger_ns) as f64
                / 1e9,
            archive_lost: counters.archive_lost,
            reject_error_p99_ms: percentile_ms(&stats.timing_error_ns, 0.99).unwrap_or(0.0),
            reject_pulses_timed: stats.timing_error_ns.len(),
            reject_spin_refused: stats.spin_refused,
            reject_spin_window_us: stats.spin_window_ns as f64 / 1e3,
            reject_spin_widest_us: stats.spin_widest_ns as f64 / 1e3,
            reject_spin_s: stats.spun_ns as f64 / 1e9,
            counters,
            with_truth: stats.with_truth,
            escapes: stats.escapes,
            false_rejects: stats.false_rejects,
            false_fault_rejects: stats.false_fault_rejects,
            by_kind: stats.by_kind.clone(),
            latency_p50_ms: percentile_ms(&stats.latency_ns, 0.5),
            latency_p99_ms: percentile_ms(&stats.latency_ns, 0.99),
            max_reject_error_ms: stats.max_timing_error_ns as f64 / 1e6,
            events_delivered: sinks.events_delivered,
            events_dropped: sinks.events_dropped,
            supervisor_clients_dropped: sinks.supervisor_clients_dropped,
            supervisor_refused: sinks.supervisor_refused,
            supervisor_tls_rejected: sinks.supervisor_tls_rejected,
            mqtt_overflow: sinks.mqtt_overflow,
            mqtt_undelivered: sinks.mqtt_undelivered,
            archive_dropped: stats.archive_dropped,
            archive_jobs: stats.archive_jobs,
            archive: sinks.archive.clone(),
            pin_errors: stats.pin_errors + times.pin_errors,
            drift: times.drift,
            web: sinks.web,
            opcua: sinks.opcua,
            late_ejections: stats.late_ejections,
            late_held: stats.late_held,
            late_escapes: stats.late_escapes,
            fault: times.fault,
            camera: times.camera,
            threads_cpu_s: times.threads_cpu.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MS;

    #[test]
    fn percentiles() {
        let mut h = crate::sinks::reject::ns_histogram();
        assert_eq!(percentile_ms(&h, 0.5), None);
        for i in 1..=100 {
            h.record(i * MS).unwrap();
        }
        let near = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 0.1;
        assert!(near(percentile_ms(&h, 0.5), 50.0));
        assert!(near(percentile_ms(&h, 0.99), 99.0));
    }
}
