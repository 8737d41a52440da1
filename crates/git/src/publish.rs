//! Publication of a succeeded run's commit in the source repo under its result ref,
//! and removal of that ref once the server is done with it.

use crate::cache::{cache_dir, empty_repo};
use crate::error::{Result, WorkspaceError};
use crate::refs::{check_result_ref, push_to_source, remove_source_ref, source_has_ref};
use crate::runner::absolute;
use std::path::Path;

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
