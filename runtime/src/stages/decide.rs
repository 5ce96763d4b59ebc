//! Score against threshold: the verdict for one inspected part.

/// What the inspection says about a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Below threshold.
    Pass,
    /// At or above threshold.
    Reject,
}

/// A score that cannot be compared (NaN or infinite): treated as a failed inspection.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("score {0} is not a finite number")]
pub struct NotFinite(pub f32);

/// Reject at or above `threshold`.
pub fn decide(score: f32, threshold: f32) -> Result<Verdict, NotFinite> {
    if !score.is_finite() {
        return Err(NotFinite(score));
    }
    Ok(if score >= threshold {
        Verdict::Reject
    } else {
        Verdict::Pass
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_inclusive_and_nan_is_an_error() {
        assert_eq!(decide(0.5, 0.5), Ok(Verdict::Reject));
        assert_eq!(decide(0.49, 0.5), Ok(Verdict::Pass));
        assert!(decide(f32::NAN, 0.5).is_err());
    }
}
