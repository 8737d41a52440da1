//! Admission: whether the machine has room for one more run. A factory does not claim
//! while available memory or the data dir's free disk space is under its thresholds
//! (agent CLIs take 1.5 to 2 GB each; machines that run too many of them die).
//!
//! The same measures feed the factory's heartbeats, so the figures the server lists
//! are the ones admission judges by.

use crate::FactoryConfig;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Whether a factory claims, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Admission {
    /// There is room: the factory claims as usual.
    Open,
    /// Available memory (`MemAvailable` of `/proc/meminfo`) is under the threshold.
    LowMemory {
        /// Available memory, MiB.
        available_mb: u64,
        /// The threshold, MiB ([`FactoryConfig::min_free_memory_mb`]).
        min_mb: u64,
    },
    /// Free disk space of the data dir's file system is under the threshold.
    LowDisk {
        /// The data dir.
        path: PathBuf,
        /// Free space for unprivileged users, MiB.
        free_mb: u64,
        /// The threshold, MiB ([`FactoryConfig::min_free_disk_mb`]).
        min_mb: u64,
    },
}

impl Admission {
    /// Whether the factory claims.
    pub fn is_open(&self) -> bool {
        *self == Admission::Open
    }
}

impl std::fmt::Display for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admission::Open => f.write_str("claiming"),
            Admission::LowMemory {
                available_mb,
                min_mb,
            } => write!(
                f,
                "not claiming: {available_mb} MiB of memory available, under the minimum of {min_mb} MiB"
            ),
            Admission::LowDisk {
                path,
                free_mb,
                min_mb,
            } => write!(
                f,
                "not claiming: {free_mb} MiB free on the disk of {}, under the minimum of {min_mb} MiB",
                path.display()
            ),
        }
    }
}

/// Available memory in MiB (`MemAvailable` of `/proc/meminfo`), or `None` when the
/// kernel does not say.
pub fn available_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_available_kib(&text).map(|kib| kib / 1024)
}

/// `MemAvailable` in KiB from the text of `/proc/meminfo`.
fn mem_available_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The load average over the last minute (first field of `/proc/loadavg`), or `None`
/// when the kernel does not say.
pub fn load_1m() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    load_1m_of(&text)
}

/// The one-minute load from the text of `/proc/loadavg`; `None` unless it is a finite
/// number, 0 or more (what the server accepts).
fn load_1m_of(loadavg: &str) -> Option<f64> {
    let load: f64 = loadavg.split_whitespace().next()?.parse().ok()?;
    (load.is_finite() && load >= 0.0).then_some(load)
}

/// Free space in MiB for unprivileged users on the file system holding `path`.
pub fn free_disk_mb(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let bytes = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
    Some(bytes / (1024 * 1024))
}

/// Checks both thresholds of `cfg` now. A figure that cannot be read does not close
/// admission (the check is a guard, not a requirement).
pub fn check(cfg: &FactoryConfig) -> Admission {
    if cfg.min_free_memory_mb > 0
        && let Some(available_mb) = available_memory_mb()
        && available_mb < cfg.min_free_memory_mb
    {
        return Admission::LowMemory {
            available_mb,
            min_mb: cfg.min_free_memory_mb,
        };
    }
    if cfg.min_free_disk_mb > 0
        && let Some(free_mb) = free_disk_mb(&cfg.data_dir)
        && free_mb < cfg.min_free_disk_mb
    {
        return Admission::LowDisk {
            path: cfg.data_dir.clone(),
            free_mb,
            min_mb: cfg.min_free_disk_mb,
        };
    }
    Admission::Open
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let text = "MemTotal:       24683712 kB\nMemFree:        22366016 kB\nMemAvailable:   23674880 kB\n";
        assert_eq!(mem_available_kib(text), Some(23674880));
        assert_eq!(mem_available_kib("MemTotal: 1 kB\n"), None);
        assert!(available_memory_mb().is_some_and(|m| m > 0));
    }

    #[test]
    fn load_is_read_from_loadavg() {
        assert_eq!(load_1m_of("0.52 0.58 0.59 1/467 12345\n"), Some(0.52));
        assert_eq!(load_1m_of(""), None);
        assert_eq!(load_1m_of("NaN 0 0"), None);
        assert_eq!(load_1m_of("-1 0 0"), None);
        assert!(load_1m().is_some_and(|l| l >= 0.0));
    }

    #[test]
    fn thresholds_close_admission_and_zero_disables_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = FactoryConfig {
            data_dir: dir.path().to_path_buf(),
            min_free_memory_mb: 0,
            min_free_disk_mb: 0,
            ..FactoryConfig::default()
        };
        assert_eq!(check(&cfg), Admission::Open);
        assert!(free_disk_mb(dir.path()).is_some_and(|m| m > 0));
        cfg.min_free_disk_mb = u64::MAX;
        let low = check(&cfg);
        assert!(
            matches!(&low, Admission::LowDisk { path, min_mb, .. } if path == dir.path() && *min_mb == u64::MAX),
            "{low:?}"
        );
        assert!(low.to_string().contains("free on the disk"), "{low}");
        cfg.min_free_memory_mb = u64::MAX;
        let low = check(&cfg);
        assert!(matches!(low, Admission::LowMemory { .. }), "{low:?}");
        assert!(!low.is_open());
    }
}
