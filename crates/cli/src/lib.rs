//! `gantry`: the command-line interface of Gantry, as a library so that tests (the tidy
//! checks of the deployment files) read the real clap command tree. The work is in
//! [`main`]; the clap structs (low-level form) are in [`cli`], the validated command
//! (high-level form) in `command`, the HTTP client is `gantry-client`, and `output` is the only
//! module that prints.

mod app;
mod bench;
mod checks;
pub mod cli;
mod command;
mod demo;
mod error;
mod factories;
mod factory;
mod gitutil;
mod handlers;
mod output;
mod render;
mod serve;

/// Runs the `gantry` command line of this process and returns its exit code.
pub fn main() -> std::process::ExitCode {
    app::main()
}
