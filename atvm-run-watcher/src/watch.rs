//! The watch loop: observe the runner, the log and the reporter directory, decide with
//! [`crate::decide`], persist to `state.json`, and hand postable results to delivery
//! exactly once.
//!
//! Persistence: `state.json` carries a checkpoint (log identity and offset, the parser's whole
//! state, the fallback runner, activity times) so a restarted watcher resumes exactly where
//! the last one stopped. `posted.marker` is written only after Mattermost answered `ok` and
//! is checked before any post, so a result is never posted twice.

use crate::decide::{self, Facts, LogView, RunnerFacts, Timing, Verdict};
use crate::shutdown::Shutdown;
use atvm_common::cypress::{LogParser, LogSummary, RunBlock};
use atvm_common::error::{Error, Result};
use atvm_common::follow::{FileId, FollowPoint, LogFollower};
use atvm_common::inventory::{self, Vm};
use atvm_common::mattermost::{self, Attempt, Delivery, Format, Hooks, Message, Payload, Poster};
use atvm_common::procfs::{self, ProcessId};
use atvm_common::reporter::{self, FailedTest, ReporterDir};
use atvm_common::state::{
    Counts, Post, PostStatus, Request, RunState, RunnerStatus, State, SubRunSummary,
};
use atvm_common::time::human_duration;
use atvm_common::{BuildName, Paths, StateDir, Timestamp, fsutil, logging};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The payload a postable result is delivered with, kept beside its `state.json`.
const PAYLOAD_FILE: &str = "payload.json";

/// Log bytes parsed between two checks for a stop request.
const READ_SLICE: u64 = 64 * 1024 * 1024;
/// Rescan every reporter file (not just on directory changes) this often.
const FULL_REPORTER_SCAN: Duration = Duration::from_secs(60);

/// Where results go: Mattermost, or `post.json` files with `--dry-run`.
#[derive(Clone, Debug)]
pub enum Sink {
    Mattermost {
        poster: Arc<dyn Poster>,
        channel: Option<String>,
        format: Format,
    },
    DryRun {
        channel: Option<String>,
        format: Format,
    },
}

impl Sink {
    fn channel(&self) -> Option<&str> {
        match self {
            Sink::Mattermost { channel, .. } | Sink::DryRun { channel, .. } => channel.as_deref(),
        }
    }

    fn format(&self) -> Format {
        match self {
            Sink::Mattermost { format, .. } | Sink::DryRun { format, .. } => *format,
        }
    }
}

/// The watcher's resume point, stored in `state.json` as `checkpoint`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    #[serde(default)]
    log_path: Option<PathBuf>,
    #[serde(default)]
    follow: Option<FollowPoint>,
    #[serde(default)]
    parser: LogParser,
    /// The log file found at the path before any runner existed (fallback runs): its old
    /// content belongs to an earlier run and is skipped.
    #[serde(default)]
    baseline: Option<FollowPoint>,
    #[serde(default)]
    baseline_taken: bool,
    /// A runner found by its command line (not started through start-atvm-runner).
    #[serde(default)]
    fallback: Option<ProcessId>,
    #[serde(default)]
    last_activity: Option<Timestamp>,
    /// Since when no runner has been active (categorized grace period).
    #[serde(default)]
    runner_inactive_since: Option<Timestamp>,
    /// When each block's `(Run Finished)` was first seen (assigns reporter files to
    /// sub-runs).
    #[serde(default)]
    finished_seen: Vec<Option<Timestamp>>,
}

/// What this poll learnt about the runner.
#[derive(Debug)]
struct RunnerObs {
    facts: RunnerFacts,
    status: Option<RunnerStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Run,
    Sub(usize),
}

#[derive(Debug)]
pub struct Watcher<'a> {
    sd: StateDir,
    paths: Paths,
    build: BuildName,
    request: Request,
    timing: Timing,
    sink: Sink,
    shutdown: &'a Shutdown,
    state: State,
    cp: Checkpoint,
    subruns: Vec<State>,
    follower: Option<LogFollower>,
    reporter: Option<ReporterDir>,
    last_full_scan: Option<std::time::Instant>,
    inventory: Option<Option<Vec<Vm>>>,
    runner_started_at: Option<Timestamp>,
    runner_exited_at: Option<Timestamp>,
    saved: Option<Saved>,
    failed_posts: Vec<String>,
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
        let mut state = State::new(
            build.as_str(),
            &request.run_id,
            RunState::Starting,
            "waiting for the runner to start",
        );
        let mut cp = Checkpoint::default();
        let mut subruns = Vec::new();
        match sd.read_state()? {
            Some(saved) if saved.run_id == request.run_id => {
                if let Some(v) = saved.checkpoint.clone() {
                    cp = serde_json::from_value(v).map_err(|e| {
                        Error::file(
                            format!("watcher checkpoint does not parse: {e}"),
                            sd.state(),
                        )
                    })?;
                }
                for summary in saved.subruns.iter().flatten() {
                    let path = sd.subrun_dir(&summary.key).join("state.json");
                    let sub: State = fsutil::read_json(&path)?.unwrap_or_else(|| {
                        let mut s = State::new(build.as_str(), &request.run_id, summary.state, "");
                        s.key = Some(summary.key.clone());
                        s.group = summary.group.clone();
                        s.counts = summary.counts;
                        s.post = summary.post.clone();
                        s
                    });
                    subruns.push(sub);
                }
                state = saved;
                state.checkpoint = None;
                logging::info(format!(
                    "resuming {} ({}, run {})",
                    build, state.state, request.run_id
                ));
            }
            Some(other) => logging::warn(format!(
                "state.json belongs to run {}, not to the requested run {}; starting afresh ({})",
                other.run_id,
                request.run_id,
                sd.state().display()
            )),
            None => {}
        }
        let follower = cp.log_path.as_ref().map(|p| LogFollower::new(p, cp.follow));
        Ok(Watcher {
            sd,
            paths,
            build,
            request,
            timing,
            sink,
            shutdown,
            state,
            cp,
            subruns,
            follower,
            reporter: None,
            last_full_scan: None,
            inventory: None,
            runner_started_at: None,
            runner_exited_at: None,
            saved: None,
            failed_posts: Vec::new(),
        })
    }

    /// Watch until the run is final (or once), then report whether every post went out.
    pub fn run(&mut self, once: bool) -> Result<()> {
        if self.state.is_final {
            self.retry_unfinished_posts()?;
        } else {
            loop {
                self.poll()?;
                if self.state.is_final || once || self.shutdown.requested() {
                    break;
                }
                if !self.shutdown.sleep(self.timing.poll) {
                    break;
                }
            }
        }
        if self.shutdown.requested() && !self.state.is_final {
            if self.cancelled_at()?.is_some() {
                // Stopped by cancel-atvm-run-watcher: the run (and any open sub-run) ends
                // CANCELLED, never posted.
                self.finish_run(Verdict {
                    state: RunState::Cancelled,
                    reason: "cancelled with cancel-atvm-run-watcher".to_string(),
                })?;
            } else {
                logging::info(format!(
                    "stopped by signal; state {} saved, not final",
                    self.state.state
                ));
            }
        }
        self.save()?;
        match self.failed_posts.last() {
            Some(error) => Err(Error::failed(format!(
                "Mattermost delivery failed for good: {error}"
            ))),
            None => Ok(()),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    fn categorized(&self) -> bool {
        self.request.categorize
    }

    /// One evaluation: observe everything, decide, persist, deliver. (Public for the
    /// benchmark probe, which times single polls.)
    pub fn poll(&mut self) -> Result<()> {
        let runner = self.observe_runner();
        if let Err(e) = self.follow_log(&runner) {
            // Inputs that cannot be read: UNKNOWN, with the file named.
            self.finish_run(Verdict {
                state: RunState::Unknown,
                reason: e.to_string(),
            })?;
            return Ok(());
        }
        if self.shutdown.requested() {
            return Ok(());
        }
        self.scan_reporter();
        let now = Timestamp::now();
        let cancelled_at = self.cancelled_at()?;
        let last_activity = self.last_activity();
        self.update_details(&runner, last_activity);
        let timing = self.timing;
        let facts = Facts {
            now,
            requested_at: self.request.requested_at,
            cancelled_at,
            runner: &runner.facts,
            last_activity,
            timing: &timing,
        };
        if self.categorized() {
            self.decide_categorized(&facts, now)?;
        } else {
            let (verdict, counts) = {
                let summary = self.cp.parser.summary();
                let view = LogView {
                    blocks: &summary.runs,
                    no_specs: summary.no_specs.as_ref(),
                };
                (decide::run_verdict(&facts, view), total_counts(summary))
            };
            self.state.counts = counts.or_else(|| self.reporter_counts());
            if verdict.state.is_terminal() {
                self.finish_run(verdict)?;
            } else {
                self.set_state(verdict);
            }
        }
        self.save()
    }

    // ----- observation -------------------------------------------------------------------

    fn observe_runner(&mut self) -> RunnerObs {
        let status = match self.sd.read_status() {
            Ok(s) => s.filter(|s| s.run_id == self.request.run_id),
            Err(e) => {
                return RunnerObs {
                    facts: RunnerFacts::Unreadable(e.to_string()),
                    status: None,
                };
            }
        };
        if let Some(status) = status {
            self.note_runner_times(&status);
            let facts = if status.pid == 0 {
                // Cancelled before the wrapper had started.
                if status.cancel_requested {
                    exited_facts(&status)
                } else {
                    RunnerFacts::NotYet
                }
            } else if status.has_exited() {
                exited_facts(&status)
            } else if procfs::is_alive(ProcessId {
                pid: status.pid,
                start_ticks: status.pid_start_ticks,
            }) {
                RunnerFacts::Alive { pid: status.pid }
            } else {
                // It may have recorded its exit between our read and the liveness check.
                match self.sd.read_status() {
                    Ok(Some(again)) if again.run_id == status.run_id && again.has_exited() => {
                        self.note_runner_times(&again);
                        return RunnerObs {
                            facts: exited_facts(&again),
                            status: Some(again),
                        };
                    }
                    _ => RunnerFacts::Vanished { pid: status.pid },
                }
            };
            return RunnerObs {
                facts,
                status: Some(status),
            };
        }
        // Runs not started through start-atvm-runner: a process naming the build.
        let facts = match self.cp.fallback {
            Some(id) if procfs::is_alive(id) => RunnerFacts::Alive { pid: id.pid },
            Some(_) => RunnerFacts::FallbackGone,
            None => match procfs::find_by_build_name(self.build.as_str()) {
                Some(id) => {
                    logging::info(format!(
                        "following runner pid {} found by its --build_name {}",
                        id.pid, self.build
                    ));
                    self.cp.fallback = Some(id);
                    self.runner_started_at.get_or_insert_with(Timestamp::now);
                    RunnerFacts::Alive { pid: id.pid }
                }
                None => RunnerFacts::NotYet,
            },
        };
        RunnerObs {
            facts,
            status: None,
        }
    }

    fn note_runner_times(&mut self, status: &RunnerStatus) {
        self.runner_started_at = Some(status.started_at);
        self.runner_exited_at = status.exited_at;
    }

    /// Which file is this run's log, and which identity must it have?
    fn log_target(&mut self, runner: &RunnerObs) -> Option<(PathBuf, FileId)> {
        if let Some(s) = runner.status.as_ref().filter(|s| s.pid != 0) {
            return Some((
                s.log_path.clone(),
                FileId {
                    dev: s.log_dev,
                    ino: s.log_inode,
                },
            ));
        }
        let path = self.paths.run_log(&self.build);
        let current = std::fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.file_type().is_file());
        if self.cp.fallback.is_none() {
            // No runner yet: remember what is at the path now, so an earlier run's log is
            // never mistaken for this run's.
            if !self.cp.baseline_taken {
                self.cp.baseline_taken = true;
                self.cp.baseline = current.map(|m| FollowPoint {
                    file: FileId::of(&m),
                    offset: m.len(),
                });
            }
            return None;
        }
        let id = FileId::of(&current?);
        if self.cp.follow.is_none()
            && let Some(base) = self.cp.baseline.filter(|b| b.file == id)
        {
            self.cp.follow = Some(base);
        }
        Some((path, id))
    }

    fn follow_log(&mut self, runner: &RunnerObs) -> Result<()> {
        let Some((path, expected)) = self.log_target(runner) else {
            return Ok(());
        };
        if self.follower.as_ref().is_none_or(|f| f.path() != path) {
            self.follower = Some(LogFollower::new(&path, self.cp.follow));
            self.cp.log_path = Some(path.clone());
        }
        let Some(follower) = self.follower.as_mut() else {
            return Ok(());
        };
        loop {
            let progress = follower
                .poll(expected, &mut self.cp.parser, READ_SLICE)
                .map_err(|e| Error::io("cannot read the run log", &path, e))?;
            self.cp.follow = follower.point();
            if progress.bytes > 0 {
                self.cp.last_activity = Some(Timestamp::now());
            }
            if !progress.more || self.shutdown.requested() {
                return Ok(());
            }
        }
    }

    fn scan_reporter(&mut self) {
        let Some(since) = self
            .runner_started_at
            .or(self.cp.fallback.map(|_| self.request.requested_at))
        else {
            return;
        };
        let reporter = self
            .reporter
            .get_or_insert_with(|| ReporterDir::new(&self.paths.reporter_dir, since.to_system()));
        let full = self
            .last_full_scan
            .is_none_or(|t| t.elapsed() >= FULL_REPORTER_SCAN);
        if full {
            self.last_full_scan = Some(std::time::Instant::now());
        }
        for warning in reporter.scan(full).warnings {
            logging::warn(warning);
        }
    }

    fn last_activity(&mut self) -> Timestamp {
        let mut t = self.request.requested_at;
        for candidate in [
            self.cp.last_activity,
            self.runner_started_at,
            self.reporter
                .as_ref()
                .and_then(|r| r.newest_mtime())
                .map(Timestamp::from_system),
        ]
        .into_iter()
        .flatten()
        {
            t = t.max(candidate);
        }
        self.cp.last_activity = Some(t);
        t
    }

    /// The cancel marker, if it belongs to this run.
    fn cancelled_at(&self) -> Result<Option<Timestamp>> {
        Ok(self
            .sd
            .read_marker(&self.sd.cancelled_marker())?
            .filter(|(m, mtime)| {
                m.belongs_to(&self.request.run_id, self.request.requested_at, *mtime)
            })
            .map(|(m, mtime)| m.at.unwrap_or(mtime)))
    }

    // ----- decisions -----------------------------------------------------------------------

    fn set_state(&mut self, v: Verdict) {
        if self.state.state != v.state {
            logging::info(format!(
                "{}: {} → {} ({})",
                self.build, self.state.state, v.state, v.reason
            ));
        }
        self.state.state = v.state;
        self.state.reason = v.reason;
        self.state.is_final = v.state.is_terminal();
    }

    /// Make the run final and deliver it if it is postable. A categorized run's own state
    /// is posted only when the runner failed before any sub-run started; otherwise its
    /// sub-runs did the posting.
    fn finish_run(&mut self, v: Verdict) -> Result<()> {
        let postable = v.state.is_postable()
            && (!self.categorized() || (self.subruns.is_empty() && v.state == RunState::Failed));
        self.set_state(v);
        if self.categorized() {
            // Sub-runs still open end with the run.
            let state = self.state.state;
            for i in 0..self.subruns.len() {
                if !self.subruns[i].is_final {
                    self.subruns[i].state = state;
                    self.subruns[i].is_final = true;
                    self.subruns[i].reason = format!("run ended: {}", self.state.reason);
                    self.subruns[i].post.status = PostStatus::Suppressed;
                }
            }
        }
        if postable {
            self.post_result(Target::Run)
        } else {
            if self.state.post.status == PostStatus::None && !self.categorized() {
                self.state.post.status = PostStatus::Suppressed;
            }
            Ok(())
        }
    }

    /// Hand a final, postable result to delivery: mark it pending, keep the payload in
    /// `payload.json` beside the state (a restarted watcher posts exactly those bytes; it is
    /// too big for `state.json`), persist, deliver.
    fn post_result(&mut self, target: Target) -> Result<()> {
        let payload = self.message_payload(target);
        if let Sink::Mattermost { .. } = self.sink {
            let dir = self.target_dir(target);
            fsutil::create_dir(&dir, 0o700)?;
            fsutil::write_json(&dir.join(PAYLOAD_FILE), &payload, 0o600)?;
        }
        let state = match target {
            Target::Run => &mut self.state,
            Target::Sub(i) => &mut self.subruns[i],
        };
        state.post.status = PostStatus::Pending;
        self.save()?;
        self.deliver(target)
    }

    fn decide_categorized(&mut self, facts: &Facts, now: Timestamp) -> Result<()> {
        let summary = self.cp.parser.summary().clone();
        // Cancelled: everything ends, nothing more is posted.
        let runner_ended = matches!(
            facts.runner,
            RunnerFacts::Exited { .. } | RunnerFacts::Vanished { .. } | RunnerFacts::FallbackGone
        );
        if facts.cancelled_at.is_some() {
            let v = decide::run_verdict(
                facts,
                LogView {
                    blocks: &[],
                    no_specs: None,
                },
            );
            self.ensure_subruns(&summary, true);
            return self.finish_run(v);
        }
        self.ensure_subruns(&summary, runner_ended);
        // Finished sub-runs are decided by their own summary and posted at once.
        for i in 0..self.subruns.len() {
            let Some(block) = summary.runs.get(i) else {
                continue;
            };
            if block.is_finished() && !self.subruns[i].is_final {
                self.cp.finished_seen.resize(summary.runs.len(), None);
                self.cp.finished_seen[i].get_or_insert(now);
                let v = decide::finished_subrun_verdict(block);
                self.finish_subrun(i, v, block)?;
                if self.shutdown.requested() {
                    return Ok(());
                }
            }
        }
        let open = summary
            .runs
            .len()
            .checked_sub(1)
            .filter(|&i| i < self.subruns.len() && !self.subruns[i].is_final);
        match &facts.runner {
            RunnerFacts::Alive { .. } => {
                self.cp.runner_inactive_since = None;
                let view = LogView {
                    blocks: open
                        .map(|i| std::slice::from_ref(&summary.runs[i]))
                        .unwrap_or(&[]),
                    no_specs: None,
                };
                let v = decide::run_verdict(facts, view);
                if v.state == RunState::Hung {
                    return self.finish_run(v);
                }
                let done = self.subruns.iter().filter(|s| s.is_final).count();
                let current = open
                    .map(|i| {
                        format!(
                            "sub-run {} — {}; ",
                            self.subruns[i].key.clone().unwrap_or_default(),
                            v.reason
                        )
                    })
                    .unwrap_or_default();
                self.set_state(Verdict {
                    state: RunState::Watching,
                    reason: format!("{current}{done} sub-run(s) finished"),
                });
            }
            RunnerFacts::NotYet | RunnerFacts::Unreadable(_) => {
                let v = decide::run_verdict(
                    facts,
                    LogView {
                        blocks: &[],
                        no_specs: None,
                    },
                );
                if v.state.is_terminal() {
                    return self.finish_run(v);
                }
                self.set_state(v);
            }
            RunnerFacts::Exited { .. }
            | RunnerFacts::Vanished { .. }
            | RunnerFacts::FallbackGone => {
                let ended = match &facts.runner {
                    RunnerFacts::Exited { at, .. } => *at,
                    _ => now,
                };
                let since = *self.cp.runner_inactive_since.get_or_insert(ended);
                // A sub-run cut off by the runner's end follows the plain-run rules.
                if let Some(i) = open {
                    let block = &summary.runs[i];
                    let v = decide::run_verdict(
                        facts,
                        LogView {
                            blocks: std::slice::from_ref(block),
                            no_specs: None,
                        },
                    );
                    self.finish_subrun(i, v, block)?;
                }
                if since.until(now) < self.timing.grace {
                    self.set_state(Verdict {
                        state: RunState::Watching,
                        reason: format!(
                            "runner ended at {since}; waiting {} for another runner of this run",
                            human_duration(self.timing.grace)
                        ),
                    });
                    return Ok(());
                }
                let runner_verdict = decide::run_verdict(
                    facts,
                    LogView {
                        blocks: &summary.runs,
                        no_specs: summary.no_specs.as_ref(),
                    },
                );
                let states: Vec<RunState> = self.subruns.iter().map(|s| s.state).collect();
                let parent = decide::parent_summary(&runner_verdict, &states);
                self.state.counts = total_counts(&summary);
                return self.finish_run(parent);
            }
        }
        Ok(())
    }

    /// Create sub-run records for blocks whose header is complete (so the group, and with
    /// it the key, is final).
    fn ensure_subruns(&mut self, summary: &LogSummary, runner_ended: bool) {
        for (i, block) in summary.runs.iter().enumerate().skip(self.subruns.len()) {
            // Wait for the whole header unless the runner is gone (the block was cut off).
            let known = runner_ended
                || block.header_complete
                || block.current.is_some()
                || block.is_finished();
            if !known {
                break;
            }
            let key = LogSummary::subrun_key(i + 1, block.group.as_deref());
            let mut sub = State::new(
                self.build.as_str(),
                &self.request.run_id,
                RunState::Watching,
                "Cypress run started",
            );
            sub.key = Some(key.clone());
            sub.group = block.group.clone();
            logging::info(format!("{}: sub-run {key} started", self.build));
            self.subruns.push(sub);
        }
        for (i, sub) in self.subruns.iter_mut().enumerate() {
            if let (false, Some(block)) = (sub.is_final, summary.runs.get(i)) {
                sub.counts = block.counts();
                sub.reason = decide::progress(LogView {
                    blocks: std::slice::from_ref(block),
                    no_specs: None,
                });
            }
        }
    }

    fn finish_subrun(&mut self, i: usize, v: Verdict, block: &RunBlock) -> Result<()> {
        let key = self.subruns[i].key.clone().unwrap_or_default();
        logging::info(format!(
            "{}: sub-run {key} → {} ({})",
            self.build, v.state, v.reason
        ));
        let sub = &mut self.subruns[i];
        sub.state = v.state;
        sub.reason = v.reason;
        sub.is_final = true;
        sub.counts = block.counts();
        if let Some(url) = block.url() {
            sub.details
                .insert("run_url".into(), Value::String(url.to_string()));
        }
        if v.state.is_postable() {
            self.post_result(Target::Sub(i))
        } else {
            self.subruns[i].post.status = PostStatus::Suppressed;
            self.save()
        }
    }

    /// A restarted watcher whose run is already final: deliver what is still owed.
    fn retry_unfinished_posts(&mut self) -> Result<()> {
        let owed =
            |p: &Post| matches!(p.status, PostStatus::Pending | PostStatus::Failed) && !p.dry_run;
        if owed(&self.state.post) {
            logging::info(format!(
                "{}: retrying the pending {} post",
                self.build, self.state.state
            ));
            self.deliver(Target::Run)?;
        }
        for i in 0..self.subruns.len() {
            if self.subruns[i].state.is_postable()
                && owed(&self.subruns[i].post)
                && !self.shutdown.requested()
            {
                self.deliver(Target::Sub(i))?;
            }
        }
        if self.failed_posts.is_empty() {
            logging::info(format!(
                "{}: run is final ({}); nothing left to do",
                self.build, self.state.state
            ));
        }
        Ok(())
    }

    // ----- messages --------------------------------------------------------------------------

    fn inventory(&mut self) -> Vec<Vm> {
        let loaded =
            self.inventory
                .get_or_insert_with(|| match inventory::load(&self.paths.inventory) {
                    Ok(v) => v,
                    Err(e) => {
                        logging::warn(e);
                        None
                    }
                });
        loaded
            .as_ref()
            .map(|vms| {
                inventory::for_build(vms, &self.build)
                    .into_iter()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Failed tests (at most the number a message shows) and their total, from the reports
    /// of the whole run, or of sub-run `i`: the reports written between the end of the
    /// previous sub-run and the end of this one, for this sub-run's specs.
    fn report_summary(&mut self, sub: Option<usize>) -> reporter::Summary {
        let seen = |k: usize| {
            self.cp
                .finished_seen
                .get(k)
                .copied()
                .flatten()
                .map(Timestamp::to_system)
        };
        let (from, to, specs) = match sub {
            None => (SystemTime::UNIX_EPOCH, None, Vec::new()),
            Some(i) => (
                i.checked_sub(1)
                    .and_then(seen)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                seen(i),
                self.cp
                    .parser
                    .summary()
                    .runs
                    .get(i)
                    .map(|b| {
                        b.spec_rows
                            .iter()
                            .map(|r| r.spec.clone())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default(),
            ),
        };
        let Some(reporter) = self.reporter.as_mut() else {
            return reporter::Summary::default();
        };
        reporter.summarize(
            |m| m > from && to.is_none_or(|t| m <= t),
            |report_specs| {
                specs.is_empty()
                    || report_specs.iter().any(|s| {
                        specs
                            .iter()
                            .any(|x| s.ends_with(x.as_str()) || x.ends_with(s.as_str()))
                    })
            },
            mattermost::MAX_FAILURES_SHOWN,
        )
    }

    fn reporter_counts(&self) -> Option<Counts> {
        self.reporter.as_ref().and_then(|r| r.counts(|_| true))
    }

    fn message_payload(&mut self, target: Target) -> Payload {
        let vms = self.inventory();
        let summary = self.cp.parser.summary().clone();
        let (state, reason, counts, group, blocks): (_, _, _, _, &[RunBlock]) = match target {
            Target::Run => (
                self.state.state,
                self.state.reason.clone(),
                self.state.counts,
                None,
                &summary.runs,
            ),
            Target::Sub(i) => {
                let s = &self.subruns[i];
                (
                    s.state,
                    s.reason.clone(),
                    s.counts,
                    s.group.clone(),
                    summary.runs.get(i..=i).unwrap_or(&[]),
                )
            }
        };
        let reported = self.report_summary(match target {
            Target::Run => None,
            Target::Sub(i) => Some(i),
        });
        let mut failures = reported.failures;
        let mut failures_total = reported.failures_total;
        if failures.is_empty() {
            // No reporter details: name the failing specs from the summary table.
            for b in blocks {
                for row in b
                    .spec_rows
                    .iter()
                    .filter(|r| r.counts.failed > 0 || r.mark == '✖')
                {
                    failures.push(FailedTest {
                        spec: row.spec.clone(),
                        full_title: format!("{} failing test(s)", row.counts.failed),
                        error: String::new(),
                    });
                }
            }
            failures_total = failures.len();
        }
        // The log's summary is authoritative for how many tests failed.
        let failed_in_log = counts.map_or(0, |c| c.failed as usize);
        failures_total = failures_total.max(failed_in_log);
        let duration = match target {
            Target::Run => match (self.runner_started_at, self.runner_exited_at) {
                (Some(a), Some(b)) => Some(human_duration(a.until(b))),
                _ => footer_duration(blocks),
            },
            Target::Sub(_) => footer_duration(blocks),
        };
        let run_url = blocks
            .iter()
            .rev()
            .find_map(|b| b.url())
            .map(str::to_string);
        let request = self.request.clone();
        let seen = |k: usize| self.cp.finished_seen.get(k).copied().flatten();
        let (started, ended) = match target {
            Target::Run => (self.runner_started_at, self.runner_exited_at),
            Target::Sub(0) => (self.runner_started_at, seen(0)),
            Target::Sub(i) => (seen(i - 1), seen(i)),
        };
        let host = mattermost::host_name();
        let message = Message {
            state,
            build: self.build.as_str(),
            group: group.as_deref(),
            reason: &reason,
            request: &request,
            counts,
            duration,
            vms: vms.iter().collect(),
            run_url: run_url.as_deref(),
            failures: &failures,
            failures_total,
            host: &host,
            started,
            ended,
        };
        Payload::build(&message, self.sink.channel(), self.sink.format())
    }

    // ----- delivery --------------------------------------------------------------------------

    fn post_of(&mut self, target: Target) -> &mut Post {
        match target {
            Target::Run => &mut self.state.post,
            Target::Sub(i) => &mut self.subruns[i].post,
        }
    }

    fn target_dir(&self, target: Target) -> PathBuf {
        match target {
            Target::Run => self.sd.path().to_path_buf(),
            Target::Sub(i) => self
                .sd
                .subrun_dir(self.subruns[i].key.as_deref().unwrap_or("unknown")),
        }
    }

    fn deliver(&mut self, target: Target) -> Result<()> {
        let dir = self.target_dir(target);
        let marker = dir.join("posted.marker");
        let already = self.sd.read_marker(&marker)?.is_some_and(|(m, mtime)| {
            m.belongs_to(&self.request.run_id, self.request.requested_at, mtime)
        });
        if already {
            let post = self.post_of(target);
            post.status = PostStatus::Posted;
            return self.save();
        }
        let kept = match self.sink {
            Sink::Mattermost { .. } => fsutil::read_json::<Payload>(&dir.join(PAYLOAD_FILE))?,
            Sink::DryRun { .. } => None,
        };
        let payload = match kept {
            Some(p) => p,
            None => self.message_payload(target),
        };
        let poster = match &self.sink {
            Sink::DryRun { .. } => {
                fsutil::create_dir(&dir, 0o700)?;
                fsutil::write_json(&dir.join("post.json"), &payload, 0o644)?;
                logging::info(format!(
                    "dry run: payload written to {}",
                    dir.join("post.json").display()
                ));
                self.post_of(target).dry_run = true;
                return self.save();
            }
            Sink::Mattermost { poster, .. } => Arc::clone(poster),
        };
        self.post_of(target).status = PostStatus::Pending;
        self.save()?;
        let attempts = self.post_of(target).attempts;
        let window = self.timing.post_retry;
        let outcome = {
            let mut hooks = DeliveryHooks { w: self, target };
            mattermost::deliver(&poster, &payload.to_json(), window, attempts, &mut hooks)
        };
        let label = match target {
            Target::Run => self.state.state.to_string(),
            Target::Sub(i) => format!(
                "sub-run {} {}",
                self.subruns[i].key.clone().unwrap_or_default(),
                self.subruns[i].state
            ),
        };
        match outcome {
            Delivery::Delivered { attempts } => {
                self.sd.write_marker(&marker, &self.request.run_id)?;
                let post = self.post_of(target);
                post.status = PostStatus::Posted;
                post.attempts = attempts;
                post.posted_at = Some(Timestamp::now());
                logging::info(format!(
                    "{}: posted {label} to Mattermost after {attempts} attempt(s)",
                    self.build
                ));
            }
            Delivery::Failed { attempts, error } => {
                let post = self.post_of(target);
                post.status = PostStatus::Failed;
                post.attempts = attempts;
                post.last_error = Some(error.clone());
                logging::error(format!("{}: could not post {label}: {error}", self.build));
                self.failed_posts.push(error);
            }
            Delivery::Cancelled { attempts } => {
                self.post_of(target).attempts = attempts;
                logging::info(format!(
                    "{}: cancelled before {label} was posted; not posting",
                    self.build
                ));
                let v = Verdict {
                    state: RunState::Cancelled,
                    reason: "cancelled with cancel-atvm-run-watcher before the result was posted"
                        .into(),
                };
                self.state.post.status = PostStatus::Suppressed;
                self.finish_run(v)?;
                if let Target::Sub(i) = target {
                    self.subruns[i].post.status = PostStatus::Suppressed;
                }
            }
            Delivery::Interrupted { attempts } => {
                let post = self.post_of(target);
                post.attempts = attempts;
                post.last_error =
                    Some("interrupted by a stop request; the next start retries".to_string());
            }
        }
        self.save()
    }

    // ----- persistence -------------------------------------------------------------------

    fn update_details(&mut self, runner: &RunnerObs, last_activity: Timestamp) {
        let d = &mut self.state.details;
        let pid = match &runner.facts {
            RunnerFacts::Alive { pid } | RunnerFacts::Vanished { pid } => Some(*pid),
            _ => None,
        };
        d.insert("runner_pid".into(), json!(pid));
        d.insert("last_activity".into(), json!(last_activity.to_string()));
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
    }

    /// Write sub-run files and `state.json` if anything changed. Under the state lock, a
    /// cancel marker turns whatever we were about to write into CANCELLED.
    fn save(&mut self) -> Result<()> {
        if self.categorized() {
            self.state.subruns = Some(
                self.subruns
                    .iter()
                    .map(|s| SubRunSummary {
                        key: s.key.clone().unwrap_or_default(),
                        group: s.group.clone(),
                        state: s.state,
                        counts: s.counts,
                        post: s.post.clone(),
                    })
                    .collect(),
            );
        }
        // Nothing changed since the last write (the common case for an idle watcher): skip
        // the lock, the serialisation and the fsync.
        let unchanged = self.saved.as_ref().is_some_and(|s| {
            s.cp == self.cp
                && s.subruns.len() == self.subruns.len()
                && same_but_time(&s.state, &self.state)
                && s.subruns
                    .iter()
                    .zip(&self.subruns)
                    .all(|(a, b)| same_but_time(a, b))
        });
        if unchanged {
            return Ok(());
        }
        for i in 0..self.subruns.len() {
            let same = self
                .saved
                .as_ref()
                .and_then(|s| s.subruns.get(i))
                .is_some_and(|old| same_but_time(old, &self.subruns[i]));
            if same {
                continue;
            }
            let dir = self.target_dir(Target::Sub(i));
            fsutil::create_dir(&dir, 0o700)?;
            self.subruns[i].updated_at = Timestamp::now();
            fsutil::write_json(&dir.join("state.json"), &self.subruns[i], 0o644)?;
        }
        let checkpoint = serde_json::to_value(&self.cp)
            .map_err(|e| Error::failed(format!("cannot encode checkpoint: {e}")))?;
        let mut next = self.state.clone();
        next.checkpoint = Some(checkpoint);
        let sd = self.sd.clone();
        let mut written = sd.update_state(|_current| {
            // Checked under the lock the cancel helper writes its marker and state under:
            // read before taking it, a cancel landing in between would be overwritten.
            if !next.is_final && self.cancelled_at()?.is_some() {
                next.end_unposted(
                    RunState::Cancelled,
                    "cancelled with cancel-atvm-run-watcher",
                );
            }
            next.updated_at = Timestamp::now();
            Ok((Some(next.clone()), next))
        })?;
        // The checkpoint lives in `self.cp`; the in-memory state does not carry a copy.
        written.checkpoint = None;
        if written.state != self.state.state {
            logging::info(format!(
                "{}: {} → {} ({})",
                self.build, self.state.state, written.state, written.reason
            ));
        }
        self.state = written;
        self.saved = Some(Saved {
            state: self.state.clone(),
            cp: self.cp.clone(),
            subruns: self.subruns.clone(),
        });
        Ok(())
    }
}

/// What was last written, to tell whether anything worth writing changed.
#[derive(Debug)]
struct Saved {
    state: State,
    cp: Checkpoint,
    subruns: Vec<State>,
}

/// Equal apart from `updated_at`.
fn same_but_time(a: &State, b: &State) -> bool {
    State {
        updated_at: b.updated_at,
        ..a.clone()
    } == *b
}

fn exited_facts(s: &RunnerStatus) -> RunnerFacts {
    RunnerFacts::Exited {
        exit_code: s.exit_code,
        signal: s.signal,
        stop_signal: s.stop_signal,
        cancel_requested: s.cancel_requested,
        at: s.exited_at.unwrap_or(s.started_at),
    }
}

fn total_counts(summary: &LogSummary) -> Option<Counts> {
    let mut total: Option<Counts> = None;
    for c in summary.runs.iter().filter_map(RunBlock::counts) {
        total.get_or_insert_with(Counts::default).add(&c);
    }
    total
}

/// Sum of the blocks' footer durations (`MM:SS` or `H:MM:SS`), in words.
fn footer_duration(blocks: &[RunBlock]) -> Option<String> {
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
    any.then(|| human_duration(Duration::from_secs(secs)))
}

/// Delivery callbacks: persist each attempt, re-check the cancel marker, sleep on the
/// shutdown pipe.
#[derive(Debug)]
struct DeliveryHooks<'w, 'a> {
    w: &'w mut Watcher<'a>,
    target: Target,
}

impl Hooks for DeliveryHooks<'_, '_> {
    fn cancelled(&mut self) -> bool {
        self.w.cancelled_at().ok().flatten().is_some()
    }
    fn attempting(&mut self, n: u32) {
        self.w.post_of(self.target).attempts = n;
        if let Err(e) = self.w.save() {
            logging::warn(e);
        }
    }
    fn attempted(&mut self, _n: u32, outcome: &Attempt) {
        if let Attempt::Retry { error, .. } | Attempt::Permanent { error } = outcome {
            logging::warn(format!("{}: post attempt failed: {error}", self.w.build));
            self.w.post_of(self.target).last_error = Some(error.clone());
            if let Err(e) = self.w.save() {
                logging::warn(e);
            }
        }
    }
    fn sleep(&mut self, d: Duration) -> bool {
        self.w.shutdown.sleep(d)
    }
    fn stop_requested(&mut self) -> bool {
        self.w.shutdown.requested()
    }
}
