//! token create / ls / revoke, and what scoped and revoked tokens may do.

use crate::harness::{Env, run};

#[test]
fn create_list_use_and_revoke_tokens() {
    let env = Env::new();
    let server = env.serve(&["--no-factory"]);
    let out = server.cli(&[
        "token",
        "create",
        "--name",
        "reader-bot",
        "--scope",
        "reader",
    ]);
    out.ok();
    let secret = out.stdout.trim().to_string();
    assert!(
        !secret.is_empty() && !secret.contains(char::is_whitespace),
        "{out}"
    );
    assert!(out.stderr.contains("only this once"), "{out}");

    let ls = server.cli(&["token", "ls", "--json"]);
    ls.ok();
    let list = ls.json();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "reader-bot")
        .unwrap_or_else(|| panic!("token listed: {list:#}"))
        .clone();
    assert_eq!(entry["scope"], "reader");
    assert!(entry["revoked_at"].is_null());
    assert!(!ls.stdout.contains(&secret), "the secret is never listed");
    let ls = server.cli(&["token", "ls"]);
    assert!(
        ls.stdout.contains("reader-bot") && ls.stdout.contains("SCOPE"),
        "{ls}"
    );

    // The reader token can read but not submit.
    let with = |args: &[&str]| {
        let mut a = vec!["--url", server.url.as_str(), "--token", secret.as_str()];
        a.extend_from_slice(args);
        run(&a)
    };
    with(&["ls"]).ok();
    let job = env.job("x", "", "true");
    let out = with(&["submit", job.to_str().unwrap()]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("Error:"), "{out}");
    assert!(
        out.stderr.to_lowercase().contains("scope") || out.stderr.contains("forbidden"),
        "{out}"
    );

    let out = server.cli(&["token", "revoke", "reader-bot"]);
    out.ok();
    assert!(out.stdout.contains("revoked token `reader-bot`"), "{out}");
    let out = with(&["ls"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("Hint:"),
        "a refused token gets a hint\n{out}"
    );
    let ls = server.cli(&["token", "ls", "--json"]).json();
    let entry = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "reader-bot")
        .unwrap()
        .clone();
    assert!(entry["revoked_at"].is_string(), "{entry:#}");

    // Revoking a token that does not exist names it.
    let out = server.cli(&["token", "revoke", "ghost"]);
    out.expect_code(1);
    assert!(out.stderr.contains("ghost"), "{out}");

    // A JSON create shows the record and the secret.
    let out = server.cli(&[
        "token",
        "create",
        "--name",
        "ci",
        "--scope",
        "submitter",
        "--json",
    ]);
    out.ok();
    let created = out.json();
    assert_eq!(created["info"]["name"], "ci");
    assert_eq!(created["info"]["scope"], "submitter");
    assert!(created["token"].as_str().is_some_and(|t| !t.is_empty()));

    // A wrong token is refused with exit code 1.
    let out = run(&["--url", &server.url, "--token", "not-a-token", "status"]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("Error:"), "{out}");
}
