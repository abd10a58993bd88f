//! The parts of a message that say what to do about a result (docs/watcher-service.md,
//! "What a post tells"): the flaky tests, the new or again mark of each failed test, the
//! tests fixed since the last run (or that this is the first), the duration's change, the
//! `Last runs` marks, the footer's log path and the one mention. Untrusted pieces (spec
//! and test names, the log path) are cleaned and set in code spans like everything else;
//! our own words, marks and numbers are plain. Each part has its budget.

use super::{Content, Failure, FlakyTest, Mark, Message, clean, code_fit};
use crate::state::RunState;

/// Flaky tests a post names.
pub const FLAKY_NAMED: usize = 5;

const LOG_MAX: usize = 200;

/// How a result compares with the earlier finished runs of its build name (or group), as
/// [`crate::history`] worked it out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trend {
    /// One per failed test the message lists, in its order.
    pub marks: Vec<Mark>,
    /// Failed last time and pass now (a few), and how many in all.
    pub fixed: Vec<Failure>,
    pub fixed_total: usize,
    /// Failures of the last run its summary did not keep: not compared.
    pub not_compared: usize,
    /// There is no earlier finished run to compare with.
    pub first: bool,
    /// `+12% vs 2026-12-04`.
    pub duration_change: Option<String>,
    /// `✔✔✖✔ ▂▃▇▃`.
    pub last_runs: Option<String>,
}

/// The pieces of a message these parts need, cleaned and cut.
#[derive(Debug, Default)]
pub(super) struct Extra {
    flaky: Vec<String>,
    flaky_total: usize,
    marks: Vec<Mark>,
    fixed: Vec<String>,
    fixed_total: usize,
    not_compared: usize,
    first: Option<&'static str>,
    duration_change: Option<String>,
    last_runs: Option<String>,
    mention: Option<String>,
    log: Option<String>,
}

fn name(spec: &str, test: Option<&str>) -> String {
    match test {
        Some(t) => format!("{} › {}", clean(spec, 150), clean(t, 250)),
        None => clean(spec, 150),
    }
}

impl Extra {
    pub(super) fn new(m: &Message) -> Extra {
        let trend = m.trend.cloned().unwrap_or_default();
        let first = (m.trend.is_some() && trend.first).then_some(match m.group {
            Some(_) => "First finished run of this group: nothing to compare with yet.",
            None => "First finished run of this build name: nothing to compare with yet.",
        });
        Extra {
            flaky: m
                .flaky
                .iter()
                .take(FLAKY_NAMED)
                .map(|f: &FlakyTest| name(&f.spec, Some(&f.title)))
                .collect(),
            flaky_total: m.flaky_total.max(m.flaky.len()),
            marks: trend.marks,
            fixed: trend
                .fixed
                .iter()
                .map(|f| name(&f.spec, f.test.as_deref()))
                .collect(),
            fixed_total: trend.fixed_total.max(trend.fixed.len()),
            not_compared: trend.not_compared,
            first,
            duration_change: trend.duration_change.map(|d| clean(&d, 40)),
            last_runs: trend.last_runs.map(|l| clean(&l, 60)),
            // Validated at load: `@name` tokens within MENTION_MAX, which every format's
            // budget holds whole (a partial owner list would mislead).
            mention: m
                .mention
                .filter(|_| m.state == RunState::Failed)
                .map(str::to_string),
            log: m.log.map(|l| clean(l, LOG_MAX)).filter(|l| !l.is_empty()),
        }
    }
}

impl Content {
    /// `@qa-oncall ` before the top-level text of a FAILED post; nothing otherwise.
    pub(super) fn mention(&self) -> String {
        match &self.extra.mention {
            Some(m) => format!("{m} "),
            None => String::new(),
        }
    }

    /// ` · 2 flaky`, our own words.
    pub(super) fn flaky_note(&self) -> String {
        match self.extra.flaky_total {
            0 => String::new(),
            n => format!(" · {n} flaky"),
        }
    }

    /// The Duration field: `1h 42m, +12% vs 2026-12-04`.
    pub(super) fn duration_value(&self) -> Option<String> {
        let d = self.duration.as_ref()?;
        Some(match &self.extra.duration_change {
            Some(change) => format!("{d}, {change}"),
            None => d.clone(),
        })
    }

    pub(super) fn last_runs(&self) -> Option<String> {
        self.extra.last_runs.clone()
    }

    /// The Flaky field: the count, then the first few as code spans, then "and N more".
    pub(super) fn flaky_value(&self) -> Option<String> {
        let e = &self.extra;
        (e.flaky_total > 0).then(|| {
            let list = names(&e.flaky, e.flaky_total, self.b.names);
            format!("{}: {list}", e.flaky_total)
        })
    }

    /// `**new** ` or `**again ×3** ` before failed test `i`, when there is a history.
    pub(super) fn mark(&self, i: usize) -> String {
        match self.extra.marks.get(i) {
            Some(Mark::New) => "**new** ".to_string(),
            Some(Mark::Again(n)) => format!("**again ×{n}** "),
            Some(Mark::Unknown) => "**again?** ".to_string(),
            None => String::new(),
        }
    }

    /// After the failed tests: the tests fixed since the last run, or that this is the
    /// first one. What is known only: the last run's failures its summary did not keep
    /// are said apart, neither fixed nor not.
    pub(super) fn since_last(&self) -> Option<String> {
        let e = &self.extra;
        if let Some(first) = e.first {
            return Some(first.to_string());
        }
        let kept = crate::history::MAX_FAILURES_KEPT;
        let fixed = match e.fixed_total {
            0 => format!("none of the {kept} kept"),
            n => names(&e.fixed, n, self.b.names),
        };
        match e.not_compared {
            0 if e.fixed_total == 0 => None,
            0 => Some(format!("**Fixed since the last run:** {fixed}")),
            n => Some(format!(
                "**Fixed since the last run:** {fixed}; {} of the last run were not kept (the history keeps {kept}), so not compared",
                crate::history::plural_failures(n),
            )),
        }
    }

    /// ` · host:/tmp/B.log`, or nothing when the log is not known.
    pub(super) fn log_place(&self) -> Option<String> {
        self.extra
            .log
            .as_ref()
            .map(|log| format!("{}:{log}", self.host))
    }
}

/// `a`, `b`, and 3 more: code spans within `budget` JSON characters.
fn names(shown: &[String], total: usize, budget: usize) -> String {
    let reserve = 30; // ", and 1234567 more"
    let share = budget.saturating_sub(reserve) / shown.len().max(1);
    let spans: Vec<String> = shown
        .iter()
        .map(|n| code_fit(n, share.saturating_sub(2)))
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = spans.join(", ");
    let more = total.saturating_sub(spans.len());
    if more > 0 {
        out.push_str(if out.is_empty() { "" } else { ", " });
        out.push_str(&format!("and {more} more"));
    }
    out
}
