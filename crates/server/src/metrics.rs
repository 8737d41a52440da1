//! `GET /metrics`: the server's figures in the Prometheus text exposition format
//! (version 0.0.4).
//!
//! Two kinds of figures, with different scopes:
//! - **Gauges come from the store** (jobs by state, queue depth per capability set, runs
//!   active, whether claiming is paused), so every replica of the server gives the same
//!   answer and a scrape of any one of them is the truth of the whole fleet.
//! - **Counters and the claim latency histogram are in memory, per server process**
//!   (claims, stale writes refused, lease expiries, runs finished, agent tokens and
//!   cost). Each replica counts what it did itself and starts again from zero when it
//!   restarts; sum over replicas in queries (`sum without (instance) (rate(...))`), and
//!   Prometheus' `rate` and `increase` handle the resets.
//!
//! The endpoint needs a bearer token of scope `reader` or above (a `factory` token
//! works too); Prometheus sends one with `authorization: { credentials_file: ... }` in
//! the scrape config.

pub mod checks;

use gantry_core::engine::Insights;
use gantry_core::{JobState, Outcome};
use gantry_store::{Store, StoreError};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Content type of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a computed queue depth is served before the store is asked again, so a
/// storm of scrapes (several Prometheus servers, an autoscaler polling) costs the store
/// at most one aggregate query over the queued jobs per interval.
const QUEUE_DEPTH_TTL: Duration = Duration::from_secs(1);

/// Upper bounds of the claim latency buckets, in seconds: 1 ms to 10 s.
const CLAIM_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fenced worker write, as counted when the store refuses it as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FencedWrite {
    /// A lease renewal.
    Renew,
    /// An upload of run events.
    Events,
    /// The report of a run's end.
    Finish,
}

impl FencedWrite {
    /// Every fenced write, in the order they are shown.
    const ALL: [FencedWrite; 3] = [FencedWrite::Renew, FencedWrite::Events, FencedWrite::Finish];

    fn index(self) -> usize {
        match self {
            FencedWrite::Renew => 0,
            FencedWrite::Events => 1,
            FencedWrite::Finish => 2,
        }
    }

    /// The value of the `operation` label.
    pub fn as_str(self) -> &'static str {
        match self {
            FencedWrite::Renew => "renew",
            FencedWrite::Events => "events",
            FencedWrite::Finish => "finish",
        }
    }
}

/// How one store claim call ended, as the `result` label of the claim histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimResult {
    /// A job was claimed.
    Claimed,
    /// Nothing was claimable.
    Empty,
    /// The store failed.
    Error,
}

impl ClaimResult {
    /// Every result, in the order they are shown.
    const ALL: [ClaimResult; 3] = [ClaimResult::Claimed, ClaimResult::Empty, ClaimResult::Error];

    /// The value of the `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimResult::Claimed => "claimed",
            ClaimResult::Empty => "empty",
            ClaimResult::Error => "error",
        }
    }

    /// How a store claim call ended.
    pub fn of<T, E>(r: &Result<Option<T>, E>) -> ClaimResult {
        match r {
            Ok(Some(_)) => ClaimResult::Claimed,
            Ok(None) => ClaimResult::Empty,
            Err(_) => ClaimResult::Error,
        }
    }

    fn index(self) -> usize {
        match self {
            ClaimResult::Claimed => 0,
            ClaimResult::Empty => 1,
            ClaimResult::Error => 2,
        }
    }
}

/// A histogram with fixed buckets over plain atomics.
#[derive(Debug)]
struct Histogram {
    /// Observations per bucket, not cumulative; the last slot is the `+Inf` overflow.
    buckets: Vec<AtomicU64>,
    /// Sum of the observations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: (0..=CLAIM_BUCKETS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let slot = CLAIM_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(CLAIM_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of the series with `labels`
    /// (already rendered, e.g. `result="claimed"`).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        // The count is the sum of the buckets read here, so `_count` always equals the
        // `+Inf` bucket even while other threads observe.
        let mut cumulative = 0u64;
        for (i, le) in CLAIM_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[CLAIM_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", float(sum));
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Token and cost totals of one engine and model.
#[derive(Debug, Clone, Copy, Default)]
struct AgentTotals {
    tokens_in: u64,
    tokens_out: u64,
    tokens_cached: u64,
    cost_usd: f64,
}

/// The queue depth per capability set, as last computed.
#[derive(Debug)]
struct QueueDepth {
    at: Instant,
    by_caps: BTreeMap<String, u64>,
}

/// The in-memory counters of one server process, and the cache of the store-derived
/// queue depth. Counters count what this process did: every replica keeps its own.
#[derive(Debug)]
pub struct Metrics {
    /// Store claim calls, by [`ClaimResult`].
    claims: [Histogram; 3],
    /// Leases the reaper (or a start-up) returned to the lifecycle.
    lease_expiries: AtomicU64,
    /// Fenced writes refused as stale, by [`FencedWrite`] in `FencedWrite::ALL` order.
    stale_writes: [AtomicU64; 3],
    /// Runs that ended, by outcome in `Outcome::ALL` order.
    runs_finished: [AtomicU64; Outcome::ALL.len()],
    /// Agent tokens and cost by (engine, model).
    agents: Mutex<BTreeMap<(String, String), AgentTotals>>,
    /// One computation at a time: concurrent scrapes wait for it instead of each
    /// scanning the queue.
    queue_depth: tokio::sync::Mutex<Option<QueueDepth>>,
    /// Gate results and secrets found (see [`checks`]).
    checks: checks::CheckMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Counters at zero, nothing cached.
    pub fn new() -> Metrics {
        Metrics {
            claims: [Histogram::new(), Histogram::new(), Histogram::new()],
            lease_expiries: AtomicU64::new(0),
            stale_writes: Default::default(),
            runs_finished: Default::default(),
            agents: Mutex::new(BTreeMap::new()),
            queue_depth: tokio::sync::Mutex::new(None),
            checks: checks::CheckMetrics::default(),
        }
    }

    /// Counts the gate results and secret findings of an upload the store accepted.
    pub fn checks_observed(&self, counts: checks::CheckCounts) {
        if !counts.is_empty() {
            self.checks.observe(counts);
        }
    }

    /// Records how long one store claim call took and how it ended.
    pub fn claim_observed(&self, result: ClaimResult, took: Duration) {
        self.claims[result.index()].observe(took);
    }

    /// Counts `e` when it is a stale-lease refusal of `write`, and hands it back, so a
    /// call site reads `.map_err(|e| metrics.stale_checked(FencedWrite::Renew, e))`.
    pub fn stale_checked(&self, write: FencedWrite, e: StoreError) -> StoreError {
        if matches!(e, StoreError::StaleLease { .. }) {
            self.stale_writes[write.index()].fetch_add(1, Ordering::Relaxed);
        }
        e
    }

    /// Counts runs whose expired lease was returned to the lifecycle (outcome `lost`).
    pub fn leases_expired(&self, runs: usize) {
        let n = u64::try_from(runs).unwrap_or(u64::MAX);
        self.lease_expiries.fetch_add(n, Ordering::Relaxed);
        self.count_outcome(Outcome::Lost, n);
    }

    /// Counts a run the store accepted the end of, and adds what its agent spent to
    /// the totals of `engine` and its model (the model the agent reported, else the one
    /// the job asked for, else `unknown`).
    pub fn run_finished(
        &self,
        outcome: Outcome,
        engine: &str,
        asked_model: Option<&str>,
        insights: Option<&Insights>,
    ) {
        self.count_outcome(outcome, 1);
        let Some(ins) = insights else {
            return;
        };
        let model = ins
            .model
            .as_deref()
            .or(asked_model)
            .unwrap_or("unknown")
            .to_string();
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let totals = agents.entry((engine.to_string(), model)).or_default();
        totals.tokens_in += ins.tokens_in;
        totals.tokens_out += ins.tokens_out;
        totals.tokens_cached += ins.tokens_cached;
        totals.cost_usd += ins.cost_usd.unwrap_or(0.0);
    }

    fn count_outcome(&self, outcome: Outcome, n: u64) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            self.runs_finished[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The number of queued jobs per capability set, computed at most once per
    /// [`QUEUE_DEPTH_TTL`].
    async fn queue_depth(&self, store: &dyn Store) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut cached = self.queue_depth.lock().await;
        if let Some(q) = cached.as_ref()
            && q.at.elapsed() < QUEUE_DEPTH_TTL
        {
            return Ok(q.by_caps.clone());
        }
        // The store counts in one aggregate query; no job is read.
        let mut by_caps = store.queue_depth().await?;
        // The "no capabilities" set is always shown, so a drained queue reads 0 rather
        // than a missing series.
        by_caps.entry(String::new()).or_insert(0);
        *cached = Some(QueueDepth {
            at: Instant::now(),
            by_caps: by_caps.clone(),
        });
        Ok(by_caps)
    }

    /// The whole exposition: gauges read from `store`, then this process's counters.
    pub async fn render(&self, store: &dyn Store) -> Result<String, StoreError> {
        let status = store.status().await?;
        let depth = self.queue_depth(store).await?;
        let mut out = String::with_capacity(8 * 1024);
        render_gauges(&mut out, &status.jobs, status.paused, &depth);
        self.render_counters(&mut out);
        self.render_agents(&mut out);
        self.checks.render(&mut out);
        Ok(out)
    }

    /// The per-process counters: claim latency, lease expiries, stale writes, finished
    /// runs.
    fn render_counters(&self, out: &mut String) {
        header(
            out,
            "gantry_claim_duration_seconds",
            "histogram",
            "Duration of store claim calls made by this server process (HTTP and embedded \
             factories), by result.",
        );
        for result in ClaimResult::ALL {
            let labels = format!("result=\"{}\"", result.as_str());
            self.claims[result.index()].render(out, "gantry_claim_duration_seconds", &labels);
        }

        header(
            out,
            "gantry_lease_expiries_total",
            "counter",
            "Runs whose lease expired and that this server process returned to the \
             lifecycle as lost.",
        );
        let _ = writeln!(
            out,
            "gantry_lease_expiries_total {}",
            self.lease_expiries.load(Ordering::Relaxed)
        );

        header(
            out,
            "gantry_stale_writes_total",
            "counter",
            "Worker writes this server process refused with 409 stale_lease, by operation.",
        );
        for write in FencedWrite::ALL {
            let _ = writeln!(
                out,
                "gantry_stale_writes_total{{operation=\"{}\"}} {}",
                write.as_str(),
                self.stale_writes[write.index()].load(Ordering::Relaxed)
            );
        }

        header(
            out,
            "gantry_runs_finished_total",
            "counter",
            "Runs that ended through this server process, by outcome (lost: returned by \
             the reaper).",
        );
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "gantry_runs_finished_total{{outcome=\"{}\"}} {}",
                outcome.as_str(),
                self.runs_finished[i].load(Ordering::Relaxed)
            );
        }
    }

    /// The agent tokens and cost of finished runs, by engine and model.
    fn render_agents(&self, out: &mut String) {
        let agents = self
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        header(
            out,
            "gantry_agent_tokens_total",
            "counter",
            "Agent tokens of runs that finished through this server process, by engine, \
             model and kind (in: all input tokens, cached ones included; cached: the \
             cache-read part of in; out: output tokens).",
        );
        for ((engine, model), t) in &agents {
            for (kind, n) in [
                ("in", t.tokens_in),
                ("out", t.tokens_out),
                ("cached", t.tokens_cached),
            ] {
                let _ = writeln!(
                    out,
                    "gantry_agent_tokens_total{{engine=\"{}\",model=\"{}\",kind=\"{kind}\"}} {n}",
                    label_value(engine),
                    label_value(model)
                );
            }
        }
        header(
            out,
            "gantry_agent_cost_usd_total",
            "counter",
            "Agent cost in US dollars (reported by the engine, or estimated from the price \
             table) of runs that finished through this server process, by engine and model.",
        );
        for ((engine, model), t) in &agents {
            let _ = writeln!(
                out,
                "gantry_agent_cost_usd_total{{engine=\"{}\",model=\"{}\"}} {}",
                label_value(engine),
                label_value(model),
                float(t.cost_usd)
            );
        }
    }
}

/// The `capabilities` label of a job's requirements: sorted, deduplicated,
/// comma-joined; empty for none. The rule is the store's, which counts by it.
pub use gantry_store::capability_set;

/// The gauges that come from the store: jobs by state, queue depth, active runs, pause.
fn render_gauges(
    out: &mut String,
    jobs: &BTreeMap<String, u64>,
    paused: bool,
    depth: &BTreeMap<String, u64>,
) {
    header(
        out,
        "gantry_jobs",
        "gauge",
        "Jobs by lifecycle state (from the store: the same on every replica).",
    );
    for state in JobState::ALL {
        let n = jobs.get(state.as_str()).copied().unwrap_or(0);
        let _ = writeln!(out, "gantry_jobs{{state=\"{}\"}} {n}", state.as_str());
    }

    header(
        out,
        "gantry_queue_depth",
        "gauge",
        "Queued jobs by required capability set (sorted, comma-joined; \"\" for none): \
         the signal to scale factories on. Cached for up to 1 s.",
    );
    for (caps, n) in depth {
        let _ = writeln!(
            out,
            "gantry_queue_depth{{capabilities=\"{}\"}} {n}",
            label_value(caps)
        );
    }

    header(
        out,
        "gantry_runs_active",
        "gauge",
        "Runs holding a lease now (one per running or checking job).",
    );
    let active: u64 = JobState::ALL
        .into_iter()
        .filter(|s| s.is_active())
        .filter_map(|s| jobs.get(s.as_str()))
        .sum();
    let _ = writeln!(out, "gantry_runs_active {active}");

    header(
        out,
        "gantry_queue_paused",
        "gauge",
        "1 while claiming is paused (pause or kill-all), else 0.",
    );
    let _ = writeln!(out, "gantry_queue_paused {}", u8::from(paused));
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value escaped for the text format: backslash, double quote and line feed.
fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: Rust's shortest round-trip form, with the text format's names for
/// the non-finite values.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(label_value("gpt-5"), "gpt-5");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches_inf() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(30));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "result=\"claimed\"");
        assert!(
            out.contains("x_seconds_bucket{result=\"claimed\",le=\"0.001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{result=\"claimed\",le=\"0.025\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{result=\"claimed\",le=\"10\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{result=\"claimed\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_count{result=\"claimed\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_sum{result=\"claimed\"} 30.0205\n"),
            "{out}"
        );
    }

    #[test]
    fn checking_jobs_are_counted_and_hold_active_runs() {
        let jobs: BTreeMap<String, u64> = [("running", 2), ("checking", 3), ("queued", 4)]
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        let mut out = String::new();
        render_gauges(&mut out, &jobs, false, &BTreeMap::new());
        assert!(out.contains("gantry_jobs{state=\"checking\"} 3\n"), "{out}");
        assert!(out.contains("gantry_jobs{state=\"running\"} 2\n"), "{out}");
        assert!(out.contains("gantry_runs_active 5\n"), "{out}");
    }

    #[test]
    fn floats_use_the_text_format_names() {
        assert_eq!(float(0.25), "0.25");
        assert_eq!(float(3.0), "3");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NAN), "NaN");
    }
}
