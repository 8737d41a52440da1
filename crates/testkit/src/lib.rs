//! What the integration tests of every crate share, so that the three harnesses
//! (factory, server, CLI) run git and wait the same way, and TLS tests make their
//! certificates the same way ([`tls::TestCa`]). Dev-only: no crate depends on it
//! outside its tests.

pub mod model_api;
pub mod tls;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How often [`wait_for`] and [`wait_for_async`] look again.
const POLL: Duration = Duration::from_millis(20);

/// Runs `git args...` in `dir` with a fixed identity and `main` as the default branch,
/// ignoring any `GIT_DIR`-style variable of the caller, and returns its standard output
/// without surrounding whitespace. Panics, naming the command and git's error, when it
/// fails: a test's own git call failing is a broken test.
#[track_caller]
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Calls `f` until it returns something, for at most `timeout`; panics naming `what`
/// when the time is up. For tests without an async runtime.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// [`wait_for`] for async tests: sleeps on the runtime between looks.
pub async fn wait_for_async<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The sum of every sample of metric `name` in a Prometheus text page whose labels
/// contain `label` (for example `result="empty"`; `""` matches every sample).
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The series name and label of the claims that found nothing to claim, in a Gantry
/// server's `/metrics`.
pub const EMPTY_CLAIMS: (&str, &str) = ("gantry_claim_duration_seconds_count", "result=\"empty\"");
