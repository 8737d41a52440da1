//! Secrets handed to agents (issue 12) at the factory: the values come from the
//! factory's secrets file, reach the agent's first process and its fix rounds but not
//! its gates, are redacted from what the run uploads and leaves, and a secret the
//! factory lacks fails the run before anything is prepared.

use crate::support::*;
use gantry_core::{JobId, JobSpec, Outcome, RunId};
use gantry_factory::{FactoryConfig, artifacts_dir, worktree_dir};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The value of `DEMO_TOKEN` in the secrets file; the jobs put it together from two
/// pieces, so no spec holds it whole.
const VALUE: &str = "gantry-it-fix-round-secret";
const PIECES: (&str, &str) = ("gantry-it-", "fix-round-secret");

/// A factory over a test coordinator whose secrets file gives `DEMO_TOKEN`.
struct Setup {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    data: PathBuf,
    coord: Arc<TestCoord>,
    running: Running,
}

fn start() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("src-repo");
    make_repo(&repo);
    let data = tmp.path().join("data");
    let file = tmp.path().join("secrets.toml");
    std::fs::write(&file, format!("DEMO_TOKEN = \"{VALUE}\"\n")).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let cfg = FactoryConfig {
        secrets_file: Some(file),
        ..test_config(&data, 1)
    };
    let coord = Arc::new(TestCoord::default());
    let running = spawn_factory(coord.clone(), cfg);
    Setup {
        tmp,
        repo,
        data,
        coord,
        running,
    }
}

impl Setup {
    async fn stop(self) {
        let (shutdown, task) = self.running;
        shutdown.send(true).expect("factory listens");
        task.await
            .expect("factory task did not panic")
            .expect("factory loop ended without error");
    }
}

fn with_secrets(repo: &Path, script: &str, secrets: &[&str]) -> JobSpec {
    JobSpec {
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        ..spec(repo, &["sh", "-c", script])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_round_gets_the_secret_and_the_gate_never_does() {
    let s = start();
    let (a, b) = PIECES;
    // Only a fix round whose process has the secret makes the gate pass; the gate
    // passes only without it.
    let script = format!(
        r#"want="{a}""{b}"
[ "$DEMO_TOKEN" = "$want" ] || exit 7
echo "round ${{GANTRY_FIX_ROUND:-0}} has $DEMO_TOKEN"
if [ -n "$GANTRY_FIX_ROUND" ]; then echo fixed > fixed.txt; fi"#
    );
    let job = JobSpec {
        gates: gantry_core::gate::GateChoice::Inline(vec![gate(
            "fixed-without-secret",
            "test -f fixed.txt && test -z \"$DEMO_TOKEN\"",
        )]),
        fix_rounds: 1,
        ..with_secrets(&s.repo, &script, &["DEMO_TOKEN"])
    };
    s.coord.push(claim(301, 301, 1, job));
    let report = s.coord.finish_of(RunId(301)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let started = s.coord.started(RunId(301)).await;
    assert_eq!(started.data["secrets"], serde_json::json!(["DEMO_TOKEN"]));
    let out = s.coord.output(RunId(301), "stdout");
    assert!(out.contains("round 0 has [REDACTED:env]"), "{out}");
    assert!(out.contains("round 1 has [REDACTED:env]"), "{out}");
    let all = format!("{:?} {report:?}", s.coord.events(RunId(301)));
    assert!(!all.contains(VALUE), "an upload holds the value: {all}");
    // The files the run left are redacted too, the fix round's output included.
    let artifacts = artifacts_dir(&s.data, JobId(301), RunId(301));
    for name in ["stdout.log", "stdout-fix1.log"] {
        let text = std::fs::read_to_string(artifacts.join(name)).expect(name);
        assert!(
            text.contains("has [REDACTED:env]") && !text.contains(VALUE),
            "{name}: {text}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_factory_lacks_fails_the_run_before_anything_starts() {
    let s = start();
    let job = with_secrets(&s.repo, "touch ran.txt", &["DEMO_TOKEN", "NOT_IN_FILE"]);
    s.coord.push(claim(302, 302, 1, job));
    let report = s.coord.finish_of(RunId(302)).await;
    assert_eq!(report.outcome, Some(Outcome::Failed), "{report:?}");
    let error = report.error.clone().unwrap_or_default();
    assert!(
        error.contains("\"test-factory\" cannot hand the job its secrets")
            && error.contains("secret NOT_IN_FILE is not in the secrets file")
            && error.contains(&s.tmp.path().join("secrets.toml").display().to_string()),
        "{error}"
    );
    let events = s.coord.events(RunId(302));
    assert!(
        !events.iter().any(|e| e.kind == "run.started"),
        "{events:?}"
    );
    assert!(!worktree_dir(&s.data, JobId(302), 1).exists());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_whose_secrets_file_others_may_read_does_not_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("secrets.toml");
    std::fs::write(&file, format!("DEMO_TOKEN = \"{VALUE}\"\n")).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let cfg = FactoryConfig {
        secrets_file: Some(file.clone()),
        ..test_config(&tmp.path().join("data"), 1)
    };
    let (_shutdown, task) = spawn_factory(Arc::new(TestCoord::default()), cfg);
    let err = task
        .await
        .expect("no panic")
        .expect_err("the factory refuses to start");
    let text = err.to_string();
    assert!(
        text.contains(&file.display().to_string()) && text.contains("mode 0640"),
        "{text}"
    );
    assert!(!text.contains(VALUE), "{text}");
}
