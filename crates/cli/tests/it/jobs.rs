//! Submitting, listing and showing jobs; JSON fields; diffs; idempotency; bad files.

use crate::harness::{Env, submit};
use std::time::Duration;

const JOB_FIELDS: [&str; 12] = [
    "id",
    "state",
    "title",
    "priority",
    "attempt",
    "max_attempts",
    "lock",
    "deps",
    "idempotency_key",
    "created_at",
    "started_at",
    "finished_at",
];
const RUN_FIELDS: [&str; 10] = [
    "id",
    "attempt",
    "epoch",
    "outcome",
    "exit_code",
    "branch",
    "commit",
    "files_changed",
    "lines_added",
    "lines_deleted",
];

#[test]
fn submit_ls_show_diff_and_json_fields() {
    let env = Env::new();
    let server = env.serve(&["--seats", "2"]);
    let a = env.job(
        "write-hello",
        "priority: 7\nlock: greet\nidempotency_key: hello-key\n",
        "printf 'hello\\nworld\\n' > hello.txt; echo wrote",
    );
    let b = env.job(
        "after-hello",
        "deps: [hello-key]\n",
        "echo second >> README.md",
    );
    let ids = submit(&server, &[&a, &b]);
    assert_eq!(ids.len(), 2, "one id per file: {ids:?}");
    let (ia, ib) = (ids[0].clone(), ids[1].clone());
    assert_ne!(ia, ib);

    let ja = server.wait_state(&ia, "succeeded", Duration::from_secs(60));
    let jb = server.wait_state(&ib, "succeeded", Duration::from_secs(60));
    for f in JOB_FIELDS {
        assert!(ja.get(f).is_some(), "show --json has `{f}`: {ja:#}");
    }
    assert_eq!(ja["id"].as_i64().unwrap().to_string(), ia);
    assert_eq!(ja["title"], "write-hello");
    assert_eq!(ja["priority"], 7);
    assert_eq!(ja["attempt"], 1);
    assert_eq!(ja["max_attempts"], 3);
    assert_eq!(ja["lock"], "greet");
    assert_eq!(ja["idempotency_key"], "hello-key");
    assert_eq!(ja["deps"], serde_json::json!([]));
    assert!(
        ja["created_at"].is_string()
            && ja["started_at"].is_string()
            && ja["finished_at"].is_string(),
        "{ja:#}"
    );
    assert_eq!(
        jb["deps"],
        serde_json::json!([ja["id"]]),
        "the key resolved to the job id"
    );
    assert_eq!(jb["lock"], serde_json::Value::Null);

    let runs = ja["runs"].as_array().expect("runs is a list");
    assert_eq!(runs.len(), 1, "{ja:#}");
    let run = &runs[0];
    for f in RUN_FIELDS {
        assert!(run.get(f).is_some(), "run JSON has `{f}`: {run:#}");
    }
    assert_eq!(run["attempt"], 1);
    assert_eq!(run["epoch"], 1);
    assert_eq!(run["outcome"], "succeeded");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["branch"], format!("gantry/{ia}/a1"));
    assert_eq!(run["files_changed"], 1);
    assert_eq!(run["lines_added"], 2);
    assert_eq!(run["lines_deleted"], 0);
    let commit = run["commit"].as_str().expect("commit is set").to_string();
    assert_eq!(commit.len(), 40, "full commit id: {commit}");
    // The second job started only after the first finished (deps).
    let a_done = ja["finished_at"].as_str().unwrap().to_string();
    let b_start = jb["started_at"].as_str().unwrap().to_string();
    assert!(
        b_start >= a_done,
        "dependent started {b_start} before its dep finished {a_done}"
    );

    // ls: JSON and a human table.
    let ls = server.cli(&["ls", "--json"]);
    ls.ok();
    let list = ls.json();
    let list = list.as_array().expect("ls --json is a list");
    assert_eq!(list.len(), 2);
    for j in list {
        for f in JOB_FIELDS {
            assert!(j.get(f).is_some(), "ls --json job has `{f}`: {j:#}");
        }
    }
    let ls = server.cli(&["ls"]);
    ls.ok();
    let header = ls.stdout.lines().next().unwrap_or_default();
    for col in ["ID", "STATE", "PRI", "ATTEMPT", "TITLE"] {
        assert!(header.contains(col), "ls header has {col}\n{ls}");
    }
    assert!(
        ls.stdout.contains("write-hello") && ls.stdout.contains("succeeded"),
        "{ls}"
    );
    let ls = server.cli(&["ls", "--state", "queued", "--json"]);
    ls.ok();
    assert_eq!(ls.json(), serde_json::json!([]), "no queued jobs");
    let ls = server.cli(&["ls", "--limit", "1", "--json"]);
    assert_eq!(ls.json().as_array().unwrap().len(), 1);

    // show: the job and its runs table with a short commit.
    let show = server.cli(&["show", &ia]);
    show.ok();
    assert!(
        show.stdout.contains(&format!("Job {ia}: write-hello")),
        "{show}"
    );
    for col in [
        "RUN", "ATTEMPT", "EPOCH", "OUTCOME", "EXIT", "BRANCH", "COMMIT", "FILES", "+/-",
    ] {
        assert!(show.stdout.contains(col), "runs table has {col}\n{show}");
    }
    assert!(show.stdout.contains(&format!("gantry/{ia}/a1")), "{show}");
    assert!(
        show.stdout.contains(&commit[..8]) && !show.stdout.contains(&commit),
        "short commit\n{show}"
    );
    assert!(show.stdout.contains("+2/-0"), "{show}");
    assert!(
        show.stdout.contains("lock") && show.stdout.contains("greet"),
        "{show}"
    );

    // diff: the patch of the attempt.
    let diff = server.cli(&["diff", &ia]);
    diff.ok();
    assert!(
        diff.stdout.contains("hello.txt")
            && diff.stdout.contains("+hello")
            && diff.stdout.contains("+world"),
        "{diff}"
    );

    let diff = server.cli(&["diff", &ia, "--json"]);
    diff.ok();
    let d = diff.json();
    assert_eq!(d["job"].as_i64().unwrap().to_string(), ia);
    assert!(d["diff"].as_str().unwrap().contains("+hello"), "{diff}");

    // The same idempotency key again returns the same job and stores nothing new.
    let again = server.cli(&["submit", a.to_str().unwrap()]);
    again.ok();
    assert_eq!(again.stdout.trim(), ia, "{again}");
    assert!(
        again.stderr.contains("idempotency key matched job"),
        "{again}"
    );
    let ls = server.cli(&["ls", "--json"]);
    assert_eq!(
        ls.json().as_array().unwrap().len(),
        2,
        "no new job was stored"
    );

    // status counts them.
    let st = server.cli(&["status", "--json"]);
    st.ok();
    let st = st.json();
    assert_eq!(st["paused"], false);
    assert_eq!(st["jobs"]["succeeded"], 2, "{st:#}");
    let st = server.cli(&["status"]);
    assert!(
        st.stdout.contains("claiming: active") && st.stdout.contains("succeeded"),
        "{st}"
    );

    // A job that does not exist.
    let missing = server.cli(&["show", "999"]);
    missing.expect_code(1);
    assert!(
        missing.stderr.contains("Error:") && missing.stderr.contains("999"),
        "{missing}"
    );
}

#[test]
fn invalid_job_file_names_file_line_and_field_and_stores_nothing() {
    let env = Env::new();
    let server = env.serve(&["--no-factory"]);
    let good = env.job("good", "", "true");
    // `priority` is on line 6 of this file.
    let bad = env.tmp.path().join("bad-priority.md");
    std::fs::write(
        &bad,
        format!(
            "---\ntitle: bad\nrepo: {}\nengine: command\ncommand: [\"true\"]\npriority: 12\n---\nbody\n",
            env.repo().display()
        ),
    )
    .unwrap();
    let out = server.cli(&["submit", good.to_str().unwrap(), bad.to_str().unwrap()]);
    out.expect_code(1);
    assert!(
        out.stdout.is_empty(),
        "no id printed for a refused batch\n{out}"
    );
    assert!(
        out.stderr.contains("bad-priority.md:6"),
        "names file and line\n{out}"
    );
    assert!(out.stderr.contains("priority"), "names the field\n{out}");
    assert!(out.stderr.contains("12"), "names the value\n{out}");
    let ls = server.cli(&["ls", "--json"]);
    ls.ok();
    assert_eq!(
        ls.json(),
        serde_json::json!([]),
        "a batch with one bad file stores nothing"
    );

    // An unknown key.
    let unknown = env.tmp.path().join("unknown-key.md");
    std::fs::write(
        &unknown,
        format!(
            "---\ntitle: x\nrepo: {}\ncolour: blue\ncommand: [\"true\"]\n---\n",
            env.repo().display()
        ),
    )
    .unwrap();
    let out = server.cli(&["submit", unknown.to_str().unwrap()]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("unknown-key.md:4") && out.stderr.contains("colour"),
        "{out}"
    );

    // A file that does not exist is refused before anything is sent.
    let out = server.cli(&["submit", "/no/such/job.md"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("cannot read job file /no/such/job.md"),
        "{out}"
    );
}

/// Issue 15: a title with a screen clear, an OSC window title, a bell and a carriage
/// return was printed raw by `gantry ls` and `gantry show`. They show it escaped now,
/// and `--json` still gives the title as it is.
#[test]
fn issue15_ls_and_show_print_control_characters_escaped() {
    let env = Env::new();
    let server = env.serve(&["--no-factory"]);
    let file = env.tmp.path().join("evil.md");
    std::fs::write(
        &file,
        format!(
            "---\ntitle: \"evil\\e[2J\\e]0;pwned\\a\\rX\"\nrepo: {}\nengine: command\ncommand: [\"true\"]\n---\nbody\n",
            env.repo().display()
        ),
    )
    .unwrap();
    let ids = submit(&server, &[&file]);
    let raw_title = "evil\u{1b}[2J\u{1b}]0;pwned\u{7}\rX";
    let shown = r"evil\x1b[2J\x1b]0;pwned\x07\rX";
    let clean = |text: &str| !text.chars().any(|c| c.is_control() && c != '\n');
    for args in [vec!["ls"], vec!["show", ids[0].as_str()]] {
        let out = server.cli(&args);
        out.ok();
        assert!(
            clean(&out.stdout) && clean(&out.stderr),
            "{args:?} printed a control character: {:?}",
            out.stdout
        );
        assert!(out.stdout.contains(shown), "{args:?}: {out}");
    }
    let ls = server.cli(&["ls", "--json"]);
    ls.ok();
    assert_eq!(ls.json()[0]["title"], raw_title);
    let show = server.cli(&["show", ids[0].as_str(), "--json"]);
    show.ok();
    assert_eq!(show.json()["title"], raw_title);
}

#[test]
fn issue10_ls_follows_the_pages_of_a_long_list() {
    let env = Env::new();
    let server = env.serve(&["--no-factory"]);
    // One page more than the server answers at once.
    let files: Vec<std::path::PathBuf> = (0..1001)
        .map(|i| env.job(&format!("many{i}"), "", "true"))
        .collect();
    let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let ids = submit(&server, &paths);
    assert_eq!(ids.len(), 1001);
    let out = server.cli(&["ls", "--json"]);
    out.ok();
    let listed = out.json();
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 1001, "every job, across pages");
    let mut seen: Vec<String> = listed.iter().map(|j| j["id"].to_string()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 1001, "each job once");
    let out = server.cli(&["ls", "--limit", "5", "--json"]);
    out.ok();
    assert_eq!(out.json().as_array().expect("array").len(), 5);
}
