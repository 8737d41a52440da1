//! Runs that survive their factory: a factory that dies leaves its runs running, and the
//! next factory on the same data dir adopts them (issue 3, "Runs that survive Gantry
//! restarting").

use crate::support::stop_factory as stop;
use crate::support::*;
use gantry_core::{JobId, Outcome, RunId, StopKind};
use gantry_factory::record::RunRecord;
use gantry_factory::{Factory, artifacts_dir};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A source repo and a data dir in one temp dir, and a coordinator that outlives the
/// factories started on them.
struct World {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    data: PathBuf,
    coord: Arc<TestCoord>,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = tmp.path().join("src-repo");
        make_repo(&repo);
        let data = tmp.path().join("data");
        World {
            tmp,
            repo,
            data,
            coord: Arc::new(TestCoord::default()),
        }
    }

    /// A flag file the run's script waits for.
    fn flag(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn factory(&self) -> Running {
        spawn_factory(self.coord.clone(), test_config(&self.data, 2))
    }
}

/// A factory on a runtime of its own, so that it can die the way a process dies: all
/// its tasks dropped at once, its runs' processes left alone.
struct Doomed {
    rt: tokio::runtime::Runtime,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl World {
    fn doomed_factory(&self) -> Doomed {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, rx) = tokio::sync::watch::channel(false);
        rt.spawn(Factory::new(test_config(&self.data, 2), self.coord.clone()).run(rx));
        Doomed { rt, _shutdown: tx }
    }
}

/// Simulates the factory dying: its runtime is shut down, which drops every task of it
/// (loop, supervisors, renewers, tailers) without killing any process.
async fn die(factory: Doomed) {
    let Doomed { rt, _shutdown } = factory;
    tokio::task::spawn_blocking(move || rt.shutdown_timeout(GUARD))
        .await
        .expect("runtime shut down");
}

/// A script that prints `before`, waits for `go1`, prints `unwatched`, waits for `go2`,
/// then prints `after`, writes `result.txt` and exits with `code`.
fn waiting_script(go1: &Path, go2: &Path, code: i32) -> String {
    format!(
        "echo before
while [ ! -e '{}' ]; do sleep 0.02; done
echo unwatched
echo to-stderr >&2
while [ ! -e '{}' ]; do sleep 0.02; done
echo after
echo result > result.txt
exit {code}",
        go1.display(),
        go2.display()
    )
}

fn touch(p: &Path) {
    std::fs::write(p, "").expect("touch flag");
}

fn count(events: &[gantry_core::event::NewEvent], kind: &str) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_a_run_outlives_its_factory_and_the_next_one_finishes_it_once() {
    let w = World::new();
    let (go1, go2) = (w.flag("go1"), w.flag("go2"));
    let script = waiting_script(&go1, &go2, 0);
    let a = w.doomed_factory();
    w.coord
        .push(claim(1, 11, 1, spec(&w.repo, &["sh", "-c", &script])));
    let pgid = started_pid(&w.coord.started(RunId(11)).await);
    wait_for(|| (w.coord.output(RunId(11), "stdout") == "before\n").then_some(())).await;

    die(a).await;
    assert!(
        !live_members(pgid).is_empty(),
        "the run keeps going without its factory"
    );
    // Output written while no factory watches stays in the files.
    touch(&go1);
    let stdout_log = artifacts_dir(&w.data, JobId(1), RunId(11)).join("stdout.log");
    wait_for(|| {
        std::fs::read_to_string(&stdout_log)
            .is_ok_and(|t| t.contains("unwatched"))
            .then_some(())
    })
    .await;
    let renewed_before = w.coord.renew_count(RunId(11));

    let b = w.factory();
    wait_for(|| (w.coord.output(RunId(11), "stdout") == "before\nunwatched\n").then_some(())).await;
    touch(&go2);
    let report = w.coord.finish_of(RunId(11)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    assert_eq!(report.exit_code, Some(0));
    assert_eq!(report.files_changed, Some(1));
    assert_eq!(report.branch.as_deref(), Some("gantry/1/a1"));
    assert!(
        w.coord.renew_count(RunId(11)) > renewed_before,
        "the new factory renews the adopted lease"
    );

    // Every byte of output exactly once, across the two factories.
    assert_eq!(
        w.coord.output(RunId(11), "stdout"),
        "before\nunwatched\nafter\n"
    );
    assert_eq!(w.coord.output(RunId(11), "stderr"), "to-stderr\n");
    stop(b).await;
    let events = w.coord.events(RunId(11));
    assert_eq!(count(&events, "run.started"), 1, "started once");
    assert_eq!(w.coord.finishes(RunId(11)).len(), 1, "finished once");
    assert!(live_members(pgid).is_empty(), "nothing of the run is left");
    assert!(
        !RunRecord::path(&w.data, RunId(11)).exists(),
        "record removed"
    );
    assert!(!w.data.join("work/1-a1").exists(), "worktree removed");
    let cache = gantry_factory::workspace::cache_dir(&w.data, &w.repo.to_string_lossy());
    assert_eq!(
        git(&cache, &["show", "gantry/1/a1:result.txt"]),
        "result",
        "the adopted run's work is committed on its attempt branch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_a_run_that_ended_while_no_factory_watched_is_finished_with_its_real_status() {
    let w = World::new();
    let (go1, go2) = (w.flag("go1"), w.flag("go2"));
    let script = waiting_script(&go1, &go2, 3);
    let a = w.doomed_factory();
    w.coord
        .push(claim(2, 22, 1, spec(&w.repo, &["sh", "-c", &script])));
    let pgid = started_pid(&w.coord.started(RunId(22)).await);
    wait_for(|| (w.coord.output(RunId(22), "stdout") == "before\n").then_some(())).await;
    die(a).await;
    touch(&go1);
    touch(&go2);
    let status = artifacts_dir(&w.data, JobId(2), RunId(22)).join("exit_status");
    wait_for(|| status.exists().then_some(())).await;
    assert_eq!(
        std::fs::read_to_string(&status).expect("status").trim(),
        "3"
    );

    let b = w.factory();
    let report = w.coord.finish_of(RunId(22)).await;
    assert_eq!(report.outcome, Some(Outcome::Failed), "{report:?}");
    assert_eq!(report.exit_code, Some(3));
    assert_eq!(report.files_changed, Some(1), "its work is committed");
    assert_eq!(
        w.coord.output(RunId(22), "stdout"),
        "before\nunwatched\nafter\n"
    );
    stop(b).await;
    assert_eq!(w.coord.finishes(RunId(22)).len(), 1);
    assert!(live_members(pgid).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_a_run_whose_lease_was_taken_away_is_killed_on_adoption_and_never_finished() {
    let w = World::new();
    let a = w.doomed_factory();
    let script = "echo change > stale.txt; trap '' TERM; echo ready; sleep 1000 & wait";
    w.coord
        .push(claim(3, 33, 1, spec(&w.repo, &["sh", "-c", script])));
    let pgid = started_pid(&w.coord.started(RunId(33)).await);
    wait_for(|| (w.coord.output(RunId(33), "stdout") == "ready\n").then_some(())).await;
    die(a).await;
    assert!(!live_members(pgid).is_empty());
    w.coord.set_renew(RunId(33), RenewMode::Stale);

    let mut b = Factory::new(test_config(&w.data, 2), w.coord.clone());
    let report = b.adopt().await.expect("adopt");
    assert_eq!(report.dropped, vec![(JobId(3), RunId(33))]);
    assert!(report.adopted.is_empty());
    assert!(live_members(pgid).is_empty(), "the group is killed");
    assert!(!RunRecord::path(&w.data, RunId(33)).exists());
    assert!(!w.data.join("work/3-a1").exists(), "worktree removed");

    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(b.run(rx));
    // The factory registers once it is done with the records.
    wait_for(|| (!w.coord.registrations().is_empty()).then_some(())).await;
    tx.send(true).expect("factory listens");
    task.await.expect("no panic").expect("factory ok");
    assert!(w.coord.finishes(RunId(33)).is_empty(), "never finished");
    let cache = gantry_factory::workspace::cache_dir(&w.data, &w.repo.to_string_lossy());
    assert_eq!(
        git(&cache, &["rev-parse", "refs/heads/gantry/3/a1"]),
        git(&cache, &["rev-parse", "main"]),
        "nothing committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_a_stop_asked_while_no_factory_watched_applies_on_adoption() {
    let w = World::new();
    let a = w.doomed_factory();
    w.coord.push(claim(
        4,
        44,
        1,
        spec(&w.repo, &["sh", "-c", "echo ready; exec sleep 1000"]),
    ));
    let pgid = started_pid(&w.coord.started(RunId(44)).await);
    wait_for(|| (w.coord.output(RunId(44), "stdout") == "ready\n").then_some(())).await;
    die(a).await;
    w.coord
        .set_renew(RunId(44), RenewMode::Stop(StopKind::Cancel));
    let b = w.factory();
    let report = w.coord.finish_of(RunId(44)).await;
    assert_eq!(report.outcome, Some(Outcome::Canceled), "{report:?}");
    stop(b).await;
    assert!(live_members(pgid).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_a_factory_told_to_leave_its_runs_hands_them_to_the_next_one() {
    let w = World::new();
    let go = w.flag("go");
    let mut cfg = test_config(&w.data, 1);
    cfg.leave_runs_on_shutdown = true;
    let a = spawn_factory(w.coord.clone(), cfg);
    let script = format!(
        "echo one; while [ ! -e '{}' ]; do sleep 0.02; done; echo two",
        go.display()
    );
    w.coord
        .push(claim(5, 55, 1, spec(&w.repo, &["sh", "-c", &script])));
    let pgid = started_pid(&w.coord.started(RunId(55)).await);
    wait_for(|| (w.coord.output(RunId(55), "stdout") == "one\n").then_some(())).await;
    stop(a).await;
    assert!(!live_members(pgid).is_empty(), "left running");
    assert!(RunRecord::path(&w.data, RunId(55)).exists(), "record kept");

    let b = w.factory();
    touch(&go);
    let report = w.coord.finish_of(RunId(55)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    assert_eq!(w.coord.output(RunId(55), "stdout"), "one\ntwo\n");
    stop(b).await;
    assert_eq!(w.coord.finishes(RunId(55)).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_an_adopted_agent_run_keeps_its_insights_and_sends_no_event_twice() {
    use gantry_core::engine::Step;
    let w = World::new();
    let go = w.flag("go");
    let mut s = spec(&w.repo, &[]);
    s.engine = gantry_core::EngineKind::Script;
    let usage = |n: u64| Step::Usage {
        tokens_in: n,
        tokens_out: n / 10,
        tokens_cached: 0,
        cost_usd: Some(0.5),
    };
    s.steps = vec![
        usage(100),
        Step::Run {
            command: format!("while [ ! -e '{}' ]; do sleep 0.02; done", go.display()),
        },
        usage(200),
    ];
    let a = w.doomed_factory();
    w.coord.push(claim(6, 66, 1, s));
    wait_for(|| {
        w.coord
            .events(RunId(66))
            .iter()
            .any(|e| e.kind == "agent.usage")
            .then_some(())
    })
    .await;
    die(a).await;

    let b = w.factory();
    touch(&go);
    let report = w.coord.finish_of(RunId(66)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let i = report.insights.expect("insights");
    assert_eq!(
        (i.tokens_in, i.tokens_out),
        (300, 30),
        "both factories' part"
    );
    assert_eq!(i.cost_usd, Some(1.0));
    assert_eq!(i.turns, 3);
    stop(b).await;
    let events = w.coord.events(RunId(66));
    assert_eq!(count(&events, "agent.session_started"), 1);
    assert_eq!(count(&events, "agent.usage"), 2);
    assert_eq!(count(&events, "agent.result"), 1);
}

/// Issue 11: a process's output files are rewritten redacted once read to their end,
/// so their lengths change. A factory that adopts the run after that (here: its first
/// factory died while a gate ran) must neither read them again from the old offsets
/// nor leave them unredacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue11_an_adopted_run_whose_output_was_redacted_uploads_nothing_twice() {
    let w = World::new();
    let go = w.flag("go");
    let mut s = spec(
        &w.repo,
        &[
            "sh",
            "-c",
            // The key is put together by the job, so this file holds no credential.
            "printf 'key AKIA%s\\n' QWERTYUIOPASDFGH; echo done; echo w > w.txt",
        ],
    );
    let wait = format!("while [ ! -e '{}' ]; do sleep 0.02; done", go.display());
    s.gates = gantry_core::gate::GateChoice::Inline(vec![gate("wait", &wait)]);
    let a = w.doomed_factory();
    w.coord.push(claim(7, 77, 1, s));
    // The gate runs after the output was read to its end and redacted.
    wait_for(|| {
        w.coord
            .events(RunId(77))
            .iter()
            .any(|e| e.kind == "gate.started")
            .then_some(())
    })
    .await;
    die(a).await;
    let stdout = artifacts_dir(&w.data, JobId(7), RunId(77)).join("stdout.log");
    let redacted = "key [REDACTED:aws-access-key-id]\ndone\n";
    assert_eq!(std::fs::read_to_string(&stdout).expect("stdout"), redacted);
    let record = RunRecord::read(&RunRecord::path(&w.data, RunId(77))).expect("record");
    assert!(record.outputs_redacted, "{record:?}");

    touch(&go);
    let b = w.factory();
    let report = w.coord.finish_of(RunId(77)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    stop(b).await;
    assert_eq!(w.coord.output(RunId(77), "stdout"), redacted);
    assert_eq!(std::fs::read_to_string(&stdout).expect("stdout"), redacted);
    let events = w.coord.events(RunId(77));
    assert_eq!(
        count(&events, "gate.started"),
        2,
        "checked again on adoption"
    );
}
