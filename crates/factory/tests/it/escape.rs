//! Escape attempts (issue 12): the same table of hostile jobs runs through the real
//! factory against both walls, bwrap and docker, and each attempt is refused and,
//! where a limit stops it, reported as such:
//! - read a file planted in the factory's data dir, in another job's worktree, and the
//!   admin token file (a hidden path outside the data dir);
//! - write outside the worktree (the data dir, a host directory);
//! - fork past the pids limit, allocate past the memory limit;
//! - leave a background process running (`setsid sleep 1000 &`) after the job exits.
//!
//! The docker half needs a Docker engine and the test image `./scripts/test` builds;
//! it fails, never skips, without them.

use crate::support::*;
use gantry_core::sandbox::{SandboxKind, SandboxSpec};
use gantry_core::{JobId, Outcome, RunId};
use gantry_factory::FactoryConfig;
use std::path::{Path, PathBuf};

/// What every planted file holds: a job that prints it has read it.
const SECRET: &str = "gtk_planted_escape_secret";

/// The memory limit of the hog and the pids limit of the fork bomb.
const MEMORY: u64 = 32 << 20;
const PIDS: u64 = 32;

/// One hostile job of the table, and how the wall must answer it.
struct Attempt {
    /// What it tries, for the failure messages.
    name: &'static str,
    /// The job's script (`sh -c`).
    script: String,
    /// Its limits.
    limits: fn(&mut SandboxSpec),
    /// The outcome the run must have.
    outcome: Outcome,
    /// How the run's error must start (the limit that stopped it), if it must have one.
    error: Option<&'static str>,
}

/// The host paths the table plants, writes to and hides, in one test's temp dir.
struct Paths {
    data: PathBuf,
    other_worktree: PathBuf,
    token: PathBuf,
    outside: PathBuf,
}

impl Paths {
    fn new(tmp: &Path) -> Paths {
        let data = std::path::absolute(tmp.join("data")).expect("absolute");
        Paths {
            other_worktree: gantry_factory::worktree_dir(&data, JobId(999), 1),
            data,
            token: tmp.join("admin.token"),
            // Outside every path a run may write, even the test's own directory.
            outside: std::env::temp_dir().join(format!(
                "gantry-escape-{}-{}",
                std::process::id(),
                tmp.file_name().and_then(|n| n.to_str()).unwrap_or("x")
            )),
        }
    }

    /// Plants the secret in the data dir, in another job's worktree and in the token.
    fn plant(&self) {
        std::fs::create_dir_all(&self.other_worktree).expect("other worktree");
        std::fs::write(self.data.join("planted.secret"), SECRET).expect("plant");
        std::fs::write(self.other_worktree.join("secret.txt"), SECRET).expect("plant");
        std::fs::write(&self.token, SECRET).expect("plant");
    }
}

fn no_limits(_: &mut SandboxSpec) {}

/// The table: every attempt prints `ran-to-the-end` when it was not stopped, so a
/// refused read or write cannot pass for a job that never ran.
fn attempts(p: &Paths) -> Vec<Attempt> {
    let (data, other, token, outside) = (
        p.data.display(),
        p.other_worktree.display(),
        p.token.display(),
        p.outside.display(),
    );
    let read = |path: String| format!("cat {path}; ls -a $(dirname {path}); echo ran-to-the-end");
    vec![
        Attempt {
            name: "read a file planted in the data dir",
            script: read(format!("'{data}/planted.secret'")),
            limits: no_limits,
            outcome: Outcome::Succeeded,
            error: None,
        },
        Attempt {
            name: "read another job's worktree",
            script: read(format!("'{other}/secret.txt'")),
            limits: no_limits,
            outcome: Outcome::Succeeded,
            error: None,
        },
        Attempt {
            name: "read the admin token",
            script: read(format!("'{token}'")),
            limits: no_limits,
            outcome: Outcome::Succeeded,
            error: None,
        },
        Attempt {
            name: "write outside the worktree",
            script: format!(
                "echo {SECRET} > '{data}/written'; echo {SECRET} > '{outside}'; \
                 echo {SECRET} > '{other}/written'; echo ran-to-the-end"
            ),
            limits: no_limits,
            outcome: Outcome::Succeeded,
            error: None,
        },
        Attempt {
            name: "fork past the pids limit",
            // Without the limit every fork succeeds and the job prints `all-forked`;
            // with it, the shell cannot fork past the limit and gives up.
            script: "i=0; while [ $i -lt 2000 ]; do sleep 600 & i=$((i+1)); done; echo all-forked"
                .to_string(),
            limits: |s| s.pids = Some(PIDS),
            outcome: Outcome::Failed,
            error: None,
        },
        Attempt {
            name: "allocate past the memory limit",
            // Doubling a shell string grows the shell's memory without bound.
            script: "x=0123456789abcdef; while true; do x=\"$x$x\"; done".to_string(),
            limits: |s| s.memory_bytes = Some(MEMORY),
            outcome: Outcome::Failed,
            error: Some("oom: "),
        },
        Attempt {
            name: "leave a background process running",
            script: "setsid sleep 1000 & echo ran-to-the-end".to_string(),
            limits: no_limits,
            outcome: Outcome::Succeeded,
            error: None,
        },
    ]
}

/// Runs the table against `kind`, its jobs numbered from `first_job` (ids no other
/// test of this binary uses: the background check looks for processes by them).
async fn run_table(kind: SandboxKind, first_job: i64) {
    gantry_factory::private_files();
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("src-repo");
    make_repo(&repo);
    let p = Paths::new(tmp.path());
    p.plant();
    let base = match kind {
        SandboxKind::Docker => {
            crate::docker::engine().await;
            crate::docker::docker_config(&p.data)
        }
        _ => test_config(&p.data, 2),
    };
    let cfg = FactoryConfig {
        hidden_paths: vec![p.token.clone()],
        ..base
    };
    let coord = std::sync::Arc::new(TestCoord::default());
    let factory = spawn_factory(coord.clone(), cfg);
    let table = attempts(&p);
    for (i, a) in table.iter().enumerate() {
        let job = first_job + i as i64;
        let spec = sandboxed_job(kind, &repo, &a.script, a.limits);
        coord.push(claim(job, job * 10, 1, spec));
    }
    for (i, a) in table.iter().enumerate() {
        let (job, run) = (first_job + i as i64, RunId((first_job + i as i64) * 10));
        let what = format!("{kind}: {}", a.name);
        let report = coord.finish_of(run).await;
        let out = coord.output(run, "stdout");
        let err = coord.output(run, "stderr");
        assert_eq!(report.outcome, Some(a.outcome), "{what}: {report:?}\n{err}");
        if a.outcome == Outcome::Succeeded {
            assert!(
                out.contains("ran-to-the-end"),
                "{what}: it ran: {out}\n{err}"
            );
        }
        assert!(!out.contains(SECRET), "{what}: it read the secret: {out}");
        // The token's directory is the test's own, which runs may read: its name may
        // show there, covered by an empty file.
        for listed in ["planted.secret", "secret.txt"] {
            assert!(!out.contains(listed), "{what}: it listed {listed}: {out}");
        }
        if let Some(start) = a.error {
            let error = report.error.clone().unwrap_or_default();
            assert!(
                error.starts_with(start),
                "{what}: the error says {start:?}: {error}"
            );
        }
        assert!(
            gantry_factory::process::processes_of_run(JobId(job), run).is_empty(),
            "{what}: a process of the run outlived it"
        );
    }
    let bomb = RunId((first_job + 4) * 10);
    assert!(
        !coord.output(bomb, "stdout").contains("all-forked"),
        "{kind}: the bomb forked past the limit"
    );
    assert!(
        coord.output(bomb, "stderr").contains("fork"),
        "{kind}: forks were refused: {}",
        coord.output(bomb, "stderr")
    );
    // Outside a container the pids cgroup (or nothing, under rlimits) tells the end.
    if kind == SandboxKind::Bwrap {
        let error = coord.finish_of(bomb).await.error.unwrap_or_default();
        assert!(
            error.starts_with("pids: "),
            "the bomb's error says pids: {error}"
        );
    }
    for written in [
        p.data.join("written"),
        p.outside.clone(),
        p.other_worktree.join("written"),
    ] {
        assert!(
            !written.exists(),
            "{kind}: the job wrote {}",
            written.display()
        );
    }
    stop_factory(factory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_attempts_are_refused_by_bwrap() {
    run_table(SandboxKind::Bwrap, 7301).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_attempts_are_refused_by_docker() {
    run_table(SandboxKind::Docker, 7401).await;
}
