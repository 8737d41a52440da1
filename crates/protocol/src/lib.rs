//! Gantry's protocol: what the server and its clients (the CLI, remote factories) say
//! to each other.
//!
//! - every wire type of the HTTP API (`/v1`): the records the store shares with the
//!   wire (re-exported from `gantry_core::api`) and the requests and answers only the
//!   two ends speak ([`wire`]);
//! - [`ErrorKind`], the machine-readable kind of every error body, which both ends
//!   match on instead of on strings;
//! - the factory protocol: the [`Coordinator`] trait and its [`CoordError`].
//!
//! Invariant: this crate does no I/O. It holds types and one trait; the server
//! implements the HTTP side, `gantry-client` the client side, and the server's
//! in-process coordinator the embedded side.

pub mod coordinator;
pub mod error;
pub mod wire;

pub use coordinator::{CoordError, Coordinator};
pub use error::{ErrorBody, ErrorKind};
pub use gantry_core::api::*;
pub use wire::*;
