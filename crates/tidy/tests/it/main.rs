//! Project-wide rules.

mod deploy;

use gantry_tidy::{rust_files, workspace_root};
use std::fs;

fn crate_dirs() -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = fs::read_dir(workspace_root().join("crates"))
        .expect("crates/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    dirs.sort();
    dirs
}

fn rel(p: &std::path::Path) -> String {
    p.strip_prefix(workspace_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

#[test]
fn architecture_names_every_crate() {
    let arch = fs::read_to_string(workspace_root().join("docs/ARCHITECTURE.md"))
        .expect("docs/ARCHITECTURE.md exists");
    for dir in crate_dirs() {
        let name = dir
            .file_name()
            .expect("crate dir has a name")
            .to_string_lossy();
        if name == "tidy" {
            continue;
        }
        assert!(
            arch.contains(&format!("crates/{name}")) && arch.contains(&format!("gantry-{name}")),
            "docs/ARCHITECTURE.md must describe crates/{name} (gantry-{name})"
        );
    }
}

/// The `[dependencies]` table of a crate's manifest, as text.
fn dependencies(name: &str) -> String {
    let manifest = fs::read_to_string(workspace_root().join(format!("crates/{name}/Cargo.toml")))
        .expect("manifest readable");
    let start = manifest
        .find("[dependencies]")
        .map_or(manifest.len(), |i| i + "[dependencies]".len());
    let rest = &manifest[start..];
    rest[..rest.find("\n[").unwrap_or(rest.len())].to_string()
}

#[test]
fn core_and_protocol_stay_at_the_bottom() {
    // The store builds on core alone, so core must not pull in the engine's stream
    // parsers (or anything else of ours); protocol adds only the wire on top of core.
    let core = dependencies("core");
    assert!(
        !core.contains("gantry-"),
        "gantry-core depends on a Gantry crate:\n{core}"
    );
    let protocol = dependencies("protocol");
    let ours: Vec<&str> = protocol
        .lines()
        .filter(|l| l.starts_with("gantry-"))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "gantry-protocol depends on core only: {ours:?}"
    );
    assert!(ours[0].starts_with("gantry-core "), "{ours:?}");
}

#[test]
fn one_integration_test_binary_per_crate() {
    for dir in crate_dirs() {
        let tests = dir.join("tests");
        if !tests.exists() {
            continue;
        }
        assert!(
            tests.join("it/main.rs").exists(),
            "{} has tests but no tests/it/main.rs",
            rel(&dir)
        );
        for entry in fs::read_dir(&tests).expect("tests dir readable").flatten() {
            let p = entry.path();
            assert!(
                p.is_dir() || p.extension().is_none_or(|e| e != "rs"),
                "{}: integration tests go in tests/it/ as modules, so each crate links one test binary",
                rel(&p)
            );
        }
    }
}

#[test]
fn only_the_cli_output_layer_prints() {
    for dir in crate_dirs() {
        let name = dir
            .file_name()
            .expect("crate dir has a name")
            .to_string_lossy()
            .to_string();
        for file in rust_files(&dir.join("src")) {
            let is_output_layer = name == "cli" && file.ends_with("output.rs");
            if is_output_layer {
                continue;
            }
            let text = fs::read_to_string(&file).expect("source readable");
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for mac in ["println!(", "print!(", "eprintln!(", "eprint!("] {
                    assert!(
                        !code.contains(mac),
                        "{}:{}: `{mac}` outside the CLI's output layer (crates/cli/src/output.rs); use tracing or the output layer",
                        rel(&file),
                        i + 1
                    );
                }
            }
        }
    }
}

#[test]
fn no_markers_that_must_not_land() {
    let root = workspace_root();
    for file in rust_files(&root.join("crates")) {
        if file.starts_with(root.join("crates/tidy")) {
            continue;
        }
        let text = fs::read_to_string(&file).expect("source readable");
        for (i, line) in text.lines().enumerate() {
            for marker in ["#[ignore", "todo!(", "unimplemented!(", "dbg!("] {
                assert!(
                    !line.contains(marker),
                    "{}:{}: `{marker}` must not land",
                    rel(&file),
                    i + 1
                );
            }
        }
    }
}

#[test]
fn readme_opens_with_the_two_commands_and_ci_runs_the_test_one() {
    let root = workspace_root();
    let readme = fs::read_to_string(root.join("README.md")).expect("README.md exists");
    let head: String = readme.lines().take(8).collect::<Vec<_>>().join("\n");
    assert!(
        head.contains("cargo run -- demo"),
        "README must open with the demo command"
    );
    assert!(
        head.contains("./scripts/test"),
        "README must open with the test command"
    );
    let ci = fs::read_to_string(root.join(".ci/run")).expect(".ci/run exists");
    assert!(
        ci.contains("./scripts/test"),
        ".ci/run must call the README's test command"
    );
}

#[test]
fn every_public_crate_has_a_crate_doc() {
    for dir in crate_dirs() {
        let lib = dir.join("src/lib.rs");
        let main = dir.join("src/main.rs");
        let root = if lib.exists() { lib } else { main };
        let text = fs::read_to_string(&root).expect("crate root readable");
        assert!(
            text.trim_start().starts_with("//!"),
            "{} must start with a `//!` crate doc",
            rel(&root)
        );
    }
}
