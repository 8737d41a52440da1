//! Pruning what no live run uses under the data dir: worktrees, leftovers and
//! temporary clones.

use crate::cache::{CacheUsage, cache_lock, cache_usage, caches};
use crate::error::{Result, WorkspaceError, io_err};
use crate::runner::{absolute, git};
use crate::worktree::{STAGING_SUFFIX, live_worktrees};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// What [`prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Worktree directories removed because no live run used them.
    pub removed: Vec<PathBuf>,
    /// Every cache with its disk use after pruning.
    pub caches: Vec<CacheUsage>,
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
                // A live worktree's agent repository may be being made beside it.
                let owner = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(STAGING_SUFFIX))
                    .map(|n| path.with_file_name(n));
                if live.contains(&absolute(&path))
                    || owner.is_some_and(|o| live.contains(&absolute(&o)))
                {
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
