//! A VFS shim over SQLite's default (unix) VFS that writes each WAL commit with one
//! system call instead of two per page.
//!
//! SQLite appends a commit to the WAL as a 24-byte frame header plus one page for every
//! page it changed, each with its own `pwrite`; on the store's hot path (claim and
//! finish, a handful of pages per commit) those calls were the largest single cost of
//! the writer thread. This shim buffers the appended bytes of WAL files and writes them
//! in one call when the commit's last frame is complete, which is still inside SQLite's
//! write of that frame: the frame is in the file (and any error is reported to SQLite,
//! which then fails the commit) before SQLite publishes the commit to readers in the
//! shared-memory index. Durability is unchanged: with `synchronous = NORMAL` SQLite
//! never syncs the WAL at commit, and every sync still happens, after the buffer is
//! written.
//!
//! Only appends are buffered. Any other access to the file (a read, a write elsewhere,
//! a sync, a truncate, a size query, a file control, closing it) writes the buffer
//! first, so SQLite always sees the file as if every write had been made at once.
//! Files other than WALs are the default VFS's own files, untouched.

// SQLite's VFS interface is a C ABI: implementing it takes raw pointers and `extern "C"`
// functions. Everything unsafe in the store is in this module.
#![allow(unsafe_code)]

use rusqlite::ffi;
use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;

/// The SQLite this shim was written and tested against (the version bundled by the
/// pinned `libsqlite3-sys`): its assumption that SQLite appends each WAL frame header
/// with a write of its own is a detail of the unix VFS's callers, not a promise, so
/// any other SQLite gets the default VFS instead of the shim.
const PINNED_SQLITE: i32 = 3_054_001;

/// The name this VFS is registered under.
pub(crate) const NAME: &str = "gantry-wal";

/// The same, for SQLite.
const NAME_C: &CStr = c"gantry-wal";

/// Size of a WAL frame header; its bytes 4..8 are nonzero only in a commit's last frame.
const FRAME_HEADER: usize = 24;

/// Most bytes handed to the base VFS in one write: the unix VFS writes at most
/// 128 KiB - 1 per call (it masks larger sizes), so larger buffers go in slices.
const MAX_WRITE: usize = 1 << 16;

/// Most bytes buffered before they are written anyway (a large commit, such as a big
/// submit, is then written as it goes, this much at a time).
const MAX_BUFFER: usize = 1 << 20;

/// The VFS this shim wraps, found and registered once per process.
struct Registered {
    base: *mut ffi::sqlite3_vfs,
}

// SAFETY: the pointers are to SQLite's static VFS objects, which live for the whole
// process and which SQLite itself shares between threads.
unsafe impl Send for Registered {}
// SAFETY: as above; the objects are never written after registration.
unsafe impl Sync for Registered {}

static REGISTERED: OnceLock<Result<Registered, String>> = OnceLock::new();

/// Registers the VFS (once per process) and returns its name, to open connections with:
/// `None` means SQLite's default VFS (the SQLite linked in is not the one this shim was
/// checked against).
pub(crate) fn name() -> Result<Option<&'static str>, String> {
    let running = rusqlite::version_number();
    if running != PINNED_SQLITE {
        static WARNED: OnceLock<()> = OnceLock::new();
        WARNED.get_or_init(|| {
            tracing::warn!(
                running,
                pinned = PINNED_SQLITE,
                "SQLite is not the version the WAL write shim was checked against: using the default VFS"
            );
        });
        return Ok(None);
    }
    match REGISTERED.get_or_init(register) {
        Ok(_) => Ok(Some(NAME)),
        Err(e) => Err(e.clone()),
    }
}

fn base_vfs() -> *mut ffi::sqlite3_vfs {
    match REGISTERED.get() {
        Some(Ok(r)) => r.base,
        // Unreachable: SQLite only calls into this VFS after `register` succeeded.
        _ => std::ptr::null_mut(),
    }
}

fn register() -> Result<Registered, String> {
    // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS (initializing SQLite if
    // needed) or NULL; the copy made of it is leaked, so it outlives every connection,
    // as SQLite requires of registered VFS objects.
    unsafe {
        let base = ffi::sqlite3_vfs_find(std::ptr::null());
        if base.is_null() {
            return Err("SQLite has no default VFS to wrap".into());
        }
        let inner_offset = inner_offset();
        let size = inner_offset + usize::try_from((*base).szOsFile).unwrap_or(0);
        let mut vfs: ffi::sqlite3_vfs = *base;
        vfs.szOsFile = c_int::try_from(size).map_err(|_| "VFS file size overflow")?;
        vfs.zName = NAME_C.as_ptr();
        vfs.pNext = std::ptr::null_mut();
        vfs.xOpen = Some(x_open);
        let vfs = Box::leak(Box::new(vfs));
        let rc = ffi::sqlite3_vfs_register(vfs, 0);
        if rc != ffi::SQLITE_OK {
            return Err(format!("cannot register the {NAME} VFS: SQLite error {rc}"));
        }
        Ok(Registered { base })
    }
}

/// A WAL file as this VFS opens it: its own header, then the base VFS's file object.
#[repr(C)]
struct WalFile {
    /// What SQLite sees; `pMethods` points at [`WAL_METHODS`].
    file: ffi::sqlite3_file,
    /// The base VFS's file, in the same allocation at [`inner_offset`].
    inner: *mut ffi::sqlite3_file,
    /// Appended bytes not yet written; they belong at `buf_at`.
    buf: Vec<u8>,
    buf_at: i64,
    /// End of the log as appended through this handle: a write there (or past it)
    /// appends, one before it rewrites what is already in the file.
    end: i64,
    /// Whether the last frame header appended was a commit's: every append until the
    /// next transaction's first header is then written at once.
    commit_tail: bool,
}

fn inner_offset() -> usize {
    std::mem::size_of::<WalFile>().next_multiple_of(16)
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let base = base_vfs();
    // SAFETY: SQLite passes a file object of `szOsFile` bytes, which holds a `WalFile`
    // and then the base VFS's file; `base` is the registered default VFS.
    unsafe {
        let Some(open) = base.as_ref().and_then(|b| b.xOpen) else {
            return ffi::SQLITE_ERROR;
        };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            // Not a WAL: the base VFS's own file, in the first bytes of the allocation.
            return open(base, name, file, flags, out_flags);
        }
        let wal = file.cast::<WalFile>();
        let inner = file
            .cast::<u8>()
            .add(inner_offset())
            .cast::<ffi::sqlite3_file>();
        (*file).pMethods = std::ptr::null();
        let rc = open(base, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let version = (*(*inner).pMethods).iVersion;
        if version < 3 {
            // A base file without every method this shim forwards (not the unix VFS):
            // use it as it is, unbuffered.
            if let Some(close) = (*(*inner).pMethods).xClose {
                close(inner);
            }
            return open(base, name, file, flags, out_flags);
        }
        std::ptr::write(
            wal,
            WalFile {
                file: ffi::sqlite3_file {
                    pMethods: &WAL_METHODS,
                },
                inner,
                buf: Vec::new(),
                buf_at: 0,
                end: 0,
                commit_tail: false,
            },
        );
        ffi::SQLITE_OK
    }
}

/// The I/O methods of WAL files: the base file's, with appends buffered.
static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(w_close),
    xRead: Some(w_read),
    xWrite: Some(w_write),
    xTruncate: Some(w_truncate),
    xSync: Some(w_sync),
    xFileSize: Some(w_file_size),
    xLock: Some(w_lock),
    xUnlock: Some(w_unlock),
    xCheckReservedLock: Some(w_check_reserved_lock),
    xFileControl: Some(w_file_control),
    xSectorSize: Some(w_sector_size),
    xDeviceCharacteristics: Some(w_device_characteristics),
    xShmMap: Some(w_shm_map),
    xShmLock: Some(w_shm_lock),
    xShmBarrier: Some(w_shm_barrier),
    xShmUnmap: Some(w_shm_unmap),
    xFetch: Some(w_fetch),
    xUnfetch: Some(w_unfetch),
};

/// The `WalFile` behind a file object SQLite hands to one of [`WAL_METHODS`].
///
/// # Safety
/// `f` must be a file opened by [`x_open`] as a WAL and not yet closed; SQLite never
/// uses one file object from two threads at once.
unsafe fn wal<'a>(f: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    // SAFETY: per the function's contract.
    unsafe { &mut *f.cast::<WalFile>() }
}

/// The base file's methods.
///
/// # Safety
/// As for [`wal`].
unsafe fn methods<'a>(w: &WalFile) -> &'a ffi::sqlite3_io_methods {
    // SAFETY: the base VFS set `pMethods` when it opened the file, which succeeded.
    unsafe { &*(*w.inner).pMethods }
}

impl WalFile {
    /// Writes the buffered bytes (one call per [`MAX_WRITE`] bytes), then forgets them
    /// whatever the outcome:
    /// on failure SQLite fails the operation that led here and never relies on them.
    ///
    /// # Safety
    /// As for [`wal`].
    unsafe fn flush(&mut self) -> c_int {
        if self.buf.is_empty() {
            return ffi::SQLITE_OK;
        }
        let mut rc = ffi::SQLITE_OK;
        for (i, chunk) in self.buf.chunks(MAX_WRITE).enumerate() {
            // SAFETY: the inner file is open; the chunk is valid for its length.
            rc = unsafe {
                let Some(write) = methods(self).xWrite else {
                    rc = ffi::SQLITE_IOERR_WRITE;
                    break;
                };
                write(
                    self.inner,
                    chunk.as_ptr().cast::<c_void>(),
                    c_int::try_from(chunk.len()).unwrap_or(c_int::MAX),
                    self.buf_at + (i * MAX_WRITE) as i64,
                )
            };
            if rc != ffi::SQLITE_OK {
                break;
            }
        }
        self.buf.clear();
        rc
    }
}

/// Runs a base method after writing the buffer, returning the first error.
macro_rules! after_flush {
    ($f:expr, $method:ident $(, $arg:expr)*) => {{
        // SAFETY: `$f` is an open WAL file of this VFS (SQLite calls these methods only
        // on files it opened through `x_open`).
        unsafe {
            let w = wal($f);
            let rc = w.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            match methods(w).$method {
                Some(m) => m(w.inner $(, $arg)*),
                None => ffi::SQLITE_IOERR,
            }
        }
    }};
}

/// Runs a base method that does no I/O on the file's contents.
macro_rules! pass {
    ($f:expr, $method:ident, $missing:expr $(, $arg:expr)*) => {{
        // SAFETY: as in `after_flush`.
        unsafe {
            let w = wal($f);
            match methods(w).$method {
                Some(m) => m(w.inner $(, $arg)*),
                None => $missing,
            }
        }
    }};
}

unsafe extern "C" fn w_close(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes each file once; after this the `WalFile` is dropped in
    // place and SQLite frees the memory.
    unsafe {
        let w = wal(f);
        let flushed = w.flush();
        let closed = match methods(w).xClose {
            Some(close) => close(w.inner),
            None => ffi::SQLITE_OK,
        };
        std::ptr::drop_in_place(f.cast::<WalFile>());
        (*f).pMethods = std::ptr::null();
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn w_read(
    f: *mut ffi::sqlite3_file,
    out: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    after_flush!(f, xRead, out, amount, offset)
}

unsafe extern "C" fn w_write(
    f: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: `f` is an open WAL file of this VFS; `data` is valid for `amount` bytes.
    unsafe {
        let w = wal(f);
        let len = usize::try_from(amount).unwrap_or(0);
        if len == 0 || data.is_null() {
            // Nothing to append (and no slice may be made of a null pointer): the base
            // VFS answers such a write as it always does, after what is buffered.
            let rc = w.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            return match methods(w).xWrite {
                Some(write) => write(w.inner, data, amount, offset),
                None => ffi::SQLITE_IOERR_WRITE,
            };
        }
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
        if offset == 0 {
            // The WAL header: SQLite (re)starts the log, so everything after it is new.
            let rc = w.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            w.end = 0;
        }
        let appends = if w.buf.is_empty() {
            offset >= w.end
        } else {
            offset == w.buf_at + w.buf.len() as i64
        };
        if !appends {
            // A rewrite of bytes already in the file (a frame written twice in one
            // transaction, or checksums recomputed): write through, in order.
            let rc = w.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let rc = match methods(w).xWrite {
                Some(write) => write(w.inner, data, amount, offset),
                None => ffi::SQLITE_IOERR_WRITE,
            };
            w.end = w.end.max(offset + i64::from(amount));
            return rc;
        }
        let header = len == FRAME_HEADER;
        if header || offset == 0 {
            // A frame header says whether it is a commit's last frame (its bytes 4..8
            // hold the database size then, else zero); the WAL header starts a new log.
            w.commit_tail = header && bytes.get(4..8).is_some_and(|n| n != [0, 0, 0, 0]);
        }
        if w.buf.len() + len > MAX_BUFFER {
            let rc = w.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if w.buf.is_empty() {
            w.buf_at = offset;
        }
        w.buf.extend_from_slice(bytes);
        w.end = w.end.max(offset + i64::from(amount));
        if w.commit_tail && !header {
            // Part of a commit's last frame (its page, or the rest of it after a sync
            // point, or a padding frame): SQLite publishes the commit right after, so
            // the commit must be in the file when this call returns.
            return w.flush();
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn w_truncate(f: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let rc = after_flush!(f, xTruncate, size);
    // SAFETY: as in `after_flush`.
    unsafe {
        let w = wal(f);
        w.end = w.end.min(size);
    }
    rc
}

unsafe extern "C" fn w_sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    after_flush!(f, xSync, flags)
}

unsafe extern "C" fn w_file_size(
    f: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    after_flush!(f, xFileSize, size)
}

unsafe extern "C" fn w_lock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    after_flush!(f, xLock, level)
}

unsafe extern "C" fn w_unlock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    after_flush!(f, xUnlock, level)
}

unsafe extern "C" fn w_check_reserved_lock(f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    pass!(f, xCheckReservedLock, ffi::SQLITE_IOERR, out)
}

unsafe extern "C" fn w_file_control(
    f: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    after_flush!(f, xFileControl, op, arg)
}

unsafe extern "C" fn w_sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    pass!(f, xSectorSize, 4096)
}

unsafe extern "C" fn w_device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    pass!(f, xDeviceCharacteristics, 0)
}

unsafe extern "C" fn w_shm_map(
    f: *mut ffi::sqlite3_file,
    page: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    pass!(f, xShmMap, ffi::SQLITE_IOERR, page, size, extend, out)
}

unsafe extern "C" fn w_shm_lock(
    f: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    pass!(f, xShmLock, ffi::SQLITE_IOERR, offset, n, flags)
}

unsafe extern "C" fn w_shm_barrier(f: *mut ffi::sqlite3_file) {
    pass!(f, xShmBarrier, ())
}

unsafe extern "C" fn w_shm_unmap(f: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    pass!(f, xShmUnmap, ffi::SQLITE_IOERR, delete)
}

unsafe extern "C" fn w_fetch(
    f: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: as in `after_flush`; the base file's methods are version 3 (see
    // `x_open`), and one without memory mapping maps nothing.
    unsafe {
        let w = wal(f);
        let rc = w.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        match methods(w).xFetch {
            Some(m) => m(w.inner, offset, amount, out),
            _ => {
                *out = std::ptr::null_mut();
                ffi::SQLITE_OK
            }
        }
    }
}

unsafe extern "C" fn w_unfetch(
    f: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    page: *mut c_void,
) -> c_int {
    // SAFETY: as in `after_flush`.
    unsafe {
        let w = wal(f);
        match methods(w).xUnfetch {
            Some(m) => m(w.inner, offset, page),
            _ => ffi::SQLITE_OK,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};
    use std::path::Path;

    /// An upgrade of the bundled SQLite must be checked against the shim's assumptions
    /// (and [`PINNED_SQLITE`] moved) on purpose: without this test it would silently
    /// fall back to the default VFS.
    #[test]
    fn the_bundled_sqlite_is_the_one_the_shim_was_checked_against() {
        assert_eq!(
            rusqlite::version_number(),
            PINNED_SQLITE,
            "{}",
            rusqlite::version()
        );
        assert_eq!(name(), Ok(Some(NAME)));
    }

    /// A connection through this VFS, in WAL mode as the store uses it.
    fn open(path: &Path) -> Connection {
        let vfs = name().expect("VFS").expect("the shim is in use");
        let conn =
            Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs).expect("open");
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .expect("WAL");
        conn.execute_batch("PRAGMA synchronous = NORMAL")
            .expect("synchronous");
        conn
    }

    /// What a process killed right now would leave: the database and WAL files as they
    /// are (no shared memory), opened with SQLite's default VFS, which recovers from the
    /// WAL. Returns the rows of `t`.
    fn rows_after_a_crash(dir: &Path, path: &Path) -> Vec<(i64, String)> {
        let crash = dir.join("crash");
        let _ = std::fs::remove_dir_all(&crash);
        std::fs::create_dir(&crash).expect("dir");
        let copy = crash.join("t.db");
        std::fs::copy(path, &copy).expect("copy db");
        let wal = path.with_extension("db-wal");
        if wal.exists() {
            std::fs::copy(&wal, crash.join("t.db-wal")).expect("copy WAL");
        }
        let conn = Connection::open(&copy).expect("open copy");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("check");
        assert_eq!(check, "ok");
        conn.prepare("SELECT id, v FROM t ORDER BY id")
            .expect("select")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    #[test]
    fn commits_through_the_shim_are_seen_by_other_connections() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let w = open(&path);
        w.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .expect("create");
        let shim_reader = open(&path);
        let plain_reader = Connection::open(&path).expect("open with the default VFS");
        for i in 0..200 {
            w.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
                .expect("insert");
            for r in [&shim_reader, &plain_reader] {
                let n: i64 = r
                    .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
                    .expect("count");
                assert_eq!(n, i + 1);
            }
        }
    }

    #[test]
    fn every_commit_is_in_the_files_when_commit_returns() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let w = open(&path);
        // Checkpoint (and so restart the WAL from its start) every few commits.
        w.execute_batch(
            "PRAGMA wal_autocheckpoint = 20; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
        )
        .expect("create");
        let mut expected = Vec::new();
        for i in 0..120_i64 {
            let v = format!("row {i} {}", "x".repeat((i as usize * 37) % 3000));
            w.execute(
                "INSERT INTO t (id, v) VALUES (?1, ?2)",
                rusqlite::params![i, v],
            )
            .expect("insert");
            expected.push((i, v));
            if i % 7 == 0 {
                assert_eq!(
                    rows_after_a_crash(dir.path(), &path),
                    expected,
                    "after commit {i}"
                );
            }
        }
        assert_eq!(rows_after_a_crash(dir.path(), &path), expected);
    }

    #[test]
    fn large_and_rolled_back_transactions_leave_a_consistent_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let w = open(&path);
        // A tiny page cache makes SQLite spill pages of an open transaction into the WAL
        // and rewrite frames it already wrote, the writes that are not appends.
        w.execute_batch("PRAGMA cache_size = 10; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .expect("create");
        let big = |tag: &str, n: i64| {
            w.execute_batch("BEGIN").expect("begin");
            for i in 0..n {
                w.execute(
                    "INSERT OR REPLACE INTO t (id, v) VALUES (?1, ?2)",
                    rusqlite::params![i, format!("{tag} {i} {}", "y".repeat(400))],
                )
                .expect("insert");
            }
            for i in (0..n).step_by(3) {
                w.execute("UPDATE t SET v = v || '!' WHERE id = ?1", [i])
                    .expect("update");
            }
        };
        // More than the shim buffers (1 MiB) and than one write to the base VFS.
        big("kept", 4000);
        w.execute_batch("COMMIT").expect("commit");
        let kept = rows_after_a_crash(dir.path(), &path);
        assert_eq!(kept.len(), 4000);
        assert!(kept[3].1.starts_with("kept 3 ") && kept[3].1.ends_with('!'));
        big("dropped", 5000);
        w.execute_batch("ROLLBACK").expect("rollback");
        w.execute("UPDATE t SET v = 'last' WHERE id = 0", [])
            .expect("update");
        let mut now = kept.clone();
        now[0].1 = "last".into();
        assert_eq!(rows_after_a_crash(dir.path(), &path), now);
        drop(w);
        let plain = Connection::open(&path).expect("reopen");
        let n: i64 = plain
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 4000);
    }
}
