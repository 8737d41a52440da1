//! Redaction of what a run uploads: agents echo what they find, so every string in
//! every event of a run's output is passed through a [`Redactor`] before it leaves the
//! factory. A credential matching a built-in rule becomes `[REDACTED:<rule>]`, and the
//! literal value of every variable the engine passed to the agent (its API keys)
//! becomes `[REDACTED:env]`, so the server never stores, streams or serves them.

use crate::FactoryConfig;
use gantry_core::EngineKind;
use gantry_core::event::NewEvent;
use gantry_secrets::{Redactor, Scanner, SecretsConfig};
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

/// The scanner of the built-in rules, built once per process (building one compiles
/// every rule's pattern).
fn builtin_scanner() -> Option<&'static Scanner> {
    static SCANNER: OnceLock<Option<Scanner>> = OnceLock::new();
    SCANNER
        .get_or_init(|| match Scanner::new(&SecretsConfig::default()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "the built-in secret rules do not compile: output is not redacted");
                None
            }
        })
        .as_ref()
}

/// The redactor of a run of `engine`: the built-in rules plus the values of the
/// variables the factory passes to that engine's CLI.
pub(crate) fn for_engine(cfg: &FactoryConfig, engine: EngineKind) -> Option<Arc<Redactor>> {
    let scanner = builtin_scanner()?.clone();
    let names: &[String] = match engine {
        EngineKind::ClaudeCode => &cfg.engines.claude.env,
        EngineKind::Codex => &cfg.engines.codex.env,
        EngineKind::Command | EngineKind::Script => &[],
    };
    let values: Vec<String> = names
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .collect();
    Some(Arc::new(Redactor::new(scanner, values)))
}

/// Redacts every string in the data of `events`, in place.
pub(crate) fn events(redactor: &Redactor, events: &mut [NewEvent]) {
    for e in events {
        value(redactor, &mut e.data);
    }
}

fn value(redactor: &Redactor, v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            if let Cow::Owned(clean) = redactor.redact(s) {
                *s = clean;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| value(redactor, i)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|i| value(redactor, i)),
        _ => {}
    }
}
