//! Workspace operations: delivery to the source repo (from the cache, or from a result
//! a factory elsewhere published), reported diffs, and pruning.

use crate::support::*;
use gantry_core::{JobId, Outcome, RunId};
use gantry_factory::workspace;
use gantry_protocol::{FinishReport, MAX_REPORTED_DIFF_BYTES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_pushes_the_commit_and_later_attempts_of_the_job_still_work() {
    let h = Harness::start(1).await;
    let r = h
        .run(claim(
            21,
            1,
            1,
            spec(&h.repo, &["sh", "-c", "echo done > result.txt"]),
        ))
        .await;
    assert_eq!(r.outcome, Some(Outcome::Succeeded));
    let commit = r.commit.expect("commit");
    let repo = h.repo.to_string_lossy().into_owned();
    workspace::deliver(&h.data, &repo, &commit, "gantry/21")
        .await
        .expect("deliver");
    assert_eq!(git(&h.repo, &["rev-parse", "refs/heads/gantry/21"]), commit);

    // Delivering again (force) moves the branch.
    workspace::deliver(&h.data, &repo, &h.base, "gantry/21")
        .await
        .expect("deliver again");
    assert_eq!(git(&h.repo, &["rev-parse", "refs/heads/gantry/21"]), h.base);

    // The delivered `gantry/21` in the source must not block `gantry/21/a2` in the cache.
    let r2 = h
        .run(claim(
            21,
            2,
            2,
            spec(&h.repo, &["sh", "-c", "echo again > result.txt"]),
        ))
        .await;
    assert_eq!(r2.outcome, Some(Outcome::Succeeded), "{r2:?}");
    assert_eq!(r2.branch.as_deref(), Some("gantry/21/a2"));

    // A fresh cache cloned from a source that already has `gantry/21` works too.
    let repo_path = h.repo.clone();
    let (coord, tmp) = h.stop().await;
    let data2 = tmp.path().join("data2");
    let (tx, task) = spawn_factory(coord.clone(), test_config(&data2, 1));
    coord.push(claim(21, 3, 3, spec(&repo_path, &["true"])));
    let r3 = coord.finish_of(RunId(3)).await;
    assert_eq!(r3.outcome, Some(Outcome::Succeeded), "{r3:?}");
    assert_eq!(r3.branch.as_deref(), Some("gantry/21/a3"));
    tx.send(true).expect("factory listens");
    task.await.expect("no panic").expect("factory ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_refuses_bad_input_naming_it() {
    let h = Harness::start(1).await;
    let repo = h.repo.to_string_lossy().into_owned();
    let err = workspace::deliver(&h.data, &repo, &h.base, "x")
        .await
        .expect_err("no cache yet");
    assert!(err.to_string().contains("src-repo"), "{err}");

    h.run(claim(1, 1, 1, spec(&h.repo, &["true"]))).await;
    let err = workspace::deliver(&h.data, &repo, "abc123", "gantry/1")
        .await
        .expect_err("short commit");
    assert!(
        err.to_string().contains("commit") && err.to_string().contains("abc123"),
        "{err}"
    );
    let err = workspace::deliver(&h.data, &repo, &h.base, "bad..name")
        .await
        .expect_err("bad branch");
    assert!(
        err.to_string().contains("branch") && err.to_string().contains("bad..name"),
        "{err}"
    );
    let err = workspace::deliver(&h.data, &repo, &h.base, "--force")
        .await
        .expect_err("option-like branch");
    assert!(err.to_string().contains("--force"), "{err}");
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let err = workspace::deliver(&h.data, &repo, unknown, "gantry/1")
        .await
        .expect_err("unknown commit");
    assert!(err.to_string().contains(unknown), "{err}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_dead_worktrees_keeps_live_ones_and_reports_caches() {
    let h = Harness::start(1).await;
    h.run(claim(1, 1, 1, spec(&h.repo, &["true"]))).await;
    let work = h.data.join("work");
    // A leftover of a crashed run, still registered as a worktree of the cache.
    git(
        &h.cache(),
        &[
            "worktree",
            "add",
            "-q",
            &work.join("50-a1").to_string_lossy(),
            "main",
        ],
    );
    // A worktree that a run record names (a run a restarted factory may adopt).
    std::fs::create_dir_all(work.join("51-a1")).expect("mkdir");
    let record = run_record(&h.data, claim(51, 51, 1, spec(&h.repo, &["true"])), None);
    record.write(&h.data).expect("record");

    let report = gantry_factory::prune_workspaces(&h.data)
        .await
        .expect("prune");
    assert_eq!(report.removed, vec![work.join("50-a1")]);
    assert!(!work.join("50-a1").exists());
    assert!(work.join("51-a1").exists());
    assert!(
        !git(&h.cache(), &["worktree", "list"]).contains("50-a1"),
        "git forgot the pruned worktree"
    );
    assert_eq!(report.caches.len(), 1);
    assert_eq!(report.caches[0].path, h.cache());
    assert!(report.caches[0].bytes > 0);

    gantry_factory::record::RunRecord::remove(&h.data, RunId(51));
    let report = gantry_factory::prune_workspaces(&h.data)
        .await
        .expect("prune");
    assert_eq!(report.removed, vec![work.join("51-a1")]);
    h.stop().await;
}

/// A factory that publishes results (as `gantry factory` does) over a [`TestCoord`],
/// with a source repo and a separate data dir standing for the server's.
struct Publishing {
    tmp: tempfile::TempDir,
    repo: std::path::PathBuf,
    data: std::path::PathBuf,
    coord: std::sync::Arc<TestCoord>,
    running: Running,
}

impl Publishing {
    fn start() -> Publishing {
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = tmp.path().join("src-repo");
        make_repo(&repo);
        let data = tmp.path().join("factory-data");
        let coord = std::sync::Arc::new(TestCoord::default());
        let mut cfg = test_config(&data, 2);
        cfg.publish_results = true;
        let running = spawn_factory(coord.clone(), cfg);
        Publishing {
            tmp,
            repo,
            data,
            coord,
            running,
        }
    }

    fn repo_str(&self) -> String {
        self.repo.to_string_lossy().into_owned()
    }

    /// A data dir of its own, as a server on another machine has.
    fn server_data(&self) -> std::path::PathBuf {
        self.tmp.path().join("server-data")
    }

    /// Runs `script` as job `job`, run `run`, with the claim's `deliver` flag.
    async fn run(&self, job: i64, run: i64, deliver: bool, script: &str) -> FinishReport {
        let mut c = claim(job, run, 1, spec(&self.repo, &["sh", "-c", script]));
        c.deliver = deliver;
        self.coord.push(c);
        self.coord.finish_of(RunId(run)).await
    }

    async fn stop(self) {
        let (tx, task) = self.running;
        tx.send(true).expect("factory listens");
        task.await.expect("no panic").expect("factory ok");
    }
}

/// The refs of `repo` under `prefix`, one per line.
fn refs_under(repo: &std::path::Path, prefix: &str) -> String {
    git(repo, &["for-each-ref", "--format=%(refname)", prefix])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue4_a_succeeded_run_reports_its_diff_and_publishes_its_commit_only_for_delivery() {
    let p = Publishing::start();
    let r = p
        .run(31, 310, true, "printf 'one\\nTWO\\nthree\\n' > hello.txt")
        .await;
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{r:?}");
    let commit = r.commit.clone().expect("commit");
    assert_eq!(r.result_ref.as_deref(), Some("refs/gantry/results/310"));
    assert_eq!(
        git(&p.repo, &["rev-parse", "refs/gantry/results/310"]),
        commit
    );
    let patch = std::fs::read_to_string(
        gantry_factory::artifacts_dir(&p.data, JobId(31), RunId(310)).join("diff.patch"),
    )
    .expect("diff.patch");
    assert_eq!(r.diff.as_deref(), Some(patch.as_str()));
    assert!(patch.contains("+TWO") && patch.contains("-two"), "{patch}");

    // Not delivered (push off on the server): nothing published, the diff still sent.
    let r = p.run(32, 320, false, "echo x > x.txt").await;
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{r:?}");
    assert_eq!(r.result_ref, None);
    assert!(r.diff.as_deref().is_some_and(|d| d.contains("+x")), "{r:?}");
    // A failed run is never delivered: nothing published either.
    let r = p.run(33, 330, true, "echo y > y.txt; exit 3").await;
    assert_eq!(r.outcome, Some(Outcome::Failed), "{r:?}");
    assert_eq!(r.result_ref, None);
    assert!(r.diff.as_deref().is_some_and(|d| d.contains("+y")), "{r:?}");

    assert_eq!(
        refs_under(&p.repo, "refs/gantry/results"),
        "refs/gantry/results/310"
    );
    assert_eq!(
        refs_under(&p.repo, "refs/heads/gantry"),
        "",
        "no branch is written"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue4_a_factory_sharing_the_servers_cache_publishes_nothing() {
    let h = Harness::start(1).await;
    let mut c = claim(34, 340, 1, spec(&h.repo, &["sh", "-c", "echo z > z.txt"]));
    c.deliver = true;
    let r = h.run(c).await;
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{r:?}");
    assert_eq!(r.result_ref, None);
    assert!(r.diff.as_deref().is_some_and(|d| d.contains("+z")), "{r:?}");
    assert_eq!(refs_under(&h.repo, "refs/gantry"), "");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue4_a_result_that_cannot_be_published_fails_the_run_saying_so() {
    let p = Publishing::start();
    // A ref named `refs/gantry/results` leaves no room for `refs/gantry/results/<run>`.
    let base = git(&p.repo, &["rev-parse", "HEAD"]);
    git(&p.repo, &["update-ref", "refs/gantry/results", &base]);
    let r = p.run(35, 350, true, "echo w > w.txt").await;
    assert_eq!(r.outcome, Some(Outcome::Failed), "{r:?}");
    assert_eq!(r.result_ref, None);
    let err = r.error.clone().expect("an error");
    assert!(
        err.contains("cannot be delivered") && err.contains("refs/gantry/results/350"),
        "{err}"
    );
    assert!(r.commit.is_some(), "the attempt is still committed: {r:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue4_a_diff_over_the_limit_is_reported_cut_with_a_marker() {
    let p = Publishing::start();
    let r = p.run(36, 360, false, "seq 1 800000 > big.txt").await;
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{r:?}");
    let patch = gantry_factory::artifacts_dir(&p.data, JobId(36), RunId(360)).join("diff.patch");
    let full = std::fs::metadata(&patch).expect("diff.patch").len();
    assert!(full > MAX_REPORTED_DIFF_BYTES as u64, "{full}");
    let diff = r.diff.expect("a diff");
    assert!(diff.len() <= MAX_REPORTED_DIFF_BYTES, "{}", diff.len());
    assert!(
        diff.len() > MAX_REPORTED_DIFF_BYTES - 4096,
        "{}",
        diff.len()
    );
    let (kept, marker) = diff.rsplit_once("\n[gantry:").expect("a marker line");
    assert!(
        marker.contains("diff cut") && marker.contains(&full.to_string()),
        "{marker}"
    );
    // Cut at a line end: every kept line is a whole line of the patch.
    let last = kept.lines().last().expect("lines");
    assert!(
        last.starts_with('+') && last[1..].parse::<u64>().is_ok(),
        "{last}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue4_a_published_result_is_delivered_by_a_server_with_its_own_data_dir() {
    let p = Publishing::start();
    let r = p.run(37, 370, true, "echo delivered > d.txt").await;
    let commit = r.commit.clone().expect("commit");
    let published = r.result_ref.clone().expect("published");
    let server = p.server_data();
    let repo = p.repo_str();
    // The server never ran anything: no cache until the delivery makes one.
    assert!(!workspace::cache_dir(&server, &repo).exists());
    workspace::deliver_published(&server, &repo, &commit, "gantry/37", Some(&published))
        .await
        .expect("delivered");
    assert_eq!(git(&p.repo, &["rev-parse", "refs/heads/gantry/37"]), commit);
    assert_eq!(git(&p.repo, &["show", "gantry/37:d.txt"]), "delivered");
    workspace::remove_published(&server, &repo, &published)
        .await
        .expect("removed");
    assert_eq!(refs_under(&p.repo, "refs/gantry"), "");
    // The commit stays in the server's cache: a later delivery needs no result ref.
    workspace::deliver(&server, &repo, &commit, "gantry/37b")
        .await
        .expect("the commit is in the cache now");
    assert_eq!(
        git(&p.repo, &["rev-parse", "refs/heads/gantry/37b"]),
        commit
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue4_a_published_ref_holding_another_commit_is_not_delivered() {
    let p = Publishing::start();
    let server = p.server_data();
    let repo = p.repo_str();
    // The server's cache exists before the results are published, so their commits are
    // only reachable through the result refs.
    let base = git(&p.repo, &["rev-parse", "HEAD"]);
    let cache = workspace::cache_dir(&server, &repo);
    std::fs::create_dir_all(server.join("repos")).expect("mkdir");
    git(
        &server,
        &[
            "clone",
            "--bare",
            "--quiet",
            &repo,
            &cache.to_string_lossy(),
        ],
    );
    let a = p.run(38, 380, true, "echo a > a.txt").await;
    let b = p.run(39, 390, true, "echo b > b.txt").await;
    let (ca, cb) = (a.commit.expect("commit a"), b.commit.expect("commit b"));
    let err = workspace::deliver_published(
        &server,
        &repo,
        &cb,
        "gantry/39",
        Some("refs/gantry/results/380"),
    )
    .await
    .expect_err("the ref holds a's commit");
    let msg = err.to_string();
    assert!(msg.contains(&ca) && msg.contains(&cb), "{msg}");
    assert_eq!(refs_under(&p.repo, "refs/heads/gantry"), "");

    // Only result refs are ever fetched or removed.
    let err =
        workspace::deliver_published(&server, &repo, &cb, "gantry/39", Some("refs/heads/main"))
            .await
            .expect_err("not a result ref");
    assert!(err.to_string().contains("result_ref"), "{err}");
    let err = workspace::remove_published(&server, &repo, "refs/heads/main")
        .await
        .expect_err("not a result ref");
    assert!(err.to_string().contains("refs/heads/main"), "{err}");
    assert_eq!(git(&p.repo, &["rev-parse", "main"]), base);
    p.stop().await;
}
