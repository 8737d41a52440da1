//! Integration tests of gantry-store: the backend-independent conformance suite, run
//! against the SQLite backend, plus SQLite-only checks (file handling, the lock index).

mod conformance;
mod helpers;
mod sqlite;

use gantry_store::{SqliteStore, Store};
use std::sync::Arc;

/// A store under test and whatever keeps it alive (its temporary directory).
pub struct TestStore {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Removed when the test ends.
    pub dir: tempfile::TempDir,
}

/// The one constructor the conformance suite uses: a fresh, empty store. A second
/// backend runs the same suite by providing its own version of this function.
pub fn new_store() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("gantry.db")).expect("open store");
    TestStore {
        store: Arc::new(store),
        dir,
    }
}
