//! Retry policy and backoff.

use gantry_core::Outcome;
use gantry_core::retry::{MAX_BACKOFF_MS, backoff_ms, backoff_ms_random, should_retry};

const ALL_KINDS: [Outcome; 3] = [Outcome::Lost, Outcome::Failed, Outcome::TimedOut];

#[test]
fn should_retry_cases() {
    use Outcome::*;
    // (outcome, attempt that ended, max_attempts, retry_on, stop requested, expected)
    type Case = (Outcome, u32, u32, &'static [Outcome], bool, bool);
    let cases: &[Case] = &[
        (Lost, 1, 3, &[Lost], false, true),
        (Lost, 2, 3, &[Lost], false, true),
        (Lost, 3, 3, &[Lost], false, false),
        (Lost, 4, 3, &[Lost], false, false),
        (Lost, 1, 1, &[Lost], false, false),
        (Failed, 1, 3, &[Lost], false, false),
        (Failed, 1, 3, &[Lost, Failed], false, true),
        (TimedOut, 1, 3, &[Lost, Failed], false, false),
        (TimedOut, 1, 3, &[TimedOut], false, true),
        // A result that failed its checks is retried only when retry_on lists it.
        (GatesFailed, 1, 3, &[Lost], false, false),
        (GatesFailed, 1, 3, &ALL_KINDS, false, false),
        (GatesFailed, 1, 3, &[GatesFailed], false, true),
        (GatesFailed, 3, 3, &[GatesFailed], false, false),
        (GatesFailed, 1, 3, &[GatesFailed], true, false),
        (Lost, 1, 3, &[], false, false),
        // A person's stop wins over the policy.
        (Lost, 1, 3, &[Lost], true, false),
        (Failed, 1, 3, &ALL_KINDS, true, false),
        // Never retried, whatever retry_on says.
        (Succeeded, 1, 3, &[Succeeded], false, false),
        (Killed, 1, 3, &[Killed], false, false),
        (Canceled, 1, 3, &[Canceled], false, false),
        (BudgetExceeded, 1, 3, &[BudgetExceeded], false, false),
        (Succeeded, 1, 3, &ALL_KINDS, false, false),
        (Killed, 1, 3, &ALL_KINDS, false, false),
        (Canceled, 1, 3, &ALL_KINDS, false, false),
        // Large counts.
        (Failed, 99, 100, &ALL_KINDS, false, true),
        (Failed, 100, 100, &ALL_KINDS, false, false),
        (Failed, u32::MAX, u32::MAX, &ALL_KINDS, false, false),
    ];
    for &(outcome, attempt, max, retry_on, stop, want) in cases {
        assert_eq!(
            should_retry(outcome, attempt, max, retry_on, stop),
            want,
            "should_retry({outcome}, {attempt}, {max}, {retry_on:?}, {stop})"
        );
    }
}

#[test]
fn backoff_doubles_per_attempt_with_middle_jitter() {
    // Jitter 0.5 is a factor of exactly 1.
    assert_eq!(backoff_ms(5_000, 1, 0.5), 5_000);
    assert_eq!(backoff_ms(5_000, 2, 0.5), 10_000);
    assert_eq!(backoff_ms(5_000, 3, 0.5), 20_000);
    assert_eq!(backoff_ms(5_000, 4, 0.5), 40_000);
    assert_eq!(backoff_ms(5_000, 5, 0.5), 80_000);
    assert_eq!(backoff_ms(1_000, 7, 0.5), 64_000);
}

#[test]
fn attempt_zero_counts_as_the_first() {
    assert_eq!(backoff_ms(5_000, 0, 0.5), 5_000);
}

/// Whether `got` is `raw * factor`, allowing one millisecond for float truncation.
fn near(got: u64, raw: u64, factor: f64) -> bool {
    let want = raw as f64 * factor;
    (got as f64 - want).abs() <= 1.0
}

#[test]
fn jitter_ends_are_0_8_and_1_2() {
    for attempt in 1..=6 {
        let raw = 5_000u64 << (attempt - 1);
        let low = backoff_ms(5_000, attempt, 0.0);
        let high = backoff_ms(5_000, attempt, 0.999_999_999);
        assert!(
            near(low, raw, 0.8),
            "attempt {attempt}: low {low} vs raw {raw}"
        );
        assert!(
            near(high, raw, 1.2),
            "attempt {attempt}: high {high} vs raw {raw}"
        );
    }
}

#[test]
fn jitter_outside_its_range_is_clamped() {
    assert_eq!(backoff_ms(10_000, 1, -3.0), backoff_ms(10_000, 1, 0.0));
    assert_eq!(backoff_ms(10_000, 1, 7.0), backoff_ms(10_000, 1, 1.0));
    assert_eq!(
        backoff_ms(10_000, 1, f64::NEG_INFINITY),
        backoff_ms(10_000, 1, 0.0)
    );
    assert_eq!(
        backoff_ms(10_000, 1, f64::INFINITY),
        backoff_ms(10_000, 1, 1.0)
    );
    // NaN must not collapse the delay to 0.
    assert_eq!(backoff_ms(10_000, 1, f64::NAN), 10_000);
}

#[test]
fn random_jitter_stays_within_bounds() {
    for attempt in 1..=5u32 {
        let raw = 2_000u64 << (attempt - 1);
        for _ in 0..500 {
            let d = backoff_ms_random(2_000, attempt);
            let lo = (raw as f64 * 0.8) as u64 - 1;
            let hi = (raw as f64 * 1.2) as u64 + 1;
            assert!(
                (lo..=hi).contains(&d),
                "attempt {attempt}: {d} not in {lo}..={hi}"
            );
        }
    }
}

#[test]
fn random_jitter_varies() {
    // 200 draws all equal would mean the jitter is not applied at all.
    let first = backoff_ms_random(100_000, 1);
    assert!((0..200).any(|_| backoff_ms_random(100_000, 1) != first));
}

#[test]
fn capped_at_ten_minutes() {
    assert_eq!(MAX_BACKOFF_MS, 600_000);
    // 5 s × 2^7 = 640 s, over the cap.
    for attempt in [8, 9, 20, 32, 33, 64] {
        for jitter in [0.0, 0.5, 0.999] {
            let d = backoff_ms(5_000, attempt, jitter);
            assert!(d <= MAX_BACKOFF_MS, "attempt {attempt}: {d}");
            assert!(d >= MAX_BACKOFF_MS * 8 / 10 - 1, "attempt {attempt}: {d}");
        }
    }
    assert_eq!(backoff_ms(5_000, 20, 0.5), MAX_BACKOFF_MS);
    assert_eq!(backoff_ms(5_000, 20, 0.999), MAX_BACKOFF_MS);
}

#[test]
fn no_overflow_at_extreme_inputs() {
    for attempt in [100, 1_000, u32::MAX] {
        assert_eq!(backoff_ms(5_000, attempt, 0.5), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(u64::MAX, attempt, 0.999), MAX_BACKOFF_MS);
        assert!(backoff_ms_random(5_000, attempt) <= MAX_BACKOFF_MS);
    }
    assert_eq!(backoff_ms(u64::MAX, 1, 0.5), MAX_BACKOFF_MS);
}

#[test]
fn zero_base_means_no_delay() {
    assert_eq!(backoff_ms(0, 1, 0.5), 0);
    assert_eq!(backoff_ms(0, 100, 0.999), 0);
}
