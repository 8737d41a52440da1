//! Claude Code stream-json edge cases the recorded transcripts do not show.

use gantry_engine::event::MAX_TEXT_BYTES;
use gantry_engine::{AgentEvent, Format};
use serde_json::json;

use crate::{insights, parse, parse_chunked};

fn lines(values: &[serde_json::Value]) -> String {
    values
        .iter()
        .map(|v| v.to_string() + "\n")
        .collect::<String>()
}

fn result_of(evs: &[AgentEvent]) -> AgentEvent {
    evs.iter()
        .rev()
        .find(|e| matches!(e, AgentEvent::Result { .. }))
        .cloned()
        .expect("a result event")
}

#[test]
fn issue3_a_line_over_one_megabyte_is_one_message_cut_to_4_kib() {
    let text = "é".repeat(600_000) + "end";
    let line = json!({"type": "assistant", "message": {"id": "m1", "content": [{"type": "text", "text": text}]}});
    let out = lines(&[line]);
    assert!(out.len() > 1_000_000);
    let evs = parse_chunked(Format::ClaudeStreamJson, out.as_bytes(), 65_521);
    let messages: Vec<&String> = evs
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Message { text } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(messages.len(), 1);
    let cut = messages[0];
    assert!(cut.len() <= MAX_TEXT_BYTES, "{} bytes", cut.len());
    assert!(cut.starts_with("éé"));
    let kept = cut.find('…').expect("a cut marker");
    assert!(cut.ends_with(&format!("[{} bytes cut]", text.len() - kept)));
}

#[test]
fn unknown_types_and_non_json_lines_are_kept_raw() {
    let out = "{\"type\":\"brand_new\",\"x\":1}\nnot json at all\n\n{\"type\":\"system\",\"subtype\":\"hook_response\"}\n[1,2]\n";
    let evs = parse(Format::ClaudeStreamJson, out);
    assert_eq!(
        evs,
        [
            AgentEvent::Raw {
                source_type: "brand_new".to_string(),
                line: json!({"type": "brand_new", "x": 1}),
            },
            AgentEvent::Raw {
                source_type: "text".to_string(),
                line: json!("not json at all"),
            },
            AgentEvent::Raw {
                source_type: "system/hook_response".to_string(),
                line: json!({"type": "system", "subtype": "hook_response"}),
            },
            AgentEvent::Raw {
                source_type: "text".to_string(),
                line: json!("[1,2]"),
            },
        ]
    );
    assert!(evs.iter().all(|e| e.kind() == "agent.raw"));
}

#[test]
fn older_versions_missing_fields() {
    let out = lines(&[
        json!({"type": "system", "subtype": "init", "session_id": "s-old"}),
        json!({"type": "assistant", "message": {"content": [{"type": "text", "text": "hi"}]}}),
        json!({"type": "assistant", "message": {"content": [{"type": "tool_use", "name": "Read"}]}}),
        json!({"type": "user", "message": {"content": [{"type": "tool_result"}]}}),
        json!({"type": "result", "subtype": "success", "cost_usd": 0.5}),
    ]);
    let evs = parse(Format::ClaudeStreamJson, &out);
    assert_eq!(
        evs[0],
        AgentEvent::SessionStarted {
            session_id: "s-old".to_string(),
            model: None
        }
    );
    assert!(evs.contains(&AgentEvent::ToolCall {
        id: None,
        name: "Read".to_string(),
        input: None
    }));
    assert!(evs.contains(&AgentEvent::ToolResult {
        id: None,
        is_error: false,
        output: None
    }));
    let i = insights(&evs);
    assert_eq!(i.session_id.as_deref(), Some("s-old"));
    assert_eq!(i.turns, 2, "lines without a message id are one turn each");
    assert_eq!((i.tokens_in, i.tokens_out), (0, 0));
    assert_eq!(
        i.cost_usd,
        Some(0.5),
        "older versions named the total cost_usd"
    );
    assert_eq!(i.success, Some(true));
}

#[test]
fn error_max_turns_without_result_text() {
    let out = lines(&[json!({
        "type": "result", "subtype": "error_max_turns", "is_error": false,
        "num_turns": 3, "total_cost_usd": 0.01, "session_id": "s1",
        "usage": {"input_tokens": 1, "output_tokens": 2}
    })]);
    let evs = parse(Format::ClaudeStreamJson, &out);
    assert_eq!(
        evs,
        [AgentEvent::Result {
            success: false,
            error_kind: Some("error_max_turns".to_string()),
            num_turns: Some(3),
            cost_usd: Some(0.01),
            tokens_in: Some(1),
            tokens_out: Some(2),
            tokens_cached: Some(0),
            session_id: Some("s1".to_string()),
            text: None,
        }]
    );
    let i = insights(&evs);
    assert_eq!(i.success, Some(false));
    assert_eq!(i.error_kind.as_deref(), Some("error_max_turns"));
}

#[test]
fn is_error_with_subtype_success_is_an_api_error() {
    // What Claude Code prints offline: retries, a synthetic message, then this result.
    let out = lines(&[
        json!({"type": "system", "subtype": "init", "session_id": "s2", "model": "claude-sonnet-4-5"}),
        json!({"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 10, "retry_delay_ms": 500, "error_status": null, "error": "connection refused"}),
        json!({"type": "assistant", "message": {"id": "x", "model": "<synthetic>", "content": [{"type": "text", "text": "API Error: Connection error."}], "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        json!({"type": "result", "subtype": "success", "is_error": true, "num_turns": 1, "result": "API Error: Connection error.", "total_cost_usd": 0}),
    ]);
    let evs = parse(Format::ClaudeStreamJson, &out);
    assert_eq!(
        evs[1],
        AgentEvent::Notice {
            message: "API retry 1/10: connection refused, next in 500 ms".to_string()
        }
    );
    let AgentEvent::Result {
        success,
        error_kind,
        text,
        ..
    } = result_of(&evs)
    else {
        unreachable!()
    };
    assert!(!success);
    assert_eq!(error_kind.as_deref(), Some("api_error"));
    assert_eq!(text.as_deref(), Some("API Error: Connection error."));
    let i = insights(&evs);
    assert_eq!(i.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(i.success, Some(false));
    assert_eq!(
        i.error_message.as_deref(),
        Some("API Error: Connection error.")
    );
    assert_eq!(i.cost_usd, Some(0.0));
}

#[test]
fn model_usage_is_summed_over_models() {
    let out = lines(&[json!({
        "type": "result", "subtype": "success", "is_error": false, "num_turns": 2,
        "total_cost_usd": 0.25,
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5, "output_tokens": 50},
        "modelUsage": {
            "claude-sonnet-4-5": {"inputTokens": 10, "outputTokens": 50, "cacheReadInputTokens": 100, "cacheCreationInputTokens": 5, "costUSD": 0.2},
            "claude-haiku-4-5": {"inputTokens": 300, "outputTokens": 20, "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0, "costUSD": 0.05}
        }
    })]);
    let i = insights(&parse(Format::ClaudeStreamJson, &out));
    assert_eq!(i.tokens_in, 115 + 300);
    assert_eq!(i.tokens_out, 70);
    assert_eq!(i.tokens_cached, 100);
    assert_eq!(i.cost_usd, Some(0.25));
}

#[test]
fn model_usage_cost_is_used_when_the_total_is_missing() {
    let out = lines(&[json!({
        "type": "result", "subtype": "success",
        "modelUsage": {
            "a": {"inputTokens": 1, "outputTokens": 1, "costUSD": 0.5},
            "b": {"inputTokens": 1, "outputTokens": 1, "costUSD": 0.25}
        }
    })]);
    let i = insights(&parse(Format::ClaudeStreamJson, &out));
    assert_eq!(i.cost_usd, Some(0.75));
    assert_eq!(i.tokens(), 4);
}

#[test]
fn a_growing_usage_of_one_message_is_counted_once() {
    let msg = |blocks: serde_json::Value, out: u64| {
        json!({"type": "assistant", "message": {"id": "m", "model": "claude-sonnet-4-5",
            "content": blocks, "usage": {"input_tokens": 100, "output_tokens": out}}})
    };
    let out = lines(&[
        msg(json!([{"type": "text", "text": "a"}]), 5),
        msg(
            json!([{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}]),
            40,
        ),
        msg(
            json!([{"type": "tool_use", "id": "t2", "name": "Bash", "input": {"command": "pwd"}}]),
            40,
        ),
        json!({"type": "assistant", "message": {"id": "m2", "content": [], "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    ]);
    let evs = parse(Format::ClaudeStreamJson, &out);
    let i = insights(&evs);
    assert_eq!(i.turns, 2);
    assert_eq!(i.tool_calls, 2);
    assert_eq!(i.tokens_in, 110);
    assert_eq!(i.tokens_out, 41);
    assert!(evs.contains(&AgentEvent::ToolCall {
        id: Some("t1".to_string()),
        name: "Bash".to_string(),
        input: Some("{\"command\":\"ls\"}".to_string()),
    }));
}

#[test]
fn tool_result_content_blocks_become_text() {
    let out = lines(&[json!({"type": "user", "message": {"content": [
        {"type": "tool_result", "tool_use_id": "t", "is_error": true,
         "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}
    ]}})]);
    assert_eq!(
        parse(Format::ClaudeStreamJson, &out),
        [AgentEvent::ToolResult {
            id: Some("t".to_string()),
            is_error: true,
            output: Some("one\ntwo".to_string()),
        }]
    );
}

#[test]
fn a_huge_unknown_event_is_kept_small() {
    let out = lines(&[
        json!({"type": "mystery", "blob": "x".repeat(2_000_000), "list": vec!["y".repeat(3000); 50]}),
    ]);
    let evs = parse(Format::ClaudeStreamJson, &out);
    let [AgentEvent::Raw { source_type, line }] = evs.as_slice() else {
        panic!("one raw event, got {evs:?}")
    };
    assert_eq!(source_type, "mystery");
    assert!(line.to_string().len() <= 5 * MAX_TEXT_BYTES);
}
