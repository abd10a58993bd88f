//! The table: one line per run, newest first by start. It fits the terminal: the width comes
//! from the terminal itself, then `COLUMNS` ([`crate::terminal`]); every column but REASON
//! is as wide as its longest cell, REASON gets all the width they leave, and no line is
//! wider than the terminal. Into a pipe (no width) every line is whole.

use crate::text::{clean, cut, display_width, pad, post_cell, unattended, unit_word};
use crate::view::RunView;
use std::fmt::Write as _;

/// REASON never gets narrower than this while the terminal has room for it.
const MIN_REASON_WIDTH: usize = 20;

const HEADER: [&str; 11] = [
    "BUILD", "ARCHIVED", "STATE", "POST", "GROUPS", "STARTED", "DURATION", "TESTS", "RUNNER",
    "WATCHER", "REASON",
];

/// The table of `runs` (in the given order). `width` is the terminal's, when there is one.
pub fn table(runs: &[RunView], with_archive: bool, width: Option<usize>) -> String {
    let mut rows: Vec<Vec<String>> = vec![HEADER.map(String::from).to_vec()];
    rows.extend(runs.iter().map(row));
    if !with_archive {
        for row in &mut rows {
            row.remove(1);
        }
    }
    let last = rows[0].len() - 1;
    // In terminal columns, not characters: a CJK spec or build name takes two per
    // character, and a line must still fit.
    let widths: Vec<usize> = (0..last)
        .map(|c| rows.iter().map(|r| display_width(&r[c])).max().unwrap_or(0))
        .collect();
    let used: usize = widths.iter().map(|w| w + 2).sum();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(line, "{}  ", pad(cell, *w));
        }
        match width {
            Some(width) => {
                let reason = width.saturating_sub(used).max(MIN_REASON_WIDTH);
                line.push_str(&cut(&row[last], reason));
                // Other columns wider than the terminal: the line is cut, never wrapped.
                line = cut(line.trim_end(), width);
            }
            None => line.push_str(&row[last]),
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn row(run: &RunView) -> Vec<String> {
    vec![
        clean(&run.build_name),
        run.archive.clone().unwrap_or_else(|| "-".into()),
        match (run.state, run.errors.is_empty()) {
            (Some(s), _) => s.to_string(),
            (None, true) => "-".into(),
            (None, false) => "ERROR".into(),
        },
        post_cell(run),
        groups(run),
        // The year is left out: `12-05 06:57` (local time).
        run.requested_at
            .map_or("-".into(), |t| t.local_minutes()[5..].to_string()),
        duration(run),
        tests(run),
        run.runner_unit.as_ref().map_or("-".into(), unit_word),
        run.watcher_unit.as_ref().map_or("-".into(), unit_word),
        row_reason(run),
    ]
}

/// `posted/seen` sub-runs, with `+` while the parent still runs (more may come).
fn groups(run: &RunView) -> String {
    let Some(g) = &run.groups else {
        return "-".into();
    };
    let more = if run.is_final == Some(true) { "" } else { "+" };
    format!("{}/{}{more}", g.posted, g.total)
}

/// How long the run took, or has been running (its STATE says which): `45s`, `12m`,
/// `1h 42m`, `2d 04h` — narrow, so REASON keeps the width.
fn duration(run: &RunView) -> String {
    let Some(s) = run.duration_seconds else {
        return "-".into();
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `passed/failed/flaky`.
fn tests(run: &RunView) -> String {
    match &run.counts {
        Some(c) => format!("{}/{}/{}", c.passed, c.failed, run.flaky.unwrap_or(0)),
        None => "-".into(),
    }
}

/// The reason, or for a run whose files could not be read, the first such error (the
/// cause first: the BUILD column already says which directory). A run that is not final
/// while its watcher unit is known to be down says so first: nobody is following it.
fn row_reason(run: &RunView) -> String {
    match run.errors.first() {
        Some(e) => {
            let file = e.path.strip_prefix(&run.dir).unwrap_or(&e.path);
            let error = e
                .error
                .rsplit_once(" (")
                .map_or(e.error.as_str(), |(w, _)| w);
            match file.as_os_str().is_empty() {
                true => clean(error),
                false => clean(&format!("unreadable {}: {error}", file.display())),
            }
        }
        None => {
            let reason = run.reason.as_deref().unwrap_or("");
            match unattended(run) {
                Some(word) => clean(&format!("watcher {word}, run not final: {reason}")),
                None => clean(reason),
            }
        }
    }
}
