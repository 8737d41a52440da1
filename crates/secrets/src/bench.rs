//! The scanner benchmark behind `gantry bench secrets`: diff-shaped text (unified diff
//! hunks of ordinary code, with credentials planted at intervals), scanned and redacted
//! against a clock.

use std::fmt;
use std::time::{Duration, Instant};

use crate::{Redactor, Scanner};

/// Lines of ordinary code, some with words that wake the prefilter (`key`, `token`,
/// `password`, URLs), as diffs of real projects have.
const CODE: &[&str] = &[
    "    let config = Config::load(&path)?;",
    "    if user.is_admin() { return Ok(()); }",
    "def handle_request(request, cache_key=None):",
    "    const token = await getAccessToken(session);",
    "import os",
    "    # Retry once: the first call may race the cache warm-up.",
    "    assert_eq!(result.len(), 3);",
    "      \"version\": \"1.2.3\",",
    "    password_min_length = 12",
    "    api_key: str = Field(..., description=\"API key\")",
    "    for (key, value) in map.iter() {",
    "        out.push_str(&format!(\"{key}={value}\\n\"));",
    "    }",
    "}",
    "",
    "export function renderRow(item) { return <Row key={item.id} label={item.name} />; }",
    "    logger.info(\"fetched %d rows from %s\", len(rows), url)",
    "    see https://docs.acme.io/guide/tokens#rotation for the rotation policy",
    "    return self.session.get(f\"{self.base}/v2/orders\", timeout=30)",
    "SELECT id, name, created_at FROM users WHERE org_id = $1 ORDER BY created_at DESC;",
    "    match state { State::Running => tick(), State::Done => break, _ => {} }",
    "        .map(|line| line.trim_end().to_string())",
    "  - name: build",
    "    run: cargo build --locked --release",
    "    secret_ref = vault.path(\"kv/app/db\")",
];

/// Deterministic pseudo-random numbers (xorshift), so every run scans the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn string(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| char::from(alphabet[self.below(alphabet.len())]))
            .collect()
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";

/// A freshly generated fake credential line (never a real one) of one of a few formats.
fn planted(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => format!("GH_TOKEN=ghp_{}", rng.string(ALNUM, 36)),
        1 => format!(
            "    client = OpenAI(api_key=\"sk-proj-{}T3BlbkFJ{}\")",
            rng.string(ALNUM, 40),
            rng.string(ALNUM, 40)
        ),
        2 => format!(
            "DATABASE_URL=postgres://app:{}@db:5432/app",
            rng.string(ALNUM, 20)
        ),
        _ => format!(
            "AWS_ACCESS_KEY_ID=AKIA{}",
            rng.string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
        ),
    }
}

/// Diff-shaped text of about `bytes` bytes, and how many credentials were planted in
/// it (one added line in about every 2,000).
pub fn diff_text(bytes: usize) -> (String, usize) {
    let mut rng = Rng(0x5EC2_E75C_A11E_D00D);
    let mut out = String::with_capacity(bytes + 4096);
    let mut planted_count = 0;
    let mut file = 0;
    while out.len() < bytes {
        file += 1;
        let name = format!("src/module_{file}/handler.rs");
        out.push_str(&format!(
            "diff --git a/{name} b/{name}\nindex {}..{} 100644\n--- a/{name}\n+++ b/{name}\n",
            rng.string(HEX, 7),
            rng.string(HEX, 7)
        ));
        let mut line = 1 + rng.below(50);
        for _ in 0..1 + rng.below(4) {
            let (removed, added) = (rng.below(6), 1 + rng.below(20));
            out.push_str(&format!(
                "@@ -{line},{} +{line},{} @@ fn handler()\n",
                removed + 6,
                added + 6
            ));
            let mut hunk = Vec::new();
            hunk.extend((0..3).map(|_| format!(" {}", CODE[rng.below(CODE.len())])));
            hunk.extend((0..removed).map(|_| format!("-{}", CODE[rng.below(CODE.len())])));
            for _ in 0..added {
                if rng.below(2000) == 0 {
                    planted_count += 1;
                    hunk.push(format!("+{}", planted(&mut rng)));
                } else {
                    hunk.push(format!("+{}", CODE[rng.below(CODE.len())]));
                }
            }
            hunk.extend((0..3).map(|_| format!(" {}", CODE[rng.below(CODE.len())])));
            for l in hunk {
                out.push_str(&l);
                out.push('\n');
            }
            line += added + 40;
        }
    }
    (out, planted_count)
}

/// What the benchmark measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Size of the scanned text in bytes.
    pub bytes: usize,
    /// Credentials planted in it.
    pub planted: usize,
    /// Findings of `scan_diff` (at least `planted`).
    pub found: usize,
    /// Best time of `scan_diff` over the runs.
    pub scan: Duration,
    /// Best time of `Redactor::redact` over the runs.
    pub redact: Duration,
}

impl BenchReport {
    /// Megabytes (10^6 bytes) per second scanned by `scan_diff`.
    pub fn scan_mb_per_s(&self) -> f64 {
        mb_per_s(self.bytes, self.scan)
    }

    /// Megabytes (10^6 bytes) per second redacted.
    pub fn redact_mb_per_s(&self) -> f64 {
        mb_per_s(self.bytes, self.redact)
    }
}

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "text: {:.1} MB of unified diff, {} credentials planted, {} found",
            self.bytes as f64 / 1e6,
            self.planted,
            self.found
        )?;
        writeln!(
            f,
            "scan_diff: {:.1} MB/s ({:.1} ms, best of runs)",
            self.scan_mb_per_s(),
            self.scan.as_secs_f64() * 1e3
        )?;
        writeln!(
            f,
            "redact: {:.1} MB/s ({:.1} ms, best of runs)",
            self.redact_mb_per_s(),
            self.redact.as_secs_f64() * 1e3
        )?;
        write!(f, "secrets_mb_per_s={:.1}", self.scan_mb_per_s())
    }
}

/// Generates about `mb` megabytes of diff text and times `runs` scans and redactions
/// of it with the built-in rules, keeping the best time of each.
pub fn run(mb: usize, runs: usize) -> BenchReport {
    let (text, planted) = diff_text(mb.max(1) * 1_000_000);
    let scanner = Scanner::builtin();
    let redactor = Redactor::new(scanner.clone(), ["a-value-given-to-the-agent"]);
    let mut scan = Duration::MAX;
    let mut redact = Duration::MAX;
    let mut found = 0;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        found = scanner.scan_diff(&text).len();
        scan = scan.min(t.elapsed());
        let t = Instant::now();
        let out = redactor.redact(&text);
        redact = redact.min(t.elapsed());
        drop(out);
    }
    BenchReport {
        bytes: text.len(),
        planted,
        found,
        scan,
        redact,
    }
}
