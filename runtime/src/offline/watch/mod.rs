//! `diffad watch`: the supervisor's view of one or more lines, and the reference client of the
//! stream protocol (docs/line.md "The supervisor stream protocol").
//!
//! One follower thread per line keeps `(run, seq)` of the last event it passed on and, after
//! every disconnect, reconnects and sends `resume <run> <seq>`. Duplicates are dropped, and
//! restarts, losses and gaps are announced as `watch` notices, so what comes out is every event
//! of every run once, or a notice saying what is missing.

use serde_json::Value;
use std::time::Duration;

mod follow;
mod table;
mod view;

pub use follow::{follow, start, FollowStats};
pub use table::{run_json, run_tui};
pub use view::{LineView, View};

/// Wait between reconnect attempts.
pub const RECONNECT: Duration = Duration::from_millis(500);

/// What a follower passes on.
#[derive(Debug, Clone)]
pub enum Update {
    /// Connected; the hello said this run and last seq.
    Connected {
        /// The address given.
        source: String,
        /// The hello's run.
        run: String,
    },
    /// The connection failed or ended.
    Disconnected {
        /// The address given.
        source: String,
        /// Why.
        reason: String,
    },
    /// An event of the line (with `run` and `seq`), passed on once.
    Event {
        /// The address given.
        source: String,
        /// The event as the line sent it.
        value: Value,
        /// The line as the line sent it.
        raw: String,
    },
    /// A notice: the stream's (`restarted`, `lost`, `error`, `refused`) or the follower's own
    /// (`gap`, `run_changed`), with `source` added.
    Notice {
        /// The address given.
        source: String,
        /// The notice.
        value: Value,
    },
}

#[cfg(test)]
mod tests;
