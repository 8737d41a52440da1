//! Retry policy and backoff.

use crate::state::Outcome;

/// Longest delay between attempts, whatever the base and the attempt number.
pub const MAX_BACKOFF_MS: u64 = 10 * 60 * 1000;

/// Whether an attempt that ended with `outcome` may be followed by another one.
///
/// `attempt` is the number of the attempt that just ended (1-based). A stop requested by
/// a person (cancel or kill) always wins over the retry policy, and only outcomes of
/// the retryable kind (lost, failed, timed out, gates failed) are ever retried, whatever
/// `retry_on` lists; `gates_failed` only when `retry_on` lists it, which the default does
/// not.
pub fn should_retry(
    outcome: Outcome,
    attempt: u32,
    max_attempts: u32,
    retry_on: &[Outcome],
    stop_requested: bool,
) -> bool {
    !stop_requested
        && outcome.is_retryable_kind()
        && attempt < max_attempts
        && retry_on.contains(&outcome)
}

/// Delay before attempt `attempt + 1`, after attempt `attempt` (1-based) ended:
/// `base * 2^(attempt-1)`, times a jitter factor in `[0.8, 1.2]`, capped at
/// [`MAX_BACKOFF_MS`]. `jitter` must be in `[0, 1)`; pass a random number (values
/// outside are clamped, NaN counts as 0.5). Attempt 0 counts as attempt 1.
pub fn backoff_ms(base_ms: u64, attempt: u32, jitter: f64) -> u64 {
    let exp = attempt.saturating_sub(1).min(32);
    let raw = base_ms.saturating_mul(1u64 << exp).min(MAX_BACKOFF_MS);
    // NaN would turn the whole delay into 0 (`NaN as u64`): use the middle instead.
    let jitter = if jitter.is_nan() {
        0.5
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let factor = 0.8 + 0.4 * jitter;
    ((raw as f64 * factor) as u64).min(MAX_BACKOFF_MS)
}

/// [`backoff_ms`] with a jitter drawn from the thread's random generator.
pub fn backoff_ms_random(base_ms: u64, attempt: u32) -> u64 {
    backoff_ms(base_ms, attempt, rand::random::<f64>())
}

/// Exponential backoff with jitter for retrying a call that failed in transit (to the
/// server, to the store): the one implementation every retry loop uses.
///
/// Delays double from `first` up to `max`, and each one is drawn from the upper half
/// of its step (`[d/2, d]`, "equal jitter"): a server that restarts under a hundred
/// factories must not see them all come back in the same millisecond, as plain
/// doubling makes them do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: std::time::Duration,
    max: std::time::Duration,
    step: std::time::Duration,
}

impl Backoff {
    /// A backoff whose first delay is at most `first` and whose delays never exceed
    /// `max` (when `max` is below `first`, every delay is at most `max`).
    pub fn new(first: std::time::Duration, max: std::time::Duration) -> Backoff {
        Backoff {
            first,
            max,
            step: first.min(max),
        }
    }

    /// The delay before the next try, with a jitter drawn from the thread's random
    /// generator; the step after it doubles.
    pub fn next_delay(&mut self) -> std::time::Duration {
        self.next_delay_with(rand::random::<f64>())
    }

    /// [`Backoff::next_delay`] with `jitter` in `[0, 1)` chosen by the caller (clamped;
    /// NaN counts as 0.5): the delay is `step * (1 + jitter) / 2`.
    pub fn next_delay_with(&mut self, jitter: f64) -> std::time::Duration {
        let jitter = if jitter.is_nan() {
            0.5
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let delay = self.step.mul_f64((1.0 + jitter) / 2.0);
        self.step = self.step.saturating_mul(2).min(self.max);
        delay
    }

    /// Starts over from the first delay, after a call that succeeded.
    pub fn reset(&mut self) {
        self.step = self.first.min(self.max);
    }

    /// Changes the longest delay (a heartbeat's cap is the server's interval, which the
    /// server may change); the current step is capped at once.
    pub fn set_max(&mut self, max: std::time::Duration) {
        self.max = max;
        self.step = self.step.min(max);
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_to_its_cap_with_delays_in_the_upper_half_of_each_step() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let lows: Vec<_> = (0..6).map(|_| b.next_delay_with(0.0)).collect();
        assert_eq!(lows, [ms(50), ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        let highs: Vec<_> = (0..6).map(|_| b.next_delay_with(1.0)).collect();
        assert_eq!(
            highs,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        b.reset();
        assert_eq!(b.next_delay_with(f64::NAN), ms(75));
        assert_eq!(b.next_delay_with(7.0), ms(200), "jitter is clamped");
        b.set_max(ms(120));
        assert_eq!(b.next_delay_with(1.0), ms(120));
        let mut tiny = Backoff::new(ms(500), ms(100));
        assert_eq!(tiny.next_delay_with(1.0), ms(100), "max wins over first");
    }

    #[test]
    fn random_delays_spread_within_the_step() {
        let ms = Duration::from_millis;
        let delays: std::collections::BTreeSet<_> = (0..64)
            .map(|_| Backoff::new(ms(1000), ms(1000)).next_delay())
            .collect();
        assert!(
            delays.iter().all(|d| *d >= ms(500) && *d <= ms(1000)),
            "{delays:?}"
        );
        assert!(
            delays.len() > 32,
            "64 factories would not all wait alike: {delays:?}"
        );
    }
}
