//! Gantry's domain: job specs, ids, the lifecycle state machine, retry rules and the
//! wire types of the HTTP API.
//!
//! Invariant: this crate does no I/O. Everything here is a pure function or a plain
//! data type, so it can be tested exhaustively and shared by the server, the store,
//! the factory and the CLI without dragging runtime dependencies along.

pub mod api;
pub mod caps;
pub mod checks;
pub mod engine;
pub mod event;
pub mod fix;
pub mod gate;
pub mod id;
pub mod job;
pub mod repo;
pub mod retry;
pub mod review;
pub mod sandbox;
pub mod spec;
pub mod state;
pub mod text;
pub mod time;

pub use id::{FactoryId, JobId, RunId};
pub use job::{Job, Run, StopKind};
pub use spec::{DepRef, DepsMode, EngineKind, JobSpec, ParsedJob, SpecError};
pub use state::{JobState, Outcome};
