//! Repo naming: URL detection, path resolution, cache names.

use gantry_core::repo::{cache_name, is_url, resolve_repo};
use std::path::Path;

#[test]
fn urls() {
    for url in [
        "https://github.com/org/repo.git",
        "http://host/repo",
        "ssh://git@host:22/org/repo",
        "git://host/repo",
        "file:///tmp/repo",
        "git@github.com:org/repo.git",
        "host:repo",
        "user@host:path/to/repo",
    ] {
        assert!(is_url(url), "{url} is a URL");
    }
}

#[test]
fn local_paths() {
    for path in [
        "/abs/path",
        "./rel",
        "../rel",
        "rel/dir",
        "repo",
        "",
        "/tmp/a:b",
        "./a:b",
        "dir/x:y",
        ":leading-colon",
    ] {
        assert!(!is_url(path), "{path:?} is a local path");
    }
}

#[test]
fn resolve_cases() {
    // (as written, base dir, expected)
    let cases: &[(&str, Option<&str>, &str)] = &[
        // URLs are left alone, whatever the base dir.
        ("https://h/o/r.git", Some("/jobs"), "https://h/o/r.git"),
        (
            "git@github.com:o/r.git",
            Some("/jobs"),
            "git@github.com:o/r.git",
        ),
        // Absolute paths ignore the base dir but are normalized.
        ("/src/app", Some("/jobs"), "/src/app"),
        ("/src/./app/../lib/", None, "/src/lib"),
        ("/..", None, "/"),
        ("/../x", None, "/x"),
        // Relative paths join the job file's directory.
        ("app", Some("/jobs"), "/jobs/app"),
        ("./app", Some("/jobs"), "/jobs/app"),
        ("../app", Some("/work/jobs"), "/work/app"),
        ("../../../app", Some("/a"), "/app"),
        (".", Some("/work/jobs"), "/work/jobs"),
        ("..", Some("/work/jobs"), "/work"),
        ("../r", Some("rel/jobs"), "rel/r"),
        ("../../r", Some("rel"), "../r"),
        // Without a base dir, relative paths stay relative, `..` included.
        ("app", None, "app"),
        ("./app/", None, "app"),
        ("../app", None, "../app"),
        ("../../app", None, "../../app"),
        ("a/../../b", None, "../b"),
        (".", None, "."),
        ("./", None, "."),
    ];
    for &(repo, base, want) in cases {
        assert_eq!(
            resolve_repo(repo, base.map(Path::new)),
            want,
            "resolve_repo({repo:?}, {base:?})"
        );
    }
}

#[test]
fn cache_name_is_stable() {
    // FNV-1a of the whole location, low 32 bits: fixed here so a change of hash
    // (which would orphan every existing cache) fails a test.
    assert_eq!(cache_name("/src/app"), "app-a1fd8860.git");
    assert_eq!(cache_name("git@github.com:org/app.git"), "app-3cd60cbb.git");
    assert_eq!(cache_name("/src/app"), cache_name("/src/app"));
}

#[test]
fn cache_name_differs_for_same_basename() {
    let names = [
        cache_name("/a/app"),
        cache_name("/b/app"),
        cache_name("https://github.com/x/app.git"),
        cache_name("https://github.com/y/app.git"),
        cache_name("git@github.com:x/app.git"),
    ];
    for (i, a) in names.iter().enumerate() {
        assert!(a.starts_with("app-") && a.ends_with(".git"), "{a}");
        for b in &names[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn cache_name_shape() {
    for (repo, base) in [
        ("/src/my repo", "my_repo"),
        ("/src/app/", "app"),
        ("/src/app.git", "app"),
        ("https://h/o/lib.git/", "lib"),
        ("host:proj", "proj"),
        ("/", "repo"),
        ("", "repo"),
        ("/src/dé", "d_"),
    ] {
        let name = cache_name(repo);
        let (stem, hash) = name
            .strip_suffix(".git")
            .and_then(|s| s.rsplit_once('-'))
            .unwrap_or_else(|| panic!("{name} is <base>-<hash>.git"));
        assert_eq!(stem, base, "cache_name({repo:?}) = {name}");
        assert_eq!(hash.len(), 8, "{name}");
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
    }
}
