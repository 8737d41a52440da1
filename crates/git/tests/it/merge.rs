//! The conflict check against a base that moved, the rebase of a clean result with its
//! worktree moved along, and reading the repository's own files from a commit (issue 11).

use gantry_git::{MergeCheck, file_at, merge_check, rebase_result};
use gantry_testkit::git;
use std::path::{Path, PathBuf};

/// A source repository with `main`, its bare cache, and a worktree of the cache on the
/// attempt branch `gantry/1/a1`, which holds the agent's result on top of the base.
struct Repos {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    cache: PathBuf,
    wt: PathBuf,
    base: String,
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn commit_all(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

impl Repos {
    fn new() -> Repos {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        git(&src, &["init", "-q"]);
        write(&src, "a.txt", "one\ntwo\nthree\n");
        write(&src, "b.txt", "b\n");
        let base = commit_all(&src, "base");
        let cache = tmp.path().join("cache.git");
        git(tmp.path(), &["clone", "-q", "--bare", "src", "cache.git"]);
        let wt = tmp.path().join("wt");
        git(
            &cache,
            &[
                "worktree",
                "add",
                "-q",
                "-b",
                "gantry/1/a1",
                wt.to_str().expect("utf-8"),
                &base,
            ],
        );
        Repos {
            _tmp: tmp,
            src,
            cache,
            wt,
            base,
        }
    }

    /// The agent's result: a commit on the attempt branch.
    fn result(&self, file: &str, text: &str) -> String {
        write(&self.wt, file, text);
        commit_all(&self.wt, "the agent's work")
    }

    /// Moves `main` on in the source and fetches it into the cache: the new tip.
    fn move_base(&self, file: &str, text: &str) -> String {
        write(&self.src, file, text);
        let tip = commit_all(&self.src, "someone else's work");
        git(
            &self.cache,
            &["fetch", "-q", "../src", "main:refs/heads/main"],
        );
        tip
    }
}

#[tokio::test]
async fn a_result_on_the_current_tip_is_up_to_date() {
    let r = Repos::new();
    let result = r.result("a.txt", "one\nTWO\nthree\n");
    assert_eq!(
        merge_check(&r.cache, &r.base, &result)
            .await
            .expect("check"),
        MergeCheck::UpToDate
    );
}

#[tokio::test]
async fn a_clean_result_behind_the_tip_is_rebased_and_its_worktree_follows() {
    let r = Repos::new();
    let result = r.result("a.txt", "one\nTWO\nthree\n");
    let tip = r.move_base("b.txt", "b moved\n");
    let check = merge_check(&r.cache, &tip, &result).await.expect("check");
    let MergeCheck::Behind { merged_tree } = check else {
        panic!("expected behind, got {check:?}");
    };
    let commit = rebase_result(
        &r.cache,
        &r.wt,
        "gantry/1/a1",
        &tip,
        &merged_tree,
        "rebased",
    )
    .await
    .expect("rebase");
    assert_eq!(git(&r.cache, &["rev-parse", &format!("{commit}^")]), tip);
    assert_eq!(git(&r.cache, &["rev-parse", "gantry/1/a1"]), commit);
    assert_eq!(
        git(&r.cache, &["rev-parse", &format!("{commit}^{{tree}}")]),
        merged_tree
    );
    // The worktree holds both changes, with nothing left to commit: the gates will run
    // on exactly the rebased tree.
    assert_eq!(
        std::fs::read_to_string(r.wt.join("a.txt")).expect("a"),
        "one\nTWO\nthree\n"
    );
    assert_eq!(
        std::fs::read_to_string(r.wt.join("b.txt")).expect("b"),
        "b moved\n"
    );
    assert_eq!(git(&r.wt, &["status", "--porcelain"]), "");
    assert_eq!(
        merge_check(&r.cache, &tip, &commit).await.expect("check"),
        MergeCheck::UpToDate
    );
}

#[tokio::test]
async fn a_conflicting_result_names_every_conflicting_path() {
    let r = Repos::new();
    write(&r.wt, "odd name.txt", "mine\n");
    let result = r.result("a.txt", "one\nMINE\nthree\n");
    write(&r.src, "odd name.txt", "theirs\n");
    let tip = r.move_base("a.txt", "one\nTHEIRS\nthree\n");
    assert_eq!(
        merge_check(&r.cache, &tip, &result).await.expect("check"),
        MergeCheck::Conflicts {
            paths: vec!["a.txt".to_string(), "odd name.txt".to_string()]
        }
    );
}

#[tokio::test]
async fn a_file_is_read_from_the_commit_named_not_from_any_branch() {
    let r = Repos::new();
    // The agent's branch rewrites the gates file; the base's copy is what counts.
    write(
        &r.src,
        ".gantry/gates.toml",
        "[[gate]]\nname = \"test\"\nrun = \"make test\"\n",
    );
    let tip = commit_all(&r.src, "gates");
    git(&r.cache, &["fetch", "-q", "../src", "main:refs/heads/main"]);
    write(&r.wt, "x", "");
    let _ = r.result(".gantry/gates.toml", "");
    let text = file_at(&r.cache, &tip, ".gantry/gates.toml", 1024)
        .await
        .expect("read");
    assert_eq!(
        text.as_deref(),
        Some("[[gate]]\nname = \"test\"\nrun = \"make test\"\n")
    );
    assert_eq!(
        file_at(&r.cache, &r.base, ".gantry/gates.toml", 1024)
            .await
            .expect("read"),
        None
    );
    assert_eq!(
        file_at(&r.cache, &tip, ".gantry", 1024)
            .await
            .expect("a directory"),
        None
    );
    let err = file_at(&r.cache, &tip, ".gantry/gates.toml", 10)
        .await
        .expect_err("too big");
    assert!(err.to_string().contains("at most 10 are read"), "{err}");
    let err = file_at(&r.cache, "main", ".gantry/gates.toml", 10)
        .await
        .expect_err("not a full id");
    assert!(err.to_string().contains("invalid commit"), "{err}");
}
