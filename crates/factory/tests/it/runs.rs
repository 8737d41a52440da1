//! Runs that end by themselves: success with a commit, env, failures, output, setup errors.

use crate::support::*;
use gantry_core::{Outcome, RunId};
use gantry_factory::{CoordError, artifacts_dir};
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_edits_files_is_committed_measured_and_cleaned_up() {
    let h = Harness::start(2).await;
    let script = "printf 'one\\nTWO\\nthree\\nfour\\n' > hello.txt && printf 'x\\ny\\n' > added.txt && rm README.md";
    let mut s = spec(&h.repo, &["sh", "-c", script]);
    s.title = "Edit some files".to_string();
    let report = h.run(claim(7, 70, 1, s)).await;

    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    assert_eq!(report.exit_code, Some(0));
    assert_eq!(report.error, None);
    assert_eq!(report.epoch, 700);
    assert_eq!(report.branch.as_deref(), Some("gantry/7/a1"));
    assert_eq!(report.base_commit.as_deref(), Some(h.base.as_str()));
    // hello.txt +2 -1, added.txt +2, README.md -1.
    assert_eq!(report.files_changed, Some(3));
    assert_eq!(report.lines_added, Some(4));
    assert_eq!(report.lines_deleted, Some(2));

    let commit = report.commit.clone().expect("commit");
    assert_ne!(commit, h.base);
    let cache = h.cache();
    assert_eq!(
        git(&cache, &["rev-parse", "refs/heads/gantry/7/a1"]),
        commit
    );
    assert_eq!(git(&cache, &["rev-parse", &format!("{commit}^")]), h.base);
    assert_eq!(
        git(
            &cache,
            &["log", "-1", "--format=%an <%ae>|%cn <%ce>", &commit]
        ),
        "gantry <gantry@localhost>|gantry <gantry@localhost>"
    );
    let msg = git(&cache, &["log", "-1", "--format=%B", &commit]);
    assert!(msg.contains("job 7") && msg.contains("attempt 1"), "{msg}");
    assert!(msg.contains("Edit some files"), "{msg}");
    assert_eq!(
        git(&cache, &["show", &format!("{commit}:hello.txt")]),
        "one\nTWO\nthree\nfour"
    );

    let patch = std::fs::read_to_string(
        artifacts_dir(&h.data, gantry_core::JobId(7), RunId(70)).join("diff.patch"),
    )
    .expect("diff.patch");
    assert!(patch.contains("+TWO") && patch.contains("-two"), "{patch}");
    assert!(patch.contains("deleted file mode"), "{patch}");
    assert!(patch.contains("+++ b/added.txt"), "{patch}");

    assert!(!h.data.join("work/7-a1").exists(), "worktree removed");
    assert!(
        git(&cache, &["worktree", "list", "--porcelain"])
            .lines()
            .all(|l| !l.contains("7-a1")),
        "git no longer lists the worktree"
    );
    assert!(!h.data.join("runs/70.json").exists(), "run record removed");

    let started = h.coord.started(RunId(70)).await;
    assert!(started_pid(&started) > 1);
    assert_eq!(started.data["branch"], "gantry/7/a1");
    assert_eq!(started.data["base_commit"], h.base.as_str());
    assert!(
        started.data["workspace"]
            .as_str()
            .expect("workspace")
            .ends_with("work/7-a1")
    );
    // The source repo is untouched: workers never write shared refs.
    assert_eq!(git(&h.repo, &["rev-parse", "main"]), h.base);
    assert!(git(&h.repo, &["branch", "--list", "gantry/*"]).is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_changes_reports_the_base_and_zero_figures() {
    let h = Harness::start(1).await;
    let report = h.run(claim(1, 1, 1, spec(&h.repo, &["true"]))).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    assert_eq!(report.commit.as_deref(), Some(h.base.as_str()));
    assert_eq!(
        (
            report.files_changed,
            report.lines_added,
            report.lines_deleted
        ),
        (Some(0), Some(0), Some(0))
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_the_allowlist_plus_job_env_and_gantry_vars() {
    // Cargo sets CARGO_MANIFEST_DIR for the test process: it must not reach the run.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let h = Harness::start(1).await;
    let mut s = spec(&h.repo, &["env"]);
    s.env.insert("JOB_VAR".to_string(), "job value".to_string());
    s.body = "---\nnot front matter\n---\n# Instructions\nDo *this* verbatim.\n".to_string();
    let report = h.run(claim(3, 30, 2, s.clone())).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");

    let arts = artifacts_dir(&h.data, gantry_core::JobId(3), RunId(30));
    let out = std::fs::read_to_string(arts.join("stdout.log")).expect("stdout.log");
    let env: std::collections::BTreeMap<&str, &str> =
        out.lines().filter_map(|l| l.split_once('=')).collect();
    let keys: BTreeSet<&str> = env.keys().copied().collect();
    let allowed: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "USER",
        "LANG",
        "LC_ALL",
        "TERM",
        "TZ",
        "JOB_VAR",
        "GANTRY_JOB_ID",
        "GANTRY_RUN_ID",
        "GANTRY_ATTEMPT",
        "GANTRY_PROMPT_FILE",
        "GANTRY_WORKSPACE",
        // bubblewrap names the working directory it starts the command in.
        "PWD",
    ]
    .into();
    assert!(
        keys.is_subset(&allowed),
        "unexpected variables: {:?}",
        keys.difference(&allowed)
    );
    assert!(!env.contains_key("CARGO_MANIFEST_DIR"));
    if std::env::var_os("PATH").is_some() {
        assert!(env.contains_key("PATH"));
    }
    assert_eq!(env["JOB_VAR"], "job value");
    assert_eq!(env["GANTRY_JOB_ID"], "3");
    assert_eq!(env["GANTRY_RUN_ID"], "30");
    assert_eq!(env["GANTRY_ATTEMPT"], "2");
    assert!(
        env["GANTRY_WORKSPACE"].ends_with("work/3-a2"),
        "{}",
        env["GANTRY_WORKSPACE"]
    );
    let prompt_path = env["GANTRY_PROMPT_FILE"];
    assert_eq!(
        std::path::Path::new(prompt_path),
        std::path::absolute(arts.join("prompt.md")).expect("absolute")
    );
    assert!(
        !prompt_path.contains("work/3-a2"),
        "the prompt lives outside the worktree"
    );
    assert_eq!(
        std::fs::read_to_string(prompt_path).expect("prompt"),
        s.body
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_zero_exit_fails_with_its_exit_code() {
    let h = Harness::start(1).await;
    let report = h
        .run(claim(
            4,
            40,
            1,
            spec(&h.repo, &["sh", "-c", "echo partial > p.txt; exit 3"]),
        ))
        .await;
    assert_eq!(report.outcome, Some(Outcome::Failed));
    assert_eq!(report.exit_code, Some(3));
    // What the attempt did is still committed on its own branch, for inspection.
    assert_eq!(report.files_changed, Some(1));
    assert!(!h.data.join("work/4-a1").exists());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_killed_by_a_signal_fails_with_an_error_naming_the_signal() {
    let h = Harness::start(1).await;
    let report = h
        .run(claim(
            14,
            140,
            1,
            spec(&h.repo, &["sh", "-c", "kill -9 $$"]),
        ))
        .await;
    assert_eq!(report.outcome, Some(Outcome::Failed));
    assert_eq!(report.exit_code, None);
    let err = report.error.expect("error");
    assert!(err.contains("signal") && err.contains('9'), "{err}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_start_fails_with_an_error_naming_it() {
    let h = Harness::start(1).await;
    let report = h
        .run(claim(
            5,
            50,
            1,
            spec(&h.repo, &["/nonexistent/agent-binary", "--go"]),
        ))
        .await;
    assert_eq!(report.outcome, Some(Outcome::Failed));
    assert_eq!(report.exit_code, None);
    let err = report.error.expect("error");
    assert!(err.contains("/nonexistent/agent-binary"), "{err}");
    assert_eq!(report.branch.as_deref(), Some("gantry/5/a1"));
    assert!(!h.data.join("work/5-a1").exists());

    let report = h.run(claim(6, 60, 1, spec(&h.repo, &[]))).await;
    assert_eq!(report.outcome, Some(Outcome::Failed));
    let err = report.error.expect("error");
    assert!(err.contains("command is empty"), "{err}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_arrives_as_events_and_in_the_log_files_even_when_not_utf8() {
    let h = Harness::start(1).await;
    let script = "printf 'line1\\nline2\\n'; printf 'err1\\n' >&2; printf 'caf\\303\\251 \\377bad\\n'; printf 'err2\\n' >&2";
    let report = h
        .run(claim(8, 80, 1, spec(&h.repo, &["sh", "-c", script])))
        .await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");

    let stdout = h.coord.output(RunId(80), "stdout");
    assert_eq!(stdout, "line1\nline2\ncafé \u{FFFD}bad\n");
    assert_eq!(h.coord.output(RunId(80), "stderr"), "err1\nerr2\n");
    let arts = artifacts_dir(&h.data, gantry_core::JobId(8), RunId(80));
    assert_eq!(
        std::fs::read(arts.join("stdout.log")).expect("stdout.log"),
        b"line1\nline2\ncaf\xc3\xa9 \xffbad\n"
    );
    assert_eq!(
        std::fs::read(arts.join("stderr.log")).expect("stderr.log"),
        b"err1\nerr2\n"
    );

    // run.started comes before any output, and all events precede the finish.
    let log = h.coord.log();
    let kinds: Vec<String> = log
        .iter()
        .filter_map(|s| match s {
            Seen::Event(r, e) if *r == RunId(80) => Some(e.kind.clone()),
            Seen::Finish(r, _) if *r == RunId(80) => Some("finish".to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("run.started"));
    assert_eq!(kinds.last().map(String::as_str), Some("finish"));
    h.stop().await;
}

/// Issue 4: `run.started` is retried like output while the server is unreachable,
/// and still comes first; before, one failed upload lost it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue4_run_started_survives_an_unreachable_server_and_comes_first() {
    let h = Harness::start(1).await;
    h.coord.fail_next_events(3);
    let report = h
        .run(claim(9, 90, 1, spec(&h.repo, &["sh", "-c", "echo out"])))
        .await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let events = h.coord.events(RunId(90));
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "run.started").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(kinds.first(), Some(&"run.started"), "{kinds:?}");
    assert!(
        events[0].data["pid"].as_i64().is_some_and(|p| p > 0),
        "{events:?}"
    );
    assert_eq!(h.coord.output(RunId(90), "stdout"), "out\n");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_is_complete_in_the_log_and_streamed_as_events() {
    let h = Harness::start(1).await;
    let size = 6 * 1024 * 1024;
    let script = format!("head -c {size} /dev/zero | tr '\\0' 'a'");
    let report = h
        .run(claim(9, 90, 1, spec(&h.repo, &["sh", "-c", &script])))
        .await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let arts = artifacts_dir(&h.data, gantry_core::JobId(9), RunId(90));
    let log = std::fs::metadata(arts.join("stdout.log")).expect("stdout.log");
    assert_eq!(log.len(), size as u64);
    let streamed = h.coord.output(RunId(90), "stdout");
    let a_count = streamed.bytes().filter(|b| *b == b'a').count();
    // Either everything was streamed, or a marker says what was left out.
    assert!(
        a_count == size || streamed.contains("were not streamed as events"),
        "streamed {a_count} of {size} bytes without a marker"
    );
    assert!(a_count > 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_repo_or_base_fails_with_an_error_naming_it() {
    let h = Harness::start(1).await;
    let missing = h.repo.with_file_name("no-such-repo");
    let report = h.run(claim(10, 100, 1, spec(&missing, &["true"]))).await;
    assert_eq!(report.outcome, Some(Outcome::Failed));
    let err = report.error.expect("error");
    assert!(err.contains("no-such-repo"), "{err}");
    assert_eq!(report.commit, None);

    // A directory that is not a git repository.
    let not_git = h.repo.with_file_name("not-git");
    std::fs::create_dir_all(&not_git).expect("mkdir");
    let report = h.run(claim(11, 110, 1, spec(&not_git, &["true"]))).await;
    assert_eq!(report.outcome, Some(Outcome::Failed));
    let err = report.error.expect("error");
    assert!(err.contains("not-git"), "{err}");

    let mut s = spec(&h.repo, &["true"]);
    s.base = Some("no-such-branch".to_string());
    let report = h.run(claim(12, 120, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::Failed));
    let err = report.error.expect("error");
    assert!(
        err.contains("no-such-branch") && err.contains("src-repo"),
        "{err}"
    );
    assert!(!h.data.join("work/12-a1").exists());

    let mut s = spec(&h.repo, &["true"]);
    s.base = Some("--upload-pack=evil".to_string());
    let report = h.run(claim(13, 130, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::Failed));
    let err = report.error.expect("error");
    assert!(
        err.contains("base") && err.contains("--upload-pack=evil"),
        "{err}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_may_be_a_branch_tag_or_commit_and_defaults_to_the_source_head() {
    let h = Harness::start(1).await;
    git(&h.repo, &["tag", "v1"]);
    git(&h.repo, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(h.repo.join("feature.txt"), "f\n").expect("write");
    git(&h.repo, &["add", "-A"]);
    git(&h.repo, &["commit", "-q", "-m", "feature"]);
    let feature = git(&h.repo, &["rev-parse", "HEAD"]);

    // The source's HEAD is now `feature`: the default base follows it.
    let r = h.run(claim(1, 1, 1, spec(&h.repo, &["true"]))).await;
    assert_eq!(r.base_commit.as_deref(), Some(feature.as_str()));

    for (i, base) in ["main", "v1", h.base.as_str()].into_iter().enumerate() {
        let mut s = spec(&h.repo, &["true"]);
        s.base = Some(base.to_string());
        let r = h.run(claim(2 + i as i64, 2 + i as i64, 1, s)).await;
        assert_eq!(
            r.base_commit.as_deref(),
            Some(h.base.as_str()),
            "base {base}"
        );
    }

    // A commit made in the source after the cache exists is fetched.
    git(&h.repo, &["checkout", "-q", "main"]);
    std::fs::write(h.repo.join("later.txt"), "later\n").expect("write");
    git(&h.repo, &["add", "-A"]);
    git(&h.repo, &["commit", "-q", "-m", "later"]);
    let later = git(&h.repo, &["rev-parse", "HEAD"]);
    let r = h
        .run(claim(9, 9, 1, spec(&h.repo, &["cat", "later.txt"])))
        .await;
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{r:?}");
    assert_eq!(r.base_commit.as_deref(), Some(later.as_str()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seats_bound_concurrent_runs() {
    let h = Harness::start(1).await;
    h.coord
        .push(claim(1, 1, 1, spec(&h.repo, &["sleep", "0.3"])));
    h.coord
        .push(claim(2, 2, 1, spec(&h.repo, &["sleep", "0.3"])));
    h.coord.finish_of(RunId(2)).await;
    let log = h.coord.log();
    let pos = |pred: &dyn Fn(&Seen) -> bool| log.iter().position(pred).expect("in log");
    let finish1 = pos(&|s| matches!(s, Seen::Finish(r, _) if *r == RunId(1)));
    let start2 =
        pos(&|s| matches!(s, Seen::Event(r, e) if *r == RunId(2) && e.kind == "run.started"));
    assert!(
        finish1 < start2,
        "with one seat, run 2 starts after run 1 ended"
    );
    let regs = h.coord.registrations();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].name, "test-factory");
    assert_eq!(regs[0].seats, 1);
    // The factory adds the sandbox kind it runs to the configured capabilities.
    assert_eq!(regs[0].capabilities, vec!["docker", "sandbox:bwrap"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_seats_run_concurrently_on_one_cache() {
    let h = Harness::start(3).await;
    for i in 1..=6 {
        let script = format!("echo {i} > f{i}.txt");
        h.coord
            .push(claim(i, i, 1, spec(&h.repo, &["sh", "-c", &script])));
    }
    for i in 1..=6 {
        let r = h.coord.finish_of(RunId(i)).await;
        assert_eq!(r.outcome, Some(Outcome::Succeeded), "run {i}: {r:?}");
        assert_eq!(r.files_changed, Some(1));
        assert_eq!(
            git(&h.cache(), &["show", &format!("gantry/{i}/a1:f{i}.txt")]),
            i.to_string()
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_factory_registers_again_when_the_server_forgot_it() {
    let h = Harness::start(1).await;
    h.coord.fail_next_claim(CoordError::Refused {
        kind: gantry_protocol::ErrorKind::NotFound,
        message: "factory 1 not found".to_string(),
    });
    h.coord
        .fail_next_claim(CoordError::Unavailable("blip".to_string()));
    let r = h.run(claim(1, 1, 1, spec(&h.repo, &["true"]))).await;
    assert_eq!(r.outcome, Some(Outcome::Succeeded));
    assert_eq!(h.coord.registrations().len(), 2);
    h.stop().await;
}

/// The largest amount of memory the test process has held so far (`VmHWM`), in bytes.
fn peak_memory() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line in kB");
    kib * 1024
}

/// Issue 10: a parsed stdout that prints 200 MB without a newline. The line is cut at the
/// reader's cap and reported once, marked truncated; the rest of it is dropped; the line
/// after it is parsed again; the factory's peak memory stays flat (before the cap, the
/// pending line grew by a read each look, to the whole 200 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_line_is_cut_and_marked_and_the_factory_memory_stays_flat() {
    let before = peak_memory();
    let h = Harness::start(1).await;
    let mut s = spec(
        &h.repo,
        &[
            "sh",
            "-c",
            "head -c 200000000 /dev/zero | tr '\\0' a; echo; \
             echo '{\"type\":\"message\",\"text\":\"after the long line\"}'",
        ],
    );
    s.output = Some(gantry_core::engine::Format::GantryJsonl);
    let report = h.run(claim(1, 1, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let grown = peak_memory().saturating_sub(before);

    let events = h.coord.events(RunId(1));
    let uploaded: usize = events.iter().map(|e| e.data.to_string().len()).sum();
    assert!(
        uploaded < 64 * 1024,
        "the upload is bounded, not the line: {uploaded} bytes in {} events",
        events.len()
    );
    let cuts: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "agent.notice")
        .filter_map(|e| e.data["message"].as_str())
        .filter(|m| m.starts_with("stdout line truncated"))
        .collect();
    assert_eq!(cuts.len(), 1, "one notice marks the cut line: {cuts:?}");
    assert!(
        cuts[0].contains("aaaa"),
        "the notice shows the line's start"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "agent.message" && e.data["text"] == "after the long line"),
        "the line after the cut one is parsed"
    );
    assert!(
        !events.iter().any(|e| e.kind == "agent.raw"),
        "no piece of the cut line is parsed as a line of its own"
    );
    let transcript =
        artifacts_dir(&h.data, gantry_core::JobId(1), RunId(1)).join("transcript.jsonl");
    let kept = std::fs::metadata(&transcript)
        .expect("the transcript")
        .len();
    assert!(kept > 200_000_000, "the transcript keeps the whole line");
    assert!(
        grown < 64 * 1024 * 1024,
        "the factory's peak memory grew by {} KiB over a 200 MB line",
        grown / 1024
    );
    h.stop().await;
}
