//! The wall around runs (issue 15): with the default configuration a job sees its own
//! worktree and prompt, and nothing else of Gantry's: not the data dir, the admin
//! token, the database, other jobs' worktrees, prompts or logs. And nothing a job
//! writes in its worktree makes the factory's own git commands run its code.

use crate::support::*;
use gantry_core::{JobId, Outcome, RunId};
use gantry_factory::{Factory, FactoryConfig, FactoryError, Sandbox, artifacts_dir};
use std::sync::Arc;

/// A secret the tests plant where a job must never read it.
const SECRET: &str = "gtk_planted_admin_secret";

/// Plants an admin token and a database in the harness's data dir, as `gantry serve`
/// keeps them.
fn plant(h: &Harness) -> Vec<u8> {
    std::fs::create_dir_all(&h.data).expect("data dir");
    std::fs::write(h.data.join("admin.token"), SECRET).expect("write token");
    let db = b"SQLite format 3\0 planted".to_vec();
    std::fs::write(h.data.join("gantry.db"), &db).expect("write db");
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_a_job_cannot_read_the_admin_token_or_write_the_database() {
    let h = Harness::start(1).await;
    let db = plant(&h);
    let data = h.data.display().to_string();
    // The probe's reproduction (relative to the worktree), and the same by absolute
    // path, which a job can learn from its own `GANTRY_WORKSPACE`.
    let script = format!(
        r#"cat "$GANTRY_WORKSPACE/../../admin.token"; cat '{data}/admin.token';
echo overwritten > "$GANTRY_WORKSPACE/../../gantry.db"; echo overwritten > '{data}/gantry.db';
ls -a "$GANTRY_WORKSPACE/../.." '{data}'; echo listed; exit 0"#
    );
    let report = h
        .run(claim(1, 10, 1, spec(&h.repo, &["sh", "-c", &script])))
        .await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let out = h.coord.output(RunId(10), "stdout");
    assert!(out.contains("listed"), "the job ran to its end: {out}");
    assert!(!out.contains(SECRET), "the job read the admin token: {out}");
    assert!(
        !out.contains("admin.token"),
        "the job listed the data dir: {out}"
    );
    assert_eq!(
        std::fs::read(h.data.join("gantry.db")).expect("read db"),
        db,
        "the job wrote the database"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_a_job_cannot_read_or_change_another_jobs_worktree_prompt_or_logs() {
    let h = Harness::start(2).await;
    let go = h.data.parent().expect("tmp").join("go-victim");
    // The victim writes a secret in its worktree and waits, so that the thief runs
    // while the victim's worktree, prompt and logs all exist.
    let victim_script = format!(
        "echo victim-file-secret > secret.txt; echo victim-log-secret; while [ ! -e '{}' ]; do sleep 0.02; done",
        go.display()
    );
    let mut victim = spec(&h.repo, &["sh", "-c", &victim_script]);
    victim.body = "victim-prompt-secret\n".to_string();
    h.coord.push(claim(1, 10, 1, victim));
    let victim_wt = h.data.join("work/1-a1");
    wait_for(|| victim_wt.join("secret.txt").exists().then_some(())).await;

    let data = h.data.display().to_string();
    let thief_script = format!(
        r#"cat "$GANTRY_WORKSPACE"/../1-a1/secret.txt '{data}'/work/1-a1/secret.txt;
cat "$GANTRY_WORKSPACE"/../../artifacts/*/*/prompt.md '{data}'/artifacts/1/10/prompt.md;
cat "$GANTRY_WORKSPACE"/../../artifacts/*/*/stdout.log '{data}'/artifacts/1/10/stdout.log;
echo injected > "$GANTRY_WORKSPACE"/../1-a1/injected.txt; echo injected > '{data}'/work/1-a1/injected.txt;
echo thief-done; exit 0"#
    );
    let mut thief = spec(&h.repo, &["sh", "-c", &thief_script]);
    thief.body = "thief prompt\n".to_string();
    let report = h.run(claim(2, 20, 1, thief)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");

    std::fs::write(&go, "").expect("release the victim");
    let victim_report = h.coord.finish_of(RunId(10)).await;
    assert_eq!(
        victim_report.outcome,
        Some(Outcome::Succeeded),
        "{victim_report:?}"
    );

    let out = h.coord.output(RunId(20), "stdout");
    assert!(
        out.contains("thief-done"),
        "the thief ran to its end: {out}"
    );
    for secret in [
        "victim-file-secret",
        "victim-prompt-secret",
        "victim-log-secret",
    ] {
        assert!(!out.contains(secret), "the thief read {secret}: {out}");
    }
    let commit = victim_report.commit.expect("the victim's commit");
    let files = git(&h.cache(), &["ls-tree", "-r", "--name-only", &commit]);
    assert!(files.contains("secret.txt"), "{files}");
    assert!(
        !files.contains("injected.txt"),
        "the thief's file was delivered as the victim's work: {files}"
    );
    let prompt = artifacts_dir(&h.data, JobId(1), RunId(10)).join("prompt.md");
    assert_eq!(
        std::fs::read_to_string(prompt).expect("the victim's prompt"),
        "victim-prompt-secret\n"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_a_job_sees_its_own_worktree_and_prompt_and_a_private_home_and_tmp() {
    let h = Harness::start(1).await;
    let script = r#"cat "$GANTRY_PROMPT_FILE"; echo "home=$HOME"; touch "$HOME/h" /tmp/t && echo writable;
echo made > made.txt; test -w /usr && echo usr-writable; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; exit 0"#;
    let mut s = spec(&h.repo, &["sh", "-c", script]);
    s.body = "my own prompt\n".to_string();
    let report = h.run(claim(1, 10, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let out = h.coord.output(RunId(10), "stdout");
    assert!(out.contains("my own prompt"), "{out}");
    assert!(out.contains("home=/home/gantry"), "{out}");
    assert!(out.contains("writable"), "{out}");
    assert!(!out.contains("usr-writable"), "{out}");
    assert!(
        out.contains("CapEff:\t0000000000000000"),
        "no capabilities: {out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "no new privileges: {out}");
    let commit = report.commit.expect("commit");
    let files = git(&h.cache(), &["ls-tree", "-r", "--name-only", &commit]);
    assert!(files.contains("made.txt"), "{files}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_a_rewritten_dot_git_never_makes_the_factory_run_the_jobs_git_config() {
    let h = Harness::start(1).await;
    let marker = h.data.parent().expect("tmp").join("filter-ran");
    // The job points its worktree's `.git` at a repository it made, whose config
    // defines a clean filter that every file goes through: a factory that let git
    // discover the repository from the worktree would run the filter itself, as the
    // factory's user, outside any sandbox.
    let script = format!(
        r#"git init -q evil && git -C evil -c user.name=x -c user.email=x commit -q --allow-empty -m x &&
git -C evil config filter.x.clean "sh -c 'touch {m}; cat'" &&
echo '* filter=x' > .gitattributes && rm -rf .git && echo 'gitdir: evil/.git' > .git && echo new > new.txt; exit 0"#,
        m = marker.display()
    );
    let report = h
        .run(claim(1, 10, 1, spec(&h.repo, &["sh", "-c", &script])))
        .await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let commit = report.commit.expect("commit");
    let files = git(&h.cache(), &["ls-tree", "-r", "--name-only", &commit]);
    assert!(
        files.contains("new.txt"),
        "the attempt's work is committed: {files}"
    );
    assert!(
        !marker.exists(),
        "the job's clean filter ran in the factory"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_a_factory_whose_sandbox_does_not_work_refuses_to_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = FactoryConfig {
        sandbox: Sandbox::Bwrap {
            program: tmp.path().join("no-such-bwrap"),
        },
        ..test_config(&tmp.path().join("data"), 1)
    };
    let coord = Arc::new(TestCoord::default());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let err = Factory::new(cfg, coord.clone())
        .run(rx)
        .await
        .expect_err("a factory without its sandbox must not start");
    assert!(matches!(err, FactoryError::Sandbox(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("bubblewrap") && msg.contains("--allow-unsandboxed-jobs"),
        "{msg}"
    );
    assert!(
        coord.registrations().is_empty(),
        "it registered nonetheless"
    );
}
