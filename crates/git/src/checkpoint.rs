//! Work-in-progress checkpoints of an attempt: committing the worktree without touching
//! its index, pushing the checkpoint to the source and fetching it back elsewhere.

use crate::cache::{cache_dir, cache_lock, ensure_cache};
use crate::error::{Result, WorkspaceError};
use crate::refs::{check_full_commit, fetch_refspec, push_to_source};
use crate::runner::{IDENTITY, absolute, git, git_env, resolve_commit, set_branch};
use crate::worktree::worktree_env;
use std::path::Path;

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
        set_branch(cache, branch, &commit).await?;
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
