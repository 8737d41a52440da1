//! `gantry bench check`: what the checking stage adds to a run: from the moment the
//! job's process ends to the moment its run is finished (succeeded), with one no-op
//! gate and with none, on SQLite.

use super::{bench_server, percentile, read_stamp, run_one, stamp_script};
use crate::error::{CliError, Kind};
use crate::gitutil::init_repo;
use crate::output;
use gantry_client::Client;
use gantry_protocol::{SubmitFile, SubmitRequest};
use std::path::Path;
use std::time::Duration;

/// `gantry bench check [--runs N]`: `runs` jobs of each kind, one at a time, after one
/// warm-up each; the last line is `check_p50_ms=<x> nogate_p50_ms=<y>`.
pub async fn run(runs: usize) -> Result<(), CliError> {
    let tmp = super::temp_dir("gantry-check-")?;
    let root = tmp.path();
    let repo = root.join("repo");
    init_repo(&repo, &[("README.md", "# bench\n")]).await?;
    output::line(format!(
        "bench check: {runs} jobs with one no-op gate and {runs} without, one at a time, \
         after one warm-up each; measured from the job's process writing the wall clock \
         as its last act to its run's recorded end"
    ));
    let (server, client) =
        bench_server(root, 1, Duration::from_secs(30), Duration::from_secs(1)).await?;
    let gated = measure(&client, &repo, root, runs, true).await;
    let plain = match &gated {
        Ok(_) => measure(&client, &repo, root, runs, false).await,
        Err(_) => Ok(Vec::new()),
    };
    if let Err(e) = server.shutdown().await {
        output::note(format!(
            "warning: the bench server did not stop cleanly: {e}"
        ));
    }
    let (mut g, mut p) = (gated?, plain?);
    g.sort_by(f64::total_cmp);
    p.sort_by(f64::total_cmp);
    let (g50, g99) = (percentile(&g, 50.0), percentile(&g, 99.0));
    let (p50, p99) = (percentile(&p, 50.0), percentile(&p, 99.0));
    output::line(format!(
        "one no-op gate  p50 {g50:>8.2} ms  p99 {g99:>8.2} ms  process end -> run succeeded (commit, check, gate, finish)"
    ));
    output::line(format!(
        "no gate         p50 {p50:>8.2} ms  p99 {p99:>8.2} ms  process end -> run succeeded (commit, check, finish)"
    ));
    output::line(format!("check_p50_ms={g50:.2} nogate_p50_ms={p50:.2}"));
    Ok(())
}

/// Runs `runs + 1` jobs (the first is a warm-up) and returns, per measured job, the
/// milliseconds from its process's last act to its run's end.
async fn measure(
    client: &Client,
    repo: &Path,
    root: &Path,
    runs: usize,
    gate: bool,
) -> Result<Vec<f64>, CliError> {
    let mut out = Vec::with_capacity(runs);
    for i in 0..=runs {
        let stamp = root.join(format!("check-{gate}-{i}"));
        let gates = if gate {
            "gates:\n  - { name: noop, run: \"true\" }\n"
        } else {
            ""
        };
        let text = format!(
            "---\ntitle: check bench {i}\nrepo: {}\nengine: command\ncommand: [sh, -c, \"echo {i} > out.txt; {}\"]\nmax_attempts: 1\n{gates}---\nWrites a file, then the time.\n",
            repo.display(),
            stamp_script(&stamp)
        );
        let req = SubmitRequest {
            jobs: vec![SubmitFile {
                file: format!("check-{i}.md"),
                text,
                dir: None,
            }],
        };
        let job = run_one(client, &req, "check").await?;
        let ended = job.runs.last().and_then(|r| r.finished_at).ok_or_else(|| {
            CliError::new(
                Kind::Server,
                format!("bench job {} has no finished run", job.id),
            )
        })?;
        let ms = (i128::from(ended) * 1_000_000 - read_stamp(&stamp)?) as f64 / 1e6;
        if i > 0 {
            out.push(ms);
        }
    }
    Ok(out)
}
