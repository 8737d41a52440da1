//! Line splitting, format names, and the Gantry JSON lines and text parsers.

use gantry_engine::event::{MAX_TEXT_BYTES, clip};
use gantry_engine::{AgentEvent, Format, LineBuffer};
use serde_json::json;

use crate::{parse, parse_chunked};

#[test]
fn issue3_chunks_split_mid_utf8_and_mid_line() {
    let input = "héllo wörld 🎉\r\nsecond 日本語\n\nlast without end".as_bytes();
    for chunk in 1..=input.len() {
        let mut buf = LineBuffer::new();
        let mut lines = Vec::new();
        for piece in input.chunks(chunk) {
            lines.extend(buf.push(piece));
        }
        lines.extend(buf.finish());
        assert_eq!(
            lines,
            ["héllo wörld 🎉", "second 日本語", "", "last without end"],
            "chunk size {chunk}"
        );
        assert_eq!(buf.finish(), None, "finish empties the buffer");
    }
}

#[test]
fn a_line_of_many_megabytes_arrives_whole() {
    let big = "x".repeat(5 * 1024 * 1024);
    let input = format!("a\n{big}\nb\n");
    let mut buf = LineBuffer::new();
    let mut lines = Vec::new();
    for piece in input.as_bytes().chunks(8191) {
        lines.extend(buf.push(piece));
    }
    assert_eq!(buf.pending_len(), 0);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1].len(), big.len());
    assert_eq!(lines[2], "b");
}

#[test]
fn invalid_utf8_is_replaced_not_fatal() {
    let mut buf = LineBuffer::new();
    let lines = buf.push(b"ok \xff\xfe end\n");
    assert_eq!(lines, ["ok \u{fffd}\u{fffd} end"]);
}

#[test]
fn format_names_round_trip() {
    for f in Format::ALL {
        assert_eq!(Format::parse(f.as_str()), Some(f));
        assert_eq!(
            serde_json::to_value(f).expect("serializes"),
            json!(f.as_str())
        );
        assert_eq!(
            serde_json::from_value::<Format>(json!(f.as_str())).expect("deserializes"),
            f
        );
    }
    assert_eq!(
        Format::parse("claude-stream-json"),
        Some(Format::ClaudeStreamJson)
    );
    assert_eq!(Format::parse("codex-json"), Some(Format::CodexJson));
    assert_eq!(Format::parse("gantry-jsonl"), Some(Format::GantryJsonl));
    assert_eq!(Format::parse("text"), Some(Format::Text));
    assert_eq!(Format::parse("json"), None);
}

#[test]
fn event_kinds_and_serde_shape() {
    let cases = [
        (
            AgentEvent::SessionStarted {
                session_id: "s".to_string(),
                model: None,
            },
            "agent.session_started",
            "session_started",
        ),
        (
            AgentEvent::TurnStarted { turn: 1 },
            "agent.turn_started",
            "turn_started",
        ),
        (
            AgentEvent::Message {
                text: "m".to_string(),
            },
            "agent.message",
            "message",
        ),
        (
            AgentEvent::ToolCall {
                id: None,
                name: "n".to_string(),
                input: None,
            },
            "agent.tool_call",
            "tool_call",
        ),
        (
            AgentEvent::ToolResult {
                id: None,
                is_error: true,
                output: None,
            },
            "agent.tool_result",
            "tool_result",
        ),
        (
            AgentEvent::Usage {
                tokens_in: 1,
                tokens_out: 2,
                tokens_cached: 0,
                cost_usd: Some(0.5),
                model: None,
            },
            "agent.usage",
            "usage",
        ),
        (
            AgentEvent::Notice {
                message: "n".to_string(),
            },
            "agent.notice",
            "notice",
        ),
        (
            AgentEvent::Result {
                success: true,
                error_kind: None,
                num_turns: None,
                cost_usd: None,
                tokens_in: None,
                tokens_out: None,
                tokens_cached: None,
                session_id: None,
                text: None,
            },
            "agent.result",
            "result",
        ),
        (
            AgentEvent::Raw {
                source_type: "x".to_string(),
                line: json!({"a": 1}),
            },
            "agent.raw",
            "raw",
        ),
    ];
    for (ev, kind, tag) in cases {
        assert_eq!(ev.kind(), kind);
        let v = serde_json::to_value(&ev).expect("serializes");
        assert_eq!(v["type"], json!(tag));
        // What the script engine prints, the Gantry parser reads back.
        assert_eq!(parse(Format::GantryJsonl, &format!("{v}\n")), [ev]);
    }
}

#[test]
fn gantry_jsonl_keeps_unknown_and_text_lines_raw() {
    let out = "{\"type\":\"future\",\"n\":1}\nplain output\n{\"no_type\":true}\n";
    assert_eq!(
        parse(Format::GantryJsonl, out),
        [
            AgentEvent::Raw {
                source_type: "future".to_string(),
                line: json!({"type": "future", "n": 1}),
            },
            AgentEvent::Raw {
                source_type: "text".to_string(),
                line: json!("plain output"),
            },
            AgentEvent::Raw {
                source_type: "unknown".to_string(),
                line: json!({"no_type": true}),
            },
        ]
    );
}

#[test]
fn gantry_jsonl_cuts_long_texts() {
    let ev = AgentEvent::Message {
        text: "z".repeat(100_000),
    };
    let line = serde_json::to_string(&ev).expect("serializes") + "\n";
    let evs = parse_chunked(Format::GantryJsonl, line.as_bytes(), 1000);
    let [AgentEvent::Message { text }] = evs.as_slice() else {
        panic!("one message, got {evs:?}")
    };
    assert!(text.len() <= MAX_TEXT_BYTES);
    assert!(text.ends_with("bytes cut]"));
}

#[test]
fn text_format_keeps_every_line_raw() {
    assert_eq!(
        parse(Format::Text, "one\n\ntwo"),
        [
            AgentEvent::Raw {
                source_type: "text".to_string(),
                line: json!("one"),
            },
            AgentEvent::Raw {
                source_type: "text".to_string(),
                line: json!("two"),
            },
        ]
    );
}

#[test]
fn clip_cuts_on_a_char_boundary_with_a_marker() {
    assert_eq!(clip("short"), "short");
    let exact = "a".repeat(MAX_TEXT_BYTES);
    assert_eq!(clip(&exact), exact);
    for pad in 0..4 {
        let text = "a".repeat(pad) + &"🎉".repeat(3000);
        let cut = clip(&text);
        assert!(cut.len() <= MAX_TEXT_BYTES);
        let kept = cut.find('…').expect("marker");
        assert!(text.starts_with(&cut[..kept]));
        assert!(cut.ends_with(&format!("… [{} bytes cut]", text.len() - kept)));
    }
}
