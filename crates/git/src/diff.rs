//! What an attempt changed: its commit, the figures against the base, the binary-safe
//! patch and the (possibly cut) diff a finish report carries.

use crate::error::{Result, WorkspaceError, io_err};
use crate::runner::{IDENTITY, git, git_command, git_env, git_status, set_branch, wait_git};
use crate::worktree::worktree_env;
use std::path::Path;
use std::process::Stdio;

/// What an attempt changed, relative to its base.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The commit holding the attempt's changes (the base when nothing changed).
    pub commit: String,
    /// Files changed.
    pub files_changed: u32,
    /// Lines added.
    pub lines_added: u32,
    /// Lines deleted.
    pub lines_deleted: u32,
}

/// Commits everything in the worktree on `branch` (when anything changed), computes the
/// figures against `base_commit` and writes the binary-safe patch to `patch_path`.
pub async fn commit_changes(
    cache: &Path,
    worktree: &Path,
    branch: &str,
    base_commit: &str,
    message: &str,
    patch_path: &Path,
) -> Result<Changes> {
    let wt = worktree_env(cache, worktree).await?;
    let wt: Vec<(&str, &str)> = wt.iter().map(|(k, v)| (*k, v.as_str())).collect();
    git_env(worktree, ["add", "-A"], &wt).await?;
    let staged = git_status(worktree, ["diff", "--cached", "--quiet"], &wt).await?;
    match staged.code {
        Some(0) => {}
        Some(1) => {
            git_env(
                worktree,
                [
                    "-c",
                    "user.name=gantry",
                    "-c",
                    "user.email=gantry@localhost",
                    "-c",
                    "commit.gpgsign=false",
                    "commit",
                    "--quiet",
                    "--no-verify",
                    "--no-gpg-sign",
                    "-m",
                    message,
                ],
                &[IDENTITY, &wt].concat(),
            )
            .await?;
        }
        code => {
            return Err(WorkspaceError::Git {
                args: "diff --cached --quiet".to_string(),
                dir: worktree.to_path_buf(),
                code,
                stderr: staged.stderr,
            });
        }
    }
    let commit = git_env(worktree, ["rev-parse", "--verify", "HEAD^{commit}"], &wt)
        .await?
        .trim()
        .to_string();
    // The process may have moved HEAD off the attempt branch (checked out another
    // branch, detached); the attempt branch must still name what the attempt produced.
    set_branch(cache, branch, &commit).await?;
    // The figures and the patch are two readers of the same objects: both at once.
    let (numstat, patch) = tokio::join!(
        git(
            cache,
            [
                "diff",
                "--numstat",
                "--no-renames",
                "--no-ext-diff",
                "--no-textconv",
                base_commit,
                &commit,
            ],
        ),
        write_patch(cache, base_commit, &commit, patch_path),
    );
    let numstat = numstat?;
    patch?;
    let mut changes = Changes {
        commit: commit.clone(),
        ..Changes::default()
    };
    for line in numstat.lines().filter(|l| !l.is_empty()) {
        let mut cols = line.splitn(3, '\t');
        // Binary files show `-` for both counts: they count as changed, with no lines.
        let added = cols.next().and_then(|c| c.parse::<u32>().ok()).unwrap_or(0);
        let deleted = cols.next().and_then(|c| c.parse::<u32>().ok()).unwrap_or(0);
        changes.files_changed += 1;
        changes.lines_added = changes.lines_added.saturating_add(added);
        changes.lines_deleted = changes.lines_deleted.saturating_add(deleted);
    }
    Ok(changes)
}

/// Writes `git diff --binary base commit` to `path`, streaming (patches can be large).
async fn write_patch(cache: &Path, base: &str, commit: &str, path: &Path) -> Result<()> {
    let file = std::fs::File::create(path).map_err(io_err("cannot create", path))?;
    let args = [
        "diff",
        "--binary",
        "--no-renames",
        "--no-ext-diff",
        "--no-textconv",
        "--no-color",
        base,
        commit,
    ];
    let (mut cmd, shown) = git_command(cache, args);
    // `output()` would replace the file by a pipe: spawn, then collect stderr only.
    let child = cmd
        .stdout(Stdio::from(file))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| WorkspaceError::Spawn {
            args: shown.clone(),
            dir: cache.to_path_buf(),
            source,
        })?;
    wait_git(child, shown, cache).await
}

/// Room kept under the limit for the line that marks a cut diff.
const CUT_MARKER_ROOM: usize = 256;

/// The diff a finish report carries: the patch at `path` as text (bytes that are not
/// UTF-8 are replaced), at most `max` bytes. A longer patch is cut at the end of a line
/// and followed by a marker line that says so and gives the patch's full size.
pub async fn reported_diff(path: &Path, max: usize) -> Result<String> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(io_err("cannot open", path))?;
    let total = file
        .metadata()
        .await
        .map_err(io_err("cannot read the size of", path))?
        .len();
    let mut bytes = Vec::new();
    file.take(u64::try_from(max).unwrap_or(u64::MAX))
        .read_to_end(&mut bytes)
        .await
        .map_err(io_err("cannot read", path))?;
    Ok(cut_diff(&bytes, total.max(bytes.len() as u64), max))
}

/// `bytes`, the first bytes of a patch of `total` bytes, as text of at most `max`
/// bytes: whole when it fits, else cut at a line end with a marker line appended.
fn cut_diff(bytes: &[u8], total: u64, max: usize) -> String {
    let whole = total <= bytes.len() as u64;
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    // Replacement characters take three bytes where the bad byte took one, so the text
    // can outgrow the bytes it came from: measured after the conversion.
    if whole && text.len() <= max {
        return text;
    }
    let room = max.saturating_sub(CUT_MARKER_ROOM);
    let mut end = room.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // Cut after the last complete line; a single line longer than the room is cut
    // where the room ends.
    if let Some(nl) = text.as_bytes()[..end].iter().rposition(|b| *b == b'\n') {
        end = nl + 1;
    }
    text.truncate(end);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "[gantry: diff cut here: the first {end} bytes of {total} are shown; the whole \
         patch is diff.patch in the run's artifacts on the factory that ran it]\n"
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue4_a_diff_that_fits_is_reported_whole_and_lossy() {
        assert_eq!(cut_diff(b"+a\n-b\n", 6, 1000), "+a\n-b\n");
        assert_eq!(cut_diff(b"", 0, 1000), "");
        let text = cut_diff(b"+caf\xe9\n", 6, 1000);
        assert_eq!(text, "+caf\u{fffd}\n");
    }

    #[test]
    fn issue4_a_long_diff_is_cut_at_a_line_end_and_marked() {
        let line = "+0123456789abcdef\n";
        let patch = line.repeat(100);
        let max = CUT_MARKER_ROOM + 50;
        let text = cut_diff(patch.as_bytes(), patch.len() as u64, max);
        assert!(text.len() <= max, "{} > {max}", text.len());
        let (kept, marker) = text.split_at(text.find("[gantry:").expect("a marker"));
        assert_eq!(kept, line.repeat(50 / line.len()));
        assert!(
            marker.contains("diff cut") && marker.contains(&patch.len().to_string()),
            "{marker}"
        );
        assert!(marker.ends_with('\n'));
        // Only the first bytes were read: the size still comes from the file.
        let text = cut_diff(&patch.as_bytes()[..max], 1 << 30, max);
        assert!(text.contains(&(1u64 << 30).to_string()), "{text}");
    }

    #[test]
    fn issue4_a_cut_never_outgrows_the_limit_with_replaced_bytes_or_no_line_end() {
        let max = CUT_MARKER_ROOM + 64;
        // Every invalid byte becomes three bytes of text.
        let bad = vec![0xffu8; max];
        let text = cut_diff(&bad, bad.len() as u64, max);
        assert!(text.len() <= max, "{} > {max}", text.len());
        assert!(
            text.starts_with('\u{fffd}') && text.contains("diff cut"),
            "{text}"
        );
        let one_line = "x".repeat(max * 2);
        let text = cut_diff(one_line.as_bytes(), one_line.len() as u64, max);
        assert!(text.len() <= max, "{} > {max}", text.len());
        assert!(
            text.starts_with("xxx") && text.contains("diff cut"),
            "{text}"
        );
    }
}
