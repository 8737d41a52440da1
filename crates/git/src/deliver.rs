//! Delivery of a finished run's commit to the source repo as `gantry/<job>`: the one
//! place a shared ref is written, called by the server after a fenced finish.

use crate::cache::{cache_dir, cache_lock, ensure_cache};
use crate::error::{Result, WorkspaceError};
use crate::refs::{
    check_full_commit, check_result_ref, fetch_refspec, push_to_source, valid_ref_name,
};
use crate::runner::{absolute, git, resolve_commit};
use std::path::Path;

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
/// commit must be `commit`. The published ref is left in place: [`remove_published`](crate::remove_published)
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
