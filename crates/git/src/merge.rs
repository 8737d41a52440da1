//! The conflict check of a result against the current tip of its base, the rebase of a
//! result that is clean but behind, and reading a file of a commit (the repository's
//! own gates file, from the base, never from the agent's branch).
//!
//! Everything runs in the bare cache (`git merge-tree --write-tree` needs no worktree),
//! except the last step of a rebase, which moves the run's worktree onto the rebased
//! commit so the gates run again on exactly the tree that will be delivered.

use crate::error::{Result, WorkspaceError, io_err};
use crate::refs::check_full_commit;
use crate::runner::{IDENTITY, git, git_command, git_env, git_status};
use crate::worktree::worktree_env;
use std::path::Path;
use std::process::Stdio;

/// How a result stands against the current tip of its base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeCheck {
    /// The base has not moved past the result's own base: deliver as it is.
    UpToDate,
    /// The base moved on and the result still merges cleanly: the tree of the merge.
    Behind {
        /// The tree of the result applied on the current tip.
        merged_tree: String,
    },
    /// The base moved on and the result conflicts with it in these paths.
    Conflicts {
        /// The conflicting paths, sorted.
        paths: Vec<String>,
    },
}

/// Checks whether `result` (a commit in `cache`) merges onto `tip` (the base's current
/// commit, fetched into `cache`).
pub async fn merge_check(cache: &Path, tip: &str, result: &str) -> Result<MergeCheck> {
    check_full_commit("tip", tip)?;
    check_full_commit("result", result)?;
    let ancestor = git_status(cache, ["merge-base", "--is-ancestor", tip, result], &[]).await?;
    match ancestor.code {
        Some(0) => return Ok(MergeCheck::UpToDate),
        Some(1) => {}
        code => {
            return Err(WorkspaceError::Git {
                args: format!("merge-base --is-ancestor {tip} {result}"),
                dir: cache.to_path_buf(),
                code,
                stderr: ancestor.stderr,
            });
        }
    }
    // `-z` keeps odd path names intact; `--name-only` lists each conflicted path once,
    // after the tree; `--no-messages` leaves out the informational section.
    let out = git_status(
        cache,
        [
            "merge-tree",
            "--write-tree",
            "--name-only",
            "--no-messages",
            "-z",
            tip,
            result,
        ],
        &[],
    )
    .await?;
    let mut fields = out.stdout.split('\0').filter(|f| !f.is_empty());
    let tree = fields.next().unwrap_or_default().trim().to_string();
    match out.code {
        Some(0) => Ok(MergeCheck::Behind { merged_tree: tree }),
        Some(1) => {
            let mut paths: Vec<String> = fields.map(str::to_string).collect();
            paths.sort();
            paths.dedup();
            Ok(MergeCheck::Conflicts { paths })
        }
        code => Err(WorkspaceError::Git {
            args: format!("merge-tree --write-tree {tip} {result}"),
            dir: cache.to_path_buf(),
            code,
            stderr: out.stderr,
        }),
    }
}

/// Makes the rebased result: a commit of `merged_tree` on top of `tip`, named by
/// `branch` in the cache, with the run's worktree moved onto it (index and files), so
/// the gates run again on exactly what will be delivered. Returns the commit.
pub async fn rebase_result(
    cache: &Path,
    worktree: &Path,
    branch: &str,
    tip: &str,
    merged_tree: &str,
    message: &str,
) -> Result<String> {
    check_full_commit("tip", tip)?;
    let commit = git_env(
        cache,
        ["commit-tree", merged_tree, "-p", tip, "-m", message],
        IDENTITY,
    )
    .await?
    .trim()
    .to_string();
    git(
        cache,
        ["update-ref", &format!("refs/heads/{branch}"), &commit],
    )
    .await?;
    let wt = worktree_env(cache, worktree).await?;
    let wt: Vec<(&str, &str)> = wt.iter().map(|(k, v)| (*k, v.as_str())).collect();
    git_env(worktree, ["reset", "--hard", "--quiet", &commit], &wt).await?;
    Ok(commit)
}

/// The content of `path` in `commit` of `cache`, or `None` when the commit has no such
/// file. Refused when larger than `max` bytes, so a hostile repository cannot make the
/// factory read a huge blob.
pub async fn file_at(cache: &Path, commit: &str, path: &str, max: u64) -> Result<Option<String>> {
    check_full_commit("commit", commit)?;
    let spec = format!("{commit}:{path}");
    let size = git_status(cache, ["cat-file", "-s", &spec], &[]).await?;
    if size.code != Some(0) {
        // A missing path (or a path that is a directory's) is no file.
        return Ok(None);
    }
    let bytes: u64 = size.stdout.trim().parse().unwrap_or(u64::MAX);
    if bytes > max {
        return Err(WorkspaceError::Invalid {
            field: "file",
            value: spec,
            reason: format!("{bytes} bytes; at most {max} are read"),
        });
    }
    let kind = git(cache, ["cat-file", "-t", &spec]).await?;
    if kind.trim() != "blob" {
        return Ok(None);
    }
    Ok(Some(git(cache, ["cat-file", "blob", &spec]).await?))
}

/// Writes the files of `commit` of `cache` into the empty directory `dest`, with no git
/// metadata: a reviewer's copy of a result, which nothing it does there can change.
pub async fn export_tree(cache: &Path, commit: &str, dest: &Path) -> Result<()> {
    check_full_commit("commit", commit)?;
    let (mut archive, shown) = git_command(cache, ["archive", "--format=tar", commit]);
    let mut archive = archive
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| WorkspaceError::Spawn {
            args: shown.clone(),
            dir: cache.to_path_buf(),
            source,
        })?;
    let tar_in: Stdio = archive
        .stdout
        .take()
        .ok_or_else(|| WorkspaceError::Invalid {
            field: "archive",
            value: shown.clone(),
            reason: "git's output is not piped".to_string(),
        })?
        .try_into()
        .map_err(io_err("cannot pipe git's output", cache))?;
    let untar = tokio::process::Command::new("tar")
        .arg("-x")
        .arg("--no-same-owner")
        .arg("-C")
        .arg(dest)
        .stdin(tar_in)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(io_err("cannot run tar into", dest))?;
    let archived = archive
        .wait_with_output()
        .await
        .map_err(io_err("cannot wait for git archive in", cache))?;
    if !archived.status.success() {
        return Err(WorkspaceError::Git {
            args: shown,
            dir: cache.to_path_buf(),
            code: archived.status.code(),
            stderr: String::from_utf8_lossy(&archived.stderr).trim().to_string(),
        });
    }
    if !untar.status.success() {
        return Err(WorkspaceError::Io {
            action: "tar could not unpack the result into",
            path: dest.to_path_buf(),
            source: std::io::Error::other(
                String::from_utf8_lossy(&untar.stderr).trim().to_string(),
            ),
        });
    }
    Ok(())
}
