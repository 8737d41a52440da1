//! Running the real `gantry` binary: a `serve` child on a free port with a temp data
//! dir, CLI invocations with a hang guard, temp git repos and job files.

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
    /// `http://127.0.0.1:<port>`.
    pub url: String,
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
            url.starts_with("http://127.0.0.1:"),
            "odd listen line: {url}"
        );
        Server {
            child: Some(child),
            url,
            data_dir: data_dir.to_path_buf(),
            log,
            stdout: lines,
        }
    }

    /// What the server printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// `gantry --url <url> --data-dir <data> args...`.
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
            .arg(&self.data_dir)
            .args(args);
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

/// A `gantry factory` child process: a remote factory. Dropping it stops it (SIGCONT
/// first, in case it is stopped, then SIGTERM, then SIGKILL), so a failing test leaves
/// no factory behind.
pub struct FactoryProc {
    child: Option<Child>,
    /// The name it registers under.
    pub name: String,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl FactoryProc {
    /// Starts `gantry -v factory --url <url> --token <token> --name <name> --seats <seats>
    /// --data-dir <data_dir>` with admission thresholds off, plus `extra`.
    #[track_caller]
    pub fn start(
        url: &str,
        token: &str,
        name: &str,
        seats: u32,
        data_dir: &Path,
        extra: &[&str],
    ) -> FactoryProc {
        std::fs::create_dir_all(data_dir).expect("create factory data dir");
        let log = data_dir.with_extension(format!(
            "factory-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let log_file = std::fs::File::create(&log).expect("create factory log");
        let seats = seats.to_string();
        let mut c = gantry();
        c.args([
            "-v", "factory", "--url", url, "--token", token, "--name", name,
        ])
        .args([
            "--seats",
            &seats,
            "--min-free-memory",
            "0",
            "--min-free-disk",
            "0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(sandbox_rw(data_dir))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log_file);
        let child = c.spawn().expect("spawn gantry factory");
        FactoryProc {
            child: Some(child),
            name: name.to_string(),
            log,
        }
    }

    /// Its pid (while it was not killed through [`FactoryProc::sigkill`]).
    #[track_caller]
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("the factory runs").id() as i32
    }

    /// SIGKILLs the factory and reaps it. Its runs' processes, in sessions of their
    /// own, live on.
    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id() as i32, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// SIGSTOPs the factory (its runs' processes, in sessions of their own, go on).
    pub fn sigstop(&self) {
        signal(self.pid(), nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONTs the factory.
    pub fn sigcont(&self) {
        signal(self.pid(), nix::sys::signal::Signal::SIGCONT);
    }

    /// The factory's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its id as the server lists it (`gantry factories --json`), once registered.
    #[track_caller]
    pub fn id(&self, server: &Server) -> i64 {
        wait_for(
            &format!("factory {} to register", self.name),
            Duration::from_secs(60),
            || {
                let out = server.cli(&["factories", "--json"]);
                out.ok();
                out.json()
                    .as_array()?
                    .iter()
                    .find(|f| f["name"] == self.name.as_str())
                    .and_then(|f| f["id"].as_i64())
            },
        )
    }
}

impl Drop for FactoryProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            note(&format!(
                "--- end of the log of gantry factory {} ---\n{}",
                self.name,
                log_tail(&self.log_text(), 80)
            ));
        }
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = c.id() as i32;
        signal(pid, nix::sys::signal::Signal::SIGCONT);
        signal(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Whether process `pid` is alive: it exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold
        // spaces: read it after the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Kills, when dropped, every process whose environment holds `CHAOS_MARK=<mark>`:
/// the processes of every run of the jobs a test gave that variable (a SIGKILLed
/// factory leaves its runs' processes behind, in sessions of their own).
pub struct RunSweeper {
    /// The value of `CHAOS_MARK` in the test's jobs.
    pub mark: String,
}

impl RunSweeper {
    /// A sweeper with a mark unique to this process and moment.
    pub fn new(test: &str) -> RunSweeper {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        RunSweeper {
            mark: format!("{test}-{}-{nanos}", std::process::id()),
        }
    }

    /// The front matter line that gives a job the mark.
    pub fn env_line(&self) -> String {
        format!("env: {{CHAOS_MARK: {}}}\n", self.mark)
    }

    /// Pids of the live processes that carry the mark.
    pub fn marked(&self) -> Vec<i32> {
        let want = format!("CHAOS_MARK={}", self.mark);
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == want.as_bytes()))
            })
            .filter(|pid| process_alive(*pid))
            .collect()
    }
}

impl Drop for RunSweeper {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.marked();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // The group first (a run's shim leads it), then the process itself.
                if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    && let Some(pgid) = stat
                        .rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                        .and_then(|s| s.parse::<i32>().ok())
                    && pgid > 1
                {
                    signal(-pgid, nix::sys::signal::Signal::SIGKILL);
                }
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A small blocking HTTP client of one server's API, with a bearer token.
pub struct Api {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    token: String,
}

impl Api {
    /// A client of `base` with `token`.
    pub fn new(base: &str, token: &str) -> Api {
        Api {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime"),
            client: reqwest::Client::builder()
                .timeout(CALL_TIMEOUT)
                .build()
                .expect("an HTTP client"),
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        }
    }

    /// `GET path`: status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let resp = self
                .client
                .get(&url)
                .bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = resp.status().as_u16();
            let text = resp
                .text()
                .await
                .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
            Ok((status, text))
        })
    }

    /// `GET path`, which must answer 200 with JSON.
    #[track_caller]
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, text) = self.get(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "GET {path}: HTTP {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    /// `POST path` with a JSON body: status and body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<(u16, String), String> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let resp = self
                .client
                .post(&url)
                .bearer_auth(&self.token)
                .json(body)
                .send()
                .await
                .map_err(|e| format!("POST {url}: {e}"))?;
            let status = resp.status().as_u16();
            let text = resp
                .text()
                .await
                .map_err(|e| format!("POST {url}: reading the body: {e}"))?;
            Ok((status, text))
        })
    }

    /// Every event after `after`, in id order, read page by page.
    #[track_caller]
    pub fn all_events(&self, job: Option<&str>) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = Vec::new();
        let mut after = 0;
        loop {
            let path = match job {
                Some(j) => format!("/v1/events?job={j}&after={after}&limit=10000"),
                None => format!("/v1/events?after={after}&limit=10000"),
            };
            let page = self.get_json(&path);
            let page = page.as_array().expect("an array of events").clone();
            let Some(last) = page.last() else {
                return out;
            };
            after = last["id"].as_i64().expect("an event id");
            out.extend(page);
        }
    }

    /// Every job, newest first, read page by page with the `before` cursor.
    #[track_caller]
    pub fn all_jobs(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = Vec::new();
        loop {
            let path = match out.last() {
                Some(last) => format!("/v1/jobs?limit=1000&before={}", last["id"]),
                None => "/v1/jobs?limit=1000".to_string(),
            };
            let page = self.get_json(&path);
            let page = page.as_array().expect("an array of jobs").clone();
            let full = page.len() == 1000;
            out.extend(page);
            if !full {
                return out;
            }
        }
    }

    /// The sum of a counter over its labels in `GET /metrics` (0 when absent).
    #[track_caller]
    pub fn counter(&self, name: &str) -> f64 {
        let (status, text) = self.get("/metrics").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "GET /metrics: HTTP {status}: {text}");
        gantry_testkit::metric_sum(&text, name, "")
    }

    /// Waits until a factory has asked for a job, and found none, after this call
    /// began: `factories + 1` more empty claims, since each factory may have one claim
    /// under way already (see the server tests' `wait_claims_found_nothing`).
    #[track_caller]
    pub fn wait_claims_found_nothing(&self, factories: u64) {
        let empty = || {
            let (status, text) = self.get("/metrics").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status, 200, "GET /metrics: HTTP {status}: {text}");
            let (name, label) = gantry_testkit::EMPTY_CLAIMS;
            gantry_testkit::metric_sum(&text, name, label) as u64
        };
        let before = empty();
        gantry_testkit::wait_for(
            "a factory to ask for a job and find none",
            Duration::from_secs(30),
            || (empty() > before + factories).then_some(()),
        );
    }
}

/// A free TCP port on 127.0.0.1 (free when this returns; bind it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

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
