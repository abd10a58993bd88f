//! Everything the watcher learns from outside, once per poll: the runner (its status file,
//! /proc, or the command-line fallback), the run log (followed from the checkpoint's
//! offset, only the file whose identity the runner recorded), the reporter directory, the
//! last activity, and the cancel marker. Also the inputs a message needs (failed tests from
//! the reports, the inventory). Nothing here decides anything.

use crate::decide::RunnerFacts;
use crate::persist::{Checkpoint, cancelled_at};
use crate::watch::Ctx;
use atvm_common::error::{Error, Result};
use atvm_common::follow::{FileId, FollowPoint, LogFollower};
use atvm_common::inventory::{self, Vm};
use atvm_common::mattermost;
use atvm_common::procfs::{self, ProcessId};
use atvm_common::reporter::{self, ReporterDir, SpecSet};
use atvm_common::state::{Counts, RunnerStatus};
use atvm_common::{Timestamp, logging};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// Log bytes parsed between two checks for a stop request.
const READ_SLICE: u64 = 64 * 1024 * 1024;
/// Rescan every reporter file (not just on directory changes) this often.
const FULL_REPORTER_SCAN: Duration = Duration::from_secs(60);

/// What one poll observed.
#[derive(Debug)]
pub struct Observation {
    pub now: Timestamp,
    pub runner: RunnerFacts,
    /// The run's `runner/status.json`, when there is one for this run.
    pub status: Option<RunnerStatus>,
    /// The run log could not be read: the run ends UNKNOWN with this reason.
    pub log_error: Option<String>,
    pub cancelled_at: Option<Timestamp>,
    pub last_activity: Timestamp,
}

/// The watcher's open inputs, kept between polls.
#[derive(Debug, Default)]
pub struct Observer {
    follower: Option<LogFollower>,
    reporter: Option<ReporterDir>,
    last_full_scan: Option<Instant>,
    inventory: Option<Option<Vec<Vm>>>,
    /// The run's specs, and the parser's line count they were taken at.
    specs: (u64, SpecSet),
    pub runner_started_at: Option<Timestamp>,
    pub runner_exited_at: Option<Timestamp>,
}

impl Observer {
    /// Resume following the log where the checkpoint says reading stopped.
    pub fn resume(cp: &Checkpoint) -> Observer {
        Observer {
            follower: cp.log_path.as_ref().map(|p| LogFollower::new(p, cp.follow)),
            ..Observer::default()
        }
    }

    /// Observe everything once. `None` when a stop was requested while the log was read
    /// (the poll is abandoned; what was read is in the checkpoint).
    pub fn observe(&mut self, ctx: &Ctx, cp: &mut Checkpoint) -> Result<Option<Observation>> {
        let (runner, status) = self.runner(ctx, cp);
        let log_error = self.follow_log(ctx, cp, status.as_ref()).err();
        if log_error.is_none() && ctx.shutdown.requested() {
            return Ok(None);
        }
        self.scan_reporter(ctx, cp);
        self.refresh_specs(cp);
        let now = Timestamp::now();
        let cancelled_at = cancelled_at(&ctx.sd, &ctx.request)?;
        let last_activity = self.last_activity(ctx, cp);
        Ok(Some(Observation {
            now,
            runner,
            status,
            log_error: log_error.map(|e| e.to_string()),
            cancelled_at,
            last_activity,
        }))
    }

    /// The runner of this run: by its status file, else (runs not started through
    /// start-atvm-runner) by a process whose command line names the build.
    fn runner(&mut self, ctx: &Ctx, cp: &mut Checkpoint) -> (RunnerFacts, Option<RunnerStatus>) {
        let status = match ctx.sd.read_status() {
            Ok(s) => s.filter(|s| s.run_id == ctx.request.run_id),
            Err(e) => return (RunnerFacts::Unreadable(e.to_string()), None),
        };
        match status {
            Some(status) => {
                let (facts, status) = self.managed_runner(ctx, status);
                (facts, Some(status))
            }
            None => (self.fallback_runner(ctx, cp), None),
        }
    }

    fn managed_runner(&mut self, ctx: &Ctx, status: RunnerStatus) -> (RunnerFacts, RunnerStatus) {
        self.note_runner_times(&status);
        let id = ProcessId {
            pid: status.pid,
            start_ticks: status.pid_start_ticks,
        };
        let facts = if status.pid == 0 {
            // Cancelled before the wrapper had started.
            if status.cancel_requested {
                exited_facts(&status)
            } else {
                RunnerFacts::NotYet
            }
        } else if status.has_exited() {
            exited_facts(&status)
        } else if procfs::is_alive(id) {
            RunnerFacts::Alive { pid: status.pid }
        } else {
            // It may have recorded its exit between our read and the liveness check.
            match ctx.sd.read_status() {
                Ok(Some(again)) if again.run_id == status.run_id && again.has_exited() => {
                    self.note_runner_times(&again);
                    return (exited_facts(&again), again);
                }
                _ => RunnerFacts::Vanished { pid: status.pid },
            }
        };
        (facts, status)
    }

    fn fallback_runner(&mut self, ctx: &Ctx, cp: &mut Checkpoint) -> RunnerFacts {
        match cp.fallback {
            Some(id) if procfs::is_alive(id) => RunnerFacts::Alive { pid: id.pid },
            Some(_) => RunnerFacts::FallbackGone,
            None => match procfs::find_by_build_name(ctx.build.as_str()) {
                Some(id) => {
                    logging::info(format!(
                        "following runner pid {} found by its --build_name {}",
                        id.pid, ctx.build
                    ));
                    cp.fallback = Some(id);
                    self.runner_started_at.get_or_insert_with(Timestamp::now);
                    RunnerFacts::Alive { pid: id.pid }
                }
                None => RunnerFacts::NotYet,
            },
        }
    }

    fn note_runner_times(&mut self, status: &RunnerStatus) {
        self.runner_started_at = Some(status.started_at);
        self.runner_exited_at = status.exited_at;
    }

    /// Which file is this run's log, and which identity must it have?
    fn log_target(
        ctx: &Ctx,
        cp: &mut Checkpoint,
        status: Option<&RunnerStatus>,
    ) -> Option<(PathBuf, FileId)> {
        if let Some(s) = status.filter(|s| s.pid != 0) {
            return Some((
                s.log_path.clone(),
                FileId {
                    dev: s.log_dev,
                    ino: s.log_inode,
                },
            ));
        }
        let path = ctx.paths.run_log(&ctx.build);
        let current = std::fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.file_type().is_file());
        if cp.fallback.is_none() {
            // No runner yet: remember what is at the path now, so an earlier run's log is
            // never mistaken for this run's.
            if !cp.baseline_taken {
                cp.baseline_taken = true;
                cp.baseline = current.map(|m| FollowPoint {
                    file: FileId::of(&m),
                    offset: m.len(),
                });
            }
            return None;
        }
        let id = FileId::of(&current?);
        if cp.follow.is_none()
            && let Some(base) = cp.baseline.filter(|b| b.file == id)
        {
            cp.follow = Some(base);
        }
        Some((path, id))
    }

    /// Read what is new in the run log into the checkpoint's parser.
    fn follow_log(
        &mut self,
        ctx: &Ctx,
        cp: &mut Checkpoint,
        status: Option<&RunnerStatus>,
    ) -> Result<()> {
        let Some((path, expected)) = Self::log_target(ctx, cp, status) else {
            return Ok(());
        };
        if self.follower.as_ref().is_none_or(|f| f.path() != path) {
            self.follower = Some(LogFollower::new(&path, cp.follow));
            cp.log_path = Some(path.clone());
        }
        let Some(follower) = self.follower.as_mut() else {
            return Ok(());
        };
        loop {
            let progress = follower
                .poll(expected, &mut cp.parser, READ_SLICE)
                .map_err(|e| Error::io("cannot read the run log", &path, e))?;
            cp.follow = follower.point();
            if progress.bytes > 0 {
                cp.last_activity = Some(Timestamp::now());
            }
            if !progress.more || ctx.shutdown.requested() {
                return Ok(());
            }
        }
    }

    fn scan_reporter(&mut self, ctx: &Ctx, cp: &Checkpoint) {
        let Some(since) = self
            .runner_started_at
            .or(cp.fallback.map(|_| ctx.request.requested_at))
        else {
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

    /// The latest sign of life: new log bytes, the runner's start, a new report of this
    /// run.
    fn last_activity(&self, ctx: &Ctx, cp: &mut Checkpoint) -> Timestamp {
        let newest_report = self
            .reporter
            .as_ref()
            .and_then(|r| r.newest_mtime(&self.specs.1))
            .map(Timestamp::from_system);
        let t = [cp.last_activity, self.runner_started_at, newest_report]
            .into_iter()
            .flatten()
            .fold(ctx.request.requested_at, Timestamp::max);
        cp.last_activity = Some(t);
        t
    }

    /// Counts from this run's reports, for a run whose log has no summary yet.
    pub fn reporter_counts(&self) -> Option<Counts> {
        self.reporter.as_ref().and_then(|r| r.counts(&self.specs.1))
    }

    /// The specs the log names change only when it grows: recompute them then.
    fn refresh_specs(&mut self, cp: &Checkpoint) {
        let lines = cp.parser.summary().lines;
        if self.specs.0 != lines || lines == 0 {
            self.specs = (lines, run_specs(cp));
        }
    }

    /// Failed tests (at most the number a message shows) and their total, from the reports
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
        let (from, to, specs) = match sub {
            None => (SystemTime::UNIX_EPOCH, None, self.specs.1.clone()),
            Some(i) => (
                i.checked_sub(1)
                    .and_then(seen)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                seen(i),
                SpecSet::new(runs.get(i).into_iter().flat_map(|b| b.spec_names())),
            ),
        };
        let Some(reporter) = self.reporter.as_mut() else {
            return reporter::Summary::default();
        };
        reporter.summarize(
            |m| m > from && to.is_none_or(|t| m <= t),
            &specs,
            mattermost::MAX_FAILURES_SHOWN,
        )
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

/// Every spec the run's log names so far: the reports that belong to this run.
fn run_specs(cp: &Checkpoint) -> SpecSet {
    SpecSet::new(cp.parser.summary().runs.iter().flat_map(|b| b.spec_names()))
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
