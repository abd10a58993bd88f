//! The history section of the detail view (`atvm-run-status --build-name B`): the build's
//! earlier runs, newest first by start (the archive's sequence, which a clock step cannot
//! reorder), as a small table — run, started, state, tests, duration, post. The same
//! history the posts' `Last runs` field shows (docs/watcher-service.md). Each row comes
//! from the run's `summary.json` and, while the archive is still whole, its `state.json`;
//! a run pruned to its summary shows what the summary keeps.

use crate::text::{display_width, pad};
use crate::view::HistoryRow;
use atvm_common::history::{RunSummary, SUMMARY_FILE};
use atvm_common::state::{Request, State};
use atvm_common::{BuildName, Paths, fsutil, state};
use std::fmt::Write;

/// Earlier runs a detail view lists.
pub const ROWS: usize = 10;

/// The build's earlier runs, newest first, at most [`ROWS`].
pub fn rows(paths: &Paths, build: &BuildName) -> Vec<HistoryRow> {
    let base = paths.archive_root().join(build.as_str());
    let mut rows = Vec::new();
    for path in state::archived_summaries(&base).into_iter().rev() {
        if rows.len() == ROWS {
            break;
        }
        let whole = path.file_name().is_some_and(|n| n == SUMMARY_FILE);
        let (archive, dir) = match (whole, path.parent()) {
            (true, Some(dir)) => (name(dir), Some(dir)),
            _ => (
                path.file_stem().map(|s| s.to_string_lossy().into_owned()),
                None,
            ),
        };
        let summary: Option<RunSummary> = fsutil::read_json(&path).ok().flatten();
        let state: Option<State> = read(dir, "state.json");
        // A run that ended without a result to compare (cancelled, terminated) has a
        // summary without its start, or none: its request says when it started.
        let request: Option<Request> = read(dir, "request.json");
        if summary.is_none() && state.is_none() {
            continue;
        }
        let outcome = summary.as_ref().and_then(|s| s.run.as_ref());
        rows.push(HistoryRow {
            archive,
            run_id: summary
                .as_ref()
                .map(|s| s.run_id.clone())
                .or_else(|| state.as_ref().map(|s| s.run_id.clone())),
            started_at: summary
                .as_ref()
                .and_then(|s| s.started_at)
                .or(request.map(|q| q.requested_at)),
            state: state.as_ref().map(|s| s.state).or(outcome.map(|o| o.state)),
            counts: state.as_ref().and_then(|s| s.counts),
            failed_tests: outcome.map(|o| o.failed_total),
            duration_seconds: outcome.and_then(|o| o.duration_ms).map(|ms| ms / 1000),
            post: state.as_ref().map(|s| s.post.status),
        });
    }
    rows
}

/// `file` of a whole archive, if it reads (history is a help: what does not read is left
/// out).
fn read<T: serde::de::DeserializeOwned>(dir: Option<&std::path::Path>, file: &str) -> Option<T> {
    fsutil::read_json(&dir?.join(file)).ok().flatten()
}

fn name(dir: &std::path::Path) -> Option<String> {
    dir.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// The table, under a heading; nothing when there is no earlier run.
pub fn table(rows: &[HistoryRow], cell: impl Fn(&HistoryRow) -> [String; 6]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from("  history (earlier runs, newest first)\n");
    let head = ["RUN", "STARTED", "STATE", "TESTS", "DURATION", "POST"].map(String::from);
    let cells: Vec<[String; 6]> = std::iter::once(head).chain(rows.iter().map(cell)).collect();
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            cells
                .iter()
                .map(|c| display_width(&c[i]))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &cells {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| pad(c, *w)).collect();
        let _ = writeln!(out, "    {}", line.join("  ").trim_end());
    }
    out
}
