//! Running the real `gantry` binary: a `serve` child on a free port with a temp data
//! dir, CLI invocations with a hang guard, temp git repos and job files.

mod api;
mod factory;
mod pg;

pub use api::*;
pub use factory::*;
pub use pg::*;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_gantry");

/// Generous hang guard of a single CLI call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished process left.
#[derive(Debug)]
pub struct Out {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    /// Panics with everything when the exit code is not `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit code\n{self}");
        self
    }

    /// Panics unless the process exited 0.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.expect_code(0)
    }

    /// Stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A `gantry` command with no GANTRY_* or RUST_LOG from the environment.
pub fn gantry() -> Command {
    let mut c = Command::new(BIN);
    for var in [
        "GANTRY_URL",
        "GANTRY_TOKEN",
        "GANTRY_DATA_DIR",
        "GANTRY_CA_FILE",
        "GANTRY_TLS_CERT",
        "GANTRY_TLS_KEY",
        "RUST_LOG",
        "NO_COLOR",
    ] {
        c.env_remove(var);
    }
    c.stdin(Stdio::null());
    c
}

/// Runs `cmd` to the end, killing it and failing the test after `timeout`.
#[track_caller]
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> Out {
    run_telling_first_line(cmd, timeout, None)
}

/// [`run_with_timeout`], also sending on `first_line` once the command has printed its
/// first whole line of standard output, so a test can wait for a streaming command to
/// be under way.
pub fn run_telling_first_line(
    mut cmd: Command,
    timeout: Duration,
    first_line: Option<std::sync::mpsc::Sender<()>>,
) -> Out {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn gantry");
    let so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let mut so = BufReader::new(so);
        let mut first_line = first_line;
        while so.read_line(&mut s).is_ok_and(|n| n > 0) {
            if let Some(tx) = first_line.take() {
                let _ = tx.send(());
            }
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for gantry") {
            break Some(st);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Out {
        code: status.and_then(|s| s.code()),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    };
    assert!(
        status.is_some(),
        "gantry {:?} hung for {timeout:?} and was killed\n{out}",
        cmd.get_args().collect::<Vec<_>>()
    );
    out
}

/// Runs `gantry args...` with the default timeout.
#[track_caller]
pub fn run(args: &[&str]) -> Out {
    let mut c = gantry();
    c.args(args);
    run_with_timeout(c, CALL_TIMEOUT)
}

pub use gantry_testkit::wait_for;

/// `--sandbox-rw <the data dir's parent>`: runs stay sandboxed (their data dir hidden)
/// but may use the test's directory, where tests keep go-files and markers.
pub fn sandbox_rw(data_dir: &Path) -> Vec<std::ffi::OsString> {
    match data_dir.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            vec!["--sandbox-rw".into(), dir.as_os_str().to_os_string()]
        }
        _ => Vec::new(),
    }
}

/// A `gantry serve` child process.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`, or `https://...` when it serves TLS.
    pub url: String,
    /// The CA file [`Server::cli`] passes with `--ca-file`, when set.
    pub ca_file: Option<PathBuf>,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
    /// What it printed on stdout so far.
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `gantry serve --listen 127.0.0.1:0 --data-dir <data_dir> extra...` and
    /// waits for it to say where it listens.
    #[track_caller]
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[])
    }

    /// [`Server::start`] with `vars` set in the server's environment (what an engine's
    /// `env` list passes through to agents).
    #[track_caller]
    pub fn start_with_env(data_dir: &Path, extra: &[&str], vars: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(data_dir).expect("create data dir");
        let log = data_dir.with_extension(format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let log_file = std::fs::File::create(&log).expect("create serve log");
        let mut c = gantry();
        c.args(["-v", "serve", "--data-dir"]).arg(data_dir);
        if !extra.contains(&"--listen") {
            c.args(["--listen", "127.0.0.1:0"]);
        }
        c.args(sandbox_rw(data_dir));
        c.args(extra).stdout(Stdio::piped()).stderr(log_file);
        c.envs(vars.iter().copied());
        let mut child = c.spawn().expect("spawn gantry serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = lines.clone();
        // Keeps reading stdout for the server's whole life so it never blocks on a
        // full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        break rest
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "gantry serve did not say where it listens\n--- log ---\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        assert!(
            url.starts_with("http://127.0.0.1:") || url.starts_with("https://127.0.0.1:"),
            "odd listen line: {url}"
        );
        Server {
            child: Some(child),
            url,
            ca_file: None,
            data_dir: data_dir.to_path_buf(),
            log,
            stdout: lines,
        }
    }

    /// What the server printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// `gantry --url <url> --data-dir <data> [--ca-file <ca_file>] args...`.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> Out {
        self.cli_timeout(args, CALL_TIMEOUT)
    }

    /// [`Server::cli`] with its own hang guard.
    #[track_caller]
    pub fn cli_timeout(&self, args: &[&str], timeout: Duration) -> Out {
        let mut c = gantry();
        c.arg("--url")
            .arg(&self.url)
            .arg("--data-dir")
            .arg(&self.data_dir);
        if let Some(ca) = &self.ca_file {
            c.arg("--ca-file").arg(ca);
        }
        c.args(args);
        run_with_timeout(c, timeout)
    }

    /// `show ID --json`.
    #[track_caller]
    pub fn job(&self, id: &str) -> serde_json::Value {
        let out = self.cli(&["show", id, "--json"]);
        out.ok();
        out.json()
    }

    /// Waits until job `id` is in `state`; returns its JSON.
    #[track_caller]
    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let last = self.job(id);
            if last["state"] == state {
                return last;
            }
            if start.elapsed() > timeout {
                panic!(
                    "job {id} not {state} after {timeout:?}; last seen:\n{last:#}\n--- server log ---\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs the server (no cleanup at all).
    pub fn sigkill(mut self) {
        if let Some(mut c) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .expect("SIGKILL gantry serve");
            let _ = c.wait();
        }
    }

    /// SIGTERMs the server and waits for it to exit; returns its exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.terminate()
    }

    fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
        if std::thread::panicking() {
            note(&format!(
                "--- end of the log of gantry serve {} ---\n{}",
                self.url,
                log_tail(&self.log_text(), 80)
            ));
        }
    }
}

/// Writes `text` to the test's output, which the test runner captures and shows when
/// the test fails (or with `--nocapture`): the logs of the processes a failed test
/// started, and figures worth knowing about a passing one.
#[allow(clippy::print_stderr)]
pub fn note(text: &str) {
    eprintln!("{text}");
}

/// The last `lines` lines of `text`.
pub fn log_tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub use gantry_testkit::git;

/// A git repo at `dir` with one commit on `main`.
pub fn make_repo(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create repo dir");
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("README.md"), "# test repo\n").expect("write README");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "init"]);
}

/// A temp dir with a repo at `repo/` and a data dir path `data/`.
pub struct Env {
    /// The temp dir.
    pub tmp: tempfile::TempDir,
}

impl Env {
    /// A fresh one.
    pub fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("gantry-cli-it-")
            .tempdir()
            .expect("temp dir");
        make_repo(&tmp.path().join("repo"));
        Env { tmp }
    }

    /// The repo.
    pub fn repo(&self) -> PathBuf {
        self.tmp.path().join("repo")
    }

    /// The data dir.
    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// Starts a server on this env's data dir.
    pub fn serve(&self, extra: &[&str]) -> Server {
        Server::start(&self.data(), extra)
    }

    /// Writes a command job file `name.md` running `sh -c script` in the repo, with
    /// extra front matter lines; returns its path.
    pub fn job(&self, name: &str, extra: &str, script: &str) -> PathBuf {
        let path = self.tmp.path().join(format!("{name}.md"));
        let text = format!(
            "---\ntitle: {name}\nrepo: {}\nengine: command\ncommand: [sh, -c, '{}']\n{extra}---\nTest job {name}.\n",
            self.repo().display(),
            script.replace('\'', "''"),
        );
        std::fs::write(&path, text).expect("write job file");
        path
    }
}

/// Submits files and returns their ids.
#[track_caller]
pub fn submit(server: &Server, files: &[&Path]) -> Vec<String> {
    let mut args = vec!["submit".to_string()];
    args.extend(files.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = server.cli(&args);
    out.ok();
    out.stdout
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Sends `sig` to process `pid` (or to the group `-pid`); errors (already gone) are
/// ignored.
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Runs `gantry factory --config <config>` with its data in `data` against a server
/// that is not there: for a configuration the factory must refuse before it connects.
pub fn factory_with_config(data: &Path, config: &Path, timeout: Duration) -> Out {
    let mut factory = gantry();
    factory
        .args([
            "--url",
            "http://127.0.0.1:9",
            "--token",
            "gtk_unused",
            "--data-dir",
        ])
        .arg(data)
        .args(["factory", "--config"])
        .arg(config);
    run_with_timeout(factory, timeout)
}

/// Creates a token named `name` of `scope` through `server`'s CLI; returns its secret.
#[track_caller]
pub fn create_token(server: &Server, name: &str, scope: &str) -> String {
    let created = server.cli(&["token", "create", "--name", name, "--scope", scope]);
    created.ok();
    created
        .stdout
        .lines()
        .find(|l| l.trim().starts_with("gtk_"))
        .unwrap_or_else(|| panic!("no token secret in the output\n{created}"))
        .trim()
        .to_string()
}

impl Server {
    /// `127.0.0.1:<port>`: what `--listen` takes to start a server on the same address.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// The admin token the server wrote to its data dir.
    #[track_caller]
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("read admin.token")
            .trim()
            .to_string()
    }
}
