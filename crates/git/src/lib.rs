//! Gantry's only way to git (the CLI, never libgit2): the hardened runner, the bare cache
//! of each source repo, one worktree per attempt (with the agent's own repository in
//! it), the attempt's commit and figures, checkpoints, publication, delivery to the
//! source repo, and pruning. The factory and the server both use it; nothing else in
//! Gantry spawns git.
//!
//! Layout under the data dir:
//! ```text
//! repos/<cache_name(repo)>   bare cache (clone --bare [--local]); attempt branches live here
//! work/<job>-a<attempt>/     worktree of one attempt, removed when the run ends
//! ```
//! The cache never holds the source repo's `gantry` branch or its delivered
//! `gantry/<job>` branches: they would collide with the attempt branches
//! `gantry/<job>/a<n>` (a ref cannot be both a file and a directory), so they are left
//! out of every fetch and deleted after a clone.
//!
//! Every git call runs with hooks disabled, automatic gc off, no terminal prompts and
//! without the caller's `GIT_DIR`-style variables, so neither the user's configuration
//! nor a surrounding git process changes what happens.
//!
//! One module per job: `runner` (the hardened git process), `cache` (the bare caches),
//! `worktree` (attempt worktrees and the agent's own repository), `diff` (the attempt's
//! commit, figures and patch), `checkpoint`, `refs` (pushes, fetches and ref checks
//! against the source), `publish`, `deliver` and `prune`; `check` and `source_state`
//! check a source before a submit and remember what a cache last fetched.

mod cache;
mod check;
mod checkpoint;
mod deliver;
mod diff;
mod error;
mod merge;
mod prune;
mod publish;
mod refs;
mod runner;
mod source_state;
mod worktree;

pub use cache::{CacheUsage, cache_dir, cache_usage};
pub use check::{SourceCheck, SourceError, SourceField, check_source};
pub use checkpoint::{Wip, checkpoint, fetch_checkpoint, push_checkpoint, tree_of, wip_source_ref};
pub use deliver::{deliver, deliver_published};
pub use diff::{Changes, commit_changes, reported_diff};
pub use error::WorkspaceError;
pub use merge::{MergeCheck, export_tree, file_at, merge_check, rebase_result};
pub use prune::{PruneReport, prune};
pub use publish::{publish_result, remove_published, remove_result_ref};
pub use refs::{push_to_source, remove_source_ref};
pub use runner::{absolute, run};
pub use worktree::{LiveGuard, Prepared, fetch_base, prepare, remove_worktree};
