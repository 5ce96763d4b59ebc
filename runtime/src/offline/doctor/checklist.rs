//! The checklist: one [`Check`] per line, with its outcome and fix, and the [`Report`] of them
//! all.

use std::fmt;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Works.
    Pass,
    /// Broken: the fix says what to do.
    Fail,
    /// Not applicable here, or cannot be checked.
    Skip,
}

/// One line of the checklist.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked, e.g. `gpio chip`.
    pub name: String,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do when it failed.
    pub fix: Option<String>,
    /// Whether a failure fails the whole run (false: advisory, e.g. systemd on a desktop).
    pub needed: bool,
}

impl Check {
    /// A passing check.
    pub fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
            needed: true,
        }
    }

    /// A failing check with its fix.
    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
            needed: true,
        }
    }

    /// A check that does not apply or cannot be made here.
    pub fn skip(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Skip,
            detail: detail.into(),
            fix: None,
            needed: true,
        }
    }

    /// Whether a failure fails the run; advisory checks say `false`.
    pub(super) fn needed(mut self, needed: bool) -> Self {
        self.needed = needed;
        self
    }

    /// Whether this check makes `doctor` exit non-zero.
    pub fn fails_run(&self) -> bool {
        self.status == Status::Fail && self.needed
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match (self.status, self.needed) {
            (Status::Pass, _) => "✓",
            (Status::Fail, true) => "✗",
            // A failure the board does not need is shown, but does not look like a broken unit.
            (Status::Fail, false) | (Status::Skip, _) => "–",
        };
        write!(f, "{mark} {:<18} {}", self.name, self.detail)?;
        if self.status == Status::Fail && !self.needed {
            write!(f, " (advisory: needed on a unit with real pins)")?;
        }
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

/// The whole checklist.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every check, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// Number of checks the board file needs that failed.
    pub fn failures(&self) -> usize {
        self.checks.iter().filter(|c| c.fails_run()).count()
    }

    /// The check named `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(f, "{c}")?;
        }
        match self.failures() {
            0 => writeln!(f, "all checks passed"),
            n => writeln!(f, "{n} check(s) failed"),
        }
    }
}
