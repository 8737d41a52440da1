//! Credential scanning and redaction for what agents produce and print.
//!
//! A [`Scanner`] holds the built-in rules (cloud, forge, registry, chat, payment and
//! model-provider keys, private key blocks, JWTs, connection strings with passwords,
//! high-entropy values assigned to credential-like names) plus the rules and allowlist of
//! a [`SecretsConfig`]. It finds credentials in text ([`Scanner::scan_text`]) and in the
//! added lines of a unified diff ([`Scanner::scan_diff`], giving [`Finding`]s that name
//! file, line, rule and a fingerprint, never the value). A [`Redactor`] replaces them,
//! and the literal values handed to an agent, by `[REDACTED:<rule>]`.
//!
//! Speed comes from one case-insensitive Aho-Corasick pass over every rule's keywords:
//! a rule's regex only runs on the lines where one of its keywords occurs. The crate
//! does no I/O.

pub mod bench;
mod cache;
mod check;
mod config;
mod diff;
mod redact;
mod rules;
mod scanner;

pub use cache::{CACHED_SCANNERS, ScannerCache};
pub use check::entropy;
pub use config::{Allowlist, ConfigError, ExtraRule, SecretsConfig, glob_match};
pub use diff::{Finding, scan_diff_literals};
pub use redact::{MIN_LITERAL_LEN, Redactor};
pub use scanner::{Match, Scanner, fingerprint};
