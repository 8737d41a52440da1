//! The factory: claims jobs, prepares a git worktree per run, supervises the process,
//! and reports back under its lease.
//!
//! The embedded factory (inside `gantry serve`) and remote factories run the same loop
//! ([`Factory`]) over the [`Coordinator`] trait: the server's in-process implementation
//! or [`HttpCoordinator`] over the HTTP API. So one code path is tested.

mod coordinator;

pub use coordinator::{CoordError, Coordinator};
