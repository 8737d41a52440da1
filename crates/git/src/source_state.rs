//! A cheap fingerprint of a local source repository's refs, read straight from its files.
//!
//! Fetching from a local source costs several processes (fetch, upload-pack,
//! index-pack) even when nothing changed, and it dominated the time from claim to
//! process start. Reading `HEAD`, `packed-refs` and the loose branch and tag refs takes
//! microseconds, so the cache is fetched only when this fingerprint differs from the
//! one taken before the last successful fetch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The refs state of a source repo at one moment, exact (no hashing, so no collisions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fingerprint(Vec<u8>);

/// Reads the fingerprint of the local repo at `repo`, or `None` when its layout is one
/// this reader does not know (reftable, an unreadable file): the caller then fetches.
pub(super) fn read(repo: &Path) -> Option<Fingerprint> {
    let git_dir = git_dir(repo)?;
    // Linked worktrees keep their HEAD beside them and the shared refs in the common dir.
    let common = match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(rel) => git_dir.join(rel.trim()),
        Err(_) => git_dir.clone(),
    };
    if common.join("reftable").exists() {
        return None;
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"HEAD\0");
    out.extend(std::fs::read(git_dir.join("HEAD")).ok()?);
    out.extend_from_slice(b"\0packed-refs\0");
    match std::fs::read(common.join("packed-refs")) {
        // Gantry's own delivered branches are never fetched, so a delivery alone must
        // not force the next run to fetch.
        Ok(bytes) => {
            for line in bytes.split(|b| *b == b'\n') {
                if !names_gantry_branch(line) {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => return None,
    }
    for dir in ["refs/heads", "refs/tags"] {
        walk(&common, &common.join(dir), &mut out)?;
    }
    Some(Fingerprint(out))
}

/// Whether a `packed-refs` line is the ref `refs/heads/gantry` or one below it.
fn names_gantry_branch(line: &[u8]) -> bool {
    let Some(name) = line.splitn(2, |b| *b == b' ').nth(1) else {
        return false;
    };
    name == b"refs/heads/gantry" || name.starts_with(b"refs/heads/gantry/")
}

/// The git directory of a work tree (`.git` dir or `gitdir:` file) or of a bare repo.
fn git_dir(repo: &Path) -> Option<PathBuf> {
    let dot_git = repo.join(".git");
    let meta = std::fs::metadata(&dot_git);
    match meta {
        Ok(m) if m.is_dir() => Some(dot_git),
        Ok(_) => {
            let text = std::fs::read_to_string(&dot_git).ok()?;
            let target = text.strip_prefix("gitdir:")?.trim();
            Some(repo.join(target))
        }
        Err(_) if repo.join("HEAD").is_file() && repo.join("objects").is_dir() => {
            Some(repo.to_path_buf())
        }
        Err(_) => None,
    }
}

/// Appends every loose ref under `dir` (name and content), in sorted order so the same
/// refs always give the same bytes.
fn walk(root: &Path, dir: &Path, out: &mut Vec<u8>) -> Option<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(()),
        Err(_) => return None,
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .ok()?;
    paths.sort();
    for path in paths {
        if path
            .strip_prefix(root)
            .is_ok_and(|p| p == Path::new("refs/heads/gantry"))
        {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else {
            // A `.lock` file is a ref being written: its final content is not known yet.
            if path.extension().is_some_and(|e| e == "lock") {
                return None;
            }
            let name = path.strip_prefix(root).ok()?;
            out.push(0);
            out.extend_from_slice(name.as_os_str().as_encoded_bytes());
            out.push(0);
            out.extend(std::fs::read(&path).ok()?);
        }
    }
    Some(())
}

/// What was seen before the last successful fetch into each cache.
#[derive(Debug, Clone)]
struct Fetched {
    fingerprint: Fingerprint,
    /// Whether that fetch also took the source's HEAD.
    with_head: bool,
}

fn fetched() -> &'static Mutex<HashMap<PathBuf, Fetched>> {
    static FETCHED: OnceLock<Mutex<HashMap<PathBuf, Fetched>>> = OnceLock::new();
    FETCHED.get_or_init(Mutex::default)
}

/// Whether the cache at `cache` is known to hold the source's refs as `now` describes
/// them (and its HEAD, when `need_head`), so a fetch would change nothing.
pub(super) fn up_to_date(cache: &Path, now: &Fingerprint, need_head: bool) -> bool {
    let map = fetched()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.get(cache)
        .is_some_and(|f| &f.fingerprint == now && (f.with_head || !need_head))
}

/// Records that a fetch that started after `seen` was taken has succeeded.
pub(super) fn record(cache: &Path, seen: Fingerprint, with_head: bool) {
    let mut map = fetched()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.insert(
        cache.to_path_buf(),
        Fetched {
            fingerprint: seen,
            with_head,
        },
    );
}
