//! Integration tests of the control plane: a real server on a free port, real SQLite
//! files, real git repos and real processes, driven over HTTP.

mod auth;
mod checking;
mod config;
mod connections;
mod delivery;
mod events;
mod factories;
mod fencing;
mod hints;
mod jobs;
mod limits;
mod metrics;
mod replicas;
mod result_refs;
mod stop;
mod support;
mod tls;
