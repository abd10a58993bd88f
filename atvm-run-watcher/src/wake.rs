//! When the watcher looks again (docs/watcher-service.md, "Waking"). It waits on events
//! rather than a timer: the runner's exit (a pidfd, for a hand-started runner too), writes
//! to the log, the reporter directory and the state directory (inotify), and SIGTERM/SIGINT
//! (the stop's self-pipe). A timer remains only for the watcher's own deadlines (grace,
//! hang, start timeout) and for the safety net: every `--poll-seconds` it looks anyway, so
//! a missed event (an inotify queue overflow, a file system without inotify, a kernel
//! without pidfds) costs at most one period, never a wrong decision.
//!
//! This module never decides anything: it only says "look now". Bursts are coalesced —
//! a Cypress run writing thousands of lines a second wakes the watcher at most once per
//! [`SETTLE`] for its log and reports — while the runner's record, the cancel marker and
//! the runner's exit wake it at once. `ATVM_WATCH_EVENTS=off` turns the events off (the
//! watcher then looks every `--poll-seconds`, as before events existed).

use crate::shutdown::Shutdown;
use atvm_common::logging;
use atvm_common::procfs::{self, ProcessId};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, pidfd_open};
use std::collections::HashSet;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The least time between the end of a look and the next one woken by the log alone.
pub const SETTLE: Duration = Duration::from_millis(100);
/// The same for the reporter directory, which every build of the controller writes to: one
/// build's reports must not keep every other watcher looking.
pub const REPORTS_SETTLE: Duration = Duration::from_secs(1);
/// A burst never has the watcher looking more than this share of the time: the settle is
/// stretched to this many times what the last look took (a look over a reporter directory
/// of 80,000 files is not free).
const LOOK_DUTY: u32 = 4;
/// The variable that turns events off.
pub const EVENTS_VAR: &str = "ATVM_WATCH_EVENTS";

/// What the watcher follows now, so the watches follow it too.
#[derive(Debug, Default)]
pub struct Targets {
    /// The build's state directory (cancel marker, a new request) and its `runner/`.
    pub state_dir: PathBuf,
    pub reporter_dir: PathBuf,
    /// The run log, once it is known.
    pub log: Option<PathBuf>,
    /// The runner while it lives (the wrapper, or a hand-started process).
    pub runner: Option<ProcessId>,
}

/// Why a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woken {
    /// Something the watcher reads changed.
    Event,
    /// The runner ended.
    RunnerExit,
    /// A deadline of the watcher's, or the safety net.
    Timer,
    /// SIGTERM/SIGINT.
    Stop,
}

/// Which input a watch is on; the log and the reports are coalesced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    StateDir,
    RunnerDir,
    Reports,
    Log,
}

#[derive(Debug)]
pub struct Wake {
    /// Events are wanted (not `ATVM_WATCH_EVENTS=off`): the runner's pidfd is waited on
    /// even when inotify is not available.
    enabled: bool,
    inotify: Option<OwnedFd>,
    /// Watch descriptor → what it watches (and the path, to re-add a replaced file).
    watches: Vec<(i32, Source, PathBuf)>,
    runner: Option<(ProcessId, OwnedFd)>,
    /// A runner whose exit was already reported (its pidfd stays readable).
    runner_seen_gone: Option<ProcessId>,
    /// When the last wait returned (a look started) and when the next began (it ended):
    /// bursts wait out their settle from the end of the last look.
    last_return: Instant,
    last_look_end: Instant,
    /// Failures said once each (a watch that cannot be added, an overflow).
    said: HashSet<String>,
    /// The log's watch may no longer be on the file at its path (it was removed, moved or
    /// had its links changed): add it again at the next look.
    log_stale: bool,
}

impl Wake {
    /// Events on, unless `ATVM_WATCH_EVENTS=off` (or inotify is not available: then said
    /// once, and the safety net alone wakes the watcher).
    pub fn new() -> Wake {
        let off = std::env::var(EVENTS_VAR).is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "off" | "0" | "no" | "false"
            )
        });
        let mut wake = Wake {
            enabled: !off,
            inotify: None,
            watches: Vec::new(),
            runner: None,
            runner_seen_gone: None,
            last_return: Instant::now(),
            last_look_end: Instant::now(),
            said: HashSet::new(),
            log_stale: false,
        };
        if !off {
            match inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK) {
                Ok(fd) => wake.inotify = Some(fd),
                Err(e) => wake.say_once(format!(
                    "cannot watch files (inotify: {e}); looking every --poll-seconds instead"
                )),
            }
        }
        wake
    }

    /// Are events on (file events, or at least the runner's exit)?
    pub fn events(&self) -> bool {
        self.enabled
    }

    /// Keep the watches in step with `t`: new directories, a log that appeared or was
    /// replaced, another runner. Cheap when nothing changed.
    pub fn track(&mut self, t: &Targets) {
        if !self.enabled {
            return;
        }
        self.track_runner(t.runner);
        if self.inotify.is_none() {
            return;
        }
        self.ensure(Source::StateDir, &t.state_dir);
        self.ensure(Source::RunnerDir, &t.state_dir.join("runner"));
        self.ensure(Source::Reports, &t.reporter_dir);
        if let Some(log) = &t.log {
            self.ensure(Source::Log, log);
        }
    }

    /// Watch `path` for `source` unless it already is. The log is watched again when its
    /// watch may have been left on another file (the watch follows an inode, not a name):
    /// an idle look adds nothing and costs no system call.
    fn ensure(&mut self, source: Source, path: &Path) {
        let watched = self
            .watches
            .iter()
            .any(|(_, s, p)| *s == source && p == path);
        if watched && !(source == Source::Log && std::mem::take(&mut self.log_stale)) {
            return;
        }
        let Some(fd) = &self.inotify else { return };
        let flags = match source {
            Source::StateDir | Source::RunnerDir => {
                WatchFlags::MOVED_TO | WatchFlags::CLOSE_WRITE | WatchFlags::CREATE
            }
            Source::Reports => WatchFlags::MOVED_TO | WatchFlags::CLOSE_WRITE,
            Source::Log => {
                WatchFlags::MODIFY
                    | WatchFlags::CLOSE_WRITE
                    | WatchFlags::ATTRIB
                    | WatchFlags::DELETE_SELF
                    | WatchFlags::MOVE_SELF
            }
        };
        match inotify::add_watch(fd, path, flags) {
            Ok(wd) => {
                // The same inode gives the same descriptor back: nothing new.
                if !self.watches.iter().any(|(w, ..)| *w == wd) {
                    self.watches
                        .retain(|(_, s, p)| !(*s == source && p == path));
                    self.watches.push((wd, source, path.to_path_buf()));
                }
            }
            // Not there (yet, or any more: a log moved to `.1` before the next one exists):
            // a watch left on the old file is not this path's, and every look tries again;
            // the safety net covers the meantime.
            Err(Errno::NOENT) => {
                self.watches
                    .retain(|(_, s, p)| !(*s == source && p == path));
            }
            Err(e) => self.say_once(format!(
                "cannot watch {} ({e}); it is looked at every --poll-seconds",
                path.display()
            )),
        }
    }

    /// A pidfd for the runner while it lives: readable the moment it ends.
    fn track_runner(&mut self, runner: Option<ProcessId>) {
        if self.runner.as_ref().map(|(id, _)| *id) == runner {
            return;
        }
        self.runner = None;
        let Some(id) = runner.filter(|id| Some(*id) != self.runner_seen_gone) else {
            return;
        };
        let Some(pid) = i32::try_from(id.pid).ok().and_then(Pid::from_raw) else {
            return;
        };
        match pidfd_open(pid, PidfdFlags::empty()) {
            // Opened, and still the same process (not a pid reused since it was seen).
            Ok(fd) if procfs::is_alive(id) => self.runner = Some((id, fd)),
            Ok(_) | Err(Errno::SRCH) => {}
            Err(e) => self.say_once(format!(
                "cannot watch the runner's exit (pidfd: {e}); it is looked for every --poll-seconds"
            )),
        }
    }

    /// Wait until something may have changed, `deadline` (the watcher's next own deadline)
    /// or `safety_net` passes, or a stop is requested — whichever comes first.
    pub fn wait(
        &mut self,
        shutdown: &Shutdown,
        safety_net: Duration,
        deadline: Option<Duration>,
    ) -> Woken {
        self.last_look_end = Instant::now();
        let timeout = deadline.map_or(safety_net, |d| d.min(safety_net));
        let woken = match self.inotify.is_some() || self.runner.is_some() {
            true => self.wait_events(shutdown, timeout),
            false => sleep(shutdown, timeout),
        };
        self.last_return = Instant::now();
        woken
    }

    fn wait_events(&mut self, shutdown: &Shutdown, timeout: Duration) -> Woken {
        let until = Instant::now() + timeout;
        // A burst seen but not yet looked at: when to look at it.
        let mut burst_at: Option<Instant> = None;
        loop {
            if shutdown.requested() {
                return Woken::Stop;
            }
            let now = Instant::now();
            let wake_at = burst_at.map_or(until, |b| b.min(until));
            if now >= wake_at {
                return if burst_at.is_some_and(|b| b <= now) {
                    Woken::Event
                } else {
                    Woken::Timer
                };
            }
            // While a burst settles, only the stop and the runner's exit can cut it short:
            // polling inotify again would wake at every write of the burst.
            match self.poll_once(shutdown, wake_at - now, burst_at.is_none()) {
                Ok(Some(Ready::Urgent)) => return Woken::Event,
                Ok(Some(Ready::RunnerExit)) => return Woken::RunnerExit,
                Ok(Some(Ready::Stop)) => return Woken::Stop,
                Ok(Some(Ready::Burst(settle))) => {
                    // Settled from the end of the last look, and never busier than
                    // LOOK_DUTY allows.
                    let cost = self
                        .last_look_end
                        .saturating_duration_since(self.last_return);
                    let settle = settle.max(cost * LOOK_DUTY);
                    burst_at.get_or_insert((self.last_look_end + settle).max(now));
                }
                Ok(None) => {}
                // A wait that fails (ENOMEM, say) must not spin: the rest of this wait is
                // a plain sleep, and the next one tries the events again.
                Err(()) => return sleep(shutdown, wake_at.saturating_duration_since(now)),
            }
        }
    }

    /// One poll(2) over the stop pipe, the runner's pidfd and (with `files`) inotify.
    fn poll_once(
        &mut self,
        shutdown: &Shutdown,
        timeout: Duration,
        files: bool,
    ) -> Result<Option<Ready>, ()> {
        let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let polled = {
            let stop = shutdown.as_fd();
            // Fixed places: 0 the stop, then the runner's pidfd and inotify, each if there.
            let mut fds = vec![PollFd::new(&stop, PollFlags::IN)];
            let mut at = [None, None];
            if let Some((_, pidfd)) = &self.runner {
                at[0] = Some(fds.len());
                fds.push(PollFd::new(pidfd, PollFlags::IN));
            }
            if let Some(inotify) = self.inotify.as_ref().filter(|_| files) {
                at[1] = Some(fds.len());
                fds.push(PollFd::new(inotify, PollFlags::IN));
            }
            match poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(Errno::INTR) => {
                    let ready = |i: Option<usize>| {
                        i.and_then(|i| fds.get(i))
                            .is_some_and(|f| !f.revents().is_empty())
                    };
                    Ok((ready(Some(0)), ready(at[1]), ready(at[0])))
                }
                Err(e) => Err(e),
            }
        };
        let (stop_ready, inotify_ready, runner_ready) = match polled {
            Ok(ready) => ready,
            Err(e) => {
                self.say_once(format!(
                    "cannot wait for events ({e}); looking every --poll-seconds meanwhile"
                ));
                return Err(());
            }
        };
        if stop_ready {
            shutdown.drain();
            return Ok(Some(Ready::Stop));
        }
        if runner_ready {
            self.runner_seen_gone = self.runner.take().map(|(id, _)| id);
            return Ok(Some(Ready::RunnerExit));
        }
        Ok(inotify_ready.then(|| self.read_events()).flatten())
    }

    /// Read every queued inotify event: urgent if one is about the runner's record or the
    /// state directory's markers, a burst if only about the log or the reports.
    fn read_events(&mut self) -> Option<Ready> {
        let fd = self.inotify.as_ref()?;
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(fd, &mut buf);
        let mut found: Option<Ready> = None;
        let mut overflow = false;
        let mut gone: Vec<i32> = Vec::new();
        loop {
            let event = match reader.next() {
                Ok(e) => e,
                Err(Errno::AGAIN | Errno::INTR) => break,
                Err(_) => break,
            };
            let flags = event.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                overflow = true;
                continue;
            }
            let source = self
                .watches
                .iter()
                .find(|(wd, ..)| *wd == event.wd())
                .map(|(_, s, _)| *s);
            if source == Some(Source::Log)
                && flags.intersects(
                    ReadFlags::DELETE_SELF
                        | ReadFlags::MOVE_SELF
                        | ReadFlags::ATTRIB
                        | ReadFlags::IGNORED,
                )
            {
                self.log_stale = true;
            }
            if flags.contains(ReadFlags::IGNORED) {
                gone.push(event.wd());
                continue;
            }
            let name = event.file_name().map(|n| n.to_string_lossy().into_owned());
            let kind = classify(source, name.as_deref());
            found = match (found, kind) {
                (Some(Ready::Urgent), _) | (_, Some(Ready::Urgent)) => Some(Ready::Urgent),
                // The log's settle is shorter than the reports': the sooner one stands.
                (Some(Ready::Burst(a)), Some(Ready::Burst(b))) => Some(Ready::Burst(a.min(b))),
                (f, k) => f.or(k),
            };
        }
        self.watches.retain(|(wd, ..)| !gone.contains(wd));
        if overflow {
            // A move of the log may be among what was lost.
            self.log_stale = true;
            self.say_once(
                "too many file events at once (inotify queue overflow): looking now, and every --poll-seconds"
                    .to_string(),
            );
            return Some(Ready::Urgent);
        }
        found
    }

    fn say_once(&mut self, what: String) {
        if self.said.insert(what.clone()) {
            logging::warn(what);
        }
    }
}

impl Default for Wake {
    fn default() -> Self {
        Wake::new()
    }
}

/// What one poll(2) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ready {
    Urgent,
    /// Worth a look once this long after the last one.
    Burst(Duration),
    RunnerExit,
    Stop,
}

/// Sleep for `d` unless a stop is requested first.
fn sleep(shutdown: &Shutdown, d: Duration) -> Woken {
    match shutdown.sleep(d) {
        true => Woken::Timer,
        false => Woken::Stop,
    }
}

/// Whether an event on `source` (about the file `name` in a watched directory) is worth a
/// look, and how soon. The watcher's own writes (state.json, its checkpoint, payloads,
/// markers) are not: only what others write is.
fn classify(source: Option<Source>, name: Option<&str>) -> Option<Ready> {
    match (source?, name) {
        (Source::Log, _) => Some(Ready::Burst(SETTLE)),
        (Source::Reports, _) => Some(Ready::Burst(REPORTS_SETTLE)),
        // The cancel helper's marker, a new request, the runner's directory appearing.
        (Source::StateDir, Some("cancelled.marker" | "request.json" | "runner")) => {
            Some(Ready::Urgent)
        }
        // The runner's record (its start, exit, a cancel request) and the start's spec.
        (Source::RunnerDir, Some("status.json" | "spec.json")) => Some(Ready::Urgent),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_others_write_wakes_the_watcher() {
        use Source::*;
        assert_eq!(classify(Some(Log), None), Some(Ready::Burst(SETTLE)));
        assert_eq!(
            classify(Some(Reports), Some("a.json")),
            Some(Ready::Burst(REPORTS_SETTLE))
        );
        assert_eq!(
            classify(Some(StateDir), Some("cancelled.marker")),
            Some(Ready::Urgent)
        );
        assert_eq!(
            classify(Some(RunnerDir), Some("status.json")),
            Some(Ready::Urgent)
        );
        for own in [
            "state.json",
            "payload.json",
            "posted.marker",
            ".state.json.tmp",
        ] {
            assert_eq!(classify(Some(StateDir), Some(own)), None, "{own}");
        }
        assert_eq!(classify(Some(RunnerDir), Some("timeline.jsonl")), None);
        assert_eq!(classify(None, Some("status.json")), None);
    }
}
