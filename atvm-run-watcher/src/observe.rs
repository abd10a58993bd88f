//! Everything the watcher learns from outside, once per poll: the runner (its status file,
//! /proc, or the command-line fallback), the run log (followed from the checkpoint's
//! offset, only the file whose identity the runner recorded — or, for a fallback runner,
//! the one its session holds open for writing), the reporter directory (only this run's
//! reports), the last activity, and the cancel marker. Also the inputs a message needs
//! (failed tests from the reports, the inventory). Nothing here decides anything.

use crate::decide::RunnerFacts;
use crate::persist::{Checkpoint, cancelled_at};
use crate::watch::Ctx;
use atvm_common::cypress::{RunBlock, SpecRow};
use atvm_common::error::{Error, Result};
use atvm_common::follow::{FileId, LogFollower};
use atvm_common::inventory::{self, Vm};
use atvm_common::mattermost;
use atvm_common::procfs::{self, OwnBinaries, ProcessId};
use atvm_common::reporter::{self, ReporterDir, SpecSet};
use atvm_common::state::{Counts, RunnerSpec, RunnerStatus};
use atvm_common::{Moment, Timestamp, fsutil, logging};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// Log bytes parsed between two checks for a stop request.
const READ_SLICE: u64 = 64 * 1024 * 1024;
/// Rescan every reporter file (not just on directory changes) this often.
const FULL_REPORTER_SCAN: Duration = Duration::from_secs(60);

/// What one poll observed.
#[derive(Debug)]
pub struct Observation {
    pub now: Moment,
    pub runner: RunnerFacts,
    /// The run's `runner/status.json`, when there is one for this run.
    pub status: Option<RunnerStatus>,
    /// The run log could not be read: the run ends UNKNOWN with this reason.
    pub log_error: Option<String>,
    pub cancelled_at: Option<Timestamp>,
    pub last_activity: Moment,
    /// A file at the run log's path that is not read as a run's output, and why.
    pub untrusted_log: Option<String>,
}

/// The watcher's open inputs and what it learnt about the runner, kept between polls.
#[derive(Debug)]
pub struct Observer {
    follower: Option<LogFollower>,
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
    pub runner_exited_at: Option<Timestamp>,
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
            runner_exited_at: None,
        }
    }

    /// Observe everything once. `None` when a stop was requested while the log was read
    /// (the poll is abandoned; what was read is in the checkpoint).
    pub fn observe(&mut self, ctx: &Ctx, cp: &mut Checkpoint) -> Result<Option<Observation>> {
        let now = ctx.clock.now();
        let (runner, status) = self.runner(ctx, cp, &now);
        let log_error = self.follow_log(ctx, cp, status.as_ref(), &now).err();
        if log_error.is_none() && ctx.shutdown.requested() {
            return Ok(None);
        }
        self.scan_reporter(ctx);
        self.refresh_specs(cp);
        let cancelled_at = cancelled_at(&ctx.sd, &ctx.request)?;
        let last_activity = self.last_activity(ctx, cp, &now);
        let untrusted_log = match (&runner, self.managed) {
            (RunnerFacts::NotYet, false) => untrusted(ctx, self.uid),
            _ => None,
        };
        Ok(Some(Observation {
            now,
            runner,
            status,
            log_error: log_error.map(|e| e.to_string()),
            cancelled_at,
            last_activity,
            untrusted_log,
        }))
    }

    /// The runner of this run (docs/watcher-service.md, "Run identity"): by its status file when the run
    /// was started through start-atvm-runner (before that status appears: not yet), else by
    /// the command-line fallback.
    fn runner(
        &mut self,
        ctx: &Ctx,
        cp: &mut Checkpoint,
        now: &Moment,
    ) -> (RunnerFacts, Option<RunnerStatus>) {
        let status = match ctx.sd.read_status() {
            Ok(s) => s.filter(|s| s.run_id == ctx.request.run_id),
            Err(e) => return (RunnerFacts::Unreadable(e.to_string()), None),
        };
        if let Some(status) = status {
            self.managed = true;
            self.drop_fallback(cp);
            if let Some(why) = &status.refused {
                return (RunnerFacts::Refused(why.clone()), Some(status));
            }
            let (facts, status) = self.managed_runner(ctx, status, now);
            return (facts, Some(status));
        }
        if self.is_managed(ctx) {
            self.drop_fallback(cp);
            return (RunnerFacts::NotYet, None);
        }
        (self.fallback_runner(ctx, cp, now), None)
    }

    /// Is there a `runner/spec.json` of this run (start-atvm-runner wrote it)?
    fn is_managed(&mut self, ctx: &Ctx) -> bool {
        if !self.managed {
            let spec: Option<RunnerSpec> = fsutil::read_json(&ctx.sd.runner_spec()).ok().flatten();
            self.managed = spec.is_some_and(|s| s.run_id == ctx.request.run_id);
        }
        self.managed
    }

    /// A fallback adopted before the run turned out to be managed is forgotten, with what
    /// was read of its log.
    fn drop_fallback(&mut self, cp: &mut Checkpoint) {
        if let Some(id) = cp.fallback.take() {
            logging::info(format!(
                "no longer following pid {}: this run is started through start-atvm-runner",
                id.pid
            ));
            cp.fallback_log = None;
            cp.follow = None;
            cp.log_path = None;
            cp.parser = Default::default();
            self.follower = None;
        }
    }

    fn managed_runner(
        &mut self,
        ctx: &Ctx,
        status: RunnerStatus,
        now: &Moment,
    ) -> (RunnerFacts, RunnerStatus) {
        self.note_runner(&status);
        let id = ProcessId {
            pid: status.pid,
            start_ticks: status.pid_start_ticks,
        };
        let this_boot = now.boot.as_ref().map(|b| b.boot_id.as_str());
        let facts = if status.pid == 0 {
            // Cancelled before the wrapper had started.
            if status.cancel_requested {
                exited_facts(&status)
            } else {
                RunnerFacts::NotYet
            }
        } else if status.has_exited() {
            exited_facts(&status)
        } else if status.from_earlier_boot(this_boot) {
            // The machine rebooted under the run: that pid is some other process now.
            vanished_facts(&status, true)
        } else if procfs::is_alive(id) {
            RunnerFacts::Alive { pid: status.pid }
        } else {
            // It may have recorded its exit between our read and the liveness check.
            match ctx.sd.read_status() {
                Ok(Some(again)) if again.run_id == status.run_id && again.has_exited() => {
                    self.note_runner(&again);
                    return (exited_facts(&again), again);
                }
                _ => vanished_facts(&status, false),
            }
        };
        (facts, status)
    }

    /// A run not started through start-atvm-runner: the process found by its command line,
    /// adopted once it has been seen at two polls in a row (a `sudo` that has not exec'ed
    /// our tool yet is gone by then).
    ///
    /// The search goes on after adoption: a process started later that writes the log is
    /// the run (the adopted one was a leftover of an earlier run of the build name, say one
    /// that hung), and takes over once it too has been seen at two polls in a row, or at
    /// once when the adopted one is gone.
    fn fallback_runner(&mut self, ctx: &Ctx, cp: &mut Checkpoint, now: &Moment) -> RunnerFacts {
        // Only a process writing this run's log can be its runner.
        let log = self.trusted_log(ctx);
        let earlier = &ctx.request.earlier_runners;
        let found = log.and_then(|l| {
            procfs::find_fallback(
                ctx.build.as_str(),
                self.uid,
                &self.own,
                (l.dev, l.ino),
                earlier,
            )
        });
        let seen_before = found.is_some() && found == self.candidate;
        self.candidate = found;
        // A newer process of the build that the adopted runner started is part of its run;
        // one that takes over must write the log apart from it (not merely share its
        // session, as an operator's status loop does).
        let newer = found.filter(|f| {
            cp.fallback.is_none_or(|a| {
                f.start_ticks > a.start_ticks
                    && !procfs::descends_from(f.pid, a.pid)
                    && log.is_some_and(|l| procfs::writes_apart_from(f.pid, a.pid, l.dev, l.ino))
            })
        });
        match (cp.fallback, newer) {
            (Some(adopted), Some(id)) if seen_before || !procfs::is_alive(adopted) => {
                logging::warn(format!(
                    "runner pid {} started after pid {} and writes {} itself: following it \
                     instead (pid {} is taken for a leftover, or an earlier attempt of this run)",
                    id.pid,
                    adopted.pid,
                    ctx.paths.run_log(&ctx.build).display(),
                    adopted.pid
                ));
                self.adopt(ctx, cp, id, log, now)
            }
            (Some(adopted), _) if procfs::is_alive(adopted) => {
                self.resumed_start(ctx, Some(adopted));
                RunnerFacts::Alive { pid: adopted.pid }
            }
            (Some(_), _) => {
                self.resumed_start(ctx, None);
                self.runner_exited_at.get_or_insert(now.wall);
                RunnerFacts::FallbackGone
            }
            (None, Some(id)) if seen_before => {
                logging::info(format!(
                    "following runner pid {} found by its --build_name {}, writing {}",
                    id.pid,
                    ctx.build,
                    ctx.paths.run_log(&ctx.build).display()
                ));
                self.adopt(ctx, cp, id, log, now)
            }
            (None, _) => RunnerFacts::NotYet,
        }
    }

    /// Follow `id` as the run's runner, writing the log `log`. A log of another identity
    /// than the one read so far is read from its start, with nothing kept from the other.
    fn adopt(
        &mut self,
        ctx: &Ctx,
        cp: &mut Checkpoint,
        id: ProcessId,
        log: Option<FileId>,
        now: &Moment,
    ) -> RunnerFacts {
        let appends = log.is_some_and(|l| procfs::appended_by(id.pid, l.dev, l.ino));
        if appends {
            logging::warn(format!(
                "{} is written in append mode (`>>`, `tee -a`): lines of an earlier run \
                 at its start are read as this run's",
                ctx.paths.run_log(&ctx.build).display()
            ));
        }
        // Another file, or a new runner that opened the log without appending (`>`
        // truncated it, even if it then wrote the same bytes again): read it from its
        // start. A categorized run keeps its blocks — the new ones follow, with new keys.
        let takeover = cp.fallback.is_some_and(|old| old != id);
        let new_file = cp.fallback_log.is_some() && cp.fallback_log != log;
        if new_file || (takeover && !appends) {
            match ctx.request.categorize {
                true => cp.parser.reset_partial_line(),
                false => cp.parser = Default::default(),
            }
            cp.follow = None;
            self.follower = None;
        }
        cp.fallback = Some(id);
        cp.fallback_log = log;
        cp.note_adopted(id);
        self.runner_started = Some(now.clone());
        // When the process really started (it usually runs before the watcher does): the
        // footer's start, and the time its reports count from.
        let started = procfs::started_at(id).map(Timestamp::from_system);
        self.runner_started_at = Some(started.unwrap_or(now.wall));
        RunnerFacts::Alive { pid: id.pid }
    }

    /// A runner an earlier watcher of this run adopted (this one resumed): its start is the
    /// process's own, or — gone already — the request's.
    fn resumed_start(&mut self, ctx: &Ctx, adopted: Option<ProcessId>) {
        self.runner_started_at.get_or_insert_with(|| {
            adopted
                .and_then(procfs::started_at)
                .map_or(ctx.request.requested_at, Timestamp::from_system)
        });
    }

    /// The file at the run log's path, if it may be read as a run's output: a regular
    /// file of ours that no one else can write ([`log_refusal`]).
    fn trusted_log(&self, ctx: &Ctx) -> Option<FileId> {
        std::fs::symlink_metadata(ctx.paths.run_log(&ctx.build))
            .ok()
            .filter(|m| log_refusal(m, self.uid).is_none())
            .map(|m| FileId::of(&m))
    }

    fn note_runner(&mut self, status: &RunnerStatus) {
        self.runner_started = Some(status.started());
        self.runner_started_at = Some(status.started_at);
        self.runner_exited_at = status.exited_at;
    }

    /// Which file is this run's log, and which identity must it have? The file the runner
    /// recorded; for a fallback runner, the file at the log path that a process of the run
    /// holds open for writing (and only if it is ours alone).
    fn log_target(
        &self,
        ctx: &Ctx,
        cp: &mut Checkpoint,
        status: Option<&RunnerStatus>,
    ) -> Option<(PathBuf, FileId)> {
        if let Some(s) = status.filter(|s| s.pid != 0 && s.refused.is_none()) {
            return Some((
                s.log_path.clone(),
                FileId {
                    dev: s.log_dev,
                    ino: s.log_inode,
                },
            ));
        }
        let runner = cp.fallback?;
        let path = ctx.paths.run_log(&ctx.build);
        if let Some(id) = self.trusted_log(ctx) {
            if cp.fallback_log == Some(id) {
                return Some((path, id));
            }
            if procfs::held_for_writing(runner.pid, id.dev, id.ino) {
                logging::info(format!(
                    "reading {}: held open for writing by the runner's session",
                    path.display()
                ));
                cp.fallback_log = Some(id);
                return Some((path, id));
            }
        }
        cp.fallback_log.map(|id| (path, id))
    }

    /// Read what is new in the run log into the checkpoint's parser.
    fn follow_log(
        &mut self,
        ctx: &Ctx,
        cp: &mut Checkpoint,
        status: Option<&RunnerStatus>,
        now: &Moment,
    ) -> Result<()> {
        let Some((path, expected)) = self.log_target(ctx, cp, status) else {
            return Ok(());
        };
        // A hand-started run's log truncated by `> B.log` is a new run of the build writing
        // it: what was parsed before is dropped. Not for a categorized run, whose sub-runs
        // are the log's blocks in order: a second runner of the run (within the grace
        // period) writes blocks that come after the ones already reported, with new keys.
        let restart = cp.fallback.is_some() && !ctx.request.categorize;
        if self.follower.as_ref().is_none_or(|f| f.path() != path) {
            self.follower = Some(LogFollower::new(&path, cp.follow).restart_on_truncation(restart));
            cp.log_path = Some(path.clone());
        }
        let Some(follower) = self.follower.as_mut() else {
            return Ok(());
        };
        loop {
            let progress = follower
                .poll(expected, &mut cp.parser, READ_SLICE)
                .map_err(|e| Error::io("cannot read the run log", &path, e))?;
            if progress.truncated && restart {
                logging::warn(format!(
                    "{} was truncated: a new run writes it; what was read before is dropped",
                    path.display()
                ));
            } else if progress.truncated && cp.fallback.is_some() {
                logging::warn(format!(
                    "{} was truncated: another runner of the run writes it; its groups follow the ones already seen",
                    path.display()
                ));
            }
            cp.follow = follower.point();
            if progress.bytes > 0 {
                cp.last_activity = Some(now.clone());
            }
            if !progress.more || ctx.shutdown.requested() {
                return Ok(());
            }
        }
    }

    fn scan_reporter(&mut self, ctx: &Ctx) {
        // Reports count from the runner's start, once there is a runner.
        let Some(since) = self.runner_started_at else {
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
    /// run (noted when it is seen: report times are wall-clock times).
    fn last_activity(&mut self, ctx: &Ctx, cp: &mut Checkpoint, now: &Moment) -> Moment {
        let newest = self
            .reporter
            .as_ref()
            .and_then(|r| r.newest_mtime(&self.specs.1));
        if newest.is_some() && newest > self.newest_report {
            self.newest_report = newest;
            cp.last_activity = Some(now.clone());
        }
        let latest = [cp.last_activity.clone(), self.runner_started.clone()]
            .into_iter()
            .flatten()
            .fold(
                ctx.request.requested(),
                |a, b| if b.is_after(&a) { b } else { a },
            );
        cp.last_activity = Some(latest.clone());
        latest
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
        let (from, to, blocks) = match sub {
            None => (SystemTime::UNIX_EPOCH, None, &runs[..]),
            Some(i) => (
                i.checked_sub(1)
                    .and_then(seen)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                seen(i),
                runs.get(i..=i).unwrap_or_default(),
            ),
        };
        let specs = failing_specs(blocks).unwrap_or_else(|| match sub {
            None => self.specs.1.clone(),
            Some(_) => SpecSet::new(blocks.iter().flat_map(|b| b.spec_names())),
        });
        let Some(reporter) = self.reporter.as_mut() else {
            return reporter::Summary::default();
        };
        // A report rewritten in place (mochawesome with a fixed file name) changes no
        // directory entry: look at every file again before a message is written.
        for warning in reporter.scan(true).warnings {
            logging::warn(warning);
        }
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

/// Why the file at the run log's path is not read as a hand-started run's output, if one is
/// there and is not: said when no runner comes, so the operator sees what was refused.
fn untrusted(ctx: &Ctx, uid: u32) -> Option<String> {
    let path = ctx.paths.run_log(&ctx.build);
    let why = log_refusal(&std::fs::symlink_metadata(&path).ok()?, uid)?;
    Some(format!(
        "{} is not read as this run's log: {why}",
        path.display()
    ))
}

/// Why a file (its metadata, links not followed) may not be read as a hand-started run's
/// log, if it may not: only a regular file of the watcher's user that no one else can
/// write is.
fn log_refusal(m: &std::fs::Metadata, uid: u32) -> Option<String> {
    if m.file_type().is_symlink() {
        Some("it is a symbolic link".to_string())
    } else if !m.is_file() {
        Some("it is not a regular file".to_string())
    } else if m.uid() != uid {
        Some(format!(
            "it belongs to uid {}, not to the watcher's user",
            m.uid()
        ))
    } else if m.mode() & 0o022 != 0 {
        Some(format!(
            "others can write it (mode {:04o})",
            m.mode() & 0o7777
        ))
    } else {
        None
    }
}

/// Once the log's summary table is there, the specs it shows failing: the only reports whose
/// failed tests belong in the message. Another build running a spec this run passed, at the
/// same time, writes a report with this run's spec path and its own failures.
fn failing_specs(blocks: &[RunBlock]) -> Option<SpecSet> {
    let rows: Vec<&SpecRow> = blocks.iter().flat_map(|b| &b.spec_rows).collect();
    (!rows.is_empty()).then(|| {
        SpecSet::new(
            rows.into_iter()
                .filter(|r| r.is_failing())
                .map(|r| r.spec.as_str()),
        )
    })
}

/// Every spec the run's log names so far: the reports that belong to this run.
fn run_specs(cp: &Checkpoint) -> SpecSet {
    SpecSet::new(cp.parser.summary().runs.iter().flat_map(|b| b.spec_names()))
}

/// The runner is gone without recording its exit. If cancel-atvm-runner had asked for the
/// stop, it is the cancel that ended it (the wrapper was killed when the stop timed out).
fn vanished_facts(s: &RunnerStatus, rebooted: bool) -> RunnerFacts {
    if s.cancel_requested {
        exited_facts(s)
    } else {
        RunnerFacts::Vanished {
            pid: s.pid,
            rebooted,
        }
    }
}

fn exited_facts(s: &RunnerStatus) -> RunnerFacts {
    RunnerFacts::Exited {
        exit_code: s.exit_code,
        signal: s.signal,
        stop_signal: s.stop_signal,
        cancel_requested: s.cancel_requested,
        at: s.exited().unwrap_or_else(|| s.started()),
    }
}
