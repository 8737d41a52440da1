//! One worktree per attempt: preparing it on the attempt branch, the agent's own
//! repository in it, the environment that names it from the cache's side, the live set
//! and removal.

use crate::cache::{SOURCE_HEAD_REF, cache_dir, cache_lock, ensure_cache};
use crate::check;
use crate::error::{Result, WorkspaceError, io_err};
use crate::runner::{absolute, git, git_stdin, resolve_commit};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The environment that points git at the worktree `worktree` of `cache` through the
/// worktree's administrative directory in the cache, found from the cache's side.
///
/// A run may write anything in its worktree, including the `.git` file that tells git
/// where the repository is: followed, it could name a repository the run made, whose
/// configuration (`core.fsmonitor`, filters) git would execute as the factory, outside
/// the sandbox. So the factory never lets git discover the repository from the
/// worktree: it names the directory itself, from the cache's records, which no run can
/// see.
pub(crate) async fn worktree_env(
    cache: &Path,
    worktree: &Path,
) -> Result<[(&'static str, String); 2]> {
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

/// Worktrees in use by runs of this process; [`prune`] never touches them.
pub(crate) fn live_worktrees() -> &'static Mutex<HashSet<PathBuf>> {
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
    let (_held, cache, rev) = fetched(data_dir, repo, base).await?;
    let rev = rev.as_str();
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io_err("cannot create directory", parent))?;
    }
    // Leftovers of a crashed incarnation at the same path would make `worktree add` fail.
    if tokio::fs::symlink_metadata(path).await.is_ok() {
        force_remove(&cache, path, "cannot remove the old worktree").await?;
        git(&cache, ["worktree", "prune"]).await?;
    }
    let staging = staging_dir(path);
    if tokio::fs::symlink_metadata(&staging).await.is_ok() {
        tokio::fs::remove_dir_all(&staging)
            .await
            .map_err(io_err("cannot remove the old staging directory", &staging))?;
    }
    // `worktree add` resolves the base itself: one git process instead of a rev-parse
    // before it, which matters because this is on the path from claim to process start.
    // The agent's own repository is made beside it at the same time.
    let (added, staged) = tokio::join!(
        git(
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
        ),
        stage_agent_repo(&cache, &staging, rev, branch),
    );
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
    let staged = staged?;
    // Both resolved `rev` in the cache under its lock: they cannot differ.
    if staged != base_commit {
        return Err(WorkspaceError::Invalid {
            field: "the agent's repository",
            value: staged,
            reason: format!("the worktree was made at {base_commit}"),
        });
    }
    agent_repo(path, &staging).await?;
    Ok(Prepared { cache, base_commit })
}

/// Where the agent's own repository of the worktree at `path` is made before it moves
/// in: beside the worktree, on the same file system.
pub(crate) fn staging_dir(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(STAGING_SUFFIX);
    path.with_file_name(name)
}

/// The suffix of [`staging_dir`]'s name: what `prune` keeps while its worktree is live.
pub(crate) const STAGING_SUFFIX: &str = ".agent-git";

/// Makes, in `staging`, the repository the agent's worktree will have as its own: the
/// commit `rev` names in `cache` with its tree and nothing else (shallow), on `branch`.
/// Returns the commit.
///
/// The objects are packed straight from the cache into the new repository: one
/// `pack-objects` of the commit's objects instead of a fetch (an upload-pack and an
/// index-pack talking a protocol), which is on the path from claim to process start.
async fn stage_agent_repo(cache: &Path, staging: &Path, rev: &str, branch: &str) -> Result<String> {
    tokio::fs::create_dir_all(staging)
        .await
        .map_err(io_err("cannot create directory", staging))?;
    let commit_of = format!("{rev}^{{commit}}");
    let (init, objects) = tokio::join!(
        git(
            staging,
            ["init", "--quiet", "--template=", "--initial-branch", branch,],
        ),
        git(
            cache,
            [
                "rev-list",
                "--objects",
                "--no-walk",
                "--end-of-options",
                &commit_of
            ],
        ),
    );
    init?;
    let objects = objects?;
    // The first object `rev-list --objects` names is the commit itself.
    let commit = objects
        .lines()
        .next()
        .and_then(|l| l.split(' ').next())
        .unwrap_or_default()
        .to_string();
    crate::refs::check_full_commit("the commit git rev-list named", &commit)?;
    let git_dir = staging.join(".git");
    let pack_base = git_dir.join("objects/pack/pack");
    git_stdin(
        cache,
        [
            OsStr::new("pack-objects"),
            OsStr::new("-q"),
            pack_base.as_os_str(),
        ],
        &objects,
    )
    .await?;
    // The repository holds no parent of the commit: `shallow` says so to git.
    let shallow = git_dir.join("shallow");
    tokio::fs::write(&shallow, format!("{commit}\n"))
        .await
        .map_err(io_err("cannot write", &shallow))?;
    git(
        staging,
        ["update-ref", &format!("refs/heads/{branch}"), &commit],
    )
    .await?;
    Ok(commit)
}

/// Takes the lock of `repo`'s cache (held until the guard is dropped), brings the cache
/// up to date, and returns it with the rev that names `base` in it.
async fn fetched(
    data_dir: &Path,
    repo: &str,
    base: Option<&str>,
) -> Result<(tokio::sync::OwnedMutexGuard<()>, PathBuf, String)> {
    valid_base(base)?;
    let held = cache_lock(&cache_dir(data_dir, repo)).lock_owned().await;
    let (cache, fresh) = ensure_cache(data_dir, repo, base.is_none()).await?;
    let rev = match base {
        Some(b) => b.to_string(),
        None if fresh => "HEAD".to_string(),
        None => SOURCE_HEAD_REF.to_string(),
    };
    Ok((held, cache, rev))
}

/// Refuses a base that could be taken for an option or is no ref name at all.
fn valid_base(base: Option<&str>) -> Result<()> {
    match base {
        Some(b) if !check::base_is_valid(b) => Err(WorkspaceError::Invalid {
            field: "base",
            value: b.to_string(),
            reason:
                "a base is a branch, tag or commit: non-empty, no spaces, not starting with `-`"
                    .to_string(),
        }),
        _ => Ok(()),
    }
}

/// Brings the cache of `repo` up to date with its source and returns the commit its
/// `base` names now (the source's HEAD when `None`): the current tip a result is
/// checked against before it is delivered. Fetches exactly as [`prepare`] does.
pub async fn fetch_base(data_dir: &Path, repo: &str, base: Option<&str>) -> Result<String> {
    let data_dir = &absolute(data_dir);
    let (_held, cache, rev) = fetched(data_dir, repo, base).await?;
    let rev = format!("{rev}^{{commit}}");
    match git(&cache, ["rev-parse", "--verify", "--quiet", &rev]).await {
        Ok(out) => Ok(out.trim().to_string()),
        Err(_) => Err(WorkspaceError::UnknownBase {
            repo: repo.to_string(),
            base: base.unwrap_or("HEAD").to_string(),
        }),
    }
}

/// Gives the worktree `path` a repository of its own for the agent, in place of the
/// `.git` file that links it to the cache: the shallow repository of the attempt's
/// start made in `staging` ([`stage_agent_repo`]), with the index matching the
/// checkout so that `git status` is clean.
///
/// The cache holds every job's branches and objects, so it must stay out of the
/// sandbox; yet agents expect `git status`, `git diff` and `git commit` to work in
/// their checkout. The agent's repository is never read by the factory, which
/// commits the worktree's files through the cache's own record of the worktree
/// ([`worktree_env`]): what an agent does to its repository (commits, a moved HEAD,
/// hostile configuration) changes nothing of what the attempt delivers.
async fn agent_repo(path: &Path, staging: &Path) -> Result<()> {
    let dot_git = path.join(".git");
    tokio::fs::remove_file(&dot_git)
        .await
        .map_err(io_err("cannot replace the worktree's link", &dot_git))?;
    let staged = staging.join(".git");
    tokio::fs::rename(&staged, &dot_git)
        .await
        .map_err(io_err("cannot move the agent's repository into", path))?;
    tokio::fs::remove_dir(staging)
        .await
        .map_err(io_err("cannot remove", staging))?;
    // The index from HEAD, with the stat data of the files `worktree add` wrote, so
    // that `git status` is fast and quiet: one `reset` is a `read-tree` and a refresh.
    git(path, ["reset", "--quiet"]).await?;
    Ok(())
}

/// Removes the worktree at `path` from `cache` (its branch stays in the cache), and the
/// directory itself whatever git thinks of it.
pub async fn remove_worktree(cache: &Path, path: &Path) -> Result<()> {
    let path = &absolute(path);
    let lock = cache_lock(cache);
    let _held = lock.lock().await;
    // A prepared worktree is its agent's own repository (see `agent_repo`), which
    // `git worktree remove` refuses: the directory goes by hand, then git forgets it.
    if tokio::fs::symlink_metadata(path).await.is_ok() {
        tokio::fs::remove_dir_all(path)
            .await
            .map_err(io_err("cannot remove worktree", path))?;
    }
    git(cache, ["worktree", "prune"]).await?;
    Ok(())
}

/// `git worktree remove --force --force` of `path` in `cache`, then the directory by
/// hand if git left it (`action` names that removal in its error). Says whether git
/// removed the worktree; when it did not, its bookkeeping wants a `worktree prune`.
async fn force_remove(cache: &Path, path: &Path, action: &'static str) -> Result<bool> {
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
            .map_err(io_err(action, path))?;
    }
    if let Err(e) = &removed {
        tracing::debug!(error = %e, "git worktree remove failed; directory removed by hand");
    }
    Ok(removed.is_ok())
}
