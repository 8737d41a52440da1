//! `gantry demo`: a small queue of jobs in a temp git repo, through a real embedded
//! server, showing dependencies, a named lock, priorities, a retry, and two agents of
//! the built-in `script` engine with live insights, one of them stopped by its budget.
//! It is the README's first command, so it must take seconds and need nothing but git.

use crate::error::{CliError, Kind, from_client};
use crate::gitutil::{git, init_repo};
use crate::output::{self, Table, short_duration};
use crate::render::plus_minus;
use crate::serve;
use gantry_client::Client;
use gantry_core::event::{
    self, DeliveryFailed, DeliveryPushed, Event, GateFailed, GatePassed, JobStateChanged,
    OutputStream, ReviewFailed, ReviewPassed, RunBudgetExceeded, RunClaimed, RunFinished,
    RunFixRound, RunOutput, RunStarted, SecretFound,
};
use gantry_core::time::now_millis;
use gantry_core::{Job, JobId, JobState, Outcome};
use gantry_protocol::{SubmitFile, SubmitRequest};
use gantry_server::ServeConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// Seats of the demo's factory: fewer than the jobs ready at once, so priority decides
/// who goes first.
const SEATS: u32 = 2;

/// How long the demo waits for its jobs before it gives up (a hang guard, never hit
/// when things work: the jobs take a few seconds).
const DEADLINE: Duration = Duration::from_secs(90);

/// One demo job: a short name (also its idempotency key), its file's front matter, and
/// the state it must end in.
struct DemoJob {
    name: &'static str,
    front: String,
    expect: JobState,
}

/// The front matter of the script-engine agent that does its work within budget.
const AGENT_STEPS: &str = "engine: script
model: claude-sonnet-4
steps:
  - say: Reading app.sh to see how the greeting is printed.
  - run: cat app.sh
  - usage: {tokens_in: 18200, tokens_out: 640, tokens_cached: 12800, cost_usd: 0.0291}
  - say: Adding a --name option.
  - write: greet.sh
    content: |
      #!/bin/sh
      echo \"Hello, ${1:-world}\"
  - run: sh greet.sh Gantry
  - usage: {tokens_in: 21400, tokens_out: 910, tokens_cached: 18100, cost_usd: 0.0342}
  - say: Done. greet.sh greets by name; try `sh greet.sh you`.
";

/// The front matter of the agent that spends past its token budget.
const RUNAWAY_STEPS: &str = "engine: script
model: claude-sonnet-4
budget: {tokens: 50000}
steps:
  - say: Rewriting everything from scratch.
  - usage: {tokens_in: 22000, tokens_out: 1500}
  - sleep: 0.3
  - usage: {tokens_in: 24000, tokens_out: 2100}
  - sleep: 0.3
  - usage: {tokens_in: 26000, tokens_out: 2400}
  - sleep: 5
  - say: This line is never reached.
";

fn jobs() -> Vec<DemoJob> {
    let job = |name: &'static str, extra: &str, title: &str, script: &str| DemoJob {
        name,
        // The script goes into a single-quoted YAML scalar: a quote is written twice.
        front: format!(
            "title: {title}\nidempotency_key: {name}\n{extra}engine: command\ncommand: [sh, -c, '{}']\n",
            script.replace('\'', "''")
        ),
        expect: JobState::Succeeded,
    };
    let agent = |name: &'static str, title: &str, steps: &str, expect: JobState| DemoJob {
        name,
        front: format!("title: {title}\nidempotency_key: {name}\n{steps}"),
        expect,
    };
    vec![
        job(
            "schema",
            "",
            "Create the database schema",
            "sleep 0.4; printf 'CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\\n' > schema.sql; echo 'wrote schema.sql'",
        ),
        job(
            "api",
            "deps: [schema]\n",
            "Add the users API (needs the schema)",
            "sleep 0.2; printf 'GET /users\\nPOST /users\\n' > api.txt; echo 'wrote api.txt'",
        ),
        job(
            "docs-intro",
            "lock: docs\n",
            "Write the intro page",
            "sleep 0.5; mkdir -p docs; printf '# Intro\\nHello.\\n' > docs/intro.md; echo 'wrote docs/intro.md'",
        ),
        job(
            "docs-usage",
            "lock: docs\n",
            "Write the usage page",
            "sleep 0.5; mkdir -p docs; printf '# Usage\\nRun it.\\n' > docs/usage.md; echo 'wrote docs/usage.md'",
        ),
        job(
            "flaky",
            "max_attempts: 3\nretry_on: [failed]\nbackoff: 300ms\n",
            "Flaky test fix (fails once, then passes)",
            "if [ \"$GANTRY_ATTEMPT\" = 1 ]; then echo 'network hiccup: failing on purpose' >&2; exit 1; fi; echo 'ok on attempt '\"$GANTRY_ATTEMPT\" > flaky.txt; echo 'passed'",
        ),
        job(
            "hotfix",
            "priority: 9\n",
            "Hotfix the greeting (priority 9, submitted last)",
            "sleep 0.3; sed -i 's/Hello/Hello, world/' app.sh; echo 'patched app.sh'",
        ),
        job(
            "tested",
            "gates:\n  - { name: greeting-test, run: \"grep -q Hello greeting.txt\" }\nfix_rounds: 1\n\
             review:\n  engine: script\n  threshold: 0.8\n  steps:\n\
             \x20   - usage: {tokens_in: 3200, tokens_out: 180, cost_usd: 0.0061}\n\
             \x20   - say: 'Read greeting.txt against the job. {\"score\": 0.92, \"verdict\": \"approve\", \"findings\": [{\"file\": \"greeting.txt\", \"line\": 1, \"severity\": \"low\", \"message\": \"a greeting could end with an exclamation mark\"}]}'\n",
            "Write the greeting file (its gate sends it back once; a reviewer approves)",
            "if [ -n \"$GANTRY_FIX_ROUND\" ]; then echo Hello > greeting.txt; echo 'fixed what the gate found'; else echo Hullo > greeting.txt; echo 'wrote greeting.txt'; fi",
        ),
        DemoJob {
            expect: JobState::Failed,
            // The key is put together by the job, so this file holds no credential.
            ..job(
                "leaky",
                "fix_rounds: 1\n",
                "Add the deploy config (plants a credential)",
                "printf 'aws_access_key_id = AKIA%s\\n' QWERTYUIOPASDFGH > deploy.cfg; echo 'wrote deploy.cfg'",
            )
        },
        agent(
            "agent",
            "Add a greeting by name (script agent)",
            AGENT_STEPS,
            JobState::Succeeded,
        ),
        agent(
            "runaway",
            "Rewrite everything (script agent, 50k token budget)",
            RUNAWAY_STEPS,
            JobState::Failed,
        ),
    ]
}

/// The text of a demo job file.
fn job_file(j: &DemoJob) -> String {
    format!(
        "---\n{}repo: ../repo\n---\nDemo job `{}`. The steps above are what the agent does.\n",
        j.front, j.name,
    )
}

/// `gantry demo`.
pub async fn demo(keep: bool) -> Result<(), CliError> {
    let tmp = tempfile::Builder::new()
        .prefix("gantry-demo-")
        .tempdir()
        .map_err(|e| {
            CliError::local("cannot create a temp dir for the demo").cause(e.to_string())
        })?;
    let root = tmp.path().to_path_buf();
    let result = run(&root, keep).await;
    if keep || result.is_err() {
        let kept = tmp.keep();
        output::line("");
        output::line(format!(
            "Kept {} (repo/, jobs/, data/){}",
            kept.display(),
            if result.is_err() {
                " to look into what went wrong"
            } else {
                ""
            }
        ));
    } else {
        drop(tmp);
        output::note(
            "(the temp dir is removed; `gantry demo --keep` keeps the repo, job files and data dir)",
        );
    }
    result
}

async fn run(root: &Path, keep: bool) -> Result<(), CliError> {
    let repo = root.join("repo");
    let jobs_dir = root.join("jobs");
    let data = root.join("data");
    init_repo(
        &repo,
        &[
            (
                "README.md",
                "# demo-app\n\nA tiny app for the Gantry demo.\n",
            ),
            ("app.sh", "#!/bin/sh\necho 'Hello'\n"),
        ],
    )
    .await?;
    output::line(format!(
        "Made a git repo with one commit: {}",
        repo.display()
    ));

    let server = serve::start(ServeConfig {
        data_dir: data.clone(),
        listen: ([127, 0, 0, 1], 0).into(),
        // Short so a lost run would come back quickly; renewals are a third of it.
        lease_ttl: Duration::from_secs(10),
        reaper_interval: Duration::from_millis(500),
        seats: SEATS,
        embedded_factory: true,
        kill_grace: Duration::from_secs(1),
        push: true,
        capabilities: Vec::new(),
        db: None,
        config_file: None,
        limits: gantry_server::Limits::default(),
        sandbox: gantry_server::SandboxSettings::default(),
        // The demo's server is on loopback and lives for one command.
        tls: None,
        forwarder: None,
    })
    .await?;
    let url = format!("http://{}", server.addr());
    output::line(format!(
        "Started an embedded server on {url} ({SEATS} seats, data in {})",
        data.display()
    ));
    let client = Client::new(
        &url,
        Some(server.admin_token()),
        crate::handlers::CONNECT_TIMEOUT,
    )
    .map_err(|e| from_client(e, &url))?;
    let outcome = drive(&client, &repo, &jobs_dir, keep).await;
    if let Err(e) = server.shutdown().await {
        output::note(format!(
            "warning: the demo server did not stop cleanly: {e}"
        ));
    }
    outcome
}

/// What the live log knows about one job.
struct Tracked {
    name: String,
    state: JobState,
    delivered: Option<String>,
    /// Fix rounds the checking stage sent the job back for.
    fix_rounds: u32,
}

async fn drive(client: &Client, repo: &Path, jobs_dir: &Path, keep: bool) -> Result<(), CliError> {
    let specs = jobs();
    std::fs::create_dir_all(jobs_dir).map_err(|e| {
        CliError::local(format!("cannot create {}", jobs_dir.display())).cause(e.to_string())
    })?;
    let mut files = Vec::new();
    for (i, j) in specs.iter().enumerate() {
        let path = jobs_dir.join(format!("{}-{}.md", i + 1, j.name));
        let text = job_file(j);
        std::fs::write(&path, &text).map_err(|e| {
            CliError::local(format!("cannot write {}", path.display())).cause(e.to_string())
        })?;
        files.push(SubmitFile {
            file: format!(
                "jobs/{}",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ),
            text,
            dir: Some(jobs_dir.to_string_lossy().into_owned()),
        });
    }

    output::line("");
    output::line(format!(
        "Submitting {} jobs in one batch (from {}):",
        specs.len(),
        jobs_dir.display()
    ));
    output::line("  schema      writes schema.sql");
    output::line("  api         deps: [schema], so it waits for it");
    output::line("  docs-intro  lock: docs, never runs at the same time as docs-usage");
    output::line("  docs-usage  lock: docs");
    output::line("  flaky       fails on attempt 1, retry_on: [failed], passes on attempt 2");
    output::line(format!(
        "  hotfix      priority 9 (the others 5), submitted after the command jobs: starts first on {SEATS} seats"
    ));
    output::line("  agent       script-engine agent: says, runs, writes, reports tokens and cost");
    output::line(
        "  runaway     script-engine agent with budget {tokens: 50000}: stopped when it passes it",
    );
    output::line("");

    let t0 = now_millis();
    let resp = client
        .submit(&SubmitRequest { jobs: files })
        .await
        .map_err(|e| from_client(e, client.base()))?;
    let mut tracked: BTreeMap<JobId, Tracked> = BTreeMap::new();
    for (s, j) in resp.jobs.iter().zip(&specs) {
        tracked.insert(
            s.id,
            Tracked {
                name: j.name.to_string(),
                state: JobState::Queued,
                delivered: None,
                fix_rounds: 0,
            },
        );
    }
    let width = specs.iter().map(|j| j.name.len()).max().unwrap_or(0);

    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut stream = client.event_stream(None, 0);
    let mut delivery_wait: Option<tokio::time::Instant> = None;
    loop {
        let all_done = tracked.values().all(|t| t.state.is_terminal());
        let succeeded: BTreeSet<JobId> = tracked
            .iter()
            .filter(|(_, t)| t.state == JobState::Succeeded)
            .map(|(id, _)| *id)
            .collect();
        let undelivered = succeeded.iter().any(|id| tracked[id].delivered.is_none());
        if all_done {
            // Delivery (the push of gantry/<job>) follows the finish; wait a little for
            // it so the branch list below is complete, but never long.
            let until = *delivery_wait
                .get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_secs(3));
            if !undelivered || tokio::time::Instant::now() >= until {
                break;
            }
        }
        let wait_until = match delivery_wait {
            Some(d) => d.min(deadline),
            None => deadline,
        };
        let ev = match tokio::time::timeout_at(wait_until, stream.next()).await {
            Ok(Ok(ev)) => ev,
            Ok(Err(e)) => return Err(from_client(e, client.base())),
            Err(_) if delivery_wait.is_some() => continue,
            Err(_) => {
                let pending: Vec<String> = tracked
                    .iter()
                    .filter(|(_, t)| !t.state.is_terminal())
                    .map(|(id, t)| format!("#{id} {} ({})", t.name, t.state))
                    .collect();
                return Err(CliError::new(
                    Kind::Server,
                    format!(
                        "the demo jobs did not finish within {}s",
                        DEADLINE.as_secs()
                    ),
                )
                .cause(format!("still not finished: {}", pending.join(", ")))
                .hint(
                    "run `gantry demo --keep -v` to see the server's log and keep its data dir",
                ));
            }
        };
        let Some(id) = ev.job_id else { continue };
        let Some(t) = tracked.get_mut(&id) else {
            continue;
        };
        if let Ok(change) = ev.payload::<JobStateChanged>() {
            t.state = change.to;
        }
        if ev.is::<RunFixRound>() {
            t.fix_rounds += 1;
        }
        if let Ok(pushed) = ev.payload::<DeliveryPushed>() {
            t.delivered = Some(pushed.branch);
        } else if let Ok(failed) = ev.payload::<DeliveryFailed>() {
            t.delivered = Some(failed.branch);
        } else if ev.is::<DeliveryPushed>() || ev.is::<DeliveryFailed>() {
            t.delivered = Some("-".to_string());
        }
        if let Some(text) = live_line(&ev) {
            for l in text.lines() {
                output::line(format!(
                    "{:>6}  #{id} {:<width$}  {l}",
                    format!("+{:.2}s", (ev.at - t0).max(0) as f64 / 1000.0),
                    t.name
                ));
            }
        }
    }

    // The final word comes from the API, not from what the stream showed.
    let mut jobs: Vec<Job> = Vec::new();
    for id in tracked.keys() {
        jobs.push(
            client
                .job(*id)
                .await
                .map_err(|e| from_client(e, client.base()))?,
        );
    }
    summary(&jobs, &tracked, t0);
    output::line("");
    let branches = git(repo, &["branch", "--list", "gantry/*"]).await?;
    output::line(format!(
        "Branches in the demo repo (`git -C {} branch --list 'gantry/*'`):",
        repo.display()
    ));
    if branches.trim().is_empty() {
        output::line("  (none: no job delivered a branch)");
    } else {
        for b in branches.lines() {
            output::line(format!("  {}", b.trim()));
        }
    }
    if keep && let Some(j) = jobs.iter().find(|j| j.state == JobState::Succeeded) {
        output::line(format!(
            "See one: git -C {} show --stat gantry/{}",
            repo.display(),
            j.id
        ));
    }
    let expected: BTreeMap<&str, JobState> = specs.iter().map(|j| (j.name, j.expect)).collect();
    let unexpected: Vec<String> = jobs
        .iter()
        .filter_map(|j| {
            let name = tracked.get(&j.id).map(|t| t.name.as_str()).unwrap_or("");
            let want = expected.get(name).copied().unwrap_or(JobState::Succeeded);
            (j.state != want).then(|| format!("#{} {name} is {} (expected {want})", j.id, j.state))
        })
        .collect();
    if !unexpected.is_empty() {
        return Err(CliError::new(
            Kind::Server,
            format!(
                "not every demo job ended as expected: {}",
                unexpected.join(", ")
            ),
        )
        .hint("run `gantry demo --keep -v` and look at the kept data dir's artifacts"));
    }
    Ok(())
}

/// The live log's line for an event, if it is worth one.
fn live_line(ev: &Event) -> Option<String> {
    match ev.kind.as_str() {
        event::RUN_CLAIMED => ev
            .payload::<RunClaimed>()
            .ok()
            .map(|p| format!("claimed   attempt {}", p.attempt)),
        event::RUN_STARTED => ev
            .payload::<RunStarted>()
            .ok()
            .map(|p| format!("started   on {}", p.branch)),
        event::RUN_OUTPUT => ev.payload::<RunOutput>().ok().map(|p| {
            let mark = if p.stream == OutputStream::Stderr {
                "!"
            } else {
                "|"
            };
            p.text
                .trim_end_matches('\n')
                .lines()
                .map(|l| format!("{mark} {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }),
        event::RUN_FINISHED => ev.payload::<RunFinished>().ok().map(|p| {
            let exit = p
                .exit_code
                .map_or_else(|| "-".to_string(), |c| c.to_string());
            let mut s = format!("{:<9} exit {exit}", p.outcome.as_str());
            if let Some(f) = p.files_changed {
                s.push_str(&format!(
                    ", {f} file(s) +{}/-{}",
                    p.lines_added.unwrap_or(0),
                    p.lines_deleted.unwrap_or(0)
                ));
            }
            s
        }),
        event::JOB_STATE => state_line(ev.payload::<JobStateChanged>().ok()?),
        event::LEASE_EXPIRED => Some("lease expired: the run is lost".to_string()),
        event::RUN_BUDGET_EXCEEDED => Some(format!(
            "STOPPED   {}",
            ev.payload::<RunBudgetExceeded>()
                .map_or_else(|_| "budget exceeded".to_string(), |p| p.message)
        )),
        event::AGENT_INSIGHTS => None,
        event::RUN_CHECKING => Some("checking  the result".to_string()),
        event::GATE_PASSED => ev
            .payload::<GatePassed>()
            .ok()
            .map(|p| format!("gate      {} passed", p.result.name)),
        event::GATE_FAILED => ev.payload::<GateFailed>().ok().map(|p| {
            let why = p.result.reason.unwrap_or_else(|| "failed".to_string());
            format!("gate      {} failed: {why}", p.result.name)
        }),
        event::RUN_FIX_ROUND => ev
            .payload::<RunFixRound>()
            .ok()
            .map(|p| format!("fix round {}: {}", p.round, p.reasons.join("; "))),
        event::REVIEW_PASSED | event::REVIEW_FAILED => {
            let p = ev.payload::<ReviewPassed>().or_else(|_| {
                ev.payload::<ReviewFailed>()
                    .map(|f| ReviewPassed { result: f.result })
            });
            p.ok().map(|p| review_line(&p.result))
        }
        event::SECRET_FOUND => ev.payload::<SecretFound>().ok().map(|p| {
            format!(
                "SECRET    {} in {}:{} (the value is never shown)",
                p.rule, p.file, p.line
            )
        }),
        kind if kind.starts_with("agent.") => {
            let text = crate::render::event_summary(ev);
            let label = kind.trim_start_matches("agent.");
            match label {
                "message" | "tool_call" | "usage" | "result" => {
                    Some(format!("{:<9} {text}", label.replace("tool_call", "tool")))
                }
                _ => None,
            }
        }
        event::DELIVERY_PUSHED => ev
            .payload::<DeliveryPushed>()
            .ok()
            .map(|p| format!("pushed    {}", p.branch)),
        event::DELIVERY_FAILED => ev
            .payload::<DeliveryFailed>()
            .ok()
            .map(|p| format!("push failed: {}", p.error)),
        _ => None,
    }
}

/// The live log's line for a review.
fn review_line(r: &gantry_core::review::ReviewResult) -> String {
    let result = if r.passed { "passed" } else { "failed" };
    match &r.verdict {
        Some(v) => format!(
            "review    {result}: scored {:.2} (needs {:.2}), {} finding(s)",
            v.score,
            r.threshold,
            v.findings.len()
        ),
        None => format!(
            "review    {result}: {}",
            r.reason.as_deref().unwrap_or("no verdict")
        ),
    }
}

/// The summary's lines on the checking stage: the job its gate sent back for a fix
/// round and its reviewer approved, and the job stopped by the credential it planted
/// (never printed).
fn explain_checks(jobs: &[Job], tracked: &BTreeMap<JobId, Tracked>) {
    let named = |n: &str| {
        jobs.iter()
            .find(|j| tracked.get(&j.id).is_some_and(|t| t.name == n))
    };
    if let Some(t) = named("tested") {
        let rounds = tracked.get(&t.id).map_or(0, |k| k.fix_rounds);
        let gates: Vec<String> = t
            .runs
            .iter()
            .flat_map(|r| &r.gates)
            .map(|g| format!("{} {}", g.name, if g.passed { "passed" } else { "failed" }))
            .collect();
        output::line(format!(
            "  gates:    tested: its gate failed, {rounds} fix round(s) sent it back to its agent, then {} (job {})",
            gates.join(", "),
            t.state
        ));
        if let Some(review) = t.runs.iter().flat_map(|r| &r.checks.reviews).last() {
            output::line(format!(
                "  review:   tested: {} (shown by `gantry show {}`)",
                review_line(review).trim_start_matches("review").trim(),
                t.id
            ));
        }
    }
    if let Some(l) = named("leaky") {
        output::line(format!(
            "  secrets:  leaky: {} (never printed; the result was not delivered)",
            l.reason.as_deref().unwrap_or("?")
        ));
    }
}

/// The live log's line for a state change, for the changes the demo explains.
fn state_line(change: JobStateChanged) -> Option<String> {
    use JobState::{Blocked, Canceled, Failed, Killed, Queued, Running};
    match (change.from, change.to) {
        (Blocked, Queued) => Some("unblocked: its dependency succeeded".to_string()),
        (Running, Queued) => {
            Some("back in the queue for another attempt (retry_on: failed)".to_string())
        }
        (_, to @ (Canceled | Failed | Killed)) => Some(format!(
            "{to}{}",
            change.reason.map(|r| format!(": {r}")).unwrap_or_default()
        )),
        _ => None,
    }
}

/// The summary table and what it shows about deps, the lock, priorities and the retry.
fn summary(jobs: &[Job], tracked: &BTreeMap<JobId, Tracked>, t0: i64) {
    let name = |id: JobId| tracked.get(&id).map(|t| t.name.clone()).unwrap_or_default();
    output::line("");
    let mut t = Table::new(&[
        "JOB>",
        "NAME",
        "TITLE",
        "STATE",
        "ATTEMPTS>",
        "BRANCH",
        "FILES>",
        "+/-",
    ]);
    for j in jobs {
        let last = j.runs.last();
        let branch = tracked
            .get(&j.id)
            .and_then(|t| t.delivered.clone())
            .or_else(|| last.and_then(|r| r.branch.clone()))
            .unwrap_or_else(|| "-".into());
        t.row(vec![
            j.id.to_string(),
            name(j.id),
            j.title.clone(),
            j.state.to_string(),
            j.runs.len().to_string(),
            branch,
            last.and_then(|r| r.files_changed)
                .map(|f| f.to_string())
                .unwrap_or_else(|| "-".into()),
            last.map(plus_minus).unwrap_or_else(|| "-".into()),
        ]);
    }
    t.print();

    let by_name = |n: &str| jobs.iter().find(|j| name(j.id) == n);
    let first_start = |j: &Job| j.runs.first().map(|r| r.started_at);
    let last_end = |j: &Job| j.runs.last().and_then(|r| r.finished_at);
    let rel = |ms: i64| format!("+{:.2}s", (ms - t0).max(0) as f64 / 1000.0);
    output::line("");
    output::line("What happened:");

    if let (Some(schema), Some(api)) = (by_name("schema"), by_name("api"))
        && let (Some(done), Some(start)) = (last_end(schema), first_start(api))
    {
        output::line(format!(
            "  deps:     schema finished at {}, api was claimed at {} ({})",
            rel(done),
            rel(start),
            if start >= done {
                "after it, as deps: [schema] asks"
            } else {
                "BEFORE it: the dependency was not respected"
            }
        ));
    }

    if let (Some(a), Some(b)) = (by_name("docs-intro"), by_name("docs-usage"))
        && let (Some(ra), Some(rb)) = (a.runs.last(), b.runs.last())
        && let (Some(ea), Some(eb)) = (ra.finished_at, rb.finished_at)
    {
        let overlap = ra.started_at < eb && rb.started_at < ea;
        output::line(format!(
            "  lock:     docs-intro ran {}–{}, docs-usage ran {}–{} ({})",
            rel(ra.started_at),
            rel(ea),
            rel(rb.started_at),
            rel(eb),
            if overlap {
                "they OVERLAPPED: the lock did not hold"
            } else {
                "never at the same time: lock `docs`"
            }
        ));
    }

    if let Some(hot) = by_name("hotfix")
        && let Some(first) = hot.runs.first()
    {
        // Run ids are handed out by the claim transaction, so they order the claims
        // exactly, even within one millisecond.
        let mut claims: Vec<(gantry_core::RunId, JobId)> = jobs
            .iter()
            .filter_map(|j| j.runs.first().map(|r| (r.id, j.id)))
            .collect();
        claims.sort();
        let rank = claims
            .iter()
            .position(|(_, id)| *id == hot.id)
            .map(|p| p + 1)
            .unwrap_or(0);
        output::line(format!(
            "  priority: hotfix (priority 9) was submitted last and claimed {} of {} (at {}, {SEATS} seats)",
            ordinal(rank),
            claims.len(),
            rel(first.started_at)
        ));
    }

    if let Some(fl) = by_name("flaky") {
        let attempts: Vec<String> = fl
            .runs
            .iter()
            .map(|r| {
                let o = r.outcome.map(Outcome::as_str).unwrap_or("running");
                match r.exit_code {
                    Some(c) if r.outcome != Some(Outcome::Succeeded) => {
                        format!("attempt {} {o} (exit {c})", r.attempt)
                    }
                    _ => format!("attempt {} {o}", r.attempt),
                }
            })
            .collect();
        output::line(format!("  retry:    flaky: {}", attempts.join(", then ")));
    }
    if let Some(a) = by_name("agent")
        && let Some(i) = &a.insights
    {
        output::line(format!(
            "  insights: agent: {}",
            crate::render::insights_label(i)
        ));
    }
    if let Some(r) = by_name("runaway") {
        let outcome = r
            .runs
            .last()
            .and_then(|r| r.outcome)
            .map(Outcome::as_str)
            .unwrap_or("?");
        let spent = r
            .insights
            .as_ref()
            .map(|i| format!("{} tokens", i.tokens()))
            .unwrap_or_else(|| "?".into());
        output::line(format!(
            "  budget:   runaway: {outcome} after {spent} of its 50000, job {} with no retry",
            r.state
        ));
    }
    explain_checks(jobs, tracked);
    let total = jobs
        .iter()
        .filter_map(last_end)
        .max()
        .map(|e| short_duration(e - t0));
    if let Some(total) = total {
        output::line(format!(
            "  all {} jobs done {total} after the submit",
            jobs.len()
        ));
    }
}

fn ordinal(n: usize) -> String {
    match n {
        1 => "1st".into(),
        2 => "2nd".into(),
        3 => "3rd".into(),
        0 => "?".into(),
        n => format!("{n}th"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_job_files_parse() {
        for j in jobs() {
            let text = job_file(&j);
            let parsed = gantry_core::spec::parse_job_file(&format!("{}.md", j.name), &text);
            let parsed = parsed
                .unwrap_or_else(|e| panic!("demo job {} does not parse: {e}\n{text}", j.name));
            assert_eq!(parsed.spec.idempotency_key.as_deref(), Some(j.name));
            match parsed.spec.engine {
                gantry_core::EngineKind::Command => {
                    assert_eq!(parsed.spec.command[..2], ["sh".to_string(), "-c".into()]);
                }
                gantry_core::EngineKind::Script => assert!(parsed.spec.steps.len() >= 5),
                other => panic!("demo job {} uses engine {other:?}", j.name),
            }
        }
    }
}
