//! The network sinks' async runtime: one small tokio runtime, apart from the line's threads,
//! that the operator's page, the OPC UA server and the control socket run on. It only reads
//! what the event bus hands to its sinks; nothing on it can hold up a stage thread, and its
//! threads run 10 nicer than the stages (`NICER_BY`), so that clients cannot take the engine's
//! CPU either.

use std::time::Duration;

/// Worker threads: the page's work is a few frames per part; the line's CPU is the engine's.
const WORKERS: usize = 1;

/// How much nicer than the thread that starts it the runtime's threads are. At the stages' own
/// priority, fifty OPC UA clients of ten subscriptions took a fifth of the line's CPU and a
/// tenth of its in-time parts at 0.8 x the engine's rate (`scripts/bench-opcua`); 10 nicer, the
/// scheduler gives the runtime about a tenth of a busy CPU, the parts keep their time, and
/// clients beyond what that serves wait (their notifications queue, bounded). At 19 the server
/// starved: connections timed out.
pub const NICER_BY: libc::c_int = 10;

/// The calling thread's nice value (Linux's nice is per thread).
fn nice_of_this_thread() -> libc::c_int {
    // SAFETY: no pointers; errno is reset first, as -1 is also a valid priority.
    unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
    }
}

/// Lower the calling thread's priority by `NICER_BY` (a new thread starts at its creator's).
fn lower_priority() {
    let nice = (nice_of_this_thread() + NICER_BY).min(19);
    // SAFETY: no pointers; failure only leaves the priority as it was.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if r != 0 {
        log::warn!(
            "network runtime: could not lower its threads' priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The runtime, shut down (with a grace for open connections) when dropped.
pub struct NetRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl NetRuntime {
    /// Start the runtime's threads (`diffad-net`).
    pub fn start() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .max_blocking_threads(2)
            .thread_name("diffad-net")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(Self { rt: Some(rt) })
    }

    /// A handle to spawn on.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt.as_ref().expect("runtime running").handle().clone()
    }

    /// Stop every task, waiting at most `grace` for them.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(grace);
        }
    }
}

impl Drop for NetRuntime {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_threads_run_below_the_stages_priority() {
        let mut rt = NetRuntime::start().unwrap();
        let nice = rt
            .handle()
            .block_on(async { tokio::spawn(async { nice_of_this_thread() }).await.unwrap() });
        rt.stop(Duration::from_millis(100));
        assert_eq!(nice, (nice_of_this_thread() + NICER_BY).min(19));
    }
}
