//! Refs of the source repo: the one push and fetch of a refspec, ref listing, and the
//! checks on commit ids, branch names and result refs.

use crate::error::{Result, WorkspaceError};
use crate::runner::{git, git_status, repo_arg};
use std::ffi::OsStr;
use std::path::Path;

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
pub(crate) async fn fetch_refspec(cache: &Path, repo: &str, refspec: &str) -> Result<String> {
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

/// Whether the source repository `repo` has the ref `refname` (a full ref name), asked
/// with one `git ls-remote` from `dir`.
pub(crate) async fn source_has_ref(dir: &Path, repo: &str, refname: &str) -> Result<bool> {
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

/// Refuses anything but a full commit id (40 or 64 hex digits) for `field`.
pub(crate) fn check_full_commit(field: &'static str, commit: &str) -> Result<()> {
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
pub(crate) async fn valid_ref_name(refname: &str) -> Result<bool> {
    let check = git_status(Path::new("/"), ["check-ref-format", refname], &[]).await?;
    Ok(check.code == Some(0))
}

/// Where result refs live in a source repository ([`gantry_core::api::result_ref`]).
const RESULT_REF_PREFIX: &str = "refs/gantry/results/";

/// Refuses a published ref that is not a result ref (`refs/gantry/results/<run>`): the
/// server fetches and deletes it in the source, so it must never name anything else.
pub(crate) async fn check_result_ref(published: &str) -> Result<()> {
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
