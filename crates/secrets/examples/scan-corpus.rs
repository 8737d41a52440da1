//! Scans every file of the directories given as arguments and prints one line per file
//! with a finding: `<path>\t<rule>[,<rule>...]`. `scripts/secrets-compare` reads it.

use std::collections::BTreeSet;
use std::io::Write;

fn main() -> anyhow::Result<()> {
    let scanner = gantry_secrets::Scanner::builtin();
    let mut out = std::io::stdout().lock();
    for dir in std::env::args().skip(1) {
        let mut paths: Vec<_> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path)?;
            let rules: BTreeSet<String> = scanner
                .scan_text(&text)
                .into_iter()
                .map(|m| m.rule.to_string())
                .collect();
            if !rules.is_empty() {
                let rules: Vec<String> = rules.into_iter().collect();
                writeln!(out, "{}\t{}", path.display(), rules.join(","))?;
            }
        }
    }
    Ok(())
}
