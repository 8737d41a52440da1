//! The hardened git runner: every git process of Gantry is made here (hooks, gc,
//! prompts and the caller's `GIT_*` location variables off; killed when dropped).

use crate::error::{Result, WorkspaceError, io_err};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Options given to every git call: no hooks (ours or the user's), no automatic gc (it
/// could pack refs while another run updates its branch), no pager, no file system
/// monitor (a command named by configuration, which a run must never get to choose).
const GIT_BASE_ARGS: &[&str] = &[
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "gc.auto=0",
    "-c",
    "maintenance.auto=false",
    "-c",
    "core.pager=cat",
    "-c",
    "advice.detachedHead=false",
];

/// Variables that would point git at another repository or index than the one we name.
const GIT_LOCATION_VARS: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_QUARANTINE_PATH",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
];

/// Identity of every commit the factory makes.
pub(crate) const IDENTITY: &[(&str, &str)] = &[
    ("GIT_AUTHOR_NAME", "gantry"),
    ("GIT_AUTHOR_EMAIL", "gantry@localhost"),
    ("GIT_COMMITTER_NAME", "gantry"),
    ("GIT_COMMITTER_EMAIL", "gantry@localhost"),
];

pub(crate) fn git_command<I, S>(dir: &Path, args: I) -> (tokio::process::Command, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(GIT_BASE_ARGS);
    let mut shown = Vec::new();
    for a in args {
        shown.push(a.as_ref().to_string_lossy().into_owned());
        cmd.arg(a.as_ref());
    }
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0")
        // A git dropped half-way (shutdown) must not keep running behind our back.
        .kill_on_drop(true);
    for var in GIT_LOCATION_VARS {
        cmd.env_remove(var);
    }
    (cmd, shown.join(" "))
}

/// Output of a git command that may legitimately exit non-zero.
pub(crate) struct GitOutput {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

pub(crate) async fn git_status<I, S>(dir: &Path, args: I, env: &[(&str, &str)]) -> Result<GitOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (mut cmd, shown) = git_command(dir, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = std::time::Instant::now();
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|source| WorkspaceError::Spawn {
            args: shown.clone(),
            dir: dir.to_path_buf(),
            source,
        })?;
    // Every git command's cost, for finding where a run's time goes.
    tracing::debug!(args = %shown, ms = started.elapsed().as_secs_f64() * 1000.0, code = ?out.status.code(), "git");
    Ok(GitOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Runs `git args...` in `dir` through the hardened runner (no hooks, no prompts, none
/// of the caller's `GIT_DIR`-style variables) and returns its standard output: for the
/// few git commands outside a workspace, such as making the demo's repository.
pub async fn run<I, S>(dir: &Path, args: I) -> Result<String>
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    git(dir, args).await
}

/// Runs git in `dir` and returns its standard output; a non-zero exit is an error
/// carrying git's standard error.
pub(crate) async fn git<I, S>(dir: &Path, args: I) -> Result<String>
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    git_env(dir, args, &[]).await
}

pub(crate) async fn git_env<I, S>(dir: &Path, args: I, env: &[(&str, &str)]) -> Result<String>
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    let out = git_status(dir, args.clone(), env).await?;
    if out.code == Some(0) {
        Ok(out.stdout)
    } else {
        Err(WorkspaceError::Git {
            args: args
                .into_iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            dir: dir.to_path_buf(),
            code: out.code,
            stderr: out.stderr,
        })
    }
}

/// `p` made absolute against the current directory: git runs with the cache as its
/// working directory, so relative paths given to it would point elsewhere.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The repo as git should be given it: URLs as they are, local paths made absolute.
pub(crate) fn repo_arg(repo: &str) -> std::ffi::OsString {
    if gantry_core::repo::is_url(repo) {
        repo.into()
    } else {
        absolute(Path::new(repo)).into_os_string()
    }
}

pub(crate) async fn update_refs(dir: &Path, stdin_text: &str) -> Result<()> {
    git_stdin(dir, ["update-ref", "--stdin"], stdin_text).await
}

/// Runs `git args...` in `dir` with `stdin_text` as its standard input; a non-zero exit
/// is an error carrying git's standard error.
pub(crate) async fn git_stdin<I, S>(dir: &Path, args: I, stdin_text: &str) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    use tokio::io::AsyncWriteExt;
    let (mut cmd, shown) = git_command(dir, args);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| WorkspaceError::Spawn {
            args: shown.clone(),
            dir: dir.to_path_buf(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(stdin_text.as_bytes())
            .await
            .map_err(io_err("cannot write to git update-ref in", dir))?;
    }
    wait_git(child, shown, dir).await
}

/// Waits for a spawned git whose stderr is piped; a non-zero exit is an error carrying
/// git's standard error.
pub(crate) async fn wait_git(
    child: tokio::process::Child,
    shown: String,
    dir: &Path,
) -> Result<()> {
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| WorkspaceError::Spawn {
            args: shown.clone(),
            dir: dir.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(WorkspaceError::Git {
            args: shown,
            dir: dir.to_path_buf(),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Resolves `rev` to a full commit id in `dir`, or `None` when it names no commit.
pub(crate) async fn resolve_commit(dir: &Path, rev: &str) -> Result<Option<String>> {
    let spec = format!("{rev}^{{commit}}");
    let out = git_status(dir, ["rev-parse", "--verify", "--quiet", &spec], &[]).await?;
    let sha = out.stdout.trim();
    Ok((out.code == Some(0) && !sha.is_empty()).then(|| sha.to_string()))
}

/// Points `refs/heads/<branch>` of `dir` at `commit`.
pub(crate) async fn set_branch(dir: &Path, branch: &str, commit: &str) -> Result<()> {
    git(dir, ["update-ref", &format!("refs/heads/{branch}"), commit]).await?;
    Ok(())
}
