//! The reporter directory: which reports are this run's (written after its runner started,
//! for a spec its log names), their counts while the log has no summary, and the failed
//! tests a message lists.

use super::{FULL_REPORTER_SCAN, Observer};
use crate::ctx::Ctx;
use crate::persist::Checkpoint;
use atvm_common::cypress::{RunBlock, SpecRow};
use atvm_common::reporter::{self, ReporterDir, SpecSet};
use atvm_common::state::{Counts, RunnerStatus};
use atvm_common::{Timestamp, history, logging, mattermost};
use std::time::{Instant, SystemTime};

impl Observer {
    pub(super) fn scan_reporter(&mut self, ctx: &Ctx) {
        // Reports count from the run's first runner's start, once there is a runner.
        let Some(since) = self.reports_since.or(self.runner_started_at) else {
            return;
        };
        let stale = &self.stale_reports;
        let reporter = self.reporter.get_or_insert_with(|| {
            ReporterDir::new(&ctx.paths.reporter_dir, since.to_system()).without(stale)
        });
        let full = self
            .last_full_scan
            .is_none_or(|t| t.elapsed() >= FULL_REPORTER_SCAN);
        if full {
            self.last_full_scan = Some(Instant::now());
        }
        for warning in reporter.scan(full).warnings {
            logging::warn(warning);
        }
    }

    /// Counts from this run's reports, for a run whose log has no summary yet.
    pub fn reporter_counts(&self) -> Option<Counts> {
        self.reporter.as_ref().and_then(|r| r.counts(&self.specs.1))
    }

    /// The specs the log names change only when it grows: recompute them then.
    pub(super) fn refresh_specs(&mut self, cp: &Checkpoint) {
        let lines = cp.parser.summary().lines;
        if self.specs.0 != lines || lines == 0 {
            self.specs = (lines, run_specs(cp));
        }
    }

    /// The runner's timeline, read again when there may be more in it: the runner writes an
    /// entry before the log line it describes, so after new lines were read, and once
    /// when the runner has ended. One that cannot be read is said and left empty: the
    /// groups' posts then name only what the log says.
    pub(super) fn read_timeline(
        &mut self,
        ctx: &Ctx,
        cp: &Checkpoint,
        status: Option<&RunnerStatus>,
    ) {
        let Some(status) = status else {
            return;
        };
        let key = (cp.parser.summary().lines, status.has_exited());
        if self.timeline_read_at == Some(key) {
            return;
        }
        self.timeline_read_at = Some(key);
        if let Err(e) = self
            .timeline
            .read_more(&ctx.sd.runner_timeline(), &ctx.request.run_id)
        {
            logging::warn(format!("{e}; group posts name only what the log says"));
        }
    }

    /// The window of report times that belong to sub-run `i`, and when it ended. For a run
    /// started through the runner both come from the runner's timeline: a group's reports
    /// are the ones written after the group before it ended (its summary was printed, or it
    /// was cut off by this one's `(Run Starting)`) — or after the runner started — and up
    /// to its own end (its summary, the next block's start, or the runner's exit). The
    /// start is the end of the block before rather than this block's own `(Run Starting)`,
    /// which the runner may see a moment after Cypress printed it; between the two Cypress
    /// writes nothing. For a hand-started run, the watcher's own observation of the blocks
    /// finishing (a documented limit: it depends on when the watcher looked). `None` when the
    /// timeline lacks a block it needs (it could not be written): the group's reports cannot
    /// be told apart, and its post names only what its part of the log says.
    pub fn group_window(
        &self,
        cp: &Checkpoint,
        i: usize,
    ) -> Option<(Timestamp, Option<Timestamp>)> {
        if !self.managed {
            let seen = |k: usize| cp.finished_seen.get(k).copied().flatten();
            let from = i.checked_sub(1).and_then(seen).or(self.runner_started_at);
            return Some((from.unwrap_or_default(), seen(i)));
        }
        let from = match i.checked_sub(1) {
            None => self.reports_since.or(self.runner_started_at)?,
            Some(before) => self.block_end(cp, before)??,
        };
        Some((from, self.block_end(cp, i)?))
    }

    /// When block `k` ended, as the runner recorded it: `None` when the timeline lacks it,
    /// `Some(None)` while it runs.
    fn block_end(&self, cp: &Checkpoint, k: usize) -> Option<Option<Timestamp>> {
        let finished = cp
            .parser
            .summary()
            .runs
            .get(k)
            .is_some_and(|b| b.is_finished());
        if finished {
            return Some(Some(self.timeline.finished(k)?.wall));
        }
        Some(
            self.timeline
                .started(k + 1)
                .map(|m| m.wall)
                .or(self.runner_exited_at),
        )
    }

    /// When sub-run `i` started: its `(Run Starting)` as the runner saw it, else the start
    /// of its report window.
    pub fn group_started(&self, cp: &Checkpoint, i: usize) -> Option<Timestamp> {
        self.timeline
            .started(i)
            .map(|m| m.wall)
            .or_else(|| self.group_window(cp, i).map(|(from, _)| from))
    }

    /// Of the tests `asked` names (spec as the report names it, full title), those this
    /// run's reports — of sub-run `i`, in its window — for `specs` show passing and none
    /// failing: what a post may call fixed since the last run.
    pub fn passing(
        &mut self,
        cp: &Checkpoint,
        sub: Option<usize>,
        specs: &SpecSet,
        asked: impl Fn(&str, &str) -> bool,
    ) -> Vec<reporter::PassedTest> {
        // A group the timeline lacks: its reports cannot be told apart.
        let (Some(window), Some(reporter)) = (self.report_window(cp, sub), self.reporter.as_mut())
        else {
            return Vec::new();
        };
        reporter.passing(|m| window.holds(m), specs, asked)
    }

    /// The times of the reports that belong to the whole run (`None`: any time since its
    /// runner started, the reporter's own bound) or to sub-run `i` ([`Observer::group_window`];
    /// `None` when the timeline lacks it).
    fn report_window(&self, cp: &Checkpoint, sub: Option<usize>) -> Option<Window> {
        let (from, to) = match sub {
            None => (None, None),
            Some(i) => self
                .group_window(cp, i)
                .map(|(from, to)| (Some(from), to))?,
        };
        Some(Window {
            from: from.map(Timestamp::to_system),
            to: to.map(Timestamp::to_system),
        })
    }

    /// Failed tests (at most the number the history keeps), flaky tests and their totals,
    /// from the reports of the whole run, or of sub-run `i` ([`Observer::group_window`],
    /// for this sub-run's specs).
    pub fn reported(&mut self, cp: &Checkpoint, sub: Option<usize>) -> reporter::Summary {
        let runs = &cp.parser.summary().runs;
        let blocks = match sub {
            None => &runs[..],
            Some(i) => runs.get(i..=i).unwrap_or_default(),
        };
        let Some(window) = self.report_window(cp, sub) else {
            logging::warn(format!(
                "the runner's timeline lacks group {} of the log: its post names only what the log says",
                sub.map_or(0, |i| i + 1)
            ));
            return reporter::Summary::default();
        };
        let named = match sub {
            None => self.specs.1.clone(),
            Some(_) => SpecSet::new(blocks.iter().flat_map(|b| b.spec_names())),
        };
        let specs = failing_specs(blocks).unwrap_or_else(|| named.clone());
        let Some(reporter) = self.reporter.as_mut() else {
            return reporter::Summary::default();
        };
        // A report rewritten in place (mochawesome with a fixed file name) changes no
        // directory entry: look at every file again before a message is written.
        for warning in reporter.scan(true).warnings {
            logging::warn(warning);
        }
        let window = |m| window.holds(m);
        // As many failures as the history keeps (the message shows the first ones).
        let mut summary = reporter.summarize(window, &specs, history::MAX_FAILURES_KEPT);
        // A flaky test passed: it is in the report of any spec the result names.
        let all = reporter.summarize(window, &named, mattermost::message::FLAKY_NAMED);
        summary.flaky = all.flaky;
        summary.flaky_total = all.flaky_total;
        summary
    }
}

/// Once the log's summary table is there, the specs it shows failing: the only reports whose
/// failed tests belong in the message. Another build running a spec this run passed, at the
/// same time, writes a report with this run's spec path and its own failures.
pub(super) fn failing_specs(blocks: &[RunBlock]) -> Option<SpecSet> {
    let rows: Vec<&SpecRow> = blocks.iter().flat_map(|b| &b.spec_rows).collect();
    (!rows.is_empty()).then(|| {
        SpecSet::new(
            rows.into_iter()
                .filter(|r| r.is_failing())
                .map(|r| r.spec.as_str()),
        )
    })
}

/// Every spec the run's log names so far: the reports that belong to this run.
pub(super) fn run_specs(cp: &Checkpoint) -> SpecSet {
    SpecSet::new(cp.parser.summary().runs.iter().flat_map(|b| b.spec_names()))
}

/// A span of report modification times: after `from`, up to and including `to`.
#[derive(Clone, Copy, Debug)]
struct Window {
    from: Option<SystemTime>,
    to: Option<SystemTime>,
}

impl Window {
    /// Compared at the bounds' own precision (the runner's times are kept to the
    /// millisecond): a report written in the millisecond its group ended is the group's.
    fn holds(&self, m: SystemTime) -> bool {
        let m = Timestamp::from_system(m).to_system();
        self.from.is_none_or(|f| m > f) && self.to.is_none_or(|t| m <= t)
    }
}
