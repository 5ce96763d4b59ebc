//! Test doubles, built for tests and simulations only (feature `sim`): virtual time, an
//! inspector that scores by ground truth, and GPIO lines that behave like the kernel's.

pub mod clock;
pub mod doubles;
