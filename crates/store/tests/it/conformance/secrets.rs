//! The secrets a run received (issue 12) on every backend: the names its `run.started`
//! carries are kept on the run, and a run that received none shows none.

use crate::TestStore;
use crate::helpers::*;
use gantry_core::event::{NewEvent, RunStarted};
use std::path::PathBuf;

fn started(secrets: &[&str]) -> NewEvent {
    NewEvent::of(&RunStarted {
        pid: 42,
        pgid: 42,
        branch: "gantry/1/a1".into(),
        workspace: PathBuf::from("/w/1-a1"),
        base_commit: "abc".into(),
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        container: None,
    })
}

async fn the_names_a_run_received_are_kept_on_it(t: TestStore) {
    let s = &*t.store;
    let id = submit1(s, job("a")).await;
    let other = submit1(s, job("b")).await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    let d = claim(s, f).await;
    assert_eq!((c.job.id, d.job.id), (id, other));
    s.append_events(
        c.run.id,
        c.run.epoch,
        vec![started(&["ANTHROPIC_API_KEY", "GITHUB_TOKEN"])],
    )
    .await
    .expect("upload");
    s.append_events(d.run.id, d.run.epoch, vec![started(&[])])
        .await
        .expect("upload");
    let run = s.run(c.run.id).await.expect("run");
    assert_eq!(run.secrets, ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]);
    let runs = s.runs(id).await.expect("runs");
    assert_eq!(runs[0].secrets, ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]);
    let json = serde_json::to_value(&runs[0]).expect("json");
    assert_eq!(
        json["secrets"],
        serde_json::json!(["ANTHROPIC_API_KEY", "GITHUB_TOKEN"])
    );
    // None received: none kept, and the field is left out of the JSON.
    let none = s.run(d.run.id).await.expect("run");
    assert!(none.secrets.is_empty());
    assert!(
        serde_json::to_value(&none)
            .expect("json")
            .get("secrets")
            .is_none()
    );
}

cases! {
    the_names_a_run_received_are_kept_on_it,
}
