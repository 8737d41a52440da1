//! Capability matching and syntax.

use gantry_core::caps::{satisfies, validate};

fn v(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn satisfies_cases() {
    // (factory has, job needs, expected)
    let cases: &[(&[&str], &[&str], bool)] = &[
        (&[], &[], true),
        (&["docker"], &[], true),
        (&[], &["docker"], false),
        (&["docker"], &["docker"], true),
        (&["docker", "gpu"], &["docker"], true),
        (&["docker", "gpu"], &["gpu", "docker"], true),
        (&["docker"], &["docker", "gpu"], false),
        // A bare name is satisfied by any value of it.
        (&["os=linux"], &["os"], true),
        // A name=value needs exactly that value.
        (&["os"], &["os=linux"], false),
        (&["os=linux"], &["os=linux"], true),
        (&["os=mac"], &["os=linux"], false),
        (&["os=linux", "os=mac"], &["os=mac"], true),
        // Names match whole, never by prefix.
        (&["docker-rootless"], &["docker"], false),
        (&["dock"], &["docker"], false),
        (&["os=linux-x"], &["os=linux"], false),
        (&["osx=1"], &["os"], false),
        // Case matters.
        (&["Docker"], &["docker"], false),
    ];
    for &(factory, job, want) in cases {
        assert_eq!(
            satisfies(&v(factory), &v(job)),
            want,
            "factory {factory:?} job {job:?}"
        );
    }
}

#[test]
fn valid_capabilities() {
    for cap in [
        "docker",
        "gpu.count",
        "engine:command",
        "x-y_z",
        "A9",
        "os=linux",
        "mem=16GiB",
        "k=v=w",
        "url=https://x",
    ] {
        assert_eq!(validate(cap), Ok(()), "{cap}");
    }
}

#[test]
fn invalid_capability_names() {
    for cap in [
        "",
        "=x",
        "has space",
        "a/b",
        "ünicode",
        "tab\tname",
        "semi;colon",
    ] {
        let e = validate(cap).expect_err(cap);
        assert!(e.contains(&format!("{cap:?}")), "{e} should quote {cap:?}");
        assert!(e.contains("name"), "{e}");
    }
}

#[test]
fn invalid_capability_values() {
    for cap in ["os=", "os=a b", "os= x", "os=x\n"] {
        let e = validate(cap).expect_err(cap);
        assert!(e.contains(&format!("{cap:?}")), "{e} should quote {cap:?}");
        assert!(e.contains("value"), "{e}");
    }
}
