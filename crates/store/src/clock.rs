//! The clock the SQLite store reads its time from (leases, backoff, event times).
//! PostgreSQL's time is the database's own, which every server sharing it reads.

use gantry_core::time::{Millis, now_millis};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A store's clock: the system clock, moved ahead by however much it was advanced
/// (never, outside tests). Clones share one clock, so stores built with clones of one
/// clock (two stores on one file, say) agree on the time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// How far ahead of the system clock this clock runs, in ms.
    ahead_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The time now, by this clock.
    pub fn now(&self) -> Millis {
        now_millis().saturating_add(self.ahead_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every clone of it) ahead by `by`, so a test of leases or
    /// backoff need not sleep for them to lapse.
    #[cfg(feature = "testing")]
    pub fn advance(&self, by: std::time::Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.ahead_ms.fetch_add(by, Ordering::Relaxed);
    }
}
