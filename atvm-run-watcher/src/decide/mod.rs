//! The state machine of docs/watcher-service.md as pure functions: given what was observed, which state is
//! the run (or a sub-run) in, and why. No I/O here, so every rule is unit-tested.
//!
//! - [`run_verdict`]: a plain run, or a sub-run cut off by the runner's end;
//! - [`finished_subrun_verdict`] and [`parent_summary`]: a categorized run's sub-runs and
//!   the parent once everything has ended; [`categorized::plan`] puts the categorized rules
//!   (sub-run creation, grace, parent finish) together for one poll;
//! - [`transition_allowed`]: which state changes a final state still admits.
//!
//! The states themselves are documented on [`RunState`].

pub mod categorized;
#[cfg(test)]
mod fixtures;

use atvm_common::cypress::{LogSummary, NoSpecs, Outcome, RunBlock};
use atvm_common::state::{Counts, RunState};
use atvm_common::time::human_duration;
use atvm_common::{Moment, Timestamp};
use std::time::Duration;

/// The watcher's timing knobs (docs/watcher-service.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub poll: Duration,
    pub grace: Duration,
    pub hang: Duration,
    pub start_timeout: Duration,
    pub post_retry: Duration,
}

/// What is known about the runner of this run_id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunnerFacts {
    /// No status for this run_id and no process naming the build.
    NotYet,
    Alive {
        pid: u32,
    },
    /// The wrapper recorded an exit.
    Exited {
        exit_code: Option<i32>,
        signal: Option<i32>,
        stop_signal: Option<i32>,
        cancel_requested: bool,
        at: Moment,
    },
    /// The wrapper could not start the run (log, spec or workdir refused); why.
    Refused(String),
    /// Recorded as started, now dead, and no exit was recorded (SIGKILL, crash, or the
    /// machine rebooted under it: `rebooted`).
    Vanished {
        pid: u32,
        rebooted: bool,
    },
    /// A run not started through start-atvm-runner whose process has ended.
    FallbackGone,
    /// `runner/status.json` exists but cannot be read.
    Unreadable(String),
}

/// What one evaluation knows. Times are [`Moment`]s: windows are measured on the boot
/// clock, so a wall-clock step alone never ends a run.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub now: Moment,
    pub requested: Moment,
    /// When cancel-atvm-run-watcher marked this run cancelled.
    pub cancelled_at: Option<Timestamp>,
    pub runner: &'a RunnerFacts,
    pub last_activity: Moment,
    pub timing: &'a Timing,
    /// Why the file at the run log's path is not read as this run's output, when there is
    /// one there (a link, someone else's, writable by others): said if no runner comes.
    pub untrusted_log: Option<&'a str>,
    /// Why the log read is not the whole of what the runner's command printed, when it is
    /// not: it could not be written (a full file system), or it was removed, replaced or
    /// cut short before it was read to its end. Never guessed around: such a run ends
    /// UNKNOWN unless the runner's own records decide a state that posts nothing.
    pub log_gap: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub state: RunState,
    pub reason: String,
}

fn verdict(state: RunState, reason: impl Into<String>) -> Verdict {
    Verdict {
        state,
        reason: reason.into(),
    }
}

/// The part of the log a verdict is about: all blocks of a plain run, or one sub-run.
#[derive(Clone, Copy, Debug)]
pub struct LogView<'a> {
    pub blocks: &'a [RunBlock],
    pub no_specs: Option<&'a NoSpecs>,
}

impl<'a> LogView<'a> {
    /// Nothing from the log: for verdicts the log cannot change (cancel, no runner yet).
    pub const EMPTY: LogView<'static> = LogView {
        blocks: &[],
        no_specs: None,
    };

    /// The whole log of a plain run.
    pub fn whole(summary: &'a LogSummary) -> LogView<'a> {
        LogView {
            blocks: &summary.runs,
            no_specs: summary.no_specs.as_ref(),
        }
    }

    /// One block: a sub-run of a categorized run.
    pub fn block(block: &'a RunBlock) -> LogView<'a> {
        LogView {
            blocks: std::slice::from_ref(block),
            no_specs: None,
        }
    }
}

impl LogView<'_> {
    /// Cypress printed `The run was canceled` (the run was cancelled in Cypress Cloud, by
    /// hand or by its auto-cancellation after failures).
    fn cloud_canceled(&self) -> bool {
        self.blocks.iter().any(|b| {
            b.footer
                .as_ref()
                .is_some_and(|f| f.outcome == Outcome::Canceled)
        })
    }

    /// A run cancelled in Cypress Cloud: CANCELLED (no post) when no test had failed —
    /// whatever the exit code, Cypress exits 1 after that footer — else FAILED, posted, as
    /// a run cancelled after its failures (auto-cancellation).
    fn canceled_verdict(&self) -> Option<Verdict> {
        if !self.cloud_canceled() {
            return None;
        }
        Some(match self.failures() {
            Some(failures) => verdict(
                RunState::Failed,
                format!("cancelled in Cypress Cloud after failures: {failures}"),
            ),
            None => verdict(
                RunState::Cancelled,
                "cancelled in Cypress Cloud (Cypress printed \"The run was canceled\") before any test failed",
            ),
        })
    }

    fn failures(&self) -> Option<String> {
        let failing: Vec<&RunBlock> = self.blocks.iter().filter(|b| b.has_failures()).collect();
        if failing.is_empty() {
            return None;
        }
        let mut spec_failed = 0;
        let mut spec_total = 0;
        let mut tests_failed = 0;
        for b in self.blocks {
            if let Some(f) = &b.footer {
                if let Outcome::SpecsFailed { failed, total } = f.outcome {
                    spec_failed += failed;
                    spec_total += total;
                } else {
                    // No `N of M failed` (a run cancelled in Cypress Cloud): its rows say.
                    spec_total += b.spec_rows.len() as u32;
                    spec_failed += b.spec_rows.iter().filter(|r| r.is_failing()).count() as u32;
                }
                tests_failed += f.counts.failed;
            }
        }
        Some(if spec_total > 0 {
            format!(
                "{spec_failed} of {spec_total} specs failed ({})",
                plural(tests_failed, "failing test")
            )
        } else {
            "failing tests in the run log".to_string()
        })
    }

    fn no_specs_reason(&self) -> Option<String> {
        self.no_specs.map(|ns| {
            let searched = ns.pattern.as_deref().map(|p| format!(" (searched {p})")).unwrap_or_default();
            format!(
                "Cypress found no spec files{searched}: the specPattern is stale — re-run the template step (start-atvm-run --template-command …) before the runner"
            )
        })
    }

    /// The last Cypress run of the log printed its summary. (An earlier block cut off and
    /// followed by a finished one is a wrapper's retry: the last one is the run's result.)
    fn finished(&self) -> bool {
        self.blocks.last().is_some_and(RunBlock::is_finished)
    }
}

/// `1 failing test`, `2 failing tests`.
pub fn plural(n: u64, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        1 => "SIGHUP".into(),
        2 => "SIGINT".into(),
        6 => "SIGABRT".into(),
        9 => "SIGKILL".into(),
        11 => "SIGSEGV".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// How long from `f.now` until time alone can change the verdict: the start timeout while
/// no runner came, the hang window while one runs, the grace period once a categorized
/// run's runner has ended (`inactive_since`). `None` when only an event can. The watcher
/// sets its one timer by this (docs/watcher-service.md, "Waking"); it decides nothing.
pub fn next_deadline(
    f: &Facts,
    categorized: bool,
    inactive_since: Option<&Moment>,
) -> Option<Duration> {
    let left = |from: &Moment, window: Duration| window.saturating_sub(from.until(&f.now));
    match f.runner {
        RunnerFacts::NotYet => Some(left(&f.requested, f.timing.start_timeout)),
        RunnerFacts::Alive { .. } => Some(left(&f.last_activity, f.timing.hang)),
        _ if categorized => inactive_since.map(|since| left(since, f.timing.grace)),
        _ => None,
    }
}

/// The verdict on a run (or a cut-off sub-run) from the runner and the log.
pub fn run_verdict(f: &Facts, log: LogView) -> Verdict {
    if let Some(at) = f.cancelled_at {
        return verdict(
            RunState::Cancelled,
            format!("cancelled with cancel-atvm-run-watcher at {at}"),
        );
    }
    match f.runner {
        RunnerFacts::Unreadable(why) => verdict(
            RunState::Unknown,
            format!("runner status cannot be read: {why}"),
        ),
        RunnerFacts::Refused(why) => verdict(
            RunState::Unknown,
            format!("the runner refused to start: {why}"),
        ),
        RunnerFacts::NotYet => not_started_verdict(f),
        RunnerFacts::Alive { pid } => alive_verdict(f, *pid, log),
        RunnerFacts::Exited {
            exit_code,
            signal,
            stop_signal,
            cancel_requested,
            ..
        } => exited_verdict(
            Exit {
                code: *exit_code,
                signal: *signal,
                stop_signal: *stop_signal,
                cancel_requested: *cancel_requested,
            },
            f.log_gap,
            log,
        ),
        RunnerFacts::Vanished {
            pid,
            rebooted: true,
        } => verdict(
            RunState::Terminated,
            format!("the machine rebooted while the runner (pid {pid}) ran; it recorded no exit"),
        ),
        RunnerFacts::Vanished { pid, .. } => verdict(
            RunState::Terminated,
            format!(
                "runner (pid {pid}) ended without recording an exit (killed with SIGKILL or crashed)"
            ),
        ),
        RunnerFacts::FallbackGone => fallback_gone_verdict(log),
    }
}

/// No runner yet: keep waiting, or UNKNOWN once the start timeout has passed.
fn not_started_verdict(f: &Facts) -> Verdict {
    if f.requested.until(&f.now) >= f.timing.start_timeout {
        let why = f
            .untrusted_log
            .map(|w| format!("; {w}"))
            .unwrap_or_default();
        verdict(
            RunState::Unknown,
            format!(
                "no runner for this run within {} of the request{why}",
                human_duration(f.timing.start_timeout)
            ),
        )
    } else {
        verdict(RunState::Starting, "waiting for the runner to start")
    }
}

/// A live runner is watched, unless nothing moved for the hang window.
fn alive_verdict(f: &Facts, pid: u32, log: LogView) -> Verdict {
    if f.last_activity.until(&f.now) >= f.timing.hang {
        verdict(
            RunState::Hung,
            format!(
                "no log or reporter activity since {} ({}); the runner (pid {pid}) was left running",
                f.last_activity,
                human_duration(f.timing.hang)
            ),
        )
    } else {
        let gap = f.log_gap.map(|g| format!("; {g}")).unwrap_or_default();
        verdict(RunState::Watching, format!("{}{gap}", progress(log)))
    }
}

/// How the wrapper recorded the runner's end.
#[derive(Clone, Copy, Debug)]
struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
    stop_signal: Option<i32>,
    cancel_requested: bool,
}

/// A recorded exit: a cancel, a stop or a kill end the run unposted; a log that is not the
/// whole output ends it UNKNOWN; otherwise the exit code and the log decide between
/// COMPLETED and FAILED (or CANCELLED, when Cypress Cloud cancelled it).
fn exited_verdict(exit: Exit, log_gap: Option<&str>, log: LogView) -> Verdict {
    if exit.cancel_requested {
        return verdict(
            RunState::Cancelled,
            "runner cancelled with cancel-atvm-runner",
        );
    }
    if let Some(sig) = exit.stop_signal {
        return verdict(
            RunState::Terminated,
            format!(
                "runner was stopped ({}) without a cancel request",
                signal_name(sig)
            ),
        );
    }
    if let Some(sig) = exit.signal {
        return verdict(
            RunState::Terminated,
            format!("runner command was killed by {}", signal_name(sig)),
        );
    }
    if let Some(gap) = log_gap {
        return verdict(RunState::Unknown, gap);
    }
    if let Some(hint) = log.no_specs_reason() {
        return verdict(RunState::Failed, hint);
    }
    if let Some(v) = log.canceled_verdict() {
        return v;
    }
    let code = exit.code.unwrap_or(1);
    if code != 0 {
        let detail = log.failures().map(|f| format!(": {f}")).unwrap_or_default();
        return verdict(
            RunState::Failed,
            format!("runner exited with code {code}{detail}"),
        );
    }
    if let Some(failures) = log.failures() {
        // Cypress's exit code is the number of failed tests, modulo 256 (256 failures exit
        // 0), and a wrapper may swallow it: the log decides.
        return verdict(
            RunState::Failed,
            format!("{failures} (the runner exited 0; the log shows the failures)"),
        );
    }
    if !log.blocks.is_empty() && !log.finished() {
        // Cypress started but printed no summary: a wrapper that swallows the exit code
        // (`cypress run …; exit 0`, `… | tee`) must not turn a cut-off run into a pass.
        return verdict(
            RunState::Failed,
            "runner exited 0 but the Cypress run did not finish (no summary in the log)",
        );
    }
    verdict(RunState::Completed, completed_reason(log))
}

/// A runner found by its command line has ended: only its log can say how.
fn fallback_gone_verdict(log: LogView) -> Verdict {
    if let Some(hint) = log.no_specs_reason() {
        verdict(RunState::Failed, hint)
    } else if let Some(v) = log.canceled_verdict() {
        v
    } else if !log.finished() {
        verdict(
            RunState::Terminated,
            "runner process ended without a Cypress summary in the log",
        )
    } else if let Some(failures) = log.failures() {
        verdict(RunState::Failed, failures)
    } else {
        verdict(RunState::Completed, completed_reason(log))
    }
}

fn completed_reason(log: LogView) -> String {
    if log.blocks.is_empty() {
        "runner exited 0 (no Cypress output in the log)".to_string()
    } else {
        "all specs passed".to_string()
    }
}

/// A one-line progress description while the run is being watched.
pub fn progress(log: LogView) -> String {
    match log.blocks.last() {
        Some(b) if b.is_finished() => {
            "Cypress run finished; waiting for the runner to exit".to_string()
        }
        Some(b) => match &b.current {
            Some(r) => format!("running spec {} of {}: {}", r.index, r.total, r.spec),
            None => "Cypress run starting".to_string(),
        },
        None => "runner started; waiting for Cypress output".to_string(),
    }
}

/// The verdict on a finished sub-run (its own summary decides).
pub fn finished_subrun_verdict(block: &RunBlock) -> Verdict {
    let log = LogView::block(block);
    if let Some(v) = log.canceled_verdict() {
        return v;
    }
    match log.failures() {
        Some(f) => verdict(RunState::Failed, f),
        None => verdict(RunState::Completed, "all specs passed"),
    }
}

/// The categorized parent's state once everything has ended: a summary of its sub-runs.
pub fn parent_summary(runner_verdict: &Verdict, subrun_states: &[RunState]) -> Verdict {
    let n = subrun_states.len();
    let failed = subrun_states
        .iter()
        .filter(|s| **s == RunState::Failed)
        .count();
    let completed = subrun_states
        .iter()
        .filter(|s| **s == RunState::Completed)
        .count();
    let tally = format!(
        "{}: {completed} completed, {failed} failed",
        plural(n as u64, "sub-run")
    );
    match runner_verdict.state {
        RunState::Cancelled | RunState::Terminated | RunState::Hung | RunState::Unknown => verdict(
            runner_verdict.state,
            format!("{}; {tally}", runner_verdict.reason),
        ),
        _ if n == 0 => runner_verdict.clone(),
        _ if failed > 0 || runner_verdict.state == RunState::Failed => verdict(
            RunState::Failed,
            format!("{tally}; runner: {}", runner_verdict.reason),
        ),
        _ => verdict(RunState::Completed, tally),
    }
}

/// May a record in state `from` (final or not, its result posted or not) change to `to`?
/// A state that is not final may become anything. A final state is kept, with one
/// exception: a COMPLETED/FAILED result that has not been posted yet may still become
/// CANCELLED (a cancel that arrives before the post goes out, docs/watcher-service.md).
pub fn transition_allowed(from: RunState, from_final: bool, posted: bool, to: RunState) -> bool {
    !from_final || from == to || (to == RunState::Cancelled && from.is_postable() && !posted)
}

/// The sum of the log's summary counts over `blocks` (`None` before any summary row).
pub fn total_counts(blocks: &[RunBlock]) -> Option<Counts> {
    let mut total: Option<Counts> = None;
    for c in blocks.iter().filter_map(RunBlock::counts) {
        total.get_or_insert_with(Counts::default).add(&c);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::fixtures::{summary, t};
    use super::*;

    fn facts(runner: &RunnerFacts) -> Facts<'_> {
        fixtures::facts(runner, 100, 90)
    }

    fn exited(code: i32) -> RunnerFacts {
        fixtures::exited(code, 99)
    }

    fn blocks(log: &str) -> Vec<RunBlock> {
        summary(log).runs
    }

    const PASSED: &str = "  (Run Starting)\n  (Run Finished)\n  ┌──┐\n  │ ✔  a.cy.js   00:01   1   1   -   -   - │\n  └──┘\n    ✔  All specs passed!   00:01   1   1   -   -   -  \n";
    const WRAPPED_256: &str = "  (Run Starting)\n  (Run Finished)\n  ┌──┐\n  │ ✖  a.cy.js   09:01   300   44   256   -   - │\n  └──┘\n    ✖  1 of 1 failed (100%)   09:01   300   44   256   -   -  \n";

    #[test]
    fn exit_zero_without_failures_is_completed() {
        let b = blocks(PASSED);
        let v = run_verdict(
            &facts(&exited(0)),
            LogView {
                blocks: &b,
                no_specs: None,
            },
        );
        assert_eq!(v.state, RunState::Completed);
    }

    #[test]
    fn a_start_timeout_names_a_log_that_was_not_trusted() {
        let mut f = fixtures::facts(&RunnerFacts::NotYet, 1000, 0);
        f.untrusted_log = Some("/tmp/b.log is not read: it is a symbolic link");
        let v = run_verdict(&f, LogView::EMPTY);
        assert_eq!(v.state, RunState::Unknown);
        assert!(
            v.reason
                .ends_with("of the request; /tmp/b.log is not read: it is a symbolic link"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn exit_code_wrapped_to_zero_is_still_failed() {
        let b = blocks(WRAPPED_256);
        let v = run_verdict(
            &facts(&exited(0)),
            LogView {
                blocks: &b,
                no_specs: None,
            },
        );
        assert_eq!(v.state, RunState::Failed);
        assert!(
            v.reason
                .contains("the runner exited 0; the log shows the failures"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn non_zero_exit_is_failed_and_no_specs_carries_the_hint() {
        let v = run_verdict(&facts(&exited(3)), LogView::EMPTY);
        assert_eq!(v, verdict(RunState::Failed, "runner exited with code 3"));
        let ns = NoSpecs {
            pattern: Some("cypress/e2e/x/*.cy.js".into()),
        };
        let v = run_verdict(
            &facts(&exited(1)),
            LogView {
                blocks: &[],
                no_specs: Some(&ns),
            },
        );
        assert_eq!(v.state, RunState::Failed);
        assert!(
            v.reason.contains("re-run the template step") && v.reason.contains("cypress/e2e/x"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn cancel_wins_over_everything() {
        let runner = exited(1);
        let mut f = facts(&runner);
        f.cancelled_at = Some(t(50).wall);
        assert_eq!(run_verdict(&f, LogView::EMPTY).state, RunState::Cancelled);
        let r = RunnerFacts::Exited {
            exit_code: None,
            signal: Some(15),
            stop_signal: Some(15),
            cancel_requested: true,
            at: t(9),
        };
        assert_eq!(
            run_verdict(&facts(&r), LogView::EMPTY).state,
            RunState::Cancelled
        );
    }

    #[test]
    fn signals_and_vanishing_are_terminated() {
        let killed = fixtures::killed(9);
        let v = run_verdict(&facts(&killed), LogView::EMPTY);
        assert_eq!(v.state, RunState::Terminated);
        assert!(v.reason.contains("SIGKILL"));
        // A stop from outside is TERMINATED even if the command then exited with a code.
        let stopped = RunnerFacts::Exited {
            exit_code: Some(1),
            signal: None,
            stop_signal: Some(15),
            cancel_requested: false,
            at: t(9),
        };
        assert_eq!(
            run_verdict(&facts(&stopped), LogView::EMPTY).state,
            RunState::Terminated
        );
        let gone = RunnerFacts::Vanished {
            pid: 42,
            rebooted: false,
        };
        assert_eq!(
            run_verdict(&facts(&gone), LogView::EMPTY).state,
            RunState::Terminated
        );
    }

    const CANCELED: &str = "  (Run Starting)\n  (Run Finished)\n  ┌──┐\n  │ ✔  a.cy.js   00:01   1   1   -   -   - │\n  └──┘\n    -  The run was canceled   00:01   1   1   -   -   -  \n";
    const CANCELED_AFTER_FAILURE: &str = "  (Run Starting)\n  (Run Finished)\n  ┌──┐\n  │ ✖  a.cy.js   00:01   2   1   1   -   - │\n  └──┘\n    -  The run was canceled   00:01   2   1   1   -   -  \n";

    #[test]
    fn a_cypress_cloud_cancel_posts_only_after_failures_whatever_the_exit_code() {
        let before = blocks(CANCELED);
        let after = blocks(CANCELED_AFTER_FAILURE);
        let view = |b| LogView {
            blocks: b,
            no_specs: None,
        };
        for code in [0, 1, 3] {
            let runner = exited(code);
            let v = run_verdict(&facts(&runner), view(&before));
            assert_eq!(v.state, RunState::Cancelled, "exit {code}: {}", v.reason);
            assert!(v.reason.contains("Cypress Cloud"), "{}", v.reason);
            let v = run_verdict(&facts(&runner), view(&after));
            assert_eq!(v.state, RunState::Failed, "exit {code}");
            assert!(
                v.reason
                    .contains("cancelled in Cypress Cloud after failures")
                    && v.reason.contains("1 of 1 specs failed (1 failing test)"),
                "{}",
                v.reason
            );
        }
        let gone = RunnerFacts::FallbackGone;
        assert_eq!(
            run_verdict(&facts(&gone), view(&before)).state,
            RunState::Cancelled
        );
        assert_eq!(
            finished_subrun_verdict(&before[0]).state,
            RunState::Cancelled
        );
        assert_eq!(finished_subrun_verdict(&after[0]).state, RunState::Failed);
    }

    #[test]
    fn a_log_that_is_not_the_whole_output_is_unknown_unless_the_runner_says_more() {
        let b = blocks(PASSED);
        let log = LogView {
            blocks: &b,
            no_specs: None,
        };
        let gap = "the runner could not write the run log";
        fn judged(runner: &RunnerFacts, log: LogView, gap: &str) -> Verdict {
            let mut f = facts(runner);
            f.log_gap = Some(gap);
            run_verdict(&f, log)
        }
        let with_gap = |runner: &RunnerFacts| judged(runner, log, gap);
        let v = with_gap(&exited(0));
        assert_eq!((v.state, v.reason.as_str()), (RunState::Unknown, gap));
        assert_eq!(with_gap(&exited(2)).state, RunState::Unknown);
        let cancelled = RunnerFacts::Exited {
            exit_code: Some(0),
            signal: None,
            stop_signal: None,
            cancel_requested: true,
            at: t(9),
        };
        assert_eq!(with_gap(&cancelled).state, RunState::Cancelled);
        let killed = fixtures::killed(9);
        assert_eq!(with_gap(&killed).state, RunState::Terminated);
        let stopped = RunnerFacts::Exited {
            exit_code: Some(0),
            signal: None,
            stop_signal: Some(15),
            cancel_requested: false,
            at: t(9),
        };
        assert_eq!(with_gap(&stopped).state, RunState::Terminated);
        // While the runner lives the run is watched, and the reason says what is wrong.
        let v = with_gap(&RunnerFacts::Alive { pid: 7 });
        assert_eq!(v.state, RunState::Watching);
        assert!(v.reason.ends_with(&format!("; {gap}")), "{}", v.reason);
    }

    #[test]
    fn the_next_deadline_is_the_window_that_time_alone_can_close() {
        // facts(): requested at 0, now 100, last activity 90; start timeout 900 s, hang 90
        // min, grace 120 s.
        let none = RunnerFacts::NotYet;
        assert_eq!(
            next_deadline(&facts(&none), false, None),
            Some(Duration::from_secs(800))
        );
        let alive = RunnerFacts::Alive { pid: 7 };
        assert_eq!(
            next_deadline(&facts(&alive), true, None),
            Some(Duration::from_secs(90 * 60 - 10))
        );
        let ended = exited(0);
        assert_eq!(next_deadline(&facts(&ended), false, Some(&t(95))), None);
        assert_eq!(
            next_deadline(&facts(&ended), true, Some(&t(95))),
            Some(Duration::from_secs(115))
        );
        assert_eq!(next_deadline(&facts(&ended), true, None), None);
        // Past due: at once.
        let mut late = facts(&none);
        late.now = t(1000);
        assert_eq!(next_deadline(&late, false, None), Some(Duration::ZERO));
    }

    #[test]
    fn hang_and_start_timeout() {
        let alive = RunnerFacts::Alive { pid: 7 };
        let mut f = facts(&alive);
        assert_eq!(run_verdict(&f, LogView::EMPTY).state, RunState::Watching);
        f.now = t(90 + 90 * 60);
        let v = run_verdict(&f, LogView::EMPTY);
        assert_eq!(v.state, RunState::Hung);
        assert!(
            v.reason.contains(&t(90).to_string()),
            "reason names the last activity: {}",
            v.reason
        );
        let none = RunnerFacts::NotYet;
        let mut f = facts(&none);
        assert_eq!(run_verdict(&f, LogView::EMPTY).state, RunState::Starting);
        f.now = t(900);
        assert_eq!(run_verdict(&f, LogView::EMPTY).state, RunState::Unknown);
    }

    #[test]
    fn a_fallback_run_is_judged_by_the_last_cypress_run_of_its_log() {
        let gone = RunnerFacts::FallbackGone;
        // A wrapper's retry: the first attempt cut off, the second finished.
        let retried = blocks(&format!(
            "  (Run Starting)\n  Running:  a.cy.js   (1 of 2)\n{PASSED}"
        ));
        assert_eq!(retried.len(), 2);
        let log = LogView {
            blocks: &retried,
            no_specs: None,
        };
        assert_eq!(run_verdict(&facts(&gone), log).state, RunState::Completed);
        // The other way round: the last one was cut off.
        let cut = blocks(&format!(
            "{PASSED}  (Run Starting)\n  Running:  a.cy.js   (1 of 2)\n"
        ));
        let log = LogView {
            blocks: &cut,
            no_specs: None,
        };
        assert_eq!(run_verdict(&facts(&gone), log).state, RunState::Terminated);
    }

    #[test]
    fn fallback_runs_are_judged_by_their_log() {
        let b = blocks(PASSED);
        let gone = RunnerFacts::FallbackGone;
        assert_eq!(
            run_verdict(
                &facts(&gone),
                LogView {
                    blocks: &b,
                    no_specs: None
                }
            )
            .state,
            RunState::Completed
        );
        assert_eq!(
            run_verdict(&facts(&gone), LogView::EMPTY).state,
            RunState::Terminated
        );
    }

    #[test]
    fn parent_summaries() {
        let ok = verdict(RunState::Completed, "all specs passed");
        assert_eq!(
            parent_summary(&ok, &[RunState::Completed, RunState::Failed]).state,
            RunState::Failed
        );
        assert_eq!(
            parent_summary(&ok, &[RunState::Completed; 3]).state,
            RunState::Completed
        );
        let term = verdict(RunState::Terminated, "killed");
        assert_eq!(
            parent_summary(&term, &[RunState::Completed]).state,
            RunState::Terminated
        );
        let failed = verdict(RunState::Failed, "runner exited with code 1");
        assert_eq!(parent_summary(&failed, &[]), failed);
    }

    /// A finished block with `rows` summary rows, `failed_specs` of them failing with one
    /// failing test each.
    fn finished_block(rows: u32, failed_specs: u32) -> String {
        let mut s = String::from("  (Run Starting)\n  (Run Finished)\n  ┌──┐\n");
        for i in 0..rows {
            let (mark, failing) = if i < failed_specs {
                ('✖', "1")
            } else {
                ('✔', "-")
            };
            s.push_str(&format!(
                "  │ {mark}  s{i}.cy.js   00:01   2   1   {failing}   -   - │\n"
            ));
        }
        let footer = if failed_specs > 0 {
            format!("✖  {failed_specs} of {rows} failed (50%)")
        } else {
            "✔  All specs passed!".to_string()
        };
        s.push_str(&format!(
            "  └──┘\n    {footer}   00:05   {}   {}   {}   -   -  \n",
            2 * rows,
            2 * rows - failed_specs,
            failed_specs
        ));
        s
    }

    #[test]
    fn failures_add_up_specs_and_tests_over_every_block() {
        let log = format!("{}{}", finished_block(2, 1), finished_block(3, 2));
        let b = blocks(&log);
        let v = run_verdict(
            &facts(&exited(3)),
            LogView {
                blocks: &b,
                no_specs: None,
            },
        );
        assert_eq!(
            v.reason,
            "runner exited with code 3: 3 of 5 specs failed (3 failing tests)"
        );
        // A passing block counts its rows among the specs.
        let log = format!("{}{}", finished_block(4, 0), finished_block(3, 1));
        let b = blocks(&log);
        let v = run_verdict(
            &facts(&exited(1)),
            LogView {
                blocks: &b,
                no_specs: None,
            },
        );
        assert_eq!(
            v.reason,
            "runner exited with code 1: 1 of 7 specs failed (1 failing test)"
        );
        // Failures seen before any summary: no spec tally to give.
        let cut = "  (Run Starting)\n  (Run Finished)\n  ┌──┐\n  │ ✖  a.cy.js   00:01   1   -   1   -   - │\n";
        let b = blocks(cut);
        let v = run_verdict(
            &facts(&exited(1)),
            LogView {
                blocks: &b,
                no_specs: None,
            },
        );
        assert_eq!(
            v.reason,
            "runner exited with code 1: failing tests in the run log"
        );
    }

    #[test]
    fn completed_reasons_say_whether_cypress_summarised() {
        let b = blocks(PASSED);
        let with = run_verdict(
            &facts(&exited(0)),
            LogView {
                blocks: &b,
                no_specs: None,
            },
        );
        assert_eq!(with, verdict(RunState::Completed, "all specs passed"));
        let without = run_verdict(&facts(&exited(0)), LogView::EMPTY);
        assert_eq!(
            without,
            verdict(
                RunState::Completed,
                "runner exited 0 (no Cypress output in the log)"
            )
        );
    }

    #[test]
    fn exit_zero_with_a_cypress_run_cut_off_before_its_summary_is_failed() {
        let cut = blocks("  (Run Starting)\n  Running:  a.cy.js   (1 of 2)\n");
        assert!(!cut.is_empty() && !cut[0].is_finished());
        let log = LogView {
            blocks: &cut,
            no_specs: None,
        };
        assert_eq!(
            run_verdict(&facts(&exited(0)), log),
            verdict(
                RunState::Failed,
                "runner exited 0 but the Cypress run did not finish (no summary in the log)"
            )
        );
    }

    #[test]
    fn progress_says_where_the_run_is() {
        assert_eq!(
            progress(LogView::EMPTY),
            "runner started; waiting for Cypress output"
        );
        let starting = blocks("  (Run Starting)\n");
        assert_eq!(
            progress(LogView {
                blocks: &starting,
                no_specs: None
            }),
            "Cypress run starting"
        );
        let running = blocks("  (Run Starting)\n  Running:  a.cy.js   (3 of 20)\n");
        assert_eq!(
            progress(LogView {
                blocks: &running,
                no_specs: None
            }),
            "running spec 3 of 20: a.cy.js"
        );
        let done = blocks(PASSED);
        assert_eq!(
            progress(LogView {
                blocks: &done,
                no_specs: None
            }),
            "Cypress run finished; waiting for the runner to exit"
        );
    }

    #[test]
    fn the_parent_summary_tallies_its_sub_runs() {
        let ok = verdict(RunState::Completed, "all specs passed");
        let v = parent_summary(
            &ok,
            &[RunState::Completed, RunState::Failed, RunState::Completed],
        );
        assert_eq!(
            v,
            verdict(
                RunState::Failed,
                "3 sub-runs: 2 completed, 1 failed; runner: all specs passed"
            )
        );
        let v = parent_summary(&ok, &[RunState::Completed, RunState::Terminated]);
        assert_eq!(
            v,
            verdict(RunState::Completed, "2 sub-runs: 1 completed, 0 failed")
        );
        let failed_runner = verdict(RunState::Failed, "runner exited with code 1");
        assert_eq!(
            parent_summary(&failed_runner, &[RunState::Completed]),
            verdict(
                RunState::Failed,
                "1 sub-run: 1 completed, 0 failed; runner: runner exited with code 1"
            )
        );
        let hung = verdict(RunState::Hung, "no activity");
        assert_eq!(
            parent_summary(&hung, &[RunState::Failed]).reason,
            "no activity; 1 sub-run: 0 completed, 1 failed"
        );
    }

    #[test]
    fn total_counts_sum_the_blocks_summaries() {
        assert_eq!(total_counts(&[]), None);
        let log = format!("{}{}", finished_block(2, 1), finished_block(3, 0));
        let c = total_counts(&blocks(&log)).expect("counts");
        assert_eq!((c.tests, c.passed, c.failed), (10, 9, 1));
    }

    #[test]
    fn only_an_unposted_result_may_still_be_cancelled() {
        use RunState::*;
        assert!(transition_allowed(Watching, false, false, Failed));
        assert!(transition_allowed(Starting, false, false, Cancelled));
        assert!(transition_allowed(Completed, true, false, Cancelled));
        assert!(transition_allowed(Failed, true, false, Failed));
        assert!(!transition_allowed(Completed, true, true, Cancelled));
        assert!(!transition_allowed(Completed, true, false, Failed));
        assert!(!transition_allowed(Terminated, true, false, Cancelled));
        assert!(!transition_allowed(Cancelled, true, false, Watching));
    }
}
