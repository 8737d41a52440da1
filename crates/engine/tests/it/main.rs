//! Integration tests of gantry-engine: the stream parsers against real recorded
//! transcripts and synthetic edge cases, insights, prices and budgets, the CLI
//! adapters' command lines, and the script engine run with a real `sh`.

mod adapter;
mod budget;
mod claude;
mod codex;
mod insights;
mod lines;
mod script;
mod transcripts;

use gantry_engine::{AgentEvent, Fold, Format, Insights, LineBuffer, PriceTable, parser};

/// The crate's copies of the shared transcripts.
pub fn fixture(rel: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    std::fs::read(format!("{path}{rel}")).expect("fixture readable")
}

/// Feeds `bytes` to a parser of `format` in chunks of `chunk` bytes, through a
/// [`LineBuffer`], as a run's output would arrive, and returns every event.
pub fn parse_chunked(format: Format, bytes: &[u8], chunk: usize) -> Vec<AgentEvent> {
    let mut lines = LineBuffer::new();
    let mut p = parser(format);
    let mut events = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        for line in lines.push(piece) {
            events.extend(p.line(&line));
        }
    }
    if let Some(line) = lines.finish() {
        events.extend(p.line(&line));
    }
    events.extend(p.finish());
    events
}

/// Parses a whole output at once.
pub fn parse(format: Format, text: &str) -> Vec<AgentEvent> {
    parse_chunked(format, text.as_bytes(), text.len().max(1))
}

/// The insights of `events` with the built-in prices, starting from `start`.
pub fn insights_from(start: Insights, events: &[AgentEvent]) -> Insights {
    let mut i = start;
    i.apply_all(events, &PriceTable::builtin());
    i
}

/// The insights of `events` with the built-in prices.
pub fn insights(events: &[AgentEvent]) -> Insights {
    insights_from(Insights::default(), events)
}
