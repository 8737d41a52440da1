//! Event log: JSON pages and server-sent event streams with `Last-Event-ID` replay.

use crate::support::{SseReader, TestServer, config, job_file, repo};
use gantry_core::JobState;
use gantry_core::event::{DELIVERY_PUSHED, Event, JOB_SUBMITTED, RUN_FINISHED};

const ECHO: &[&str] = &["sh", "-c", "echo one; echo two >&2; echo three > out.txt"];

#[tokio::test]
async fn a_stream_follows_live_events_and_replays_after_last_event_id() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(config(data.path())).await;

    // Opened before anything happened: whatever it receives arrives live.
    let mut live = SseReader::open(&ts, "/v1/events", None).await;
    let id = ts
        .submit(&[("echo.md", job_file("echo", &repo, ECHO, ""))])
        .await[0];
    let mut received = Vec::new();
    loop {
        let msg = live.next().await;
        assert_eq!(msg.id, msg.event.id, "id: is the event id");
        assert_eq!(msg.kind, msg.event.kind, "event: is the kind");
        let done = msg.event.kind == DELIVERY_PUSHED && msg.event.job_id == Some(id);
        received.push(msg.event);
        if done {
            break;
        }
    }
    assert_eq!(received[0].kind, JOB_SUBMITTED);
    assert!(received.iter().any(|e| e.kind == RUN_FINISHED));
    assert!(
        received.windows(2).all(|w| w[0].id < w[1].id),
        "ids strictly increase"
    );
    ts.wait_state(id, JobState::Succeeded).await;

    // The stream carried exactly what the log holds, in order.
    let stored = ts.events(None).await;
    assert_eq!(received, stored[..received.len()].to_vec());
    let ids: Vec<i64> = stored.iter().map(|e| e.id).collect();

    // Reconnecting with Last-Event-ID replays exactly the events after it: no gap, no
    // duplicate, whatever the cut point.
    for cut in [0, 1, stored.len() / 2, stored.len() - 2] {
        let last = stored[cut].id;
        let mut again = SseReader::open(&ts, "/v1/events", Some(last)).await;
        let mut replayed = Vec::new();
        while replayed.len() < stored.len() - cut - 1 {
            replayed.push(again.next().await.event.id);
        }
        assert_eq!(replayed, ids[cut + 1..].to_vec(), "replay after {last}");
    }

    // `after` works the same when there is no Last-Event-ID, and `job` filters.
    let of_job: Vec<&Event> = stored.iter().filter(|e| e.job_id == Some(id)).collect();
    let path = format!("/v1/events?job={id}&after={}", of_job[0].id);
    let mut by_query = SseReader::open(&ts, &path, None).await;
    for expected in &of_job[1..] {
        assert_eq!(&&by_query.next().await.event, expected);
    }

    // The live stream keeps following: a second job's events arrive on it.
    let id2 = ts
        .submit(&[("echo2.md", job_file("echo2", &repo, ECHO, ""))])
        .await[0];
    loop {
        let msg = live.next().await;
        assert!(
            msg.id > *ids.last().expect("some events"),
            "no replay of old events"
        );
        if msg.event.job_id == Some(id2) && msg.event.kind == JOB_SUBMITTED {
            break;
        }
    }
    ts.shutdown().await;
}

#[tokio::test]
async fn json_pages_cover_the_log_without_gaps() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(config(data.path())).await;
    let a = ts.submit(&[("a.md", job_file("a", &repo, ECHO, ""))]).await[0];
    let b = ts.submit(&[("b.md", job_file("b", &repo, ECHO, ""))]).await[0];
    ts.wait_state(a, JobState::Succeeded).await;
    ts.wait_state(b, JobState::Succeeded).await;
    ts.wait_event(b, DELIVERY_PUSHED).await;
    ts.wait_event(a, DELIVERY_PUSHED).await;

    let all: Vec<Event> = ts.get_json("/v1/events").await;
    assert!(all.len() > 6, "{all:#?}");
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));

    // Pages of 3, each starting after the last id of the one before.
    let mut paged: Vec<Event> = Vec::new();
    loop {
        let after = paged.last().map_or(0, |e| e.id);
        let page: Vec<Event> = ts
            .get_json(&format!("/v1/events?after={after}&limit=3"))
            .await;
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, all);

    // One job's events: only that job's, with seq 1, 2, 3, ...
    let of_a: Vec<Event> = ts.get_json(&format!("/v1/events?job={a}")).await;
    assert!(of_a.iter().all(|e| e.job_id == Some(a)));
    let seqs: Vec<i64> = of_a.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=of_a.len() as i64).collect::<Vec<_>>());
    let output: Vec<&str> = of_a
        .iter()
        .filter(|e| e.kind == "run.output")
        .filter_map(|e| e.data["text"].as_str())
        .collect();
    assert!(output.concat().contains("one"), "{output:?}");

    let resp = ts.get(&ts.admin, "/v1/events?job=424242").await;
    assert_eq!(resp.status(), 404);
    ts.shutdown().await;
}
