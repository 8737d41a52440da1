//! `gantry bench secrets`: the secret scanner's throughput on diff-shaped text.

use crate::error::CliError;
use crate::output;

/// Timed runs of the scan and of the redaction; the best of each is reported.
const RUNS: usize = 3;

/// `gantry bench secrets --mb N`: generates about `mb` MB of unified diff with planted
/// fake credentials, times `scan_diff` and `redact` over it and prints MB/s; the last
/// line is `secrets_mb_per_s=<x>`. Fails if a planted credential is not found.
pub fn run(mb: usize) -> Result<(), CliError> {
    // The figure depends on the build profile, so the output names it.
    let profile = if cfg!(debug_assertions) {
        "debug build (dependencies at opt-level 1, Gantry's crates unoptimized)"
    } else {
        "release build"
    };
    output::line(format!(
        "bench secrets: {mb} MB of generated unified diff, built-in rules, best of {RUNS} runs, {profile}"
    ));
    let report = gantry_secrets::bench::run(mb, RUNS);
    if report.found < report.planted {
        return Err(CliError::local(format!(
            "the scanner found {} of the {} credentials planted in the benchmark's text",
            report.found, report.planted
        )));
    }
    output::line(report.to_string());
    Ok(())
}
