//! The run's records and every change made to them: the run's own [`State`] and, for a
//! categorized run, one [`State`] per sub-run. Decisions come in from [`crate::decide`];
//! what must be posted as a result comes back as a [`Target`]. Every change of state goes
//! through [`set`], which refuses what [`decide::transition_allowed`] forbids, so a final
//! result is never rewritten after the fact.

use crate::decide::{self, Verdict, categorized::Plan};
use atvm_common::cypress::{LogSummary, RunBlock};
use atvm_common::logging;
use atvm_common::state::{Counts, Post, PostStatus, RunState, State, SubRunSummary};
use serde_json::Value;

/// Which result a post (or a message) is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The run itself.
    Run,
    /// Sub-run `i` (log order) of a categorized run.
    Sub(usize),
}

/// The run's state and its sub-runs' states, as the watcher keeps them between saves.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub state: State,
    pub subruns: Vec<State>,
    pub categorized: bool,
}

impl RunRecord {
    pub fn state_of(&self, target: Target) -> &State {
        match target {
            Target::Run => &self.state,
            Target::Sub(i) => &self.subruns[i],
        }
    }

    pub fn state_of_mut(&mut self, target: Target) -> &mut State {
        match target {
            Target::Run => &mut self.state,
            Target::Sub(i) => &mut self.subruns[i],
        }
    }

    pub fn post_of(&mut self, target: Target) -> &mut Post {
        &mut self.state_of_mut(target).post
    }

    /// A plain run: its counts, and its state (ending it when the verdict is terminal).
    pub fn apply_plain(&mut self, v: Verdict, counts: Option<Counts>) -> Option<Target> {
        self.state.counts = counts;
        if v.state.is_terminal() {
            self.finish_run(v)
        } else {
            set(&mut self.state, v);
            None
        }
    }

    /// A categorized run: start, update and end sub-runs as planned, then the parent.
    /// Returns the results to post, in order.
    pub fn apply_categorized(&mut self, plan: Plan, summary: &LogSummary) -> Vec<Target> {
        for new in &plan.start {
            let mut sub = State::new(
                &self.state.build_name,
                &self.state.run_id,
                RunState::Watching,
                "Cypress run started",
            );
            sub.key = Some(new.key.clone());
            sub.group = new.group.clone();
            logging::info(format!(
                "{}: sub-run {} started",
                self.state.build_name, new.key
            ));
            self.subruns.push(sub);
        }
        for (sub, block) in self.subruns.iter_mut().zip(&summary.runs) {
            if !sub.is_final {
                sub.counts = block.counts();
                sub.reason = decide::categorized::subrun_progress(block);
            }
        }
        let mut targets = Vec::new();
        for (i, v) in plan.finish {
            if let Some(block) = summary.runs.get(i) {
                targets.extend(self.finish_subrun(i, v, block));
            }
        }
        if plan.summarised {
            self.state.counts = decide::total_counts(&summary.runs);
        }
        if plan.parent.state.is_terminal() {
            targets.extend(self.finish_run(plan.parent));
        } else {
            set(&mut self.state, plan.parent);
        }
        targets
    }

    /// Make the run final; sub-runs still open end with it. The run's own result is owed
    /// (`pending`) when postable — for a categorized run only when the runner failed before
    /// any sub-run started (otherwise its sub-runs did the posting).
    pub fn finish_run(&mut self, v: Verdict) -> Option<Target> {
        let postable = v.state.is_postable()
            && (!self.categorized || (self.subruns.is_empty() && v.state == RunState::Failed));
        if !set(&mut self.state, v) {
            return None;
        }
        self.end_open_subruns();
        if postable {
            // Owed from this moment on, in the same save as the final state: a stop (or a
            // kill) before the delivery starts cannot lose it.
            self.state.post.status = PostStatus::Pending;
            return Some(Target::Run);
        }
        if self.state.post.status == PostStatus::None && !self.categorized {
            self.state.post.status = PostStatus::Suppressed;
        }
        None
    }

    /// End sub-run `i` by `v`; its result is owed (`pending`) when postable.
    fn finish_subrun(&mut self, i: usize, v: Verdict, block: &RunBlock) -> Option<Target> {
        let sub = &mut self.subruns[i];
        let what = format!("sub-run {} ", sub.key.as_deref().unwrap_or_default());
        log_change(&sub.build_name, &what, sub.state, &v);
        let postable = v.state.is_postable();
        sub.state = v.state;
        sub.reason = v.reason;
        sub.is_final = true;
        sub.counts = block.counts();
        note_flaky(sub, u64::from(block.flaky_total));
        if let Some(url) = block.url() {
            sub.details
                .insert("run_url".into(), Value::String(url.to_string()));
        }
        if postable {
            sub.post.status = PostStatus::Pending;
            Some(Target::Sub(i))
        } else {
            sub.post.status = PostStatus::Suppressed;
            None
        }
    }

    /// A cancel (its marker): the run ends CANCELLED unless its own result was posted,
    /// open sub-runs end with it, and no owed post of the run or of a sub-run is ever sent.
    /// A run that already ended unposted (TERMINATED, say) keeps its state.
    pub fn cancel(&mut self) {
        let s = &self.state;
        let posted = s.post.status == PostStatus::Posted;
        if decide::transition_allowed(s.state, s.is_final, posted, RunState::Cancelled) {
            if self.state.post.status == PostStatus::Pending {
                self.state.post.status = PostStatus::Suppressed;
            }
            self.finish_run(Verdict {
                state: RunState::Cancelled,
                reason: "cancelled with cancel-atvm-run-watcher".into(),
            });
        }
        for sub in &mut self.subruns {
            if sub.post.status == PostStatus::Pending {
                sub.post.status = PostStatus::Suppressed;
            }
        }
    }

    /// The run has ended: sub-runs still open end with it, in its state, never posted.
    fn end_open_subruns(&mut self) {
        let (state, reason) = (self.state.state, self.state.reason.clone());
        for sub in self.subruns.iter_mut().filter(|s| !s.is_final) {
            sub.state = state;
            sub.is_final = true;
            sub.reason = format!("run ended: {reason}");
            sub.post.status = PostStatus::Suppressed;
        }
    }

    /// Another tool ended the run (`written` is what it recorded, found under the state
    /// lock): take its verdict, end open sub-runs with it, and owe nothing.
    pub fn ended_elsewhere(&mut self, written: &State) {
        let v = Verdict {
            state: written.state,
            reason: written.reason.clone(),
        };
        log_change(&self.state.build_name, "", self.state.state, &v);
        self.state.state = written.state;
        self.state.reason = written.reason.clone();
        self.state.is_final = true;
        self.state.post = written.post.clone();
        self.end_open_subruns();
        if written.state == RunState::Cancelled {
            // Nothing owed goes out after a cancel, a finished sub-run's post included.
            self.cancel();
        }
    }

    /// The results whose post failed for good (never re-sent), with their error.
    pub fn failed_for_good(&self) -> Vec<(Target, String)> {
        let targets = std::iter::once(Target::Run).chain((0..self.subruns.len()).map(Target::Sub));
        targets
            .filter_map(|t| {
                let post = &self.state_of(t).post;
                (post.status == PostStatus::Failed)
                    .then(|| (t, post.last_error.clone().unwrap_or_default()))
            })
            .collect()
    }

    /// The results whose post is owed (every start of the watcher delivers them first).
    pub fn owed(&self) -> Vec<Target> {
        let run = (self.state.post.status == PostStatus::Pending).then_some(Target::Run);
        let subs = self
            .subruns
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state.is_postable() && s.post.status == PostStatus::Pending)
            .map(|(i, _)| Target::Sub(i));
        run.into_iter().chain(subs).collect()
    }

    /// The sub-runs as listed in the parent's `state.json`.
    pub fn summaries(&self) -> Option<Vec<SubRunSummary>> {
        self.categorized.then(|| {
            self.subruns
                .iter()
                .map(|s| SubRunSummary {
                    key: s.key.clone().unwrap_or_default(),
                    group: s.group.clone(),
                    state: s.state,
                    counts: s.counts,
                    post: s.post.clone(),
                })
                .collect()
        })
    }

    /// Known sub-runs' final states (`None` while open), for the categorized rules.
    pub fn subrun_states(&self) -> Vec<Option<RunState>> {
        self.subruns
            .iter()
            .map(|s| s.is_final.then_some(s.state))
            .collect()
    }

    /// A short label for log lines: `COMPLETED` or `sub-run 01-linux FAILED`.
    pub fn label(&self, target: Target) -> String {
        let s = self.state_of(target);
        match target {
            Target::Run => s.state.to_string(),
            Target::Sub(_) => format!(
                "sub-run {} {}",
                s.key.as_deref().unwrap_or_default(),
                s.state
            ),
        }
    }
}

/// Log a change of state; the abnormal ends (TERMINATED, HUNG, UNKNOWN) at warning
/// priority, so `journalctl -p warning` shows them (docs/watcher-service.md).
fn log_change(build: &str, what: &str, from: RunState, v: &Verdict) {
    let line = format!("{build}: {what}{from} → {} ({})", v.state, v.reason);
    match v.state {
        RunState::Terminated | RunState::Hung | RunState::Unknown => logging::warn(line),
        _ => logging::info(line),
    }
}

/// Change `record` to `v` if [`decide::transition_allowed`] admits it; `false` (and a
/// warning) when it does not. Logs every actual change of state.
pub fn set(record: &mut State, v: Verdict) -> bool {
    let posted = record.post.status == PostStatus::Posted;
    if !decide::transition_allowed(record.state, record.is_final, posted, v.state) {
        logging::warn(format!(
            "{}: refusing to change the final state {} to {} ({})",
            record.build_name, record.state, v.state, v.reason
        ));
        return false;
    }
    if record.state != v.state {
        log_change(&record.build_name, "", record.state, &v);
    }
    record.state = v.state;
    record.reason = v.reason;
    record.is_final = v.state.is_terminal();
    true
}

/// `details.flaky` of a result — the tests that passed only on a retry, where
/// `atvm-run-status` reads them — raised to `n`: the log's count while it runs, the post's
/// (the log's and the reports') once composed. Never lowered: within one run it only grows.
pub fn note_flaky(state: &mut State, n: u64) {
    let before = state.details.get("flaky").and_then(Value::as_u64);
    if before.is_none_or(|b| b < n) {
        state.details.insert("flaky".into(), Value::from(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(categorized: bool) -> RunRecord {
        RunRecord {
            state: State::new("b", "r", RunState::Watching, "watching"),
            subruns: Vec::new(),
            categorized,
        }
    }

    fn v(state: RunState) -> Verdict {
        Verdict {
            state,
            reason: state.to_string(),
        }
    }

    #[test]
    fn a_final_state_is_never_rewritten() {
        let mut r = record(false);
        assert_eq!(
            r.apply_plain(v(RunState::Completed), None),
            Some(Target::Run)
        );
        assert!(!set(&mut r.state, v(RunState::Failed)));
        assert!(!set(&mut r.state, v(RunState::Watching)));
        assert_eq!(r.state.state, RunState::Completed);
        // ... except that a result not yet posted may still be cancelled.
        assert!(set(&mut r.state, v(RunState::Cancelled)));
        let mut posted = record(false);
        posted.apply_plain(v(RunState::Failed), None);
        posted.state.post.status = PostStatus::Posted;
        assert!(!set(&mut posted.state, v(RunState::Cancelled)));
    }

    #[test]
    fn unposted_ends_are_suppressed_and_postable_ends_are_targets() {
        let mut r = record(false);
        assert_eq!(r.apply_plain(v(RunState::Terminated), None), None);
        assert_eq!(r.state.post.status, PostStatus::Suppressed);
        let mut r = record(false);
        assert_eq!(r.apply_plain(v(RunState::Watching), None), None);
        assert_eq!(r.state.post.status, PostStatus::None);
    }

    #[test]
    fn a_categorized_parent_posts_only_a_failure_before_any_sub_run() {
        let mut r = record(true);
        assert_eq!(r.finish_run(v(RunState::Completed)), None);
        assert_eq!(r.state.post.status, PostStatus::None);
        let mut r = record(true);
        assert_eq!(r.finish_run(v(RunState::Failed)), Some(Target::Run));
        let mut r = record(true);
        r.subruns.push(State::new("b", "r", RunState::Watching, ""));
        assert_eq!(r.finish_run(v(RunState::Failed)), None);
        assert_eq!(r.subruns[0].state, RunState::Failed);
        assert!(r.subruns[0].is_final);
        assert_eq!(r.subruns[0].post.status, PostStatus::Suppressed);
    }

    #[test]
    fn a_cancel_suppresses_every_owed_post_but_keeps_what_was_posted() {
        let mut r = record(true);
        let mut pending = State::new("b", "r", RunState::Completed, "all specs passed");
        pending.post.status = PostStatus::Pending;
        let mut posted = State::new("b", "r", RunState::Failed, "1 failed");
        posted.post.status = PostStatus::Posted;
        r.subruns = vec![
            posted,
            pending,
            State::new("b", "r", RunState::Watching, ""),
        ];
        assert_eq!(r.owed(), [Target::Sub(1)]);
        r.cancel();
        assert_eq!(r.state.state, RunState::Cancelled);
        assert_eq!(r.subruns[0].post.status, PostStatus::Posted);
        assert_eq!(r.subruns[1].state, RunState::Completed, "its result stands");
        assert_eq!(r.subruns[1].post.status, PostStatus::Suppressed);
        assert_eq!(r.subruns[2].state, RunState::Cancelled);
        assert!(r.owed().is_empty());
    }

    #[test]
    fn a_cancel_leaves_a_posted_or_unposted_ended_run_as_it_is() {
        let mut r = record(false);
        r.apply_plain(v(RunState::Completed), None);
        r.state.post.status = PostStatus::Posted;
        r.cancel();
        assert_eq!(r.state.state, RunState::Completed);
        let mut r = record(false);
        r.apply_plain(v(RunState::Terminated), None);
        r.cancel();
        assert_eq!(r.state.state, RunState::Terminated);
        let mut r = record(false);
        r.apply_plain(v(RunState::Failed), None);
        r.state.post.status = PostStatus::Pending;
        assert_eq!(r.owed(), [Target::Run]);
        r.cancel();
        assert_eq!(
            (r.state.state, r.state.post.status),
            (RunState::Cancelled, PostStatus::Suppressed)
        );
    }

    fn summary_of(log: &str) -> LogSummary {
        let mut p = atvm_common::cypress::LogParser::new();
        p.feed(log.as_bytes());
        p.summary().clone()
    }

    #[test]
    fn a_plan_starts_finishes_and_summarises_sub_runs() {
        let log = "  (Run Starting)\n  ┌────┐\n  │ Params:   Group: linux, Parallel: false │\n  └────┘\n  Running:  a.cy.js   (1 of 1)\n  (Run Finished)\n  ┌──┐\n  │ ✔  a.cy.js   00:01   1   1   -   -   - │\n  └──┘\n    ✔  All specs passed!   00:01   1   1   -   -   -  \n  (Run Starting)\n  ┌────┐\n  │ Params:   Group: win, Parallel: false │\n  └────┘\n  Running:  b.cy.js   (1 of 3)\n";
        let s = summary_of(log);
        let mut r = record(true);
        let plan = Plan {
            start: vec![
                crate::decide::categorized::NewSubRun {
                    index: 0,
                    key: "01-linux".into(),
                    group: Some("linux".into()),
                },
                crate::decide::categorized::NewSubRun {
                    index: 1,
                    key: "02-win".into(),
                    group: Some("win".into()),
                },
            ],
            finish: vec![(0, v(RunState::Completed))],
            finished_seen: vec![0],
            runner_inactive_since: None,
            parent: v(RunState::Watching),
            summarised: false,
        };
        assert_eq!(r.apply_categorized(plan, &s), [Target::Sub(0)]);
        assert_eq!(r.subrun_states(), [Some(RunState::Completed), None]);
        assert_eq!(r.subruns[1].reason, "running spec 1 of 3: b.cy.js");
        assert_eq!(r.subruns[0].counts.map(|c| c.tests), Some(1));
        assert_eq!(
            r.subruns[0].reason, "COMPLETED",
            "a final sub-run's reason is kept"
        );
        let list = r.summaries().expect("categorized");
        assert_eq!(
            list.iter().map(|x| x.key.as_str()).collect::<Vec<_>>(),
            ["01-linux", "02-win"]
        );
        assert_eq!(r.label(Target::Sub(0)), "sub-run 01-linux COMPLETED");
        assert_eq!(r.label(Target::Run), "WATCHING");
        r.post_of(Target::Sub(1)).attempts = 3;
        assert_eq!(r.subruns[1].post.attempts, 3);
        assert_eq!(record(false).summaries(), None);
    }
}
