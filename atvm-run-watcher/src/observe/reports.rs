//! The reporter directory: which reports are this run's (written after its runner started,
//! for a spec its log names), their counts while the log has no summary, and the failed
//! tests a message lists.

use super::{FULL_REPORTER_SCAN, Observer};
use crate::ctx::Ctx;
use crate::persist::Checkpoint;
use atvm_common::cypress::{RunBlock, SpecRow};
use atvm_common::reporter::{self, ReporterDir, SpecSet};
use atvm_common::state::Counts;
use atvm_common::{Timestamp, history, logging, mattermost};
use std::time::{Instant, SystemTime};

impl Observer {
    pub(super) fn scan_reporter(&mut self, ctx: &Ctx) {
        // Reports count from the runner's start, once there is a runner.
        let Some(since) = self.runner_started_at else {
            return;
        };
        let reporter = self
            .reporter
            .get_or_insert_with(|| ReporterDir::new(&ctx.paths.reporter_dir, since.to_system()));
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

    /// Failed tests (at most the number the history keeps), flaky tests and their totals,
    /// from the reports
    /// of the whole run, or of sub-run `i`: the reports written between the end of the
    /// previous sub-run and the end of this one, for this sub-run's specs.
    pub fn reported(&mut self, cp: &Checkpoint, sub: Option<usize>) -> reporter::Summary {
        let seen = |k: usize| {
            cp.finished_seen
                .get(k)
                .copied()
                .flatten()
                .map(Timestamp::to_system)
        };
        let runs = &cp.parser.summary().runs;
        let (from, to, blocks) = match sub {
            None => (SystemTime::UNIX_EPOCH, None, &runs[..]),
            Some(i) => (
                i.checked_sub(1)
                    .and_then(seen)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                seen(i),
                runs.get(i..=i).unwrap_or_default(),
            ),
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
        let window = |m| m > from && to.is_none_or(|t| m <= t);
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
