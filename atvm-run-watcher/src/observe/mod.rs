//! Everything the watcher learns from outside, once per poll: the runner (its status file,
//! /proc, or the command-line fallback), the run log (followed from the checkpoint's
//! offset, only the file whose identity the runner recorded — or, for a fallback runner,
//! the one its session holds open for writing), the reporter directory (only this run's
//! reports), the last activity, and the cancel marker. Also the inputs a message needs
//! (failed tests from the reports, the inventory). Nothing here decides anything.
//!
//! One file per input: [`runner`] (status file, /proc, the command-line fallback),
//! [`log`] (which file is the run's log and following it), [`reports`] (the reporter
//! directory: this run's reports, their counts and failed tests).

use crate::ctx::Ctx;
use crate::decide::RunnerFacts;
use crate::persist::{Checkpoint, cancelled_at};
use atvm_common::error::Result;
use atvm_common::follow::LogFollower;
use atvm_common::inventory::{self, Vm};
use atvm_common::procfs::{self, OwnBinaries, ProcessId};
use atvm_common::reporter::{ReportStamp, ReporterDir, SpecSet};
use atvm_common::state::RunnerStatus;
use atvm_common::timeline::Timeline;
use atvm_common::{Moment, Timestamp, fsutil, logging};
use runner::untrusted;
use std::time::{Duration, Instant, SystemTime};

mod log;
mod reports;
mod runner;

/// Log bytes parsed between two checks for a stop request.
const READ_SLICE: u64 = 64 * 1024 * 1024;
/// Rescan every reporter file (not just on directory changes) this often.
const FULL_REPORTER_SCAN: Duration = Duration::from_secs(60);

/// What one poll observed.
#[derive(Debug)]
pub struct Observation {
    pub now: Moment,
    pub runner: RunnerFacts,
    /// The live runner's identity (the wrapper, or the adopted process), to wait on.
    pub runner_id: Option<ProcessId>,
    /// The run's `runner/status.json`, when there is one for this run.
    pub status: Option<RunnerStatus>,
    /// The run log could not be read: the run ends UNKNOWN with this reason.
    pub log_error: Option<String>,
    /// Why what was read of the log is not the whole of the command's output, if it is not
    /// (see [`crate::decide::Facts::log_gap`]).
    pub log_gap: Option<String>,
    pub cancelled_at: Option<Timestamp>,
    pub last_activity: Moment,
    /// A file at the run log's path that is not read as a run's output, and why.
    pub untrusted_log: Option<String>,
}

/// The watcher's open inputs and what it learnt about the runner, kept between polls.
#[derive(Debug)]
pub struct Observer {
    follower: Option<LogFollower>,
    /// The run's log was open at the last poll (found at its path, at `<path>.1`, or
    /// through the runner's descriptor).
    log_open: bool,
    reporter: Option<ReporterDir>,
    last_full_scan: Option<Instant>,
    inventory: Option<Option<Vec<Vm>>>,
    /// The run's specs, and the parser's line count they were taken at.
    specs: (u64, SpecSet),
    /// Newest modification time of this run's reports seen so far.
    newest_report: Option<SystemTime>,
    own: OwnBinaries,
    uid: u32,
    /// This run is started through start-atvm-runner: the fallback never applies.
    managed: bool,
    /// A process that named the build at the last poll: adopted if it still does.
    candidate: Option<ProcessId>,
    runner_started: Option<Moment>,
    pub runner_started_at: Option<Timestamp>,
    /// Since when reports count for the run: its first runner's start (managed runs).
    reports_since: Option<Timestamp>,
    pub runner_exited_at: Option<Timestamp>,
    /// The reports the runner found before its command started (never this run's).
    stale_reports: Vec<ReportStamp>,
    /// The runner's timeline of the log's blocks (managed runs), read again whenever the
    /// log grew: its entries are written before the lines they describe.
    timeline: Timeline,
    /// The parser's line count, and whether the runner had ended, when it was read.
    timeline_read_at: Option<(u64, bool)>,
    /// The inputs of a message are loaded (an observation was made, or
    /// [`Observer::ready_for_message`] loaded them).
    ready: bool,
}

impl Observer {
    /// Resume following the log where the checkpoint says reading stopped.
    pub fn resume(ctx: &Ctx, cp: &Checkpoint) -> Observer {
        let earlier: Vec<String> = ctx
            .request
            .earlier_runners
            .iter()
            .map(|id| id.pid.to_string())
            .collect();
        if !earlier.is_empty() && ctx.request.runner_command.is_none() {
            logging::info(format!(
                "pid {} ran an earlier run of {} and still runs: never taken for this run's runner",
                earlier.join(", "),
                ctx.build
            ));
        }
        Observer {
            follower: cp.log_path.as_ref().map(|p| LogFollower::new(p, cp.follow)),
            log_open: false,
            reporter: None,
            last_full_scan: None,
            inventory: None,
            specs: (0, SpecSet::default()),
            newest_report: None,
            own: OwnBinaries::new(&ctx.paths.package_root),
            uid: fsutil::effective_uid(),
            managed: ctx.request.runner_command.is_some(),
            candidate: None,
            runner_started: None,
            runner_started_at: None,
            reports_since: None,
            runner_exited_at: None,
            stale_reports: Vec::new(),
            timeline: Timeline::default(),
            timeline_read_at: None,
            ready: false,
        }
    }

    /// Observe everything once. `None` when a stop was requested while the log was read
    /// (the poll is abandoned; what was read is in the checkpoint).
    pub fn observe(&mut self, ctx: &Ctx, cp: &mut Checkpoint) -> Result<Option<Observation>> {
        self.ready = true;
        let now = ctx.clock.now();
        let (runner, status) = self.runner(ctx, cp, &now);
        let log_error = self.follow_log(ctx, cp, status.as_ref(), &now).err();
        if log_error.is_none() && ctx.shutdown.requested() {
            return Ok(None);
        }
        // An earlier runner's log that cannot be read whole: the blocks after it could not
        // be numbered as the run's, so no group is judged from them.
        let log_error = log_error
            .map(|e| e.to_string())
            .or_else(|| status.as_ref().and_then(|s| log::earlier_gap(cp, s)));
        let log_gap = self.log_gap(cp, status.as_ref());
        self.read_timeline(ctx, cp, status.as_ref());
        self.scan_reporter(ctx);
        self.refresh_specs(cp);
        let cancelled_at = cancelled_at(&ctx.sd, &ctx.request)?;
        let last_activity = self.last_activity(ctx, cp, &now);
        let untrusted_log = match (&runner, self.managed) {
            (RunnerFacts::NotYet, false) => untrusted(ctx, self.uid),
            _ => None,
        };
        let runner_id = match runner {
            RunnerFacts::Alive { .. } => status
                .as_ref()
                .map(|s| ProcessId {
                    pid: s.pid,
                    start_ticks: s.pid_start_ticks,
                })
                .or(cp.fallback),
            _ => None,
        };
        Ok(Some(Observation {
            now,
            runner,
            runner_id,
            status,
            log_error,
            log_gap,
            cancelled_at,
            last_activity,
            untrusted_log,
        }))
    }

    /// The latest sign of life: for a run started through the runner, the runner's own
    /// record of when the command last printed something — the same for every watcher,
    /// whenever it looked. Else (a hand-started run, or a runner of an earlier version that
    /// records none): new log bytes or a new report of this run, noted when this watcher saw
    /// them. The runner's start and the request count either way.
    fn last_activity(&mut self, ctx: &Ctx, cp: &mut Checkpoint, now: &Moment) -> Moment {
        let recorded = self
            .timeline
            .last_output()
            .filter(|_| self.managed)
            .cloned();
        let seen = match recorded {
            Some(output) => output,
            None => {
                let newest = self
                    .reporter
                    .as_ref()
                    .and_then(|r| r.newest_mtime(&self.specs.1));
                if newest.is_some() && newest > self.newest_report {
                    self.newest_report = newest;
                    cp.last_activity = Some(now.clone());
                }
                cp.last_activity
                    .clone()
                    .unwrap_or_else(|| ctx.request.requested())
            }
        };
        let latest = [Some(seen), self.runner_started.clone()]
            .into_iter()
            .flatten()
            .fold(
                ctx.request.requested(),
                |a, b| if b.is_after(&a) { b } else { a },
            );
        cp.last_activity = Some(latest.clone());
        latest
    }

    /// Load what a message is made of when this watcher has not observed anything yet: a
    /// post an earlier watcher decided but did not send (it stopped in between) is composed
    /// from the same inputs its decision had — the runner's record and timeline, the
    /// reports — not from none.
    pub fn ready_for_message(&mut self, ctx: &Ctx, cp: &Checkpoint) {
        if std::mem::replace(&mut self.ready, true) {
            return;
        }
        let status = ctx
            .sd
            .read_status()
            .ok()
            .flatten()
            .filter(|s| s.run_id == ctx.request.run_id && s.pid != 0 && s.refused.is_none());
        match &status {
            Some(s) => {
                self.managed = true;
                self.note_runner(ctx, s);
            }
            None => self.resumed_start(ctx, cp.fallback.filter(|id| procfs::is_alive(*id))),
        }
        self.refresh_specs(cp);
        self.read_timeline(ctx, cp, status.as_ref());
        self.scan_reporter(ctx);
    }

    /// The inventory's VMs of this build (the file is read once per watcher).
    pub fn vms(&mut self, ctx: &Ctx) -> Vec<Vm> {
        let loaded = self.inventory.get_or_insert_with(|| {
            inventory::load(&ctx.paths.inventory).unwrap_or_else(|e| {
                logging::warn(e);
                None
            })
        });
        loaded
            .as_deref()
            .map(|vms| {
                inventory::for_build(vms, &ctx.build)
                    .into_iter()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}
