//! The embedded SQLite backend.

/// The embedded SQLite store (one file, WAL mode).
pub struct SqliteStore {}
