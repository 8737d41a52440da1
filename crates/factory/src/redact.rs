//! Redaction of what a run leaves: agents echo what they find, so nothing of a run
//! leaves the factory, or stays in its files, before it passed through a [`Redactor`].
//! A credential matching a rule (the built-in ones and those of gantry.toml's
//! `[secrets]`) becomes `[REDACTED:<rule>]`, and the literal value of every variable
//! the engine passed to the agent (its API keys) and of every secret the job named
//! (`secrets:`) becomes `[REDACTED:env]`.
//!
//! Two places apply it. Every upload of a run (its events and its finish report) goes
//! through [`Redacting`], a [`Coordinator`] wrapped around the factory's, so the server
//! never stores, streams or serves a secret whatever part of the run sent it. And the
//! files a run's processes wrote (the transcript, stderr, gate output) and the diff are
//! rewritten redacted ([`files`]) once nothing reads them by offset any more, so the
//! data dir keeps none either.

use crate::FactoryConfig;
use crate::tail::complete_utf8_prefix;
use async_trait::async_trait;
use gantry_core::api::{Claim, FinishReport, Heartbeat, RegisterFactory, Renewed};
use gantry_core::event::NewEvent;
use gantry_core::review::ReviewChoice;
use gantry_core::{EngineKind, FactoryId, JobSpec, RunId};
use gantry_protocol::{CoordError, Coordinator, HeartbeatAck};
use gantry_secrets::{Redactor, Scanner, ScannerCache, SecretsConfig};
use std::borrow::Cow;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Largest piece of a file redacted at once. Pieces end at a line end, so a credential
/// (even a private key block, which spans lines) is only missed when it straddles two
/// pieces of a file this big.
const FILE_PIECE: usize = 16 * 1024 * 1024;

/// The factory process's scanners, one per configuration (building one compiles every
/// rule's pattern): the redactors' and the checking stage's.
pub(crate) fn scanners() -> &'static ScannerCache {
    static SCANNERS: OnceLock<ScannerCache> = OnceLock::new();
    SCANNERS.get_or_init(ScannerCache::default)
}

/// The scanner of `config` (the built-in rules plus the operator's). A configuration
/// that does not compile (it was checked when read, so this takes a bug) falls back to
/// the built-in rules: output is still redacted.
fn scanner(config: &SecretsConfig) -> Option<Scanner> {
    match scanners().get(config) {
        Ok(s) => Some(s),
        Err(e) if *config != SecretsConfig::default() => {
            tracing::error!(error = %e, "the configured secret rules do not compile: only the built-in rules redact");
            scanner(&SecretsConfig::default())
        }
        Err(e) => {
            tracing::error!(error = %e, "the built-in secret rules do not compile: output is not redacted");
            None
        }
    }
}

/// The redactor of a run of `spec`: the built-in rules and the factory's configured
/// ones, plus the values of the variables the factory passes to the CLI of the job's
/// engine and of its reviewer's, and the values of the secrets the run was `handed`.
pub(crate) fn for_job(
    cfg: &FactoryConfig,
    spec: &JobSpec,
    handed: &crate::job_secrets::Handed,
) -> Option<Arc<Redactor>> {
    let scanner = scanner(&cfg.secrets)?;
    let mut engines = vec![spec.engine];
    if let ReviewChoice::Inline(review) = &spec.review {
        engines.push(review.engine);
    }
    let values: Vec<String> = engines
        .into_iter()
        .flat_map(|engine| -> &[String] {
            match engine {
                EngineKind::ClaudeCode => &cfg.engines.claude.env,
                EngineKind::Codex => &cfg.engines.codex.env,
                EngineKind::Command | EngineKind::Script => &[],
            }
        })
        .filter_map(|name| std::env::var(name).ok())
        .chain(handed.values().map(str::to_string))
        .collect();
    Some(Arc::new(Redactor::new(scanner, values)))
}

/// Redacts every string in the data of `events`, in place.
pub(crate) fn events(redactor: &Redactor, events: &mut [NewEvent]) {
    for e in events {
        value(redactor, &mut e.data);
    }
}

fn value(redactor: &Redactor, v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => text(redactor, s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| value(redactor, i)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|i| value(redactor, i)),
        _ => {}
    }
}

fn text(redactor: &Redactor, s: &mut String) {
    if let Cow::Owned(clean) = redactor.redact(s) {
        *s = clean;
    }
}

/// Redacts the text of a finish report: its error, its diff and what the agent said
/// about itself. Commits, refs and the session id are Gantry's and the agent CLI's own
/// identifiers, which later steps use as they are (a resumed session, a delivery).
pub(crate) fn report(redactor: &Redactor, report: &mut FinishReport) {
    for s in [&mut report.error, &mut report.diff].into_iter().flatten() {
        text(redactor, s);
    }
    if let Some(i) = &mut report.insights {
        for s in [&mut i.error_message, &mut i.error_kind, &mut i.model]
            .into_iter()
            .flatten()
        {
            text(redactor, s);
        }
    }
}

/// Rewrites each of `paths` redacted, off the async threads; a missing file is fine,
/// and a file that cannot be rewritten is logged (its run goes on).
pub(crate) async fn files(redactor: Arc<Redactor>, paths: Vec<PathBuf>) {
    let done = tokio::task::spawn_blocking(move || {
        for path in &paths {
            match file(&redactor, path) {
                Ok(true) => tracing::debug!(path = %path.display(), "file redacted"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot redact a run's file: it may keep a secret")
                }
            }
        }
    })
    .await;
    if let Err(e) = done {
        tracing::warn!(error = %e, "redacting a run's files failed");
    }
}

/// Rewrites the file at `path` with every secret replaced, atomically: the redacted
/// text goes to a temporary file beside it, which is then renamed over it, so a crash
/// leaves the old file or the new one, never half of either. A file without secrets is
/// left untouched. Returns whether it was rewritten (false also for a missing file).
///
/// Text is redacted in pieces of up to [`FILE_PIECE`] bytes that end at a line end;
/// bytes that are not UTF-8 are kept as they are in a piece without a secret, and
/// become U+FFFD in one with a secret (as in the uploaded events).
pub(crate) fn file(redactor: &Redactor, path: &Path) -> std::io::Result<bool> {
    let input = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let permissions = input.metadata()?.permissions();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.redact.tmp"));
    let written = redact_into(redactor, input, &tmp);
    match written {
        Ok(true) => {
            std::fs::set_permissions(&tmp, permissions)?;
            std::fs::rename(&tmp, path)?;
            Ok(true)
        }
        Ok(false) => {
            std::fs::remove_file(&tmp)?;
            Ok(false)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes `input` redacted to `tmp` (synced); returns whether anything was replaced.
fn redact_into(redactor: &Redactor, input: std::fs::File, tmp: &Path) -> std::io::Result<bool> {
    let mut input = BufReader::new(input);
    let mut out = BufWriter::new(std::fs::File::create(tmp)?);
    let mut changed = false;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let want = FILE_PIECE.saturating_sub(buf.len()) as u64;
        input.by_ref().take(want).read_to_end(&mut buf)?;
        let at_end = buf.len() < FILE_PIECE;
        let cut = if at_end {
            buf.len()
        } else {
            match buf.iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                None => complete_utf8_prefix(&buf).max(1),
            }
        };
        let piece = &buf[..cut];
        let text = String::from_utf8_lossy(piece);
        match redactor.redact(&text) {
            Cow::Owned(clean) => {
                changed = true;
                out.write_all(clean.as_bytes())?;
            }
            Cow::Borrowed(_) => out.write_all(piece)?,
        }
        buf.drain(..cut);
        if at_end {
            break;
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    if changed {
        file.sync_all()?;
    }
    Ok(changed)
}

/// The factory's [`Coordinator`] as one run sees it: the events and the finish report
/// it uploads are redacted first; everything else passes through as it is.
pub(crate) struct Redacting {
    /// The factory's coordinator.
    pub inner: Arc<dyn Coordinator>,
    /// The run's redactor.
    pub redactor: Arc<Redactor>,
}

#[async_trait]
impl Coordinator for Redacting {
    async fn register(&self, reg: &RegisterFactory) -> Result<FactoryId, CoordError> {
        self.inner.register(reg).await
    }
    async fn heartbeat(
        &self,
        factory: FactoryId,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAck, CoordError> {
        self.inner.heartbeat(factory, hb).await
    }
    async fn claim(&self, factory: FactoryId, wait: Duration) -> Result<Option<Claim>, CoordError> {
        self.inner.claim(factory, wait).await
    }
    async fn renew(&self, run: RunId, epoch: i64) -> Result<Renewed, CoordError> {
        self.inner.renew(run, epoch).await
    }
    async fn events(
        &self,
        run: RunId,
        epoch: i64,
        mut batch: Vec<NewEvent>,
    ) -> Result<(), CoordError> {
        events(&self.redactor, &mut batch);
        self.inner.events(run, epoch, batch).await
    }
    async fn finish(&self, run: RunId, mut finished: FinishReport) -> Result<(), CoordError> {
        report(&self.redactor, &mut finished);
        self.inner.finish(run, finished).await
    }
    fn stop_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.stop_signal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::new(Scanner::builtin(), ["s3cr3t-v4lue-0f-an-env"])
    }

    #[test]
    fn a_file_is_rewritten_redacted_and_a_clean_one_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dirty = dir.path().join("stdout.log");
        let key = format!("AKIA{}", "QWERTYUIOPASDFGH");
        let mut bytes = format!("a\nkey {key}\nenv s3cr3t-v4lue-0f-an-env\n").into_bytes();
        bytes.extend_from_slice(b"\xffz");
        std::fs::write(&dirty, bytes).expect("write");
        assert!(file(&redactor(), &dirty).expect("redacts"));
        let text = String::from_utf8_lossy(&std::fs::read(&dirty).expect("read")).into_owned();
        assert!(!text.contains(&key) && !text.contains("s3cr3t"), "{text}");
        assert!(text.contains("[REDACTED:aws-access-key-id]"), "{text}");
        assert!(
            text.contains("[REDACTED:env]") && text.starts_with("a\n"),
            "{text}"
        );
        // Nothing left beside it, and redacting again changes nothing.
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(names.len(), 1);
        assert!(!file(&redactor(), &dirty).expect("again"));

        let clean = dir.path().join("clean.log");
        std::fs::write(&clean, b"nothing \xff here\n").expect("write");
        assert!(!file(&redactor(), &clean).expect("reads"));
        assert_eq!(std::fs::read(&clean).expect("read"), b"nothing \xff here\n");
        assert!(!file(&redactor(), &dir.path().join("missing")).expect("missing is fine"));
    }

    #[test]
    fn a_report_keeps_its_identifiers_and_loses_its_secrets() {
        let key = format!("AKIA{}", "QWERTYUIOPASDFGH");
        let mut r = FinishReport {
            error: Some(format!("failed near {key}")),
            diff: Some(format!("+aws_key = {key}\n")),
            commit: Some("0123456789abcdef0123456789abcdef01234567".to_string()),
            insights: Some(gantry_core::engine::Insights {
                session_id: Some("s3cr3t-v4lue-0f-an-env".to_string()),
                error_message: Some("API key s3cr3t-v4lue-0f-an-env refused".to_string()),
                ..Default::default()
            }),
            ..FinishReport::default()
        };
        report(&redactor(), &mut r);
        let json = serde_json::to_string(&r).expect("json");
        assert!(!json.contains(&key), "{json}");
        assert!(json.contains("API key [REDACTED:env] refused"), "{json}");
        assert_eq!(
            r.commit.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(
            r.insights.and_then(|i| i.session_id).as_deref(),
            Some("s3cr3t-v4lue-0f-an-env"),
            "the session id is the agent CLI's, used to resume"
        );
    }
}
