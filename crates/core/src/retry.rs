//! Retry policy and backoff.

use crate::state::Outcome;

/// Longest delay between attempts, whatever the base and the attempt number.
pub const MAX_BACKOFF_MS: u64 = 10 * 60 * 1000;

/// Whether an attempt that ended with `outcome` may be followed by another one.
///
/// `attempt` is the number of the attempt that just ended (1-based). A stop requested by
/// a person (cancel or kill) always wins over the retry policy, and only outcomes of
/// the retryable kind (lost, failed, timed out) are ever retried, whatever `retry_on`
/// lists.
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
