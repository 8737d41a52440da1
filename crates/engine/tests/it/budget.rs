//! Budgets: a limit is passed when the actual figure is above it.

use gantry_engine::{Breach, Budget, Insights};

fn spent(usd: Option<f64>, tokens_in: u64, tokens_out: u64, turns: u32) -> Insights {
    Insights {
        cost_usd: usd,
        tokens_in,
        tokens_out,
        turns,
        ..Insights::default()
    }
}

#[test]
fn issue3_each_limit_is_passed_only_above_it() {
    let budget = Budget {
        usd: Some(1.0),
        tokens: Some(2_000_000),
        turns: Some(10),
    };
    assert_eq!(
        budget.check(&spent(Some(1.0), 1_000_000, 1_000_000, 10)),
        None
    );
    assert_eq!(budget.check(&spent(None, 0, 0, 0)), None);
    assert_eq!(
        budget.check(&spent(Some(1.5), 0, 0, 0)),
        Some(Breach {
            limit: "usd",
            limit_value: 1.0,
            actual: 1.5
        })
    );
    let tokens = budget
        .check(&spent(Some(0.5), 2_000_000, 100_000, 0))
        .expect("tokens passed");
    assert_eq!(tokens.limit, "tokens");
    assert_eq!(
        tokens.to_string(),
        "budget exceeded: tokens 2100000 > limit 2000000"
    );
    let turns = budget.check(&spent(None, 0, 0, 11)).expect("turns passed");
    assert_eq!(turns.to_string(), "budget exceeded: turns 11 > limit 10");
    assert_eq!(
        budget
            .check(&spent(Some(2.0), 0, 0, 0))
            .map(|b| b.to_string()),
        Some("budget exceeded: usd 2 > limit 1".to_string())
    );
}

#[test]
fn an_empty_budget_never_breaks() {
    let budget = Budget::default();
    assert!(budget.is_empty());
    assert_eq!(
        budget.check(&spent(Some(1e9), u64::MAX / 4, 0, u32::MAX)),
        None
    );
}

#[test]
fn budget_serde_leaves_out_unset_limits() {
    let budget: Budget = serde_json::from_value(serde_json::json!({"tokens": 5})).expect("parses");
    assert_eq!(
        budget,
        Budget {
            usd: None,
            tokens: Some(5),
            turns: None
        }
    );
    assert_eq!(
        serde_json::to_value(&budget).expect("serializes"),
        serde_json::json!({"tokens": 5})
    );
}
