//! The run log: which file is this run's (the one the runner recorded, or for a fallback
//! runner the one its session holds open for writing) and reading what is new in it.

use super::{Observer, READ_SLICE};
use crate::ctx::Ctx;
use crate::persist::{Checkpoint, EarlierRead};
use atvm_common::error::{Error, Result};
use atvm_common::follow::{FileId, LogFollower};
use atvm_common::procfs::{self, ProcessId};
use atvm_common::state::{EarlierLog, RunnerStatus};
use atvm_common::{Moment, logging};
use std::path::{Path, PathBuf};

impl Observer {
    /// Which file is this run's log, and which identity must it have? The file the runner
    /// recorded; for a fallback runner, the file at the log path that a process of the run
    /// holds open for writing (and only if it is ours alone).
    pub(super) fn log_target(
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
    pub(super) fn follow_log(
        &mut self,
        ctx: &Ctx,
        cp: &mut Checkpoint,
        status: Option<&RunnerStatus>,
        now: &Moment,
    ) -> Result<()> {
        self.log_open = false;
        if let Some(s) = status.filter(|s| s.pid != 0 && s.refused.is_none()) {
            self.follow_earlier(ctx, cp, s, now)?;
        }
        let Some((path, expected)) = self.log_target(ctx, cp, status) else {
            return Ok(());
        };
        // A hand-started run's log truncated by `> B.log` is a new run of the build writing
        // it: what was parsed before is dropped. Not for a categorized run, whose sub-runs
        // are the log's blocks in order: a second runner of the run (within the grace
        // period) writes blocks that come after the ones already reported, with new keys.
        let restart = cp.fallback.is_some() && !ctx.request.categorize;
        let follower = follower_at(&mut self.follower, cp, &path, restart);
        let mut through_proc = false;
        loop {
            let progress = follower
                .poll(expected, &mut cp.parser, READ_SLICE)
                .map_err(|e| Error::io("cannot read the run log", &path, e))?;
            if !progress.open && !through_proc {
                // Removed (a /tmp cleaner) or replaced while the runner still writes it:
                // its descriptor under /proc still leads to it.
                through_proc = true;
                if let Some(file) = writer_of(status)
                    .and_then(|id| procfs::open_held(id, expected.dev, expected.ino))
                {
                    logging::warn(format!(
                        "{} no longer leads to the run's log (removed or replaced): reading it through the runner's descriptor",
                        path.display()
                    ));
                    follower.use_file(file, expected);
                    continue;
                }
            }
            self.log_open = progress.open;
            if progress.truncated && cp.fallback.is_some() {
                cp.truncated_since_adoption = true;
            }
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
            cp.follow_start_id = status.map(|s| s.start_id.clone());
            if progress.bytes > 0 {
                cp.last_activity = Some(now.clone());
            }
            if !progress.more || ctx.shutdown.requested() {
                return Ok(());
            }
        }
    }

    /// Read the earlier runners' logs of this run (a categorized run's second runner moved
    /// the first one's to `<log>.1`) each to its end, in order, before the current one: the
    /// run's output is all of them, whenever the watcher looked (one that was down while the
    /// second runner started still reads the first runner's last groups).
    fn follow_earlier(
        &mut self,
        ctx: &Ctx,
        cp: &mut Checkpoint,
        status: &RunnerStatus,
        now: &Moment,
    ) -> Result<()> {
        for earlier in &status.earlier_logs {
            let id = FileId {
                dev: earlier.log_dev,
                ino: earlier.log_inode,
            };
            if cp.earlier_read.iter().any(|r| r.file == id) {
                continue;
            }
            // Two files that exist never share an inode: an earlier log whose identity a
            // later log of the run now has was removed and its inode reused. What is at that
            // identity is the later log, not this one.
            if later_ids(status, earlier).any(|later| later == id) {
                self.earlier_reused(cp, earlier, id);
                continue;
            }
            let path = &earlier.log_path;
            let follower = follower_at(&mut self.follower, cp, path, false);
            let found = loop {
                let progress = follower
                    .poll(id, &mut cp.parser, READ_SLICE)
                    .map_err(|e| Error::io("cannot read the run log", path, e))?;
                cp.follow = follower.point();
                if progress.bytes > 0 {
                    cp.last_activity = Some(now.clone());
                }
                if ctx.shutdown.requested() {
                    return Ok(());
                }
                if !progress.open || !progress.more {
                    break progress.open;
                }
            };
            let read = follower
                .point()
                .filter(|p| p.file == id)
                .map_or(0, |p| p.bytes_read());
            if !found {
                logging::warn(format!(
                    "the log of an earlier runner of this run ({}) is gone: it cannot be read to its end",
                    path.display()
                ));
            }
            cp.earlier_read.push(EarlierRead {
                file: id,
                read,
                found,
            });
        }
        Ok(())
    }

    /// An earlier log whose identity a later log now has: it is gone, and it was read as far
    /// as the checkpoint's point says when that point is in it (the point's start says so:
    /// the identity alone cannot). The later log is then read from its start.
    fn earlier_reused(&mut self, cp: &mut Checkpoint, earlier: &EarlierLog, id: FileId) {
        let ours = cp.follow_start_id.as_deref() == Some(earlier.start_id.as_str());
        let read = cp
            .follow
            .filter(|p| ours && p.file == id)
            .map_or(0, |p| p.bytes_read());
        cp.earlier_read.push(EarlierRead {
            file: id,
            read,
            found: false,
        });
        self.follower = None;
        cp.follow = None;
        cp.parser.finish_partial_line();
    }

    /// Why what was read of a managed run's log is not the whole of its command's output,
    /// if it is not (docs/watcher-service.md, "Restart equivalence"): the runner could not
    /// write it, or — once the runner recorded how many bytes it wrote — fewer were read
    /// and the file can no longer give them.
    pub(super) fn log_gap(&self, cp: &Checkpoint, status: Option<&RunnerStatus>) -> Option<String> {
        let s = status.filter(|s| s.pid != 0 && s.refused.is_none())?;
        if let Some(gap) = earlier_gap(cp, s) {
            return Some(gap);
        }
        let path = s.log_path.display();
        if let Some(e) = &s.log_write_error {
            let fs = procfs::mount_point(&s.log_path)
                .map(|m| format!("the file system mounted at {}", m.display()))
                .unwrap_or_else(|| "its file system".to_string());
            return Some(format!(
                "the runner could not write the run log {path} from byte {} on ({}): {fs} is full or failing, so the run's output is incomplete and its result unknown",
                e.offset, e.error
            ));
        }
        if !s.has_exited() {
            return None;
        }
        let expected = FileId {
            dev: s.log_dev,
            ino: s.log_inode,
        };
        let read = cp
            .follow
            .filter(|p| p.file == expected)
            .map_or(0, |p| p.bytes_read());
        match (s.log_bytes, self.log_open) {
            (Some(n), _) if read >= n => None,
            (Some(n), true) => Some(format!(
                "the run log {path} holds less than the runner wrote ({read} of {n} bytes read): it was cut short before it was read to its end"
            )),
            (Some(n), false) => Some(format!(
                "the run log {path} was removed or replaced before it was read to its end ({read} of {n} bytes read)"
            )),
            (None, true) => None,
            (None, false) => Some(format!(
                "the run log {path} is gone, and its runner (an earlier version) did not record how long it was: whether it was read to its end cannot be told"
            )),
        }
    }
}

/// The follower of the log at `path` in `slot`, resumed from the checkpoint's point when it
/// is a new one (the log's path changed, or this watcher just started).
fn follower_at<'f>(
    slot: &'f mut Option<LogFollower>,
    cp: &mut Checkpoint,
    path: &Path,
    restart: bool,
) -> &'f mut LogFollower {
    if slot.as_ref().is_none_or(|f| f.path() != path) {
        *slot = Some(LogFollower::new(path, cp.follow).restart_on_truncation(restart));
        cp.log_path = Some(path.to_path_buf());
    }
    slot.get_or_insert_with(|| LogFollower::new(path, cp.follow))
}

/// The identities of the logs of `status`'s run written after `earlier`: the later earlier
/// logs, then the current one.
fn later_ids<'s>(
    status: &'s RunnerStatus,
    earlier: &'s EarlierLog,
) -> impl Iterator<Item = FileId> + 's {
    status
        .earlier_logs
        .iter()
        .skip_while(move |e| !std::ptr::eq(*e, earlier))
        .skip(1)
        .map(|e| FileId {
            dev: e.log_dev,
            ino: e.log_inode,
        })
        .chain(std::iter::once(FileId {
            dev: status.log_dev,
            ino: status.log_inode,
        }))
}

/// Why an earlier runner's log of this run is not all read, if it is not: the runner could
/// not write it, or it was gone (or shorter than written) when the watcher came to read it.
pub(super) fn earlier_gap(cp: &Checkpoint, s: &RunnerStatus) -> Option<String> {
    s.earlier_logs.iter().find_map(|earlier| {
        let path = earlier.log_path.display();
        if let Some(e) = &earlier.log_write_error {
            return Some(format!(
                "an earlier runner of this run could not write its log {path} from byte {} on ({}): the run's output is incomplete and its result unknown",
                e.offset, e.error
            ));
        }
        let file = FileId {
            dev: earlier.log_dev,
            ino: earlier.log_inode,
        };
        let read = cp.earlier_read.iter().find(|r| r.file == file)?;
        // Read to its end (as many bytes as its runner wrote) is whole, whatever became of
        // the file since; without that count, only a file that was there was read to its end.
        let whole = match earlier.log_bytes {
            Some(n) => read.read >= n,
            None => read.found,
        };
        (!whole).then(|| {
            format!(
                "the log of an earlier runner of this run ({path}, moved to {path}.1 by the next runner) was gone or cut short before it was read to its end ({} bytes read)",
                read.read
            )
        })
    })
}

/// The wrapper that still holds the run's log open, while it runs.
fn writer_of(status: Option<&RunnerStatus>) -> Option<ProcessId> {
    status
        .filter(|s| s.pid != 0 && !s.has_exited())
        .map(|s| ProcessId {
            pid: s.pid,
            start_ticks: s.pid_start_ticks,
        })
}
