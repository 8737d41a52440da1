//! The high-level form of the command line: a validated [`Command`] with typed values,
//! made from the clap structs of [`crate::cli`]. Nothing runs before this conversion
//! succeeds, and every refusal is a [`UsageError`] naming the argument and the value.

use crate::cli::{self, Cli, Sub};
use gantry_core::{JobId, JobState};
use gantry_protocol::Scope;
use gantry_server::ServeConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A refused argument: which one, with what value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value '{value}' for '{arg}': {reason}")]
pub struct UsageError {
    /// The subcommand path, e.g. `serve` or `token create` (empty for global options).
    pub subcommand: String,
    /// The argument as shown in help, e.g. `--lease-ttl <DURATION>`.
    pub arg: String,
    /// The value given.
    pub value: String,
    /// Why it was refused and what is expected.
    pub reason: String,
}

/// How to print answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned tables and short lines for people.
    Human,
    /// Pretty JSON of the API objects.
    Json,
}

impl Format {
    fn from_flag(json: bool) -> Format {
        if json { Format::Json } else { Format::Human }
    }
}

/// Where the API token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Given with `--token` or `GANTRY_TOKEN`.
    Given(String),
    /// Read from this file (`<data-dir>/admin.token`) when a command needs it.
    File(PathBuf),
}

/// Options every command shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// Server base URL without a trailing slash, e.g. `http://127.0.0.1:7700`.
    pub url: String,
    /// Where the token comes from.
    pub token: TokenSource,
    /// A PEM file of extra CA certificates to trust for an `https://` server.
    pub ca_file: Option<PathBuf>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Log verbosity (count of `-v`).
    pub verbose: u8,
}

/// What `gantry kill` kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillTarget {
    /// One job.
    Job(JobId),
    /// Every running job (and claiming is paused).
    All,
}

/// A validated command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the server (boxed: its config is by far the largest command).
    Serve(Box<ServeConfig>),
    /// Run a remote factory.
    Factory(FactoryOptions),
    /// Submit job files as one batch.
    Submit {
        /// The files, in order.
        files: Vec<PathBuf>,
        /// Output format.
        format: Format,
    },
    /// List jobs.
    Ls {
        /// Only this state.
        state: Option<JobState>,
        /// At most this many.
        limit: Option<u32>,
        /// Output format.
        format: Format,
    },
    /// Show a job with its runs.
    Show {
        /// The job.
        id: JobId,
        /// Output format.
        format: Format,
    },
    /// A job's events.
    Events {
        /// The job.
        id: JobId,
        /// Stream until the job ends.
        follow: bool,
        /// Output format.
        format: Format,
    },
    /// A job's output.
    Logs {
        /// The job.
        id: JobId,
        /// Stream until the job ends.
        follow: bool,
        /// Output format.
        format: Format,
    },
    /// A job's diff.
    Diff {
        /// The job.
        id: JobId,
        /// Output format.
        format: Format,
    },
    /// Cancel a job.
    Cancel {
        /// The job.
        id: JobId,
        /// Output format.
        format: Format,
    },
    /// Kill a job or all running jobs.
    Kill {
        /// What to kill.
        target: KillTarget,
        /// Output format.
        format: Format,
    },
    /// Pause claiming.
    Pause {
        /// Output format.
        format: Format,
    },
    /// Resume claiming.
    Resume {
        /// Output format.
        format: Format,
    },
    /// Retry a finished job.
    Retry {
        /// The job.
        id: JobId,
        /// Output format.
        format: Format,
    },
    /// Queue status.
    Status {
        /// Output format.
        format: Format,
    },
    /// List factories.
    Factories {
        /// Output format.
        format: Format,
    },
    /// Create a token.
    TokenCreate {
        /// Token name.
        name: String,
        /// Token scope.
        scope: Scope,
        /// Output format.
        format: Format,
    },
    /// List tokens.
    TokenLs {
        /// Output format.
        format: Format,
    },
    /// Revoke a token.
    TokenRevoke {
        /// Token name.
        name: String,
        /// Output format.
        format: Format,
    },
    /// The demo.
    Demo {
        /// Keep the temp dir.
        keep: bool,
    },
    /// The queue benchmark.
    BenchQueue {
        /// Number of jobs.
        jobs: usize,
        /// Concurrent workers.
        workers: usize,
        /// The store, or SQLite in a temp dir when `None`.
        db: Option<BenchDb>,
    },
    /// The kill-latency benchmark.
    BenchKill {
        /// Jobs to start and kill.
        runs: usize,
        /// What they run in.
        sandbox: crate::bench::BenchSandbox,
    },
    /// The concurrent-runs benchmark.
    BenchConcurrent {
        /// Concurrent runs.
        runs: usize,
        /// How long each run sleeps.
        sleep: Duration,
        /// What they run in.
        sandbox: crate::bench::BenchSandbox,
    },
    /// The dispatch benchmark.
    BenchDispatch {
        /// Measured runs of each kind.
        runs: usize,
        /// The sandbox kinds measured, in order.
        kinds: Vec<crate::bench::BenchSandbox>,
        /// Files in the generated repository.
        files: usize,
    },
    /// The checking stage benchmark.
    BenchCheck {
        /// Measured jobs of each kind.
        runs: usize,
    },
    /// The secret scanner benchmark.
    BenchSecrets {
        /// Megabytes of diff text.
        mb: usize,
    },
    /// The `/metrics` scrape benchmark.
    BenchMetrics {
        /// Queued jobs.
        jobs: usize,
        /// Timed scrapes.
        scrapes: usize,
        /// A PostgreSQL URL naming an empty database, or SQLite in a temp dir when
        /// `None`.
        db: Option<String>,
    },
}

/// How `gantry factory` runs (the URL, token and data dir come from [`Global`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactoryOptions {
    /// Name to register under.
    pub name: String,
    /// Concurrent runs.
    pub seats: u32,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// SIGTERM-to-SIGKILL grace of a canceled run.
    pub kill_grace: Duration,
    /// Memory admission threshold, MiB.
    pub min_free_memory_mb: u64,
    /// Disk admission threshold, MiB.
    pub min_free_disk_mb: u64,
    /// Leave runs going on shutdown.
    pub leave_runs: bool,
    /// The sandbox options (see [`gantry_server::SandboxSettings`]).
    pub sandbox: gantry_server::SandboxSettings,
    /// The gantry.toml given with `--config` (else the data dir's, when it exists).
    pub config: Option<PathBuf>,
}

/// The store a queue benchmark burns jobs through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchDb {
    /// A SQLite file that does not exist yet.
    Sqlite(PathBuf),
    /// A PostgreSQL URL naming an empty database.
    Postgres(String),
}

/// A whole validated command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Shared options.
    pub global: Global,
    /// The command.
    pub command: Command,
}

impl TryFrom<Cli> for Invocation {
    type Error = UsageError;

    fn try_from(cli: Cli) -> Result<Self, UsageError> {
        let global = Global {
            url: parse_url(&cli.url)?,
            token: match cli.token {
                Some(t) if !t.trim().is_empty() => TokenSource::Given(t.trim().to_string()),
                _ => TokenSource::File(cli.data_dir.join("admin.token")),
            },
            ca_file: cli.ca_file,
            data_dir: cli.data_dir,
            verbose: cli.verbose,
        };
        let command = convert(cli.command, &global)?;
        Ok(Invocation { global, command })
    }
}

fn convert(sub: Sub, global: &Global) -> Result<Command, UsageError> {
    Ok(match sub {
        Sub::Serve(a) => Command::Serve(Box::new(serve_config(a, global)?)),
        Sub::Submit(a) => Command::Submit {
            files: a.files,
            format: Format::from_flag(a.json),
        },
        Sub::Ls(a) => Command::Ls {
            state: a
                .state
                .map(|s| {
                    s.parse::<JobState>()
                        .map_err(|reason| bad("ls", "--state <STATE>", &s, reason))
                })
                .transpose()?,
            limit: a
                .limit
                .map(|s| parse_count("ls", "--limit <N>", &s, 1))
                .transpose()?
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            format: Format::from_flag(a.json),
        },
        Sub::Show(a) => Command::Show {
            id: parse_id("show", &a.id)?,
            format: Format::from_flag(a.json),
        },
        Sub::Events(a) => Command::Events {
            id: parse_id("events", &a.id)?,
            follow: a.follow,
            format: Format::from_flag(a.json),
        },
        Sub::Logs(a) => Command::Logs {
            id: parse_id("logs", &a.id)?,
            follow: a.follow,
            format: Format::from_flag(a.json),
        },
        Sub::Diff(a) => Command::Diff {
            id: parse_id("diff", &a.id)?,
            format: Format::from_flag(a.json),
        },
        Sub::Cancel(a) => Command::Cancel {
            id: parse_id("cancel", &a.id)?,
            format: Format::from_flag(a.json),
        },
        Sub::Kill(a) => Command::Kill {
            target: match (a.all, a.id) {
                (true, _) => KillTarget::All,
                (false, Some(id)) => KillTarget::Job(parse_id("kill", &id)?),
                // clap's `required_unless_present` makes this unreachable, but a
                // usage error is the honest answer if it ever is reached.
                (false, None) => {
                    return Err(bad(
                        "kill",
                        "<ID>",
                        "",
                        "give a job id, or --all to kill every running job".to_string(),
                    ));
                }
            },
            format: Format::from_flag(a.json),
        },
        Sub::Pause(a) => Command::Pause {
            format: Format::from_flag(a.json),
        },
        Sub::Resume(a) => Command::Resume {
            format: Format::from_flag(a.json),
        },
        Sub::Retry(a) => Command::Retry {
            id: parse_id("retry", &a.id)?,
            format: Format::from_flag(a.json),
        },
        Sub::Status(a) => Command::Status {
            format: Format::from_flag(a.json),
        },
        Sub::Factories(a) => Command::Factories {
            format: Format::from_flag(a.json),
        },
        Sub::Token(cli::TokenSub::Create(a)) => Command::TokenCreate {
            name: parse_token_name("token create", "--name <NAME>", &a.name)?,
            scope: a
                .scope
                .parse::<Scope>()
                .map_err(|reason| bad("token create", "--scope <SCOPE>", &a.scope, reason))?,
            format: Format::from_flag(a.json),
        },
        Sub::Token(cli::TokenSub::Ls(a)) => Command::TokenLs {
            format: Format::from_flag(a.json),
        },
        Sub::Token(cli::TokenSub::Revoke(a)) => Command::TokenRevoke {
            name: parse_token_name("token revoke", "<NAME>", &a.name)?,
            format: Format::from_flag(a.json),
        },
        Sub::Demo(a) => Command::Demo { keep: a.keep },
        Sub::Factory(a) => Command::Factory(factory_options(a)?),
        Sub::Bench(cli::BenchSub::Queue(a)) => Command::BenchQueue {
            jobs: parse_count("bench queue", "--jobs <N>", &a.jobs, 1)?,
            workers: parse_count("bench queue", "--workers <K>", &a.workers, 1)?,
            db: a.db.map(|d| {
                if d.starts_with("postgres://") || d.starts_with("postgresql://") {
                    BenchDb::Postgres(d)
                } else {
                    BenchDb::Sqlite(PathBuf::from(d))
                }
            }),
        },
        Sub::Bench(cli::BenchSub::Kill(a)) => Command::BenchKill {
            runs: parse_count("bench kill", "--runs <N>", &a.runs, 1)?,
            sandbox: bench_wall(&a.sandbox, a.image),
        },
        Sub::Bench(cli::BenchSub::Concurrent(a)) => Command::BenchConcurrent {
            runs: parse_count("bench concurrent", "--runs <N>", &a.runs, 1)?,
            sleep: parse_duration("bench concurrent", "--sleep <DURATION>", &a.sleep)?,
            sandbox: bench_wall(&a.sandbox, a.image),
        },
        Sub::Bench(cli::BenchSub::Dispatch(a)) => Command::BenchDispatch {
            runs: parse_count("bench dispatch", "--runs <N>", &a.runs, 1)?,
            kinds: parse_kinds("bench dispatch", &a.sandbox, &a.image)?,
            files: parse_count("bench dispatch", "--files <N>", &a.files, 1)?,
        },
        Sub::Bench(cli::BenchSub::Check(a)) => Command::BenchCheck {
            runs: parse_count("bench check", "--runs <N>", &a.runs, 1)?,
        },
        Sub::Bench(cli::BenchSub::Secrets(a)) => Command::BenchSecrets {
            mb: parse_count("bench secrets", "--mb <N>", &a.mb, 1)?,
        },
        Sub::Bench(cli::BenchSub::Metrics(a)) => Command::BenchMetrics {
            jobs: parse_count("bench metrics", "--jobs <N>", &a.jobs, 1)?,
            scrapes: parse_count("bench metrics", "--scrapes <S>", &a.scrapes, 1)?,
            db: match a.db {
                Some(d) if !(d.starts_with("postgres://") || d.starts_with("postgresql://")) => {
                    return Err(bad(
                        "bench metrics",
                        "--db <URL>",
                        &d,
                        "expected a PostgreSQL URL (postgres://USER@HOST:PORT/DB)".to_string(),
                    ));
                }
                db => db,
            },
        },
    })
}

fn factory_options(a: cli::FactoryArgs) -> Result<FactoryOptions, UsageError> {
    let seats = parse_count("factory", "--seats <N>", &a.seats, 1)?;
    let seats = u32::try_from(seats).map_err(|_| {
        bad(
            "factory",
            "--seats <N>",
            &a.seats,
            "too many seats".to_string(),
        )
    })?;
    for cap in &a.caps {
        gantry_core::caps::validate(cap)
            .map_err(|reason| bad("factory", "--cap <NAME[=VALUE]>", cap, reason))?;
    }
    let name = match a.name {
        Some(n) if n.trim().is_empty() => {
            return Err(bad(
                "factory",
                "--name <NAME>",
                &n,
                "a factory name must not be empty".to_string(),
            ));
        }
        Some(n) => n,
        None => host_name(),
    };
    let mib = |arg: &str, value: &str| {
        value.trim().parse::<u64>().map_err(|e| {
            bad(
                "factory",
                arg,
                value,
                format!("{e}; expected a whole number of MiB (0 turns the check off)"),
            )
        })
    };
    Ok(FactoryOptions {
        name,
        seats,
        capabilities: a.caps,
        kill_grace: parse_duration("factory", "--kill-grace <DURATION>", &a.kill_grace)?,
        min_free_memory_mb: mib("--min-free-memory <MIB>", &a.min_free_memory)?,
        min_free_disk_mb: mib("--min-free-disk <MIB>", &a.min_free_disk)?,
        leave_runs: a.leave_runs,
        sandbox: sandbox_settings(a.sandbox),
        config: a.config,
    })
}

/// The sandbox options of `serve` and `factory`, with paths made absolute (a sandbox
/// binds them at the same place).
fn sandbox_settings(a: cli::SandboxArgs) -> gantry_server::SandboxSettings {
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    gantry_server::SandboxSettings {
        allow_unsandboxed: a.allow_unsandboxed_jobs,
        bwrap: a.bwrap,
        read_only: a.sandbox_ro.into_iter().map(absolute).collect(),
        read_write: a.sandbox_rw.into_iter().map(absolute).collect(),
        docker_default: a.sandbox.as_deref() == Some("docker"),
        docker: a.docker,
        docker_image: a.docker_image,
        docker_socket: a.docker_socket,
    }
}

/// This machine's host name, or `factory` when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "factory".to_string())
}

fn serve_config(a: cli::ServeArgs, global: &Global) -> Result<ServeConfig, UsageError> {
    let listen = a.listen.parse::<SocketAddr>().map_err(|e| {
        bad(
            "serve",
            "--listen <ADDR>",
            &a.listen,
            format!("{e}; expected an IP address and port such as 127.0.0.1:7700 or [::1]:0"),
        )
    })?;
    let lease_ttl = parse_duration("serve", "--lease-ttl <DURATION>", &a.lease_ttl)?;
    let reaper_interval =
        parse_duration("serve", "--reaper-interval <DURATION>", &a.reaper_interval)?;
    let kill_grace = parse_duration("serve", "--kill-grace <DURATION>", &a.kill_grace)?;
    if lease_ttl.is_zero() {
        return Err(bad(
            "serve",
            "--lease-ttl <DURATION>",
            &a.lease_ttl,
            "a lease must last longer than zero".to_string(),
        ));
    }
    if reaper_interval.is_zero() {
        return Err(bad(
            "serve",
            "--reaper-interval <DURATION>",
            &a.reaper_interval,
            "the reaper needs a period longer than zero".to_string(),
        ));
    }
    let seats = parse_count("serve", "--seats <N>", &a.seats, 1)?;
    let seats = u32::try_from(seats).map_err(|_| {
        bad(
            "serve",
            "--seats <N>",
            &a.seats,
            "too many seats".to_string(),
        )
    })?;
    for cap in &a.caps {
        gantry_core::caps::validate(cap)
            .map_err(|reason| bad("serve", "--cap <NAME[=VALUE]>", cap, reason))?;
    }
    if let Some(url) = &a.db
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        return Err(bad(
            "serve",
            "--db <URL>",
            url,
            "expected a PostgreSQL URL such as postgres://gantry@db.internal:5432/gantry (leave --db out for the embedded SQLite store)".to_string(),
        ));
    }
    Ok(ServeConfig {
        data_dir: global.data_dir.clone(),
        listen,
        lease_ttl,
        reaper_interval,
        seats,
        embedded_factory: !a.no_factory,
        kill_grace,
        push: !a.no_push,
        capabilities: a.caps,
        db: a.db,
        config_file: a.config,
        limits: gantry_server::Limits::default(),
        sandbox: sandbox_settings(a.sandbox),
        // clap makes sure both flags or neither are given.
        tls: match (a.tls_cert, a.tls_key) {
            (Some(cert), Some(key)) => Some(gantry_server::TlsFiles { cert, key }),
            _ => None,
        },
        // Set when the server starts (`serve::start`): this binary's own path.
        forwarder: None,
    })
}

fn bad(subcommand: &str, arg: &str, value: &str, reason: String) -> UsageError {
    UsageError {
        subcommand: subcommand.to_string(),
        arg: arg.to_string(),
        value: value.to_string(),
        reason,
    }
}

/// Parses a duration such as `60s`, `500ms`, `2m` or `1h 30m`.
pub fn parse_duration(subcommand: &str, arg: &str, value: &str) -> Result<Duration, UsageError> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        bad(
            subcommand,
            arg,
            value,
            format!("expected a duration such as 60s, 500ms, 2m or 1h ({e})"),
        )
    })
}

fn parse_count(subcommand: &str, arg: &str, value: &str, min: usize) -> Result<usize, UsageError> {
    match value.trim().parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(bad(
            subcommand,
            arg,
            value,
            format!("expected at least {min}"),
        )),
        Err(_) => Err(bad(
            subcommand,
            arg,
            value,
            format!("expected a whole number of at least {min}"),
        )),
    }
}

/// The wall of a bench's runs from its `--sandbox` (`bwrap` or `docker`, checked by
/// clap) and `--image`.
fn bench_wall(kind: &str, image: String) -> crate::bench::BenchSandbox {
    match kind {
        "docker" => crate::bench::BenchSandbox::Docker(image),
        _ => crate::bench::BenchSandbox::Bwrap,
    }
}

/// A comma-separated list of sandbox kinds (`none`, `bwrap`, `docker`), each once.
fn parse_kinds(
    subcommand: &str,
    value: &str,
    image: &str,
) -> Result<Vec<crate::bench::BenchSandbox>, UsageError> {
    use crate::bench::BenchSandbox;
    let mut kinds: Vec<BenchSandbox> = Vec::new();
    for name in value.split(',').map(str::trim) {
        let kind = match name {
            "none" => BenchSandbox::None,
            "bwrap" => BenchSandbox::Bwrap,
            "docker" => BenchSandbox::Docker(image.to_string()),
            other => {
                return Err(bad(
                    subcommand,
                    "--sandbox <KINDS>",
                    value,
                    format!(
                        "unknown kind {other:?}: expected none, bwrap or docker, comma-separated"
                    ),
                ));
            }
        };
        if kinds.contains(&kind) {
            return Err(bad(
                subcommand,
                "--sandbox <KINDS>",
                value,
                format!("{name} is named twice"),
            ));
        }
        kinds.push(kind);
    }
    Ok(kinds)
}

fn parse_id(subcommand: &str, value: &str) -> Result<JobId, UsageError> {
    value
        .parse::<JobId>()
        .map_err(|reason| bad(subcommand, "<ID>", value, reason))
}

fn parse_token_name(subcommand: &str, arg: &str, value: &str) -> Result<String, UsageError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(bad(
            subcommand,
            arg,
            value,
            "a token name is 1 to 64 letters, digits, `_`, `-`, `.` or `@`".to_string(),
        ))
    }
}

fn parse_url(value: &str) -> Result<String, UsageError> {
    let trimmed = value.trim().trim_end_matches('/');
    let Some(rest) = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
    else {
        return Err(bad(
            "",
            "--url <URL>",
            value,
            "expected a URL such as http://127.0.0.1:7700 or https://gantry.internal:7700"
                .to_string(),
        ));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(bad(
            "",
            "--url <URL>",
            value,
            "the URL has no host; expected a URL such as http://127.0.0.1:7700".to_string(),
        ));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests;
