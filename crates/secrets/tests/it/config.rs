//! Configuration: extra rules and allowlists from TOML, and errors naming file and key.

use gantry_secrets::{ConfigError, Scanner, SecretsConfig};

#[test]
fn an_extra_rule_fires_and_keeps_its_secret_group() {
    let config = SecretsConfig::from_toml(
        ".gantry/secrets.toml",
        r#"
[[rule]]
id = "acme-token"
regex = 'acme_token=(?P<secret>[a-z0-9]{24})'
keywords = ["ACME_"]
entropy = 2.0
"#,
    )
    .expect("parses");
    let scanner = Scanner::new(&config).expect("compiles");
    let text = "acme_token=q8xz3lmp0vr7ty2wk9bn4cf6";
    let m = scanner.scan_text(text);
    assert_eq!(m.len(), 1);
    assert_eq!(
        (&*m[0].rule, &text[m[0].start..m[0].end]),
        ("acme-token", "q8xz3lmp0vr7ty2wk9bn4cf6")
    );
    assert!(
        scanner
            .scan_text("acme_token=aaaaaaaaaaaaaaaaaaaaaaaa")
            .is_empty(),
        "entropy"
    );
}

#[test]
fn gantry_toml_reads_only_its_secrets_table() {
    let text = r#"
[server]
listen = "127.0.0.1:8080"

[secrets]
disable = ["jwt"]

[secrets.allowlist]
regexes = ['^sk_live_0000']
"#;
    let config = SecretsConfig::from_gantry_toml("gantry.toml", text).expect("parses");
    let scanner = Scanner::new(&config).expect("compiles");
    assert!(!scanner.rule_ids().any(|r| r == "jwt"));
    assert!(
        scanner
            .scan_text("sk_live_0000abcdefghijklmnopqrstuv")
            .is_empty()
    );
}

fn error(file: &str, text: &str, gantry: bool) -> ConfigError {
    let result = if gantry {
        SecretsConfig::from_gantry_toml(file, text)
    } else {
        SecretsConfig::from_toml(file, text)
    };
    match result {
        Ok(_) => panic!("{text} was accepted"),
        Err(e) => e,
    }
}

#[test]
fn errors_name_file_key_and_value() {
    let cases = [
        (
            "[[rule]]\nid = \"x\"\nregex = \"(unclosed\"\n",
            false,
            ".gantry/secrets.toml: rule[0].regex = \"(unclosed\"",
        ),
        (
            "[[rule]]\nid = \"x\"\nregex = \"a\"\nentropy = \"high\"\n",
            false,
            ".gantry/secrets.toml: rule[0].entropy: ",
        ),
        (
            "[allowlist]\npath = [\"a\"]\n",
            false,
            ".gantry/secrets.toml: allowlist.path: unknown field `path`",
        ),
        (
            "[secrets]\ndisable = [\"no-such-rule\"]\n",
            true,
            "gantry.toml: secrets.disable[0] = \"no-such-rule\"",
        ),
        (
            "[[secrets.rule]]\nid = \"jwt\"\nregex = \"a\"\n",
            true,
            "gantry.toml: secrets.rule[0].id = \"jwt\"",
        ),
        (
            "[secrets.allowlist]\nregexes = [\"[\"]\n",
            true,
            "gantry.toml: secrets.allowlist.regexes[0] = \"[\"",
        ),
        (
            "[[rule]]\nid = \"a\"\nregex = \"a\"\n[[rule]]\nid = \"a\"\nregex = \"b\"\n",
            false,
            ".gantry/secrets.toml: rule[1].id = \"a\": duplicate",
        ),
    ];
    for (text, gantry, want) in cases {
        let file = if gantry {
            "gantry.toml"
        } else {
            ".gantry/secrets.toml"
        };
        let shown = error(file, text, gantry).to_string();
        assert!(
            shown.starts_with(want),
            "{shown:?} does not start with {want:?}"
        );
    }
    let syntax = error("gantry.toml", "[secrets\n", true).to_string();
    assert!(syntax.starts_with("gantry.toml: "), "{syntax}");
}

#[test]
fn configurations_compare_by_what_they_say() {
    let text = "[[rule]]\nid = \"a\"\nregex = 'a_[0-9]{8}'\n[allowlist]\nregexes = ['^a_0']\n";
    let one = SecretsConfig::from_toml("a.toml", text).expect("parses");
    let two = SecretsConfig::from_toml("b.toml", text).expect("parses");
    assert_eq!(one, two);
    let other = SecretsConfig::from_toml("a.toml", &text.replace("{8}", "{9}")).expect("parses");
    assert_ne!(one, other);
    assert_ne!(one, SecretsConfig::default());
}
