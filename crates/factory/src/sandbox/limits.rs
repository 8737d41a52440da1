//! Limits on the memory, CPU and processes of a run outside a container (bwrap), and
//! how a run stopped by one is told apart.
//!
//! A factory picks one mechanism when it starts ([`Limiter::detect`]), in this order:
//! - **cgroup v2**, where the factory's own cgroup is delegated to it (writable, with the
//!   `memory` and `pids` controllers): the factory moves itself into a leaf
//!   `gantry-factory` beside the runs (the kernel allows processes only in leaves) and
//!   gives every process of a run a cgroup `gantry-<hash>` with `memory.max` (swap
//!   0), `cpu.max` and `pids.max`. The kernel counts every process of the run together;
//!   `memory.events` and `pids.events` say when a limit struck.
//! - **cgroup v1**, where the `memory` and `pids` hierarchies are mounted writable (a
//!   factory running as root on a host or VM with the legacy layout): the same, with
//!   a cgroup in each hierarchy and the v1 file names (`memory.limit_in_bytes`,
//!   `memory.oom_control`, `cpu.cfs_quota_us`).
//! - **rlimits**, anywhere else: `prlimit` (util-linux) started inside the sandbox just
//!   before the command sets `RLIMIT_DATA` (memory), `RLIMIT_CPU` (CPU seconds: `cpus`
//!   times the job's timeout) and `RLIMIT_NPROC` (pids). These hold per process, not
//!   per run, except `RLIMIT_NPROC`: it counts the processes of one user in one user
//!   namespace, and every bwrap sandbox has its own, so it bounds the run as a whole.
//!   It must be set inside that namespace: set before bwrap, the kernel also applies it
//!   to all processes of the user on the machine. The kernel never applies it to root,
//!   so a factory running as root refuses a `pids` it can only hold by rlimit.
//!
//! Every detached process of a run (agent, gate, reviewer) gets its own cgroup, named
//! after its exit status file, so a factory that restarts finds the cgroup of a run it
//! adopts.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The CFS period the CPU quota is given in (100 ms, the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// Where the mount table and this process's cgroups are read.
const MOUNTINFO: &str = "/proc/self/mountinfo";
const OWN_CGROUPS: &str = "/proc/self/cgroup";

/// Where `prlimit` is looked for: system directories, which every sandbox can read.
const PRLIMIT: &[&str] = &["/usr/bin/prlimit", "/bin/prlimit"];

/// The limits of one run, in the kernel's units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
    /// CPUs in billionths of a CPU (a share of the machine's time).
    pub nano_cpus: Option<u64>,
    /// Processes and threads at once.
    pub pids: Option<u64>,
    /// CPU seconds each process may use: what an rlimit can hold of `nano_cpus`
    /// (`cpus` times the run's timeout). `None` when the run has no timeout.
    pub cpu_seconds: Option<u64>,
}

impl Limits {
    /// The limits of a job's `sandbox:`, for a run of at most `timeout`.
    pub fn of(spec: &gantry_core::sandbox::SandboxSpec, timeout: Option<Duration>) -> Limits {
        let cpu_seconds = spec.nano_cpus.zip(timeout).map(|(nano, t)| {
            let secs = (nano as f64 / 1e9) * t.as_secs_f64();
            (secs.ceil() as u64).max(1)
        });
        Limits {
            memory_bytes: spec.memory_bytes,
            nano_cpus: spec.nano_cpus,
            pids: spec.pids,
            cpu_seconds,
        }
    }

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.nano_cpus.is_none() && self.pids.is_none()
    }
}

/// The version of the cgroup hierarchy the factory creates cgroups in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The legacy layout: one hierarchy per controller.
    V1,
    /// The unified hierarchy.
    V2,
}

/// Where the factory creates the cgroups of runs: a directory per controller (the
/// same directory for all of them with cgroup v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    /// v1 or v2.
    pub version: CgroupVersion,
    /// Parent of the runs' cgroups for the memory controller.
    pub memory: PathBuf,
    /// Parent for the pids controller.
    pub pids: PathBuf,
    /// Parent for the cpu controller, when there is one.
    pub cpu: Option<PathBuf>,
}

/// How a factory enforces limits on runs outside containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limiter {
    /// A cgroup per process of a run.
    Cgroup(Cgroups),
    /// Resource limits set by this `prlimit` program inside the sandbox.
    Rlimit {
        /// The program.
        prlimit: PathBuf,
    },
    /// Nothing can enforce limits here; a run that asks for one fails to start.
    Unavailable {
        /// Why not.
        reason: String,
    },
}

/// Why a run's limits could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// No mechanism works on this machine.
    #[error("this factory cannot limit runs outside containers: {reason}")]
    Unavailable {
        /// Why not.
        reason: String,
    },
    /// The run asks for `pids` under rlimits, and the factory runs as root, to which
    /// the kernel never applies `RLIMIT_NPROC`: refused rather than not enforced.
    #[error(
        "the run asks for `pids`, but this factory runs as root without cgroups it can create, and the kernel never applies a pids rlimit to root"
    )]
    PidsAsRoot,
    /// The run asks for a CPU limit and the cgroups have no cpu controller.
    #[error("the run asks for `cpus` but the factory's cgroups have no cpu controller")]
    NoCpuController,
    /// A cgroup file could not be written.
    #[error("cannot set up the run's cgroup at {path}: {source}")]
    Cgroup {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A limit that stopped a run, as the end of the run can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// The kernel killed a process of the run at its memory limit.
    Memory,
    /// A fork or thread of the run was refused at its pids limit.
    Pids,
    /// A process of the run used up its CPU seconds (SIGXCPU).
    Cpu,
}

impl Breach {
    /// The error a run stopped by this limit reports: it starts with `oom`, `pids` or
    /// `cpu`, as a container's does.
    pub fn reason(self, what: &str) -> String {
        match self {
            Breach::Memory => {
                format!("oom: the {what} passed its memory limit and the kernel killed it")
            }
            Breach::Pids => format!("pids: the {what} hit its pids limit (a fork was refused)"),
            Breach::Cpu => format!("cpu: the {what} used up its CPU time limit"),
        }
    }
}

/// What a detached process needs to start under its limits: the cgroup files it
/// joins before it runs anything, and the argv that goes in front of its command.
#[derive(Debug, Default)]
pub struct Prepared {
    join: Vec<std::fs::File>,
    /// Arguments before the program, inside the sandbox (`prlimit ... --`).
    pub inner: Vec<OsString>,
}

impl Prepared {
    /// Whether the process has cgroups to join.
    pub fn joins(&self) -> bool {
        !self.join.is_empty()
    }

    /// Moves the calling process into the run's cgroups. Called in the child between
    /// fork and exec: it only writes to files opened before the fork (one `write`
    /// each, async-signal-safe). Writing `0` to `cgroup.procs` moves the writer.
    pub fn join(&self) -> std::io::Result<()> {
        for f in &self.join {
            (&*f).write_all(b"0")?;
        }
        Ok(())
    }
}

impl Limiter {
    /// The mechanism this machine offers: a delegated cgroup v2, writable cgroup v1
    /// hierarchies, else `prlimit`. Looked at once per process.
    pub fn detect() -> Limiter {
        static DETECTED: std::sync::OnceLock<Limiter> = std::sync::OnceLock::new();
        DETECTED.get_or_init(detect_now).clone()
    }

    /// The name of the mechanism, for logs and docs.
    pub fn name(&self) -> &'static str {
        match self {
            Limiter::Cgroup(c) if c.version == CgroupVersion::V2 => "cgroup v2",
            Limiter::Cgroup(_) => "cgroup v1",
            Limiter::Rlimit { .. } => "rlimits",
            Limiter::Unavailable { .. } => "none",
        }
    }

    /// Puts `limits` in place for the process whose exit status goes to `exit_status`.
    pub fn prepare(&self, limits: &Limits, exit_status: &Path) -> Result<Prepared, LimitError> {
        if limits.is_empty() {
            return Ok(Prepared::default());
        }
        match self {
            Limiter::Unavailable { reason } => Err(LimitError::Unavailable {
                reason: reason.clone(),
            }),
            Limiter::Rlimit { .. } if limits.pids.is_some() && nix::unistd::geteuid().is_root() => {
                Err(LimitError::PidsAsRoot)
            }
            Limiter::Rlimit { prlimit } => Ok(Prepared {
                join: Vec::new(),
                inner: prlimit_args(prlimit, limits),
            }),
            Limiter::Cgroup(c) => c.create(limits, &leaf_name(exit_status)),
        }
    }

    /// After the process and its group ended: which limit stopped it, if one did
    /// (`exit_signal` is the signal it was ended by), and its cgroup removed with
    /// anything still in it.
    pub async fn settle(
        &self,
        limits: &Limits,
        exit_status: &Path,
        exit_signal: Option<i32>,
    ) -> Option<Breach> {
        let by_signal = (exit_signal == Some(nix::libc::SIGXCPU)).then_some(Breach::Cpu);
        let Limiter::Cgroup(c) = self else {
            return by_signal;
        };
        if limits.is_empty() {
            return by_signal;
        }
        let leaf = leaf_name(exit_status);
        let breach = c.breach(&leaf).or(by_signal);
        c.remove(&leaf).await;
        breach
    }
}

impl super::RunLimits {
    /// After the process whose exit status goes to `exit_status` and its group ended:
    /// which limit stopped it, if one did (see [`Limiter::settle`]).
    pub async fn settle(&self, exit_status: &Path) -> Option<Breach> {
        let signal = match crate::process::read_exit_status(exit_status) {
            Some(Ok(crate::process::Exit::Signal(n))) => Some(n),
            _ => None,
        };
        self.limiter.settle(&self.limits, exit_status, signal).await
    }
}

/// [`super::RunLimits::settle`] for a process started under `confinement`, if it has
/// limits.
pub async fn settle(
    confinement: Option<&super::Confinement>,
    exit_status: &Path,
) -> Option<Breach> {
    match confinement.and_then(|c| c.limits.as_ref()) {
        Some(l) => l.settle(exit_status).await,
        None => None,
    }
}

impl Cgroups {
    /// The directories of the run's cgroup `leaf`, one per hierarchy it needs.
    fn dirs(&self, leaf: &str) -> Vec<PathBuf> {
        let mut dirs = vec![self.memory.join(leaf)];
        for parent in std::iter::once(&self.pids).chain(&self.cpu) {
            let dir = parent.join(leaf);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    /// Creates cgroup `leaf` with `limits` and opens its `cgroup.procs` files.
    fn create(&self, limits: &Limits, leaf: &str) -> Result<Prepared, LimitError> {
        if limits.nano_cpus.is_some() && self.cpu.is_none() {
            return Err(LimitError::NoCpuController);
        }
        let mut join = Vec::new();
        for dir in self.dirs(leaf) {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(LimitError::Cgroup { path: dir, source }),
            }
        }
        for (file, value) in self.settings(limits) {
            let parent = match file.split('.').next() {
                Some("pids") => &self.pids,
                Some("cpu") => self.cpu.as_ref().unwrap_or(&self.memory),
                _ => &self.memory,
            };
            let path = parent.join(leaf).join(file);
            // Swap accounting is optional: without it, swap is simply not limited.
            if file.contains("swap") && !path.exists() {
                continue;
            }
            std::fs::write(&path, value).map_err(|source| LimitError::Cgroup { path, source })?;
        }
        for dir in self.dirs(leaf) {
            let path = dir.join("cgroup.procs");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| LimitError::Cgroup { path, source })?;
            join.push(f);
        }
        Ok(Prepared {
            join,
            inner: Vec::new(),
        })
    }

    /// The files to write for `limits`, in order. Unlimited values are written too, so a cgroup left
    /// by an earlier process of the same name keeps nothing of its limits.
    fn settings(&self, limits: &Limits) -> Vec<(&'static str, String)> {
        let max = |v: Option<u64>| v.map_or("max".to_string(), |v| v.to_string());
        let quota = limits
            .nano_cpus
            .map(|n| (n.saturating_mul(CPU_PERIOD_US) / 1_000_000_000).max(1000));
        match self.version {
            CgroupVersion::V2 => {
                let mut s = vec![
                    ("memory.max", max(limits.memory_bytes)),
                    ("pids.max", max(limits.pids)),
                ];
                if limits.memory_bytes.is_some() {
                    s.push(("memory.swap.max", "0".to_string()));
                }
                if self.cpu.is_some() {
                    s.push(("cpu.max", format!("{} {CPU_PERIOD_US}", max(quota))));
                }
                s
            }
            CgroupVersion::V1 => {
                let bytes = limits
                    .memory_bytes
                    .map_or("-1".to_string(), |b| b.to_string());
                // The memory-and-swap limit may never be below the memory limit: lifted
                // first, it lets the memory limit go up as well as down.
                let mut s = vec![
                    ("memory.memsw.limit_in_bytes", "-1".to_string()),
                    ("memory.limit_in_bytes", bytes.clone()),
                    ("memory.memsw.limit_in_bytes", bytes),
                    ("pids.max", max(limits.pids)),
                ];
                if self.cpu.is_some() {
                    s.push(("cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
                    let q = quota.map_or("-1".to_string(), |q| q.to_string());
                    s.push(("cpu.cfs_quota_us", q));
                }
                s
            }
        }
    }

    /// Which limit of cgroup `leaf` struck: an OOM kill first (it ends a process),
    /// then a refused fork.
    fn breach(&self, leaf: &str) -> Option<Breach> {
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
        let oom_file = match self.version {
            CgroupVersion::V2 => "memory.events",
            CgroupVersion::V1 => "memory.oom_control",
        };
        let oom = counter(&read(self.memory.join(leaf).join(oom_file)), "oom_kill");
        let pids = counter(&read(self.pids.join(leaf).join("pids.events")), "max");
        if oom > 0 {
            Some(Breach::Memory)
        } else if pids > 0 {
            Some(Breach::Pids)
        } else {
            None
        }
    }

    /// Kills whatever is left in cgroup `leaf` and removes it (a cgroup with a
    /// process in it cannot be removed). Gives up after about two seconds.
    async fn remove(&self, leaf: &str) {
        for dir in self.dirs(leaf) {
            for _ in 0..200 {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            if dir.exists() {
                tracing::warn!(cgroup = %dir.display(), "cannot remove a run's cgroup");
            }
        }
    }
}

/// The value of `key` in a cgroup's `key value` lines, 0 when absent.
fn counter(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The cgroup name of the process whose exit status goes to `exit_status`: the same
/// in every factory that reads the run's record (FNV-1a of the path).
fn leaf_name(exit_status: &Path) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in exit_status.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("gantry-{hash:016x}")
}

/// `prlimit` and its options for `limits`, ending in `--`. The CPU limit is soft:
/// the kernel sends SIGXCPU when it is passed (a signal the run's end tells apart),
/// and SIGKILL five seconds later.
fn prlimit_args(prlimit: &Path, limits: &Limits) -> Vec<OsString> {
    let mut a = vec![prlimit.as_os_str().to_os_string()];
    if let Some(b) = limits.memory_bytes {
        a.push(format!("--data={b}").into());
    }
    if let Some(s) = limits.cpu_seconds {
        a.push(format!("--cpu={s}:{}", s.saturating_add(5)).into());
    }
    if let Some(n) = limits.pids {
        a.push(format!("--nproc={n}").into());
    }
    a.push("--".into());
    a
}

/// Detects the mechanism, logging why a better one is out.
fn detect_now() -> Limiter {
    let mountinfo = std::fs::read_to_string(MOUNTINFO).unwrap_or_default();
    let own = std::fs::read_to_string(OWN_CGROUPS).unwrap_or_default();
    let found = locate(&mountinfo, &own);
    let mut why_not = Vec::new();
    if let Some(dir) = &found.v2 {
        match delegate_v2(dir) {
            Ok(c) => {
                tracing::info!(cgroup = %dir.display(), "runs outside containers are limited by cgroup v2");
                return Limiter::Cgroup(c);
            }
            Err(e) => why_not.push(format!("cgroup v2 at {}: {e}", dir.display())),
        }
    }
    match usable_v1(&found) {
        Ok(c) => {
            tracing::info!(why_not = ?why_not, "runs outside containers are limited by cgroup v1");
            return Limiter::Cgroup(c);
        }
        Err(e) => why_not.push(format!("cgroup v1: {e}")),
    }
    let why_not = why_not.join("; ");
    match PRLIMIT.iter().map(Path::new).find(|p| p.exists()) {
        Some(p) => {
            tracing::info!(%why_not, "runs outside containers are limited by rlimits");
            Limiter::Rlimit {
                prlimit: p.to_path_buf(),
            }
        }
        None => Limiter::Unavailable {
            reason: format!("{why_not}; and no prlimit program (util-linux) in /usr/bin"),
        },
    }
}

/// Where this process's cgroups are: its cgroup v2 directory, and its directory in
/// each v1 hierarchy by controller.
#[derive(Debug, Default, PartialEq, Eq)]
struct Found {
    v2: Option<PathBuf>,
    v1: Vec<(String, PathBuf)>,
}

/// Reads the mount table and `/proc/self/cgroup` into [`Found`].
fn locate(mountinfo: &str, own: &str) -> Found {
    let mut found = Found::default();
    for line in mountinfo.lines() {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype source super-options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (l.get(3), l.get(4), r.first()) else {
            continue;
        };
        let under = |path: &str| {
            let rel = path.strip_prefix(root).unwrap_or(path);
            Path::new(point).join(rel.trim_start_matches('/'))
        };
        match *fstype {
            "cgroup2" => {
                let path = own.lines().find_map(|l| l.strip_prefix("0::"));
                if let Some(path) = path {
                    found.v2 = Some(under(path));
                }
            }
            "cgroup" => {
                let options = r.get(2).copied().unwrap_or("");
                for controller in options.split(',') {
                    if !matches!(controller, "memory" | "pids" | "cpu") {
                        continue;
                    }
                    let path = own.lines().find_map(|l| {
                        let mut parts = l.splitn(3, ':');
                        let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                        names.split(',').any(|n| n == controller).then_some(path)
                    });
                    if let Some(path) = path {
                        found.v1.push((controller.to_string(), under(path)));
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// Whether a cgroup can be made (and removed) below `dir`.
fn can_create_below(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!("gantry-probe-{}", std::process::id()));
    std::fs::create_dir(&probe)?;
    std::fs::remove_dir(&probe)
}

/// The v1 hierarchies, when memory and pids are there and writable.
fn usable_v1(found: &Found) -> Result<Cgroups, String> {
    let dir = |c: &str| {
        found
            .v1
            .iter()
            .find(|(n, _)| n == c)
            .map(|(_, d)| d.clone())
    };
    let (Some(memory), Some(pids)) = (dir("memory"), dir("pids")) else {
        return Err("no memory or pids hierarchy".to_string());
    };
    for d in [&memory, &pids] {
        can_create_below(d)
            .map_err(|e| format!("cannot create a cgroup in {}: {e}", d.display()))?;
    }
    let cpu = dir("cpu").filter(|d| can_create_below(d).is_ok());
    Ok(Cgroups {
        version: CgroupVersion::V1,
        memory,
        pids,
        cpu,
    })
}

/// Takes over the cgroup v2 directory `dir` for runs: it must offer the memory and
/// pids controllers and be writable. The factory moves into a leaf of its own and
/// enables the controllers for the runs' cgroups beside it.
fn delegate_v2(dir: &Path) -> Result<Cgroups, String> {
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map_err(|e| format!("cannot read its controllers: {e}"))?;
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if !has("memory") || !has("pids") {
        return Err(format!(
            "the memory and pids controllers are not delegated (it has: {})",
            controllers.trim()
        ));
    }
    let wanted: Vec<&str> = ["memory", "pids", "cpu"]
        .into_iter()
        .filter(|c| has(c))
        .collect();
    let subtree = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
    if !wanted
        .iter()
        .all(|c| enabled.split_whitespace().any(|x| x == *c))
    {
        // Only leaves hold processes once controllers are enabled below a cgroup.
        let own = dir.join("gantry-factory");
        let moved = std::fs::create_dir_all(&own).and_then(|()| {
            std::fs::write(own.join("cgroup.procs"), std::process::id().to_string())
        });
        moved.map_err(|e| format!("cannot move the factory into {}: {e}", own.display()))?;
        let plus: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
        std::fs::write(&subtree, plus.join(" ")).map_err(|e| {
            format!(
                "cannot enable {} in {}: {e}",
                plus.join(" "),
                subtree.display()
            )
        })?;
    }
    can_create_below(dir).map_err(|e| format!("cannot create a cgroup in it: {e}"))?;
    Ok(Cgroups {
        version: CgroupVersion::V2,
        memory: dir.to_path_buf(),
        pids: dir.to_path_buf(),
        cpu: has("cpu").then(|| dir.to_path_buf()),
    })
}

#[cfg(test)]
mod tests;
