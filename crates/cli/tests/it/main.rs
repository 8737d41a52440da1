//! Integration tests of the `gantry` binary: every test runs the real binary as child
//! processes (a `serve` on a free port with a temp data dir, then CLI calls against it),
//! with real git repos, a real SQLite file and real job processes.

// A failed unwrap in a test is a failed test with its location: what we want here.
#![allow(clippy::unwrap_used)]

mod args;
mod bench;
mod chaos;
mod checking;
mod control;
mod demo;
mod durability;
mod egress;
mod factories;
mod follow;
mod handed;
mod harness;
mod jobs;
mod remote;
mod secrets;
mod security;
mod tls;
mod tokens;
