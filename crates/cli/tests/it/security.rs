//! The security probe of issue 15, replayed through the real binaries: a submitter's
//! job must not become admin, and the data dir is private to the server's user.

use crate::harness::{Env, create_token, run};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

/// `gantry --url <server> --token <token> args...`.
fn as_token(url: &str, token: &str, args: &[&str]) -> crate::harness::Out {
    let mut a = vec!["--url", url, "--token", token];
    a.extend_from_slice(args);
    run(&a)
}

#[test]
fn issue15_a_submitters_job_cannot_steal_the_admin_token_or_write_the_database() {
    let env = Env::new();
    let server = env.serve(&[]);
    let submitter = create_token(&server, "ci", "submitter");
    let admin = std::fs::read_to_string(server.data_dir.join("admin.token"))
        .expect("admin token")
        .trim()
        .to_string();
    let steal = env.job(
        "steal",
        "",
        r#"ls -a "$GANTRY_WORKSPACE/../.."; cat "$GANTRY_WORKSPACE/../../admin.token"; printf PWNED >> "$GANTRY_WORKSPACE/../../gantry.db"; echo end-of-probe"#,
    );
    let out = as_token(
        &server.url,
        &submitter,
        &["submit", steal.to_str().expect("utf8")],
    );
    out.ok();
    let id = out.stdout.trim().to_string();
    let job = server.wait_state(&id, "succeeded", Duration::from_secs(60));
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let logs = as_token(&server.url, &submitter, &["logs", &id]);
    logs.ok();
    assert!(logs.stdout.contains("end-of-probe"), "the job ran: {logs}");
    assert!(
        !logs.stdout.contains(&admin),
        "the job read the admin token: {logs}"
    );
    assert!(
        !logs.stdout.contains("gantry.db"),
        "the job listed the data dir: {logs}"
    );
    let db = std::fs::read(server.data_dir.join("gantry.db")).expect("db");
    assert!(!db.ends_with(b"PWNED"), "the job wrote the database");
    // The stolen token would have made an admin; the submitter's own cannot.
    let out = as_token(
        &server.url,
        &submitter,
        &["token", "create", "--name", "x", "--scope", "admin"],
    );
    out.expect_code(1);
    server.cli(&["ls"]).ok();
}

/// Every entry under `dir` whose mode lets its group or others in, but for files
/// hard-linked from elsewhere: a local source's objects, which the cache shares with
/// the source repository (`git clone --local`), keep the source's modes, and nobody
/// reaches them through the data dir anyway.
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.file_type().is_symlink() || (meta.is_file() && meta.nlink() > 1) {
            continue;
        }
        if meta.permissions().mode() & 0o077 != 0 {
            found.push(format!(
                "{:o} {}",
                meta.permissions().mode() & 0o777,
                path.display()
            ));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                stack.push(entry.expect("entry").path());
            }
        }
    }
    found
}

#[test]
fn issue15_the_data_dir_and_everything_in_it_are_private() {
    let env = Env::new();
    // The harness makes the data dir with the default umask (0755), as an operator's
    // `mkdir` would: the server must close it.
    std::fs::create_dir_all(env.data()).expect("mkdir");
    std::fs::set_permissions(env.data(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let server = env.serve(&[]);
    let job = env.job(
        "edit",
        "env: { SECRET_VALUE: hunter2 }\n",
        "echo hi > hi.txt; echo done",
    );
    let id = crate::harness::submit(&server, &[&job]).remove(0);
    server.wait_state(&id, "succeeded", Duration::from_secs(60));
    let mode = std::fs::metadata(env.data())
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "data dir mode {mode:o}");
    let open = open_to_others(&env.data());
    assert!(open.is_empty(), "readable by others:\n{}", open.join("\n"));
    server.stop();
}

#[test]
fn issue15_without_a_working_sandbox_only_admin_jobs_run_unless_opted_out() {
    let env = Env::new();
    let missing = env.tmp.path().join("no-bwrap-here");
    let missing = missing.to_str().expect("utf8");
    let server = env.serve(&["--bwrap", missing]);
    let submitter = create_token(&server, "ci", "submitter");
    let job = env.job("plain", "", "echo ran");
    let out = as_token(
        &server.url,
        &submitter,
        &["submit", job.to_str().expect("utf8")],
    );
    out.expect_code(1);
    assert!(out.stderr.contains("cannot sandbox"), "{out}");
    assert!(out.stderr.contains("bubblewrap"), "{out}");
    assert!(out.stderr.contains("--allow-unsandboxed-jobs"), "{out}");
    // An admin may already read everything: its job runs.
    let id = crate::harness::submit(&server, &[&job]).remove(0);
    server.wait_state(&id, "succeeded", Duration::from_secs(60));
    server.stop();

    // The loud opt-out lets the submitter's job in, and says so in the log.
    let server = env.serve(&["--bwrap", missing, "--allow-unsandboxed-jobs"]);
    let out = as_token(
        &server.url,
        &submitter,
        &["submit", job.to_str().expect("utf8")],
    );
    out.ok();
    let id = out.stdout.trim().to_string();
    server.wait_state(&id, "succeeded", Duration::from_secs(60));
    assert!(
        server.log_text().contains("UNSANDBOXED"),
        "{}",
        server.log_text()
    );
    server.stop();
}

#[test]
fn issue15_a_remote_factory_without_a_working_sandbox_refuses_to_start() {
    let env = Env::new();
    let server = env.serve(&["--no-factory"]);
    let token = create_token(&server, "f1", "factory");
    let missing = env.tmp.path().join("no-bwrap-here");
    let out = run(&[
        "--url",
        &server.url,
        "--token",
        &token,
        "--data-dir",
        env.tmp.path().join("fdata").to_str().expect("utf8"),
        "factory",
        "--bwrap",
        missing.to_str().expect("utf8"),
    ]);
    out.expect_code(1);
    assert!(out.stderr.contains("cannot sandbox jobs"), "{out}");
    assert!(out.stderr.contains("bubblewrap"), "{out}");
    server.stop();
}
