//! The server's background chores.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most background chores (removals of leftover result refs, one `git` each) that run
/// at once; more wait for a slot.
const MAX_CHORES: usize = 8;

/// The server's background chores: bounded (at most [`MAX_CHORES`] at once), tracked
/// (a finished one is forgotten at the next spawn) and waited for when the server
/// stops, so no `git` of ours outlives it or piles up behind a slow remote.
pub(crate) struct Chores {
    set: Mutex<tokio::task::JoinSet<()>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Default for Chores {
    fn default() -> Self {
        Chores {
            set: Mutex::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CHORES)),
        }
    }
}

impl Chores {
    /// Runs `chore` in the background once a slot is free.
    pub(super) fn spawn(&self, chore: impl std::future::Future<Output = ()> + Send + 'static) {
        let slots = self.slots.clone();
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            // The semaphore is never closed: a permit always comes.
            let _slot = slots.acquire_owned().await;
            chore.await;
        });
    }

    /// Waits for the chores to end, at most `within`, then abandons the rest (their
    /// work is best effort: a leftover ref is removed again on the next occasion).
    pub(crate) async fn drain(&self, within: Duration) {
        let mut set = std::mem::take(&mut *self.set.lock().unwrap_or_else(|p| p.into_inner()));
        let drained =
            tokio::time::timeout(within, async { while set.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(left = set.len(), "background chores abandoned at shutdown");
            set.abort_all();
        }
    }
}
