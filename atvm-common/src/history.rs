//! Earlier runs of a build name (docs/watcher-service.md, "What a post tells"): what a post
//! compares with, and the small summary each finished run keeps for the runs after it.
//!
//! Every finished result (the run, or each group of a categorized run) is written to
//! `summary.json` in the run's state directory ([`RunSummary`]); the directory is archived
//! whole by the next start, and the archive's pruning keeps these files longer than the
//! bulky ones (see [`crate::state`]). A post then compares with the *previous finished
//! run* — COMPLETED or FAILED — of the same build name, or for a group with that run's
//! group of the same name:
//! - each failed test is **new** (it passed or did not run last time) or **again**, with
//!   the number of finished runs in a row it has failed ([`Failure::streak`], carried from
//!   run to run, so it needs only the previous summary) — or **again?** when the previous
//!   summary's list was cut ([`MAX_FAILURES_KEPT`]) and does not name it: it may have been
//!   among the failures not kept, so it is not claimed new;
//! - the tests that failed last time and pass now are **fixed**: a test only when this
//!   run's reports show it passed (not one that is pending, skipped or gone), a failure
//!   known only at spec level when its spec's row passes in the log's summary. Failures
//!   the previous summary did not keep are counted apart, never called fixed or not;
//! - the duration's change, and the last runs as ✔/✖ marks with a sparkline.
//!
//! A test is its spec and full title. A failure known only from the log (a failing spec
//! without a report) is the spec alone and compares at spec level. Specs match when one
//! path ends with the other on a `/` boundary (Cypress prints them relative to the specs'
//! root, reporters relative to the project).
//!
//! Everything here but [`read`] is pure: the same summaries give the same marks, whenever
//! and however often a watcher composes the post.

use crate::fsutil;
use crate::state::RunState;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The summary file in a run's state directory (and in its archive).
pub const SUMMARY_FILE: &str = "summary.json";
/// Failed tests a summary keeps per result: enough to compare; the file stays small.
pub const MAX_FAILURES_KEPT: usize = 100;
/// Groups a summary keeps (a categorized run with more is cut, latest groups first lost).
pub const MAX_GROUPS_KEPT: usize = 50;
/// Earlier runs in `Last runs`.
pub const LAST_RUNS: usize = 10;
/// Fixed tests a post names.
pub const FIXED_NAMED: usize = 5;

/// A failed test as the history keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub spec: String,
    /// The full title; `None` when only the log knew of the failure (spec level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    /// Finished runs in a row this test has failed, this one included.
    #[serde(default = "one")]
    pub streak: u32,
}

fn one() -> u32 {
    1
}

/// How one result (a run, or a group) ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub state: RunState,
    /// From the boot clock where known (a wall-clock step does not change it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<Failure>,
    /// All failed tests, when more than `failed` lists.
    #[serde(default)]
    pub failed_total: usize,
}

impl Outcome {
    fn finished(&self) -> bool {
        self.state.is_postable()
    }
}

/// One group's outcome in a categorized run's summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOutcome {
    /// The group's name (`Group:` in Cypress's header), or the sub-run's key without one.
    pub group: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// `summary.json`: a finished run as later runs see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub build_name: String,
    pub run_id: String,
    /// When the run started (the wall clock names the day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// The run's own result (a plain run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Outcome>,
    /// Each group's result (a categorized run), in the order they finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupOutcome>,
}

impl RunSummary {
    /// The outcome of the run (`group` None) or of its group `group`.
    pub fn outcome(&self, group: Option<&str>) -> Option<&Outcome> {
        match group {
            None => self.run.as_ref(),
            Some(g) => self
                .groups
                .iter()
                .find(|o| o.group == g)
                .map(|o| &o.outcome),
        }
    }

    /// Record `outcome` for the run or its group (replacing an earlier record of it: a
    /// result composed again after a restart writes the same).
    pub fn set(&mut self, group: Option<&str>, mut outcome: Outcome) {
        outcome.failed.truncate(MAX_FAILURES_KEPT);
        match group {
            None => self.run = Some(outcome),
            Some(g) => match self.groups.iter().position(|o| o.group == g) {
                Some(i) => self.groups[i].outcome = outcome,
                None if self.groups.len() < MAX_GROUPS_KEPT => self.groups.push(GroupOutcome {
                    group: g.to_string(),
                    outcome,
                }),
                None => {}
            },
        }
    }
}

/// An earlier finished result, as a post shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Earlier<'a> {
    pub started_at: Option<Timestamp>,
    pub outcome: &'a Outcome,
}

/// The finished results of `group` (or of the runs themselves) in `summaries` (newest
/// first), newest first.
pub fn finished<'a>(summaries: &'a [RunSummary], group: Option<&str>) -> Vec<Earlier<'a>> {
    summaries
        .iter()
        .filter_map(|s| {
            s.outcome(group)
                .filter(|o| o.finished())
                .map(|outcome| Earlier {
                    started_at: s.started_at,
                    outcome,
                })
        })
        .collect()
}

/// How a failed test of this run compares with the previous finished run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// It passed or did not run last time (or there is no last time).
    New,
    /// It failed last time too: the finished runs in a row it has failed, this one included.
    Again(u32),
    /// Not among the failures the previous run's summary kept, but that list was cut: it
    /// may have failed then too (shown `again?`). Its streak starts again at 1.
    Unknown,
}

/// This run's failed tests against the previous finished run's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// One per failure of this run, in its order.
    pub marks: Vec<Mark>,
    /// This run's failures with their streaks, for its own summary.
    pub failed: Vec<Failure>,
    /// Failed last time and pass now, at most [`FIXED_NAMED`].
    pub fixed: Vec<Failure>,
    pub fixed_total: usize,
    /// Failures of the previous run its summary did not keep: whether they pass now is
    /// not known, so they are neither fixed nor not.
    pub not_compared: usize,
}

/// Does report path `a` name the same spec as `b` (one ends with the other on a `/`)?
pub fn same_spec(a: &str, b: &str) -> bool {
    let norm = |p: &str| {
        p.trim()
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string()
    };
    let (a, b) = (norm(a), norm(b));
    let (long, short) = if a.len() >= b.len() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    !short.is_empty()
        && long
            .strip_suffix(short.as_str())
            .is_some_and(|head| head.is_empty() || head.ends_with('/'))
}

/// The same failure: the same spec, and the same test when both know it (a spec-level
/// failure compares with any failure of its spec).
fn same_failure(a: &Failure, b: &Failure) -> bool {
    same_spec(&a.spec, &b.spec)
        && match (&a.test, &b.test) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

/// What this run knows of itself for [`compare`].
#[derive(Clone, Debug, Default)]
pub struct Now<'a> {
    /// Its failed tests (streaks ignored), in the order the post lists them.
    pub failed: &'a [Failure],
    /// Whether `failed` is every failure of the run.
    pub complete: bool,
    /// Tests its reports show passing (and none failing) — of those that failed last
    /// time, at least: nothing else is asked.
    pub passed: &'a [Failure],
    /// The specs whose row in the log's summary passed.
    pub passed_specs: &'a [String],
    /// The specs that failed.
    pub failing: &'a [String],
}

/// Compare this run with the previous finished one (`None`: there is none).
pub fn compare(previous: Option<&Outcome>, now: &Now) -> Comparison {
    let mut out = Comparison::default();
    // The previous list was cut: a failure it does not name may be one it left out.
    let cut = previous.is_some_and(|p| p.failed_total > p.failed.len());
    for f in now.failed {
        let earlier = previous.and_then(|p| p.failed.iter().find(|e| same_failure(f, e)));
        let streak = earlier.map_or(1, |e| e.streak.saturating_add(1));
        out.marks.push(match earlier {
            Some(_) => Mark::Again(streak),
            None if cut => Mark::Unknown,
            None => Mark::New,
        });
        out.failed.push(Failure {
            streak,
            ..f.clone()
        });
    }
    let Some(previous) = previous else {
        return out;
    };
    out.not_compared = previous.failed_total.saturating_sub(previous.failed.len());
    for e in previous.failed.iter().filter(|e| fixed(e, now)) {
        out.fixed_total += 1;
        if out.fixed.len() < FIXED_NAMED {
            out.fixed.push(e.clone());
        }
    }
    out
}

/// Did `e`, a failure of the previous run, pass now? A test: this run's reports show it
/// passing — a test that is pending now, or no longer there, did not pass. A failure known
/// only at spec level: its spec's row passed in the log's summary. Either way not when
/// this run failed it; and where this run's own list of failures is cut, not in a spec
/// that failed (it may be among the failures not listed).
fn fixed(e: &Failure, now: &Now) -> bool {
    let passed = match &e.test {
        Some(_) => now
            .passed
            .iter()
            .any(|p| same_failure(p, e) && p.test.is_some()),
        None => now.passed_specs.iter().any(|s| same_spec(s, &e.spec)),
    };
    let failing = now.failing.iter().any(|s| same_spec(s, &e.spec));
    passed && !now.failed.iter().any(|f| same_failure(f, e)) && (now.complete || !failing)
}

/// `1 more failed test`, `20 more failed tests`: the previous run's failures its summary
/// did not keep.
pub fn plural_failures(n: usize) -> String {
    match n {
        1 => "1 more failed test".to_string(),
        n => format!("{n} more failed tests"),
    }
}

/// `+12% vs 2026-12-04`: this duration against the previous finished run's.
pub fn duration_change(now_ms: u64, previous: &Earlier) -> Option<String> {
    let before = previous.outcome.duration_ms.filter(|&b| b > 0)?;
    let pct = (now_ms as f64 - before as f64) / before as f64 * 100.0;
    let pct = pct.round() as i64;
    let sign = if pct > 0 {
        "+"
    } else if pct < 0 {
        "−"
    } else {
        "±"
    };
    let day = previous.started_at.map_or_else(
        || "the last run".to_string(),
        |t| t.to_string().chars().take(10).collect(),
    );
    Some(format!("{sign}{}% vs {day}", pct.abs()))
}

/// The `Last runs` field: up to [`LAST_RUNS`] earlier finished results (`earlier` newest
/// first) and this one, oldest first, as ✔/✖ marks and a sparkline of their durations
/// (`·` where a duration is unknown).
pub fn last_runs(earlier: &[Earlier], now: &Outcome) -> String {
    let mut runs: Vec<&Outcome> = earlier.iter().take(LAST_RUNS).map(|e| e.outcome).collect();
    runs.reverse();
    runs.push(now);
    let marks: String = runs
        .iter()
        .map(|o| match o.state {
            RunState::Completed => '✔',
            _ => '✖',
        })
        .collect();
    let durations: Vec<Option<u64>> = runs.iter().map(|o| o.duration_ms).collect();
    format!("{marks} {}", sparkline(&durations))
}

/// `▁▂▃▄▅▆▇█`, each bar the value's share of the longest (from zero, so runs that took
/// about as long look about as tall); `·` for an unknown one.
pub fn sparkline(values: &[Option<u64>]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let Some(&hi) = values.iter().flatten().max() else {
        return values.iter().map(|_| '·').collect();
    };
    values
        .iter()
        .map(|v| match v {
            None => '·',
            Some(_) if hi == 0 => BARS[0],
            Some(v) => BARS[((u128::from(*v) * 7 + u128::from(hi) / 2) / u128::from(hi)) as usize],
        })
        .collect()
}

/// The summaries of the runs archived in `base` (`<state-root>/.archive/<build>`), newest
/// first, at most `limit`. A summary that is missing or cannot be read is skipped (a run
/// archived before summaries existed has none): history is a help, never a reason to fail
/// a post.
pub fn read(base: &Path, limit: usize) -> Vec<RunSummary> {
    crate::state::archived_summaries(base)
        .into_iter()
        .rev()
        .filter_map(|path| fsutil::read_json::<RunSummary>(&path).ok().flatten())
        .take(limit)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(spec: &str, test: Option<&str>, streak: u32) -> Failure {
        Failure {
            spec: spec.into(),
            test: test.map(str::to_string),
            streak,
        }
    }

    fn outcome(state: RunState, ms: Option<u64>, failed: Vec<Failure>) -> Outcome {
        Outcome {
            state,
            duration_ms: ms,
            failed_total: failed.len(),
            failed,
        }
    }

    #[test]
    fn specs_match_on_a_slash_boundary_whichever_way_round() {
        assert!(same_spec("cypress/e2e/login.cy.js", "login.cy.js"));
        assert!(same_spec("login.cy.js", "cypress/e2e/login.cy.js"));
        assert!(same_spec("./a/b.cy.js", "/a/b.cy.js"));
        assert!(!same_spec("cypress/e2e/relogin.cy.js", "login.cy.js"));
        assert!(!same_spec("", "login.cy.js"));
    }

    #[test]
    fn new_again_with_streaks_and_fixed() {
        let before = outcome(
            RunState::Failed,
            Some(1000),
            vec![
                f("cypress/e2e/login.cy.js", Some("Login rejects"), 2),
                f("cypress/e2e/cart.cy.js", Some("Cart empties"), 1),
                f("area13.cy.js", None, 1),
                f("cypress/e2e/gone.cy.js", Some("Gone"), 4),
                f("area20.cy.js", None, 1),
            ],
        );
        let failed = [
            f("login.cy.js", Some("Login rejects"), 0),
            f("cypress/e2e/login.cy.js", Some("Login locks"), 0),
            f("cypress/e2e/area13.cy.js", Some("Area 13 works"), 0),
        ];
        // The reports show cart's test passing; area20's row passed in the log.
        let passed = [f("cypress/e2e/cart.cy.js", Some("Cart empties"), 0)];
        let passed_specs: Vec<String> = vec!["cart.cy.js".into(), "area20.cy.js".into()];
        let failing: Vec<String> = ["login.cy.js", "area13.cy.js"].map(String::from).into();
        let now = Now {
            failed: &failed,
            complete: true,
            passed: &passed,
            passed_specs: &passed_specs,
            failing: &failing,
        };
        let c = compare(Some(&before), &now);
        assert_eq!(c.marks, [Mark::Again(3), Mark::New, Mark::Again(2)]);
        assert_eq!(
            c.failed.iter().map(|x| x.streak).collect::<Vec<_>>(),
            [3, 1, 2]
        );
        // gone.cy.js did not run, so it is not "fixed".
        assert_eq!(
            c.fixed,
            [
                f("cypress/e2e/cart.cy.js", Some("Cart empties"), 1),
                f("area20.cy.js", None, 1)
            ]
        );
        assert_eq!((c.fixed_total, c.not_compared), (2, 0));
    }

    #[test]
    fn a_test_pending_or_gone_now_is_not_fixed_though_its_spec_passed() {
        let before = outcome(
            RunState::Failed,
            None,
            vec![f("cypress/e2e/login.cy.js", Some("Login rejects"), 1)],
        );
        // login.cy.js passed whole in the log, but no report shows the test passing: it is
        // pending (`it.skip`) or was removed.
        let passed_specs: Vec<String> = vec!["login.cy.js".into()];
        let now = Now {
            complete: true,
            passed_specs: &passed_specs,
            ..Now::default()
        };
        let c = compare(Some(&before), &now);
        assert_eq!((c.fixed_total, c.fixed.len()), (0, 0));
        // A spec-level failure of the last run is fixed by its row passing.
        let before = outcome(RunState::Failed, None, vec![f("login.cy.js", None, 1)]);
        assert_eq!(compare(Some(&before), &now).fixed_total, 1);
    }

    #[test]
    fn after_a_cut_list_an_unlisted_failure_is_again_maybe_and_the_rest_is_not_compared() {
        // The last run failed 120 tests; its summary kept 100 (s01…s25, four each).
        let kept: Vec<Failure> = (1..=25)
            .flat_map(|s| {
                (1..=4).map(move |t| f(&format!("s{s:02}.cy.js"), Some(&format!("T{t}")), 1))
            })
            .collect();
        let mut before = outcome(RunState::Failed, None, kept.clone());
        before.failed_total = 120;
        // This run fails s30's four (not kept last time) and one of s01's (kept).
        let mut failed: Vec<Failure> = (1..=4)
            .map(|t| f("s30.cy.js", Some(&format!("T{t}")), 0))
            .collect();
        failed.push(f("s01.cy.js", Some("T1"), 0));
        let passed: Vec<Failure> = kept[1..].to_vec();
        let failing: Vec<String> = vec!["s30.cy.js".into(), "s01.cy.js".into()];
        let now = Now {
            failed: &failed,
            complete: true,
            passed: &passed,
            failing: &failing,
            ..Now::default()
        };
        let c = compare(Some(&before), &now);
        assert_eq!(
            c.marks,
            [vec![Mark::Unknown; 4], vec![Mark::Again(2)]].concat()
        );
        assert_eq!(c.failed[0].streak, 1);
        assert_eq!((c.fixed_total, c.not_compared), (99, 20));
    }

    #[test]
    fn the_first_run_marks_everything_new_and_fixes_nothing() {
        let failed = [f("a.cy.js", Some("A"), 0)];
        let c = compare(
            None,
            &Now {
                failed: &failed,
                complete: true,
                ..Now::default()
            },
        );
        assert_eq!(c.marks, [Mark::New]);
        assert!(c.fixed.is_empty() && c.fixed_total == 0);
    }

    #[test]
    fn a_cut_list_of_failures_fixes_only_tests_of_specs_that_passed_whole() {
        let before = outcome(
            RunState::Failed,
            None,
            vec![f("a.cy.js", Some("A1"), 1), f("b.cy.js", Some("B1"), 1)],
        );
        let failed = [f("a.cy.js", Some("A2"), 0)];
        let passed = [f("a.cy.js", Some("A1"), 0), f("b.cy.js", Some("B1"), 0)];
        let failing: Vec<String> = vec!["a.cy.js".into()];
        let now = Now {
            failed: &failed,
            complete: false,
            passed: &passed,
            failing: &failing,
            ..Now::default()
        };
        let c = compare(Some(&before), &now);
        assert_eq!(
            c.fixed,
            [f("b.cy.js", Some("B1"), 1)],
            "A1 may be among the failures not listed"
        );
    }

    #[test]
    fn only_finished_results_count_and_groups_are_their_own_history() {
        let mut older = RunSummary {
            run_id: "r1".into(),
            ..RunSummary::default()
        };
        older.set(
            Some("linux"),
            outcome(RunState::Failed, Some(5), vec![f("x.cy.js", None, 1)]),
        );
        older.set(
            Some("windows"),
            outcome(RunState::Completed, Some(7), vec![]),
        );
        let mut newer = RunSummary {
            run_id: "r2".into(),
            ..RunSummary::default()
        };
        newer.set(Some("linux"), outcome(RunState::Terminated, None, vec![]));
        newer.set(None, outcome(RunState::Completed, Some(9), vec![]));
        let summaries = [newer, older];
        let linux = finished(&summaries, Some("linux"));
        assert_eq!(linux.len(), 1, "TERMINATED is not a finished run");
        assert_eq!(linux[0].outcome.failed[0].spec, "x.cy.js");
        assert_eq!(finished(&summaries, Some("windows")).len(), 1);
        assert_eq!(finished(&summaries, None).len(), 1);
        let mut s = RunSummary::default();
        s.set(
            Some("g"),
            outcome(
                RunState::Failed,
                None,
                (0..200).map(|i| f(&i.to_string(), None, 1)).collect(),
            ),
        );
        s.set(Some("g"), outcome(RunState::Failed, None, vec![]));
        assert_eq!(s.groups.len(), 1, "set again replaces");
        s.set(
            None,
            outcome(
                RunState::Failed,
                None,
                (0..200).map(|i| f(&i.to_string(), None, 1)).collect(),
            ),
        );
        assert_eq!(
            s.run.as_ref().map(|o| o.failed.len()),
            Some(MAX_FAILURES_KEPT)
        );
    }

    #[test]
    fn duration_change_and_last_runs() {
        let before = outcome(RunState::Failed, Some(100_000), vec![]);
        let e = Earlier {
            started_at: Timestamp::parse("2026-12-04T10:00:00Z"),
            outcome: &before,
        };
        assert_eq!(
            duration_change(112_000, &e).as_deref(),
            Some("+12% vs 2026-12-04")
        );
        assert_eq!(
            duration_change(50_000, &e).as_deref(),
            Some("−50% vs 2026-12-04")
        );
        assert_eq!(
            duration_change(100_000, &e).as_deref(),
            Some("±0% vs 2026-12-04")
        );
        let unknown = outcome(RunState::Failed, None, vec![]);
        assert_eq!(
            duration_change(
                1,
                &Earlier {
                    started_at: None,
                    outcome: &unknown
                }
            ),
            None
        );
        let runs: Vec<Outcome> = [
            (RunState::Completed, Some(20)),
            (RunState::Failed, Some(80)),
            (RunState::Completed, None),
        ]
        .into_iter()
        .map(|(s, d)| outcome(s, d, vec![]))
        .collect();
        // newest first, as `finished` gives them
        let earlier: Vec<Earlier> = runs
            .iter()
            .rev()
            .map(|o| Earlier {
                started_at: None,
                outcome: o,
            })
            .collect();
        let now = outcome(RunState::Failed, Some(50), vec![]);
        assert_eq!(last_runs(&earlier, &now), "✔✖✔✖ ▃█·▅");
        let many: Vec<Earlier> = (0..15)
            .map(|_| Earlier {
                started_at: None,
                outcome: &before,
            })
            .collect();
        assert_eq!(
            last_runs(&many, &now)
                .split(' ')
                .next()
                .map(|m| m.chars().count()),
            Some(LAST_RUNS + 1)
        );
        assert_eq!(sparkline(&[Some(3), Some(3)]), "██");
        assert_eq!(sparkline(&[Some(1000), Some(1100), Some(0)]), "▇█▁");
        assert_eq!(sparkline(&[None]), "·");
    }
}
