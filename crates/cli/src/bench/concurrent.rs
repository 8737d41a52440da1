//! `gantry bench concurrent --runs N --sleep D [--sandbox bwrap|docker]`: many runs at
//! once (script-engine agents that sleep, in bubblewrap or each in a container): the
//! memory of Gantry's own processes and the API's latency while they all run, and
//! that every run ended well.

use super::{BenchSandbox, bench_server_with, percentile};
use crate::error::{CliError, Kind, from_client};
use crate::gitutil::init_repo;
use crate::output;
use gantry_client::Client;
use gantry_core::{JobId, JobState};
use gantry_protocol::{SubmitFile, SubmitRequest};
use std::path::Path;
use std::time::Duration;

/// `gantry bench concurrent --runs N --sleep D [--sandbox KIND]`.
pub async fn concurrent(
    runs: usize,
    sleep: Duration,
    sandbox: BenchSandbox,
) -> Result<(), CliError> {
    let tmp = super::temp_dir("gantry-concurrent-")?;
    let root = tmp.path();
    let repo = root.join("repo");
    init_repo(&repo, &[("README.md", "# concurrent bench\n")]).await?;
    let seats = u32::try_from(runs)
        .map_err(|_| CliError::new(Kind::Usage, format!("--runs {runs} is too many")))?;
    let timing = (Duration::from_secs(60), Duration::from_secs(2));
    let (server, client) = bench_server_with(root, seats, timing, sandbox.settings(root)).await?;
    output::line(format!(
        "bench concurrent: {runs} script-engine runs that each sleep {}s, one seat each, in {}",
        sleep.as_secs_f64(),
        match &sandbox {
            BenchSandbox::Docker(image) => format!("a docker container each (image {image})"),
            other => other.name().to_string(),
        }
    ));
    let measured = measure_concurrent(&client, &repo, runs, sleep, &sandbox).await;
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
        "rss: high-water mark (VmHWM) {:.1} MB of this process (server and its factory) over the whole bench",
        own_hwm_kb() as f64 / 1024.0
    ));
    if matches!(sandbox, BenchSandbox::Docker(_)) {
        output::line(format!(
            "rss: peak {:.1} MB of the engine's per-container shims (containerd-shim; not Gantry's)",
            m.peak_shim_kb as f64 / 1024.0
        ));
    }
    output::line(format!(
        "api: {} calls (status, job list, one job shown), p50 {p50:.2} ms, p99 {p99:.2} ms",
        lat.len()
    ));
    let mut ramp = m.ramp_ms;
    ramp.sort_by(f64::total_cmp);
    output::line(format!(
        "api while the runs started: {} calls (a job's events), p50 {:.2} ms, p99 {:.2} ms",
        ramp.len(),
        percentile(&ramp, 50.0),
        percentile(&ramp, 99.0)
    ));
    output::line(format!("all {runs} runs ended succeeded"));
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
    /// Latencies of the calls (a job's events) made while the runs started.
    ramp_ms: Vec<f64>,
    /// Highest total RSS seen, in KiB.
    peak_rss_kb: u64,
    /// Gantry processes counted in that total.
    processes: usize,
    /// Highest total RSS of the engine's containerd shims, in KiB.
    peak_shim_kb: u64,
}

async fn measure_concurrent(
    client: &Client,
    repo: &Path,
    runs: usize,
    sleep: Duration,
    sandbox: &BenchSandbox,
) -> Result<Concurrent, CliError> {
    let api = |e| from_client(e, client.base());
    let files = (0..runs)
        .map(|i| SubmitFile {
            file: format!("sleep-{i}.md"),
            text: format!(
                "---\ntitle: sleeper {i}\nrepo: {}\nengine: script\nmax_attempts: 1\n{}steps:\n  - say: sleeping\n  - sleep: {}\n  - usage: {{tokens_in: 100, tokens_out: 10}}\n---\nSleeps.\n",
                repo.display(),
                sandbox.job_field(),
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
    // Ramp: wait until every job's process has started (its `run.started` event: for
    // docker, its container runs).
    let ramp_deadline = t0 + sleep;
    let mut waiting = ids.clone();
    let mut ramp_ms = Vec::new();
    loop {
        let mut still = Vec::with_capacity(waiting.len());
        for id in waiting {
            let t = std::time::Instant::now();
            let events = client.all_events(Some(id), 0).await.map_err(api)?;
            ramp_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            if !events.iter().any(|e| e.kind == "run.started") {
                still.push(id);
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > ramp_deadline {
            return Err(CliError::new(
                Kind::Server,
                format!(
                    "only {} of {runs} runs had started after {}s, the runs' sleep",
                    runs - waiting.len(),
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
    let (mut peak_rss_kb, mut processes, mut peak_shim_kb) = (0, 0, 0);
    let mut turn = 0u64;
    while tokio::time::Instant::now() < window_end {
        let t = std::time::Instant::now();
        match turn % 3 {
            0 => drop(client.status().await.map_err(api)?),
            1 => drop(client.jobs(None, Some(50)).await.map_err(api)?),
            _ => drop(
                client
                    .job(ids[turn as usize % ids.len()])
                    .await
                    .map_err(api)?,
            ),
        }
        api_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if turn.is_multiple_of(10) {
            let (rss, n) = own_rss_kb();
            if rss > peak_rss_kb {
                (peak_rss_kb, processes) = (rss, n);
            }
            peak_shim_kb = peak_shim_kb.max(shim_rss_kb());
        }
        turn += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = start.elapsed();
    // Every run must still end well: the numbers mean nothing if runs failed.
    let deadline = tokio::time::Instant::now() + sleep + Duration::from_secs(60);
    for id in ids.iter().copied() {
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
        ramp_ms,
        peak_rss_kb,
        processes,
        peak_shim_kb,
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
        if let Some(kb) = status_kb(&format!("/proc/{pid}/status"), "VmRSS:") {
            total += kb;
            count += 1;
        }
    }
    (total, count)
}

/// The peak resident memory (VmHWM, KiB) of this process since it started.
fn own_hwm_kb() -> u64 {
    status_kb("/proc/self/status", "VmHWM:").unwrap_or(0)
}

/// Total resident memory (KiB) of the Docker engine's per-container shims.
fn shim_rss_kb() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.starts_with("containerd-shim"))
        })
        .filter_map(|e| status_kb(&e.path().join("status").to_string_lossy(), "VmRSS:"))
        .sum()
}

/// The value in KiB of the line starting with `key` (`VmRSS:`) of a /proc status file.
fn status_kb(path: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(key))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}
