//! TLS to PostgreSQL as the URL's `sslmode` says (issue 12), against a throwaway
//! cluster of this test's own that serves TLS with a certificate made at test time (the
//! shared test server speaks plain TCP only, which the `require` refusal needs).
//!
//! The cluster is made with the PostgreSQL binaries `./scripts/test` uses
//! (`/usr/lib/postgresql/*/bin`), run as the user `postgres` when the test runs as root.

use crate::pg_server_url;
use gantry_store::testing::{connect, url_of_database};
use gantry_store::{PgOptions, PgStore, Store};
use gantry_testkit::tls::TestCa;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The newest PostgreSQL's binary directory.
fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql (./scripts/test installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().expect("initdb under /usr/lib/postgresql/*/bin")
}

/// Whether this process runs as root (then the cluster runs as `postgres`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL program as the cluster's owner; panics with its output on failure.
#[track_caller]
fn as_pg(program: &Path, args: &[&str]) {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd.args(args).output().expect("run a PostgreSQL program");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL cluster serving TLS on 127.0.0.1, stopped when dropped.
struct TlsCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl TlsCluster {
    /// Starts one whose certificate, signed by `ca`, names `localhost` only.
    fn start(ca: &TestCa) -> TlsCluster {
        let dir = tempfile::Builder::new()
            .prefix("gantry-pg-tls-")
            .tempdir()
            .expect("tempdir");
        let files = ca.server_cert(dir.path(), "server", &["localhost"]);
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "chown the cluster's directory to postgres"
            );
        }
        // PostgreSQL refuses a key others may read.
        as_pg(
            Path::new("/bin/chmod"),
            &["0600", &files.key.display().to_string()],
        );
        let bin = pg_bin();
        let data = dir.path().join("data").display().to_string();
        as_pg(
            &bin.join("initdb"),
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        // A free port: taken from the kernel, then freed for the server. Another
        // process could take it in between, so starting is tried a few times.
        let log = dir.path().join("server.log").display().to_string();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on \
                 -c ssl_cert_file={} -c ssl_key_file={}",
                dir.path().display(),
                files.cert.display(),
                files.key.display()
            );
            let started = std::panic::catch_unwind(|| {
                as_pg(
                    &bin.join("pg_ctl"),
                    &[
                        "-D", &data, "-l", &log, "-w", "-t", "60", "start", "-o", &opts,
                    ],
                )
            });
            if started.is_ok() {
                return TlsCluster { dir, bin, port };
            }
        }
        panic!(
            "the TLS cluster did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Its `postgres` database at `host`, with `query` (e.g. `sslmode=require`).
    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data").display().to_string();
        // Best effort: a cluster left behind only holds a temporary directory.
        let _ = std::panic::catch_unwind(|| {
            as_pg(
                &self.bin.join("pg_ctl"),
                &["-D", &data, "-m", "immediate", "-w", "stop"],
            )
        });
    }
}

/// Whether the connection made for `url` (as the store makes its own) uses TLS.
async fn uses_tls(url: &str) -> bool {
    let client = connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn issue12_postgres_connections_follow_sslmode() {
    let ca = TestCa::new("Gantry PostgreSQL test CA");
    let cluster = TlsCluster::start(&ca);
    let root = ca.write_pem(cluster.dir.path(), "root.crt");
    let rootcert = format!("sslrootcert={}", root.display());

    // verify-full: the store connects, migrates and works, and every connection it
    // holds (pool, batch lanes, listener) is encrypted.
    let full = cluster.url("localhost", &format!("sslmode=verify-full&{rootcert}"));
    let store = PgStore::connect(&full, PgOptions::default())
        .await
        .unwrap_or_else(|e| panic!("verify-full: {e}"));
    store.status().await.expect("the store answers over TLS");
    let watcher = connect(&cluster.url("localhost", "sslmode=disable"))
        .await
        .expect("a plain connection");
    let row = watcher
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name LIKE 'gantry%'",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let (encrypted, plain): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        encrypted >= 1 && plain == 0,
        "{encrypted} over TLS, {plain} not"
    );
    drop(store);

    // The modes that encrypt without checking, the default among them, and disable.
    for (query, tls) in [
        ("sslmode=require", true),
        ("sslmode=prefer", true),
        ("connect_timeout=10", true),
        ("sslmode=disable", false),
    ] {
        assert_eq!(
            uses_tls(&cluster.url("127.0.0.1", query)).await,
            tls,
            "{query}"
        );
    }
    // verify-ca checks the chain only: 127.0.0.1 is not a name of the certificate.
    let ca_only = cluster.url("127.0.0.1", &format!("sslmode=verify-ca&{rootcert}"));
    assert!(uses_tls(&ca_only).await, "verify-ca");

    // verify-full refuses a certificate for another name, and one of another CA; so
    // does require once a root certificate is named.
    let other = TestCa::new("Another CA").write_pem(cluster.dir.path(), "other.crt");
    let other = format!("sslrootcert={}", other.display());
    for url in [
        cluster.url("127.0.0.1", &format!("sslmode=verify-full&{rootcert}")),
        cluster.url("localhost", &format!("sslmode=verify-full&{other}")),
        cluster.url("localhost", &format!("sslmode=require&{other}")),
    ] {
        let err = PgStore::connect(&url, PgOptions::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} was accepted"))
            .to_string();
        assert!(err.contains("certificate"), "{url}: {err}");
    }
}

#[tokio::test]
async fn issue12_require_against_a_server_without_tls_fails_clearly() {
    // The shared test server speaks plain TCP only.
    let server = pg_server_url();
    let url = url_of_database(&server, "postgres");
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}sslmode=require");
    let err = PgStore::connect(&url, PgOptions::default())
        .await
        .err()
        .unwrap_or_else(|| panic!("{url} was accepted"))
        .to_string();
    assert!(
        err.contains("cannot connect") && err.contains("TLS"),
        "{url}: {err}"
    );
}
