//! The watcher's side of a build's history (atvm_common::history): the earlier runs a post
//! compares with, which of their failed tests this result's reports show passing, how
//! long the run took on the boot clock, each finished result kept in the run's
//! `summary.json` for the runs after it, and the results `MATTERMOST_ATVM_NOTIFY=failed`
//! keeps quiet (suppressed, with that reason, but still part of the history).

use super::Watcher;
use crate::record::Target;
use atvm_common::history::{self, Failure, Outcome, RunSummary, SUMMARY_FILE};
use atvm_common::reporter::SpecSet;
use atvm_common::state::PostStatus;
use atvm_common::{fsutil, logging};
use std::time::Duration;

/// Summaries read to find the last finished runs (some runs were cancelled or hung).
const EARLIER_READ: usize = 4 * history::LAST_RUNS;

impl Watcher<'_> {
    /// The summaries of the build's earlier runs, newest first (by start).
    pub(super) fn earlier(&self) -> Vec<RunSummary> {
        let base = self.ctx.paths.archive_root().join(self.ctx.build.as_str());
        history::read(&base, EARLIER_READ)
    }

    /// The earlier runs' summaries, and of the failed tests of the previous finished one
    /// (the same group's, for a sub-run), those this result's reports show passing.
    pub(super) fn compared_with(&mut self, target: Target) -> (Vec<RunSummary>, Vec<Failure>) {
        let earlier = self.earlier();
        let name = match target {
            Target::Run => None,
            Target::Sub(_) => crate::message::history_name(self.record.state_of(target)),
        };
        let finished = history::finished(&earlier, name);
        let sub = match target {
            Target::Run => None,
            Target::Sub(i) => Some(i),
        };
        let passed = finished
            .first()
            .map(|e| self.passed_since(sub, &e.outcome.failed))
            .unwrap_or_default();
        (earlier, passed)
    }

    /// Of `before` (failed tests of the previous finished result), those this result's
    /// reports show passing and none failing — by the observer's rules for what is this
    /// result's (written after its runner started, not there before it, within the
    /// sub-run's window, for a spec it names).
    fn passed_since(&mut self, sub: Option<usize>, before: &[Failure]) -> Vec<Failure> {
        let runs = &self.cp.parser.summary().runs;
        let blocks = match sub {
            None => &runs[..],
            Some(i) => runs.get(i..=i).unwrap_or_default(),
        };
        let named = SpecSet::new(blocks.iter().flat_map(|b| b.spec_names()));
        let wanted: Vec<&Failure> = before
            .iter()
            .filter(|f| f.test.is_some() && named.matches(&f.spec))
            .collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        let specs = SpecSet::new(wanted.iter().map(|f| f.spec.as_str()));
        let asked = |spec: &str, title: &str| {
            wanted
                .iter()
                .any(|f| f.test.as_deref() == Some(title) && history::same_spec(&f.spec, spec))
        };
        self.observer
            .passing(&self.cp, sub, &specs, asked)
            .into_iter()
            .map(|p| Failure {
                spec: p.spec,
                test: Some(p.full_title),
                streak: 0,
            })
            .collect()
    }

    /// How long the run took: on the boot clock, from this run's `runner/status.json`
    /// (a wall-clock step during the run changes nothing); the wall clock across a reboot
    /// or for a run started by hand. `None` for a sub-run (Cypress's footer says).
    pub(super) fn duration(&self, sub: Option<usize>) -> Option<Duration> {
        if sub.is_some() {
            return None;
        }
        let status = self.ctx.sd.read_status().ok().flatten();
        if let Some(s) = status.filter(|s| s.run_id == self.ctx.request.run_id) {
            return s.exited().map(|end| s.started().until(&end));
        }
        let (start, end) = (
            self.observer.runner_started_at,
            self.observer.runner_exited_at,
        );
        Some(start?.until(end?))
    }

    /// Keep `outcome` of `target` in the run's `summary.json`, which the next start
    /// archives with the run. Not in a dry run (it writes nothing but `post.json`). Best
    /// effort: a history that cannot be written is a warning, never a reason not to post.
    pub(super) fn remember(&self, target: Target, outcome: Outcome) {
        if self.ctx.sink.is_dry_run() {
            return;
        }
        let path = self.ctx.sd.path().join(SUMMARY_FILE);
        let mut summary = fsutil::read_json::<RunSummary>(&path)
            .ok()
            .flatten()
            .filter(|s| s.run_id == self.ctx.request.run_id)
            .unwrap_or_else(|| RunSummary {
                build_name: self.ctx.build.to_string(),
                run_id: self.ctx.request.run_id.clone(),
                started_at: self.observer.runner_started_at,
                ..RunSummary::default()
            });
        let record = self.record.state_of(target);
        let name = match target {
            Target::Run => None,
            Target::Sub(_) => crate::message::history_name(record),
        };
        summary.set(name, outcome);
        if let Err(e) = fsutil::write_json(&path, &summary, 0o644) {
            logging::warn(format!(
                "cannot keep this result for the next runs' comparison: {e}"
            ));
        }
    }

    /// Of the results now due, those `MATTERMOST_ATVM_NOTIFY` posts; the others are
    /// suppressed with the reason (in the same save as their final state, so no restart
    /// posts them) and kept in the history all the same.
    pub(super) fn quiet(&mut self, due: Vec<Target>) -> Vec<Target> {
        let notify = self.ctx.sink.posting().notify;
        let mut posted = Vec::new();
        for target in due {
            let state = self.record.state_of(target).state;
            if notify.posts(state) {
                posted.push(target);
                continue;
            }
            self.compose(target);
            let record = self.record.state_of_mut(target);
            record.post.status = PostStatus::Suppressed;
            record.reason = format!("{}; {}", record.reason, notify.why_not());
        }
        posted
    }
}
