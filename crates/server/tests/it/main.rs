//! Integration tests of the control plane: a real server on a free port, real SQLite
//! files, real git repos and real processes, driven over HTTP.

mod auth;
mod events;
mod fencing;
mod jobs;
mod metrics;
mod stop;
mod support;
