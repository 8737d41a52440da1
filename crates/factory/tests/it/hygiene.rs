//! Admission and hygiene: no claims while the machine is short of memory or disk,
//! leftovers pruned at start, cache disk use reported, remote repos fetched per run
//! (issue 3, "Admission and hygiene").

use crate::support::*;
use gantry_core::{Outcome, RunId};
use gantry_factory::{Admission, Factory, workspace};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_a_factory_short_of_disk_does_not_claim_and_says_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("src-repo");
    make_repo(&repo);
    let data = tmp.path().join("data");
    let coord = Arc::new(TestCoord::default());
    let mut cfg = test_config(&data, 1);
    // More free space than any disk has: admission stays closed.
    cfg.min_free_disk_mb = u64::MAX;
    let factory = Factory::new(cfg, coord.clone());
    let mut admission = factory.admission();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(factory.run(rx));
    coord.push(claim(1, 1, 1, spec(&repo, &["true"])));
    let closed = tokio::time::timeout(GUARD, admission.wait_for(|a| !a.is_open()))
        .await
        .expect("admission closes")
        .expect("factory alive")
        .clone();
    match &closed {
        Admission::LowDisk { path, min_mb, .. } => {
            assert_eq!(path, &data);
            assert_eq!(*min_mb, u64::MAX);
        }
        other => panic!("expected low disk, got {other:?}"),
    }
    assert!(closed.to_string().contains("not claiming"), "{closed}");
    // Registered, checked admission, and still left the job alone.
    assert_eq!(coord.registrations().len(), 1);
    assert_eq!(coord.queued(), 1, "the claim was not taken");
    tx.send(true).expect("factory listens");
    task.await.expect("no panic").expect("factory ok");
    assert!(coord.finishes(RunId(1)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_leftovers_are_pruned_at_start_and_cache_use_is_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("src-repo");
    make_repo(&repo);
    let data = tmp.path().join("data");
    let work = data.join("work");
    std::fs::create_dir_all(work.join("77-a1/sub")).expect("leftover worktree");
    std::fs::write(work.join("77-a1.pid"), "{}").expect("leftover pid file");
    // The agent repository a crash left half made beside its worktree.
    std::fs::create_dir_all(work.join("77-a1.agent-git/.git")).expect("leftover staging");
    // A clone interrupted by a process that is gone (pids never reach 999999999).
    let stale_clone = data.join("repos/.tmp-src-repo-abc-999999999");
    std::fs::create_dir_all(&stale_clone).expect("stale clone");

    let coord = Arc::new(TestCoord::default());
    let (tx, task) = spawn_factory(coord.clone(), test_config(&data, 1));
    let r = {
        coord.push(claim(1, 1, 1, spec(&repo, &["true"])));
        coord.finish_of(RunId(1)).await
    };
    assert_eq!(r.outcome, Some(Outcome::Succeeded));
    assert!(!work.join("77-a1").exists(), "leftover worktree pruned");
    assert!(!work.join("77-a1.pid").exists(), "leftover pid file pruned");
    assert!(
        !work.join("77-a1.agent-git").exists(),
        "leftover staging pruned"
    );
    assert!(!stale_clone.exists(), "stale clone pruned");

    let usage = workspace::cache_usage(&data).await.expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!(
        usage[0].path,
        workspace::cache_dir(&data, &repo.to_string_lossy())
    );
    assert!(usage[0].bytes > 0);
    tx.send(true).expect("factory listens");
    task.await.expect("no panic").expect("factory ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_a_remote_repo_is_fetched_before_each_run() {
    let h = Harness::start(2).await;
    let url = format!("file://{}", h.repo.display());
    let mut s = spec(&h.repo, &["true"]);
    s.repo = url.clone();
    let first = h.run(claim(1, 1, 1, s.clone())).await;
    assert_eq!(first.outcome, Some(Outcome::Succeeded), "{first:?}");
    assert_eq!(first.base_commit.as_deref(), Some(h.base.as_str()));

    std::fs::write(h.repo.join("later.txt"), "later\n").expect("write");
    git(&h.repo, &["add", "-A"]);
    git(&h.repo, &["commit", "-q", "-m", "later"]);
    let later = git(&h.repo, &["rev-parse", "HEAD"]);
    let mut s2 = s.clone();
    s2.command = vec!["cat".to_string(), "later.txt".to_string()];
    let second = h.run(claim(2, 2, 1, s2)).await;
    assert_eq!(second.outcome, Some(Outcome::Succeeded), "{second:?}");
    assert_eq!(second.base_commit.as_deref(), Some(later.as_str()));
    // Both runs used one cache, the URL's.
    let usage = workspace::cache_usage(&h.data).await.expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].path, workspace::cache_dir(&h.data, &url));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_keeps_the_agent_repository_being_made_beside_a_live_worktree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let work = data.join("work");
    let live = work.join("88-a1");
    let staging = work.join("88-a1.agent-git");
    let other = work.join("89-a1.agent-git");
    for dir in [&live, &staging, &other] {
        std::fs::create_dir_all(dir.join(".git")).expect("dir");
    }
    let guard = gantry_factory::workspace::LiveGuard::new(&live);
    let report = workspace::prune(&data, &[]).await.expect("prune");
    assert!(live.exists(), "the live worktree stays");
    assert!(staging.exists(), "its agent repository being made stays");
    assert!(
        !other.exists(),
        "a staging directory of no live worktree goes"
    );
    assert_eq!(report.removed, [other]);
    drop(guard);
}
