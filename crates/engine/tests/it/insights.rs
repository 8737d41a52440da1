//! Insights: deltas, authoritative totals, estimated cost, sums over runs; prices.

use gantry_engine::{AgentEvent, Fold, Insights, Price, PriceTable};

use crate::insights;

fn usage(tokens_in: u64, tokens_out: u64, cached: u64, cost: Option<f64>) -> AgentEvent {
    AgentEvent::Usage {
        tokens_in,
        tokens_out,
        tokens_cached: cached,
        cost_usd: cost,
        model: None,
    }
}

#[test]
fn reported_usage_adds_up_and_the_result_replaces_it() {
    let evs = [
        AgentEvent::SessionStarted {
            session_id: "s".to_string(),
            model: Some("unpriced".to_string()),
        },
        AgentEvent::TurnStarted { turn: 1 },
        usage(100, 10, 50, Some(0.25)),
        AgentEvent::TurnStarted { turn: 2 },
        usage(200, 20, 0, Some(0.5)),
        AgentEvent::ToolCall {
            id: None,
            name: "x".to_string(),
            input: None,
        },
        AgentEvent::ToolResult {
            id: None,
            is_error: true,
            output: None,
        },
    ];
    let i = insights(&evs);
    assert_eq!(
        i,
        Insights {
            model: Some("unpriced".to_string()),
            session_id: Some("s".to_string()),
            tokens_in: 300,
            tokens_out: 30,
            tokens_cached: 50,
            cost_usd: Some(0.75),
            cost_estimated: false,
            turns: 2,
            tool_calls: 1,
            tool_errors: 1,
            success: None,
            error_kind: None,
            error_message: None,
        }
    );
    let mut done = i.clone();
    done.apply(
        &AgentEvent::Result {
            success: true,
            error_kind: None,
            num_turns: Some(5),
            cost_usd: Some(1.0),
            tokens_in: Some(1000),
            tokens_out: None,
            tokens_cached: None,
            session_id: None,
            text: None,
        },
        &PriceTable::builtin(),
    );
    assert_eq!(done.turns, 5);
    assert_eq!(done.tokens_in, 1000);
    assert_eq!(done.tokens_out, 30, "a missing total keeps the running sum");
    assert_eq!(done.cost_usd, Some(1.0));
    assert_eq!(done.success, Some(true));
    assert_eq!(done.session_id.as_deref(), Some("s"));
}

#[test]
fn add_totals_runs_of_a_job() {
    let mut first = Insights {
        model: Some("m1".to_string()),
        session_id: Some("s1".to_string()),
        tokens_in: 10,
        tokens_out: 1,
        tokens_cached: 5,
        cost_usd: Some(0.5),
        cost_estimated: false,
        turns: 2,
        tool_calls: 3,
        tool_errors: 1,
        success: Some(false),
        error_kind: Some("error_max_turns".to_string()),
        error_message: None,
    };
    let second = Insights {
        model: None,
        session_id: Some("s1".to_string()),
        tokens_in: 20,
        tokens_out: 2,
        tokens_cached: 0,
        cost_usd: Some(0.25),
        cost_estimated: true,
        turns: 1,
        tool_calls: 0,
        tool_errors: 0,
        success: Some(true),
        error_kind: None,
        error_message: None,
    };
    first.add(&second);
    assert_eq!(
        first,
        Insights {
            model: Some("m1".to_string()),
            session_id: Some("s1".to_string()),
            tokens_in: 30,
            tokens_out: 3,
            tokens_cached: 5,
            cost_usd: Some(0.75),
            cost_estimated: true,
            turns: 3,
            tool_calls: 3,
            tool_errors: 1,
            success: Some(true),
            error_kind: None,
            error_message: None,
        }
    );
    let mut none = Insights::default();
    none.add(&Insights::default());
    assert_eq!(none, Insights::default());
}

#[test]
fn longest_prefix_wins_and_cached_input_has_its_rate() {
    let prices = PriceTable::builtin();
    let opus45 = prices.price("claude-opus-4-5-20251101").expect("priced");
    assert_eq!(opus45.input_per_mtok, 5.0);
    let opus41 = prices.price("claude-opus-4-1-20250805").expect("priced");
    assert_eq!(opus41.input_per_mtok, 15.0);
    assert_eq!(
        prices.price("gpt-5-codex").expect("priced"),
        prices.price("gpt-5").expect("priced")
    );
    assert_eq!(
        prices.price("gpt-5-mini").expect("priced").input_per_mtok,
        0.25
    );
    assert!(prices.price("claude-haiku-4-5").is_some());
    assert!(prices.price("claude-sonnet-4-20250514").is_some());
    assert!(prices.price("o4-mini").is_some());
    assert!(prices.price("llama").is_none());
    assert_eq!(prices.cost("llama", 1, 1, 1), None);
    // 1 Mtok in of which 0.4 cached, 1 Mtok out on gpt-5: 0.6*1.25 + 0.4*0.125 + 10.
    let cost = prices
        .cost("gpt-5", 1_000_000, 400_000, 1_000_000)
        .expect("priced");
    assert!((cost - 10.8).abs() < 1e-12);
}

#[test]
fn price_table_reads_as_toml_style_tables() {
    let json = serde_json::json!({"gpt-5": {"input_per_mtok": 1.0, "cached_input_per_mtok": 0.1, "output_per_mtok": 8.0}});
    let table: PriceTable = serde_json::from_value(json.clone()).expect("parses");
    assert_eq!(
        table.models.get("gpt-5"),
        Some(&Price {
            input_per_mtok: 1.0,
            cached_input_per_mtok: 0.1,
            output_per_mtok: 8.0
        })
    );
    assert_eq!(serde_json::to_value(&table).expect("serializes"), json);
    let mut merged = PriceTable::builtin();
    merged.merge(&table);
    assert_eq!(
        merged
            .price("gpt-5-2025-08-07")
            .expect("priced")
            .output_per_mtok,
        8.0
    );
    assert_eq!(
        merged.price("gpt-5-codex").expect("priced").output_per_mtok,
        10.0
    );
    assert!(merged.price("claude-opus-4").is_some());
}

#[test]
fn an_estimate_follows_the_tokens_and_yields_to_a_reported_cost() {
    let prices = PriceTable::builtin();
    let mut i = Insights::with_model("gpt-5");
    i.apply(&usage(1_000_000, 0, 0, None), &prices);
    assert_eq!(i.cost_usd, Some(1.25));
    assert!(i.cost_estimated);
    i.apply(&usage(0, 100_000, 0, None), &prices);
    assert_eq!(i.cost_usd, Some(2.25));
    i.apply(&usage(0, 0, 0, Some(0.125)), &prices);
    assert_eq!(
        i.cost_usd,
        Some(0.125),
        "a reported cost replaces the estimate"
    );
    assert!(!i.cost_estimated);
    i.apply(&usage(1_000_000, 0, 0, None), &prices);
    assert_eq!(i.cost_usd, Some(0.125), "and is not estimated over again");
}
