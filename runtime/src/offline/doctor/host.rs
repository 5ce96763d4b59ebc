//! The host checks: the systemd unit, the clock, and what the kernel allows the reject thread.

use super::{Check, Root};
use crate::line::setup::LineConfig;

/// `WatchdogSec=` from a unit file's text, when set to something other than 0/off.
pub fn watchdog_sec(unit: &str) -> Option<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("WatchdogSec="))
        .map(str::trim)
        .next_back()
        .filter(|v| !v.is_empty() && *v != "0" && *v != "off" && *v != "infinity")
        .map(str::to_string)
}

/// The last `User=` of a unit file's text (`None`: it runs as root).
pub fn unit_user(unit: &str) -> Option<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("User="))
        .map(str::trim)
        .next_back()
        .filter(|u| !u.is_empty())
        .map(str::to_string)
}

/// The systemd unit: installed, with a watchdog so a wedged line is restarted, and not as root.
pub fn check_unit(root: &Root) -> Check {
    let unit = root.path("/etc/systemd/system/diffad.service");
    let text = match std::fs::read_to_string(&unit) {
        Err(e) => {
            return Check::fail(
                "systemd unit",
                format!("{}: {e}", unit.display()),
                "install it with `scripts/deploy` (from scripts/diffad.service)",
            )
        }
        Ok(t) => t,
    };
    let Some(w) = watchdog_sec(&text) else {
        return Check::fail(
            "systemd unit",
            format!("{} has no WatchdogSec", unit.display()),
            "add `WatchdogSec=10` under [Service] (as scripts/diffad.service has) and `systemctl daemon-reload`",
        );
    };
    match unit_user(&text).filter(|u| u != "root" && u != "0") {
        Some(u) => Check::pass(
            "systemd unit",
            format!("{} with WatchdogSec={w}, as user {u}", unit.display()),
        ),
        None => Check::fail(
            "systemd unit",
            format!("{} runs the line as root", unit.display()),
            "install the hardened unit (`scripts/deploy` creates its user `diffad`): docs/jetson-and-security.md \"Security on the line\"",
        ),
    }
}

/// The clock is synchronised: event timestamps and archive names are compared across units.
pub fn check_clock(root: &Root) -> Check {
    let flag = root.path("/run/systemd/timesync/synchronized");
    if flag.exists() {
        return Check::pass("clock", format!("synchronised ({})", flag.display()));
    }
    let fix = "enable time sync: `sudo timedatectl set-ntp true` (systemd-timesyncd) or chrony";
    if !root.is_real() {
        return Check::fail("clock", format!("{} absent", flag.display()), fix);
    }
    // chrony and ntpd do not write the timesyncd flag; the kernel knows either way.
    // SAFETY: zeroed timex with modes = 0 only reads the kernel's state.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut t) };
    if state == -1 {
        return Check::fail(
            "clock",
            format!("adjtimex failed: {}", std::io::Error::last_os_error()),
            fix,
        );
    }
    if state != libc::TIME_ERROR && t.status & libc::STA_UNSYNC == 0 {
        Check::pass("clock", "synchronised (kernel NTP state)")
    } else {
        Check::fail("clock", "not synchronised (kernel NTP state)", fix)
    }
}

/// Whether the reject pulses can be on time: a PREEMPT_RT kernel wakes the reject thread on
/// time; any other kernel (and a VM) can wake it milliseconds late, which the spin window
/// (`line.reject_spin_us`) covers. Without SCHED_FIFO, ordinary threads delay it too.
pub fn check_reject_timing(root: &Root, line: &LineConfig) -> Check {
    const NAME: &str = "reject timing";
    if line.realtime_priority == 0 {
        return Check::fail(
            NAME,
            "line.realtime_priority = 0: the reject thread runs at normal priority, behind the engine",
            "set line.realtime_priority = 50 (the unit's LimitRTPRIO allows it)",
        );
    }
    let rt_flag = root.path("/sys/kernel/realtime");
    let rt = std::fs::read_to_string(&rt_flag).is_ok_and(|s| s.trim() == "1");
    if rt {
        return Check::pass(
            NAME,
            format!("PREEMPT_RT kernel, SCHED_FIFO {}", line.realtime_priority),
        );
    }
    const ENOUGH_US: u64 = 1_000;
    if line.reject_spin_us >= ENOUGH_US {
        Check::pass(
            NAME,
            format!(
                "kernel without PREEMPT_RT ({} absent): wake-ups can come ms late; the reject \
                 thread stays awake up to {} us before each pulse",
                rt_flag.display(),
                line.reject_spin_us
            ),
        )
    } else {
        Check::fail(
            NAME,
            format!(
                "kernel without PREEMPT_RT ({} absent) and line.reject_spin_us = {}: a pulse is \
                 as late as the reject thread's wake-up, milliseconds on such kernels",
                rt_flag.display(),
                line.reject_spin_us
            ),
            format!(
                "set line.reject_spin_us = {} (the default) or boot a PREEMPT_RT kernel",
                crate::line::setup::DEFAULT_REJECT_SPIN_US
            ),
        )
    }
}
