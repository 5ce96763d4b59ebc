//! The network sinks' async runtime: one small tokio runtime, apart from the line's threads,
//! that the operator's page (and later OPC UA and the control socket) run on. It only reads
//! what the event bus hands to its sinks; nothing on it can hold up a stage thread.

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
