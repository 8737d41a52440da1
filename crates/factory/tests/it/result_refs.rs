//! Issue 4, leftover result refs: `workspace::remove_result_ref` removes a run's
//! `refs/gantry/results/<run>` from a source the data dir has no cache of, says whether
//! it removed something, and touches no other ref.

use crate::support::{git, make_repo};
use gantry_core::RunId;
use gantry_factory::workspace;
use gantry_protocol::result_ref;

/// The refs of `repo` under `prefix`, one per line.
fn refs_under(repo: &std::path::Path, prefix: &str) -> String {
    git(repo, &["for-each-ref", "--format=%(refname)", prefix])
}

#[tokio::test]
async fn issue4_remove_result_ref_removes_a_present_ref_only_and_refuses_other_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("src-repo");
    let base = make_repo(&source);
    let repo = source.to_string_lossy().into_owned();
    // A data dir that never cloned the source: no cache to push from.
    let data = tmp.path().join("server-data");
    let (mine, other) = (result_ref(RunId(7)), result_ref(RunId(70)));
    for r in [&mine, &other] {
        git(&source, &["update-ref", r, &base]);
    }

    let removed = workspace::remove_result_ref(&data, &repo, &mine)
        .await
        .expect("removal");
    assert!(removed, "a present ref is removed");
    assert_eq!(refs_under(&source, "refs/gantry"), other, "only that ref");
    assert!(
        !workspace::cache_dir(&data, &repo).exists(),
        "no cache was made for it"
    );

    // Gone already (another server removed it): no error, nothing removed.
    let removed = workspace::remove_result_ref(&data, &repo, &mine)
        .await
        .expect("an absent ref is no error");
    assert!(!removed);
    assert_eq!(refs_under(&source, "refs/gantry"), other);

    // Only result refs are ever removed, and a ref merely ending like one is not one.
    let suffixed = format!("refs/x/{mine}");
    git(&source, &["update-ref", &suffixed, &base]);
    for name in [
        "refs/heads/main",
        suffixed.as_str(),
        "refs/gantry/results/07",
    ] {
        let err = workspace::remove_result_ref(&data, &repo, name)
            .await
            .expect_err("not a result ref");
        assert!(
            err.to_string().contains("result_ref") && err.to_string().contains(name),
            "{err}"
        );
    }
    assert_eq!(git(&source, &["rev-parse", "refs/heads/main"]), base);
    assert_eq!(git(&source, &["rev-parse", &suffixed]), base);
    let removed = workspace::remove_result_ref(&data, &repo, &mine)
        .await
        .expect("a ref ending like the result ref does not count as it");
    assert!(!removed);
    assert_eq!(git(&source, &["rev-parse", &suffixed]), base);
    assert_eq!(git(&source, &["rev-parse", &other]), base);
}
