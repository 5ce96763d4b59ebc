//! The network sinks' async runtime: one small tokio runtime, apart from the line's threads,
//! that the operator's page, the OPC UA server and the control socket run on. It only reads
//! what the event bus hands to its sinks; nothing on it can hold up a stage thread, and its
//! threads run 10 nicer than the stages ([`crate::priority::NICER_BY`]), so that clients
//! cannot take the engine's CPU either.

use crate::priority::lower_this_thread;
use std::time::Duration;

/// Worker threads: the page's work is a few frames per part; the line's CPU is the engine's.
const WORKERS: usize = 1;

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
            .on_thread_start(|| lower_this_thread("network runtime"))
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
    use crate::priority::{nice_of_this_thread, NICER_BY};

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
