//! The runner of this run (docs/watcher-service.md, "Run identity"): its status file when the
//! run is started through start-atvm-runner, else a process found by its command line
//! that writes the run's log (the fallback), checked against /proc so that a reused pid,
//! another user's process or one of an earlier run is never taken for it.

use super::Observer;
use crate::ctx::Ctx;
use crate::decide::RunnerFacts;
use crate::persist::Checkpoint;
use atvm_common::follow::FileId;
use atvm_common::procfs::{self, ProcessId};
use atvm_common::state::{RunnerSpec, RunnerStatus};
use atvm_common::{Moment, Timestamp, fsutil, logging};
use std::os::unix::fs::MetadataExt;

impl Observer {
    /// The runner of this run (docs/watcher-service.md, "Run identity"): by its status file when the run
    /// was started through start-atvm-runner (before that status appears: not yet), else by
    /// the command-line fallback.
    pub(super) fn runner(
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
    pub(super) fn is_managed(&mut self, ctx: &Ctx) -> bool {
        if !self.managed {
            let spec: Option<RunnerSpec> = fsutil::read_json(&ctx.sd.runner_spec()).ok().flatten();
            self.managed = spec.is_some_and(|s| s.run_id == ctx.request.run_id);
        }
        self.managed
    }

    /// A fallback adopted before the run turned out to be managed is forgotten, with what
    /// was read of its log.
    pub(super) fn drop_fallback(&mut self, cp: &mut Checkpoint) {
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

    pub(super) fn managed_runner(
        &mut self,
        ctx: &Ctx,
        status: RunnerStatus,
        now: &Moment,
    ) -> (RunnerFacts, RunnerStatus) {
        self.note_runner(ctx, &status);
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
                    self.note_runner(ctx, &again);
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
    pub(super) fn fallback_runner(
        &mut self,
        ctx: &Ctx,
        cp: &mut Checkpoint,
        now: &Moment,
    ) -> RunnerFacts {
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
            (Some(adopted), _) => {
                self.resumed_start(ctx, None);
                // Gone, but what reads its output pipe still writes the log (`| tee`, `| sed`
                // draining the pipe): the run's output is not all there yet.
                let draining = cp
                    .fallback_pipe
                    .zip(log)
                    .is_some_and(|(pipe, l)| procfs::pipe_drains_into(pipe, l.dev, l.ino));
                if draining {
                    return RunnerFacts::Alive { pid: adopted.pid };
                }
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
    pub(super) fn adopt(
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
        // Not when the truncation was already seen after the last adoption: what was read
        // since is the new runner's output from its start, and reading it again would make
        // its groups twice.
        let takeover = cp.fallback.is_some_and(|old| old != id);
        let new_file = cp.fallback_log.is_some() && cp.fallback_log != log;
        let read_from_start = std::mem::take(&mut cp.truncated_since_adoption);
        if new_file || (takeover && !appends && !read_from_start) {
            match ctx.request.categorize {
                true => cp.parser.reset_partial_line(),
                false => cp.parser = Default::default(),
            }
            cp.follow = None;
            self.follower = None;
        }
        cp.fallback = Some(id);
        cp.fallback_pipe = procfs::stdout_pipe(id.pid);
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
    pub(super) fn resumed_start(&mut self, ctx: &Ctx, adopted: Option<ProcessId>) {
        self.runner_started_at.get_or_insert_with(|| {
            adopted
                .and_then(procfs::started_at)
                .map_or(ctx.request.requested_at, Timestamp::from_system)
        });
    }

    /// The file at the run log's path, if it may be read as a run's output: a regular
    /// file of ours that no one else can write ([`log_refusal`]).
    pub(super) fn trusted_log(&self, ctx: &Ctx) -> Option<FileId> {
        std::fs::symlink_metadata(ctx.paths.run_log(&ctx.build))
            .ok()
            .filter(|m| log_refusal(m, self.uid).is_none())
            .map(|m| FileId::of(&m))
    }

    pub(super) fn note_runner(&mut self, ctx: &Ctx, status: &RunnerStatus) {
        // The run's reports count from its first runner's start (a categorized run's later
        // runner does not make the earlier groups' reports stale).
        let since = status
            .earlier_logs
            .iter()
            .filter_map(|e| e.started_at)
            .chain([status.started_at])
            .min();
        if self.reports_since != since {
            self.reports_since = since;
            self.reporter = None;
            self.stale_reports = fsutil::read_json(&ctx.sd.runner_stale_reports())
                .unwrap_or_else(|e| {
                    logging::warn(format!("{e}; reports are told apart by their times alone"));
                    None
                })
                .unwrap_or_default();
        }
        self.runner_started = Some(status.started());
        self.runner_started_at = Some(status.started_at);
        self.runner_exited_at = status.exited_at;
    }
}

/// Why the file at the run log's path is not read as a hand-started run's output, if one is
/// there and is not: said when no runner comes, so the operator sees what was refused.
pub(super) fn untrusted(ctx: &Ctx, uid: u32) -> Option<String> {
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
pub(super) fn log_refusal(m: &std::fs::Metadata, uid: u32) -> Option<String> {
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

/// The runner is gone without recording its exit. If cancel-atvm-runner had asked for the
/// stop, it is the cancel that ended it (the wrapper was killed when the stop timed out).
pub(super) fn vanished_facts(s: &RunnerStatus, rebooted: bool) -> RunnerFacts {
    if s.cancel_requested {
        exited_facts(s)
    } else {
        RunnerFacts::Vanished {
            pid: s.pid,
            rebooted,
        }
    }
}

pub(super) fn exited_facts(s: &RunnerStatus) -> RunnerFacts {
    RunnerFacts::Exited {
        exit_code: s.exit_code,
        signal: s.signal,
        stop_signal: s.stop_signal,
        cancel_requested: s.cancel_requested,
        at: s.exited().unwrap_or_else(|| s.started()),
    }
}
