//! The rules of a categorized run (docs/watcher-service.md, "Categorized runs") for one evaluation, as one
//! pure function: which blocks of the log become sub-runs, which sub-runs end and how, how
//! long the runner has been gone, and what the parent's state is. The watcher applies the
//! [`Plan`] to its records; nothing here reads a file.
//!
//! - A block becomes a sub-run once its `(Run Starting)` header is complete (its group, and
//!   so its key, is final) or, when the runner is gone, as it is.
//! - A block whose `(Run Finished)` summary appeared ends its sub-run by that summary alone.
//! - A block followed by another `(Run Starting)` before its summary was cut off (Cypress
//!   crashed or was killed while the wrapper went on to the next group): FAILED, posted —
//!   as a plain run cut off before its summary is.
//! - A sub-run cut off by the runner's end follows the plain-run rules.
//! - The parent ends only once the runner has been inactive for the grace period; it then
//!   summarises its sub-runs. A cancel ends everything at once; a hang ends the parent.

use super::{
    Facts, LogView, RunnerFacts, Verdict, finished_subrun_verdict, parent_summary, progress,
    run_verdict, verdict,
};
use atvm_common::Moment;
use atvm_common::cypress::{LogSummary, RunBlock};
use atvm_common::state::RunState;
use atvm_common::time::human_duration;

/// A block of the log that becomes a sub-run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSubRun {
    /// The block's position in the log (0-based); the sub-run has the same index.
    pub index: usize,
    /// `NN-group` or `NN`: a function of the log, so a restarted watcher finds the same keys.
    pub key: String,
    pub group: Option<String>,
}

/// What one evaluation of a categorized run decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Blocks that become sub-runs, in log order.
    pub start: Vec<NewSubRun>,
    /// Sub-runs that end now, in log order, with their verdict.
    pub finish: Vec<(usize, Verdict)>,
    /// Sub-runs whose `(Run Finished)` was seen for the first time now.
    pub finished_seen: Vec<usize>,
    /// Since when no runner has been active (`None` while one is).
    pub runner_inactive_since: Option<Moment>,
    /// The parent's state: STARTING/WATCHING while the run goes on, terminal when it ends.
    pub parent: Verdict,
    /// The parent ended as the summary of its sub-runs (its counts are their totals).
    pub summarised: bool,
}

/// The plan for one evaluation. `subruns` holds, per known sub-run in log order, its final
/// state or `None` while it is open; `inactive_since` is the previous plan's value.
pub fn plan(
    f: &Facts,
    summary: &LogSummary,
    subruns: &[Option<RunState>],
    inactive_since: Option<Moment>,
) -> Plan {
    let runner_ended = matches!(
        f.runner,
        RunnerFacts::Exited { .. } | RunnerFacts::Vanished { .. } | RunnerFacts::FallbackGone
    );
    let cancelled = f.cancelled_at.is_some();
    let start = new_subruns(summary, subruns.len(), runner_ended || cancelled);
    let mut states: Vec<Option<RunState>> = subruns.to_vec();
    states.extend(start.iter().map(|_| None));
    let mut plan = Plan {
        start,
        finish: Vec::new(),
        finished_seen: Vec::new(),
        runner_inactive_since: inactive_since,
        parent: verdict(RunState::Watching, ""),
        summarised: false,
    };
    if cancelled {
        // Everything ends, nothing more is posted; open sub-runs end with the parent.
        plan.parent = run_verdict(f, LogView::EMPTY);
        return plan;
    }
    end_finished_and_superseded(summary, &mut states, &mut plan);
    // Only the last block can still be running.
    let open = summary
        .runs
        .len()
        .checked_sub(1)
        .filter(|&i| i < states.len() && states[i].is_none());
    match f.runner {
        RunnerFacts::Alive { .. } => {
            plan.runner_inactive_since = None;
            plan.parent = alive_parent(f, summary, open, &states);
        }
        RunnerFacts::NotYet | RunnerFacts::Unreadable(_) | RunnerFacts::Refused(_) => {
            plan.parent = run_verdict(f, LogView::EMPTY);
        }
        RunnerFacts::Exited { .. } | RunnerFacts::Vanished { .. } | RunnerFacts::FallbackGone => {
            ended_parent(f, summary, open, &mut states, &mut plan);
        }
    }
    plan
}

/// End every open sub-run whose block printed its summary, or that a later block followed
/// before it did.
fn end_finished_and_superseded(
    summary: &LogSummary,
    states: &mut [Option<RunState>],
    plan: &mut Plan,
) {
    let blocks = summary.runs.len();
    for (i, block) in summary.runs.iter().enumerate().take(states.len()) {
        let superseded = i + 1 < blocks;
        if states[i].is_some() || !(block.is_finished() || superseded) {
            continue;
        }
        let v = match block.is_finished() {
            true => finished_subrun_verdict(block),
            false => cut_off_subrun_verdict(),
        };
        states[i] = Some(v.state);
        plan.finished_seen.push(i);
        plan.finish.push((i, v));
    }
}

/// The verdict on a sub-run whose block another `(Run Starting)` followed before its
/// summary: its Cypress run stopped half-way.
pub fn cut_off_subrun_verdict() -> Verdict {
    verdict(
        RunState::Failed,
        "Cypress stopped before this group's summary (it crashed or was killed) and the next group started",
    )
}

/// Blocks after the `known` ones whose header is complete (or all of them once the runner
/// is gone: a cut-off header is all there will ever be). A header torn off by the next
/// `(Run Starting)` is complete too: the parser ends the table at the first line that is
/// not part of it.
fn new_subruns(summary: &LogSummary, known: usize, take_all: bool) -> Vec<NewSubRun> {
    summary
        .runs
        .iter()
        .enumerate()
        .skip(known)
        .take_while(|(_, b)| take_all || header_known(b))
        .map(|(index, b)| NewSubRun {
            index,
            key: LogSummary::subrun_key(index + 1, b.group.as_deref()),
            group: b.group.clone(),
        })
        .collect()
}

fn header_known(block: &RunBlock) -> bool {
    block.header_complete || block.current.is_some() || block.is_finished()
}

/// The runner is alive: WATCHING with the open sub-run's progress, or HUNG.
fn alive_parent(
    f: &Facts,
    summary: &LogSummary,
    open: Option<usize>,
    states: &[Option<RunState>],
) -> Verdict {
    let view = open.map_or(LogView::EMPTY, |i| LogView::block(&summary.runs[i]));
    let v = run_verdict(f, view);
    if v.state == RunState::Hung {
        return v;
    }
    let done = states.iter().filter(|s| s.is_some()).count();
    let current = open
        .map(|i| {
            let key = LogSummary::subrun_key(i + 1, summary.runs[i].group.as_deref());
            format!("sub-run {key} — {}; ", v.reason)
        })
        .unwrap_or_default();
    verdict(
        RunState::Watching,
        format!(
            "{current}{} finished",
            super::plural(done as u64, "sub-run")
        ),
    )
}

/// The runner has ended: the open sub-run is cut off now; the parent waits out the grace
/// period (another runner of the run may start), then summarises.
fn ended_parent(
    f: &Facts,
    summary: &LogSummary,
    open: Option<usize>,
    states: &mut [Option<RunState>],
    plan: &mut Plan,
) {
    let ended = match f.runner {
        RunnerFacts::Exited { at, .. } => at.clone(),
        _ => f.now.clone(),
    };
    let since = plan.runner_inactive_since.get_or_insert(ended).clone();
    if let Some(i) = open {
        let v = run_verdict(f, LogView::block(&summary.runs[i]));
        states[i] = Some(v.state);
        plan.finish.push((i, v));
    }
    if since.until(&f.now) < f.timing.grace {
        plan.parent = verdict(
            RunState::Watching,
            format!(
                "runner ended at {since}; waiting {} for another runner of this run",
                human_duration(f.timing.grace)
            ),
        );
        return;
    }
    let runner_verdict = run_verdict(f, LogView::whole(summary));
    // Every block is final by now (finished, superseded or cut off by the runner's end);
    // one not yet known as a sub-run counts as WATCHING and ends with the parent.
    let all: Vec<RunState> = states
        .iter()
        .map(|s| s.unwrap_or(RunState::Watching))
        .collect();
    plan.parent = parent_summary(&runner_verdict, &all);
    plan.summarised = true;
}

/// One line per open sub-run while the run goes on (its progress in the log).
pub fn subrun_progress(block: &RunBlock) -> String {
    progress(LogView::block(block))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::fixtures::{self, summary, t};

    fn facts(runner: &RunnerFacts) -> Facts<'_> {
        fixtures::facts(runner, 1000, 990)
    }

    fn exited(code: i32, at: i64) -> RunnerFacts {
        fixtures::exited(code, at)
    }

    /// A block with a complete header for `group`, optionally finished passing or failing.
    fn block(group: &str, end: Option<bool>) -> String {
        let mut s = format!(
            "  (Run Starting)\n  ┌────┐\n  │ Cypress:  12.17.4 │\n  │ Params:   Group: {group}, Parallel: false │\n  └────┘\n  Running:  {group}.cy.js  (1 of 1)\n"
        );
        match end {
            Some(true) => s.push_str("  (Run Finished)\n  ┌──┐\n  │ ✔  a.cy.js   00:01   1   1   -   -   - │\n  └──┘\n    ✔  All specs passed!   00:01   1   1   -   -   -  \n"),
            Some(false) => s.push_str("  (Run Finished)\n  ┌──┐\n  │ ✖  a.cy.js   00:01   2   1   1   -   - │\n  └──┘\n    ✖  1 of 1 failed (100%)   00:01   2   1   1   -   -  \n"),
            None => {}
        }
        s
    }

    #[test]
    fn complete_headers_become_sub_runs_with_keys_from_the_log() {
        let log = format!("{}{}", block("linux", Some(true)), block("windows", None));
        let p = plan(
            &facts(&RunnerFacts::Alive { pid: 7 }),
            &summary(&log),
            &[],
            None,
        );
        let keys: Vec<&str> = p.start.iter().map(|n| n.key.as_str()).collect();
        assert_eq!(keys, ["01-linux", "02-windows"]);
        assert_eq!(
            p.finish,
            vec![(0, verdict(RunState::Completed, "all specs passed"))]
        );
        assert_eq!(p.finished_seen, [0]);
        assert_eq!(p.parent.state, RunState::Watching);
        assert!(
            p.parent
                .reason
                .starts_with("sub-run 02-windows — running spec 1 of 1")
                && p.parent.reason.ends_with("1 sub-run finished"),
            "{}",
            p.parent.reason
        );
    }

    #[test]
    fn an_incomplete_header_waits_unless_the_runner_is_gone() {
        let log = "  (Run Starting)\n  ┌────┐\n  │ Cypress:  12.17.4 │\n";
        let s = summary(log);
        let alive = RunnerFacts::Alive { pid: 7 };
        assert!(plan(&facts(&alive), &s, &[], None).start.is_empty());
        let gone = RunnerFacts::Vanished {
            pid: 7,
            rebooted: false,
        };
        let p = plan(&facts(&gone), &s, &[], None);
        assert_eq!(p.start.len(), 1);
        assert_eq!(p.start[0].key, "01");
    }

    #[test]
    fn known_final_sub_runs_are_not_finished_again() {
        let s = summary(&block("linux", Some(false)));
        let p = plan(
            &facts(&RunnerFacts::Alive { pid: 7 }),
            &s,
            &[Some(RunState::Failed)],
            None,
        );
        assert!(p.start.is_empty() && p.finish.is_empty() && p.finished_seen.is_empty());
    }

    #[test]
    fn the_runner_s_end_cuts_off_the_open_sub_run_and_starts_the_grace_period() {
        let s = summary(&format!(
            "{}{}",
            block("linux", Some(true)),
            block("windows", None)
        ));
        let runner = RunnerFacts::Vanished {
            pid: 7,
            rebooted: false,
        };
        let p = plan(
            &facts(&runner),
            &s,
            &[Some(RunState::Completed), None],
            None,
        );
        assert_eq!(p.finish.len(), 1);
        assert_eq!(p.finish[0].0, 1);
        assert_eq!(p.finish[0].1.state, RunState::Terminated);
        assert_eq!(p.runner_inactive_since, Some(t(1000)));
        assert_eq!(p.parent.state, RunState::Watching, "grace period");
        assert!(!p.summarised);
    }

    #[test]
    fn after_the_grace_period_the_parent_summarises_its_sub_runs() {
        let s = summary(&format!(
            "{}{}",
            block("linux", Some(true)),
            block("windows", Some(false))
        ));
        let runner = exited(1, 800);
        let states = [Some(RunState::Completed), Some(RunState::Failed)];
        // The grace period counts from the recorded exit, not from the first poll after it.
        let p = plan(&facts(&runner), &s, &states, None);
        assert_eq!(p.runner_inactive_since, Some(t(800)));
        assert_eq!(p.parent.state, RunState::Failed);
        assert!(
            p.parent
                .reason
                .starts_with("2 sub-runs: 1 completed, 1 failed"),
            "{}",
            p.parent.reason
        );
        assert!(p.summarised);
        // Inside the grace period it keeps waiting.
        let p = plan(&facts(&runner), &s, &states, Some(t(950)));
        assert_eq!(p.parent.state, RunState::Watching);
        assert_eq!(p.runner_inactive_since, Some(t(950)));
    }

    #[test]
    fn a_live_runner_clears_the_grace_period() {
        let s = summary(&block("linux", Some(true)));
        let p = plan(
            &facts(&RunnerFacts::Alive { pid: 7 }),
            &s,
            &[Some(RunState::Completed)],
            Some(t(10)),
        );
        assert_eq!(p.runner_inactive_since, None);
    }

    #[test]
    fn a_cancel_ends_everything_and_creates_the_remaining_sub_runs() {
        let s = summary(&format!(
            "{}{}",
            block("linux", Some(true)),
            block("windows", None)
        ));
        let runner = RunnerFacts::Alive { pid: 7 };
        let mut f = facts(&runner);
        f.cancelled_at = Some(t(999).wall);
        let p = plan(&f, &s, &[], None);
        assert_eq!(p.start.len(), 2);
        assert!(
            p.finish.is_empty(),
            "nothing is finished (or posted) after a cancel"
        );
        assert_eq!(p.parent.state, RunState::Cancelled);
    }

    #[test]
    fn a_hang_ends_the_parent_and_no_runner_ends_it_unknown() {
        let s = summary(&block("linux", None));
        let runner = RunnerFacts::Alive { pid: 7 };
        let mut f = facts(&runner);
        f.last_activity = t(1000 - 90 * 60);
        let p = plan(&f, &s, &[None], None);
        assert_eq!(p.parent.state, RunState::Hung);
        let none = RunnerFacts::NotYet;
        assert_eq!(
            plan(&facts(&none), &LogSummary::default(), &[], None)
                .parent
                .state,
            RunState::Unknown
        );
        let mut early = facts(&none);
        early.now = t(10);
        assert_eq!(
            plan(&early, &LogSummary::default(), &[], None).parent.state,
            RunState::Starting
        );
    }

    #[test]
    fn a_runner_that_fails_before_any_group_makes_the_parent_failed() {
        let runner = exited(1, 0);
        let p = plan(&facts(&runner), &LogSummary::default(), &[], None);
        assert_eq!(p.parent.state, RunState::Failed);
        assert!(p.summarised && p.start.is_empty());
    }

    #[test]
    fn a_header_is_known_when_complete_or_when_its_first_spec_runs() {
        let alive = RunnerFacts::Alive { pid: 7 };
        // The table's end was seen: the group is final.
        let complete =
            "  (Run Starting)\n  ┌────┐\n  │ Params:   Group: linux, Parallel: false │\n  └────┘\n";
        let p = plan(&facts(&alive), &summary(complete), &[], None);
        assert_eq!(p.start.len(), 1);
        // A spec already runs (the table's end was not recognised): as good.
        let running = "  (Run Starting)\n  ┌────┐\n  Running:  a.cy.js   (1 of 2)\n";
        let p = plan(&facts(&alive), &summary(running), &[], None);
        assert_eq!(p.start.len(), 1);
        // Only the summary was seen (the log was read from the middle): it is a sub-run too.
        let summary_only = "  (Run Finished)\n  ┌──┐\n  │ ✔  a.cy.js   00:01   1   1   -   -   - │\n  └──┘\n    ✔  All specs passed!   00:01   1   1   -   -   -  \n";
        let s = summary(summary_only);
        assert!(!s.runs[0].header_complete && s.runs[0].current.is_none());
        let p = plan(&facts(&alive), &s, &[], None);
        assert_eq!((p.start.len(), p.finish.len()), (1, 1));
    }

    #[test]
    fn the_grace_period_ends_exactly_at_its_length() {
        let s = summary(&block("linux", Some(true)));
        let runner = exited(0, 1000 - 120);
        let p = plan(&facts(&runner), &s, &[Some(RunState::Completed)], None);
        assert!(
            p.summarised,
            "120 s after the exit, with a 120 s grace period"
        );
        let runner = exited(0, 1000 - 119);
        let p = plan(&facts(&runner), &s, &[Some(RunState::Completed)], None);
        assert!(!p.summarised);
        assert!(
            p.parent
                .reason
                .ends_with("waiting 2m 00s for another runner of this run"),
            "{}",
            p.parent.reason
        );
    }

    #[test]
    fn a_group_cut_off_by_the_next_group_is_failed_and_posted_at_once() {
        // linux crashed half-way; the wrapper went on to windows, which now runs.
        let s = summary(&format!(
            "{}{}",
            block("linux", None),
            block("windows", None)
        ));
        let p = plan(&facts(&RunnerFacts::Alive { pid: 7 }), &s, &[], None);
        let keys: Vec<&str> = p.start.iter().map(|n| n.key.as_str()).collect();
        assert_eq!(keys, ["01-linux", "02-windows"]);
        assert_eq!(p.finish, vec![(0, cut_off_subrun_verdict())]);
        assert_eq!(p.finish[0].1.state, RunState::Failed);
        assert_eq!(p.finished_seen, [0]);
        assert_eq!(p.parent.state, RunState::Watching);
        // Known as final at the next poll: not finished again.
        let p = plan(
            &facts(&RunnerFacts::Alive { pid: 7 }),
            &s,
            &[Some(RunState::Failed), None],
            None,
        );
        assert!(p.finish.is_empty());
        // A header cut off half-way is all there will ever be once another block follows.
        let torn = "  (Run Starting)\n  ┌────┐\n  │ Cypress:  12.17.4 │\n";
        let s = summary(&format!("{torn}{}", block("windows", None)));
        let p = plan(&facts(&RunnerFacts::Alive { pid: 7 }), &s, &[], None);
        let keys: Vec<&str> = p.start.iter().map(|n| n.key.as_str()).collect();
        assert_eq!(keys, ["01", "02-windows"]);
        assert_eq!(p.finish, vec![(0, cut_off_subrun_verdict())]);
    }

    #[test]
    fn an_open_sub_run_shows_the_spec_it_runs() {
        let s = summary(&block("linux", None));
        assert_eq!(
            subrun_progress(&s.runs[0]),
            "running spec 1 of 1: linux.cy.js"
        );
    }
}
