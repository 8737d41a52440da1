//! Secrets end to end through the real binaries (issue 11): what an agent prints or
//! writes (a credential, the value of an API key its engine passes through) reaches no
//! API answer, no event stream frame and no file of the data dir; gantry.toml's
//! `[secrets]` rules fail the scan and redact output; a wrong `[secrets]` key stops the
//! server and a factory, naming the file and the key.
//!
//! Every credential is put together by the job at run time, so neither the job files
//! nor the stored specs hold one.

use crate::harness::{Api, Env, Server, submit};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// An AWS access key id, as the jobs print it (never written whole in a file here).
fn aws_key() -> String {
    format!("AKIA{}", "QWERTYUIOPASDFGH")
}

/// A token of the `acme-token` rule the tests configure.
fn acme_token() -> String {
    format!("acme_{}{}", "k3v9q2xw7m4p8r1t", "z6b0n5c2h8j4f7d1")
}

/// The `[[secrets.rule]]` of gantry.toml that knows [`acme_token`].
const ACME_RULE: &str =
    "[[secrets.rule]]\nid = \"acme-token\"\nregex = 'acme_[a-z0-9]{32}'\nkeywords = [\"acme_\"]\n";

/// The value of the API key the fake agent CLI gets through its engine's `env` list.
const API_KEY_VALUE: &str = "gantry-it-passed-through-0d1e2f";

/// Writes `gantry.toml` into the data dir of `env`.
pub(crate) fn gantry_toml(env: &Env, text: &str) {
    std::fs::create_dir_all(env.data()).expect("data dir");
    std::fs::write(env.data().join("gantry.toml"), text).expect("write gantry.toml");
}

/// A stand-in `claude` CLI: it prints a stream-json session whose message and result
/// quote its API key, echoes the key on stderr and writes it into `leak.txt`.
fn fake_claude(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("fake-claude");
    let script = r#"#!/bin/sh
cat > /dev/null
printf '{"type":"system","subtype":"init","session_id":"s-1","model":"fake-model"}\n'
printf '{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"my key is %s"}]}}\n' "$GANTRY_IT_API_KEY"
echo "stderr knows $GANTRY_IT_API_KEY" >&2
echo "$GANTRY_IT_API_KEY" > leak.txt
printf '{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"done with %s","session_id":"s-1","total_cost_usd":0.01,"usage":{"input_tokens":1,"output_tokens":1}}\n' "$GANTRY_IT_API_KEY"
"#;
    std::fs::write(&path, script).expect("write fake claude");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Panics naming the place when any of `secrets` is in `text`.
#[track_caller]
pub(crate) fn assert_clean(place: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!text.contains(s.as_str()), "{place} holds {s:?}:\n{text}");
    }
}

/// Every file under `dir` with whether it holds one of `secrets`, read byte for byte.
pub(crate) fn leaking_files(dir: &Path, secrets: &[String]) -> (Vec<String>, usize) {
    let mut leaks = Vec::new();
    let mut seen = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                seen += 1;
                let bytes = std::fs::read(&path).unwrap_or_default();
                for s in secrets {
                    if bytes.windows(s.len()).any(|w| w == s.as_bytes()) {
                        leaks.push(format!("{} holds {s:?}", path.display()));
                    }
                }
            }
        }
    }
    (leaks, seen)
}

/// Checks that none of `secrets` is in any API answer or event stream frame about `ids`,
/// nor in the lists and figures of the whole server.
pub(crate) fn assert_api_clean(server: &Server, ids: &[&str], secrets: &[String]) {
    let api = Api::new(&server.url, &server.admin_token());
    for id in ids {
        for path in [
            format!("/v1/jobs/{id}"),
            format!("/v1/jobs/{id}/diff"),
            format!("/v1/events?job={id}&limit=10000"),
        ] {
            let (status, body) = api.get(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status, 200, "GET {path}: {body}");
            assert_clean(&format!("GET {path}"), &body, secrets);
        }
        let frames = api.sse_until(&format!("/v1/events?job={id}"), last_event_id(&api, id));
        assert!(frames.contains("run.output"), "{frames}");
        assert_clean("the event stream", &frames, secrets);
    }
    for path in ["/v1/jobs", "/v1/status", "/v1/factories", "/metrics"] {
        let (_, body) = api.get(path).unwrap_or_else(|e| panic!("{e}"));
        assert_clean(&format!("GET {path}"), &body, secrets);
    }
}

/// The id of the last event of job `id`.
pub(crate) fn last_event_id(api: &Api, id: &str) -> i64 {
    let events = api.all_events(Some(id));
    events
        .last()
        .and_then(|e| e["id"].as_i64())
        .expect("the job has events")
}

#[test]
fn issue11_no_secret_an_agent_prints_is_kept_or_served_anywhere() {
    let env = Env::new();
    let claude = fake_claude(env.tmp.path());
    gantry_toml(
        &env,
        &format!(
            "[engines.claude-code]\nbinary = \"{}\"\nenv = [\"GANTRY_IT_API_KEY\"]\n",
            claude.display()
        ),
    );
    let server = Server::start_with_env(&env.data(), &[], &[("GANTRY_IT_API_KEY", API_KEY_VALUE)]);
    // A command job prints a credential, writes it into its result (so the diff and
    // the secret scan see it) and is sent back once, when it prints its fix prompt:
    // the gate's output quoted there holds the credential too.
    let command = env.job(
        "leaky",
        "gates:\n  - { name: leak, run: \"cat leak.txt; exit 1\" }\nfix_rounds: 1\n",
        "printf \"aws_access_key_id = AKIA%s\\n\" QWERTYUIOPASDFGH > leak.txt; cat leak.txt; \
         cat leak.txt >&2; if [ -n \"$GANTRY_FIX_ROUND\" ]; then cat \"$GANTRY_FIX_PROMPT_FILE\"; fi",
    );
    // An agent (claude-code, a stand-in) echoes the API key its engine passes it; its
    // gate prints the file the agent wrote it into.
    let agent = env.tmp.path().join("agent.md");
    std::fs::write(
        &agent,
        format!(
            "---\ntitle: agent\nrepo: {}\nengine: claude-code\n\
             gates:\n  - {{ name: show, run: \"cat leak.txt\" }}\n---\nEcho your key.\n",
            env.repo().display()
        ),
    )
    .expect("write job file");
    let ids = submit(&server, &[&command, &agent]);
    let (leaky, echoed) = (&ids[0], &ids[1]);
    let failed = server.wait_state(leaky, "failed", LONG);
    assert_eq!(failed["runs"][0]["outcome"], "gates_failed", "{failed:#}");
    server.wait_state(echoed, "succeeded", LONG);
    crate::harness::wait_for("the delivery of the agent's job", LONG, || {
        let events = server.cli(&["events", echoed, "--json"]).json();
        events
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["kind"] == "delivery.pushed")
            .then_some(())
    });
    let secrets = [aws_key(), API_KEY_VALUE.to_string()];

    // They were printed, and their redactions are what is served instead.
    let logs = server.cli(&["logs", leaky]);
    logs.ok();
    assert!(
        logs.stdout.contains("[REDACTED:aws-access-key-id]"),
        "{logs}"
    );
    assert!(
        logs.stdout.contains("Gate `leak` failed"),
        "the fix prompt was printed: {logs}"
    );
    let agent_logs = server.cli(&["events", echoed, "--json"]);
    assert!(
        agent_logs.stdout.contains("my key is [REDACTED:env]"),
        "{agent_logs}"
    );
    let diff = server.cli(&["diff", leaky]);
    diff.ok();
    assert!(
        diff.stdout
            .contains("+aws_access_key_id = [REDACTED:aws-access-key-id]"),
        "{diff}"
    );

    // No CLI output, no API answer and no event stream frame holds them.
    for id in [leaky, echoed] {
        for args in [
            vec!["show", id, "--json"],
            vec!["events", id, "--json"],
            vec!["logs", id],
            vec!["diff", id],
        ] {
            let out = server.cli(&args);
            assert_clean(&format!("gantry {args:?}"), &out.to_string(), &secrets);
        }
    }
    assert_api_clean(&server, &[leaky, echoed], &secrets);

    // No file of the data dir holds them: transcripts, gate output, fix prompts, the
    // diff, the database. The run files are there to look at (and were redacted).
    let server_log = server.log.clone();
    let data = server.data_dir.clone();
    server.stop();
    let artifacts = data.join("artifacts");
    let names: Vec<String> = walk_names(&artifacts);
    for wanted in [
        "stdout.log",
        "stdout-fix1.log",
        "stderr.log",
        "transcript.jsonl",
        "gate-leak.out",
        "gate-show.out",
        "fix-1.md",
        "diff.patch",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "no {wanted} in {names:?}"
        );
    }
    let (leaks, seen) = leaking_files(&data, &secrets);
    assert!(seen > 20, "only {seen} files under the data dir");
    assert!(leaks.is_empty(), "{leaks:#?}");
    let log = std::fs::read_to_string(&server_log).unwrap_or_default();
    assert_clean("the server's log", &log, &secrets);
}

/// The file names under `dir`, at any depth.
fn walk_names(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    names
}

#[test]
fn issue11_a_rule_of_gantry_toml_fails_the_scan_and_redacts_output() {
    let env = Env::new();
    gantry_toml(&env, ACME_RULE);
    let server = env.serve(&[]);
    let job = env.job(
        "acme",
        "fix_rounds: 0\n",
        "printf \"token %s%s\\n\" acme_k3v9q2xw7m4p8r1t z6b0n5c2h8j4f7d1 | tee token.txt",
    );
    let id = submit(&server, &[&job]).remove(0);
    let j = server.wait_state(&id, "failed", LONG);
    assert_eq!(j["runs"][0]["outcome"], "gates_failed", "{j:#}");
    let events = server.cli(&["events", &id, "--json"]);
    events.ok();
    let found: Vec<serde_json::Value> = events
        .json()
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "secret.found")
        .cloned()
        .collect();
    assert_eq!(found.len(), 1, "{events}");
    assert_eq!(found[0]["data"]["rule"], "acme-token", "{events}");
    assert_eq!(found[0]["data"]["file"], "token.txt", "{events}");
    let logs = server.cli(&["logs", &id]);
    assert!(
        logs.stdout.contains("token [REDACTED:acme-token]"),
        "{logs}"
    );
    let diff = server.cli(&["diff", &id]);
    assert!(
        diff.stdout.contains("+token [REDACTED:acme-token]"),
        "{diff}"
    );
    let token = [acme_token()];
    assert_clean("gantry events", &events.stdout, &token);
    let data = server.data_dir.clone();
    server.stop();
    let (leaks, _) = leaking_files(&data.join("artifacts"), &token);
    assert!(leaks.is_empty(), "{leaks:#?}");
}

#[test]
fn issue11_a_wrong_secrets_key_in_gantry_toml_stops_serve_and_factory_naming_it() {
    let env = Env::new();
    gantry_toml(&env, "[secrets]\nrulez = []\n");
    let mut serve = crate::harness::gantry();
    serve
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(env.data());
    let out = crate::harness::run_with_timeout(serve, LONG);
    assert_ne!(out.code, Some(0), "{out}");
    let config = env.data().join("gantry.toml");
    assert!(
        out.stderr.contains(&config.display().to_string()) && out.stderr.contains("rulez"),
        "{out}"
    );

    let bad = env.tmp.path().join("factory.toml");
    std::fs::write(&bad, format!("{ACME_RULE}regex2 = 'x'\n")).expect("write");
    let out = crate::harness::factory_with_config(&env.tmp.path().join("factory-data"), &bad, LONG);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains(&bad.display().to_string())
            && out.stderr.contains("secrets.rule[0]")
            && out.stderr.contains("regex2"),
        "{out}"
    );
}
