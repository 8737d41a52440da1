//! Transport over TLS (issue 12), with certificates made at test time: `gantry serve
//! --tls-cert/--tls-key` serves HTTPS; the CLI with `--ca-file` (or `GANTRY_CA_FILE`)
//! submits and reads jobs over it, the embedded factory runs them, and so does a
//! remote `gantry factory` over https; without the CA both refuse the certificate at
//! once with an error naming the URL.

use crate::harness::{CALL_TIMEOUT, Env, FactoryProc, Server, gantry, run, run_with_timeout};
use gantry_testkit::tls::TestCa;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A CA, a server certificate of it for `localhost` and `127.0.0.1`, and the CA's
/// certificate as a file, all under `dir`.
struct Pki {
    cert: PathBuf,
    key: PathBuf,
    ca_file: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let ca = TestCa::new("Gantry CLI test CA");
    let files = ca.server_cert(dir, "server", &["localhost", "127.0.0.1"]);
    Pki {
        cert: files.cert,
        key: files.key,
        ca_file: ca.write_pem(dir, "ca.pem"),
    }
}

/// `gantry serve` over TLS with `extra` options.
fn serve_tls(env: &Env, pki: &Pki, extra: &[&str]) -> Server {
    let cert = pki.cert.display().to_string();
    let key = pki.key.display().to_string();
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    let server = env.serve(&args);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    server
}

#[test]
fn issue12_the_cli_submits_and_reads_over_https_and_the_embedded_factory_runs_the_job() {
    let env = Env::new();
    let pki = pki(env.tmp.path());
    let mut server = serve_tls(&env, &pki, &[]);

    // Without the CA: a clear refusal of the certificate, naming the URL, at once.
    let started = Instant::now();
    let out = server.cli(&["status"]);
    out.expect_code(1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the refusal took {:?}",
        started.elapsed()
    );
    assert!(
        out.stderr.contains("not trusted") && out.stderr.contains(&server.url),
        "{out}"
    );
    assert!(
        out.stderr.contains("--ca-file"),
        "a hint names --ca-file\n{out}"
    );

    // With it: submit, then read the job back, over https.
    server.ca_file = Some(pki.ca_file.clone());
    let job = env.job("over-tls", "", "echo tls > tls.txt");
    let out = server.cli(&["submit", &job.display().to_string()]);
    out.ok();
    let id = out.stdout.trim().to_string();
    let done = server.wait_state(&id, "succeeded", Duration::from_secs(60));
    assert_eq!(done["runs"][0]["files_changed"], 1, "{done:#}");
    let diff = server.cli(&["diff", &id]);
    diff.ok();
    assert!(diff.stdout.contains("+tls"), "{diff}");

    // GANTRY_CA_FILE does what --ca-file does, and the event stream (SSE) works too.
    let mut c = gantry();
    c.args(["--url", &server.url, "--data-dir"])
        .arg(&server.data_dir)
        .env("GANTRY_CA_FILE", &pki.ca_file)
        .args(["events", &id, "--follow", "--json"]);
    let out = run_with_timeout(c, CALL_TIMEOUT);
    out.ok();
    assert!(out.stdout.contains(r#""to":"succeeded""#), "{out}");
}

#[test]
fn issue12_a_remote_factory_runs_a_job_over_https() {
    let env = Env::new();
    let pki = pki(env.tmp.path());
    let mut server = serve_tls(&env, &pki, &["--no-factory"]);
    server.ca_file = Some(pki.ca_file.clone());
    let token = crate::harness::create_token(&server, "tls-worker", "factory");

    // Without the CA the factory stops at registration, saying why, instead of
    // retrying forever.
    let mut c = gantry();
    c.args([
        "factory",
        "--url",
        &server.url,
        "--token",
        &token,
        "--data-dir",
    ])
    .arg(env.tmp.path().join("untrusting"))
    .args(["--name", "untrusting", "--allow-unsandboxed-jobs"]);
    let out = run_with_timeout(c, CALL_TIMEOUT);
    out.expect_code(1);
    assert!(
        out.stderr.contains("does not trust") && out.stderr.contains(&server.url),
        "{out}"
    );
    assert!(
        out.stderr.contains("--ca-file"),
        "a hint names --ca-file\n{out}"
    );

    let ca = pki.ca_file.display().to_string();
    let factory = FactoryProc::start(
        &server.url,
        &token,
        "tls-worker",
        1,
        &env.tmp.path().join("factory-data"),
        &["--ca-file", &ca],
    );
    let job = env.job("remote-tls", "", "echo remote > remote.txt");
    let out = server.cli(&["submit", &job.display().to_string()]);
    out.ok();
    let id = out.stdout.trim().to_string();
    let done = server.wait_state(&id, "succeeded", Duration::from_secs(90));
    assert_eq!(done["runs"][0]["files_changed"], 1, "{done:#}");
    let factories = server.cli(&["factories", "--json"]).json();
    assert!(
        factories
            .as_array()
            .expect("a list")
            .iter()
            .any(|f| f["name"] == factory.name.as_str()),
        "{factories:#}"
    );
}

#[test]
fn issue12_tls_options_that_cannot_work_are_refused_naming_the_file() {
    let env = Env::new();
    let pki = pki(env.tmp.path());
    let cert = pki.cert.display().to_string();

    // One of the pair alone is a usage error.
    let out = run(&["serve", "--listen", "127.0.0.1:0", "--tls-cert", &cert]);
    out.expect_code(2);
    assert!(out.stderr.contains("--tls-key"), "{out}");

    // A key file without a key stops the start, naming the file.
    let data = env.data().display().to_string();
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--tls-cert",
        &cert,
        "--tls-key",
        &cert,
    ]);
    out.expect_code(1);
    assert!(
        out.stderr.contains(&cert) && out.stderr.contains("key"),
        "{out}"
    );

    // A CA file that is not one is a usage error naming it.
    let missing = env.tmp.path().join("no-such-ca.pem").display().to_string();
    let out = run(&[
        "--url",
        "https://127.0.0.1:1",
        "--token",
        "gtk_unused",
        "--ca-file",
        &missing,
        "status",
    ]);
    out.expect_code(2);
    assert!(out.stderr.contains(&missing), "{out}");
}
