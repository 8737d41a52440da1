//! Codex `exec --json` edge cases the recorded transcripts do not show.

use gantry_engine::{AgentEvent, Fold, Format, Insights, Price, PriceTable};
use serde_json::json;

use crate::{insights, insights_from, parse};

fn lines(values: &[serde_json::Value]) -> String {
    values
        .iter()
        .map(|v| v.to_string() + "\n")
        .collect::<String>()
}

#[test]
fn issue3_turn_failed_is_the_result_and_error_lines_are_notices() {
    let out = lines(&[
        json!({"type": "thread.started", "thread_id": "t-1"}),
        json!({"type": "turn.started"}),
        json!({"type": "error", "message": "Reconnecting... 1/5"}),
        json!({"type": "item.completed", "item": {"id": "e", "type": "error", "message": "model fell back"}}),
        json!({"type": "turn.failed", "error": {"message": "stream disconnected before completion"}}),
    ]);
    let evs = parse(Format::CodexJson, &out);
    assert_eq!(
        evs,
        [
            AgentEvent::SessionStarted {
                session_id: "t-1".to_string(),
                model: None
            },
            AgentEvent::TurnStarted { turn: 1 },
            AgentEvent::Notice {
                message: "Reconnecting... 1/5".to_string()
            },
            AgentEvent::Notice {
                message: "model fell back".to_string()
            },
            AgentEvent::Result {
                success: false,
                error_kind: Some("turn_failed".to_string()),
                num_turns: Some(1),
                cost_usd: None,
                tokens_in: None,
                tokens_out: None,
                tokens_cached: None,
                session_id: Some("t-1".to_string()),
                text: Some("stream disconnected before completion".to_string()),
            },
        ],
        "finish adds no second result"
    );
    let i = insights(&evs);
    assert_eq!(i.success, Some(false));
    assert_eq!(i.error_kind.as_deref(), Some("turn_failed"));
}

#[test]
fn offline_codex_that_never_completes_a_turn_fails_at_finish() {
    let out = lines(&[
        json!({"type": "thread.started", "thread_id": "t-2"}),
        json!({"type": "turn.started"}),
        json!({"type": "error", "message": "Reconnecting... 5/5"}),
    ]);
    let evs = parse(Format::CodexJson, &out);
    assert!(matches!(
        evs.last(),
        Some(AgentEvent::Result { success: false, error_kind: Some(k), .. }) if k == "no_turn_completed"
    ));
}

#[test]
fn failed_commands_and_items_without_a_start_are_tool_errors() {
    let out = lines(&[
        json!({"type": "thread.started", "thread_id": "t-3", "model": "o4-mini"}),
        json!({"type": "turn.started"}),
        // Older versions: no exit_code on item.started.
        json!({"type": "item.started", "item": {"id": "i1", "type": "command_execution", "command": "false", "status": "in_progress"}}),
        json!({"type": "item.updated", "item": {"id": "i1", "type": "command_execution", "command": "false", "status": "in_progress"}}),
        json!({"type": "item.completed", "item": {"id": "i1", "type": "command_execution", "command": "false", "aggregated_output": "", "exit_code": 1, "status": "failed"}}),
        json!({"type": "item.completed", "item": {"id": "i2", "type": "mcp_tool_call", "server": "docs", "tool": "search", "arguments": {"q": "x"}, "status": "failed", "error": {"message": "timeout"}}}),
        json!({"type": "item.completed", "item": {"id": "i3", "type": "web_search", "query": "rust"}}),
        json!({"type": "item.completed", "item": {"id": "i4", "type": "todo_list", "items": []}}),
        json!({"type": "item.completed", "item": {"id": "i5", "type": "future_thing"}}),
        json!({"type": "turn.completed", "usage": {"input_tokens": 1000, "cached_input_tokens": 400, "output_tokens": 100}}),
    ]);
    let evs = parse(Format::CodexJson, &out);
    let calls: Vec<_> = evs
        .iter()
        .filter(|e| matches!(e, AgentEvent::ToolCall { .. }))
        .collect();
    assert_eq!(calls.len(), 3, "{evs:?}");
    assert!(evs.contains(&AgentEvent::ToolCall {
        id: Some("i2".to_string()),
        name: "mcp_tool_call".to_string(),
        input: Some("docs.search {\"q\":\"x\"}".to_string()),
    }));
    assert!(evs.contains(&AgentEvent::ToolResult {
        id: Some("i2".to_string()),
        is_error: true,
        output: Some("timeout".to_string()),
    }));
    assert!(evs.iter().any(|e| matches!(
        e,
        AgentEvent::Raw { source_type, .. } if source_type == "item.completed:future_thing"
    )));
    let i = insights(&evs);
    assert_eq!(i.tool_calls, 3);
    assert_eq!(i.tool_errors, 2);
    assert_eq!(i.model.as_deref(), Some("o4-mini"));
    // o4-mini: 600 uncached at 1.10, 400 cached at 0.275, 100 out at 4.40 per Mtok.
    let expected = (600.0 * 1.1 + 400.0 * 0.275 + 100.0 * 4.4) / 1e6;
    assert!(i.cost_estimated);
    assert!((i.cost_usd.expect("estimated") - expected).abs() < 1e-12);
    assert_eq!(i.success, Some(true));
}

#[test]
fn cost_of_several_turns_comes_from_a_config_price_table() {
    let out = lines(&[
        json!({"type": "thread.started", "thread_id": "t-4"}),
        json!({"type": "turn.started"}),
        json!({"type": "turn.completed", "usage": {"input_tokens": 2_000_000, "cached_input_tokens": 1_000_000, "output_tokens": 100_000}}),
        json!({"type": "turn.started"}),
        json!({"type": "turn.completed", "usage": {"input_tokens": 1_000_000, "cached_input_tokens": 0, "output_tokens": 0}}),
    ]);
    let evs = parse(Format::CodexJson, &out);
    let mut prices = PriceTable::default();
    prices.models.insert(
        "my-model".to_string(),
        Price {
            input_per_mtok: 2.0,
            cached_input_per_mtok: 0.5,
            output_per_mtok: 10.0,
        },
    );
    let mut i = Insights::with_model("my-model-2025");
    i.apply_all(&evs, &prices);
    assert_eq!(
        (i.tokens_in, i.tokens_cached, i.tokens_out),
        (3_000_000, 1_000_000, 100_000)
    );
    assert_eq!(i.turns, 2);
    // 2 Mtok uncached at 2.0, 1 Mtok cached at 0.5, 0.1 Mtok out at 10.0.
    assert_eq!(i.cost_usd, Some(4.0 + 0.5 + 1.0));
    assert!(i.cost_estimated);
    // Without a price for the model there is no cost at all, never a guess.
    let unknown = insights_from(Insights::with_model("other"), &evs);
    assert_eq!(unknown.cost_usd, None);
    assert!(!unknown.cost_estimated);
}
