//! `gantry bench queue`, `gantry bench dispatch` and `gantry bench concurrent`;
//! `gantry bench kill` is in [`kill`], `gantry bench metrics` in [`metrics`],
//! `gantry bench secrets` in [`secrets`], `gantry bench check` in [`check`].

pub mod check;
pub mod kill;
pub mod metrics;
pub mod secrets;

use crate::command::BenchDb;
use crate::error::{CliError, Kind, from_client};
use crate::gitutil::{git, init_repo};
use crate::output;
use crate::serve;
use gantry_client::Client;
use gantry_core::{Job, JobId, JobState};
use gantry_protocol::{SubmitFile, SubmitRequest};
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
            let tmp = tempfile::Builder::new()
                .prefix("gantry-bench-")
                .tempdir()
                .map_err(|e| CliError::local("cannot create a temp dir").cause(e.to_string()))?;
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

/// `gantry bench concurrent --runs N --sleep D`.
pub async fn concurrent(runs: usize, sleep: Duration) -> Result<(), CliError> {
    let tmp = tempfile::Builder::new()
        .prefix("gantry-concurrent-")
        .tempdir()
        .map_err(|e| CliError::local("cannot create a temp dir").cause(e.to_string()))?;
    let root = tmp.path();
    let repo = root.join("repo");
    init_repo(&repo, &[("README.md", "# concurrent bench\n")]).await?;
    let seats = u32::try_from(runs)
        .map_err(|_| CliError::new(Kind::Usage, format!("--runs {runs} is too many")))?;
    let (server, client) =
        bench_server(root, seats, Duration::from_secs(60), Duration::from_secs(2)).await?;
    output::line(format!(
        "bench concurrent: {runs} script-engine runs that each sleep {}s, one seat each",
        sleep.as_secs_f64()
    ));
    let measured = measure_concurrent(&client, &repo, runs, sleep).await;
    if let Err(e) = server.shutdown().await {
        output::note(format!(
            "warning: the bench server did not stop cleanly: {e}"
        ));
    }
    let m = measured?;
    let mut lat = m.api_ms;
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
    output::line(format!(
        "all {runs} running after {:.1}s; sampled for {:.1}s while they ran",
        m.ramp.as_secs_f64(),
        m.window.as_secs_f64()
    ));
    output::line(format!(
        "rss: peak {:.1} MB of Gantry's own processes ({} of them; agents' shells not counted)",
        m.peak_rss_kb as f64 / 1024.0,
        m.processes
    ));
    output::line(format!(
        "api: {} calls (status and job list), p50 {p50:.2} ms, p99 {p99:.2} ms",
        lat.len()
    ));
    output::line(format!(
        "runs={runs} total_rss_mb={:.1} api_p50_ms={p50:.2} api_p99_ms={p99:.2}",
        m.peak_rss_kb as f64 / 1024.0
    ));
    Ok(())
}

/// What `bench concurrent` measured.
struct Concurrent {
    /// From the submit until every run had started.
    ramp: Duration,
    /// How long the sampling lasted.
    window: Duration,
    /// API call latencies while every run was going on.
    api_ms: Vec<f64>,
    /// Highest total RSS seen, in KiB.
    peak_rss_kb: u64,
    /// Gantry processes counted in that total.
    processes: usize,
}

async fn measure_concurrent(
    client: &Client,
    repo: &Path,
    runs: usize,
    sleep: Duration,
) -> Result<Concurrent, CliError> {
    let api = |e| from_client(e, client.base());
    let files = (0..runs)
        .map(|i| SubmitFile {
            file: format!("sleep-{i}.md"),
            text: format!(
                "---\ntitle: sleeper {i}\nrepo: {}\nengine: script\nmax_attempts: 1\nsteps:\n  - say: sleeping\n  - sleep: {}\n  - usage: {{tokens_in: 100, tokens_out: 10}}\n---\nSleeps.\n",
                repo.display(),
                sleep.as_secs_f64()
            ),
            dir: None,
        })
        .collect();
    let t0 = tokio::time::Instant::now();
    let resp = client
        .submit(&SubmitRequest { jobs: files })
        .await
        .map_err(api)?;
    let ids: Vec<JobId> = resp.jobs.iter().map(|s| s.id).collect();
    // Ramp: wait until every job is running.
    let ramp_deadline = t0 + sleep;
    loop {
        let running = client
            .jobs(Some(JobState::Running), None)
            .await
            .map_err(api)?
            .len();
        if running >= runs {
            break;
        }
        if tokio::time::Instant::now() > ramp_deadline {
            return Err(CliError::new(
                Kind::Server,
                format!(
                    "only {running} of {runs} runs were going after {}s, the runs' sleep",
                    sleep.as_secs()
                ),
            )
            .hint("give the runs a longer --sleep so they all overlap, or fewer --runs"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp = t0.elapsed();
    // Sample while they all still sleep: until a little before the first can end.
    let window_end = t0 + sleep.mul_f64(0.9);
    let start = tokio::time::Instant::now();
    let mut api_ms = Vec::new();
    let (mut peak_rss_kb, mut processes) = (0, 0);
    let mut turn = 0u64;
    while tokio::time::Instant::now() < window_end {
        let t = std::time::Instant::now();
        if turn.is_multiple_of(2) {
            client.status().await.map_err(api)?;
        } else {
            client.jobs(None, Some(50)).await.map_err(api)?;
        }
        api_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if turn.is_multiple_of(10) {
            let (rss, n) = own_rss_kb();
            if rss > peak_rss_kb {
                (peak_rss_kb, processes) = (rss, n);
            }
        }
        turn += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = start.elapsed();
    // Every run must still end well: the numbers mean nothing if runs failed.
    let deadline = tokio::time::Instant::now() + sleep + Duration::from_secs(60);
    for id in ids {
        loop {
            let job = client.job(id).await.map_err(api)?;
            if job.state.is_terminal() {
                if job.state != JobState::Succeeded {
                    return Err(CliError::new(
                        Kind::Server,
                        format!("bench job {id} ended {}", job.state),
                    )
                    .cause(job.reason.unwrap_or_default()));
                }
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(CliError::new(
                    Kind::Server,
                    format!("bench job {id} did not end in time"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(Concurrent {
        ramp,
        window,
        api_ms,
        peak_rss_kb,
        processes,
    })
}

/// Total resident memory (KiB) of this process and every descendant running the same
/// executable (Gantry's own processes: the agents' shells and sleeps are not counted),
/// with how many processes that is.
fn own_rss_kb() -> (u64, usize) {
    let me = std::process::id();
    let exe = std::fs::read_link("/proc/self/exe").ok();
    let mut total = 0;
    let mut count = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let same_exe = pid == me
            || (std::fs::read_link(format!("/proc/{pid}/exe")).ok() == exe && exe.is_some());
        // A child of this process that still runs this executable is a fork about to
        // exec an agent's shell: its pages are this process's, counted once already.
        if !same_exe || (pid != me && parent_of(pid) == Some(me)) {
            continue;
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            total += kb;
            count += 1;
        }
    }
    (total, count)
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
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

/// `gantry bench dispatch [--runs N]`.
pub async fn dispatch(runs: usize) -> Result<(), CliError> {
    let tmp = tempfile::Builder::new()
        .prefix("gantry-dispatch-")
        .tempdir()
        .map_err(|e| CliError::local("cannot create a temp dir").cause(e.to_string()))?;
    let root = tmp.path();
    let repo = root.join("repo");
    let stamps = root.join("stamps");
    std::fs::create_dir_all(&stamps).map_err(|e| {
        CliError::local(format!("cannot create {}", stamps.display())).cause(e.to_string())
    })?;
    init_repo(
        &repo,
        &[("README.md", "# bench\n"), ("src/lib.sh", "echo hi\n")],
    )
    .await?;

    output::line(format!(
        "bench dispatch: {runs} measured runs of each kind, after one warm-up run"
    ));
    output::line("both measures end when the started process writes the wall clock (`date +%s%N`)");

    // Baseline: what any runner must do at least: a worktree on a new branch, then a
    // process in it.
    let mut baseline = Vec::with_capacity(runs);
    for i in 0..=runs {
        let wt = root.join(format!("wt-{i}"));
        let stamp = stamps.join(format!("baseline-{i}"));
        let t0 = now_ns();
        git(
            &repo,
            &[
                "worktree",
                "add",
                "-q",
                "-b",
                &format!("bench/{i}"),
                &wt.to_string_lossy(),
                "HEAD",
            ],
        )
        .await?;
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(stamp_script(&stamp))
            .current_dir(&wt)
            .status()
            .await
            .map_err(|e| CliError::local("cannot start sh").cause(e.to_string()))?;
        if !status.success() {
            return Err(CliError::local(format!(
                "the baseline process failed ({status})"
            )));
        }
        let ms = (read_stamp(&stamp)? - t0) as f64 / 1e6;
        if i > 0 {
            baseline.push(ms);
        }
        git(
            &repo,
            &["worktree", "remove", "--force", &wt.to_string_lossy()],
        )
        .await?;
    }

    // Dispatch: the same process as a real command job through an embedded server.
    let (server, client) =
        bench_server(root, 1, Duration::from_secs(30), Duration::from_secs(1)).await?;
    let measured = measure_dispatch(&client, &repo, &stamps, runs).await;
    if let Err(e) = server.shutdown().await {
        output::note(format!(
            "warning: the bench server did not stop cleanly: {e}"
        ));
    }
    let dispatch = measured?;

    let mut b = baseline;
    let mut d = dispatch;
    b.sort_by(f64::total_cmp);
    d.sort_by(f64::total_cmp);
    let (b50, b99) = (percentile(&b, 50.0), percentile(&b, 99.0));
    let (d50, d99) = (percentile(&d, 50.0), percentile(&d, 99.0));
    output::line(format!(
        "baseline  p50 {b50:>8.2} ms  p99 {b99:>8.2} ms  `git worktree add -b` + start `sh -c 'date ...'` in it"
    ));
    output::line(format!(
        "dispatch  p50 {d50:>8.2} ms  p99 {d99:>8.2} ms  submit request sent -> the job's process writes its stamp"
    ));
    output::line(
        "          (dispatch: one job at a time into an idle embedded server, 1 seat, no push)",
    );
    output::line(format!(
        "dispatch_p50_ms={d50:.2} baseline_p50_ms={b50:.2} ratio={:.2}",
        d50 / b50
    ));
    Ok(())
}

async fn measure_dispatch(
    client: &Client,
    repo: &Path,
    stamps: &Path,
    runs: usize,
) -> Result<Vec<f64>, CliError> {
    let mut out = Vec::with_capacity(runs);
    for i in 0..=runs {
        let stamp = stamps.join(format!("dispatch-{i}"));
        let text = format!(
            "---\ntitle: dispatch bench {i}\nrepo: {}\nengine: command\ncommand: [sh, -c, \"{}\"]\nmax_attempts: 1\n---\nWrites a timestamp.\n",
            repo.display(),
            stamp_script(&stamp)
        );
        let req = SubmitRequest {
            jobs: vec![SubmitFile {
                file: format!("dispatch-{i}.md"),
                text,
                dir: None,
            }],
        };
        let t0 = now_ns();
        run_one(client, &req, "dispatch").await?;
        let ms = (read_stamp(&stamp)? - t0) as f64 / 1e6;
        if i > 0 {
            out.push(ms);
        }
    }
    Ok(out)
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
