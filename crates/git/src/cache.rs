//! The bare cache of each source repo: where it lives, its lock, cloning and fetching it,
//! the empty repository used for ref deletions, and disk use.

use crate::error::{Result, WorkspaceError, io_err};
use crate::runner::{git, repo_arg, update_refs};
use crate::source_state;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Ref under which the source repo's HEAD commit is fetched into the cache.
pub(crate) const SOURCE_HEAD_REF: &str = "refs/gantry/source-head";

/// The bare cache of `repo`: `<data>/repos/<cache_name(repo)>`.
pub fn cache_dir(data_dir: &Path, repo: &str) -> PathBuf {
    data_dir
        .join("repos")
        .join(gantry_core::repo::cache_name(repo))
}

/// The per-cache mutex: one fetch (and worktree bookkeeping) at a time per cache, in
/// this process. Entries are never removed; there is one per repo ever used.
pub(crate) fn cache_lock(cache: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut map = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(cache.to_path_buf()).or_default().clone()
}

/// Makes sure the bare cache of `repo` exists and is up to date; returns its path and
/// whether it was just cloned. The caller holds the cache lock.
pub(crate) async fn ensure_cache(
    data_dir: &Path,
    repo: &str,
    fetch_head: bool,
) -> Result<(PathBuf, bool)> {
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
        fetch_into(&cache, repo, fetch_head).await?;
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
    let tmp = clone_beside(&repos, &cache, repo, local).await?;
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

/// Fetches the source's branches (but the delivered `gantry/*`) and tags into the
/// existing cache `cache` of `repo`, and its HEAD as well when `fetch_head`.
async fn fetch_into(cache: &Path, repo: &str, fetch_head: bool) -> Result<()> {
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
    git(cache, &args).await.map_err(|e| WorkspaceError::Repo {
        repo: repo.to_string(),
        message: format!("fetching into the cache {} failed: {e}", cache.display()),
    })?;
    Ok(())
}

/// Clones `repo` bare into a temporary place beside its cache `cache` under `repos`
/// (without the delivered `gantry/*` branches) and returns that place.
async fn clone_beside(repos: &Path, cache: &Path, repo: &str, local: bool) -> Result<PathBuf> {
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
    let mut cloned = git(repos, clone(if local { &["--local"] } else { &[] })).await;
    if local && cloned.is_err() {
        // `--local` hard-links the objects, which fails when the source and the data
        // dir are on different file systems (a container volume, another disk): copy.
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        cloned = git(repos, clone(&["--local", "--no-hardlinks"])).await;
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
    Ok(tmp)
}

/// The empty bare repository `<data>/repos/.empty.git` (hidden, so never taken for a
/// cache), created on first use: git needs a repository to push from, and a deletion
/// carries no objects. `git init` on an existing repository changes nothing and
/// completes one a crash left half made, so it needs no temporary place.
pub(crate) async fn empty_repo(data_dir: &Path) -> Result<PathBuf> {
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

/// Disk use of one bare cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheUsage {
    /// The cache directory.
    pub path: PathBuf,
    /// Bytes used by its files.
    pub bytes: u64,
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

/// The bare caches under `<data>/repos`.
pub(crate) async fn caches(data_dir: &Path) -> Result<Vec<PathBuf>, WorkspaceError> {
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
