//! Every shared transcript, parsed with the exact figures its README states.

use gantry_engine::{AgentEvent, Format, Insights};

use crate::{fixture, insights, insights_from, parse_chunked};

/// Expected figures of one transcript.
struct Expect {
    session: &'static str,
    model: Option<&'static str>,
    tokens_in: u64,
    tokens_out: u64,
    tokens_cached: u64,
    cost: Option<f64>,
    turns: u32,
    tool_calls: u32,
    tool_errors: u32,
}

fn check(got: &Insights, e: &Expect) {
    assert_eq!(got.session_id.as_deref(), Some(e.session));
    assert_eq!(got.model.as_deref(), e.model);
    assert_eq!(got.tokens_in, e.tokens_in, "tokens in");
    assert_eq!(got.tokens_out, e.tokens_out, "tokens out");
    assert_eq!(got.tokens_cached, e.tokens_cached, "tokens cached");
    assert_eq!(got.cost_usd, e.cost, "cost");
    assert_eq!(got.turns, e.turns, "turns");
    assert_eq!(got.tool_calls, e.tool_calls, "tool calls");
    assert_eq!(got.tool_errors, e.tool_errors, "tool errors");
    assert_eq!(got.success, Some(true), "success");
    assert_eq!(got.error_kind, None);
    assert_eq!(got.tokens(), e.tokens_in + e.tokens_out);
}

/// Parses a fixture in several chunkings; every one must give the same events.
fn events(format: Format, rel: &str) -> Vec<AgentEvent> {
    let bytes = fixture(rel);
    let whole = parse_chunked(format, &bytes, bytes.len());
    for chunk in [1, 7, 4096] {
        assert_eq!(
            parse_chunked(format, &bytes, chunk),
            whole,
            "chunk size {chunk}"
        );
    }
    assert!(
        !whole.iter().any(|e| matches!(e, AgentEvent::Raw { .. })),
        "{rel}: every line of a real transcript is understood: {whole:?}"
    );
    whole
}

#[test]
fn claude_basic_success() {
    let evs = events(
        Format::ClaudeStreamJson,
        "claude/03_basic_success_cc2.1.7.ndjson",
    );
    let got = insights(&evs);
    // 21580 = input 10 + cache read 0 + cache creation 21570.
    check(
        &got,
        &Expect {
            session: "1d1e46f9-35c7-4834-b529-846d5bb82288",
            model: Some("claude-opus-4-5-20251101"),
            tokens_in: 21580,
            tokens_out: 25,
            tokens_cached: 0,
            cost: Some(0.1354875),
            turns: 1,
            tool_calls: 0,
            tool_errors: 0,
        },
    );
    assert!(
        !got.cost_estimated,
        "the reported cost replaces the estimate"
    );
    assert!(evs.contains(&AgentEvent::Message {
        text: "4".to_string()
    }));
    assert!(matches!(
        evs.last(),
        Some(AgentEvent::Result { success: true, text: Some(t), num_turns: Some(1), .. }) if t == "4"
    ));
}

#[test]
fn claude_basic_success_is_estimated_before_the_result() {
    let evs = events(
        Format::ClaudeStreamJson,
        "claude/03_basic_success_cc2.1.7.ndjson",
    );
    let before_result: Vec<AgentEvent> = evs
        .iter()
        .filter(|e| !matches!(e, AgentEvent::Result { .. }))
        .cloned()
        .collect();
    let live = insights(&before_result);
    assert!(live.cost_estimated);
    // claude-opus-4-5 at 5 USD/Mtok in, 25 out: 21580 in, 5 out so far.
    let expected = (21580.0 * 5.0 + 5.0 * 25.0) / 1e6;
    assert!((live.cost_usd.expect("estimated") - expected).abs() < 1e-12);
    assert_eq!(live.success, None);
}

#[test]
fn claude_parallel_bash_with_permission_denials() {
    let evs = events(
        Format::ClaudeStreamJson,
        "claude/04_permission_denied_parallel_bash_REASSEMBLED.jsonl",
    );
    let got = insights(&evs);
    check(
        &got,
        &Expect {
            session: "1f2f4a66-82a4-42e2-b93d-089998d779e6",
            model: Some("claude-sonnet-4-5-20250929"),
            tokens_in: 10 + 5534 + 32197,
            tokens_out: 368,
            tokens_cached: 32197,
            cost: Some(0.0395976),
            turns: 4,
            tool_calls: 3,
            tool_errors: 2,
        },
    );
    // The three lines share one message id: one turn and one usage while streaming.
    let turns = evs
        .iter()
        .filter(|e| matches!(e, AgentEvent::TurnStarted { .. }))
        .count();
    assert_eq!(turns, 1);
    let usages: Vec<_> = evs
        .iter()
        .filter(|e| matches!(e, AgentEvent::Usage { .. }))
        .collect();
    assert_eq!(
        usages,
        [&AgentEvent::Usage {
            tokens_in: 3 + 5153 + 13522,
            tokens_out: 5,
            tokens_cached: 13522,
            cost_usd: None,
            model: Some("claude-sonnet-4-5-20250929".to_string()),
        }]
    );
    assert!(evs.contains(&AgentEvent::ToolResult {
        id: Some("toolu_01Dfka2kj68yXQu4hz86frtp".to_string()),
        is_error: false,
        output: Some("Wed Jan 21 04:38:15 PM PST 2026".to_string()),
    }));
    assert!(evs.iter().any(|e| matches!(
        e,
        AgentEvent::ToolCall { name, input: Some(input), .. } if name == "Bash" && input.contains("ls -la /tmp")
    )));
}

/// The figures of a Codex transcript: one turn, success, no model and so no cost.
fn codex(rel: &str, session: &'static str, tokens: (u64, u64, u64), tool_calls: u32) {
    let evs = events(Format::CodexJson, rel);
    let (tokens_in, tokens_cached, tokens_out) = tokens;
    check(
        &insights(&evs),
        &Expect {
            session,
            model: None,
            tokens_in,
            tokens_out,
            tokens_cached,
            cost: None,
            turns: 1,
            tool_calls,
            tool_errors: 0,
        },
    );
    // Codex prints no result line: the parser's finish adds it.
    assert!(matches!(
        evs.last(),
        Some(AgentEvent::Result { success: true, error_kind: None, num_turns: Some(1), session_id: Some(s), .. }) if s == session
    ));
    // With the requested model known, the cost is estimated from the price table.
    let priced = insights_from(Insights::with_model("gpt-5-codex"), &evs);
    let expected = ((tokens_in - tokens_cached) as f64 * 1.25
        + tokens_cached as f64 * 0.125
        + tokens_out as f64 * 10.0)
        / 1e6;
    assert!(priced.cost_estimated);
    assert!((priced.cost_usd.expect("estimated") - expected).abs() < 1e-12);
}

#[test]
fn codex_multi_command() {
    codex(
        "codex/02_multi_command.jsonl",
        "019c8143-abe2-7722-9bd1-fd70f687175b",
        (30669, 28288, 205),
        3,
    );
}

#[test]
fn codex_file_change_then_verify() {
    codex(
        "codex/03_file_change_then_verify.jsonl",
        "019c8143-62bb-7e43-8f0a-66dac76af4d4",
        (22857, 20736, 250),
        2,
    );
    let evs = events(Format::CodexJson, "codex/03_file_change_then_verify.jsonl");
    assert!(evs.contains(&AgentEvent::ToolCall {
        id: Some("item_3".to_string()),
        name: "file_change".to_string(),
        input: Some("update /tmp/codex_patch_test/test.txt".to_string()),
    }));
}

#[test]
fn codex_file_create_via_shell() {
    codex(
        "codex/05_file_create_via_shell.jsonl",
        "019c8142-d8f0-7dd0-ad95-5fa85af406da",
        (15115, 13184, 137),
        1,
    );
}

#[test]
fn codex_list_files() {
    codex(
        "codex/06_list_files.jsonl",
        "019c8140-cd1c-7581-977c-e10f043ac849",
        (15562, 13184, 599),
        1,
    );
}

#[test]
fn codex_hello_world_no_tools() {
    codex(
        "codex/07_hello_world_no_tools.jsonl",
        "019c8140-6f07-7fb1-86f8-4813739c32bb",
        (7464, 6528, 25),
        0,
    );
    let evs = events(Format::CodexJson, "codex/07_hello_world_no_tools.jsonl");
    let messages: Vec<_> = evs
        .iter()
        .filter(|e| matches!(e, AgentEvent::Message { .. }))
        .collect();
    assert_eq!(
        messages,
        [&AgentEvent::Message {
            text: "hello world".to_string()
        }],
        "reasoning items are skipped"
    );
}

#[test]
fn copies_match_the_readme_list() {
    let readme = String::from_utf8(fixture("README.md")).expect("utf-8");
    for rel in [
        "claude/03_basic_success_cc2.1.7.ndjson",
        "claude/04_permission_denied_parallel_bash_REASSEMBLED.jsonl",
        "codex/02_multi_command.jsonl",
        "codex/03_file_change_then_verify.jsonl",
        "codex/05_file_create_via_shell.jsonl",
        "codex/06_list_files.jsonl",
        "codex/07_hello_world_no_tools.jsonl",
    ] {
        assert!(readme.contains(rel), "README attributes {rel}");
        assert!(!fixture(rel).is_empty());
    }
}
