//! `gantry bench dispatch [--sandbox none,bwrap,docker]`: from the submit request until
//! the job's process runs, per sandbox kind, next to that kind's bare floor (a worktree,
//! then the same process started directly, in a bare `bwrap`, or with `docker run`),
//! and for docker the handover of a worktree to the container's user and back.

use super::{BenchSandbox, bench_server_with, now_ns, percentile, run_one};
use crate::error::{CliError, Kind, from_client};
use crate::gitutil::{git, init_repo};
use crate::output;
use gantry_client::Client;
use gantry_protocol::{SubmitFile, SubmitRequest};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `gantry bench dispatch --runs N --sandbox KINDS --files F [--image IMAGE]`: `runs`
/// measured runs of each kind and of its floor (after one warm-up each), in a
/// generated repository of `files` files.
pub async fn dispatch(runs: usize, kinds: Vec<BenchSandbox>, files: usize) -> Result<(), CliError> {
    let tmp = super::temp_dir("gantry-dispatch-")?;
    let root = tmp.path();
    let repo = root.join("repo");
    generate_repo(&repo, files).await?;
    output::line(format!(
        "bench dispatch: {runs} measured runs of each kind and of its floor, after one warm-up each, in a repository of {files} files"
    ));
    output::line(
        "every measure ends when the started process reads the wall clock (`date +%s%N`; in a container without it, busybox `adjtimex`)",
    );
    // One embedded server per kind, all up at once: the measures take turns (each
    // round, every kind's floor then its dispatch), so a change in the machine's load
    // falls on every kind alike.
    let mut servers = Vec::with_capacity(kinds.len());
    for kind in &kinds {
        let dir = root.join(format!("server-{}", kind.name()));
        std::fs::create_dir_all(&dir).map_err(|e| {
            CliError::local(format!("cannot create {}", dir.display())).cause(e.to_string())
        })?;
        let timing = (Duration::from_secs(30), Duration::from_secs(1));
        servers.push(bench_server_with(&dir, 1, timing, kind.settings(root)).await?);
    }
    let clients: Vec<&Client> = servers.iter().map(|(_, c)| c).collect();
    let measured = measure_rounds(&kinds, &clients, &repo, root, runs).await;
    for (server, _) in servers {
        if let Err(e) = server.shutdown().await {
            output::note(format!(
                "warning: the bench server did not stop cleanly: {e}"
            ));
        }
    }
    let rows: Vec<(&str, Vec<f64>, Vec<f64>)> = kinds
        .iter()
        .zip(measured?)
        .map(|(kind, (floor, dispatch))| (kind.name(), sorted(floor), sorted(dispatch)))
        .collect();
    output::line(format!(
        "{:<7} {:>21} {:>21} {:>21} {:>8}",
        "kind", "floor p50 / p99 ms", "dispatch p50 / p99", "added p50 / p99", "x floor"
    ));
    let mut last = Vec::new();
    for (name, floor, dispatch) in &rows {
        let (f50, f99) = (percentile(floor, 50.0), percentile(floor, 99.0));
        let (d50, d99) = (percentile(dispatch, 50.0), percentile(dispatch, 99.0));
        output::line(format!(
            "{name:<7} {f50:>10.2} / {f99:>8.2} {d50:>10.2} / {d99:>8.2} {:>10.2} / {:>8.2} {:>8.2}",
            d50 - f50,
            d99 - f99,
            d50 / f50
        ));
        last.push(format!(
            "{name}_p50_ms={d50:.2} {name}_p99_ms={d99:.2} {name}_floor_p50_ms={f50:.2} {name}_floor_p99_ms={f99:.2}"
        ));
    }
    output::line(
        "floor: `git worktree add -b` + the process started bare (none), in `bwrap --unshare-all` (bwrap), or by `docker run --rm` (docker)",
    );
    output::line(
        "dispatch: submit request sent -> the job's process runs, one job at a time into an idle embedded server (1 seat, no push)",
    );
    if let Some((_, _, bare)) = rows.iter().find(|(name, _, _)| *name == "none") {
        for (name, _, dispatch) in rows.iter().filter(|(name, _, _)| *name != "none") {
            output::line(format!(
                "{name} over a run without a sandbox: p50 {:+.2} ms, p99 {:+.2} ms",
                percentile(dispatch, 50.0) - percentile(bare, 50.0),
                percentile(dispatch, 99.0) - percentile(bare, 99.0)
            ));
        }
    }
    if kinds.iter().any(|k| matches!(k, BenchSandbox::Docker(_))) {
        let (give, take) = measure_handover(&repo, root, runs).await?;
        let (give, take) = (sorted(give), sorted(take));
        output::line(format!(
            "docker worktree handover ({files} files): to uid {} p50 {:.2} ms p99 {:.2} ms, back p50 {:.2} ms p99 {:.2} ms",
            gantry_factory::docker::SANDBOX_UID,
            percentile(&give, 50.0),
            percentile(&give, 99.0),
            percentile(&take, 50.0),
            percentile(&take, 99.0)
        ));
        last.push(format!(
            "handover_p50_ms={:.2} reclaim_p50_ms={:.2}",
            percentile(&give, 50.0),
            percentile(&take, 50.0)
        ));
    }
    output::line(last.join(" "));
    Ok(())
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// A repository of `files` small source files spread over directories of 100, as a
/// real project's tree is.
async fn generate_repo(repo: &Path, files: usize) -> Result<(), CliError> {
    let owned: Vec<(String, String)> = (0..files)
        .map(|i| {
            (
                format!("src/m{}/f{i}.rs", i / 100),
                format!(
                    "// file {i}\npub fn f{i}(x: u64) -> u64 {{\n    x.wrapping_mul({i})\n}}\n"
                ),
            )
        })
        .chain(std::iter::once((
            "README.md".to_string(),
            "# bench\n".to_string(),
        )))
        .collect();
    let refs: Vec<(&str, &str)> = owned
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    init_repo(repo, &refs).await
}

/// The script every measured process runs: print the wall clock, as `n=<ns>` (GNU
/// date) or, in a container whose `date` has no `%N` (busybox), also as `s=`/`u=`
/// seconds and microseconds from `adjtimex` first.
fn clock_script(kind: &BenchSandbox) -> &'static str {
    match kind {
        BenchSandbox::Docker(_) => {
            "adjtimex 2>/dev/null | sed -n 's/^ *time.tv_sec: */s=/p;s/^ *time.tv_usec: */u=/p'; date +n=%s%N"
        }
        _ => "date +n=%s%N",
    }
}

/// The wall clock (ns since the epoch) a [`clock_script`] printed, first choice the
/// `s=`/`u=` pair (read first), else `n=`.
fn parse_clock(text: &str) -> Option<i128> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse::<i128>().ok())
    };
    match (field("s="), field("u=")) {
        (Some(s), Some(u)) => Some(s * 1_000_000_000 + u * 1_000),
        _ => field("n="),
    }
}

/// Milliseconds from `t0` (ns) to the clock in `text`, or an error naming `what`.
fn ms_until_clock(t0: i128, text: &str, what: &str) -> Result<f64, CliError> {
    let at = parse_clock(text).ok_or_else(|| {
        CliError::local(format!("{what} printed no wall clock: {:?}", text.trim()))
            .hint("the process needs GNU date (`date +%s%N`) or busybox adjtimex")
    })?;
    Ok((at - t0) as f64 / 1e6)
}

/// Round after round (the first a warm-up), each kind's floor then its dispatch:
/// milliseconds of each, per kind.
async fn measure_rounds(
    kinds: &[BenchSandbox],
    clients: &[&Client],
    repo: &Path,
    root: &Path,
    runs: usize,
) -> Result<Vec<(Vec<f64>, Vec<f64>)>, CliError> {
    let mut out = vec![(Vec::with_capacity(runs), Vec::with_capacity(runs)); kinds.len()];
    for i in 0..=runs {
        for ((kind, client), (floor, dispatch)) in kinds.iter().zip(clients).zip(&mut out) {
            let f = measure_floor(kind, repo, root, i).await?;
            let d = measure_dispatch(client, kind, repo, i).await?;
            if i > 0 {
                floor.push(f);
                dispatch.push(d);
            }
        }
    }
    Ok(out)
}

/// The floor of `kind`: what any runner must do at least, a worktree on a new branch,
/// then the process in it, bare or in the kind's wall with nothing of Gantry's around.
async fn measure_floor(
    kind: &BenchSandbox,
    repo: &Path,
    root: &Path,
    i: usize,
) -> Result<f64, CliError> {
    let wt = root.join(format!("floor-{}-{i}", kind.name()));
    let shown = wt.to_string_lossy().to_string();
    let t0 = now_ns();
    let branch = format!("floor/{}/{i}", kind.name());
    git(
        repo,
        &["worktree", "add", "-q", "-b", &branch, &shown, "HEAD"],
    )
    .await?;
    let done = floor_command(kind, &wt, clock_script(kind))
        .output()
        .await
        .map_err(|e| CliError::local("cannot start the floor's process").cause(e.to_string()))?;
    if !done.status.success() {
        return Err(CliError::local(format!(
            "the {} floor's process failed ({})",
            kind.name(),
            done.status
        ))
        .cause(String::from_utf8_lossy(&done.stderr).trim().to_string()));
    }
    let ms = ms_until_clock(
        t0,
        &String::from_utf8_lossy(&done.stdout),
        "the floor's process",
    )?;
    git(repo, &["worktree", "remove", "--force", &shown]).await?;
    Ok(ms)
}

/// The bare command of `kind`'s floor, in the worktree `wt`.
fn floor_command(kind: &BenchSandbox, wt: &Path, script: &str) -> tokio::process::Command {
    let mut cmd;
    match kind {
        BenchSandbox::None => {
            cmd = tokio::process::Command::new("sh");
        }
        BenchSandbox::Bwrap => {
            cmd = tokio::process::Command::new("bwrap");
            cmd.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]);
            // The namespaces of the factory's bubblewrap for a job of the default
            // network, none: every one, the network's too.
            cmd.args(["--tmpfs", "/tmp", "--unshare-all"]);
            cmd.arg("--die-with-parent");
            cmd.arg("--bind").arg(wt).arg(wt).arg("--chdir").arg(wt);
            cmd.arg("sh");
        }
        BenchSandbox::Docker(image) => {
            cmd = tokio::process::Command::new("docker");
            cmd.args(["run", "--rm", "--network", "none", "-v"]);
            cmd.arg(format!("{0}:{0}", wt.display())).arg("-w").arg(wt);
            cmd.args([image.as_str(), "sh"]);
        }
    }
    cmd.arg("-c").arg(script).current_dir(wt);
    cmd
}

/// Dispatch in `kind`: the same process as a real command job through an embedded
/// server whose factory runs that kind; the clock comes back in the job's output.
async fn measure_dispatch(
    client: &Client,
    kind: &BenchSandbox,
    repo: &Path,
    i: usize,
) -> Result<f64, CliError> {
    let api = |e| from_client(e, client.base());
    let text = format!(
        "---\ntitle: dispatch bench {} {i}\nrepo: {}\nengine: command\ncommand: [sh, -c, '{}']\nmax_attempts: 1\n{}---\nPrints the wall clock.\n",
        kind.name(),
        repo.display(),
        clock_script(kind).replace('\'', "''"),
        kind.job_field()
    );
    let req = SubmitRequest {
        jobs: vec![SubmitFile {
            file: format!("dispatch-{}-{i}.md", kind.name()),
            text,
            dir: None,
        }],
    };
    let t0 = now_ns();
    let job = run_one(client, &req, "dispatch").await?;
    let events = client.all_events(Some(job.id), 0).await.map_err(api)?;
    let stdout: String = events
        .iter()
        .filter(|e| e.kind == "run.output" && e.data["stream"] == "stdout")
        .filter_map(|e| e.data["text"].as_str())
        .collect();
    ms_until_clock(t0, &stdout, &format!("bench job {}", job.id))
}

/// The docker sandbox's handover of a worktree of `repo`: every file given to the
/// container's user before the container starts, and back after it ended, as a root
/// factory does for each docker run. Milliseconds of each way.
async fn measure_handover(
    repo: &Path,
    root: &Path,
    runs: usize,
) -> Result<(Vec<f64>, Vec<f64>), CliError> {
    // A factory hands the worktree over only when it runs as root.
    if gantry_factory::docker::container_user().0 != gantry_factory::docker::SANDBOX_UID {
        output::line(
            "docker worktree handover: none (not root: containers run as this user, who owns the worktree)",
        );
        return Ok((vec![0.0], vec![0.0]));
    }
    let wt: PathBuf = root.join("handover");
    let shown = wt.to_string_lossy().to_string();
    git(
        repo,
        &["worktree", "add", "-q", "-b", "handover", &shown, "HEAD"],
    )
    .await?;
    let (uid, gid) = (
        gantry_factory::docker::SANDBOX_UID,
        gantry_factory::docker::SANDBOX_UID,
    );
    let (mut give, mut take) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let failed = |e: gantry_factory::docker::DockerError| {
        CliError::new(Kind::Local, "the worktree handover failed").cause(e.to_string())
    };
    for i in 0..=runs {
        let t0 = Instant::now();
        gantry_factory::docker::chown_tree(&wt, uid, gid)
            .await
            .map_err(failed)?;
        let t1 = Instant::now();
        gantry_factory::docker::reclaim(&[wt.as_path()])
            .await
            .map_err(failed)?;
        if i > 0 {
            give.push((t1 - t0).as_secs_f64() * 1e3);
            take.push(t1.elapsed().as_secs_f64() * 1e3);
        }
    }
    git(repo, &["worktree", "remove", "--force", &shown]).await?;
    Ok((give, take))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_read_from_adjtimex_first_else_from_date() {
        let busybox = "s=1796698586\nu=337006\nn=1796698586%N\n";
        assert_eq!(parse_clock(busybox), Some(1_796_698_586_337_006_000));
        assert_eq!(
            parse_clock("n=1796698586434607131\n"),
            Some(1_796_698_586_434_607_131)
        );
        assert_eq!(parse_clock("n=1796698586%N\n"), None);
        assert_eq!(parse_clock(""), None);
    }
}
