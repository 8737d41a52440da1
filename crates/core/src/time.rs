//! Timestamps: milliseconds since the Unix epoch, as the store keeps them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// The current wall-clock time in milliseconds since the Unix epoch.
///
/// Only the store may use this to decide lease expiry (it stands for "the database
/// clock" on the embedded backend); workers must never compare it with lease times.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Formats a timestamp as RFC 3339 with millisecond precision, e.g. `2026-11-22T05:09:00.123Z`.
pub fn rfc3339(ms: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses an RFC 3339 timestamp back into milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Result<Millis, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("invalid timestamp {s:?}: {e}"))
        .and_then(|t| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as Millis)
                .map_err(|e| format!("timestamp {s:?} is before 1970: {e}"))
        })
}

/// Serde adapter: `Option<Millis>` as an RFC 3339 string or null.
pub mod opt_rfc3339 {
    use super::Millis;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as an RFC 3339 string or null.
    pub fn serialize<S: Serializer>(v: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(ms) => s.serialize_str(&super::rfc3339(*ms)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes an RFC 3339 string or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
        let v: Option<String> = Option::deserialize(d)?;
        v.map(|s| super::parse_rfc3339(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Serde adapter: `Millis` as an RFC 3339 string.
pub mod rfc3339_millis {
    use super::Millis;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as an RFC 3339 string.
    pub fn serialize<S: Serializer>(v: &Millis, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*v))
    }

    /// Deserializes an RFC 3339 string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}
