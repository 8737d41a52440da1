//! Submitting jobs, running them in the embedded factory, delivering, and refusing bad
//! input with errors that name the file, line, field and value.

use crate::support::{TestServer, config, git, has_ref, job_file, repo};
use gantry_core::event::{DELIVERY_FAILED, DELIVERY_PUSHED};
use gantry_core::{Job, JobState, Outcome};
use gantry_protocol::{ErrorBody, SubmitResponse};
use gantry_server::ServeConfig;
use serde_json::json;

async fn error_of(resp: reqwest::Response, status: u16) -> ErrorBody {
    let got = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).expect("error body")
}

const EDIT: &[&str] = &[
    "sh",
    "-c",
    "printf 'third\\n' >> README.md && echo added > NEW.txt && echo done",
];

#[tokio::test]
async fn a_submitted_job_runs_succeeds_and_is_delivered() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(config(data.path())).await;
    let ids = ts
        .submit(&[("edit.md", job_file("edit", &repo, EDIT, ""))])
        .await;
    let id = ids[0];

    let job = ts.wait_state(id, JobState::Succeeded).await;
    assert_eq!(job.attempt, 1);
    assert_eq!(job.runs.len(), 1, "{job:#?}");
    let run = &job.runs[0];
    assert_eq!(run.outcome, Some(Outcome::Succeeded));
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(
        run.branch.as_deref(),
        Some(format!("gantry/{id}/a1").as_str())
    );
    let commit = run.commit.clone().expect("a commit");
    assert_ne!(
        Some(&commit),
        run.base_commit.as_ref(),
        "the changes were committed"
    );
    assert_eq!(run.files_changed, Some(2));
    assert_eq!(run.lines_added, Some(2));
    assert_eq!(run.lines_deleted, Some(0));

    // The server delivered the commit to the source repo as gantry/<job>.
    let pushed = ts.wait_event(id, DELIVERY_PUSHED).await;
    assert_eq!(pushed.data["branch"], format!("gantry/{id}"));
    assert_eq!(pushed.data["commit"], commit.as_str());
    assert_eq!(git(&repo, &["rev-parse", &format!("gantry/{id}")]), commit);
    assert_eq!(
        git(&repo, &["show", &format!("gantry/{id}:NEW.txt")]),
        "added"
    );
    // The attempt branch stays in the factory's cache, not in the source repo.
    assert!(!has_ref(&repo, &format!("refs/heads/gantry/{id}/a1")));
    ts.shutdown().await;
}

#[tokio::test]
async fn nothing_is_delivered_when_push_is_off() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        push: false,
        ..config(data.path())
    })
    .await;
    let id = ts
        .submit(&[("edit.md", job_file("edit", &repo, EDIT, ""))])
        .await[0];
    let job = ts.wait_state(id, JobState::Succeeded).await;
    assert!(job.runs[0].commit.is_some());
    // The finish that made the job succeeded is where delivery would happen, and it
    // has returned: any delivery event would be recorded by now.
    let events = ts.events(Some(id)).await;
    assert!(
        !events
            .iter()
            .any(|e| e.kind == DELIVERY_PUSHED || e.kind == DELIVERY_FAILED),
        "{events:#?}"
    );
    assert!(!has_ref(&repo, &format!("refs/heads/gantry/{id}")));
    ts.shutdown().await;
}

#[tokio::test]
async fn an_invalid_job_file_refuses_the_whole_batch() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        ..config(data.path())
    })
    .await;
    let good = job_file("good", &repo, &["true"], "");
    // Line 6: after ---, title, repo, engine, command.
    let bad = job_file("bad", &repo, &["true"], "priority: 12\n");
    let body = json!({ "jobs": [
        { "file": "good.md", "text": good },
        { "file": "bad.md", "text": bad },
    ]});
    let err = error_of(ts.post(&ts.admin, "/v1/jobs", &body).await, 400).await;
    assert_eq!(err.error, "invalid_job");
    assert_eq!(err.details["file"], "bad.md");
    assert_eq!(err.details["line"], 6);
    assert_eq!(err.details["field"], "priority");
    assert!(
        err.message.contains("bad.md") && err.message.contains("12"),
        "{}",
        err.message
    );
    let jobs: Vec<Job> = ts.get_json("/v1/jobs").await;
    assert!(jobs.is_empty(), "nothing stored: {jobs:#?}");

    // An unknown dependency is refused by the store, naming the dep, also whole.
    let dep = job_file("dep", &repo, &["true"], "deps: [no-such-key]\n");
    let body = json!({ "jobs": [
        { "file": "good.md", "text": job_file("good", &repo, &["true"], "") },
        { "file": "dep.md", "text": dep },
    ]});
    let err = error_of(ts.post(&ts.admin, "/v1/jobs", &body).await, 400).await;
    assert_eq!(err.error, "invalid_job");
    assert_eq!(err.details["file"], "dep.md");
    assert_eq!(err.details["field"], "deps");
    assert!(err.message.contains("no-such-key"), "{}", err.message);
    assert!(ts.get_json::<Vec<Job>>("/v1/jobs").await.is_empty());

    // An empty batch says so.
    let err = error_of(
        ts.post(&ts.admin, "/v1/jobs", &json!({ "jobs": [] })).await,
        400,
    )
    .await;
    assert!(err.message.contains("`jobs`"), "{}", err.message);
    ts.shutdown().await;
}

#[tokio::test]
async fn a_local_repo_must_exist_and_be_a_git_repo() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        ..config(data.path())
    })
    .await;
    let nowhere = data.path().join("no-such-repo");
    let body =
        json!({ "jobs": [{ "file": "x.md", "text": job_file("x", &nowhere, &["true"], "") }] });
    let err = error_of(ts.post(&ts.admin, "/v1/jobs", &body).await, 400).await;
    assert_eq!(err.error, "invalid_job");
    assert_eq!(err.details["file"], "x.md");
    assert_eq!(err.details["line"], 3);
    assert_eq!(err.details["field"], "repo");
    assert!(
        err.message.contains(&nowhere.display().to_string()),
        "{}",
        err.message
    );
    assert!(err.message.contains("does not exist"), "{}", err.message);

    let plain = tempfile::tempdir().expect("tempdir");
    let body =
        json!({ "jobs": [{ "file": "y.md", "text": job_file("y", plain.path(), &["true"], "") }] });
    let err = error_of(ts.post(&ts.admin, "/v1/jobs", &body).await, 400).await;
    assert_eq!(err.details["field"], "repo");
    assert!(
        err.message.contains("not a git repository"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains(&plain.path().display().to_string()),
        "{}",
        err.message
    );

    // A relative path without a directory to resolve it against is refused too.
    let text = "---\ntitle: rel\nrepo: ../repo\nengine: command\ncommand: [\"true\"]\n---\nx\n";
    let body = json!({ "jobs": [{ "file": "rel.md", "text": text }] });
    let err = error_of(ts.post(&ts.admin, "/v1/jobs", &body).await, 400).await;
    assert_eq!(err.details["field"], "repo");
    assert!(err.message.contains("relative"), "{}", err.message);
    assert!(ts.get_json::<Vec<Job>>("/v1/jobs").await.is_empty());

    // With the file's directory, the same relative path resolves to the real repo.
    let (tmp, repo) = repo();
    let jobs_dir = tmp.path().join("jobs");
    std::fs::create_dir(&jobs_dir).expect("mkdir jobs");
    let body = json!({ "jobs": [{ "file": "rel.md", "text": text, "dir": jobs_dir }] });
    let resp: SubmitResponse = ts.post_json("/v1/jobs", &body).await;
    let job = ts.job(resp.jobs[0].id).await;
    assert_eq!(job.spec.repo, repo.display().to_string());
    assert_eq!(job.state, JobState::Queued);
    ts.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_queries_and_paths_name_the_field_and_value() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        ..config(data.path())
    })
    .await;

    let err = error_of(
        ts.post(&ts.admin, "/v1/jobs", &json!({ "jobs": 5 })).await,
        400,
    )
    .await;
    assert_eq!(err.error, "bad_request");
    assert!(
        err.message.contains("`jobs`") && err.message.contains('5'),
        "{}",
        err.message
    );

    let body = json!({ "jobs": [{ "file": "a.md" }] });
    let err = error_of(ts.post(&ts.admin, "/v1/jobs", &body).await, 400).await;
    assert!(
        err.message.contains("jobs[0]") && err.message.contains("text"),
        "{}",
        err.message
    );

    let resp = ts
        .http
        .post(ts.url("/v1/jobs"))
        .bearer_auth(&ts.admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    let err = error_of(resp, 400).await;
    assert!(err.message.contains("not valid JSON"), "{}", err.message);

    let err = error_of(ts.get(&ts.admin, "/v1/events?after=abc").await, 400).await;
    assert!(
        err.message.contains("`after`") && err.message.contains("abc"),
        "{}",
        err.message
    );
    let err = error_of(ts.get(&ts.admin, "/v1/events?limit=0").await, 400).await;
    assert!(err.message.contains("`limit`"), "{}", err.message);
    let err = error_of(ts.get(&ts.admin, "/v1/jobs?state=bogus").await, 400).await;
    assert!(
        err.message.contains("`state`") && err.message.contains("bogus"),
        "{}",
        err.message
    );
    let err = error_of(ts.get(&ts.admin, "/v1/jobs?limt=3").await, 400).await;
    assert!(err.message.contains("`limt`"), "{}", err.message);

    let err = error_of(ts.get(&ts.admin, "/v1/jobs/abc").await, 400).await;
    assert!(err.message.contains("abc"), "{}", err.message);
    let err = error_of(ts.get(&ts.admin, "/v1/jobs/999").await, 404).await;
    assert_eq!(err.error, "not_found");
    assert!(err.message.contains("999"), "{}", err.message);
    let err = error_of(ts.get(&ts.admin, "/v1/nothing-here").await, 404).await;
    assert_eq!(err.error, "not_found");

    let reg = json!({ "name": "f", "seats": 0 });
    let err = error_of(ts.post(&ts.admin, "/v1/factories", &reg).await, 400).await;
    assert!(err.message.contains("`seats`"), "{}", err.message);
    let err = error_of(
        ts.post(
            &ts.admin,
            "/v1/factories/1/claim",
            &json!({ "wait_s": "soon" }),
        )
        .await,
        400,
    )
    .await;
    assert!(
        err.message.contains("`wait_s`") && err.message.contains("soon"),
        "{}",
        err.message
    );
    let err = error_of(
        ts.post(&ts.admin, "/v1/runs/1/renew", &json!({})).await,
        400,
    )
    .await;
    assert!(err.message.contains("epoch"), "{}", err.message);
    ts.shutdown().await;
}

#[tokio::test]
async fn a_remote_factory_runs_jobs_over_http() {
    use gantry_factory::{Factory, FactoryConfig, HttpCoordinator};
    use gantry_protocol::Scope;
    use std::sync::Arc;

    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        ..config(data.path())
    })
    .await;
    let token = ts.token("remote", Scope::Factory).await;
    let coord = HttpCoordinator::new(&ts.base, &token).expect("coordinator");
    // Same machine, same data dir: the server can deliver from the factory's cache.
    let fcfg = FactoryConfig {
        name: "remote".to_string(),
        seats: 2,
        data_dir: data.path().to_path_buf(),
        claim_wait: std::time::Duration::from_secs(2),
        ..FactoryConfig::default()
    };
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let factory = tokio::spawn(Factory::new(fcfg, Arc::new(coord)).run(stop_rx));

    let id = ts
        .submit(&[("edit.md", job_file("edit", &repo, EDIT, ""))])
        .await[0];
    let job = ts.wait_state(id, JobState::Succeeded).await;
    let commit = job.runs[0].commit.clone().expect("commit");
    ts.wait_event(id, DELIVERY_PUSHED).await;
    assert_eq!(git(&repo, &["rev-parse", &format!("gantry/{id}")]), commit);
    let factories: Vec<serde_json::Value> = ts.get_json("/v1/factories").await;
    assert!(
        factories
            .iter()
            .any(|f| f["name"] == "remote" && f["seats"] == 2),
        "{factories:?}"
    );

    stop.send_replace(true);
    factory
        .await
        .expect("factory task")
        .expect("factory stops cleanly");
    ts.shutdown().await;
}

/// Issue 15: idempotency keys were global, so another token's resubmission with other
/// content got the first token's job back and its content was dropped with a note.
/// Keys are per token now, and a token reusing its own key with other content gets a
/// 409 `idempotency_conflict` naming the key and the job; the same content again still
/// returns the job.
#[tokio::test]
async fn issue15_idempotency_keys_are_per_token_and_new_content_is_a_conflict() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        ..config(data.path())
    })
    .await;
    let alice = ts.token("alice", gantry_protocol::Scope::Submitter).await;
    let bob = ts.token("bob", gantry_protocol::Scope::Submitter).await;
    let body = |argv: &[&str]| {
        json!({ "jobs": [{
            "file": "k.md",
            "text": job_file("keyed", &repo, argv, "idempotency_key: shared-key\n"),
        }]})
    };
    let submit = |token: &str, argv: &'static [&'static str]| {
        let (ts, token, body) = (&ts, token.to_string(), body(argv));
        async move {
            let resp = ts.post(&token, "/v1/jobs", &body).await;
            let status = resp.status().as_u16();
            let text = resp.text().await.expect("body");
            (status, text)
        }
    };

    let (status, text) = submit(&alice, &["true"]).await;
    assert_eq!(status, 200, "{text}");
    let first: SubmitResponse = serde_json::from_str(&text).expect("response");
    let a = first.jobs[0].id;

    // Bob's job with the same key and other content is a job of his own.
    let (status, text) = submit(&bob, &["false"]).await;
    assert_eq!(status, 200, "{text}");
    let bobs: SubmitResponse = serde_json::from_str(&text).expect("response");
    assert_ne!(bobs.jobs[0].id, a);
    assert!(!bobs.jobs[0].existing, "{bobs:?}");
    let job_b = ts.job(bobs.jobs[0].id).await;
    assert_eq!(
        ts.job(a).await.spec.command,
        ["true"],
        "alice's job is untouched"
    );
    assert_eq!(job_b.spec.command, ["false"]);

    // Alice reusing her key with other content: a conflict naming the key and job.
    let (status, text) = submit(&alice, &["false"]).await;
    assert_eq!(status, 409, "{text}");
    let err: ErrorBody = serde_json::from_str(&text).expect("error body");
    assert_eq!(err.error, gantry_protocol::ErrorKind::IdempotencyConflict);
    assert!(
        err.message.contains("shared-key") && err.message.contains(&format!("job {a}")),
        "{err:?}"
    );
    assert_eq!(
        (
            &err.details["key"],
            &err.details["job"],
            &err.details["file"]
        ),
        (&json!("shared-key"), &json!(a), &json!("k.md"))
    );
    assert!(err.hint.is_some(), "{err:?}");

    // The same content again returns her job.
    let (status, text) = submit(&alice, &["true"]).await;
    assert_eq!(status, 200, "{text}");
    let again: SubmitResponse = serde_json::from_str(&text).expect("response");
    assert_eq!((again.jobs[0].id, again.jobs[0].existing), (a, true));
    assert_eq!(ts.get_json::<Vec<Job>>("/v1/jobs").await.len(), 2);
    ts.shutdown().await;
}

/// Issue 15: a bad `base` or a refused transport was found only after a factory
/// claimed the job. Where the server can read the repository (a local path, a
/// `file:///` URL) the submit checks it and refuses with a 400 naming the field and
/// the value; a remote URL it does not contact, but its transport must be one of git's
/// own; a remote it cannot reach does not block the submit.
#[tokio::test]
async fn issue15_a_bad_repo_or_base_is_refused_at_submit() {
    let (tmp, repo) = repo();
    git(&repo, &["tag", "v1"]);
    git(&repo, &["update-ref", "refs/remotes/origin/main", "HEAD"]);
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        ..config(data.path())
    })
    .await;
    let post = |repo: &std::path::Path, extra: &str| json!({ "jobs": [{ "file": "j.md", "text": job_file("j", repo, &["true"], extra) }] });
    let refused = |field: &'static str, value: &str, needle: &'static str| {
        let value = value.to_string();
        move |err: ErrorBody| {
            assert_eq!(err.error, "invalid_job", "{err:?}");
            assert_eq!(err.details["file"], "j.md", "{err:?}");
            assert_eq!(err.details["field"], field, "{err:?}");
            assert_eq!(err.details["value"], value.as_str(), "{err:?}");
            assert!(
                err.message.contains(&format!("{value:?}")) && err.message.contains(needle),
                "names the value and what is wrong: {err:?}"
            );
        }
    };

    // A base the repository does not have.
    let body = post(&repo, "base: no-such-branch\n");
    refused("base", "no-such-branch", "not found")(
        error_of(ts.post(&ts.admin, "/v1/jobs", &body).await, 400).await,
    );
    // The same through a file:/// URL.
    let url = std::path::PathBuf::from(format!("file://{}", repo.display()));
    let body = post(&url, "base: nope\n");
    refused("base", "nope", "not found")(
        error_of(ts.post(&ts.admin, "/v1/jobs", &body).await, 400).await,
    );
    // A remote-tracking branch resolves in the source but factories do not fetch it.
    let body = post(&repo, "base: origin/main\n");
    refused("base", "origin/main", "refs/remotes/origin/main")(
        error_of(ts.post(&ts.admin, "/v1/jobs", &body).await, 400).await,
    );
    // A directory that is not a git repository, even inside one.
    let inner = repo.join("sub");
    std::fs::create_dir(&inner).expect("mkdir");
    let body = post(&inner, "");
    refused("repo", &inner.display().to_string(), "not a git repository")(
        error_of(ts.post(&ts.admin, "/v1/jobs", &body).await, 400).await,
    );
    // A repository without commits, and no base.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    git(&empty, &["init", "--quiet"]);
    let body = post(&empty, "");
    refused("repo", &empty.display().to_string(), "no commits")(
        error_of(ts.post(&ts.admin, "/v1/jobs", &body).await, 400).await,
    );
    // A transport git does not build in (ext:: runs any command it names).
    let ext = std::path::PathBuf::from("ext::sh -c touch% /tmp/gantry-pwned");
    let body = post(&ext, "");
    refused(
        "repo",
        "ext::sh -c touch% /tmp/gantry-pwned",
        "transport `ext`",
    )(error_of(ts.post(&ts.admin, "/v1/jobs", &body).await, 400).await);
    // One bad file refuses the batch: nothing was stored.
    assert!(ts.get_json::<Vec<Job>>("/v1/jobs").await.is_empty());

    // Branches, tags, commits and HEAD pass; a remote the server cannot reach is left
    // to the factory that claims the job.
    let head = git(&repo, &["rev-parse", "HEAD"]);
    for extra in [
        String::new(),
        "base: main\n".to_string(),
        "base: v1\n".to_string(),
        format!("base: {}\n", head.trim()),
    ] {
        let resp = ts.post(&ts.admin, "/v1/jobs", &post(&repo, &extra)).await;
        assert_eq!(
            resp.status(),
            200,
            "{extra}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    let remote = std::path::PathBuf::from("https://gantry.invalid/no/such/repo.git");
    let resp = ts
        .post(&ts.admin, "/v1/jobs", &post(&remote, "base: anything\n"))
        .await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    ts.shutdown().await;
}

/// The `next` link of a list answer, if any.
fn next_link(resp: &reqwest::Response) -> Option<String> {
    let link = resp.headers().get("link")?.to_str().expect("ascii link");
    let target = link.strip_prefix('<')?.split_once(">; rel=\"next\"")?.0;
    Some(target.to_string())
}

#[tokio::test]
async fn issue10_lists_are_paged_by_a_cursor_with_a_default_and_a_cap() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        ..config(data.path())
    })
    .await;
    let files: Vec<(String, String)> = (0..105)
        .map(|i| {
            (
                format!("j{i}.md"),
                job_file(&format!("j{i}"), &repo, &["true"], ""),
            )
        })
        .collect();
    let refs: Vec<(&str, String)> = files.iter().map(|(f, t)| (f.as_str(), t.clone())).collect();
    let ids = ts.submit(&refs).await;
    assert_eq!(ids.len(), 105);

    // No limit: the default page, newest first, and a link to the next one.
    let resp = ts.get(&ts.admin, "/v1/jobs").await;
    assert_eq!(resp.status(), 200);
    let next = next_link(&resp).expect("a full page links the next one");
    let first: Vec<Job> = resp.json().await.expect("jobs");
    assert_eq!(first.len(), gantry_server::DEFAULT_LIST_LIMIT);
    assert_eq!(first[0].id, ids[104]);
    let resp = ts.get(&ts.admin, &next).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(next_link(&resp), None, "the last page links nothing");
    let rest: Vec<Job> = resp.json().await.expect("jobs");
    let mut seen: Vec<_> = first.iter().chain(&rest).map(|j| j.id).collect();
    seen.reverse();
    assert_eq!(seen, ids, "every job once, in order, across the pages");

    // Jobs submitted between two pages do not shift them.
    let resp = ts.get(&ts.admin, "/v1/jobs?limit=50").await;
    let next = next_link(&resp).expect("next");
    ts.submit(&[("late.md", job_file("late", &repo, &["true"], ""))])
        .await;
    let page: Vec<Job> = ts.get_json(&next).await;
    assert_eq!(
        page[0].id, ids[54],
        "the second page starts where the first ended"
    );

    // A state filter goes along in the link.
    let resp = ts.get(&ts.admin, "/v1/jobs?state=queued&limit=100").await;
    let next = next_link(&resp).expect("next");
    assert!(next.contains("state=queued"), "{next}");

    for bad in ["limit=0", "limit=1001", "before=x"] {
        let err = error_of(ts.get(&ts.admin, &format!("/v1/jobs?{bad}")).await, 400).await;
        let field = bad.split('=').next().expect("name");
        assert_eq!(err.details["field"], field, "{bad}: {err:?}");
    }
}

#[tokio::test]
async fn issue10_delivery_locks_of_finished_deliveries_do_not_pile_up() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(config(data.path())).await;
    let mut repos = Vec::new();
    for n in 0..3 {
        let (tmp, repo) = repo();
        let id = ts
            .submit(&[(&format!("edit{n}.md"), job_file("edit", &repo, EDIT, ""))])
            .await[0];
        ts.wait_event(id, DELIVERY_PUSHED).await;
        repos.push(tmp);
    }
    let service = ts.server.as_ref().expect("running").service().clone();
    // Each delivery drops the locks nobody holds any more: at most the last one stays.
    assert!(
        service.delivery_locks_held() <= 1,
        "{} delivery locks kept for 3 finished deliveries",
        service.delivery_locks_held()
    );
    ts.shutdown().await;
}
