//! Scanners kept per configuration: building one compiles every rule (tens of
//! milliseconds), while a factory checks many results with the same few configurations.

use crate::{ConfigError, Scanner, SecretsConfig};
use std::sync::Mutex;

/// The most configurations a cache keeps; the least recently used goes first.
pub const CACHED_SCANNERS: usize = 16;

/// Built scanners by configuration, at most [`CACHED_SCANNERS`].
#[derive(Default)]
pub struct ScannerCache {
    /// (configuration as text, scanner), the most recently used last.
    entries: Mutex<Vec<(String, Scanner)>>,
}

impl std::fmt::Debug for ScannerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map_or(0, |e| e.len());
        f.debug_struct("ScannerCache").field("entries", &n).finish()
    }
}

impl ScannerCache {
    /// The scanner of `config`: built once, then cloned (a clone shares the compiled
    /// rules).
    pub fn get(&self, config: &SecretsConfig) -> Result<Scanner, ConfigError> {
        // The debug form names every rule's pattern, every disabled rule and every
        // allowlist entry, so equal texts are equal configurations.
        let key = format!("{config:?}");
        {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = entries.iter().position(|(k, _)| *k == key) {
                let entry = entries.remove(i);
                let scanner = entry.1.clone();
                entries.push(entry);
                return Ok(scanner);
            }
        }
        // Built outside the lock: another configuration need not wait for this one.
        let scanner = Scanner::new(config)?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if !entries.iter().any(|(k, _)| *k == key) {
            if entries.len() >= CACHED_SCANNERS {
                entries.remove(0);
            }
            entries.push((key, scanner.clone()));
        }
        Ok(scanner)
    }

    /// How many configurations are kept.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_scanner_per_configuration_and_the_oldest_goes_first() {
        let cache = ScannerCache::default();
        let base = SecretsConfig::default();
        let a = cache.get(&base).expect("builds");
        let again = cache.get(&base).expect("cached");
        assert_eq!(cache.len(), 1);
        // Put together here, so this file holds no credential.
        let text = format!("aws_access_key_id = AKIA{}", "QWERTYUIOPASDFGH");
        assert_eq!(a.scan_text(&text).len(), 1);
        assert_eq!(again.scan_text(&text).len(), 1);
        for i in 0..CACHED_SCANNERS + 2 {
            let mut c = SecretsConfig::default();
            c.disabled.push(format!("rule-{i}"));
            cache.get(&c).expect("builds");
        }
        assert_eq!(cache.len(), CACHED_SCANNERS);
    }
}
