//! `gantry`: the command-line interface of Gantry. The work is in [`app`]; the clap
//! structs (low-level form) are in [`cli`], the validated command (high-level form) in
//! [`command`], the HTTP client in [`client`], and [`output`] is the only module that
//! prints.

mod app;
mod bench;
mod cli;
mod client;
mod command;
mod commands;
mod demo;
mod error;
mod factories;
mod factory;
mod gitutil;
mod output;
mod serve;

fn main() -> std::process::ExitCode {
    app::main()
}
