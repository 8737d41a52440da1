//! `gantry bench queue`; `gantry bench concurrent` is in [`concurrent`], `gantry bench
//! dispatch` in [`dispatch`], `gantry bench kill` in [`kill`], `gantry bench metrics` in [`metrics`],
//! `gantry bench secrets` in [`secrets`], `gantry bench check` in [`check`].

pub mod check;
pub mod concurrent;
pub mod dispatch;
pub mod kill;
pub mod metrics;
pub mod secrets;

use crate::command::BenchDb;
use crate::error::{CliError, Kind, from_client};
use crate::output;
use crate::serve;
use gantry_client::Client;
use gantry_core::{Job, JobId, JobState};
use gantry_protocol::SubmitRequest;
use gantry_server::ServeConfig;
use gantry_store::{PgOptions, PgStore, SqliteStore, Store};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `gantry bench queue --jobs N --workers K [--db PATH|URL]`.
pub async fn queue(jobs: usize, workers: usize, db: Option<BenchDb>) -> Result<(), CliError> {
    if let Some(BenchDb::Postgres(url)) = &db {
        return queue_postgres(jobs, workers, url).await;
    }
    // The temp dir lives until the end of the benchmark, then is removed.
    let (_tmp, path) = match db {
        Some(BenchDb::Postgres(_)) => unreachable!("handled above"),
        Some(BenchDb::Sqlite(p)) => {
            if p.exists() {
                return Err(CliError::new(Kind::Usage, format!(
                    "invalid value '{}' for '--db <PATH>': the file exists; the benchmark needs a fresh store",
                    p.display()
                ))
                .hint("pass a path that does not exist yet, or leave --db out to use a temp dir"));
            }
            (None, p)
        }
        None => {
            let tmp = temp_dir("gantry-bench-")?;
            let p = tmp.path().join("bench.db");
            (Some(tmp), p)
        }
    };
    let store = SqliteStore::open(&path).map_err(|e| {
        CliError::local(format!("cannot open a SQLite store at {}", path.display()))
            .cause(e.to_string())
    })?;
    let store: Arc<dyn Store> = Arc::new(store);
    output::line(format!(
        "bench queue: {jobs} no-op jobs, {workers} workers, SQLite store {}",
        path.display()
    ));
    output::line(
        "each job: claimed with a lease, then finished (fenced) and the next claimed in one call (one transaction each)",
    );
    output::line(
        "claim latency: each call that claims (a worker's first claim, then each finish-and-claim)",
    );
    let report = gantry_store::bench::queue(store, jobs, workers)
        .await
        .map_err(|e| {
            CliError::new(Kind::Local, "the queue benchmark failed").cause(e.to_string())
        })?;
    output::line(report.to_string());
    Ok(())
}

/// The queue benchmark on PostgreSQL: the database must be empty, since the benchmark's
/// workers would claim any job in it.
async fn queue_postgres(jobs: usize, workers: usize, url: &str) -> Result<(), CliError> {
    // Claims and simple finishes go through the store's batch lanes, which have
    // connections of their own; a finish that takes the full path (stale, retried)
    // holds a pooled one. One per worker, plus the store's notifier and change poller,
    // so no worker ever waits for a connection.
    let opts = PgOptions {
        max_connections: workers.max(1) + 2,
        ..PgOptions::default()
    };
    let store = empty_postgres(url, opts).await?;
    let store: Arc<dyn Store> = Arc::new(store);
    output::line(format!(
        "bench queue: {jobs} no-op jobs, {workers} workers, PostgreSQL store"
    ));
    output::line(
        "each job: claimed with a lease, then finished (fenced) and the next claimed in one call; concurrent calls share one statement and one commit",
    );
    output::line(
        "claim latency: each call that claims (a worker's first claim, then each finish-and-claim)",
    );
    let report = gantry_store::bench::queue(store, jobs, workers)
        .await
        .map_err(|e| {
            CliError::new(Kind::Local, "the queue benchmark failed").cause(e.to_string())
        })?;
    output::line(report.to_string());
    Ok(())
}

/// Opens the PostgreSQL store at `url` for a benchmark, which needs an empty database:
/// its jobs would be claimed, or counted, with the benchmark's own.
async fn empty_postgres(url: &str, opts: PgOptions) -> Result<PgStore, CliError> {
    let store = PgStore::connect(url, opts).await.map_err(|e| {
        CliError::local("cannot open the PostgreSQL store")
            .cause(e.to_string())
            .hint("check the URL, and that the server is up and the user may create tables")
    })?;
    let status = store
        .status()
        .await
        .map_err(|e| CliError::local("cannot read the store's status").cause(e.to_string()))?;
    let existing: u64 = status.jobs.values().sum();
    if existing > 0 {
        return Err(CliError::new(
            Kind::Usage,
            format!("invalid value for '--db <URL>': the database already holds {existing} jobs; the benchmark needs an empty one"),
        )
        .hint("create a fresh database (`createdb gantry_bench`) and pass its URL"));
    }
    Ok(store)
}

/// What a benchmark's runs run in: no sandbox, bubblewrap, or containers of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchSandbox {
    /// No wall (an embedded factory that runs every job unsandboxed).
    None,
    /// Bubblewrap, the default process sandbox.
    Bwrap,
    /// A container per run, of this image.
    Docker(String),
}

impl BenchSandbox {
    /// The kind's name, as a job file and `--sandbox` spell it.
    pub fn name(&self) -> &'static str {
        match self {
            BenchSandbox::None => "none",
            BenchSandbox::Bwrap => "bwrap",
            BenchSandbox::Docker(_) => "docker",
        }
    }

    /// The embedded factory's sandbox settings for runs of this kind; runs may also
    /// write under `root`, where the benchmarks keep their stamps.
    fn settings(&self, root: &Path) -> gantry_server::SandboxSettings {
        let mut settings = gantry_server::SandboxSettings {
            read_write: vec![root.to_path_buf()],
            ..gantry_server::SandboxSettings::default()
        };
        match self {
            // As `--allow-unsandboxed-jobs` on a machine without bubblewrap: the
            // factory's probe of a program that does not exist fails, so it runs every
            // job without a wall and offers `sandbox:none`.
            BenchSandbox::None => {
                settings.allow_unsandboxed = true;
                settings.bwrap = root.join("no-bwrap-for-this-bench");
            }
            BenchSandbox::Bwrap => {}
            BenchSandbox::Docker(image) => {
                settings.docker = true;
                settings.docker_image = Some(image.clone());
            }
        }
        settings
    }

    /// The `sandbox:` line of a job file that runs in this kind (none for the
    /// factory's default, which is the kind itself for `none` and `bwrap`).
    fn job_field(&self) -> String {
        match self {
            BenchSandbox::None | BenchSandbox::Bwrap => String::new(),
            BenchSandbox::Docker(image) => format!("sandbox: {{ kind: docker, image: {image} }}\n"),
        }
    }
}

/// An embedded server for a benchmark, with its data in `root/data`, listening on a
/// free loopback port, never pushing, and a client for it with the admin token.
async fn bench_server(
    root: &Path,
    seats: u32,
    lease_ttl: Duration,
    reaper_interval: Duration,
) -> Result<(gantry_server::RunningServer, Client), CliError> {
    // Runs are sandboxed as always; they write their wall-clock stamps beside the
    // data dir.
    let sandbox = gantry_server::SandboxSettings {
        read_write: vec![root.to_path_buf()],
        ..gantry_server::SandboxSettings::default()
    };
    bench_server_with(root, seats, (lease_ttl, reaper_interval), sandbox).await
}

/// [`bench_server`] with the embedded factory's sandbox settings given.
async fn bench_server_with(
    root: &Path,
    seats: u32,
    (lease_ttl, reaper_interval): (Duration, Duration),
    sandbox: gantry_server::SandboxSettings,
) -> Result<(gantry_server::RunningServer, Client), CliError> {
    let server = serve::start(ServeConfig {
        data_dir: root.join("data"),
        listen: ([127, 0, 0, 1], 0).into(),
        lease_ttl,
        reaper_interval,
        seats,
        embedded_factory: true,
        kill_grace: Duration::from_secs(1),
        push: false,
        capabilities: Vec::new(),
        db: None,
        config_file: None,
        limits: gantry_server::Limits::default(),
        sandbox,
        tls: None,
        forwarder: None,
    })
    .await?;
    let url = format!("http://{}", server.addr());
    let client = Client::new(
        &url,
        Some(server.admin_token()),
        crate::handlers::CONNECT_TIMEOUT,
    )
    .map_err(|e| from_client(e, &url))?;
    Ok((server, client))
}

/// A temp dir for a benchmark, removed when dropped.
fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, CliError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| CliError::local("cannot create a temp dir").cause(e.to_string()))
}

/// Nanoseconds since the Unix epoch, by the wall clock (the one `date +%s%N` reads).
fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn read_stamp(path: &Path) -> Result<i128, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::local(format!("cannot read the timestamp file {}", path.display()))
            .cause(e.to_string())
    })?;
    text.trim().parse::<i128>().map_err(|e| {
        CliError::local(format!(
            "bad timestamp {:?} in {}",
            text.trim(),
            path.display()
        ))
        .cause(e.to_string())
        .hint("the benchmark needs GNU date (`date +%s%N`)")
    })
}

/// The command that both measures end with: a process that writes the wall clock in
/// nanoseconds to `stamp`.
fn stamp_script(stamp: &Path) -> String {
    format!("date +%s%N > '{}'", stamp.display())
}

/// Submits the one job of `req` and waits until it ended, succeeded (`bench` names the
/// benchmark in the hint of any other end). Waiting for the end keeps the server idle
/// for the next submit.
async fn run_one(client: &Client, req: &SubmitRequest, bench: &str) -> Result<Job, CliError> {
    let api = |e| from_client(e, client.base());
    let resp = client.submit(req).await.map_err(api)?;
    let id: JobId = resp.jobs.first().map(|s| s.id).ok_or_else(|| {
        CliError::new(
            Kind::Server,
            "the server accepted the job but returned no id",
        )
    })?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let job = loop {
        let job = client.job(id).await.map_err(api)?;
        if job.state.is_terminal() {
            break job;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CliError::new(
                Kind::Server,
                format!("bench job {id} did not finish within 60 s"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if job.state != JobState::Succeeded {
        return Err(
            CliError::new(Kind::Server, format!("bench job {id} ended {}", job.state)).hint(
                format!(
                    "`gantry bench {bench} -v` shows the server's log; the job's reason: {}",
                    job.reason.unwrap_or_default()
                ),
            ),
        );
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[1.0, 2.0], 50.0), 1.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
