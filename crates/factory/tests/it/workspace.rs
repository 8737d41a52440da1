//! Workspace operations: delivery to the source repo and pruning.

use crate::support::*;
use gantry_core::{Outcome, RunId};
use gantry_factory::workspace;

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

    let report = workspace::prune(&h.data).await.expect("prune");
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
    let report = workspace::prune(&h.data).await.expect("prune");
    assert_eq!(report.removed, vec![work.join("51-a1")]);
    h.stop().await;
}
