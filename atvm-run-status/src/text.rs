//! The detail view (everything about one run) and the cells both views share. Text that
//! comes from logs (reasons, errors) has its control characters replaced, so a line stays
//! one line and nothing in a state file can drive the operator's terminal. The table is in
//! [`crate::table`].

use crate::view::{Detail, HistoryRow, MarkerView, PostView, RunView, SubRunView, UnitView};
use atvm_common::Timestamp;
use atvm_common::state::{Counts, PostStatus};
use atvm_common::systemctl::Activity;
use atvm_common::time::human_duration;
use std::fmt::Write as _;
use std::time::Duration;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// The watcher unit's word (`inactive`, `failed`) when the run is not final and the unit
/// is known not to be running.
pub(crate) fn unattended(run: &RunView) -> Option<&str> {
    let word = run.watcher_unit.as_ref()?.active.as_deref()?;
    (run.is_final == Some(false) && !Activity::word_is_running(word)).then_some(word)
}

/// Everything about one run, label per line.
pub fn detail(run: &RunView, now: Timestamp) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "  {label:<15}{}", clean(&value));
    };
    let title = match &run.archive {
        Some(a) => format!("{} (archived {a})", run.build_name),
        None => run.build_name.clone(),
    };
    let state = match (run.state, run.is_final) {
        (Some(s), Some(true)) => format!("{s} (final)"),
        (Some(s), _) => format!("{s} (not final)"),
        (None, _) if !run.errors.is_empty() => "- (cannot be read: see errors below)".into(),
        (None, _) => "- (no state.json yet)".into(),
    };
    line("state", state);
    line("reason", run.reason.clone().unwrap_or_else(|| "-".into()));
    line("run id", opt(run.run_id.as_deref()));
    line("requested", when(run.requested_at, now));
    line("updated", when(run.updated_at, now));
    line("tests", tests(run.counts.as_ref(), run.flaky));
    let d = run.detail.as_ref();
    line("post", post_line(run));
    line("last error", opt(d.and_then(|d| d.last_error.as_deref())));
    if let Some(how) = resend_line(run) {
        line("resend", how);
    }
    line("watcher unit", unit(run.watcher_unit.as_ref()));
    if let Some(word) = unattended(run) {
        let name = run.watcher_unit.as_ref().map_or("", |u| u.name.as_str());
        let why = d
            .and_then(|d| d.watcher_error.as_deref())
            .map(|e| format!(" (it stopped: {e})"))
            .unwrap_or_default();
        line(
            "attention",
            format!(
                "the run is not final but its watcher is {word}{why}: see journalctl -u {name}; restart it with systemctl start {name}"
            ),
        );
    }
    let runner_unreadable = run
        .errors
        .iter()
        .any(|e| e.path.ends_with("runner/status.json"));
    if let Some(d) = d {
        runner_lines(
            d,
            run.runner_unit.as_ref(),
            now,
            runner_unreadable,
            &mut line,
        );
    }
    line("state dir", run.dir.display().to_string());
    let mut text = format!("{}\n{out}", clean(&title));
    if let Some(request) = d.and_then(|d| d.request.as_ref()) {
        text.push_str("  request\n");
        let options = [
            ("template", request.template.as_deref()),
            ("template cmd", request.template_command.as_deref()),
            ("runner cmd", request.runner_command.as_deref()),
            ("config family", request.config_family.as_deref()),
            ("config file", request.config_file.as_deref()),
            ("migration", request.migration_style.as_deref()),
            ("integration", request.integration_plugin.as_deref()),
            ("scope", request.scope_description.as_deref()),
            (
                "categorize",
                Some(if request.categorize { "yes" } else { "no" }),
            ),
        ];
        for (label, value) in options {
            let _ = writeln!(text, "    {label:<15}{}", clean(value.unwrap_or("-")));
        }
    }
    if let Some(subruns) = d.and_then(|d| d.subruns.as_deref()) {
        text.push_str(&subrun_table(subruns));
    }
    if let Some(rows) = d.and_then(|d| d.history.as_deref()) {
        text.push_str(&crate::history::table(rows, |h| history_cells(h, now)));
    }
    if !run.errors.is_empty() {
        text.push_str("  errors\n");
        for e in &run.errors {
            let _ = writeln!(text, "    {}", clean(&e.error));
        }
    }
    text
}

/// The cells of one history row: run, started, state, tests, duration, post.
fn history_cells(h: &HistoryRow, now: Timestamp) -> [String; 6] {
    let tests = match (&h.counts, h.failed_tests) {
        (Some(c), _) => counts(c),
        (None, Some(n)) => format!("{n} failed"),
        (None, None) => "-".into(),
    };
    [
        clean(&opt(h.archive.as_deref())),
        when(h.started_at, now),
        h.state.map_or("-".into(), |s| s.to_string()),
        tests,
        h.duration_seconds
            .map_or("-".into(), |s| human_duration(Duration::from_secs(s))),
        h.post.map_or("-".into(), |p| {
            serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        }),
    ]
}

fn runner_lines(
    d: &Detail,
    runner_unit: Option<&UnitView>,
    now: Timestamp,
    unreadable: bool,
    line: &mut impl FnMut(&str, String),
) {
    line("runner unit", unit(runner_unit));
    let none = match unreadable {
        true => "- (runner/status.json cannot be read: see errors below)",
        false => "- (no runner/status.json)",
    };
    let runner = d.runner.as_ref().map_or(none.into(), |r| {
        let mut s = format!(
            "pid {} (command {}), started {}",
            r.pid,
            r.child_pid,
            when(Some(r.started_at), now)
        );
        match (r.exited_at, r.exit_code, r.signal) {
            (Some(at), Some(code), _) => s.push_str(&format!(", exited {at} with code {code}")),
            (Some(at), None, Some(sig)) => s.push_str(&format!(", killed {at} by signal {sig}")),
            (Some(at), None, None) => s.push_str(&format!(", exited {at}")),
            (None, ..) => s.push_str(", no exit recorded"),
        }
        if r.cancel_requested {
            s.push_str(", cancel requested");
        }
        s
    });
    line("runner", runner);
    line("run log", d.run_log.display().to_string());
    line("launch log", d.launch_log.display().to_string());
    line("progress", opt(d.progress.as_deref()));
    line("run url", opt(d.run_url.as_deref()));
    line("last activity", when(d.last_activity, now));
    line("cancelled", marker(d.cancelled.as_ref()));
    line("posted", marker(d.posted.as_ref()));
}

fn subrun_table(subruns: &[SubRunView]) -> String {
    let mut rows =
        vec![["KEY", "GROUP", "STATE", "FINAL", "POST", "TESTS", "REASON"].map(String::from)];
    for s in subruns {
        rows.push([
            clean(&s.key),
            clean(s.group.as_deref().unwrap_or("-")),
            s.state.to_string(),
            yes_no(s.is_final),
            post(&s.post),
            tests(s.counts.as_ref(), s.flaky),
            clean(s.reason.as_deref().unwrap_or("-")),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| display_width(&r[c])).max().unwrap_or(0))
        .collect();
    let mut out = format!("  sub-runs ({})\n", subruns.len());
    for row in rows {
        let mut line = String::from("    ");
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(line, "{}  ", pad(cell, *w));
        }
        line.push_str(&row[6]);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The run's post status (a post failed for good with its HTTP status: `failed (HTTP
/// 404)`); for a categorized run that posts per sub-run, what its sub-runs' posts came to
/// (`2 posted`, `1 posted, 1 failed`), so a failed group post shows here.
pub(crate) fn post_cell(run: &RunView) -> String {
    let own = run.post.as_ref().map(post_word);
    match (&run.groups, own) {
        (Some(g), None | Some("none")) if g.posted + g.post_failed > 0 => match g.post_failed {
            0 => format!("{} posted", g.posted),
            f => format!("{} posted, {f} failed", g.posted),
        },
        (_, Some("failed")) => match run.post.as_ref().and_then(PostView::http_status) {
            Some(http) => format!("failed ({})", &http[5..]),
            None => "failed".into(),
        },
        (_, own) => own.unwrap_or("-").to_string(),
    }
}

/// The detail view's post line: the run's own post, and for a categorized run (which posts
/// per group, not itself) what its groups' posts came to.
fn post_line(run: &RunView) -> String {
    let own = run.post.as_ref().map_or("-".into(), post);
    match (&run.groups, run.post.as_ref().map(|p| p.status)) {
        (Some(g), None | Some(PostStatus::None)) => format!(
            "{own} (the run posts per group: {} of {} posted, {} failed; see sub-runs)",
            g.posted, g.total, g.post_failed
        ),
        _ => own,
    }
}

/// How to send again what failed for good: the run's post, or each group's.
fn resend_line(run: &RunView) -> Option<String> {
    let own = run
        .post
        .as_ref()
        .is_some_and(|p| p.status == PostStatus::Failed);
    let groups: Vec<&str> = run
        .detail
        .as_ref()
        .and_then(|d| d.subruns.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|s| s.post.status == PostStatus::Failed)
        .map(|s| s.key.as_str())
        .collect();
    if run.archive.is_some() || (!own && groups.is_empty()) {
        return None;
    }
    let command = format!("atvm-run-watcher --build-name {} --resend", run.build_name);
    Some(match groups.as_slice() {
        [] => format!("the post failed for good; once Mattermost is fixed: {command}"),
        keys => format!(
            "group posts failed for good ({}); once Mattermost is fixed: {command} (or --group KEY for one)",
            keys.join(", ")
        ),
    })
}

pub(crate) fn post_word(p: &PostView) -> &'static str {
    match p.status {
        PostStatus::None => "none",
        PostStatus::Pending => "pending",
        PostStatus::Posted => "posted",
        PostStatus::Failed => "failed",
        PostStatus::Suppressed => "suppressed",
    }
}

pub(crate) fn post(p: &PostView) -> String {
    let mut s = post_word(p).to_string();
    if p.attempts > 0 {
        let plural = if p.attempts == 1 { "" } else { "s" };
        s.push_str(&format!(", {} attempt{plural}", p.attempts));
    }
    if let Some(at) = p.posted_at {
        s.push_str(&format!(", posted {at}"));
    }
    if let Some(at) = p.resent_at {
        s.push_str(&format!(" (re-sent with --resend {at})"));
    }
    s
}

/// The counts, with the flaky tests the watcher recorded when it did.
fn tests(c: Option<&Counts>, flaky: Option<u64>) -> String {
    match (c, flaky) {
        (None, _) => "-".into(),
        (Some(c), None) => counts(c),
        (Some(c), Some(f)) => format!("{} · flaky {f}", counts(c)),
    }
}

pub(crate) fn counts(c: &Counts) -> String {
    format!(
        "{} · passed {} · failed {} · pending {} · skipped {}",
        c.tests, c.passed, c.failed, c.pending, c.skipped
    )
}

pub(crate) fn unit(u: Option<&UnitView>) -> String {
    match u {
        None => "-".into(),
        Some(u) => match (&u.active, &u.error) {
            (Some(word), _) => format!("{} {word}", u.name),
            (None, Some(e)) => format!("{} ? ({e})", u.name),
            (None, None) => format!("{} ?", u.name),
        },
    }
}

pub(crate) fn unit_word(u: &UnitView) -> String {
    u.active.as_deref().map_or("?".into(), clean)
}

fn marker(m: Option<&MarkerView>) -> String {
    match m {
        None => "-".into(),
        Some(m) => format!(
            "{} (run {})",
            m.at.map_or("?".into(), |t| t.to_string()),
            opt(m.run_id.as_deref())
        ),
    }
}

fn when(t: Option<Timestamp>, now: Timestamp) -> String {
    t.map_or("-".into(), |t| format!("{t} ({} ago)", age(t.until(now))))
}

/// `45s`, `12m 30s`, `3h 05m`, `2d 04h`: short enough for a table column.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    if s < 86_400 {
        human_duration(d)
    } else {
        format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

pub(crate) fn yes_no(b: Option<bool>) -> String {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
    .into()
}

pub(crate) fn opt(s: Option<&str>) -> String {
    s.unwrap_or("-").to_string()
}

/// One line, no terminal control sequences.
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if is_unsafe(c) { ' ' } else { c })
        .collect()
}

/// Control characters, and the invisible ones that reorder or hide what follows them on a
/// terminal (bidirectional overrides and isolates, zero-width and BOM).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// How many terminal columns `s` takes (a CJK character two, a combining mark none).
pub(crate) fn display_width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

/// `s` padded with spaces to `columns` columns (`format!`'s padding counts characters).
pub(crate) fn pad(s: &str, columns: usize) -> String {
    format!(
        "{s}{}",
        " ".repeat(columns.saturating_sub(display_width(s)))
    )
}

/// `s` cut to `max` columns, the cut marked with `…` (never half a wide character).
pub(crate) fn cut(s: &str, max: usize) -> String {
    if display_width(s) <= max {
        return s.to_string();
    }
    let room = max.saturating_sub(1);
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w > room {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_stay_short() {
        assert_eq!(age(Duration::from_secs(45)), "45s");
        assert_eq!(age(Duration::from_secs(3 * 3600 + 300)), "3h 05m");
        assert_eq!(age(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2d 04h");
    }

    #[test]
    fn reasons_are_cut_and_cleaned() {
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
        // Wide characters take two columns; none is cut in half.
        assert_eq!(cut("登录测试.cy.js", 6), "登录…");
        assert_eq!(display_width(&cut("登录测试.cy.js", 6)), 5);
        assert_eq!(pad("登录", 6), "登录  ");
        assert_eq!(clean("a\nb\x1b[31mc"), "a b [31mc");
    }
}
