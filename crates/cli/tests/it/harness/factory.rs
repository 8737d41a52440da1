//! A `gantry factory` child process, and the sweep of the processes runs leave.

use super::*;

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
