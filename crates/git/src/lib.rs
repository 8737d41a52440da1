//! Gantry's only way to git (the CLI, never libgit2): the hardened runner, the bare cache
//! of each source repo, one worktree per attempt (with the agent's own repository in
//! it), the attempt's commit and figures, checkpoints, publication, delivery to the
//! source repo, and pruning. The factory and the server both use it; nothing else in
//! Gantry spawns git.
//!
//! Layout under the data dir:
//! ```text
//! repos/<cache_name(repo)>   bare cache (clone --bare [--local]); attempt branches live here
//! work/<job>-a<attempt>/     worktree of one attempt, removed when the run ends
//! ```
//! The cache never holds the source repo's `gantry` branch or its delivered
//! `gantry/<job>` branches: they would collide with the attempt branches
//! `gantry/<job>/a<n>` (a ref cannot be both a file and a directory), so they are left
//! out of every fetch and deleted after a clone.
//!
//! Every git call runs with hooks disabled, automatic gc off, no terminal prompts and
//! without the caller's `GIT_DIR`-style variables, so neither the user's configuration
//! nor a surrounding git process changes what happens.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};

mod check;
mod merge;
mod source_state;

pub use check::{SourceCheck, SourceError, SourceField, check_source};
pub use merge::{MergeCheck, file_at, merge_check, rebase_result};

/// Why a workspace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A git command exited with an error.
    #[error("`git {args}` failed in {dir} (exit {code}): {stderr}", code = code.map_or("by signal".to_string(), |c| c.to_string()))]
    Git {
        /// The arguments, joined by spaces.
        args: String,
        /// Where it ran.
        dir: PathBuf,
        /// Its exit code (`None` when killed by a signal).
        code: Option<i32>,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// git could not be started at all.
    #[error("cannot run `git {args}` in {dir}: {source}")]
    Spawn {
        /// The arguments, joined by spaces.
        args: String,
        /// Where it should have run.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "cannot create directory".
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The source repository cannot be used.
    #[error("cannot use repo {repo:?}: {message}")]
    Repo {
        /// The repo as given.
        repo: String,
        /// What is wrong with it.
        message: String,
    },
    /// The base names no commit of the repository.
    #[error("base {base:?} not found in repo {repo:?}: no branch, tag or commit of that name")]
    UnknownBase {
        /// The repo as given.
        repo: String,
        /// The base as given.
        base: String,
    },
    /// An argument is not acceptable.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        /// The parameter at fault.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
}

type Result<T, E = WorkspaceError> = std::result::Result<T, E>;

/// Ref under which the source repo's HEAD commit is fetched into the cache.
const SOURCE_HEAD_REF: &str = "refs/gantry/source-head";

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
const IDENTITY: &[(&str, &str)] = &[
    ("GIT_AUTHOR_NAME", "gantry"),
    ("GIT_AUTHOR_EMAIL", "gantry@localhost"),
    ("GIT_COMMITTER_NAME", "gantry"),
    ("GIT_COMMITTER_EMAIL", "gantry@localhost"),
];

fn git_command<I, S>(dir: &Path, args: I) -> (tokio::process::Command, String)
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
struct GitOutput {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn git_status<I, S>(dir: &Path, args: I, env: &[(&str, &str)]) -> Result<GitOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (mut cmd, shown) = git_command(dir, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|source| WorkspaceError::Spawn {
            args: shown,
            dir: dir.to_path_buf(),
            source,
        })?;
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
async fn git<I, S>(dir: &Path, args: I) -> Result<String>
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    git_env(dir, args, &[]).await
}

async fn git_env<I, S>(dir: &Path, args: I, env: &[(&str, &str)]) -> Result<String>
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

/// The environment that points git at the worktree `worktree` of `cache` through the
/// worktree's administrative directory in the cache, found from the cache's side.
///
/// A run may write anything in its worktree, including the `.git` file that tells git
/// where the repository is: followed, it could name a repository the run made, whose
/// configuration (`core.fsmonitor`, filters) git would execute as the factory, outside
/// the sandbox. So the factory never lets git discover the repository from the
/// worktree: it names the directory itself, from the cache's records, which no run can
/// see.
async fn worktree_env(cache: &Path, worktree: &Path) -> Result<[(&'static str, String); 2]> {
    let wanted = absolute(worktree).join(".git");
    let admin = cache.join("worktrees");
    let mut entries = tokio::fs::read_dir(&admin)
        .await
        .map_err(io_err("cannot list the worktrees of", &admin))?;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(io_err("cannot list the worktrees of", &admin))?
    {
        let Ok(gitdir) = tokio::fs::read_to_string(entry.path().join("gitdir")).await else {
            continue;
        };
        if Path::new(gitdir.trim_end_matches('\n')) == wanted {
            return Ok([
                ("GIT_DIR", entry.path().to_string_lossy().into_owned()),
                (
                    "GIT_WORK_TREE",
                    absolute(worktree).to_string_lossy().into_owned(),
                ),
            ]);
        }
    }
    Err(WorkspaceError::Invalid {
        field: "worktree",
        value: worktree.display().to_string(),
        reason: format!("no worktree of {} is registered there", cache.display()),
    })
}

/// The bare cache of `repo`: `<data>/repos/<cache_name(repo)>`.
pub fn cache_dir(data_dir: &Path, repo: &str) -> PathBuf {
    data_dir
        .join("repos")
        .join(gantry_core::repo::cache_name(repo))
}

/// The per-cache mutex: one fetch (and worktree bookkeeping) at a time per cache, in
/// this process. Entries are never removed; there is one per repo ever used.
fn cache_lock(cache: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut map = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(cache.to_path_buf()).or_default().clone()
}

/// Worktrees in use by runs of this process; [`prune`] never touches them.
fn live_worktrees() -> &'static Mutex<HashSet<PathBuf>> {
    static LIVE: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// Marks a worktree path as in use for as long as the guard lives.
#[derive(Debug)]
pub struct LiveGuard(PathBuf);

impl LiveGuard {
    /// Marks `path` as in use until the guard is dropped.
    pub fn new(path: &Path) -> LiveGuard {
        let path = absolute(path);
        live_worktrees()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.clone());
        LiveGuard(path)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        live_worktrees()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// `p` made absolute against the current directory: git runs with the cache as its
/// working directory, so relative paths given to it would point elsewhere.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The repo as git should be given it: URLs as they are, local paths made absolute.
fn repo_arg(repo: &str) -> std::ffi::OsString {
    if gantry_core::repo::is_url(repo) {
        repo.into()
    } else {
        absolute(Path::new(repo)).into_os_string()
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WorkspaceError {
    let path = path.to_path_buf();
    move |source| WorkspaceError::Io {
        action,
        path,
        source,
    }
}

/// Makes sure the bare cache of `repo` exists and is up to date; returns its path and
/// whether it was just cloned. The caller holds the cache lock.
async fn ensure_cache(data_dir: &Path, repo: &str, fetch_head: bool) -> Result<(PathBuf, bool)> {
    let cache = cache_dir(data_dir, repo);
    let repos = data_dir.join("repos");
    let local = !gantry_core::repo::is_url(repo);
    // Taken before the fetch, so a change racing with the fetch is seen next time.
    let seen = if local {
        source_state::read(Path::new(repo))
    } else {
        None
    };
    if cache.join("HEAD").is_file() {
        if let Some(now) = &seen
            && source_state::up_to_date(&cache, now, fetch_head)
        {
            return Ok((cache, false));
        }
        let mut args: Vec<&str> = vec![
            "fetch",
            "--quiet",
            "--update-head-ok",
            "--no-write-fetch-head",
            "origin",
            "+refs/heads/*:refs/heads/*",
            "^refs/heads/gantry",
            "^refs/heads/gantry/*",
            "+refs/tags/*:refs/tags/*",
        ];
        let head_spec = format!("+HEAD:{SOURCE_HEAD_REF}");
        if fetch_head {
            args.push(&head_spec);
        }
        git(&cache, &args).await.map_err(|e| WorkspaceError::Repo {
            repo: repo.to_string(),
            message: format!("fetching into the cache {} failed: {e}", cache.display()),
        })?;
        if let Some(seen) = seen {
            source_state::record(&cache, seen, fetch_head);
        }
        return Ok((cache, false));
    }

    if local && !Path::new(repo).exists() {
        return Err(WorkspaceError::Repo {
            repo: repo.to_string(),
            message: "no such file or directory".to_string(),
        });
    }
    if repo.starts_with('-') {
        return Err(WorkspaceError::Repo {
            repo: repo.to_string(),
            message: "a repo may not start with `-`".to_string(),
        });
    }
    tokio::fs::create_dir_all(&repos)
        .await
        .map_err(io_err("cannot create directory", &repos))?;
    // Clone beside the final place and rename, so a crash mid-clone never leaves a
    // half cache that later runs would take for a good one.
    let name = cache
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = repos.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        tokio::fs::remove_dir_all(&tmp)
            .await
            .map_err(io_err("cannot remove stale clone", &tmp))?;
    }
    let source = repo_arg(repo);
    let clone = |extra: &'static [&'static str]| {
        let mut args: Vec<&OsStr> = vec!["clone".as_ref(), "--bare".as_ref(), "--quiet".as_ref()];
        args.extend(extra.iter().map(OsStr::new));
        args.extend([OsStr::new("--"), source.as_os_str(), tmp.as_os_str()]);
        args
    };
    let mut cloned = git(&repos, clone(if local { &["--local"] } else { &[] })).await;
    if local && cloned.is_err() {
        // `--local` hard-links the objects, which fails when the source and the data
        // dir are on different file systems (a container volume, another disk): copy.
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        cloned = git(&repos, clone(&["--local", "--no-hardlinks"])).await;
    }
    if let Err(e) = cloned {
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        let message = match e {
            WorkspaceError::Git { stderr, .. } => format!("git clone failed: {stderr}"),
            other => other.to_string(),
        };
        return Err(WorkspaceError::Repo {
            repo: repo.to_string(),
            message,
        });
    }
    // Delivered branches `gantry/<job>` of the source (and a branch named `gantry`)
    // would block attempt branches; the pattern matches both and nothing else.
    let delivered = git(
        &tmp,
        ["for-each-ref", "--format=%(refname)", "refs/heads/gantry"],
    )
    .await?;
    if !delivered.trim().is_empty() {
        let mut stdin = String::new();
        for r in delivered.lines().filter(|l| !l.is_empty()) {
            stdin.push_str(&format!("delete {r}\n"));
        }
        update_refs(&tmp, &stdin).await?;
    }
    tokio::fs::rename(&tmp, &cache)
        .await
        .map_err(io_err("cannot move the new clone into place at", &cache))?;
    if let Some(seen) = seen {
        // A fresh clone has the source's branches and its HEAD as the cache's own HEAD,
        // but not the source-head ref: a later run without a base fetches it once.
        source_state::record(&cache, seen, false);
    }
    Ok((cache, true))
}

async fn update_refs(dir: &Path, stdin_text: &str) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let (mut cmd, shown) = git_command(dir, ["update-ref", "--stdin"]);
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
async fn wait_git(child: tokio::process::Child, shown: String, dir: &Path) -> Result<()> {
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
async fn resolve_commit(dir: &Path, rev: &str) -> Result<Option<String>> {
    let spec = format!("{rev}^{{commit}}");
    let out = git_status(dir, ["rev-parse", "--verify", "--quiet", &spec], &[]).await?;
    let sha = out.stdout.trim();
    Ok((out.code == Some(0) && !sha.is_empty()).then(|| sha.to_string()))
}

/// The commit a branch of `cache` points at: read from its loose ref file when there is
/// one (the branch was just written by `worktree add -B`), else asked of git.
async fn branch_commit(cache: &Path, branch: &str) -> Result<Option<String>> {
    let file = cache.join("refs/heads").join(branch);
    if let Ok(text) = tokio::fs::read_to_string(&file).await {
        let sha = text.trim();
        if sha.len() >= 40 && sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(Some(sha.to_string()));
        }
    }
    resolve_commit(cache, &format!("refs/heads/{branch}")).await
}

/// A prepared attempt workspace.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The bare cache.
    pub cache: PathBuf,
    /// The commit the attempt starts from.
    pub base_commit: String,
}

/// Prepares the worktree of one attempt: updates (or creates) the cache, resolves the
/// base and adds the worktree `path` on `branch` at the base commit.
pub async fn prepare(
    data_dir: &Path,
    repo: &str,
    base: Option<&str>,
    path: &Path,
    branch: &str,
) -> Result<Prepared> {
    let data_dir = &absolute(data_dir);
    let path = &absolute(path);
    if let Some(b) = base
        && !check::base_is_valid(b)
    {
        return Err(WorkspaceError::Invalid {
            field: "base",
            value: b.to_string(),
            reason:
                "a base is a branch, tag or commit: non-empty, no spaces, not starting with `-`"
                    .to_string(),
        });
    }
    let cache = cache_dir(data_dir, repo);
    let lock = cache_lock(&cache);
    let _held = lock.lock().await;
    let (cache, fresh) = ensure_cache(data_dir, repo, base.is_none()).await?;
    let rev = match base {
        Some(b) => b,
        None if fresh => "HEAD",
        None => SOURCE_HEAD_REF,
    };
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io_err("cannot create directory", parent))?;
    }
    // Leftovers of a crashed incarnation at the same path would make `worktree add` fail.
    if tokio::fs::symlink_metadata(path).await.is_ok() {
        let _ = git(
            &cache,
            [
                OsStr::new("worktree"),
                OsStr::new("remove"),
                OsStr::new("--force"),
                OsStr::new("--force"),
                path.as_os_str(),
            ],
        )
        .await;
        if tokio::fs::symlink_metadata(path).await.is_ok() {
            tokio::fs::remove_dir_all(path)
                .await
                .map_err(io_err("cannot remove the old worktree", path))?;
        }
        git(&cache, ["worktree", "prune"]).await?;
    }
    // `worktree add` resolves the base itself: one git process instead of a rev-parse
    // before it, which matters because this is on the path from claim to process start.
    let added = git(
        &cache,
        [
            OsStr::new("worktree"),
            OsStr::new("add"),
            OsStr::new("--quiet"),
            OsStr::new("--no-track"),
            OsStr::new("-B"),
            OsStr::new(branch),
            path.as_os_str(),
            OsStr::new(rev),
        ],
    )
    .await;
    match added {
        Ok(_) => {}
        Err(WorkspaceError::Git { stderr, .. })
            if stderr.contains("invalid reference") || stderr.contains("not a commit") =>
        {
            return Err(WorkspaceError::UnknownBase {
                repo: repo.to_string(),
                base: base.unwrap_or("HEAD").to_string(),
            });
        }
        Err(e) => return Err(e),
    }
    let base_commit = match branch_commit(&cache, branch).await? {
        Some(c) => c,
        None => {
            return Err(WorkspaceError::UnknownBase {
                repo: repo.to_string(),
                base: base.unwrap_or("HEAD").to_string(),
            });
        }
    };
    agent_repo(&cache, path, branch).await?;
    Ok(Prepared { cache, base_commit })
}

/// Gives the worktree `path` a repository of its own for the agent, in place of the
/// `.git` file that links it to the cache: a shallow clone of `branch` (the attempt's
/// start), with the index matching the checkout so that `git status` is clean.
///
/// The cache holds every job's branches and objects, so it must stay out of the
/// sandbox; yet agents expect `git status`, `git diff` and `git commit` to work in
/// their checkout. The agent's repository is never read by the factory, which
/// commits the worktree's files through the cache's own record of the worktree
/// ([`worktree_env`]): what an agent does to its repository (commits, a moved HEAD,
/// hostile configuration) changes nothing of what the attempt delivers.
async fn agent_repo(cache: &Path, path: &Path, branch: &str) -> Result<()> {
    let dot_git = path.join(".git");
    tokio::fs::remove_file(&dot_git)
        .await
        .map_err(io_err("cannot replace the worktree's link", &dot_git))?;
    git(
        path,
        [
            OsStr::new("init"),
            OsStr::new("--quiet"),
            OsStr::new("--template="),
            OsStr::new("--initial-branch"),
            OsStr::new(branch),
        ],
    )
    .await?;
    let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
    git(
        path,
        [
            OsStr::new("fetch"),
            OsStr::new("--quiet"),
            OsStr::new("--depth=1"),
            OsStr::new("--no-tags"),
            OsStr::new("--update-head-ok"),
            cache.as_os_str(),
            OsStr::new(&refspec),
        ],
    )
    .await?;
    git(path, ["read-tree", "HEAD"]).await?;
    // Stat data in the fresh index is empty: one refresh makes `git status` fast and
    // quiet. A refresh that finds differences exits 1, which is not an error here.
    git_status(path, ["update-index", "-q", "--refresh"], &[]).await?;
    Ok(())
}

/// What an attempt changed, relative to its base.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The commit holding the attempt's changes (the base when nothing changed).
    pub commit: String,
    /// Files changed.
    pub files_changed: u32,
    /// Lines added.
    pub lines_added: u32,
    /// Lines deleted.
    pub lines_deleted: u32,
}

/// Commits everything in the worktree on `branch` (when anything changed), computes the
/// figures against `base_commit` and writes the binary-safe patch to `patch_path`.
pub async fn commit_changes(
    cache: &Path,
    worktree: &Path,
    branch: &str,
    base_commit: &str,
    message: &str,
    patch_path: &Path,
) -> Result<Changes> {
    let wt = worktree_env(cache, worktree).await?;
    let wt: Vec<(&str, &str)> = wt.iter().map(|(k, v)| (*k, v.as_str())).collect();
    git_env(worktree, ["add", "-A"], &wt).await?;
    let staged = git_status(worktree, ["diff", "--cached", "--quiet"], &wt).await?;
    match staged.code {
        Some(0) => {}
        Some(1) => {
            git_env(
                worktree,
                [
                    "-c",
                    "user.name=gantry",
                    "-c",
                    "user.email=gantry@localhost",
                    "-c",
                    "commit.gpgsign=false",
                    "commit",
                    "--quiet",
                    "--no-verify",
                    "--no-gpg-sign",
                    "-m",
                    message,
                ],
                &[IDENTITY, &wt].concat(),
            )
            .await?;
        }
        code => {
            return Err(WorkspaceError::Git {
                args: "diff --cached --quiet".to_string(),
                dir: worktree.to_path_buf(),
                code,
                stderr: staged.stderr,
            });
        }
    }
    let commit = git_env(worktree, ["rev-parse", "--verify", "HEAD^{commit}"], &wt)
        .await?
        .trim()
        .to_string();
    // The process may have moved HEAD off the attempt branch (checked out another
    // branch, detached); the attempt branch must still name what the attempt produced.
    git(
        cache,
        ["update-ref", &format!("refs/heads/{branch}"), &commit],
    )
    .await?;
    let numstat = git(
        cache,
        [
            "diff",
            "--numstat",
            "--no-renames",
            "--no-ext-diff",
            "--no-textconv",
            base_commit,
            &commit,
        ],
    )
    .await?;
    let mut changes = Changes {
        commit: commit.clone(),
        ..Changes::default()
    };
    for line in numstat.lines().filter(|l| !l.is_empty()) {
        let mut cols = line.splitn(3, '\t');
        // Binary files show `-` for both counts: they count as changed, with no lines.
        let added = cols.next().and_then(|c| c.parse::<u32>().ok()).unwrap_or(0);
        let deleted = cols.next().and_then(|c| c.parse::<u32>().ok()).unwrap_or(0);
        changes.files_changed += 1;
        changes.lines_added = changes.lines_added.saturating_add(added);
        changes.lines_deleted = changes.lines_deleted.saturating_add(deleted);
    }
    write_patch(cache, base_commit, &commit, patch_path).await?;
    Ok(changes)
}

/// Writes `git diff --binary base commit` to `path`, streaming (patches can be large).
async fn write_patch(cache: &Path, base: &str, commit: &str, path: &Path) -> Result<()> {
    let file = std::fs::File::create(path).map_err(io_err("cannot create", path))?;
    let args = [
        "diff",
        "--binary",
        "--no-renames",
        "--no-ext-diff",
        "--no-textconv",
        "--no-color",
        base,
        commit,
    ];
    let (mut cmd, shown) = git_command(cache, args);
    // `output()` would replace the file by a pipe: spawn, then collect stderr only.
    let child = cmd
        .stdout(Stdio::from(file))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| WorkspaceError::Spawn {
            args: shown.clone(),
            dir: cache.to_path_buf(),
            source,
        })?;
    wait_git(child, shown, cache).await
}

/// Room kept under the limit for the line that marks a cut diff.
const CUT_MARKER_ROOM: usize = 256;

/// The diff a finish report carries: the patch at `path` as text (bytes that are not
/// UTF-8 are replaced), at most `max` bytes. A longer patch is cut at the end of a line
/// and followed by a marker line that says so and gives the patch's full size.
pub async fn reported_diff(path: &Path, max: usize) -> Result<String> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(io_err("cannot open", path))?;
    let total = file
        .metadata()
        .await
        .map_err(io_err("cannot read the size of", path))?
        .len();
    let mut bytes = Vec::new();
    file.take(u64::try_from(max).unwrap_or(u64::MAX))
        .read_to_end(&mut bytes)
        .await
        .map_err(io_err("cannot read", path))?;
    Ok(cut_diff(&bytes, total.max(bytes.len() as u64), max))
}

/// `bytes`, the first bytes of a patch of `total` bytes, as text of at most `max`
/// bytes: whole when it fits, else cut at a line end with a marker line appended.
fn cut_diff(bytes: &[u8], total: u64, max: usize) -> String {
    let whole = total <= bytes.len() as u64;
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    // Replacement characters take three bytes where the bad byte took one, so the text
    // can outgrow the bytes it came from: measured after the conversion.
    if whole && text.len() <= max {
        return text;
    }
    let room = max.saturating_sub(CUT_MARKER_ROOM);
    let mut end = room.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // Cut after the last complete line; a single line longer than the room is cut
    // where the room ends.
    if let Some(nl) = text.as_bytes()[..end].iter().rposition(|b| *b == b'\n') {
        end = nl + 1;
    }
    text.truncate(end);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "[gantry: diff cut here: the first {end} bytes of {total} are shown; the whole \
         patch is diff.patch in the run's artifacts on the factory that ran it]\n"
    ));
    text
}

/// A work-in-progress checkpoint: the commit and the tree it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wip {
    /// The checkpoint commit.
    pub commit: String,
    /// Its tree.
    pub tree: String,
}

/// The ref a checkpoint of one attempt is pushed to in the source repository:
/// `refs/gantry/wip/<job>/a<attempt>`. It is attempt-unique (a stale worker can never
/// move another attempt's checkpoint) and outside `refs/heads`, so it neither shows as
/// a branch nor collides with the delivered branch `gantry/<job>`.
pub fn wip_source_ref(job: gantry_core::JobId, attempt: u32) -> String {
    format!("refs/gantry/wip/{job}/a{attempt}")
}

/// Commits everything in `worktree` (tracked or not, minus ignored files) as a
/// checkpoint, without touching the worktree's index or HEAD: a temporary index
/// (`index_tmp`, seeded from the worktree's own index) receives `git add -A`, its tree
/// is committed with `parent` as the parent, and `refs/heads/<branch>` of the cache
/// is set to the commit. Returns `None`, committing nothing, when the tree is
/// `unchanged_tree` (nothing changed since the last checkpoint, or since the base).
pub async fn checkpoint(
    cache: &Path,
    worktree: &Path,
    index_tmp: &Path,
    branch: &str,
    parent: &str,
    unchanged_tree: &str,
    message: &str,
) -> Result<Option<Wip>> {
    let wt = worktree_env(cache, worktree).await?;
    let index = Path::new(&wt[0].1).join("index");
    let _ = tokio::fs::remove_file(index_tmp).await;
    let tmp = index_tmp.to_string_lossy().into_owned();
    let env = [
        ("GIT_INDEX_FILE", tmp.as_str()),
        (wt[0].0, wt[0].1.as_str()),
        (wt[1].0, wt[1].1.as_str()),
    ];
    match tokio::fs::copy(&index, index_tmp).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            git_env(worktree, ["read-tree", "HEAD"], &env).await?;
        }
        Err(e) => {
            return Err(WorkspaceError::Io {
                action: "cannot copy the worktree's index to",
                path: index_tmp.to_path_buf(),
                source: e,
            });
        }
    }
    let result = async {
        git_env(worktree, ["add", "-A"], &env).await?;
        let tree = git_env(worktree, ["write-tree"], &env)
            .await?
            .trim()
            .to_string();
        if tree == unchanged_tree {
            return Ok(None);
        }
        let mut ident: Vec<(&str, &str)> = IDENTITY.to_vec();
        ident.extend(env);
        let commit = git_env(
            worktree,
            ["commit-tree", &tree, "-p", parent, "-m", message],
            &ident,
        )
        .await?
        .trim()
        .to_string();
        git(
            cache,
            ["update-ref", &format!("refs/heads/{branch}"), &commit],
        )
        .await?;
        Ok(Some(Wip { commit, tree }))
    }
    .await;
    let _ = tokio::fs::remove_file(index_tmp).await;
    result
}

/// The tree of `commit` in `dir`.
pub async fn tree_of(dir: &Path, commit: &str) -> Result<String> {
    Ok(git(
        dir,
        ["rev-parse", "--verify", &format!("{commit}^{{tree}}")],
    )
    .await?
    .trim()
    .to_string())
}

/// Pushes checkpoint `commit` from the cache to the source repository `repo` (a path or
/// a URL) as `refs` [`wip_source_ref`], so a factory with another cache can start from
/// it. A factory needs push access to its sources anyway, to publish results.
pub async fn push_checkpoint(
    cache: &Path,
    repo: &str,
    commit: &str,
    source_ref: &str,
) -> Result<()> {
    push_to_source(cache, repo, commit, source_ref).await
}

/// Pushes `commit` from `cache` to the ref `source_ref` (a full ref name) of the source
/// repository `repo` (a path or a URL), replacing whatever the ref held. The one push
/// of the crate: checkpoints, published results and deliveries all go through it.
pub async fn push_to_source(
    cache: &Path,
    repo: &str,
    commit: &str,
    source_ref: &str,
) -> Result<()> {
    push_refspec(cache, repo, &format!("{commit}:{source_ref}")).await?;
    Ok(())
}

/// `git push --force` of one `refspec` from `cache` to the source repository `repo` (a
/// path or a URL), without hooks: `<commit>:<ref>` sets a ref, `:<ref>` deletes it.
async fn push_refspec(cache: &Path, repo: &str, refspec: &str) -> Result<String> {
    let target = repo_arg(repo);
    git(
        cache,
        [
            OsStr::new("push"),
            OsStr::new("--quiet"),
            OsStr::new("--force"),
            OsStr::new("--no-verify"),
            OsStr::new("--"),
            target.as_os_str(),
            OsStr::new(refspec),
        ],
    )
    .await
}

/// `git fetch` of one `refspec` from the source repository `repo` into `cache`, without
/// touching FETCH_HEAD.
async fn fetch_refspec(cache: &Path, repo: &str, refspec: &str) -> Result<String> {
    let source = repo_arg(repo);
    git(
        cache,
        [
            OsStr::new("fetch"),
            OsStr::new("--quiet"),
            OsStr::new("--no-write-fetch-head"),
            OsStr::new("--"),
            source.as_os_str(),
            OsStr::new(refspec),
        ],
    )
    .await
}

/// Publishes the commit of a succeeded run for the server to deliver: pushes `commit`
/// from `cache` to [`gantry_core::api::result_ref`] of `run` in the source repository
/// `repo` and returns that ref. The ref is run-unique, so a stale factory can never
/// move another run's result, and the server only ever fetches the ref of the run
/// whose fenced finish it accepted.
pub async fn publish_result(
    cache: &Path,
    repo: &str,
    commit: &str,
    run: gantry_core::RunId,
) -> Result<String> {
    let source_ref = gantry_core::api::result_ref(run);
    push_to_source(cache, repo, commit, &source_ref)
        .await
        .map_err(|e| WorkspaceError::Repo {
            repo: repo.to_string(),
            message: format!("publishing {commit} at {source_ref} failed: {e}"),
        })?;
    Ok(source_ref)
}

/// Makes sure checkpoint `commit` of `job` is in the cache of `repo` (creating the
/// cache if needed), fetching the source's checkpoint refs of the job when it is not.
/// Returns whether the commit is there.
pub async fn fetch_checkpoint(
    data_dir: &Path,
    repo: &str,
    job: gantry_core::JobId,
    commit: &str,
) -> Result<bool> {
    let data_dir = &absolute(data_dir);
    check_full_commit("checkpoint commit", commit)?;
    let cache = cache_dir(data_dir, repo);
    let lock = cache_lock(&cache);
    let _held = lock.lock().await;
    let (cache, _) = if cache.join("HEAD").is_file() {
        (cache, false)
    } else {
        ensure_cache(data_dir, repo, true).await?
    };
    if resolve_commit(&cache, commit).await?.is_some() {
        return Ok(true);
    }
    let refspec = format!("+refs/gantry/wip/{job}/*:refs/gantry/wip/{job}/*");
    let fetched = fetch_refspec(&cache, repo, &refspec).await;
    if let Err(e) = fetched {
        tracing::warn!(error = %e, "fetching the checkpoint refs failed");
    }
    Ok(resolve_commit(&cache, commit).await?.is_some())
}

/// Removes the worktree at `path` from `cache` (its branch stays in the cache), and the
/// directory itself whatever git thinks of it.
pub async fn remove_worktree(cache: &Path, path: &Path) -> Result<()> {
    let path = &absolute(path);
    let lock = cache_lock(cache);
    let _held = lock.lock().await;
    let removed = git(
        cache,
        [
            OsStr::new("worktree"),
            OsStr::new("remove"),
            OsStr::new("--force"),
            OsStr::new("--force"),
            path.as_os_str(),
        ],
    )
    .await;
    if tokio::fs::symlink_metadata(path).await.is_ok() {
        tokio::fs::remove_dir_all(path)
            .await
            .map_err(io_err("cannot remove worktree", path))?;
    }
    if let Err(e) = removed {
        tracing::debug!(error = %e, "git worktree remove failed; directory removed by hand");
        git(cache, ["worktree", "prune"]).await?;
    }
    Ok(())
}

/// Pushes `commit` from the cache of `source_repo` to the source repo as
/// `refs/heads/<branch>`, replacing whatever the branch held. The commit must be in the
/// cache (a run of a factory sharing this data dir); see [`deliver_published`] for a
/// commit a factory elsewhere published in the source.
///
/// Called by the server after a successful, fenced finish, under its own per-repository
/// lock: this is the one place a shared ref is written.
pub async fn deliver(
    data_dir: &Path,
    source_repo: &str,
    commit: &str,
    branch: &str,
) -> Result<(), WorkspaceError> {
    deliver_published(data_dir, source_repo, commit, branch, None).await
}

/// Like [`deliver`], for a commit that may have been made by a factory with another
/// data dir: when `commit` is not in the cache and `published` names where the factory
/// published it in the source ([`gantry_core::api::result_ref`]), the ref is fetched
/// into the cache first (the cache is cloned when there is none), and the fetched
/// commit must be `commit`. The published ref is left in place: [`remove_published`]
/// removes it once the caller is done with it.
pub async fn deliver_published(
    data_dir: &Path,
    source_repo: &str,
    commit: &str,
    branch: &str,
    published: Option<&str>,
) -> Result<(), WorkspaceError> {
    let data_dir = &absolute(data_dir);
    check_full_commit("commit", commit)?;
    if branch.starts_with('-') || branch.starts_with("refs/") {
        return Err(WorkspaceError::Invalid {
            field: "branch",
            value: branch.to_string(),
            reason: "expected a branch name such as `gantry/12`".to_string(),
        });
    }
    let refname = format!("refs/heads/{branch}");
    if !valid_ref_name(&refname).await? {
        return Err(WorkspaceError::Invalid {
            field: "branch",
            value: branch.to_string(),
            reason: "not a valid git branch name".to_string(),
        });
    }
    if let Some(published) = published {
        check_result_ref(published).await?;
    }
    let cache = cache_dir(data_dir, source_repo);
    let lock = cache_lock(&cache);
    let _held = lock.lock().await;
    if !cache.join("HEAD").is_file() {
        if published.is_none() {
            return Err(WorkspaceError::Repo {
                repo: source_repo.to_string(),
                message: format!("no cache at {}: nothing was run from it", cache.display()),
            });
        }
        ensure_cache(data_dir, source_repo, false).await?;
    }
    if resolve_commit(&cache, commit).await?.is_none() {
        let Some(published) = published else {
            return Err(WorkspaceError::Invalid {
                field: "commit",
                value: commit.to_string(),
                reason: format!("no such commit in the cache {}", cache.display()),
            });
        };
        fetch_published(&cache, source_repo, commit, published).await?;
    }
    push_to_source(&cache, source_repo, commit, &refname)
        .await
        .map_err(|e| WorkspaceError::Repo {
            repo: source_repo.to_string(),
            message: format!("pushing {commit} as {branch} failed: {e}"),
        })
}

/// Fetches the published ref `published` of `source_repo` into `cache` and checks that
/// it holds `commit`. The cache's copy of the ref is removed again either way: the
/// delivered branch is what keeps the commit, in the source.
async fn fetch_published(
    cache: &Path,
    source_repo: &str,
    commit: &str,
    published: &str,
) -> Result<()> {
    let refspec = format!("+{published}:{published}");
    let fetched = fetch_refspec(cache, source_repo, &refspec)
        .await
        .map_err(|e| WorkspaceError::Repo {
            repo: source_repo.to_string(),
            message: format!(
                "commit {commit} is not in the cache {} and fetching {published} from the \
             source failed: {e}",
                cache.display()
            ),
        });
    let found = match fetched {
        Ok(_) => resolve_commit(cache, published).await,
        Err(e) => Err(e),
    };
    if let Err(e) = git(cache, ["update-ref", "-d", published]).await {
        tracing::debug!(error = %e, "cannot remove the fetched result ref from the cache");
    }
    match found? {
        Some(found) if found.eq_ignore_ascii_case(commit) => Ok(()),
        Some(found) => Err(WorkspaceError::Invalid {
            field: "commit",
            value: commit.to_string(),
            reason: format!(
                "the source's {published} holds {found}, not the reported commit: nothing \
                 delivered"
            ),
        }),
        None => Err(WorkspaceError::Invalid {
            field: "commit",
            value: commit.to_string(),
            reason: format!("the source's {published} names no commit: nothing delivered"),
        }),
    }
}

/// Removes the published ref `published` ([`gantry_core::api::result_ref`]) from the
/// source repository once the server delivered (or dropped) the result, by pushing its
/// deletion from the cache of `source_repo`.
pub async fn remove_published(
    data_dir: &Path,
    source_repo: &str,
    published: &str,
) -> Result<(), WorkspaceError> {
    check_result_ref(published).await?;
    let cache = cache_dir(&absolute(data_dir), source_repo);
    if !cache.join("HEAD").is_file() {
        return Err(WorkspaceError::Repo {
            repo: source_repo.to_string(),
            message: format!(
                "no cache at {} to remove {published} from the source with",
                cache.display()
            ),
        });
    }
    remove_source_ref(&cache, source_repo, published).await
}

/// Deletes `source_ref` in the source repository `repo` with a push from `cache`.
pub async fn remove_source_ref(cache: &Path, repo: &str, source_ref: &str) -> Result<()> {
    push_refspec(cache, repo, &format!(":{source_ref}"))
        .await
        .map_err(|e| WorkspaceError::Repo {
            repo: repo.to_string(),
            message: format!("removing {source_ref} failed: {e}"),
        })?;
    Ok(())
}

/// Removes the result ref `published` (`refs/gantry/results/<run>`; any other name is
/// refused) from the source repository `source_repo` if it is there, and says whether
/// it removed it. Needs no cache of the source: git runs in an empty bare repository
/// of the data dir. A ref that is absent, or that went away meanwhile (another server
/// removed it), is `Ok(false)`, not an error.
pub async fn remove_result_ref(
    data_dir: &Path,
    source_repo: &str,
    published: &str,
) -> Result<bool, WorkspaceError> {
    check_result_ref(published).await?;
    let dir = empty_repo(&absolute(data_dir)).await?;
    if !source_has_ref(&dir, source_repo, published).await? {
        return Ok(false);
    }
    match remove_source_ref(&dir, source_repo, published).await {
        Ok(()) => Ok(true),
        // The deletion of a ref that is already gone fails: only then is it no error.
        Err(e) if !source_has_ref(&dir, source_repo, published).await? => {
            tracing::debug!(error = %e, %published, "the result ref went away meanwhile");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Whether the source repository `repo` has the ref `refname` (a full ref name), asked
/// with one `git ls-remote` from `dir`.
async fn source_has_ref(dir: &Path, repo: &str, refname: &str) -> Result<bool> {
    let target = repo_arg(repo);
    let listed = git(
        dir,
        [
            OsStr::new("ls-remote"),
            OsStr::new("--"),
            target.as_os_str(),
            OsStr::new(refname),
        ],
    )
    .await
    .map_err(|e| WorkspaceError::Repo {
        repo: repo.to_string(),
        message: format!("listing {refname} failed: {e}"),
    })?;
    // A pattern also matches refs that end with it (`refs/x/<refname>`): compare whole.
    Ok(listed.lines().any(|line| {
        line.split_once('\t')
            .is_some_and(|(_, name)| name == refname)
    }))
}

/// The empty bare repository `<data>/repos/.empty.git` (hidden, so never taken for a
/// cache), created on first use: git needs a repository to push from, and a deletion
/// carries no objects. `git init` on an existing repository changes nothing and
/// completes one a crash left half made, so it needs no temporary place.
async fn empty_repo(data_dir: &Path) -> Result<PathBuf> {
    let repos = data_dir.join("repos");
    let dir = repos.join(".empty.git");
    let lock = cache_lock(&dir);
    let _held = lock.lock().await;
    if dir.join("HEAD").is_file() {
        return Ok(dir);
    }
    tokio::fs::create_dir_all(&repos)
        .await
        .map_err(io_err("cannot create directory", &repos))?;
    git(
        &repos,
        [
            OsStr::new("init"),
            OsStr::new("--bare"),
            OsStr::new("--quiet"),
            OsStr::new("--"),
            dir.as_os_str(),
        ],
    )
    .await?;
    Ok(dir)
}

/// Refuses anything but a full commit id (40 or 64 hex digits) for `field`.
fn check_full_commit(field: &'static str, commit: &str) -> Result<()> {
    let hex = commit.chars().all(|c| c.is_ascii_hexdigit());
    if hex && (commit.len() == 40 || commit.len() == 64) {
        Ok(())
    } else {
        Err(WorkspaceError::Invalid {
            field,
            value: commit.to_string(),
            reason: "expected a full commit id (40 or 64 hex digits)".to_string(),
        })
    }
}

/// Whether git accepts `refname` (a full ref name, so never option-like) as a ref name.
async fn valid_ref_name(refname: &str) -> Result<bool> {
    let check = git_status(Path::new("/"), ["check-ref-format", refname], &[]).await?;
    Ok(check.code == Some(0))
}

/// Where result refs live in a source repository ([`gantry_core::api::result_ref`]).
const RESULT_REF_PREFIX: &str = "refs/gantry/results/";

/// Refuses a published ref that is not a result ref (`refs/gantry/results/<run>`): the
/// server fetches and deletes it in the source, so it must never name anything else.
async fn check_result_ref(published: &str) -> Result<()> {
    let run = published
        .strip_prefix(RESULT_REF_PREFIX)
        .and_then(|r| r.parse::<gantry_core::RunId>().ok());
    // Round-tripping through `result_ref` refuses leading zeros, spaces and the like.
    match run {
        Some(run) if gantry_core::api::result_ref(run) == published => Ok(()),
        _ => Err(WorkspaceError::Invalid {
            field: "result_ref",
            value: published.to_string(),
            reason: format!("expected {RESULT_REF_PREFIX}<run id>"),
        }),
    }
}

/// What [`prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Worktree directories removed because no live run used them.
    pub removed: Vec<PathBuf>,
    /// Every cache with its disk use after pruning.
    pub caches: Vec<CacheUsage>,
}

/// Disk use of one bare cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheUsage {
    /// The cache directory.
    pub path: PathBuf,
    /// Bytes used by its files.
    pub bytes: u64,
}

/// The worktrees in use: those of runs of this process, and `recorded`, those the
/// factory's run records name (a record is removed only once its run is wrapped up or
/// dropped, so its worktree may still be needed by the factory that adopts it).
fn live_worktree_set(recorded: &[PathBuf]) -> HashSet<PathBuf> {
    let mut live = live_worktrees()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    live.extend(recorded.iter().map(|w| absolute(w)));
    live
}

fn dir_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Whether `name` is a temporary clone (`.tmp-<cache>-<pid>`) whose process is gone.
fn is_stale_clone(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(".tmp-") else {
        return false;
    };
    match rest
        .rsplit_once('-')
        .and_then(|(_, pid)| pid.parse::<i32>().ok())
    {
        Some(pid) => !Path::new("/proc").join(pid.to_string()).exists(),
        None => false,
    }
}

/// The bare caches under `<data>/repos`.
async fn caches(data_dir: &Path) -> Result<Vec<PathBuf>, WorkspaceError> {
    let repos = data_dir.join("repos");
    let mut out = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(&repos).await else {
        return Ok(out);
    };
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(io_err("cannot list", &repos))?
    {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.join("HEAD").is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Disk use of every bare cache under `<data>/repos`, sorted by path.
pub async fn cache_usage(data_dir: &Path) -> Result<Vec<CacheUsage>, WorkspaceError> {
    let mut out = Vec::new();
    for path in caches(data_dir).await? {
        let p = path.clone();
        let bytes = tokio::task::spawn_blocking(move || dir_size(&p))
            .await
            .unwrap_or(0);
        out.push(CacheUsage { path, bytes });
    }
    Ok(out)
}

/// Removes what no live run uses: worktrees and other leftovers under `<data>/work`
/// (worktrees of runs neither of this process nor named by a run record, and pid files
/// of older versions), temporary clones under `<data>/repos` whose process is gone;
/// prunes the worktree bookkeeping of every cache (`git worktree prune`) and reports
/// each cache's disk use.
///
/// The factory runs it at start, after adopting the runs of its previous incarnation
/// (so their worktrees are kept), with `recorded` the worktrees its run records name.
pub async fn prune(data_dir: &Path, recorded: &[PathBuf]) -> Result<PruneReport, WorkspaceError> {
    let mut report = PruneReport::default();
    let live = live_worktree_set(recorded);
    let work = data_dir.join("work");
    if let Ok(mut entries) = tokio::fs::read_dir(&work).await {
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(io_err("cannot list", &work))?
        {
            let path = entry.path();
            let is_dir = entry.file_type().await.is_ok_and(|t| t.is_dir());
            if is_dir {
                if live.contains(&absolute(&path)) {
                    continue;
                }
                tokio::fs::remove_dir_all(&path)
                    .await
                    .map_err(io_err("cannot remove worktree", &path))?;
            } else {
                tokio::fs::remove_file(&path)
                    .await
                    .map_err(io_err("cannot remove leftover file", &path))?;
            }
            report.removed.push(path);
        }
    }
    let repos = data_dir.join("repos");
    if let Ok(mut entries) = tokio::fs::read_dir(&repos).await {
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(io_err("cannot list", &repos))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_stale_clone(&name) {
                let path = entry.path();
                tokio::fs::remove_dir_all(&path)
                    .await
                    .map_err(io_err("cannot remove stale clone", &path))?;
                report.removed.push(path);
            }
        }
    }
    for cache in caches(data_dir).await? {
        let lock = cache_lock(&cache);
        let _held = lock.lock().await;
        git(&cache, ["worktree", "prune"]).await?;
    }
    report.caches = cache_usage(data_dir).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue4_a_diff_that_fits_is_reported_whole_and_lossy() {
        assert_eq!(cut_diff(b"+a\n-b\n", 6, 1000), "+a\n-b\n");
        assert_eq!(cut_diff(b"", 0, 1000), "");
        let text = cut_diff(b"+caf\xe9\n", 6, 1000);
        assert_eq!(text, "+caf\u{fffd}\n");
    }

    #[test]
    fn issue4_a_long_diff_is_cut_at_a_line_end_and_marked() {
        let line = "+0123456789abcdef\n";
        let patch = line.repeat(100);
        let max = CUT_MARKER_ROOM + 50;
        let text = cut_diff(patch.as_bytes(), patch.len() as u64, max);
        assert!(text.len() <= max, "{} > {max}", text.len());
        let (kept, marker) = text.split_at(text.find("[gantry:").expect("a marker"));
        assert_eq!(kept, line.repeat(50 / line.len()));
        assert!(
            marker.contains("diff cut") && marker.contains(&patch.len().to_string()),
            "{marker}"
        );
        assert!(marker.ends_with('\n'));
        // Only the first bytes were read: the size still comes from the file.
        let text = cut_diff(&patch.as_bytes()[..max], 1 << 30, max);
        assert!(text.contains(&(1u64 << 30).to_string()), "{text}");
    }

    #[test]
    fn issue4_a_cut_never_outgrows_the_limit_with_replaced_bytes_or_no_line_end() {
        let max = CUT_MARKER_ROOM + 64;
        // Every invalid byte becomes three bytes of text.
        let bad = vec![0xffu8; max];
        let text = cut_diff(&bad, bad.len() as u64, max);
        assert!(text.len() <= max, "{} > {max}", text.len());
        assert!(
            text.starts_with('\u{fffd}') && text.contains("diff cut"),
            "{text}"
        );
        let one_line = "x".repeat(max * 2);
        let text = cut_diff(one_line.as_bytes(), one_line.len() as u64, max);
        assert!(text.len() <= max, "{} > {max}", text.len());
        assert!(
            text.starts_with("xxx") && text.contains("diff cut"),
            "{text}"
        );
    }
}
