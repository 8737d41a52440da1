//! PostgreSQL for the tests: the server binaries, databases and clusters of their own.

use super::*;

/// The directory of the newest installed PostgreSQL's binaries (initdb, pg_ctl, psql).
#[track_caller]
pub fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, d)| d).expect(
        "PostgreSQL binaries under /usr/lib/postgresql/*/bin (./scripts/test installs them)",
    )
}

/// The server named by `GANTRY_TEST_PG_URL` (panics when it is unset: PostgreSQL tests
/// are never skipped), as the store's tests read it.
pub use gantry_store::testing::pg_server_url;

/// Runs `psql` against `url` with one SQL command; returns its unaligned output.
#[track_caller]
pub fn psql(url: &str, sql: &str) -> String {
    let mut c = Command::new(pg_bin_dir().join("psql"));
    c.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
        "-c",
        sql,
    ]);
    let out = run_with_timeout(c, CALL_TIMEOUT);
    assert_eq!(out.code, Some(0), "psql {sql:?} on {url} failed\n{out}");
    out.stdout
}

/// A database of its own on the `GANTRY_TEST_PG_URL` server, dropped (with any
/// connection left) when this is dropped.
pub struct PgDatabase {
    /// Its URL, for `gantry serve --db`.
    pub url: String,
    name: String,
    server: String,
}

impl PgDatabase {
    /// Creates a new, empty database with a unique name.
    #[track_caller]
    pub fn create(test: &str) -> PgDatabase {
        let server = pg_server_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "gantry_chaos_{test}_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000_000
        );
        psql(&server, &format!("CREATE DATABASE {name}"));
        PgDatabase {
            url: gantry_store::testing::url_of_database(&server, &name),
            name,
            server,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let mut c = Command::new(pg_bin_dir().join("psql"));
        c.args(["-X", "-q", "-d", &self.server, "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Best effort: a leftover database costs disk in a throwaway cluster only.
        let _ = c.status();
    }
}

/// Whether the tests run as root (`/proc/self` belongs to the effective user).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A throwaway PostgreSQL cluster of one test: its own data dir, port and socket dir,
/// trust auth on 127.0.0.1 only, fsync off (see [`PgCluster::options`]), run as
/// user `postgres` when the tests run as root (initdb refuses root). Dropping it stops
/// it at once and removes it.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PgCluster {
    /// Creates and starts a cluster.
    #[track_caller]
    pub fn start() -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("gantry-chaos-pg-")
            .tempdir()
            .expect("temp dir");
        if running_as_root() {
            let st = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(st.success(), "chown postgres: {}", dir.path().display());
        }
        let cluster = PgCluster {
            dir,
            bin: pg_bin_dir(),
            port: free_port(),
        };
        let data = cluster.data();
        let log = cluster.dir.path().join("initdb.log");
        let out = cluster.pg(&[
            "initdb",
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
        ]);
        assert_eq!(
            out.code,
            Some(0),
            "initdb failed ({})\n{out}",
            log.display()
        );
        cluster.start_server();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs a PostgreSQL program of the cluster's version, as `postgres` when root.
    #[track_caller]
    fn pg(&self, args: &[&str]) -> Out {
        let program = self.bin.join(args[0]).display().to_string();
        let mut c = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &program]);
            c
        } else {
            Command::new(&program)
        };
        c.args(&args[1..]).current_dir(self.dir.path());
        run_with_timeout(c, Duration::from_secs(120))
    }

    /// The server's options: those of `./scripts/test`, except that commits are
    /// synchronous. `fsync=off` loses nothing when only the server process dies (the
    /// kernel keeps what it wrote), but `synchronous_commit=off` answers a commit
    /// before its WAL is written, so a crash (`stop -m immediate`) forgets the last
    /// committed transactions: a claim the factory already acted on would vanish. No
    /// deployment runs that way, and a scenario that crashes the server must not either.
    fn options(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c max_connections=200",
            self.port,
            self.dir.path().display()
        )
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    #[track_caller]
    pub fn start_server(&self) {
        let log = self.dir.path().join("server.log").display().to_string();
        let out = self.pg(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-l",
            &log,
            "-w",
            "-t",
            "60",
            "-o",
            &self.options(),
            "start",
        ]);
        assert_eq!(
            out.code,
            Some(0),
            "PostgreSQL did not start on port {}\n{out}\n--- server log ---\n{}",
            self.port,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `pg_ctl restart -m fast`: every session is ended, the server comes back.
    #[track_caller]
    pub fn restart_fast(&self) {
        let log = self.dir.path().join("server.log").display().to_string();
        let out = self.pg(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-l",
            &log,
            "-w",
            "-t",
            "60",
            "-m",
            "fast",
            "-o",
            &self.options(),
            "restart",
        ]);
        assert_eq!(out.code, Some(0), "pg_ctl restart -m fast failed\n{out}");
    }

    /// `pg_ctl stop -m immediate`: a crash, as far as the clients can tell.
    #[track_caller]
    pub fn stop_immediate(&self) {
        let out = self.pg(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-w",
            "-m",
            "immediate",
            "stop",
        ]);
        assert_eq!(out.code, Some(0), "pg_ctl stop -m immediate failed\n{out}");
    }

    /// The URL of database `postgres` on this cluster.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            note(&format!(
                "--- end of the log of PostgreSQL on port {} ---\n{}",
                self.port,
                log_tail(&self.log_text(), 40)
            ));
        }
        if self.dir.path().join("data/postmaster.pid").exists() {
            let _ = self.pg(&[
                "pg_ctl",
                "-D",
                &self.data(),
                "-w",
                "-m",
                "immediate",
                "stop",
            ]);
        }
    }
}
