//! Judging a candidate value once a rule's regex matched: entropy, placeholders, code.

/// Shannon entropy of `value` in bits per byte.
pub fn entropy(value: &str) -> f64 {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[usize::from(b)] += 1;
    }
    let len = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

/// Fragments that mark a value as a stand-in for a credential, not one.
const PLACEHOLDER_PARTS: &[&str] = &[
    "example",
    "changeme",
    "change_me",
    "change-me",
    "placeholder",
    "your_",
    "your-",
    "yourkey",
    "yourtoken",
    "yoursecret",
    "<",
    ">",
    "${",
    "{{",
    "%(",
    "%s",
    "xxxx",
    "****",
    "....",
    "redacted",
    "dummy",
    "insert",
    "replace",
    "notreal",
    "not_real",
    "not-a-real",
];

/// Whole values that are defaults or words, never credentials.
const PLACEHOLDER_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "root",
    "admin",
    "guest",
    "test",
    "user",
    "postgres",
    "mysql",
    "redis",
    "none",
    "null",
    "nil",
    "true",
    "false",
    "undefined",
    "empty",
    "default",
];

/// Credentials published in vendors' documentation for everyone to copy, and prefixes
/// of keys that are public by design (Stripe's publishable keys).
const PUBLIC_VALUES: &[&str] = &[
    "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "pk_test_TYooMQauvdEDq54NiTphI7jx",
];
const PUBLIC_PREFIXES: &[&str] = &["pk_live_", "pk_test_"];

/// Whether `value` is a placeholder: a documentation example, a template reference, a
/// masked value, or a key that is public by design.
pub fn is_placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    PUBLIC_VALUES.contains(&value)
        || PUBLIC_PREFIXES.iter().any(|p| value.starts_with(p))
        || PLACEHOLDER_WORDS.contains(&lower.as_str())
        || PLACEHOLDER_PARTS.iter().any(|p| lower.contains(p))
        || lower.starts_with('$')
        || lower.starts_with('%')
}

/// Whether an unquoted assigned value reads as code rather than as a literal: a dotted
/// path (`self.password`), snake_case words (`db_password`), or a UUID-shaped identifier.
pub fn looks_like_code(value: &str) -> bool {
    let ident = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let dotted = value.contains('.') && value.split('.').all(ident);
    // A path in a language (`a::b`), or what follows a shell expansion's name
    // (`${NAME:?message}`, `${NAME:-default}`).
    let path = value.contains("::") || value.starts_with(['?', ':', '-', '+', '=']);
    let snake = value.contains('_')
        && value
            .split('_')
            .all(|w| w.chars().all(|c| c.is_ascii_lowercase()))
        || value.contains('_')
            && value
                .split('_')
                .all(|w| w.chars().all(|c| c.is_ascii_uppercase()));
    dotted || snake || path
}

/// Whether `value` is lowercase words joined by `-` or `_` (`pypi-token`,
/// `my_secret_value`): a name or a phrase standing in for a value, far more often than a
/// credential.
pub fn is_word_slug(value: &str) -> bool {
    value.contains(['-', '_'])
        && value
            .split(['-', '_'])
            .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()))
}

/// Whether `value` mixes at least two of lowercase letters, uppercase letters and
/// digits, as random values do; words, names and host names do not.
pub fn mixes_classes(value: &str) -> bool {
    let lower = value.bytes().any(|b| b.is_ascii_lowercase());
    let upper = value.bytes().any(|b| b.is_ascii_uppercase());
    let digit = value.bytes().any(|b| b.is_ascii_digit());
    usize::from(lower) + usize::from(upper) + usize::from(digit) >= 2
}

/// Whether `value` is a file path (`/etc/x`, `./x`, `~/x`): assigned to a `*_KEY` name
/// it says where a key is, not what it is.
pub fn is_path(value: &str) -> bool {
    ["/", "./", "../", "~/"]
        .iter()
        .any(|p| value.starts_with(p))
}

/// Whether `value` is a long run of distinct characters: an alphabet or a permutation
/// of one, where a random value of that length would repeat some.
pub fn is_alphabet(value: &str) -> bool {
    let mut seen = [false; 256];
    value.len() >= 26
        && value
            .bytes()
            .all(|b| !std::mem::replace(&mut seen[usize::from(b)], true))
}

/// Whether `value` has the shape of a UUID, which names things rather than proving
/// anything when assigned to a `*_KEY` or `*_TOKEN` name.
pub fn is_uuid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_grows_with_randomness() {
        assert_eq!(entropy(""), 0.0);
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("abab") - 1.0).abs() < 1e-9);
        assert!(entropy("q8Xz3LmP0vR7tY2wK9bN4cF6") > 4.0);
    }

    #[test]
    fn placeholders_are_recognised() {
        for v in [
            "changeme",
            "${API_KEY}",
            "<your-key>",
            "xxxxxxxxxxxx",
            "AKIAIOSFODNN7EXAMPLE",
            "{{ secrets.TOKEN }}",
            "password",
        ] {
            assert!(is_placeholder(v), "{v}");
        }
        assert!(!is_placeholder("q8Xz3LmP0vR7tY2wK9bN4cF6"));
    }

    #[test]
    fn code_is_not_a_value() {
        assert!(looks_like_code("self.password"));
        assert!(looks_like_code("db_password_from_env"));
        assert!(looks_like_code("DB_PASSWORD"));
        assert!(!looks_like_code("hunter2hunter2"));
        assert!(!looks_like_code("Xk9_pL2m_Qr7"));
        assert!(looks_like_code("serde::options::Policy::PassThrough"));
        assert!(looks_like_code("?ADMIN_TOKEN_FILE"));
        assert!(!mixes_classes("kubernetes.io/hostname"));
        assert!(mixes_classes("hunter2hunter2"));
        assert!(is_path("/server-1/admin.token"));
        assert!(is_alphabet(
            "hijklmnopuvwDEFqrABCxyzsHIJGPQRSTUVWXYZKLMNOgabctdfe"
        ));
        assert!(!is_alphabet(
            "q8Xz3LmP0vR7tY2wK9bN4cF6q8Xz3LmP0vR7tY2wK9bN4cF6"
        ));
        assert!(is_word_slug("pypi-token"));
        assert!(!is_word_slug("pypi-t0ken"));
        assert!(is_uuid("123e4567-e89b-12d3-a456-426614174000"));
        assert!(!is_uuid("123e4567e89b12d3a456426614174000"));
    }
}
