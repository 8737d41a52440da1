//! Diff scanning: added lines only, mapped to path and new-file line number.

use gantry_secrets::{Scanner, SecretsConfig};

use crate::{ALNUM, fake};

fn token(seed: u64) -> String {
    format!("ghp_{}", fake(ALNUM, 36, seed))
}

#[test]
fn findings_name_file_and_new_line_across_hunks_and_files() {
    let (a, b, c) = (token(1), token(2), token(3));
    let diff = format!(
        "diff --git a/src/app.py b/src/app.py
index 1111111..2222222 100644
--- a/src/app.py
+++ b/src/app.py
@@ -1,3 +1,4 @@
 import os
+TOKEN = \"{a}\"
 def main():
     pass
@@ -20,2 +21,3 @@ def other():
 x = 1
-OLD = \"{c}\"
+y = 2
+NEW = \"{b}\"
diff --git a/docs/notes.md b/docs/notes.md
new file mode 100644
--- /dev/null
+++ b/docs/notes.md
@@ -0,0 +1,2 @@
+# Notes
+use {c}
"
    );
    let findings = Scanner::builtin().scan_diff(&diff);
    let got: Vec<(&str, u32, &str)> = findings
        .iter()
        .map(|f| (f.file.as_str(), f.line, &*f.rule))
        .collect();
    assert_eq!(
        got,
        vec![
            ("src/app.py", 2, "github-token"),
            ("src/app.py", 23, "github-token"),
            ("docs/notes.md", 2, "github-token"),
        ]
    );
}

#[test]
fn deleted_lines_and_deleted_files_are_ignored() {
    let t = token(4);
    let diff = format!(
        "diff --git a/a.env b/a.env
--- a/a.env
+++ b/a.env
@@ -1,2 +1,1 @@
-GH={t}
 X=1
diff --git a/gone.env b/gone.env
deleted file mode 100644
--- a/gone.env
+++ /dev/null
@@ -1 +0,0 @@
-GH={t}
"
    );
    assert!(Scanner::builtin().scan_diff(&diff).is_empty());
}

#[test]
fn a_renamed_file_is_reported_under_its_new_name() {
    let t = token(5);
    let diff = format!(
        "diff --git a/old/name.txt b/new/name.txt
similarity index 90%
rename from old/name.txt
rename to new/name.txt
--- a/old/name.txt
+++ b/new/name.txt
@@ -5,1 +5,2 @@
 keep
+{t}
"
    );
    let f = Scanner::builtin().scan_diff(&diff);
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].file.as_str(), f[0].line), ("new/name.txt", 6));
}

#[test]
fn an_added_line_that_looks_like_a_header_stays_in_its_hunk() {
    let t = token(6);
    let diff = format!(
        "--- a/x.txt
+++ b/x.txt
@@ -0,0 +1,2 @@
+++ b/other.txt {t}
+@@ -1 +1 @@
"
    );
    let f = Scanner::builtin().scan_diff(&diff);
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].file.as_str(), f[0].line), ("x.txt", 1));
}

#[test]
fn a_private_key_added_over_several_lines_is_one_finding_at_its_first_line() {
    let body: Vec<String> = (0..6).map(|i| format!("+{}", fake(ALNUM, 64, i))).collect();
    let diff = format!(
        "--- a/k.pem\n+++ b/k.pem\n@@ -0,0 +1,8 @@\n+-----BEGIN EC PRIVATE KEY-----\n{}\n+-----END EC PRIVATE KEY-----\n",
        body.join("\n")
    );
    let f = Scanner::builtin().scan_diff(&diff);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].line, &*f[0].rule), (1, "private-key"));
}

#[test]
fn a_finding_never_shows_the_value() {
    let t = token(7);
    let diff = format!("--- a/a\n+++ b/a\n@@ -0,0 +1 @@\n+{t}\n");
    let f = Scanner::builtin().scan_diff(&diff);
    assert_eq!(f.len(), 1);
    let shown = format!("{} {:?}", f[0], f[0]);
    assert!(!shown.contains(&t[4..]), "{shown}");
    assert!(shown.contains(&f[0].fingerprint));
    assert_eq!(f[0].fingerprint.len(), 16);
    // The fingerprint is stable: the same value gives the same one anywhere.
    let again = Scanner::builtin().scan_diff(&format!("--- a/b\n+++ b/b\n@@ -0,0 +1 @@\n+x {t}\n"));
    assert_eq!(again[0].fingerprint, f[0].fingerprint);
}

#[test]
fn allowlisted_paths_and_fingerprints_suppress_findings() {
    let (t, u) = (token(8), token(9));
    let diff = format!(
        "--- a/tests/fixtures/a.txt\n+++ b/tests/fixtures/a.txt\n@@ -0,0 +1 @@\n+{t}\n--- a/src/b.txt\n+++ b/src/b.txt\n@@ -0,0 +1,2 @@\n+{t}\n+{u}\n"
    );
    let all = Scanner::builtin().scan_diff(&diff);
    assert_eq!(all.len(), 3);
    let allowed = &all
        .iter()
        .find(|f| f.file == "src/b.txt" && f.line == 2)
        .map(|f| f.fingerprint.clone());
    let config = SecretsConfig::from_toml(
        ".gantry/secrets.toml",
        &format!(
            "[allowlist]\npaths = [\"tests/fixtures/**\"]\nfingerprints = [\"{}\"]\n",
            allowed.as_deref().unwrap_or_default()
        ),
    )
    .expect("config parses");
    let left = Scanner::new(&config).expect("scanner").scan_diff(&diff);
    let left: Vec<_> = left.iter().map(|f| (f.file.as_str(), f.line)).collect();
    assert_eq!(left, vec![("src/b.txt", 1)]);
}

#[test]
fn the_bench_text_is_a_diff_whose_planted_credentials_are_all_found() {
    let (text, planted) = gantry_secrets::bench::diff_text(400_000);
    assert!(planted > 0, "nothing planted");
    let found = Scanner::builtin().scan_diff(&text);
    assert_eq!(found.len(), planted, "{found:?}");
}
