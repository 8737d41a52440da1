//! The program: parse, validate, set up logging and the runtime, run, report.

use crate::cli::Cli;
use crate::command::{Command, Global, Invocation};
use crate::error::{CliError, Kind};
use crate::{bench, demo, factories, factory, handlers, output, serve};
use clap::Parser;
use std::process::ExitCode;

/// Runs the command line of this process and returns its exit code: 0 ok, 1 error,
/// 2 usage error.
pub fn main() -> ExitCode {
    // The hidden `sandbox-forward` runs inside a run's sandbox as its first process:
    // no parsing, logging or runtime of the CLI's own (see `gantry_factory::egress`).
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "sandbox-forward") {
        let rest: Vec<std::ffi::OsString> = args.collect();
        let code = gantry_factory::egress::forward::main(&rest);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    let inv = match Invocation::try_from(cli) {
        Ok(inv) => inv,
        Err(e) => return fail(&CliError::from(e)),
    };
    init_tracing(inv.global.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &CliError::new(Kind::Local, "cannot start the async runtime").cause(e.to_string()),
            );
        }
    };
    match rt.block_on(run(inv.global, inv.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &CliError) -> ExitCode {
    output::error(e);
    ExitCode::from(e.exit_code())
}

/// Help and version go to stdout with exit code 0; parse errors to stderr with 2.
fn clap_exit(e: &clap::Error) -> ExitCode {
    let color = e.use_stderr() && std::io::IsTerminal::is_terminal(&std::io::stderr())
        || !e.use_stderr() && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let text = if color && std::env::var_os("NO_COLOR").is_none() {
        e.render().ansi().to_string()
    } else {
        e.render().to_string()
    };
    if e.use_stderr() {
        let mut err = CliError::new(Kind::Usage, text.trim_end().to_string());
        err.rendered = Some(text);
        fail(&err)
    } else {
        output::raw(text.as_bytes());
        ExitCode::SUCCESS
    }
}

/// Logs to stderr: RUST_LOG when set, else by the count of `-v` (warnings only
/// without it).
fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn run(global: Global, command: Command) -> Result<(), CliError> {
    if matches!(
        command,
        Command::Serve(_) | Command::Factory(_) | Command::Demo { .. }
    ) {
        // Everything a server or factory creates (the database, tokens, job files,
        // logs, caches) is for its own user alone.
        gantry_factory::private_files();
    }
    match command {
        Command::Serve(opts) => serve::serve(&global, *opts).await,
        Command::Demo { keep } => demo::demo(keep).await,
        Command::Factory(opts) => factory::run(&global, opts).await,
        Command::BenchQueue { jobs, workers, db } => bench::queue(jobs, workers, db).await,
        Command::BenchDispatch { runs, kinds, files } => {
            bench::dispatch::dispatch(runs, kinds, files).await
        }
        Command::BenchConcurrent {
            runs,
            sleep,
            sandbox,
        } => bench::concurrent::concurrent(runs, sleep, sandbox).await,
        Command::BenchKill { runs, sandbox } => bench::kill::kill(runs, sandbox).await,
        Command::BenchMetrics { jobs, scrapes, db } => bench::metrics::run(jobs, scrapes, db).await,
        Command::BenchSecrets { mb } => bench::secrets::run(mb),
        Command::BenchCheck { runs } => bench::check::run(runs).await,
        other => {
            let client = handlers::client_for(&global)?;
            match other {
                Command::Submit { files, format } => {
                    handlers::submit(&client, &files, format).await
                }
                Command::Ls {
                    state,
                    limit,
                    format,
                } => handlers::ls(&client, state, limit, format).await,
                Command::Show { id, format } => handlers::show(&client, id, format).await,
                Command::Events { id, follow, format } => {
                    handlers::events(&client, id, follow, format).await
                }
                Command::Logs { id, follow, format } => {
                    handlers::logs(&client, id, follow, format).await
                }
                Command::Diff { id, format } => handlers::diff(&client, id, format).await,
                Command::Cancel { id, format } => handlers::cancel(&client, id, format).await,
                Command::Kill { target, format } => handlers::kill(&client, target, format).await,
                Command::Pause { format } => handlers::pause(&client, format).await,
                Command::Resume { format } => handlers::resume(&client, format).await,
                Command::Retry { id, format } => handlers::retry(&client, id, format).await,
                Command::Status { format } => handlers::status(&client, format).await,
                Command::Factories { format } => factories::list(&client, format).await,
                Command::TokenCreate {
                    name,
                    scope,
                    format,
                } => handlers::token_create(&client, &name, scope, format).await,
                Command::TokenLs { format } => handlers::token_ls(&client, format).await,
                Command::TokenRevoke { name, format } => {
                    handlers::token_revoke(&client, &name, format).await
                }
                Command::Serve(_)
                | Command::Factory(_)
                | Command::Demo { .. }
                | Command::BenchQueue { .. }
                | Command::BenchDispatch { .. }
                | Command::BenchConcurrent { .. }
                | Command::BenchKill { .. }
                | Command::BenchMetrics { .. }
                | Command::BenchSecrets { .. }
                | Command::BenchCheck { .. } => unreachable!("handled above without a client"),
            }
        }
    }
}
