//! What a post says about a result: assembled from a borrowed [`Input`] (the result's
//! record, its part of the log, the failed and flaky tests the reports name, the run's VMs,
//! the earlier runs of the build name) into the whole webhook [`Payload`] by
//! `atvm_common::mattermost`, with the result's [`Outcome`] for the runs after it (the
//! history: atvm_common::history). Pure: the watcher gathers the input.

use atvm_common::BuildName;
use atvm_common::Timestamp;
use atvm_common::cypress::{RunBlock, SpecRow};
use atvm_common::history::{self, Earlier, Failure, Now, Outcome, RunSummary};
use atvm_common::inventory::Vm;
use atvm_common::mattermost::message::Trend;
use atvm_common::mattermost::{Format, MAX_FAILURES_SHOWN, Message, Payload};
use atvm_common::reporter::{FailedTest, FlakyTest, SpecSet, Summary};
use atvm_common::state::{Request, State};
use atvm_common::time::human_duration;
use std::time::Duration;

/// Everything a message about one result is made of.
#[derive(Debug)]
pub struct Input<'a> {
    pub build: &'a BuildName,
    pub request: &'a Request,
    /// The result: the run's state or a sub-run's.
    pub record: &'a State,
    /// The result's part of the log: every block of the run, or the sub-run's one.
    pub blocks: &'a [RunBlock],
    /// Failed (and flaky) tests the reports name for this result.
    pub reported: Summary,
    /// Of the tests the previous finished result failed, those this result's reports show
    /// passing: the only ones "fixed" may name at test level.
    pub passed: Vec<Failure>,
    /// How long the run took, from the boot clock where it is known; `None` for a sub-run,
    /// whose duration is the one Cypress printed in its footer.
    pub duration: Option<Duration>,
    /// Start and end shown in the footer (the run's runner, or the sub-run's block).
    pub started: Option<Timestamp>,
    pub ended: Option<Timestamp>,
    pub vms: &'a [Vm],
    pub host: &'a str,
    pub channel: Option<&'a str>,
    pub format: Format,
    /// The run log's path, for the footer.
    pub log: Option<&'a str>,
    /// The summaries of earlier runs of the build name, newest first.
    pub earlier: &'a [RunSummary],
    /// `MATTERMOST_ATVM_MENTION`.
    pub mention: Option<&'a str>,
}

/// A composed post, and what the history keeps of its result.
#[derive(Debug)]
pub struct Composed {
    pub payload: Payload,
    pub outcome: Outcome,
    /// The flaky tests the post counts (the log's and the reports'), for `state.json`.
    pub flaky: u64,
}

/// The payload posted for `input`, and the result's outcome.
pub fn compose(input: Input) -> Composed {
    let all = failures(&input);
    let failures_total = failures_total(&input, all.len());
    let duration = input.duration.or_else(|| footer_duration(input.blocks));
    let (trend, outcome) = trend(&input, &all, failures_total, duration);
    let listed: Vec<FailedTest> = all.into_iter().take(MAX_FAILURES_SHOWN).collect();
    let (flaky, flaky_total) = flaky(&input);
    let run_url = input.blocks.iter().rev().find_map(|b| b.url());
    let message = Message {
        state: input.record.state,
        build: input.build.as_str(),
        group: input.record.group.as_deref(),
        reason: &input.record.reason,
        request: input.request,
        counts: input.record.counts,
        duration: duration.map(human_duration),
        vms: input.vms.iter().collect(),
        run_url,
        failures: &listed,
        failures_total,
        host: input.host,
        started: input.started,
        ended: input.ended,
        log: input.log,
        flaky,
        flaky_total,
        trend: Some(&trend),
        mention: input.mention,
    };
    Composed {
        payload: Payload::build(&message, input.channel, input.format),
        outcome,
        flaky: flaky_total as u64,
    }
}

/// The name the history knows a result by: the group (or the sub-run's key), or `None`
/// for the run itself.
pub fn history_name(record: &State) -> Option<&str> {
    record.group.as_deref().or(record.key.as_deref())
}

/// This result against the earlier finished runs (or groups), and its outcome with the
/// streak of each failure.
fn trend(
    input: &Input,
    all: &[FailedTest],
    failures_total: usize,
    duration: Option<Duration>,
) -> (Trend, Outcome) {
    let earlier = history::finished(input.earlier, history_name(input.record));
    // The reports' failures come first; after them, the failing specs the log names
    // without a report, known at spec level only.
    let reported = input.reported.failures.len();
    let failed: Vec<Failure> = all
        .iter()
        .enumerate()
        .map(|(i, f)| Failure {
            spec: f.spec.clone(),
            test: (i < reported).then(|| f.full_title.clone()),
            streak: 0,
        })
        .collect();
    let (passed_specs, failing) = passed_and_failing(input, all);
    let now = Now {
        failed: &failed,
        complete: failed.len() >= failures_total,
        passed: &input.passed,
        passed_specs: &passed_specs,
        failing: &failing,
    };
    let compared = history::compare(earlier.first().map(|e| e.outcome), &now);
    let outcome = Outcome {
        state: input.record.state,
        duration_ms: duration.map(|d| d.as_millis() as u64),
        failed: compared.failed,
        failed_total: failures_total,
    };
    let first = earlier.is_empty();
    // The first run has nothing to compare with and says so instead of marks; its `Last
    // runs` is this run alone (the field shows the earlier runs "and this one").
    let trend = Trend {
        marks: if first { Vec::new() } else { compared.marks },
        fixed: compared.fixed,
        fixed_total: compared.fixed_total,
        not_compared: compared.not_compared,
        first,
        duration_change: outcome
            .duration_ms
            .zip(earlier.first())
            .and_then(|(ms, e): (u64, &Earlier)| history::duration_change(ms, e)),
        last_runs: Some(history::last_runs(&earlier, &outcome)),
    };
    (trend, outcome)
}

/// The specs whose row in this result's summary passed (a spec-level failure of the last
/// run is fixed only by such a row), and those that failed.
fn passed_and_failing(input: &Input, all: &[FailedTest]) -> (Vec<String>, Vec<String>) {
    let passed = input
        .blocks
        .iter()
        .flat_map(|b| &b.spec_rows)
        .filter(|r| r.mark == '✔' && !r.is_failing())
        .map(|r| r.spec.clone())
        .collect();
    let failing = input
        .blocks
        .iter()
        .flat_map(|b| &b.spec_rows)
        .filter(|r| r.is_failing())
        .map(|r| r.spec.clone())
        .chain(all.iter().map(|f| f.spec.clone()))
        .collect();
    (passed, failing)
}

/// The flaky tests: the log's (its `(Attempt N of M)` lines) and the reports' (those that
/// record attempts), a test both name counted once.
fn flaky(input: &Input) -> (Vec<FlakyTest>, usize) {
    let from_log = input.blocks.iter().flat_map(|b| &b.flaky);
    let mut named: Vec<FlakyTest> = from_log
        .map(|f| FlakyTest {
            spec: f.spec.clone(),
            title: f.title.clone(),
        })
        .collect();
    let mut total: usize = input.blocks.iter().map(|b| b.flaky_total as usize).sum();
    for r in &input.reported.flaky {
        let same =
            |l: &FlakyTest| history::same_spec(&l.spec, &r.spec) && r.title.ends_with(&l.title);
        match named.iter().position(same) {
            // The report knows the full title.
            Some(i) => named[i] = r.clone(),
            None => {
                named.push(r.clone());
                total += 1;
            }
        }
    }
    let unnamed = input
        .reported
        .flaky_total
        .saturating_sub(input.reported.flaky.len());
    (named, total + unnamed)
}

/// The failed tests: the ones the reports name, then each failing spec of the log's
/// summary table that no report covers (a spec whose report was never written must not
/// vanish into "and N more"). The message lists the first [`MAX_FAILURES_SHOWN`]; the
/// history keeps more.
fn failures(input: &Input) -> Vec<FailedTest> {
    let mut listed = input.reported.failures.clone();
    listed.extend(unreported(input).map(|row| FailedTest {
        spec: row.spec.clone(),
        full_title: failing_tests(row.counts.failed),
        error: String::new(),
    }));
    listed.truncate(history::MAX_FAILURES_KEPT);
    listed
}

/// `1 failing test`, `3 failing tests` (a hook failure marks a spec but counts none).
fn failing_tests(n: u64) -> String {
    match n {
        0 => "failed (no test counted: a hook failed?)".to_string(),
        n => crate::decide::plural(n, "failing test"),
    }
}

/// The log's failing spec rows that no report of this result covers.
fn unreported<'a>(input: &'a Input) -> impl Iterator<Item = &'a SpecRow> + 'a {
    input
        .blocks
        .iter()
        .flat_map(|b| &b.spec_rows)
        .filter(|r| r.is_failing())
        .filter(|r| {
            let row = SpecSet::new([r.spec.as_str()]);
            !input.reported.specs.iter().any(|s| row.matches(s))
        })
}

/// How many tests failed in all: the log's summary is authoritative, the reports may know
/// more names than the message shows.
fn failures_total(input: &Input, listed: usize) -> usize {
    let unreported: usize = unreported(input)
        .map(|r| r.counts.failed.max(1) as usize)
        .sum();
    let named = input.reported.failures_total + unreported;
    let in_log = input.record.counts.map_or(0, |c| c.failed as usize);
    named.max(listed).max(in_log)
}

/// Sum of the blocks' footer durations (`MM:SS` or `H:MM:SS`).
pub fn footer_duration(blocks: &[RunBlock]) -> Option<Duration> {
    let mut secs = 0u64;
    let mut any = false;
    for d in blocks
        .iter()
        .filter_map(|b| b.footer.as_ref()?.duration.as_deref())
    {
        let parts: Option<Vec<u64>> = d.split(':').map(|p| p.parse().ok()).collect();
        if let Some(parts) = parts {
            secs += parts.iter().fold(0, |acc, p| acc * 60 + p);
            any = true;
        }
    }
    any.then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use atvm_common::cypress::LogParser;
    use atvm_common::state::{Counts, RunState};

    fn blocks(log: &str) -> Vec<RunBlock> {
        let mut p = LogParser::new();
        p.feed(log.as_bytes());
        p.summary().runs.clone()
    }

    const FAILED: &str = "  (Run Starting)\n  (Run Finished)\n  ┌──┐\n  │ ✖  login.cy.js   01:02   3   1   2   -   - │\n  │ ✔  home.cy.js   00:30   1   1   -   -   - │\n  └──┘\n    ✖  1 of 2 failed (50%)   01:32   4   2   2   -   -  \n";

    fn input<'a>(
        build: &'a BuildName,
        request: &'a Request,
        record: &'a State,
        blocks: &'a [RunBlock],
    ) -> Input<'a> {
        Input {
            build,
            request,
            record,
            blocks,
            reported: Summary::default(),
            passed: Vec::new(),
            duration: None,
            log: None,
            earlier: &[],
            mention: None,
            started: None,
            ended: None,
            vms: &[],
            host: "controller-1",
            channel: None,
            format: Format::Text,
        }
    }

    #[test]
    fn without_reports_the_log_names_the_failing_specs_and_the_footer_the_duration() {
        let b = blocks(FAILED);
        let build = BuildName::parse("b1").expect("valid");
        let request = Request::default();
        let mut record = State::new("b1", "r", RunState::Failed, "1 of 2 specs failed");
        record.counts = Some(Counts {
            tests: 4,
            passed: 2,
            failed: 2,
            ..Counts::default()
        });
        let i = input(&build, &request, &record, &b);
        let listed = failures(&i);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].spec, "login.cy.js");
        assert_eq!(listed[0].full_title, "2 failing tests");
        assert_eq!(failures_total(&i, listed.len()), 2, "the log's count wins");
        assert_eq!(footer_duration(&b), Some(Duration::from_secs(92)));
    }

    #[test]
    fn a_failing_spec_without_a_report_is_still_named() {
        let two = "  (Run Starting)\n  (Run Finished)\n  ┌──┐\n  │ ✖  login.cy.js   01:02   3   1   2   -   - │\n  │ ✖  area13.cy.js   00:30   1   -   1   -   - │\n  └──┘\n    ✖  2 of 2 failed (100%)   01:32   4   1   3   -   -  \n";
        let b = blocks(two);
        let build = BuildName::parse("b1").expect("valid");
        let request = Request::default();
        let mut record = State::new("b1", "r", RunState::Failed, "2 of 2 specs failed");
        record.counts = Some(Counts {
            tests: 4,
            passed: 1,
            failed: 3,
            ..Counts::default()
        });
        let mut i = input(&build, &request, &record, &b);
        i.reported = Summary {
            failures: vec![
                FailedTest {
                    spec: "cypress/e2e/login.cy.js".into(),
                    full_title: "Login rejects a bad password".into(),
                    error: "AssertionError".into(),
                },
                FailedTest {
                    spec: "cypress/e2e/login.cy.js".into(),
                    full_title: "Login locks the account".into(),
                    error: "AssertionError".into(),
                },
            ],
            failures_total: 2,
            reports: 1,
            specs: vec!["cypress/e2e/login.cy.js".into()],
            ..Summary::default()
        };
        let listed = failures(&i);
        let titles: Vec<(&str, &str)> = listed
            .iter()
            .map(|f| (f.spec.as_str(), f.full_title.as_str()))
            .collect();
        assert_eq!(
            titles,
            [
                ("cypress/e2e/login.cy.js", "Login rejects a bad password"),
                ("cypress/e2e/login.cy.js", "Login locks the account"),
                ("area13.cy.js", "1 failing test"),
            ]
        );
        assert_eq!(
            failures_total(&i, listed.len()),
            3,
            "nothing left for 'and N more'"
        );
    }

    #[test]
    fn reported_failures_are_listed_and_the_runner_s_times_give_the_duration() {
        let build = BuildName::parse("b1").expect("valid");
        let request = Request::default();
        let record = State::new("b1", "r", RunState::Failed, "x");
        let mut i = input(&build, &request, &record, &[]);
        i.reported = Summary {
            failures: vec![FailedTest {
                spec: "cypress/e2e/a.cy.js".into(),
                full_title: "A fails".into(),
                error: "boom".into(),
            }],
            failures_total: 12,
            ..Summary::default()
        };
        assert_eq!(failures_total(&i, 1), 12);
        i.duration = Some(Duration::from_millis(750_000));
        let text = compose(i).payload.to_json();
        assert!(
            text.contains("A fails — boom") && text.contains("12m 30s"),
            "{text}"
        );
    }
}
