//! The writer thread (group commit, one savepoint per operation), the checkpointer and
//! the read connections.

use super::*;
use crate::{Result, StoreError};
use gantry_core::time::Millis;
use rusqlite::Connection;
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::watch;

/// Read connections of a store.
pub(super) const READERS: usize = 4;

/// Most write operations one commit carries.
pub(super) const MAX_BATCH: usize = 256;

/// How long the writer polls for the next operation before it sleeps. Callers answered
/// by a commit usually send their next operation within tens of microseconds; being
/// put to sleep and woken again (a futex, and the scheduler's latency) costs the
/// writer more than polling for that long, and an idle store polls only this long.
pub(super) const WRITER_SPIN: Duration = Duration::from_micros(50);

/// Page size of a new database file. Smaller pages than SQLite's 4 KiB mean fewer bytes
/// per commit (each changed page is written whole to the WAL, and copied once into the
/// savepoint journal by every operation that changes it); the hot rows are small and
/// specs are read rarely, so the deeper trees and the overflow pages of long specs
/// cost less than that saves.
pub(super) const PAGE_SIZE: i64 = 2048;

/// How long the idle writer must have committed nothing before the checkpointer copies
/// the WAL into the database file.
pub(super) const CHECKPOINT_IDLE: Duration = Duration::from_millis(100);

/// WAL size after which the writer checkpoints itself after a commit, under load that
/// never pauses (the checkpointer handles pauses). Kept small on purpose: once the WAL
/// has been checkpointed SQLite writes it again from its start, and overwriting pages
/// of a file that the OS already holds costs about half as much as growing the file,
/// which outweighs the checkpoints' copies and fsyncs.
pub(super) const WRITER_AUTOCHECKPOINT_BYTES: i64 = 8 << 20;

/// What the writer thread does with one queued operation: run it on the open
/// transaction (or learn that the transaction could not begin) and return what to do
/// once the commit is known.
pub(super) type Op = Box<dyn FnOnce(std::result::Result<&Connection, &str>) -> Completion + Send>;

/// Answers an operation's caller, given the commit's error (if it failed).
pub(super) type Completion = Box<dyn FnOnce(Option<&str>) + Send>;

/// How an operation ended inside its savepoint.
pub(super) enum Done<R> {
    /// Applied.
    Ok(R),
    /// Refused; nothing of it is kept.
    Fail(StoreError),
    /// Refused, but what it wrote (the record of the refusal) is kept.
    FailKeep(StoreError),
}

/// A free read connection of `inner` (or, when all are busy, the first to free up).
pub(super) fn reader(inner: &Inner) -> std::sync::MutexGuard<'_, Connection> {
    for conn in &inner.readers {
        if let Ok(guard) = conn.try_lock() {
            return guard;
        }
    }
    // Every reader is busy: queue on one of them, chosen by the thread, so that waits
    // spread over the readers.
    let n = inner.readers.len().max(1);
    let pick = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        std::thread::current().id(),
    ) as usize
        % n;
    inner.readers[pick]
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`SqliteStore::read_on`], on the calling (blocking) thread.
pub(super) fn read_blocking<R>(
    inner: &Inner,
    snapshot: bool,
    f: impl FnOnce(&Connection) -> Result<R>,
) -> Result<R> {
    let conn = reader(inner);
    if !conn.is_autocommit() {
        // A read that panicked left its transaction open; end it, so this read sees
        // the latest commit.
        conn.prepare_cached("ROLLBACK")?.execute([])?;
    }
    if !snapshot {
        return f(&conn);
    }
    // Cached statements rather than `Connection::transaction`, which prepares its
    // BEGIN and COMMIT anew every time.
    conn.prepare_cached("BEGIN")?.execute([])?;
    let out = f(&conn);
    // The transaction only read: committing it and rolling it back are the same.
    let end = conn
        .prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]));
    let out = out?;
    end?;
    Ok(out)
}

/// Runs one operation inside a savepoint: released when it succeeds (or failed but
/// keeps its record), rolled back when it failed or panicked.
pub(super) fn run_in_savepoint<R>(
    conn: &Connection,
    clock: &Clock,
    f: impl FnOnce(&Connection, Millis) -> Done<R>,
) -> Done<R> {
    let sp = |sql: &str| -> Result<()> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    if let Err(e) = sp("SAVEPOINT op") {
        return Done::Fail(e);
    }
    let now = clock.now();
    let done = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn, now))) {
        Ok(done) => done,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "a store operation panicked; rolled back");
            Done::Fail(StoreError::Backend(format!(
                "store operation panicked: {what}"
            )))
        }
    };
    let end = match &done {
        Done::Ok(_) | Done::FailKeep(_) => sp("RELEASE op"),
        Done::Fail(_) => sp("ROLLBACK TO op").and_then(|()| sp("RELEASE op")),
    };
    match end {
        Ok(()) => done,
        Err(e) => Done::Fail(e),
    }
}

/// The checkpointer thread: once the writer has been idle for [`CHECKPOINT_IDLE`] after
/// some commits, copies the WAL into the database file, off the writer's path, so the
/// WAL restarts small at the next write. Ends when the store closes its stop channel.
pub(super) fn checkpoint_loop(
    conn: &Connection,
    stop: &mpsc::Receiver<()>,
    mut commits: watch::Receiver<u64>,
) {
    let mut dirty = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_IDLE) {
        if commits.has_changed().unwrap_or(false) {
            // Still busy: checkpointing now would compete with the writer for the disk
            // and never catch up with it.
            commits.borrow_and_update();
            dirty = true;
            continue;
        }
        if !dirty {
            continue;
        }
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
            Ok(_) => dirty = false,
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; will retry"),
        }
    }
}

/// The next queued operation: polls for [`WRITER_SPIN`], then sleeps until one comes.
/// `None` once the store is closed.
pub(super) fn next_op(ops: &mpsc::Receiver<Op>) -> Option<Op> {
    let mut since: Option<std::time::Instant> = None;
    loop {
        match ops.try_recv() {
            Ok(op) => return Some(op),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let start = *since.get_or_insert_with(std::time::Instant::now);
        if start.elapsed() >= WRITER_SPIN {
            return ops.recv().ok();
        }
        std::hint::spin_loop();
    }
}

/// The writer thread: opens a transaction for the first queued operation, runs it and
/// every operation that arrives while the transaction is open (up to [`MAX_BATCH`]),
/// commits, answers them all, and bumps the change counter.
pub(super) fn writer_loop(conn: Connection, ops: mpsc::Receiver<Op>, changes: &watch::Sender<u64>) {
    while let Some(first) = next_op(&ops) {
        let rows_before = conn.total_changes();
        let begin = conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]).map(|_| ()));
        let begin_error = begin
            .as_ref()
            .err()
            .map(|e| format!("cannot begin a write transaction: {e}"));
        let run = |op: Op| -> Completion {
            if let Some(msg) = &begin_error {
                op(Err(msg))
            } else if conn.is_autocommit() {
                // Some errors (disk full, I/O) make SQLite roll the whole transaction
                // back; what follows must not run outside it, in autocommit mode.
                op(Err(
                    "the write transaction was rolled back by an earlier error",
                ))
            } else {
                op(Ok(&conn))
            }
        };
        // Operations run as they arrive: while one runs, the callers answered by the
        // last commit send their next ones, which then share this commit. The commit
        // happens as soon as none is waiting, so callers never wait for latecomers.
        let mut completions: Vec<Completion> = vec![run(first)];
        while completions.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => completions.push(run(op)),
                Err(_) => break,
            }
        }
        let commit_error = match begin {
            Err(_) => None,
            Ok(()) => match conn
                .prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]))
            {
                Ok(_) => None,
                Err(e) => {
                    tracing::error!(error = %e, "store commit failed; rolling back");
                    if let Err(e) = conn.execute_batch("ROLLBACK") {
                        tracing::error!(error = %e, "store rollback failed");
                    }
                    Some(e.to_string())
                }
            },
        };
        // Bump before answering, so a caller that waits for changes after its write
        // returns never misses its own. A batch that changed no row (a claim that found
        // nothing, an empty reap) does not bump: waiters woken by it would query,
        // find nothing, and wake each other forever (issue 2: an idle server spun).
        if conn.total_changes() != rows_before {
            changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        for done in completions {
            done(commit_error.as_deref());
        }
    }
}
