//! The low-level form of the command line: clap structs that hold what was typed, as
//! strings where a value needs checking. [`crate::command`] turns them into a validated
//! [`crate::command::Invocation`] before anything runs, so every check lives in one
//! place and its errors name the argument and the value.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const ROOT_AFTER_HELP: &str = "\
Start here:
  gantry demo                      runs a small queue of jobs in a temp repo (no account, no network)

Everyday use:
  gantry serve &                   the server with an embedded factory, data in ./.gantry
  gantry submit job.md             prints the new job's id
  gantry ls                        the newest jobs
  gantry show 1                    one job and its runs
  gantry logs 1 --follow           the job's output, live

The CLI finds the server with --url (GANTRY_URL, default http://127.0.0.1:7700) and the
admin token with --token (GANTRY_TOKEN), else in <data-dir>/admin.token. An https:// server
must present a certificate the system trusts, or one signed by a CA in --ca-file
(GANTRY_CA_FILE). Times are UTC.
Exit codes: 0 ok, 1 error, 2 usage error.";

/// `gantry`: a control plane for fleets of coding agents.
#[derive(Debug, Parser)]
#[command(
    name = "gantry",
    version,
    about = "Gantry: queue jobs, run each in its own git worktree, record what happened",
    long_about = "Gantry queues jobs (markdown files with YAML front matter), leases each one to a \
factory that runs it in its own git worktree, and records what happened, without losing a job \
when a machine dies and without letting a stale worker write.",
    after_help = ROOT_AFTER_HELP,
    propagate_version = true,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// The server's base URL.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "GANTRY_URL",
        hide_env_values = true,
        default_value = "http://127.0.0.1:7700",
        value_name = "URL"
    )]
    pub url: String,

    /// API token (else read from <data-dir>/admin.token).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "GANTRY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// A PEM file of CA certificates to trust for an https:// server, besides the
    /// system's roots (for a certificate a private CA signed).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "GANTRY_CA_FILE",
        value_name = "PATH"
    )]
    pub ca_file: Option<PathBuf>,

    /// Data directory: the SQLite store, worktrees, artifacts and admin.token.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "GANTRY_DATA_DIR",
        hide_env_values = true,
        default_value = "./.gantry",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Log to stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, help_heading = "Global options", action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Sub,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Run the server with an embedded factory until SIGINT or SIGTERM.
    #[command(
        long_about = "Runs the HTTP API, the reaper and (unless --no-factory) an embedded factory \
with --seats concurrent runs, over the SQLite store in --data-dir. On first start it writes an \
admin token to <data-dir>/admin.token (mode 0600). SIGINT or SIGTERM shuts it down gracefully; \
jobs that were running come back through the reaper on the next start.",
        after_help = "Examples:\n  gantry serve\n  gantry serve --listen 127.0.0.1:0 --seats 2 --lease-ttl 30s\n  gantry serve --no-factory --data-dir /var/lib/gantry\n  gantry serve --cap docker --cap gpu=a100\n  gantry serve --listen 0.0.0.0:7700 --tls-cert server.crt --tls-key server.key"
    )]
    Serve(ServeArgs),

    /// Run a remote factory: claim jobs from a server and run them here.
    #[command(
        long_about = "Registers with the server at --url (a token of scope factory or admin, from \
--token or GANTRY_TOKEN), then claims jobs whenever a seat is free and runs each one in its own \
git worktree under --data-dir, renewing its lease and reporting events and the result over HTTP. \
On start it re-adopts the runs a previous factory on the same data dir left running. SIGINT or \
SIGTERM stops it: it claims nothing more and stops its runs (or, with --leave-runs, leaves them \
running for the next factory on this data dir to adopt).",
        after_help = "Examples:\n  gantry factory --url http://gantry.internal:7700 --token gtk_... --seats 4\n  gantry factory --url https://gantry.internal:7700 --ca-file /etc/gantry/ca.pem --token gtk_...\n  gantry factory --cap docker --cap gpu=a100 --data-dir /var/lib/gantry-factory"
    )]
    Factory(FactoryArgs),

    /// Submit job files as one batch and print the new jobs' ids.
    #[command(
        long_about = "Sends every FILE in one batch: the batch is stored whole or not at all. Prints \
one job id per line on stdout, in file order; a file whose idempotency key matched a job stored \
earlier prints that job's id and a note on stderr. A bad file is refused with an error naming \
the file, the line and the field.",
        after_help = "A job file (markdown with YAML front matter; the body is given to the process as $GANTRY_PROMPT_FILE):\n  ---\n  title: Add a health endpoint\n  repo: ../my-service            # a local path (relative to the file) or a git URL\n  command: [sh, -c, \"make health\"]\n  priority: 7                    # 0..9, higher first; default 5\n  deps: [schema-change]          # job ids or idempotency keys\n  lock: my-service               # at most one running job per lock\n  timeout: 30m\n  max_attempts: 3\n  retry_on: [lost, failed]\n  idempotency_key: health-endpoint\n  ---\n  Add a GET /health endpoint that returns 200.\n\nExamples:\n  gantry submit job.md\n  gantry submit jobs/*.md\n  id=$(gantry submit fix.md) && gantry logs \"$id\" --follow"
    )]
    Submit(SubmitArgs),

    /// List jobs, newest first.
    #[command(
        after_help = "States: blocked, queued, running, checking, succeeded, failed, canceled, killed.\n\nExamples:\n  gantry ls\n  gantry ls --state running\n  gantry ls --state failed --limit 5 --json"
    )]
    Ls(LsArgs),

    /// Show one job and its runs.
    #[command(
        long_about = "Shows the job (state, priority, attempts, lock, deps, times) and a table of \
its runs: id, attempt, fencing epoch, outcome, exit code, branch, commit, files changed and \
lines added/deleted.",
        after_help = "Examples:\n  gantry show 12\n  gantry show 12 --json"
    )]
    Show(IdJsonArgs),

    /// Print a job's events (append-only, in order).
    #[command(
        long_about = "Prints the job's events oldest first. With --follow, streams new events as \
they happen (server-sent events; a dropped stream is resumed with Last-Event-ID) and stops when \
the job reaches a final state. With --json, prints the events as a JSON array, or one JSON \
object per line when following.",
        after_help = "Examples:\n  gantry events 12\n  gantry events 12 --follow\n  gantry events 12 --json"
    )]
    Events(FollowArgs),

    /// Print a job's output: stdout and stderr of every run, interleaved in order.
    #[command(
        long_about = "Prints the text of the job's run.output events: stdout and stderr of every \
attempt, interleaved in the order they were recorded. With --follow, keeps printing until the \
job reaches a final state.",
        after_help = "Examples:\n  gantry logs 12\n  gantry logs 12 --follow"
    )]
    Logs(FollowArgs),

    /// Print the diff of a job's latest attempt.
    #[command(after_help = "Examples:\n  gantry diff 12\n  gantry diff 12 | git apply")]
    Diff(IdJsonArgs),

    /// Cancel a job: SIGTERM to its process group, a grace period, then SIGKILL.
    #[command(after_help = "Examples:\n  gantry cancel 12")]
    Cancel(IdJsonArgs),

    /// Kill a job (SIGKILL to its process group at once), or every running job with --all.
    #[command(
        override_usage = "gantry kill [OPTIONS] <ID>\n       gantry kill [OPTIONS] --all",
        long_about = "Kills one job at once (SIGKILL to its process group). With --all, kills \
every running job and pauses claiming, so nothing new starts until `gantry resume`.",
        after_help = "Examples:\n  gantry kill 12\n  gantry kill --all && gantry resume"
    )]
    Kill(KillArgs),

    /// Pause claiming: running jobs go on, nothing new starts.
    #[command(after_help = "Examples:\n  gantry pause\n  gantry resume")]
    Pause(JsonArgs),

    /// Resume claiming after `pause` or `kill --all`.
    #[command(after_help = "Examples:\n  gantry resume")]
    Resume(JsonArgs),

    /// Send a failed, canceled or killed job back to the queue with one more attempt.
    #[command(after_help = "Examples:\n  gantry retry 12")]
    Retry(IdJsonArgs),

    /// Show whether claiming is paused and how many jobs are in each state.
    #[command(after_help = "Examples:\n  gantry status\n  gantry status --json")]
    Status(JsonArgs),

    /// List the factories: seats, running jobs, capabilities, last heartbeat, whether they
    /// claim, health.
    #[command(
        long_about = "Lists every registered factory (the embedded one and remote `gantry factory` \
workers): its seats, the jobs it is running now, its capabilities, when it was last heard from \
(heartbeat, lease renewal or registration), the load, free memory and free disk its last \
heartbeat reported, whether it claims jobs (CLAIMING: no while its available memory or free \
disk is under its thresholds; the reason is printed under the table, and is `admission` in \
--json, null while it claims), and its health: down when it has been silent for half the lease \
TTL (its leases then expire as usual).",
        after_help = "Examples:\n  gantry factories\n  gantry factories --json"
    )]
    Factories(JsonArgs),

    /// Create, list and revoke API tokens.
    #[command(
        subcommand,
        after_help = "Scopes: admin ⊇ operator ⊇ submitter ⊇ reader; factory runs the factory protocol and reads.\n\nExamples:\n  gantry token create --name ci --scope submitter\n  gantry token ls\n  gantry token revoke ci"
    )]
    Token(TokenSub),

    /// Run a small queue of jobs in a temp git repo: deps, a lock, priorities, a retry.
    #[command(
        long_about = "Makes a small git repo in a temp dir, starts an embedded server on a free \
port (data in the temp dir), submits a few command jobs that show dependencies, a named lock, \
priorities and a retry, prints a live log until they all finish, then a summary and where the \
result branches are. Needs no network and no account; takes a few seconds. The temp dir is \
removed at the end unless --keep.",
        after_help = "Examples:\n  gantry demo\n  gantry demo --keep"
    )]
    Demo(DemoArgs),

    /// Benchmarks: the queue and /metrics (store only), dispatch and kill latency and
    /// concurrent runs (real runs), the secret scanner (in memory).
    #[command(subcommand)]
    Bench(BenchSub),
}

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7700", value_name = "ADDR")]
    pub listen: String,
    /// How long a lease lasts without a renewal, e.g. 60s or 2m.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub lease_ttl: String,
    /// How often the reaper returns expired leases to the queue.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub reaper_interval: String,
    /// Concurrent runs of the embedded factory.
    #[arg(long, default_value = "4", value_name = "N")]
    pub seats: String,
    /// Run no embedded factory (remote factories only).
    #[arg(long)]
    pub no_factory: bool,
    /// Time between SIGTERM and SIGKILL when a run is canceled or times out.
    #[arg(long, default_value = "3s", value_name = "DURATION")]
    pub kill_grace: String,
    /// Do not push succeeded branches back to the source repo as gantry/<job>.
    #[arg(long)]
    pub no_push: bool,
    /// A capability of the embedded factory, `name` or `name=value` (repeatable).
    #[arg(long = "cap", value_name = "NAME[=VALUE]")]
    pub caps: Vec<String>,
    /// Keep the store in PostgreSQL (postgres://USER@HOST:PORT/DB) instead of SQLite in
    /// the data dir; several servers may share one database.
    #[arg(long, value_name = "URL", env = "GANTRY_DB")]
    pub db: Option<String>,
    /// The config file (engines, prices, admission, checkpoints; docs/engines.md);
    /// default: <data-dir>/gantry.toml when it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, the server's own first); needs
    /// --tls-key.
    #[arg(
        long,
        value_name = "PEM",
        env = "GANTRY_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert; needs --tls-cert.
    #[arg(
        long,
        value_name = "PEM",
        env = "GANTRY_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Where runs are sandboxed and what they may see.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// The sandbox options `serve` and `factory` share.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Run jobs without a sandbox when bubblewrap does not work on this machine. Any
    /// job can then read the data dir, the tokens and other jobs' work: only for
    /// machines where every submitter is trusted that far.
    #[arg(long)]
    pub allow_unsandboxed_jobs: bool,
    /// The bubblewrap program that sandboxes runs.
    #[arg(
        long,
        value_name = "PATH",
        env = "GANTRY_BWRAP",
        default_value = "bwrap"
    )]
    pub bwrap: PathBuf,
    /// A path every sandboxed run may read, besides the system (repeatable).
    #[arg(long = "sandbox-ro", value_name = "PATH")]
    pub sandbox_ro: Vec<PathBuf>,
    /// A path every sandboxed run may write, besides its worktree; shared by all jobs
    /// (repeatable).
    #[arg(long = "sandbox-rw", value_name = "PATH")]
    pub sandbox_rw: Vec<PathBuf>,
    /// The sandbox of jobs whose file names none: bwrap (the default) or docker (a
    /// container per run on the local Docker engine; gates and reviews stay in bwrap).
    #[arg(long = "sandbox", value_name = "KIND", value_parser = ["bwrap", "docker"])]
    pub sandbox: Option<String>,
    /// Offer the docker sandbox to the jobs that ask for it (`sandbox: docker`),
    /// advertised as the capability `sandbox:docker` when the engine answers.
    #[arg(long)]
    pub docker: bool,
    /// The image of docker jobs that name none.
    #[arg(long, value_name = "IMAGE", env = "GANTRY_DOCKER_IMAGE")]
    pub docker_image: Option<String>,
    /// The Docker engine's unix socket.
    #[arg(long, value_name = "PATH")]
    pub docker_socket: Option<PathBuf>,
}

/// Arguments of `factory`.
#[derive(Debug, Args)]
pub struct FactoryArgs {
    /// Concurrent runs.
    #[arg(long, default_value = "4", value_name = "N")]
    pub seats: String,
    /// A capability of this factory, `name` or `name=value` (repeatable).
    #[arg(long = "cap", value_name = "NAME[=VALUE]")]
    pub caps: Vec<String>,
    /// The name it registers under (a restarted factory keeps its name); default: the
    /// host name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Time between SIGTERM and SIGKILL when a run is canceled or times out.
    #[arg(long, default_value = "3s", value_name = "DURATION")]
    pub kill_grace: String,
    /// Do not claim while the machine's available memory is under this many MiB (0: off).
    #[arg(long, default_value = "2048", value_name = "MIB")]
    pub min_free_memory: String,
    /// Do not claim while the data dir's disk has less than this many MiB free (0: off).
    #[arg(long, default_value = "1024", value_name = "MIB")]
    pub min_free_disk: String,
    /// On SIGINT/SIGTERM, leave the runs going for the next factory on this data dir to
    /// adopt (for upgrades), instead of stopping them.
    #[arg(long)]
    pub leave_runs: bool,
    /// A gantry.toml whose `[secrets]` (the secret scan's rules and allowlist, which
    /// also redact what runs print) this factory uses; default: <data-dir>/gantry.toml
    /// when it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where runs are sandboxed and what they may see.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Arguments of `submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Job files (markdown with YAML front matter).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print the server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only jobs in this state.
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
    /// At most this many jobs.
    #[arg(long, value_name = "N")]
    pub limit: Option<String>,
    /// Print the jobs as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A job id and `--json`.
#[derive(Debug, Args)]
pub struct IdJsonArgs {
    /// Job id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A job id, `--follow` and `--json`.
#[derive(Debug, Args)]
pub struct FollowArgs {
    /// Job id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Keep streaming until the job reaches a final state.
    #[arg(short, long)]
    pub follow: bool,
    /// Print JSON (one object per line when following).
    #[arg(long)]
    pub json: bool,
}

/// Just `--json`.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Job id.
    #[arg(
        value_name = "ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub id: Option<String>,
    /// Kill every running job and pause claiming.
    #[arg(long)]
    pub all: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenSub {
    /// Create a token and print its secret (shown only this once).
    #[command(
        after_help = "Examples:\n  gantry token create --name ci --scope submitter\n  GANTRY_TOKEN=$(gantry token create --name bot --scope reader) gantry ls"
    )]
    Create(TokenCreateArgs),
    /// List tokens (never their secrets).
    Ls(JsonArgs),
    /// Revoke a token by name.
    Revoke(TokenRevokeArgs),
}

/// Arguments of `token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Unique name of the token.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// admin, operator, submitter, reader or factory.
    #[arg(long, value_name = "SCOPE")]
    pub scope: String,
    /// Print the token's record and secret as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `token revoke`.
#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    /// Name of the token.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Print the revoked token's record as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the temp dir (repo, data dir, job files) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

/// `bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchSub {
    /// Burn down no-op jobs through a real SQLite store with concurrent workers.
    #[command(
        long_about = "Opens a fresh SQLite store (in a temp dir, or --db), submits --jobs no-op jobs \
and burns them down with --workers concurrent workers, each claiming with a lease and finishing \
under its epoch. The last line is `jobs_per_s=<x> p50_claim_ms=<y> p99_claim_ms=<z>`.",
        after_help = "Examples:\n  gantry bench queue --jobs 10000 --workers 4"
    )]
    Queue(BenchQueueArgs),
    /// Submit-to-process-start latency per sandbox kind, next to each kind's bare floor.
    #[command(
        long_about = "In a generated git repo of --files files, for each kind of --sandbox (none, \
bwrap, docker): measures the kind's floor (`git worktree add` plus the process started bare, in \
`bwrap --unshare-all --share-net`, or by `docker run --rm`) and then real command jobs of that kind through \
an embedded server (from just before the submit request to the wall clock the job's process \
reads). Prints p50/p99 of both and the difference per kind, what each sandbox adds over a run \
without one, and with docker the handover of a worktree to the container's user and back. The \
last line is `<kind>_p50_ms=<x> <kind>_p99_ms=<y> <kind>_floor_p50_ms=<z> <kind>_floor_p99_ms=<w>` \
per kind, then `handover_p50_ms=<h> reclaim_p50_ms=<r>` with docker.",
        after_help = "Examples:\n  gantry bench dispatch\n  gantry bench dispatch --runs 50 --sandbox none,bwrap,docker --image gantry-agent:latest"
    )]
    Dispatch(BenchDispatchArgs),
    /// Many concurrent script-engine runs: Gantry's memory and API latency under load.
    #[command(
        long_about = "Starts an embedded server with one seat per run, submits --runs script-engine \
jobs that each sleep --sleep (in bubblewrap, or with --sandbox docker a container each), and while \
they all run, samples the resident memory of Gantry's own processes and times API calls (status, \
job listings, one job shown); then checks that every run succeeded. Prints the server's peak \
memory (sampled, and its VmHWM). The last line is \
`runs=<n> total_rss_mb=<x> api_p50_ms=<y> api_p99_ms=<z>`.",
        after_help = "Examples:\n  gantry bench concurrent --runs 500\n  gantry bench concurrent --runs 50 --sleep 10s\n  gantry bench concurrent --runs 50 --sleep 60s --sandbox docker --image gantry-agent:latest"
    )]
    Concurrent(BenchConcurrentArgs),
    /// Kill latency: from the kill call to the whole process tree of a run gone.
    #[command(
        long_about = "Through an embedded server, runs --runs command jobs that each start a small \
process tree (a shell with children that ignore SIGTERM), and for each one measures the time \
from the kill request (POST /v1/jobs/ID/kill) until no process of the run's group is left. The \
last line is `kills=<n> p50_ms=<x> p99_ms=<y> max_ms=<z>`.",
        after_help = "Examples:\n  gantry bench kill\n  gantry bench kill --runs 50"
    )]
    Kill(BenchKillArgs),
    /// `/metrics` scrape time with a big queue.
    #[command(
        long_about = "Opens a fresh SQLite store in a temp dir (or the empty PostgreSQL database \
--db), queues --jobs no-op jobs (submitted \
in batches, spread over a few capability sets), then renders the whole /metrics exposition \
--scrapes times, each with an empty queue-depth cache so every scrape queries the store. Prints \
p50/p99; the last line is `metrics_p50_ms=<x>`.",
        after_help = "Examples:\n  gantry bench metrics\n  gantry bench metrics --jobs 100000 --scrapes 200"
    )]
    Metrics(BenchMetricsArgs),
    /// The secret scanner's throughput on diff-shaped text.
    #[command(
        long_about = "Generates --mb megabytes of unified diff (hunks of ordinary code with fake \
credentials planted in about one added line in 2,000), then times the secret scanner over it \
(added lines only, as a result's diff is checked) and the redactor over the same text, best of \
three runs each. Prints MB/s and the build profile; the last line is `secrets_mb_per_s=<x>`.",
        after_help = "Examples:\n  gantry bench secrets\n  gantry bench secrets --mb 128"
    )]
    Secrets(BenchSecretsArgs),
    /// What the checking stage adds to a run, with one no-op gate.
    #[command(
        long_about = "Starts an embedded server on SQLite in a temp dir and runs --runs command jobs one at a time with one no-op gate (`true`), then --runs without a gate. Each job's process writes the wall clock as its last act; the measure ends at its run's recorded end. Prints p50/p99 of both; the last line is `check_p50_ms=<x> nogate_p50_ms=<y>`.",
        after_help = "Examples:\n  gantry bench check\n  gantry bench check --runs 50"
    )]
    Check(BenchCheckArgs),
}

/// Arguments of `bench check`.
#[derive(Debug, Args)]
pub struct BenchCheckArgs {
    /// Measured jobs of each kind.
    #[arg(long, default_value = "20", value_name = "N")]
    pub runs: String,
}

/// Arguments of `bench secrets`.
#[derive(Debug, Args)]
pub struct BenchSecretsArgs {
    /// Megabytes of diff text to generate and scan.
    #[arg(long, default_value = "32", value_name = "N")]
    pub mb: String,
}

/// Arguments of `bench metrics`.
#[derive(Debug, Args)]
pub struct BenchMetricsArgs {
    /// Queued jobs.
    #[arg(long, default_value = "100000", value_name = "N")]
    pub jobs: String,
    /// Timed scrapes.
    #[arg(long, default_value = "100", value_name = "S")]
    pub scrapes: String,
    /// An empty PostgreSQL database (postgres://USER@HOST:PORT/DB) to fill instead of a
    /// SQLite store in a temp dir.
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
}

/// Arguments of `bench kill`.
#[derive(Debug, Args)]
pub struct BenchKillArgs {
    /// Jobs to start and kill.
    #[arg(long, default_value = "30", value_name = "N")]
    pub runs: String,
    /// What the jobs run in: bwrap, or docker (a container each, on the local engine).
    #[arg(long, default_value = "bwrap", value_name = "KIND", value_parser = ["bwrap", "docker"])]
    pub sandbox: String,
    /// The image of the docker jobs (it needs `/bin/sh` and `sleep`).
    #[arg(long, default_value = "gantry-agent:latest", value_name = "IMAGE")]
    pub image: String,
}

/// Arguments of `bench concurrent`.
#[derive(Debug, Args)]
pub struct BenchConcurrentArgs {
    /// Concurrent runs.
    #[arg(long, default_value = "500", value_name = "N")]
    pub runs: String,
    /// How long each run sleeps; the measurement window is the time all of them run.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub sleep: String,
    /// What the runs run in: bwrap, or docker (a container each, on the local engine).
    #[arg(long, default_value = "bwrap", value_name = "KIND", value_parser = ["bwrap", "docker"])]
    pub sandbox: String,
    /// The image of the docker runs (it needs `/bin/sh` and `sleep`).
    #[arg(long, default_value = "gantry-agent:latest", value_name = "IMAGE")]
    pub image: String,
}

/// Arguments of `bench queue`.
#[derive(Debug, Args)]
pub struct BenchQueueArgs {
    /// Number of jobs.
    #[arg(long, default_value = "10000", value_name = "N")]
    pub jobs: String,
    /// Concurrent workers.
    #[arg(long, default_value = "4", value_name = "K")]
    pub workers: String,
    /// The store: a SQLite file that does not exist yet, or an empty PostgreSQL database
    /// (postgres://USER@HOST:PORT/DB); default: SQLite in a temp dir.
    #[arg(long, value_name = "PATH|URL")]
    pub db: Option<String>,
}

/// Arguments of `bench dispatch`.
#[derive(Debug, Args)]
pub struct BenchDispatchArgs {
    /// Measured runs of each kind.
    #[arg(long, default_value = "20", value_name = "N")]
    pub runs: String,
    /// The sandbox kinds to measure, comma-separated: none, bwrap, docker.
    #[arg(long, default_value = "none,bwrap", value_name = "KINDS")]
    pub sandbox: String,
    /// The image of the docker runs (it needs `/bin/sh`, and `date +%s%N` or busybox).
    #[arg(long, default_value = "gantry-agent:latest", value_name = "IMAGE")]
    pub image: String,
    /// Files in the generated repository the runs' worktrees are made from.
    #[arg(long, default_value = "3000", value_name = "N")]
    pub files: String,
}
