//! Integration tests for gantry-secrets: rules, diffs, redaction, configuration and the
//! corpus. Every credential here is generated with the right shape from a fixed seed:
//! none is real.

mod config;
mod corpus;
mod diff;
mod redact;
mod rules;

/// Alphanumerics, both cases.
pub const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Lowercase hex digits.
pub const HEX: &str = "0123456789abcdef";
/// URL-safe base64.
pub const URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `n` characters of `alphabet`, pseudo-random from `seed` (xorshift): a fake value
/// with the entropy of a real one.
pub fn fake(alphabet: &str, n: usize, seed: u64) -> String {
    let chars: Vec<char> = alphabet.chars().collect();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chars[(x % chars.len() as u64) as usize]
        })
        .collect()
}
