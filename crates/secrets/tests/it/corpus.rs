//! The corpus: at least 40 credential formats that must all be found and 40 look-alikes
//! that must not be. `scripts/secrets-compare` runs detect-secrets on the same files.

use std::path::Path;

use gantry_secrets::Scanner;

fn files(dir: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("corpus directory")
        .map(|e| {
            let path = e.expect("entry").path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, std::fs::read_to_string(&path).expect("utf-8 file"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_positive_is_found_and_no_negative_is() {
    let scanner = Scanner::builtin();
    let positives = files("positive");
    let negatives = files("negative");
    assert!(positives.len() >= 40 && negatives.len() >= 40);
    let missed: Vec<&str> = positives
        .iter()
        .filter(|(_, text)| scanner.scan_text(text).is_empty())
        .map(|(name, _)| name.as_str())
        .collect();
    let flagged: Vec<String> = negatives
        .iter()
        .filter_map(|(name, text)| {
            let m = scanner.scan_text(text);
            (!m.is_empty()).then(|| {
                format!(
                    "{name}: {:?}",
                    m.iter().map(|m| &*m.rule).collect::<Vec<_>>()
                )
            })
        })
        .collect();
    assert!(missed.is_empty(), "missed positives: {missed:?}");
    assert!(flagged.is_empty(), "false positives: {flagged:?}");
}
