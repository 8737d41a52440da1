//! The check of a job's source at submit: what the server can find out about a repo
//! and its base before any factory claims the job, so a bad `repo` or `base` is a 400
//! naming the field and the value rather than a failed run later.
//!
//! Only what the server itself can read is checked: a local path or a `file:///` URL
//! (that it is a git repository and that `base` names one of its commits). A remote
//! URL is not contacted: the server may be unable to reach a repository its factories
//! can (another network, other credentials), and a submit must not wait on the
//! network, so only its transport is checked.

use crate::error::WorkspaceError;
use crate::runner::git_status;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Transports of remote URLs a job may name: git's built-in ones. Anything else is a
/// remote helper (`<helper>::<address>`, or an unknown `<scheme>://`), which runs a
/// program of its own on every server and factory that fetches the job's repository,
/// with their files and credentials; `ext::` runs any command it names.
const TRANSPORTS: &[&str] = &["http", "https", "git", "ssh", "git+ssh", "ssh+git"];

/// Why a job's source was refused at submit. [`SourceError::field`] says which field
/// of the job file is at fault.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The repo names a transport other than git's built-in ones.
    #[error(
        "repo {repo:?} uses the transport `{transport}`, which is not allowed: use a local \
         path, a file:///, https://, http://, ssh:// or git:// URL, or user@host:path"
    )]
    Transport {
        /// The repo as given.
        repo: String,
        /// The transport it names.
        transport: String,
    },
    /// A local repo path that is relative, with nothing to resolve it against.
    #[error(
        "repo path {repo:?} is relative and the submission gave no absolute `dir` to \
         resolve it against"
    )]
    Relative {
        /// The repo as given.
        repo: String,
    },
    /// A local repo path that does not exist.
    #[error("repo path {repo:?} does not exist")]
    Missing {
        /// The repo as given.
        repo: String,
    },
    /// A local repo path that is not a directory.
    #[error("repo path {repo:?} is not a directory")]
    NotADirectory {
        /// The repo as given.
        repo: String,
    },
    /// A local directory that is not a git repository's top level or a bare repository.
    #[error("repo path {repo:?} is not a git repository (no .git and not bare){detail}")]
    NotARepo {
        /// The repo as given.
        repo: String,
        /// What git said, as `: <stderr>`, or nothing.
        detail: String,
    },
    /// The repository has no commit to start from (no base given, and HEAD names none).
    #[error(
        "repo {repo:?} has no commits: its HEAD names no commit, so a job without a `base` \
         has nothing to start from"
    )]
    NoCommits {
        /// The repo as given.
        repo: String,
    },
    /// A base that is not a branch, tag or commit name at all.
    #[error(
        "invalid base {base:?}: a base is a branch, tag or commit: non-empty, no spaces, \
         not starting with `-`"
    )]
    BadBase {
        /// The base as given.
        base: String,
    },
    /// A base that names no commit of the repository.
    #[error("base {base:?} not found in repo {repo:?}: no branch, tag or commit of that name")]
    UnknownBase {
        /// The repo as given.
        repo: String,
        /// The base as given.
        base: String,
    },
    /// A base that names a ref factories do not fetch (only branches and tags are).
    #[error(
        "base {base:?} of repo {repo:?} is the ref {full_ref}, which factories do not fetch: \
         name a branch, a tag or a commit"
    )]
    UnfetchedBase {
        /// The repo as given.
        repo: String,
        /// The base as given.
        base: String,
        /// The full name of the ref it names.
        full_ref: String,
    },
    /// git could not be run: a fault of the server, not of the job.
    #[error("cannot check repo {repo:?}: {source}")]
    Git {
        /// The repo as given.
        repo: String,
        /// What failed.
        #[source]
        source: WorkspaceError,
    },
}

/// The field of a job file a [`SourceError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceField {
    /// `repo`.
    Repo,
    /// `base`.
    Base,
}

impl SourceField {
    /// The field's name in a job file.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceField::Repo => "repo",
            SourceField::Base => "base",
        }
    }
}

impl SourceError {
    /// The job file's field at fault; `None` for [`SourceError::Git`], which is the
    /// server's fault.
    pub fn field(&self) -> Option<SourceField> {
        match self {
            SourceError::Transport { .. }
            | SourceError::Relative { .. }
            | SourceError::Missing { .. }
            | SourceError::NotADirectory { .. }
            | SourceError::NotARepo { .. }
            | SourceError::NoCommits { .. } => Some(SourceField::Repo),
            SourceError::BadBase { .. }
            | SourceError::UnknownBase { .. }
            | SourceError::UnfetchedBase { .. } => Some(SourceField::Base),
            SourceError::Git { .. } => None,
        }
    }
}

/// How far [`check_source`] got with a source it did not refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceCheck {
    /// The repository is readable here, and the base (or HEAD) names a commit of it.
    Checked,
    /// Not checked beyond its transport and base syntax, and why (a remote URL, a git
    /// that did not answer in time).
    NotChecked(String),
}

/// Whether `base` can name a branch, tag or commit at all: the rule
/// [`crate::prepare`] applies too.
pub(crate) fn base_is_valid(base: &str) -> bool {
    !(base.is_empty() || base.starts_with('-') || base.chars().any(char::is_whitespace))
}

/// Where a repo lives, as far as the server can tell.
enum Location {
    /// A path the server can read.
    Local(PathBuf),
    /// A remote URL over a built-in transport.
    Remote,
}

/// Classifies `repo`: a local path or `file:///` URL, a remote URL over an allowed
/// transport, or a refused transport.
fn locate(repo: &str) -> Result<Location, SourceError> {
    if !gantry_core::repo::is_url(repo) {
        return Ok(Location::Local(PathBuf::from(repo)));
    }
    let refused = |transport: &str| SourceError::Transport {
        repo: repo.to_string(),
        transport: transport.to_string(),
    };
    // `<helper>::<address>`, git's syntax for a remote helper, read as git reads it:
    // the characters of a URL scheme, then `::`.
    let scheme_len = repo
        .find(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
        .unwrap_or(repo.len());
    if scheme_len > 0 && repo[scheme_len..].starts_with("::") {
        return Err(refused(&repo[..scheme_len]));
    }
    if let Some((scheme, rest)) = repo.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "file" {
            // Only `file:///path` names a path here; a host, or percent-escapes that
            // git would decode, leave it to the factories.
            return Ok(if rest.starts_with('/') && !rest.contains('%') {
                Location::Local(PathBuf::from(rest))
            } else {
                Location::Remote
            });
        }
        return if TRANSPORTS.contains(&scheme.as_str()) {
            Ok(Location::Remote)
        } else {
            Err(refused(&scheme))
        };
    }
    // scp-like `user@host:path`: ssh.
    Ok(Location::Remote)
}

/// Checks the source of a job at submit: `repo` (a local path already resolved, or a
/// URL) and its `base` (`None`: the repository's HEAD). Each git call is limited to
/// `timeout`; one that does not answer in time leaves the source unchecked rather than
/// refused, as does a remote URL. git runs through the workspace's runner (no hooks,
/// no prompts, no inherited `GIT_DIR`-style variables).
pub async fn check_source(
    repo: &str,
    base: Option<&str>,
    timeout: Duration,
) -> Result<SourceCheck, SourceError> {
    if let Some(b) = base
        && !base_is_valid(b)
    {
        return Err(SourceError::BadBase {
            base: b.to_string(),
        });
    }
    let path = match locate(repo)? {
        Location::Local(path) => path,
        Location::Remote => {
            return Ok(SourceCheck::NotChecked(
                "a remote repository is checked by the factory that claims the job".into(),
            ));
        }
    };
    let repo_err = |make: fn(String) -> SourceError| make(repo.to_string());
    if path.is_relative() {
        return Err(repo_err(|repo| SourceError::Relative { repo }));
    }
    if !path.exists() {
        return Err(repo_err(|repo| SourceError::Missing { repo }));
    }
    if !path.is_dir() {
        return Err(repo_err(|repo| SourceError::NotADirectory { repo }));
    }
    let git = |args: Vec<String>| run(&path, repo, args, timeout);

    // The top level of a work tree (it has `.git`) or a bare repository; a directory
    // inside a work tree is neither, though git would find the repository above it.
    if !path.join(".git").exists() {
        let Some(out) = git(vec!["rev-parse".into(), "--is-bare-repository".into()]).await? else {
            return Ok(not_answered(timeout));
        };
        if !(out.code == Some(0) && out.stdout.trim() == "true") {
            let detail = if out.stderr.is_empty() {
                String::new()
            } else {
                format!(": {}", out.stderr)
            };
            return Err(SourceError::NotARepo {
                repo: repo.to_string(),
                detail,
            });
        }
    }

    let rev = base.unwrap_or("HEAD");
    let Some(out) = git(vec![
        "rev-parse".into(),
        "--verify".into(),
        "--quiet".into(),
        "--end-of-options".into(),
        format!("{rev}^{{commit}}"),
    ])
    .await?
    else {
        return Ok(not_answered(timeout));
    };
    if out.code != Some(0) {
        return Err(match base {
            Some(b) => SourceError::UnknownBase {
                repo: repo.to_string(),
                base: b.to_string(),
            },
            None => SourceError::NoCommits {
                repo: repo.to_string(),
            },
        });
    }
    // A name that resolves through a ref outside branches and tags (`origin/main`, a
    // remote-tracking branch) resolves here but not in a factory's cache, which
    // fetches branches and tags only.
    if let Some(b) = base
        && !(b.len() >= 7 && b.chars().all(|c| c.is_ascii_hexdigit()))
    {
        let Some(out) = git(vec![
            "rev-parse".into(),
            "--verify".into(),
            "--quiet".into(),
            "--symbolic-full-name".into(),
            "--end-of-options".into(),
            b.to_string(),
        ])
        .await?
        else {
            return Ok(not_answered(timeout));
        };
        let full_ref = out.stdout.trim();
        if out.code == Some(0)
            && full_ref.starts_with("refs/")
            && !full_ref.starts_with("refs/heads/")
            && !full_ref.starts_with("refs/tags/")
        {
            return Err(SourceError::UnfetchedBase {
                repo: repo.to_string(),
                base: b.to_string(),
                full_ref: full_ref.to_string(),
            });
        }
    }
    Ok(SourceCheck::Checked)
}

fn not_answered(timeout: Duration) -> SourceCheck {
    SourceCheck::NotChecked(format!("git did not answer within {timeout:?}"))
}

/// Runs git with `args` in `dir`; `None` when it did not answer within `timeout` (the
/// process is killed as the call is dropped).
async fn run(
    dir: &Path,
    repo: &str,
    args: Vec<String>,
    timeout: Duration,
) -> Result<Option<crate::runner::GitOutput>, SourceError> {
    match tokio::time::timeout(timeout, git_status(dir, &args, &[])).await {
        Ok(Ok(out)) => Ok(Some(out)),
        Ok(Err(source)) => Err(SourceError::Git {
            repo: repo.to_string(),
            source,
        }),
        Err(_) => {
            tracing::warn!(%repo, ?args, ?timeout, "git did not answer; the source is left unchecked");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_are_classified() {
        for ok in [
            "https://example.com/r.git",
            "ssh://git@example.com/r",
            "git@example.com:r.git",
            "git://example.com/r",
            "file://host/r",
        ] {
            assert!(matches!(locate(ok), Ok(Location::Remote)), "{ok}");
        }
        assert!(
            matches!(locate("file:///srv/r"), Ok(Location::Local(p)) if p == Path::new("/srv/r"))
        );
        assert!(matches!(locate("/srv/r"), Ok(Location::Local(_))));
        for (bad, transport) in [
            ("ext::sh -c touch% /tmp/x", "ext"),
            ("fd::17", "fd"),
            ("s3://bucket/r", "s3"),
            ("hg::https://example.com/r", "hg"),
        ] {
            match locate(bad) {
                Err(SourceError::Transport { transport: t, .. }) => assert_eq!(t, transport),
                _ => panic!("{bad} is refused"),
            }
        }
    }

    #[test]
    fn bases_are_checked_for_shape() {
        assert!(base_is_valid("main"));
        assert!(base_is_valid("v1.2^{commit}"));
        for bad in ["", "-x", "--upload-pack=evil", "a b"] {
            assert!(!base_is_valid(bad), "{bad:?}");
        }
    }
}
