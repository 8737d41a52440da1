//! The built-in rules: one entry per credential format.
//!
//! Each rule names the literals that every match must contain (lowercase; the prefilter
//! matches them ASCII case-insensitively) so that text without any of them is never
//! given to a regex. The part of a match that is the credential itself is the capture
//! group named `secret` (or `secret2`, for a second alternative); without one, the whole
//! match is the credential.

/// How a rule's candidate value is judged after its regex matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A credential with a distinctive shape: only placeholders and low entropy are
    /// rejected.
    Token,
    /// A value assigned to a credential-like name: it must also look random (entropy,
    /// length) and not like code (an identifier, a call, a reference to a variable).
    Assignment,
}

/// One built-in rule, before compilation.
pub(crate) struct Builtin {
    /// Stable identifier, shown in findings and in `[REDACTED:<id>]`.
    pub id: &'static str,
    /// Literals every match contains, lowercase.
    pub keywords: &'static [&'static str],
    /// The full pattern.
    pub regex: String,
    /// Minimum Shannon entropy (bits per byte) of the value.
    pub entropy: f64,
    /// Minimum length of the value in bytes.
    pub min_len: usize,
    /// Whether a match may span lines (a private key block).
    pub multiline: bool,
    /// How the value is judged.
    pub kind: Kind,
}

/// The boundary after a token whose alphabet includes `-`: `\b` cannot express it.
const END: &str = r"(?:[^A-Za-z0-9_-]|$)";
/// An assignment operator between a name and its value, with optional quoting.
const ASSIGN: &str = r#"["']?\s*(?::=|=>|==?|:)\s*"#;

fn token(id: &'static str, keywords: &'static [&'static str], regex: String) -> Builtin {
    Builtin {
        id,
        keywords,
        regex,
        entropy: 3.0,
        min_len: 8,
        multiline: false,
        kind: Kind::Token,
    }
}

/// A value assigned to a name matching `name` (a case-insensitive pattern): quoted, any
/// characters but quotes and spaces; unquoted (an `.env`, INI or YAML line), it must
/// end the line, or come before a comment, so that `name: Type,` and `name: Type =`
/// in code are not values.
fn assignment(name: &str, min: usize) -> String {
    format!(
        r#"(?im){name}{ASSIGN}(?:["'`](?P<secret>[^"'`\s]{{{min},300}})["'`]|(?P<secret2>[^"'`\s,;(){{}}\[\]<>$&\\]{{{min},300}})[ \t]*(?:#.*)?$)"#
    )
}

/// Every built-in rule, in a stable order (the first rule wins when two match the
/// same bytes).
pub(crate) fn builtins() -> Vec<Builtin> {
    let mut rules = vec![
        // Cloud providers.
        token(
            "aws-access-key-id",
            &["akia", "asia", "abia", "acca", "a3t"],
            r"\b(?P<secret>(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b".into(),
        ),
        token(
            "aws-secret-access-key",
            &["aws"],
            format!(
                r#"(?i)aws[a-z0-9_.-]{{0,30}}(?:secret|private)[a-z0-9_.-]{{0,20}}{ASSIGN}["']?(?P<secret>[A-Za-z0-9/+]{{40}})(?:[^A-Za-z0-9/+=]|$)"#
            ),
        ),
        token(
            "gcp-service-account-key-id",
            &["private_key_id"],
            r#""private_key_id"\s*:\s*"(?P<secret>[a-f0-9]{40})""#.into(),
        ),
        token(
            "azure-storage-key",
            &["accountkey"],
            r"(?i)AccountKey=(?P<secret>[A-Za-z0-9+/]{86}==)".into(),
        ),
        token(
            "azure-sas-token",
            &["sig="],
            r"\bsv=\d{4}-\d\d-\d\d&[^\s\x22']*?\bsig=(?P<secret>[A-Za-z0-9%+/]{40,})".into(),
        ),
        token(
            "digitalocean-token",
            &["dop_v1_", "doo_v1_", "dor_v1_"],
            r"\b(?P<secret>do[por]_v1_[a-f0-9]{64})\b".into(),
        ),
        token(
            "databricks-token",
            &["dapi"],
            r"\b(?P<secret>dapi[a-f0-9]{32}(?:-\d)?)\b".into(),
        ),
        token(
            "vault-token",
            &["hvs.", "hvb."],
            r"\b(?P<secret>hv[sb]\.[A-Za-z0-9_-]{90,})".into(),
        ),
        token(
            "terraform-cloud-token",
            &[".atlasv1."],
            r"\b(?P<secret>[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_-]{60,70})".into(),
        ),
        // Forges and registries.
        token(
            "github-token",
            &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
            r"\b(?P<secret>gh[pousr]_[A-Za-z0-9]{36,255})\b".into(),
        ),
        token(
            "github-fine-grained-token",
            &["github_pat_"],
            r"\b(?P<secret>github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})\b".into(),
        ),
        token(
            "gitlab-token",
            &[
                "glpat-", "gldt-", "glrt-", "glptt-", "glsoat-", "glcbt-", "glimt-", "gloas-",
            ],
            r"\b(?P<secret>gl(?:pat|dt|rt|ptt|soat|cbt|imt|oas)-[A-Za-z0-9_-]{20,})".into(),
        ),
        token(
            "npm-token",
            &["npm_"],
            r"\b(?P<secret>npm_[A-Za-z0-9]{36})\b".into(),
        ),
        token(
            "pypi-token",
            &["pypi-ageichlwas5vcmc"],
            r"\b(?P<secret>pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,})".into(),
        ),
        token(
            "dockerhub-token",
            &["dckr_pat_"],
            r"\b(?P<secret>dckr_pat_[A-Za-z0-9_-]{27,})".into(),
        ),
        token(
            "atlassian-token",
            &["atatt3"],
            r"\b(?P<secret>ATATT3[A-Za-z0-9_=-]{150,})".into(),
        ),
        token(
            "postman-token",
            &["pmak-"],
            r"\b(?P<secret>PMAK-[a-f0-9]{24}-[a-f0-9]{34})\b".into(),
        ),
        token(
            "linear-token",
            &["lin_api_"],
            r"\b(?P<secret>lin_api_[A-Za-z0-9]{40})\b".into(),
        ),
        token(
            "shopify-token",
            &["shpat_", "shpca_", "shppa_", "shpss_"],
            r"\b(?P<secret>shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32})\b".into(),
        ),
        token(
            "age-secret-key",
            &["age-secret-key-1"],
            r"\b(?P<secret>AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58})\b".into(),
        ),
        // Chat.
        token(
            "slack-token",
            &["xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-", "xapp-"],
            r"\b(?P<secret>xox[baprs]-[0-9A-Za-z-]{10,}|xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+)".into(),
        ),
        token(
            "slack-webhook",
            &["hooks.slack.com"],
            r"(?P<secret>https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,})"
                .into(),
        ),
        token(
            "discord-webhook",
            &["discord"],
            r"(?P<secret>https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d{17,20}/[A-Za-z0-9_-]{60,68})"
                .into(),
        ),
        token(
            "discord-bot-token",
            &["discord", "bot"],
            r"(?i)(?:discord|bot)[^\n]{0,80}?(?-i:\b(?P<secret>[MNO][A-Za-z0-9_-]{23,27}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,40}))"
                .into(),
        ),
        token(
            "telegram-bot-token",
            &[":aa"],
            format!(r"\b(?P<secret>\d{{8,10}}:AA[0-9A-Za-z_-]{{33}}){END}"),
        ),
        token(
            "sendgrid-token",
            &["sg."],
            format!(r"\b(?P<secret>SG\.[A-Za-z0-9_-]{{22}}\.[A-Za-z0-9_-]{{43}}){END}"),
        ),
        token(
            "mailchimp-key",
            &["-us"],
            r"\b(?P<secret>[0-9a-f]{32}-us\d{1,2})\b".into(),
        ),
        token(
            "mailgun-key",
            &["key-"],
            r"\b(?P<secret>key-[0-9a-f]{32})\b".into(),
        ),
        token(
            "twilio-api-key",
            // No keyword: the regex's own literal search finds `SK` faster than a
            // case-insensitive prefilter hit on every "task" would.
            &[],
            r"\b(?P<secret>SK[0-9a-f]{32})\b".into(),
        ),
        // Payment.
        token(
            "stripe-secret-key",
            &["sk_live_", "rk_live_"],
            r"\b(?P<secret>[sr]k_live_[0-9A-Za-z]{24,99})\b".into(),
        ),
        token(
            "square-token",
            &["sq0atp-", "sq0csp-"],
            format!(r"\b(?P<secret>sq0atp-[0-9A-Za-z_-]{{22}}|sq0csp-[0-9A-Za-z_-]{{43}}){END}"),
        ),
        token(
            "braintree-access-token",
            &["access_token$production$"],
            r"\b(?P<secret>access_token\$production\$[0-9a-z]{16}\$[0-9a-f]{32})\b".into(),
        ),
        // Model providers.
        token(
            "anthropic-api-key",
            &["sk-ant-"],
            r"\b(?P<secret>sk-ant-[a-z]{2,10}\d\d-[A-Za-z0-9_-]{80,120})".into(),
        ),
        token(
            "openai-api-key",
            &["t3blbkfj", "sk-proj-", "sk-svcacct-", "sk-admin-"],
            r"\b(?P<secret>sk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_-]{20,100}T3BlbkFJ[A-Za-z0-9_-]{20,100}|sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{60,200})"
                .into(),
        ),
        token(
            "openrouter-api-key",
            &["sk-or-v1-"],
            r"\b(?P<secret>sk-or-v1-[a-f0-9]{64})\b".into(),
        ),
        token(
            "google-api-key",
            &["aiza"],
            format!(r"\b(?P<secret>AIza[0-9A-Za-z_-]{{35}}){END}"),
        ),
        token(
            "google-oauth-secret",
            &["gocspx-"],
            format!(r"\b(?P<secret>GOCSPX-[A-Za-z0-9_-]{{28}}){END}"),
        ),
        token(
            "huggingface-token",
            &["hf_"],
            r"\b(?P<secret>hf_[A-Za-z]{34})\b".into(),
        ),
        token(
            "groq-api-key",
            &["gsk_"],
            r"\b(?P<secret>gsk_[A-Za-z0-9]{52})\b".into(),
        ),
        token(
            "replicate-token",
            &["r8_"],
            r"\b(?P<secret>r8_[A-Za-z0-9]{37})\b".into(),
        ),
        token(
            "perplexity-api-key",
            &["pplx-"],
            r"\b(?P<secret>pplx-[A-Za-z0-9]{48})\b".into(),
        ),
        token(
            "xai-api-key",
            &["xai-"],
            r"\b(?P<secret>xai-[A-Za-z0-9]{80})\b".into(),
        ),
        token(
            "langsmith-api-key",
            &["lsv2_"],
            r"\b(?P<secret>lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10})\b".into(),
        ),
        // Generic formats.
        Builtin {
            multiline: true,
            // A header and footer around an elided body are documentation.
            min_len: 120,
            ..token(
                "private-key",
                &["private key"],
                r"(?P<secret>-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s\\:,-]*))"
                    .into(),
            )
        },
        token(
            "jwt",
            &["eyj"],
            r"\b(?P<secret>eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})".into(),
        ),
        Builtin {
            entropy: 0.0,
            min_len: 3,
            ..token(
                "connection-string-password",
                &[
                    "postgres", "mysql", "mariadb", "mongodb", "redis", "amqp", "mssql",
                    "sqlserver", "ldap", "smtp", "ftp",
                ],
                r#"(?i)\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver|ldaps?|smtps?|s?ftp)://[^\s:/@"'<>\[\](){}]{0,100}:(?P<secret>[^\s@/"'<>]{3,200})@[^\s/"'<>:]+"#
                    .into(),
            )
        },
        Builtin {
            entropy: 3.0,
            ..token(
                "url-credentials",
                &["http"],
                r#"\bhttps?://[^\s:/@"'<>\[\](){}]{1,100}:(?P<secret>[^\s@/"'<>]{8,200})@[^\s/"'<>:]+"#
                    .into(),
            )
        },
    ];
    rules.push(Builtin {
        entropy: 3.5,
        min_len: 16,
        kind: Kind::Assignment,
        ..token(
            "generic-secret",
            &["key", "secret", "token", "credential"],
            assignment(
                r"[a-z0-9_.-]{0,40}(?:key|secret|token|credential)s?[a-z0-9_-]{0,20}",
                16,
            ),
        )
    });
    rules.push(Builtin {
        entropy: 2.5,
        min_len: 8,
        kind: Kind::Assignment,
        ..token(
            "password",
            &["passw", "pwd", "passphrase"],
            assignment(
                r"[a-z0-9_.-]{0,30}(?:password|passwd|passphrase|pwd)[a-z0-9_-]{0,20}",
                8,
            ),
        )
    });
    rules
}
