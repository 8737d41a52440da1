//! `gantry bench kill [--sandbox bwrap|docker]`: from the kill request until no process
//! of the run is left, for runs in bubblewrap (the process group gone) or in a Docker
//! container (no process whose environment names the run, the container removed).

use super::{BenchSandbox, bench_server_with, percentile};
use crate::error::{CliError, Kind, from_client};
use crate::gitutil::init_repo;
use crate::output;
use gantry_client::Client;
use gantry_core::event::RunStarted;
use gantry_core::{JobId, RunId};
use gantry_protocol::{SubmitFile, SubmitRequest};
use std::path::Path;
use std::time::Duration;

/// `gantry bench kill --runs N [--sandbox docker --image IMAGE]`.
pub async fn kill(runs: usize, sandbox: BenchSandbox) -> Result<(), CliError> {
    let tmp = super::temp_dir("gantry-kill-")?;
    let root = tmp.path();
    let repo = root.join("repo");
    init_repo(&repo, &[("README.md", "# kill bench\n")]).await?;
    let what = match &sandbox {
        BenchSandbox::Docker(_) => "docker; kill request -> no process of the run's container left",
        _ => "bwrap; kill request -> no process of the run's group left",
    };
    let settings = sandbox.settings(root);
    let timing = (Duration::from_secs(30), Duration::from_secs(1));
    let (server, client) = bench_server_with(root, 1, timing, settings).await?;
    output::line(format!(
        "bench kill: {runs} jobs, each a shell with two children that ignore SIGTERM, in {what}"
    ));
    let measured = measure_kills(&client, &repo, runs, &sandbox).await;
    if let Err(e) = server.shutdown().await {
        output::note(format!(
            "warning: the bench server did not stop cleanly: {e}"
        ));
    }
    let mut ms = measured?;
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&ms, 50.0), percentile(&ms, 99.0));
    let max = ms.last().copied().unwrap_or(f64::NAN);
    output::line(format!(
        "kill -> tree gone: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
    ));
    output::line(format!(
        "kills={} p50_ms={p50:.1} p99_ms={p99:.1} max_ms={max:.1}",
        ms.len()
    ));
    Ok(())
}

async fn measure_kills(
    client: &Client,
    repo: &Path,
    runs: usize,
    sandbox: &BenchSandbox,
) -> Result<Vec<f64>, CliError> {
    let api = |e| from_client(e, client.base());
    // Two children that ignore SIGTERM, one grandchild; the shell waits for them.
    let script = "trap \"\" TERM; (trap \"\" TERM; sleep 300 & sleep 300; wait) & sleep 300 & wait";
    let mut out = Vec::with_capacity(runs);
    let wall = sandbox.job_field();
    for i in 0..runs {
        let req = SubmitRequest {
            jobs: vec![SubmitFile {
                file: format!("kill-{i}.md"),
                text: format!(
                    "---\ntitle: kill bench {i}\nrepo: {}\nengine: command\ncommand: [sh, -c, '{}']\nmax_attempts: 1\n{wall}---\nTo be killed.\n",
                    repo.display(),
                    script.replace('\'', "''")
                ),
                dir: None,
            }],
        };
        let resp = client.submit(&req).await.map_err(api)?;
        let id = resp.jobs.first().map(|s| s.id).ok_or_else(|| {
            CliError::new(
                Kind::Server,
                "the server accepted the job but returned no id",
            )
        })?;
        // The run's process group id is its leader's pid, from the run.started event;
        // a container's processes are found by the run named in their environment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let tree = loop {
            let events = client.all_events(Some(id), 0).await.map_err(api)?;
            let started = events.iter().find_map(|e| {
                let s = e.payload::<RunStarted>().ok()?;
                Some((e.run_id?, s))
            });
            if let Some((run, started)) = started {
                let tree = match sandbox {
                    BenchSandbox::Docker(_) => Tree::Run(id, run),
                    _ => Tree::Group(i64::from(started.pid)),
                };
                if tree.live() >= 4 {
                    break tree;
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(CliError::new(
                    Kind::Server,
                    format!("bench job {id} did not start its process tree within 30 s"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let t0 = std::time::Instant::now();
        client.kill(id).await.map_err(api)?;
        loop {
            if tree.live() == 0 {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(CliError::new(
                    Kind::Server,
                    format!("the processes of job {id} survived its kill for 30 s"),
                ));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
        // Let the job reach its end before the next one, so each kill is measured alone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !client.job(id).await.map_err(api)?.state.is_terminal() {
            if tokio::time::Instant::now() > deadline {
                return Err(CliError::new(
                    Kind::Server,
                    format!("job {id} was not killed within 30 s"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(out)
}

/// The processes of one run, as the bench finds them.
enum Tree {
    /// The process group led by this pid.
    Group(i64),
    /// The processes whose environment names this run of this job.
    Run(JobId, RunId),
}

impl Tree {
    /// How many of its processes are alive.
    fn live(&self) -> usize {
        match self {
            Tree::Group(pgid) => group_members(*pgid).len(),
            Tree::Run(job, run) => gantry_factory::process::processes_of_run(*job, *run).len(),
        }
    }
}

/// Live (not zombie) processes whose process group is `pgid`, read from /proc.
fn group_members(pgid: i64) -> Vec<i64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i64>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesized command: state, ppid, pgrp, ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() != Some(&"Z")
            && fields.get(2).and_then(|g| g.parse::<i64>().ok()) == Some(pgid)
        {
            out.push(pid);
        }
    }
    out
}
