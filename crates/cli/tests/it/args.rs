//! Arguments, help and errors that need no server (or no reachable one).

use crate::harness::run;

#[test]
fn every_command_has_help_with_usage() {
    let root = run(&["--help"]);
    root.ok();
    assert!(root.stdout.contains("Usage: gantry"), "{root}");
    assert!(
        root.stdout.contains("gantry demo"),
        "the root help points at the demo\n{root}"
    );
    for cmd in [
        "serve", "submit", "ls", "show", "events", "logs", "diff", "cancel", "kill", "pause",
        "resume", "retry", "status", "token", "demo", "bench",
    ] {
        assert!(
            root.stdout.contains(&format!("  {cmd}")),
            "root help lists {cmd}\n{root}"
        );
    }
    let commands: &[&[&str]] = &[
        &["serve"],
        &["submit"],
        &["ls"],
        &["show"],
        &["events"],
        &["logs"],
        &["diff"],
        &["cancel"],
        &["kill"],
        &["pause"],
        &["resume"],
        &["retry"],
        &["status"],
        &["token"],
        &["token", "create"],
        &["token", "ls"],
        &["token", "revoke"],
        &["demo"],
        &["bench"],
        &["bench", "queue"],
        &["bench", "dispatch"],
        &["bench", "metrics"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = run(&args);
        out.ok();
        let usage = format!("Usage: gantry {}", cmd.join(" "));
        assert!(
            out.stdout.contains(&usage),
            "{cmd:?} help has `{usage}`\n{out}"
        );
    }
    // The commands people type most say how, with examples.
    for cmd in [
        "serve", "submit", "ls", "show", "events", "logs", "kill", "demo",
    ] {
        let out = run(&[cmd, "--help"]);
        assert!(
            out.stdout.contains("Examples:"),
            "{cmd} --help has examples\n{out}"
        );
    }
    let serve = run(&["serve", "--help"]);
    for flag in [
        "--listen",
        "--lease-ttl",
        "--reaper-interval",
        "--seats",
        "--no-factory",
        "--kill-grace",
        "--no-push",
        "--cap",
    ] {
        assert!(
            serve.stdout.contains(flag),
            "serve --help documents {flag}\n{serve}"
        );
    }
}

#[test]
fn version_prints_and_exits_0() {
    let out = run(&["--version"]);
    out.ok();
    assert!(out.stdout.starts_with("gantry "), "{out}");
}

#[test]
fn bad_duration_is_a_usage_error_naming_flag_and_value() {
    let out = run(&["serve", "--lease-ttl", "soon", "--listen", "127.0.0.1:0"]);
    out.expect_code(2);
    assert!(out.stderr.contains("--lease-ttl"), "{out}");
    assert!(out.stderr.contains("'soon'"), "{out}");
    assert!(
        out.stderr.contains("60s"),
        "the error shows what a duration looks like\n{out}"
    );
    assert!(out.stderr.contains("gantry serve --help"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");

    let out = run(&["serve", "--reaper-interval", "2 parsecs"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("--reaper-interval") && out.stderr.contains("2 parsecs"),
        "{out}"
    );
}

#[test]
fn unknown_state_is_a_usage_error_listing_the_states() {
    // No server is needed: the value is refused before anything is sent.
    let out = run(&[
        "--url",
        "http://127.0.0.1:1",
        "--token",
        "x",
        "ls",
        "--state",
        "done",
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("--state") && out.stderr.contains("'done'"),
        "{out}"
    );
    for s in [
        "blocked",
        "queued",
        "running",
        "succeeded",
        "failed",
        "canceled",
        "killed",
    ] {
        assert!(out.stderr.contains(s), "lists state {s}\n{out}");
    }
}

#[test]
fn other_bad_arguments_exit_2() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["show", "abc"], &["<ID>", "abc", "positive integer"]),
        (&["ls", "--limit", "0"], &["--limit", "'0'"]),
        (&["serve", "--seats", "none"], &["--seats", "none"]),
        (&["serve", "--cap", "has space"], &["--cap", "has space"]),
        (
            &["token", "create", "--name", "ci", "--scope", "god"],
            &["--scope", "god", "reader"],
        ),
        (
            &["--url", "ftp://example", "ls"],
            &["--url", "ftp://example"],
        ),
        (&["frobnicate"], &["frobnicate"]),
        (&["kill"], &["--all"]),
        (&["ls", "--no-such-flag"], &["--no-such-flag"]),
    ];
    for (args, needles) in cases {
        let out = run(args);
        out.expect_code(2);
        for n in *needles {
            assert!(
                out.stderr.contains(n),
                "{args:?}: stderr names {n:?}\n{out}"
            );
        }
    }
}

#[test]
fn unreachable_server_says_how_to_start_one() {
    // Port 1 on loopback: nothing listens there.
    let out = run(&["--url", "http://127.0.0.1:1", "--token", "t", "ls"]);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("Error: cannot reach the Gantry server at http://127.0.0.1:1"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("Hint: start it with `gantry serve`, or pass --url"),
        "{out}"
    );
}

#[test]
fn missing_token_file_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("nowhere");
    let out = run(&[
        "--url",
        "http://127.0.0.1:1",
        "--data-dir",
        data.to_str().unwrap(),
        "status",
    ]);
    out.expect_code(1);
    let path = data.join("admin.token");
    let path = path.display().to_string();
    assert!(
        out.stderr
            .contains(&format!("cannot read the API token from {path}")),
        "{out}"
    );
    assert!(
        out.stderr.contains("Hint:") && out.stderr.contains("--token"),
        "{out}"
    );
}

#[test]
fn token_from_the_environment_is_used() {
    // With GANTRY_TOKEN set, no token file is needed: the error is about reaching the
    // server, not about the token.
    let mut c = crate::harness::gantry();
    c.args(["--data-dir", "/nonexistent-gantry-dir", "status"])
        .env("GANTRY_TOKEN", "abc")
        .env("GANTRY_URL", "http://127.0.0.1:1");
    let out = crate::harness::run_with_timeout(c, crate::harness::CALL_TIMEOUT);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("cannot reach the Gantry server at http://127.0.0.1:1"),
        "{out}"
    );
}
