//! Naming of source repositories: URL detection, path resolution and cache names.

use std::path::{Component, Path};

/// Whether `repo` is a git URL (`scheme://...` or scp-like `user@host:path`) rather than
/// a local path.
pub fn is_url(repo: &str) -> bool {
    if repo.contains("://") {
        return true;
    }
    // scp-like syntax: a colon before any slash, and something before the colon.
    match (repo.find(':'), repo.find('/')) {
        (Some(colon), Some(slash)) => colon > 0 && colon < slash,
        (Some(colon), None) => colon > 0,
        _ => false,
    }
}

/// Resolves a repo as written in a job file: URLs stay as they are; relative paths are
/// joined to `base_dir` (the job file's directory) and normalized lexically.
pub fn resolve_repo(repo: &str, base_dir: Option<&Path>) -> String {
    if is_url(repo) {
        return repo.to_string();
    }
    let p = Path::new(repo);
    let joined = match base_dir {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    };
    let mut out = std::path::PathBuf::new();
    for comp in joined.components() {
        match comp {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // `/..` is `/`: there is nothing above the root.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                // A relative path that climbs above its start keeps its `..`: dropping
                // it would name a different directory.
                Some(Component::ParentDir | Component::CurDir) | None => out.push(".."),
            },
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() && !repo.is_empty() {
        // `.` or `./` without a base directory: the current directory, not "".
        return ".".to_string();
    }
    out.to_string_lossy().into_owned()
}

/// The directory name of a repo's bare cache under `<data-dir>/repos/`: the repo's
/// base name plus a short hash of the whole location, so two repos with the same base
/// name never share a cache.
pub fn cache_name(repo: &str) -> String {
    let trimmed = repo.trim_end_matches('/').trim_end_matches(".git");
    let base = trimmed
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>();
    let base = if base.is_empty() {
        "repo".to_string()
    } else {
        base
    };
    // FNV-1a: stable across releases and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in repo.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{base}-{:08x}.git", h as u32)
}
