//! The `changes()` signal across processes: LISTEN/NOTIFY as a hint, a poll as the
//! fallback.
//!
//! - A write of this store that changed something bumps the local counter at once and
//!   wakes the notifier, which sends `NOTIFY` on [`CHANNEL`] after the commit. Sends
//!   coalesce: while one is in flight, any number of later writes cause one more. (A
//!   `NOTIFY` inside each write transaction would serialize their commits: PostgreSQL
//!   takes a cluster-wide lock to queue notifications at commit.)
//! - A dedicated connection LISTENs on [`CHANNEL`] and bumps the counter for every
//!   notification from another store instance. When that connection drops it
//!   reconnects (after [`RELISTEN_DELAY`]), LISTENs again and bumps once, since it may
//!   have missed something.
//! - Nothing bumps the counter unless something changed (a waiter woken for nothing
//!   would query, find nothing and wait again; issue 2). The poller does echo this
//!   instance's own writes once, up to one interval later: it cannot tell them apart.
//! - Notifications are hints: every `poll_interval` a poller reads the last event id
//!   handed out (a sequence read, which takes no lock and sees other sessions at once)
//!   and bumps when it moved, so waiters wake even when notifications are lost or
//!   LISTEN is broken. Every change a waiter cares about (a job becoming claimable,
//!   new events) records an event.

use super::tls::Connector;
use super::{Inner, describe};
use deadpool_postgres::Pool;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio_postgres::AsyncMessage;

/// Notifications buffered between the connection and their consumer.
const NOTIFICATION_BUFFER: usize = 256;

/// The notification channel.
pub(super) const CHANNEL: &str = "gantry_changes";

/// Application name of the listening connection, so an operator (or a test) can find it.
pub(super) const LISTENER_APP: &str = "gantry-listener";

/// Wait before reconnecting a dropped listening connection.
const RELISTEN_DELAY: Duration = Duration::from_millis(500);

/// Bumps the change counter.
pub(super) fn bump(changes: &watch::Sender<u64>) {
    changes.send_modify(|n| *n = n.wrapping_add(1));
}

/// Least time between two notifications of one instance: changes within it share one.
/// Under load this keeps notifications to a few hundred a second, whatever the rate of
/// writes, for at most this much more latency.
const NOTIFY_EVERY: Duration = Duration::from_millis(5);

/// Sends one `NOTIFY` per wake-up of `dirty` (at most one per [`NOTIFY_EVERY`]), until
/// the store is gone.
pub(super) async fn notifier(pool: Pool, dirty: Arc<Notify>, instance: String) {
    loop {
        dirty.notified().await;
        tokio::time::sleep(NOTIFY_EVERY).await;
        let sent = match pool.get().await {
            Ok(client) => client
                .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &instance])
                .await
                .map(|_| ())
                .map_err(|e| describe(&e)),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            // The other instances' pollers still see the change.
            tracing::warn!(error = %e, "cannot send the change notification");
        }
    }
}

/// Listens for other instances' notifications and bumps `changes` for each; reconnects
/// when the connection drops (through `tls`, as the store's other connections). Ends
/// when the store is gone.
pub(super) async fn listener(
    config: tokio_postgres::Config,
    tls: Connector,
    changes: Weak<watch::Sender<u64>>,
    instance: String,
    healthy: Arc<watch::Sender<bool>>,
) {
    let mut config = config;
    config.application_name(LISTENER_APP);
    let mut first = true;
    loop {
        let ended = listen_once(&config, &tls, &changes, &instance, &healthy, first).await;
        first = false;
        match ended {
            Ok(()) => tracing::warn!("the change listener's connection closed; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "the change listener failed; reconnecting"),
        }
        healthy.send_replace(false);
        if changes.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(RELISTEN_DELAY).await;
    }
}

/// One connection's life: connect, LISTEN, bump once unless it is the `first` (nothing
/// was missed before it), then bump per notification until the connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &Connector,
    changes: &Weak<watch::Sender<u64>>,
    instance: &str,
    healthy: &watch::Sender<bool>,
    first: bool,
) -> Result<(), String> {
    let (client, mut connection) = config
        .connect(tls.clone())
        .await
        .map_err(|e| describe(&e))?;
    // Notifications are hints (the poll is the fallback) and each one wakes every
    // waiter: when the consumer lags, dropping some loses nothing, and the buffer stays
    // bounded however fast other servers notify.
    let (tx, mut rx) = mpsc::channel(NOTIFICATION_BUFFER);
    // The connection must be polled for the client's queries to run; it also yields the
    // notifications.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    match tx.try_send(n.payload().to_string()) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(describe(&e)),
                None => return Ok(()),
            }
        }
    });
    let listened = client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| describe(&e));
    if let Err(e) = listened {
        driver.abort();
        return Err(e);
    }
    healthy.send_replace(true);
    if !first {
        // Something may have changed while no connection listened.
        match changes.upgrade() {
            Some(changes) => bump(&changes),
            None => return Ok(()),
        }
    }
    while let Some(from) = rx.recv().await {
        let Some(changes) = changes.upgrade() else {
            driver.abort();
            return Ok(());
        };
        if from != instance {
            bump(&changes);
        }
    }
    drop(client);
    driver
        .await
        .map_err(|e| format!("the listener's connection task failed: {e}"))?
}

/// Bumps `changes` whenever the last event id handed out moved since the last look.
pub(super) async fn poller(inner: Weak<Inner>, interval: Duration, mut last: Option<i64>) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match inner.last_event_id().await {
            Ok(now) => {
                if last != Some(now) {
                    if last.is_some() {
                        bump(&inner.changes);
                    }
                    last = Some(now);
                }
            }
            Err(e) => tracing::warn!(error = %e, "the change poller cannot read the event id"),
        }
    }
}
