//! The engine vocabulary that job specs and run records carry, as plain data: the
//! figures of a run ([`Insights`]), budgets ([`Budget`], [`Breach`]), output formats
//! ([`Format`]) and the steps of a `script` job ([`Step`], [`parse_steps`]).
//!
//! What engines do with them (parsing agent output, folding events into insights,
//! pricing, compiling steps to `sh`) is in `gantry-engine`, which depends on this
//! module and re-exports it; core does not depend on the engine, so the store does
//! not compile the stream parsers.

pub mod budget;
pub mod format;
pub mod insights;
pub mod steps;

pub use budget::{Breach, Budget};
pub use format::Format;
pub use insights::{Insights, MAX_ERROR_MESSAGE};
pub use steps::{Step, StepError, parse_steps};
