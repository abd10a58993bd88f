//! The watch loop. Each poll is one pass of observe → decide → apply → save → deliver:
//! [`crate::observe`] reads the runner, the log and the reports; [`crate::decide`] says what
//! state that is; [`crate::record`] applies it to the run's records; [`crate::persist`]
//! writes them if they changed; [`crate::deliver`] posts every result that became due.
//! A result is posted exactly once: its payload is kept beside its state before the first
//! attempt, and `posted.marker` is written only after Mattermost answered `ok`. Between
//! passes the watcher waits in [`crate::wake`] (events, its deadlines, the safety net);
//! `watch/posts.rs` composes and delivers the posts, `watch/history.rs` compares them with
//! the build's earlier runs.

use crate::clock;
use crate::ctx::Ctx;
use crate::decide::{self, Facts, LogView, Timing, categorized};
use crate::observe::{Observation, Observer};
use crate::persist::{self, Checkpoint, Store};
use crate::record::{RunRecord, Target};
use crate::shutdown::Shutdown;
use crate::wake::{Targets, Wake, Woken};
use atvm_common::error::{Error, Result};
use atvm_common::state::{Request, RunState, State};
use atvm_common::{BuildName, Paths, failpoint, logging};
use serde_json::json;
use std::time::Duration;

pub use crate::deliver::Sink;

mod history;
mod posts;

#[derive(Debug)]
pub struct Watcher<'a> {
    ctx: Ctx<'a>,
    record: RunRecord,
    cp: Checkpoint,
    observer: Observer,
    store: Store,
    /// Errors of posts that failed for good during this watch.
    failed_posts: Vec<String>,
    /// What wakes the watcher between looks.
    wake: Wake,
    /// Time until the next deadline of the run's own (start timeout, hang, grace).
    deadline: Option<Duration>,
}

impl<'a> Watcher<'a> {
    /// Start fresh, or resume from `state.json` when it belongs to this request.
    pub fn resume(
        paths: Paths,
        build: BuildName,
        request: Request,
        timing: Timing,
        sink: Sink,
        shutdown: &'a Shutdown,
    ) -> Result<Watcher<'a>> {
        let sd = paths.state_dir(&build);
        Watcher::with_ctx(Ctx {
            paths,
            sd,
            build,
            request,
            timing,
            sink,
            shutdown,
            clock: &clock::SYSTEM,
        })
    }

    /// A watcher working in `ctx` (tests pass their own clock there).
    pub fn with_ctx(ctx: Ctx<'a>) -> Result<Watcher<'a>> {
        let (record, cp, store) = persist::load(&ctx)?;
        Ok(Watcher {
            observer: Observer::resume(&ctx, &cp),
            ctx,
            record,
            cp,
            store,
            failed_posts: Vec::new(),
            wake: Wake::new(),
            deadline: None,
        })
    }

    /// Deliver what is owed, watch until the run is final (or once), then report whether
    /// every post went out.
    pub fn run(&mut self, once: bool) -> Result<()> {
        // At every start, before anything else: posts still owed, final run or not.
        self.deliver_owed()?;
        while !self.record.state.is_final && !self.ctx.shutdown.requested() {
            self.poll()?;
            if self.record.state.is_final || once || !self.sleep() {
                break;
            }
        }
        if self.ctx.shutdown.requested() {
            self.stopped()?;
        }
        self.save_final()?;
        if self.ctx.shutdown.requested() && !self.record.state.is_final {
            logging::info(format!(
                "stopped by signal; state {} saved, not final",
                self.record.state.state
            ));
        }
        if self.ctx.sink.is_dry_run() {
            logging::info(format!(
                "dry run: {} would be {} ({}); nothing was written (post.json only for a result due now)",
                self.ctx.build, self.record.state.state, self.record.state.reason
            ));
        }
        match self.failed_posts.last() {
            Some(error) => Err(Error::failed(format!(
                "Mattermost delivery failed for good: {error}"
            ))),
            None => Ok(()),
        }
    }

    pub fn state(&self) -> &State {
        &self.record.state
    }

    /// One evaluation. (Public for the benchmark probe, which times single polls.)
    pub fn poll(&mut self) -> Result<()> {
        let Some(obs) = self.observer.observe(&self.ctx, &mut self.cp)? else {
            return Ok(());
        };
        self.wake.track(&Targets {
            state_dir: self.ctx.sd.path().to_path_buf(),
            reporter_dir: self.ctx.paths.reporter_dir.clone(),
            // Before a hand-started runner is adopted, its log's usual path: its writes are
            // what make the watcher look again and adopt it.
            log: self
                .cp
                .log_path
                .clone()
                .or_else(|| Some(self.ctx.paths.run_log(&self.ctx.build))),
            runner: obs.runner_id,
        });
        let due = self.decide_and_apply(&obs);
        let due = self.quiet(due);
        let timing = self.ctx.timing;
        self.deadline = decide::next_deadline(
            &facts(&obs, &self.ctx.request, &timing),
            self.record.categorized,
            self.cp.runner_inactive_since.as_ref(),
        );
        self.save_or_warn()?;
        if !due.is_empty() {
            failpoint::pause("watch.decided");
        }
        self.deliver(&due)
    }

    /// Wait for the next look (an event, a deadline, the safety net); false on a stop.
    fn sleep(&mut self) -> bool {
        let woken = self
            .wake
            .wait(self.ctx.shutdown, self.ctx.timing.poll, self.deadline);
        woken != Woken::Stop
    }

    /// Stopped by a signal: if the cancel helper asked for it, the run (and open sub-runs)
    /// end CANCELLED and owed posts are never sent; if a start helper ended the run (its
    /// runner could not start), its verdict is taken and logged; otherwise everything is
    /// left for a restart.
    fn stopped(&mut self) -> Result<()> {
        if persist::cancelled_at(&self.ctx.sd, &self.ctx.request)?.is_some() {
            self.record.cancel();
        } else if !self.record.state.is_final
            && let Some(ended) = persist::ended_elsewhere(&self.ctx.sd, &self.ctx.request)?
        {
            self.record.ended_elsewhere(&ended);
        }
        Ok(())
    }

    /// Decide on what was observed and apply it to the records; returns the results that
    /// are now due for posting.
    fn decide_and_apply(&mut self, obs: &Observation) -> Vec<Target> {
        self.note_details(obs);
        let timing = self.ctx.timing;
        let facts = facts(obs, &self.ctx.request, &timing);
        if let Some(error) = &obs.log_error
            && obs.cancelled_at.is_none()
        {
            // Inputs that cannot be read, or an earlier runner's log that is gone (what the
            // log's groups are cannot be told any more): UNKNOWN, with the file named; a
            // cancel still ends the run CANCELLED.
            let v = decide::Verdict {
                state: RunState::Unknown,
                reason: error.clone(),
            };
            return self.record.finish_run(v).into_iter().collect();
        }
        let summary = self.cp.parser.summary().clone();
        if !self.record.categorized {
            let verdict = decide::run_verdict(&facts, LogView::whole(&summary));
            let counts =
                decide::total_counts(&summary.runs).or_else(|| self.observer.reporter_counts());
            return self
                .record
                .apply_plain(verdict, counts)
                .into_iter()
                .collect();
        }
        let plan = categorized::plan(
            &facts,
            &summary,
            &self.record.subrun_states(),
            self.cp.runner_inactive_since.clone(),
        );
        self.cp.runner_inactive_since = plan.runner_inactive_since.clone();
        self.cp
            .subrun_keys
            .extend(plan.start.iter().map(|n| n.key.clone()));
        for &i in &plan.finished_seen {
            self.cp
                .finished_seen
                .resize(summary.runs.len().max(i + 1), None);
            self.cp.finished_seen[i].get_or_insert(obs.now.wall);
        }
        self.record.apply_categorized(plan, &summary)
    }

    /// Operator-facing details in `state.json`: runner pid, last activity, log, run URL,
    /// progress.
    fn note_details(&mut self, obs: &Observation) {
        let d = &mut self.record.state.details;
        let pid = match &obs.runner {
            decide::RunnerFacts::Alive { pid } | decide::RunnerFacts::Vanished { pid, .. } => {
                Some(*pid)
            }
            _ => None,
        };
        d.insert("runner_pid".into(), json!(pid));
        d.insert("last_activity".into(), json!(obs.last_activity.to_string()));
        if let Some(p) = &self.cp.log_path {
            d.insert("log".into(), json!(p));
        }
        let summary = self.cp.parser.summary();
        if let Some(url) = summary.runs.iter().rev().find_map(|b| b.url()) {
            d.insert("run_url".into(), json!(url));
        }
        if let Some(cur) = summary.runs.last().and_then(|b| b.current.as_ref()) {
            d.insert(
                "progress".into(),
                json!(format!("{} of {}: {}", cur.index, cur.total, cur.spec)),
            );
        }
        // The log's flaky tests so far (and a categorized run's groups' as their posts
        // counted them, reports included).
        if !summary.runs.is_empty() {
            let log: u64 = summary.runs.iter().map(|b| u64::from(b.flaky_total)).sum();
            let groups: u64 = (self.record.subruns.iter())
                .filter_map(|s| s.details.get("flaky").and_then(|v| v.as_u64()))
                .sum();
            crate::record::note_flaky(&mut self.record.state, log.max(groups));
        }
    }

    fn save(&mut self) -> Result<()> {
        self.store.save(&self.ctx, &mut self.record, &self.cp)
    }

    /// Save between polls. A full disk is not the end of the watch: the records stay in
    /// memory and the next poll writes them again. Any other failure (no permission, a
    /// read-only file system) does not clear by waiting: it ends the watcher with the file
    /// named, rather than leave it watching with nothing recorded.
    fn save_or_warn(&mut self) -> Result<()> {
        match self.save() {
            Err(e) if e.is_transient() => {
                logging::warn(format!("cannot save the state yet; will try again: {e}"));
                Ok(())
            }
            other => other,
        }
    }

    /// The last save: tried again while the disk is full, until it works or a stop request
    /// gives up. Giving up loses nothing: what was sent is recorded by `posted.marker` or
    /// `failed.marker` (renamed into place, no space needed), a post not sent stays owed,
    /// and the next start writes the state from them. So a stop is a clean exit (0), not
    /// the exit 1 that means a post failed for good.
    fn save_final(&mut self) -> Result<()> {
        let mut said = false;
        loop {
            match self.save() {
                Ok(()) => return Ok(()),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => {
                    if !said {
                        logging::warn(format!("cannot save the final state yet: {e}"));
                        said = true;
                    }
                    if !self.ctx.shutdown.sleep(std::time::Duration::from_secs(2)) {
                        logging::error(format!(
                            "stopped before the state could be saved ({e}); the next start writes it from the post markers and sends nothing twice"
                        ));
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// What one evaluation knows, from an observation.
fn facts<'o>(obs: &'o Observation, request: &Request, timing: &'o Timing) -> Facts<'o> {
    Facts {
        now: obs.now.clone(),
        requested: request.requested(),
        cancelled_at: obs.cancelled_at,
        runner: &obs.runner,
        last_activity: obs.last_activity.clone(),
        timing,
        untrusted_log: obs.untrusted_log.as_deref(),
        log_gap: obs.log_gap.as_deref(),
    }
}
