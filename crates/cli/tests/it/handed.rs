//! Secrets handed to agents, end to end through the real binaries (issue 12): a job
//! names `secrets: [DEMO_TOKEN]`; the factory takes the value from its environment or
//! from the private secrets file gantry.toml names, gives it to the agent's process
//! alone (not to the gates), redacts it from everything the run prints, fails a result
//! that commits it (`secret_found`), and says which secrets a run received, by name.
//!
//! Each job checks the value it received against the expected one put together at run
//! time from two pieces, so no job file, stored spec or event holds the value whole.

use crate::harness::{Env, Server, submit};
use crate::secrets::{assert_api_clean, assert_clean, gantry_toml, leaking_files};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// The value the factory's environment holds.
const ENV_VALUE: (&str, &str) = ("gantry-it-", "demo-from-env-7c1d0e");

/// The value the secrets file holds.
const FILE_VALUE: (&str, &str) = ("gantry-it-", "demo-from-file-3b9a4f");

fn whole((a, b): (&str, &str)) -> String {
    format!("{a}{b}")
}

/// A command job asking for `DEMO_TOKEN` that checks it got `expected` (exit 7 if
/// not), prints it on stdout and stderr, and (with `commit`) writes it into a file of
/// its result. Its gate passes only when the gate's environment lacks the secret.
fn demo_job(env: &Env, name: &str, expected: (&str, &str), commit: bool) -> std::path::PathBuf {
    let (a, b) = expected;
    let write = if commit {
        "printf \"%s\\n\" \"$DEMO_TOKEN\" > token.txt; "
    } else {
        ""
    };
    env.job(
        name,
        "secrets: [DEMO_TOKEN]\nfix_rounds: 0\n\
         gates:\n  - { name: no-secret, run: \"test -z \\\"$DEMO_TOKEN\\\"\" }\n",
        &format!(
            "want=\"{a}\"\"{b}\"; [ \"$DEMO_TOKEN\" = \"$want\" ] || exit 7; \
             echo \"agent has $DEMO_TOKEN\"; echo \"stderr has $DEMO_TOKEN\" >&2; {write}true"
        ),
    )
}

/// The events of job `id`.
fn events(server: &Server, id: &str) -> Vec<serde_json::Value> {
    let out = server.cli(&["events", id, "--json"]);
    out.ok();
    out.json().as_array().expect("events").clone()
}

/// Checks that job `id` failed its scan on the committed value of `DEMO_TOKEN` and
/// that its agent received the secret, by name.
#[track_caller]
fn assert_failed_on_the_committed_secret(server: &Server, id: &str) {
    let j = server.wait_state(id, "failed", LONG);
    assert_eq!(j["runs"][0]["outcome"], "gates_failed", "{j:#}");
    let evs = events(server, id);
    let found: Vec<&serde_json::Value> =
        evs.iter().filter(|e| e["kind"] == "secret.found").collect();
    assert_eq!(found.len(), 1, "{evs:#?}");
    assert_eq!(found[0]["data"]["rule"], "job-secret:DEMO_TOKEN");
    assert_eq!(found[0]["data"]["file"], "token.txt");
    let gate = evs
        .iter()
        .find(|e| e["kind"] == "gate.passed")
        .unwrap_or_else(|| panic!("the gate did not pass: the secret reached it\n{evs:#?}"));
    assert_eq!(gate["data"]["name"], "no-secret");
    assert!(
        j["reason"]
            .as_str()
            .is_some_and(|r| r.contains("secret_found")),
        "{j:#}"
    );
}

/// Checks that `value` reaches no CLI answer, API answer or event stream frame about
/// `ids`, and that the logs show its redaction instead.
fn assert_served_nowhere(server: &Server, ids: &[&str], value: &str) {
    let secrets = [value.to_string()];
    for id in ids {
        let logs = server.cli(&["logs", id]);
        logs.ok();
        assert!(logs.stdout.contains("agent has [REDACTED:env]"), "{logs}");
        for args in [
            vec!["show", id],
            vec!["show", id, "--json"],
            vec!["events", id, "--json"],
            vec!["logs", id],
            vec!["diff", id],
        ] {
            let out = server.cli(&args);
            assert_clean(&format!("gantry {args:?}"), &out.to_string(), &secrets);
        }
    }
    assert_api_clean(server, ids, &secrets);
}

/// Stops `server` and checks that no file of its data dir and not its log holds
/// `value`. The result a job committed the value into is in the cache's git objects,
/// compressed: the agent's doing, which the scan refused to deliver.
fn assert_kept_nowhere(server: Server, value: &str) {
    let secrets = [value.to_string()];
    let log = server.log.clone();
    let data = server.data_dir.clone();
    server.stop();
    let (leaks, seen) = leaking_files(&data, &secrets);
    assert!(seen > 10, "only {seen} files under the data dir");
    assert!(leaks.is_empty(), "{leaks:#?}");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("secret"), "the log says nothing of secrets");
    assert_clean("the server's log", &log, &secrets);
}

#[test]
fn issue12_a_secret_from_the_factorys_environment_reaches_the_agent_alone() {
    let env = Env::new();
    let value = whole(ENV_VALUE);
    let server = Server::start_with_env(&env.data(), &[], &[("DEMO_TOKEN", &value)]);
    let committed = demo_job(&env, "committed", ENV_VALUE, true);
    let printed = demo_job(&env, "printed", ENV_VALUE, false);
    let missing = env.job(
        "missing",
        "secrets: [DEMO_TOKEN, MISSING_TOKEN]\nretry_on: [lost, failed]\nmax_attempts: 2\nbackoff: 1s\n",
        "echo should not run",
    );
    let ids = submit(&server, &[&committed, &printed, &missing]);
    let (committed, printed, missing) = (&ids[0], &ids[1], &ids[2]);

    assert_failed_on_the_committed_secret(&server, committed);
    let ok = server.wait_state(printed, "succeeded", LONG);
    // `show` names what the run received; the JSON has it on the run.
    assert_eq!(
        ok["runs"][0]["secrets"],
        serde_json::json!(["DEMO_TOKEN"]),
        "{ok:#}"
    );
    let show = server.cli(&["show", printed]);
    show.ok();
    assert!(
        show.stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["secrets", "DEMO_TOKEN"])),
        "{show}"
    );
    let started = events(&server, printed)
        .into_iter()
        .find(|e| e["kind"] == "run.started")
        .expect("run.started");
    assert_eq!(
        started["data"]["secrets"],
        serde_json::json!(["DEMO_TOKEN"])
    );

    // A secret the factory does not have fails the run before anything starts, naming
    // it; a job that retries failures gets its bounded attempts, each failing alike.
    let failed = server.wait_state(missing, "failed", LONG);
    let runs = failed["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{failed:#}");
    for r in runs {
        assert_eq!(r["outcome"], "failed", "{failed:#}");
        let error = r["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("secret MISSING_TOKEN is not set in the factory's environment"),
            "{failed:#}"
        );
        assert!(r.get("secrets").is_none(), "{failed:#}");
    }
    let kinds: Vec<String> = events(&server, missing)
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        !kinds
            .iter()
            .any(|k| k == "run.started" || k == "run.output"),
        "{kinds:?}"
    );

    // A bad entry of `secrets:` is refused at submit, naming file, field and line.
    let bad = env.job("bad", "secrets:\n  - GOOD_TOKEN\n  - bad-name\n", "true");
    let out = server.cli(&["submit", &bad.display().to_string()]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains("bad.md:8") && out.stderr.contains("secrets"),
        "{out}"
    );
    assert!(out.stderr.contains("\"bad-name\""), "{out}");

    assert_served_nowhere(&server, &[committed, printed], &value);
    assert_kept_nowhere(server, &value);
}

/// Writes `text` into `path` with mode `mode`.
fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn issue12_a_secret_from_the_secrets_file_gantry_toml_names() {
    let env = Env::new();
    let value = whole(FILE_VALUE);
    let file = env.tmp.path().join("secrets.toml");
    write_mode(&file, &format!("# test\nDEMO_TOKEN = \"{value}\"\n"), 0o600);
    gantry_toml(
        &env,
        &format!("[factory]\nsecrets_file = \"{}\"\n", file.display()),
    );
    // The environment has a value too, and another secret: a factory with a file
    // hands out the file's values and nothing of its environment.
    let env_value = whole(ENV_VALUE);
    let server = Server::start_with_env(
        &env.data(),
        &[],
        &[("DEMO_TOKEN", &env_value), ("ENV_ONLY_TOKEN", &env_value)],
    );
    let committed = demo_job(&env, "committed", FILE_VALUE, true);
    // The run cannot read the file itself, though its directory is writable to it.
    let peek = env.job(
        "peek",
        "secrets: [DEMO_TOKEN]\n",
        &format!(
            "if [ -s {} ]; then cat {}; exit 9; fi; echo \"peek has $DEMO_TOKEN\"",
            file.display(),
            file.display()
        ),
    );
    let env_only = env.job(
        "env-only",
        "secrets: [ENV_ONLY_TOKEN]\n",
        "echo should not run",
    );
    let ids = submit(&server, &[&committed, &peek, &env_only]);
    let (committed, peek, env_only) = (&ids[0], &ids[1], &ids[2]);

    assert_failed_on_the_committed_secret(&server, committed);
    let j = server.wait_state(peek, "succeeded", LONG);
    assert_eq!(
        j["runs"][0]["secrets"],
        serde_json::json!(["DEMO_TOKEN"]),
        "{j:#}"
    );
    let logs = server.cli(&["logs", peek]);
    assert!(logs.stdout.contains("peek has [REDACTED:env]"), "{logs}");
    let failed = server.wait_state(env_only, "failed", LONG);
    let error = failed["runs"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("secret ENV_ONLY_TOKEN is not in the secrets file")
            && error.contains(&file.display().to_string()),
        "{failed:#}"
    );

    assert_served_nowhere(&server, &[committed], &value);
    assert_kept_nowhere(server, &value);
}

#[test]
fn issue12_a_secrets_file_others_may_read_stops_serve_and_factory_naming_it() {
    let env = Env::new();
    let file = env.tmp.path().join("secrets.toml");
    write_mode(&file, "DEMO_TOKEN = \"gantry-it-0644-value\"\n", 0o644);
    let config = format!("[factory]\nsecrets_file = \"{}\"\n", file.display());
    gantry_toml(&env, &config);
    let mut serve = crate::harness::gantry();
    serve
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(env.data());
    let out = crate::harness::run_with_timeout(serve, LONG);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains(&file.display().to_string()) && out.stderr.contains("mode 0644"),
        "{out}"
    );
    assert!(!out.to_string().contains("0644-value"), "{out}");

    let factory_toml = env.tmp.path().join("factory.toml");
    std::fs::write(&factory_toml, &config).expect("write");
    let out = crate::harness::factory_with_config(
        &env.tmp.path().join("factory-data"),
        &factory_toml,
        LONG,
    );
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains(&file.display().to_string()) && out.stderr.contains("mode 0644"),
        "{out}"
    );
}
