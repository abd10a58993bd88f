//! The per-build state directory (docs/watcher-service.md) and the records in it.
//!
//! Writers: `request.json` by start-atvm-run-watcher, `runner/*` by the runner tools,
//! `state.json` by the watcher and the cancel helper, markers by their owners. Every write is
//! atomic. `state.json` and `runner/status.json` are shared by two processes, so their
//! read-modify-write happens under a short lock (`state.lock`, `runner/status.lock`); that is
//! what keeps a cancel from being overwritten by a watcher saving at the same moment.

use crate::build_name::BuildName;
use crate::error::{Error, Result};
use crate::fsutil::{self, Lock};
use crate::logging;
use crate::procfs::{self, ProcessId};
use crate::time::{BootInstant, Moment, Timestamp};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Archived state directories kept per build name.
pub const ARCHIVE_KEEP: usize = 20;

/// `request.json`: what start-atvm-run-watcher was asked to do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub build_name: String,
    /// Unique per start; every other record of the run carries it.
    pub run_id: String,
    pub requested_at: Timestamp,
    /// The boot clock at the request: the start timeout is measured on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_boot: Option<BootInstant>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub template_command: Option<String>,
    #[serde(default)]
    pub runner_command: Option<String>,
    #[serde(default)]
    pub config_family: Option<String>,
    #[serde(default)]
    pub config_file: Option<String>,
    #[serde(default)]
    pub migration_style: Option<String>,
    #[serde(default)]
    pub integration_plugin: Option<String>,
    #[serde(default)]
    pub categorize: bool,
    #[serde(default)]
    pub scope_description: Option<String>,
    /// Processes that ran earlier runs of this build name and were still alive when this
    /// run was requested (a hand-started runner a cancel could not stop, a leftover): never
    /// this run's runner, nor are their descendants. Reusing a name inherits nothing, not
    /// even the earlier run's process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_runners: Vec<ProcessId>,
}

impl Request {
    /// When the run was requested.
    pub fn requested(&self) -> Moment {
        Moment {
            wall: self.requested_at,
            boot: self.requested_boot.clone(),
        }
    }
}

/// `runner/spec.json`: what run-atvm-runner should run. Mode 0600: it holds a command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerSpec {
    pub build_name: String,
    pub run_id: String,
    pub command: String,
    pub workdir: PathBuf,
    pub log_path: PathBuf,
    pub created_at: Timestamp,
    /// Unique per start-atvm-runner call; the wrapper echoes it in `status.json`, which is
    /// how the start helper confirms that this start (not an earlier one) was taken up.
    #[serde(default)]
    pub start_id: String,
}

impl RunnerSpec {
    /// Refuse a working directory the command cannot run in: missing, or not a directory.
    /// Checked by the start helpers before anything starts, and again by the wrapper, which
    /// runs later and may find it gone. (A symlink to a directory is the operator's own
    /// path, outside the state root: it is followed.)
    pub fn check_workdir(workdir: &Path) -> Result<()> {
        match fs::metadata(workdir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(Error::file(
                "runner working directory is not a directory",
                workdir,
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::file(
                "runner working directory does not exist",
                workdir,
            )),
            Err(e) => Err(Error::io("cannot use runner working directory", workdir, e)),
        }
    }
}

/// `runner/status.json`: written by run-atvm-runner at start and exit, by start-atvm-runner
/// when it refuses a start, and by cancel-atvm-runner (`cancel_requested`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerStatus {
    pub build_name: String,
    pub run_id: String,
    /// The wrapper (the unit's main process); it is the one that records the exit.
    pub pid: u32,
    /// Its start time in clock ticks since boot (/proc/<pid>/stat field 22): with the pid,
    /// this identifies the process even after the pid is reused.
    pub pid_start_ticks: u64,
    /// The `/bin/sh -c` child, leader of the process group that signals are forwarded to.
    pub child_pid: u32,
    pub started_at: Timestamp,
    pub log_path: PathBuf,
    pub log_inode: u64,
    pub log_dev: u64,
    /// The spec's `start_id` this wrapper ran.
    #[serde(default)]
    pub start_id: String,
    /// The boot clock at the start: a status from an earlier boot is never alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_boot: Option<BootInstant>,
    /// Why the wrapper could not start the command (the path it refused is named); it
    /// exited 1 and the run ends UNKNOWN at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    #[serde(default)]
    pub cancel_requested: bool,
    #[serde(default)]
    pub cancel_requested_at: Option<Timestamp>,
    /// A SIGTERM/SIGINT the wrapper received and forwarded: the run was stopped from outside.
    #[serde(default)]
    pub stop_signal: Option<i32>,
    #[serde(default)]
    pub exited_at: Option<Timestamp>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that killed the child, when it did not exit normally.
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_boot: Option<BootInstant>,
    /// How many bytes of the command's output the wrapper wrote to the log, recorded with
    /// the exit: a watcher has read the whole log only when it has read that many bytes of
    /// it (a log removed, replaced or cut short before that lost part of the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<u64>,
    /// The first write to the log that failed (a full file system): from that byte on the
    /// log lacks the command's output, and the run can only end UNKNOWN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_write_error: Option<LogWriteError>,
    /// Why `runner/timeline.jsonl` misses entries, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline_error: Option<String>,
    /// How many Cypress blocks the wrapper saw in its log, recorded with the exit: the next
    /// wrapper of the run numbers its blocks after them (the timeline may lack entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_blocks: Option<usize>,
    /// The logs of earlier runners of this run (a categorized run's second runner), oldest
    /// first, carried over by each new wrapper: the run's output is all of them in order,
    /// then this one's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_logs: Vec<EarlierLog>,
}

/// What a wrapper recorded of its log, kept when a later wrapper of the same run starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlierLog {
    /// The start (`start_id`) that wrapper ran.
    #[serde(default)]
    pub start_id: String,
    /// When it started: the run's reports count from its first runner's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    pub log_path: PathBuf,
    pub log_dev: u64,
    pub log_inode: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_write_error: Option<LogWriteError>,
    /// How many Cypress blocks it saw (its `log_blocks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<usize>,
}

/// A write to the run log that failed, as the wrapper saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogWriteError {
    /// The log's length when the write failed: every byte after it is missing.
    pub offset: u64,
    pub errno: i32,
    /// The error as the system describes it (`No space left on device`).
    pub error: String,
    pub at: Timestamp,
}

impl RunnerStatus {
    pub fn has_exited(&self) -> bool {
        self.exited_at.is_some()
    }

    pub fn started(&self) -> Moment {
        Moment {
            wall: self.started_at,
            boot: self.started_boot.clone(),
        }
    }

    pub fn exited(&self) -> Option<Moment> {
        self.exited_at.map(|wall| Moment {
            wall,
            boot: self.exited_boot.clone(),
        })
    }

    /// Was this status written during an earlier boot? Its pid means nothing now.
    pub fn from_earlier_boot(&self, boot_id: Option<&str>) -> bool {
        match (&self.started_boot, boot_id) {
            (Some(b), Some(now)) => b.boot_id != now,
            _ => false,
        }
    }
}

/// Where a run (or a categorized run's sub-run) is (docs/watcher-service.md). The first two are the only
/// states that are not final; of the final ones only COMPLETED and FAILED are ever posted.
/// A final state is never left again, except that a COMPLETED/FAILED result that has not
/// been posted yet still becomes CANCELLED when a cancel arrives before the post.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunState {
    /// The request is recorded; no runner of this run has been seen yet.
    Starting,
    /// The runner of this run is alive and being followed (or, for a categorized run, the
    /// grace period after it ended is running).
    Watching,
    /// The runner exited 0 and the log shows no failing test or spec. Posted.
    Completed,
    /// The runner exited non-zero, the log shows failures (Cypress exit codes wrap at 256),
    /// or Cypress found no spec files. Posted.
    Failed,
    /// Cancelled deliberately: `cancelled.marker`, or a runner stopped by
    /// cancel-atvm-runner. Never posted.
    Cancelled,
    /// The runner was killed by a signal or stopped without a cancel request, or vanished
    /// without recording an exit. Never posted.
    Terminated,
    /// The runner is alive but neither the log nor the reports changed for the hang
    /// window; the runner is left running. Never posted.
    Hung,
    /// No runner for this run within the start timeout, the runner refused to start, or
    /// the inputs cannot be read. Never posted.
    Unknown,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Starting => "STARTING",
            RunState::Watching => "WATCHING",
            RunState::Completed => "COMPLETED",
            RunState::Failed => "FAILED",
            RunState::Cancelled => "CANCELLED",
            RunState::Terminated => "TERMINATED",
            RunState::Hung => "HUNG",
            RunState::Unknown => "UNKNOWN",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, RunState::Starting | RunState::Watching)
    }

    /// Only these two are ever posted (docs/watcher-service.md).
    pub fn is_postable(self) -> bool {
        matches!(self, RunState::Completed | RunState::Failed)
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub tests: u64,
    pub passed: u64,
    pub failed: u64,
    pub pending: u64,
    pub skipped: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.tests += other.tests;
        self.passed += other.passed;
        self.failed += other.failed;
        self.pending += other.pending;
        self.skipped += other.skipped;
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PostStatus {
    /// Nothing to post (yet, or ever for a categorized parent).
    #[default]
    None,
    /// A postable result is owed: every start of the watcher delivers it first.
    Pending,
    /// Mattermost answered `ok` (and `posted.marker` says so).
    Posted,
    /// Delivery failed for good (a permanent answer, or the retry window ran out). Final:
    /// never re-sent by a restart.
    Failed,
    /// The state is one that is never posted (CANCELLED, TERMINATED, HUNG, UNKNOWN).
    Suppressed,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    pub status: PostStatus,
    pub attempts: u32,
    /// Names the webhook's host only, never the URL.
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posted_at: Option<Timestamp>,
    /// When `atvm-run-watcher --resend` delivered this post after it had failed for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resent_at: Option<Timestamp>,
    /// When `--resend` took this post up again after it had failed for good. Whoever
    /// delivers it from then on — the resend, or a watcher after the resend was stopped —
    /// records `resent_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend_started_at: Option<Timestamp>,
}

/// One categorized sub-run as listed in the parent's `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubRunSummary {
    pub key: String,
    pub group: Option<String>,
    pub state: RunState,
    pub counts: Option<Counts>,
    pub post: Post,
}

/// `state.json` (and `subruns/<key>/state.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub build_name: String,
    pub run_id: String,
    /// Sub-run key; absent for the run itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub state: RunState,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub reason: String,
    pub updated_at: Timestamp,
    pub counts: Option<Counts>,
    pub post: Post,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subruns: Option<Vec<SubRunSummary>>,
    /// How many sub-runs there are, when `subruns` lists only the latest ones: state.json
    /// stays under 8 KiB whatever the run. Every sub-run has its own
    /// `subruns/<key>/state.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subruns_total: Option<usize>,
    /// Operator-facing details the watcher keeps (progress, run URL, failed tests, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Where earlier versions kept the watcher's resume point; read once to migrate it to
    /// `watcher/checkpoint.json`, never written.
    #[serde(default, skip_serializing)]
    pub checkpoint: Option<serde_json::Value>,
}

impl State {
    pub fn new(build: &str, run_id: &str, state: RunState, reason: impl Into<String>) -> State {
        State {
            build_name: build.to_string(),
            run_id: run_id.to_string(),
            key: None,
            group: None,
            state,
            is_final: state.is_terminal(),
            reason: reason.into(),
            updated_at: Timestamp::now(),
            counts: None,
            post: Post::default(),
            subruns: None,
            subruns_total: None,
            details: serde_json::Map::new(),
            checkpoint: None,
        }
    }
}

impl State {
    /// Is a post of this record, or of one of the sub-runs it lists, still owed?
    pub fn owes_a_post(&self) -> bool {
        self.post.status == PostStatus::Pending
            || self
                .subruns
                .iter()
                .flatten()
                .any(|s| s.post.status == PostStatus::Pending)
    }

    /// End the run (or sub-run) in a state that is never posted — CANCELLED, UNKNOWN, … —
    /// with `reason`. A post that already went out stays recorded as posted.
    pub fn end_unposted(&mut self, state: RunState, reason: impl Into<String>) {
        self.state = state;
        self.is_final = true;
        self.reason = reason.into();
        if self.post.status != PostStatus::Posted {
            self.post.status = PostStatus::Suppressed;
        }
        self.updated_at = Timestamp::now();
    }
}

/// Marker files carry a timestamp and the run they belong to, so a marker left by an earlier
/// run of the same build name can be told apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub at: Option<Timestamp>,
    pub run_id: Option<String>,
}

impl Marker {
    pub fn render(at: Timestamp, run_id: &str) -> String {
        format!("{at} run_id={run_id}\n")
    }

    pub fn parse(text: &str) -> Marker {
        let mut words = text.split_whitespace();
        let at = words.next().and_then(Timestamp::parse);
        let run_id = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("run_id="))
            .map(str::to_string);
        Marker { at, run_id }
    }

    /// Does this marker belong to `run_id`? A marker without a run id (touched by hand)
    /// counts when it is no older than the request.
    pub fn belongs_to(&self, run_id: &str, requested_at: Timestamp, mtime: Timestamp) -> bool {
        match &self.run_id {
            Some(id) => id == run_id,
            None => mtime >= requested_at,
        }
    }
}

/// Written in a result's directory (the run's, or a sub-run's) only after Mattermost
/// answered `ok`.
pub const POSTED_MARKER: &str = "posted.marker";
/// Written in a result's directory when its post failed for good.
pub const FAILED_MARKER: &str = "failed.marker";
/// Prepared before each attempt and renamed to one of the two above once it is answered:
/// while it is there, an attempt's answer is awaited (or was never recorded).
pub const POST_READY: &str = "post.ready";

/// `<state-root>/<build>/` and the names inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    dir: PathBuf,
    build: BuildName,
}

impl StateDir {
    pub fn new(state_root: &Path, build: &BuildName) -> StateDir {
        StateDir {
            dir: state_root.join(build.as_str()),
            build: build.clone(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }
    pub fn request(&self) -> PathBuf {
        self.dir.join("request.json")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn state_lock(&self) -> PathBuf {
        self.dir.join("state.lock")
    }
    pub fn watcher_lock(&self) -> PathBuf {
        self.dir.join("watcher.lock")
    }
    pub fn cancelled_marker(&self) -> PathBuf {
        self.dir.join("cancelled.marker")
    }
    pub fn posted_marker(&self) -> PathBuf {
        self.dir.join(POSTED_MARKER)
    }
    pub fn post_json(&self) -> PathBuf {
        self.dir.join("post.json")
    }
    pub fn runner_dir(&self) -> PathBuf {
        self.dir.join("runner")
    }
    pub fn runner_spec(&self) -> PathBuf {
        self.runner_dir().join("spec.json")
    }
    pub fn runner_status(&self) -> PathBuf {
        self.runner_dir().join("status.json")
    }
    pub fn runner_status_lock(&self) -> PathBuf {
        self.runner_dir().join("status.lock")
    }
    /// When each Cypress block of the log started and finished, as the runner wrote it
    /// (see [`crate::timeline`]).
    pub fn runner_timeline(&self) -> PathBuf {
        self.runner_dir().join("timeline.jsonl")
    }
    /// The reporter directory's files that were there, recent enough to pass for this
    /// run's, when the runner's command started: they never count for it. Its own file, read
    /// once: after the clock stepped back there may be many.
    pub fn runner_stale_reports(&self) -> PathBuf {
        self.runner_dir().join("stale-reports.json")
    }
    /// The watcher's resume point (log offset, parser state): compact, its own file.
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("watcher").join("checkpoint.json")
    }

    /// The processes this directory's run (and the runs before it) followed that are still
    /// alive: the runner whose status it recorded, the process the watcher adopted by its
    /// command line, and the earlier runs' such processes its request lists. At most 20.
    /// What cannot be read adds nothing: this is a protection, not a record.
    pub fn live_runners(&self) -> Vec<ProcessId> {
        let mut found: Vec<ProcessId> = self
            .read_request()
            .ok()
            .flatten()
            .map(|r| r.earlier_runners)
            .unwrap_or_default();
        if let Ok(Some(status)) = self.read_status()
            && status.pid != 0
        {
            found.push(ProcessId {
                pid: status.pid,
                start_ticks: status.pid_start_ticks,
            });
        }
        let checkpoint: Option<serde_json::Value> =
            fsutil::read_json(&self.checkpoint()).ok().flatten();
        if let Some(c) = checkpoint {
            // Every process the watcher followed (`adopted`), and the one it followed last
            // (`fallback`, all an older checkpoint has).
            let listed = c.get("adopted").cloned().unwrap_or_default();
            found.extend(serde_json::from_value::<Vec<ProcessId>>(listed).unwrap_or_default());
            let last = c.get("fallback").cloned().unwrap_or_default();
            found.extend(serde_json::from_value::<ProcessId>(last).ok());
        }
        found.retain(|id| procfs::is_alive(*id));
        let mut unique: Vec<ProcessId> = Vec::new();
        for id in found {
            if !unique.contains(&id) {
                unique.push(id);
            }
        }
        unique.truncate(20);
        unique
    }
    pub fn subrun_dir(&self, key: &str) -> PathBuf {
        self.dir.join("subruns").join(key)
    }

    /// The sub-runs that have a directory, in the watcher's order (its keys start with the
    /// block's ordinal: `01-linux`, …, `100-x`). Every name [`is_subrun_key`] takes is
    /// listed — `01-smoke.launch` and `02-a..b` are keys the watcher makes and delivers,
    /// even though neither is a valid build name.
    pub fn subrun_keys(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("subruns");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("cannot list", &dir, e)),
        };
        let mut keys: Vec<String> = entries
            .filter_map(|e| e.ok())
            // A directory, not a link to one (nothing in the state root is followed).
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|k| is_subrun_key(k))
            .collect();
        keys.sort_by_key(|k| (subrun_ordinal(k), k.clone()));
        Ok(keys)
    }

    /// Create the directory (0700: it can hold command lines).
    pub fn create(&self) -> Result<()> {
        fsutil::create_dir(&self.dir, 0o700)
    }

    pub fn create_runner_dir(&self) -> Result<()> {
        self.create()?;
        fsutil::create_dir(&self.runner_dir(), 0o700)
    }

    pub fn read_request(&self) -> Result<Option<Request>> {
        fsutil::read_json(&self.request())
    }

    pub fn read_state(&self) -> Result<Option<State>> {
        fsutil::read_json(&self.state())
    }

    pub fn read_status(&self) -> Result<Option<RunnerStatus>> {
        fsutil::read_json(&self.runner_status())
    }

    /// Read-modify-write `state.json` under `state.lock`. `f` sees the current state (if any)
    /// and returns the one to write, or `None` to leave the file as it is.
    pub fn update_state<T>(
        &self,
        f: impl FnOnce(Option<State>) -> Result<(Option<State>, T)>,
    ) -> Result<T> {
        let _lock = Lock::exclusive(&self.state_lock())?;
        let current = self.read_state()?;
        let (next, out) = f(current)?;
        if let Some(next) = next {
            fsutil::write_json(&self.state(), &next, 0o644)?;
        }
        Ok(out)
    }

    /// Read-modify-write `runner/status.json` under `runner/status.lock`.
    pub fn update_status<T>(
        &self,
        f: impl FnOnce(Option<RunnerStatus>) -> Result<(Option<RunnerStatus>, T)>,
    ) -> Result<T> {
        let _lock = Lock::exclusive(&self.runner_status_lock())?;
        let current = self.read_status()?;
        let (next, out) = f(current)?;
        if let Some(next) = next {
            fsutil::write_json(&self.runner_status(), &next, 0o644)?;
        }
        Ok(out)
    }

    /// The run cannot start: say why in `runner/status.json` as `refused` (docs/watcher-service.md,
    /// "The runner"), so the watcher ends the run UNKNOWN at once with that reason and a
    /// start helper waiting for the confirmation reports it, instead of both waiting for a
    /// runner that never comes. The record is for the requested run (the spec itself may be
    /// what was refused); its start id is the spec's, if it can be read at all. Nothing is
    /// written when no run of the build was ever requested: nobody waits for a record.
    pub fn record_refusal(&self, log_path: &Path, why: &str) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        let spec: Option<RunnerSpec> = fsutil::read_json(&self.runner_spec()).ok().flatten();
        let run_id = self
            .read_request()
            .ok()
            .flatten()
            .map(|r| r.run_id)
            .or_else(|| spec.as_ref().map(|s| s.run_id.clone()))
            .unwrap_or_default();
        let me = procfs::self_id();
        let status = RunnerStatus {
            build_name: self.build.to_string(),
            run_id,
            start_id: spec.map(|s| s.start_id).unwrap_or_default(),
            pid: me.map_or(std::process::id(), |m| m.pid),
            pid_start_ticks: me.map_or(0, |m| m.start_ticks),
            started_at: Timestamp::now(),
            started_boot: BootInstant::now(),
            log_path: log_path.to_path_buf(),
            refused: Some(why.to_string()),
            exited_at: Some(Timestamp::now()),
            ..RunnerStatus::default()
        };
        self.create_runner_dir()?;
        self.update_status(|_| Ok((Some(status), ())))
    }

    /// End the requested run UNKNOWN with `reason`: final and never posted. For a start that
    /// failed half-way (its watcher or its runner never came up), so the run neither waits
    /// in STARTING nor is resumed by `atvm-run-watcher --resume-all` at the next boot and
    /// posted by surprise. A state of another run id is replaced. A run that already ended
    /// (its watcher saw the runner's own record first) keeps its state, which is returned:
    /// the first final verdict on a run stands.
    pub fn end_unstarted(&self, reason: &str) -> Result<Option<RunState>> {
        let run_id = self
            .read_request()
            .ok()
            .flatten()
            .map(|r| r.run_id)
            .unwrap_or_default();
        self.update_state(|current| {
            let current = current.filter(|s| s.run_id == run_id);
            if let Some(ended) = current.as_ref().filter(|s| s.is_final) {
                return Ok((None, Some(ended.state)));
            }
            let mut state = current
                .unwrap_or_else(|| State::new(self.build.as_str(), &run_id, RunState::Unknown, ""));
            state.end_unposted(RunState::Unknown, reason);
            Ok((Some(state), None))
        })
    }

    /// When the marker at `path` was written for `request`'s run (its time, else the file's),
    /// if it was: a marker of an earlier run of the build name does not count.
    pub fn marked_for(&self, path: &Path, request: &Request) -> Result<Option<Timestamp>> {
        Ok(self
            .read_marker(path)?
            .filter(|(m, mtime)| m.belongs_to(&request.run_id, request.requested_at, *mtime))
            .map(|(m, mtime)| m.at.unwrap_or(mtime)))
    }

    /// Read a marker: `None` when absent. Returns the parsed content and its mtime.
    pub fn read_marker(&self, path: &Path) -> Result<Option<(Marker, Timestamp)>> {
        let Some((bytes, meta)) = fsutil::read_file(path)? else {
            return Ok(None);
        };
        let mtime = meta
            .modified()
            .map(Timestamp::from_system)
            .map_err(|e| Error::io("cannot read marker", path, e))?;
        Ok(Some((
            Marker::parse(&String::from_utf8_lossy(&bytes)),
            mtime,
        )))
    }

    pub fn write_marker(&self, path: &Path, run_id: &str) -> Result<()> {
        if let Some(parent) = path.parent() {
            fsutil::create_dir(parent, 0o700)?;
        }
        fsutil::write_atomic(
            path,
            Marker::render(Timestamp::now(), run_id).as_bytes(),
            0o644,
        )
    }

    /// Write `ready`, a marker for run `run_id` that is not yet any marker. Done before a
    /// post is sent, while there is room on the disk; once Mattermost has answered, only
    /// [`StateDir::commit_marker`]'s rename is left (to `posted.marker`, or `failed.marker`),
    /// which needs no free space: the outcome is recorded even on a full disk.
    pub fn prepare_marker(&self, ready: &Path, run_id: &str) -> Result<()> {
        self.write_marker(ready, run_id)
    }

    /// Turn the prepared `ready` into `marker`, durably.
    pub fn commit_marker(&self, ready: &Path, marker: &Path) -> Result<()> {
        fs::rename(ready, marker).map_err(|e| Error::io("cannot record", marker, e))?;
        if let Some(dir) = marker.parent() {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io("cannot record", marker, e))?;
        }
        Ok(())
    }

    /// Refuse a state root, build directory or one of its subdirectories (and the start
    /// locks' directory) that is not ours alone (docs/watcher-service.md): a symlink there
    /// would send a status, a marker or a lock somewhere else. Each is checked only if it
    /// exists.
    pub fn check(&self) -> Result<()> {
        let root = self.dir.parent();
        let mut dirs: Vec<PathBuf> = root.into_iter().map(Path::to_path_buf).collect();
        dirs.extend(root.map(|r| r.join(".locks")));
        dirs.push(self.dir.clone());
        dirs.extend(["runner", "watcher", "subruns"].map(|d| self.dir.join(d)));
        for (i, dir) in dirs.iter().enumerate() {
            match fs::symlink_metadata(dir) {
                // The state root itself must exist; the others are made on first use.
                Err(e) if e.kind() == io::ErrorKind::NotFound && i > 0 => {}
                _ => fsutil::check_private_dir(dir)?,
            }
        }
        Ok(())
    }

    /// Move the whole directory to `<state-root>/.archive/<build>/<NNNNNN>-<UTC-timestamp>/`
    /// and prune the build's archives (see [`prune_archives`]). Returns where it went.
    ///
    /// `NNNNNN` is the build's archive sequence, one more than any archive (or kept
    /// summary) of the build has: the order of starts. The time stamp only names the
    /// moment; a wall-clock step cannot reorder the archives, so "the newest" and "the
    /// previous run" are what they say.
    pub fn archive(&self, archive_root: &Path) -> Result<Option<PathBuf>> {
        if !self.exists() {
            return Ok(None);
        }
        let base = archive_root.join(self.build.as_str());
        fsutil::create_dir(archive_root, 0o700)?;
        fsutil::create_dir(&base, 0o700)?;
        let seq = next_sequence(&base)?;
        let target = base.join(format!("{seq:06}-{}", Timestamp::now().compact()));
        fs::rename(&self.dir, &target).map_err(|e| Error::io("cannot archive", &self.dir, e))?;
        prune_archives(&base, ARCHIVE_KEEP, SUMMARY_KEEP)?;
        Ok(Some(target))
    }
}

/// Summaries of archived runs kept per build name (`.summaries/` of its archive), beyond
/// the [`ARCHIVE_KEEP`] whole archives: the history a post compares with outlives the
/// bulky files.
pub const SUMMARY_KEEP: usize = 100;
/// Where the summaries of pruned archives are kept, in a build's archive directory.
pub const SUMMARIES_DIR: &str = ".summaries";

/// An archive's place in the order of starts. `NNNNNN-<stamp>` sorts by its sequence;
/// names from before sequences (`20261124T193530Z`, `…-001`) come before every sequenced
/// one, by name (they were named by time, all we know of their order). Dot entries are not
/// archives.
/// Can `key` name a sub-run's directory? The watcher's keys are `NN` or `NN-<group>` with
/// the group cut to `[A-Za-z0-9._-]` (`cypress::LogSummary::subrun_key`), so any such
/// name is one; what is refused is only what could leave `subruns/` or name it: an empty
/// name, `.`, `..`, and anything with a `/` or a NUL. Keys are deliberately not held to the
/// build-name rule (which refuses `..` inside a name and a `.launch` ending for reasons of
/// its own): a group called `smoke.launch` is a sub-run like any other.
pub fn is_subrun_key(key: &str) -> bool {
    !key.is_empty() && key != "." && key != ".." && !key.contains(['/', '\0'])
}

/// The ordinal a key starts with (`01-linux` → 1), for the watcher's order; keys without
/// one go last.
fn subrun_ordinal(key: &str) -> u64 {
    let digits: String = key.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(u64::MAX)
}

/// Where archive `name` (or a kept summary's `name.json`) falls in the build's order of
/// starts: sorting by this key puts the oldest start first (names from before sequences,
/// `20261124T193530Z`, before every `NNNNNN-…`). `None` for what is not an archive.
pub fn archive_key(name: &str) -> Option<(u64, String)> {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    if stem.starts_with('.') || stem.is_empty() {
        return None;
    }
    let seq = stem
        .split_once('-')
        .filter(|(n, _)| n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|(n, _)| n.parse::<u64>().ok())
        .map_or(0, |n| n + 1);
    Some((seq, stem.to_string()))
}

/// The names in `dir` that are archives (or kept summaries), oldest start first.
fn in_start_order(dir: &Path) -> Result<Vec<(u64, String)>> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("cannot list archive", dir, e)),
    };
    let mut keys: Vec<(u64, String)> = listing
        .filter_map(|e| e.ok())
        .filter_map(|e| archive_key(&e.file_name().to_string_lossy()))
        .collect();
    keys.sort();
    Ok(keys)
}

/// One more than the highest sequence among the archives and kept summaries of `base`.
fn next_sequence(base: &Path) -> Result<u64> {
    let mut keys = in_start_order(base)?;
    keys.extend(in_start_order(&base.join(SUMMARIES_DIR))?);
    Ok(keys.iter().map(|(seq, _)| *seq).max().unwrap_or(0).max(1))
}

/// Keep the newest `keep` archives of `base` whole. An older one gives up everything but
/// its summary, which moves to `.summaries/<name>.json` (a rename: no space needed); of
/// those, the newest `keep_summaries` are kept. Newest is the order of starts.
fn prune_archives(base: &Path, keep: usize, keep_summaries: usize) -> Result<()> {
    let names = in_start_order(base)?;
    let excess = names.len().saturating_sub(keep);
    let summaries = base.join(SUMMARIES_DIR);
    for (_, name) in &names[..excess] {
        let path = base.join(name);
        let summary = path.join(crate::history::SUMMARY_FILE);
        if fs::symlink_metadata(&summary).is_ok_and(|m| m.is_file()) {
            fsutil::create_dir(&summaries, 0o700)?;
            let kept = summaries.join(format!("{name}.json"));
            fs::rename(&summary, &kept)
                .map_err(|e| Error::io("cannot keep the summary of", &path, e))?;
        }
        fs::remove_dir_all(&path).map_err(|e| Error::io("cannot prune archive", &path, e))?;
    }
    let kept = in_start_order(&summaries)?;
    for (_, name) in &kept[..kept.len().saturating_sub(keep_summaries)] {
        let path = summaries.join(format!("{name}.json"));
        fs::remove_file(&path).map_err(|e| Error::io("cannot prune summary", &path, e))?;
    }
    Ok(())
}

/// The summary files of the runs archived in `base`, oldest start first: those of whole
/// archives and those kept after pruning. Paths may name files that do not exist (a run
/// archived before summaries existed, or one that never finished).
pub fn archived_summaries(base: &Path) -> Vec<PathBuf> {
    let summaries = base.join(SUMMARIES_DIR);
    let mut all: Vec<((u64, String), PathBuf)> = Vec::new();
    for key in in_start_order(&summaries).unwrap_or_default() {
        let path = summaries.join(format!("{}.json", key.1));
        all.push((key, path));
    }
    for key in in_start_order(base).unwrap_or_default() {
        let path = base.join(&key.1).join(crate::history::SUMMARY_FILE);
        all.push((key, path));
    }
    all.sort();
    all.into_iter().map(|(_, p)| p).collect()
}

/// The per-build start lock (docs/watcher-service.md): every start helper holds it for its whole sequence,
/// so concurrent starts of one build are serialised and a second one exits 4 at once,
/// before it archives or records anything. It is its own file outside the build directory
/// (which a start moves to the archive), not `watcher.lock`.
///
/// The cancel helpers take it shared ([`StartLock::wait`]): a cancel issued while a start
/// is under way waits for it and then cancels the run that start made, instead of racing
/// its archive and new request; and no start begins while a cancel is being applied.
#[derive(Debug)]
pub struct StartLock {
    _lock: Lock,
}

impl StartLock {
    pub fn path(state_root: &Path, build: &BuildName) -> PathBuf {
        state_root
            .join(".locks")
            .join(format!("{build}.start.lock"))
    }

    pub fn acquire(state_root: &Path, build: &BuildName) -> Result<StartLock> {
        let path = StartLock::path(state_root, build);
        if let Some(dir) = path.parent() {
            fsutil::create_dir(dir, 0o700)?;
        }
        match Lock::try_exclusive(&path) {
            Ok(lock) => Ok(StartLock { _lock: lock }),
            Err(Error::LockHeld { path }) => Err(Error::AlreadyRunning {
                what: format!("another start or a cancel of {build} is in progress"),
                unit: path.display().to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    /// For the cancel helpers: wait while a start of `build` is in progress (saying so on
    /// stderr first), then hold the lock shared until the value is dropped, so no start
    /// begins while the cancel is applied; cancels do not wait for each other. `None` when
    /// no start ever ran under this state root: without a `.locks` directory there is
    /// nothing to wait for, and a cancel does not create one.
    pub fn wait(state_root: &Path, build: &BuildName) -> Result<Option<StartLock>> {
        let path = StartLock::path(state_root, build);
        let dir = state_root.join(".locks");
        match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            _ => {
                fsutil::check_private_dir(state_root)?;
                fsutil::check_private_dir(&dir)?;
            }
        }
        let lock = Lock::shared_waiting(&path, |file| {
            // Called from the start's own template step, waiting would never end: the
            // start waits for its template step.
            let ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
            let me = std::process::id();
            if let Some(holder) = procfs::flock_holders(ino)
                .into_iter()
                .find(|&pid| procfs::descends_from(me, pid))
            {
                return Err(Error::AlreadyRunning {
                    what: format!(
                        "cannot cancel {build} from inside its own start (pid {holder}, the template step): cancel it once the start has returned"
                    ),
                    unit: path.display().to_string(),
                });
            }
            logging::notice(format!("waiting for the start of {build} in progress…"));
            Ok(())
        })?;
        Ok(Some(StartLock { _lock: lock }))
    }

    /// Without taking it or creating anything: is a start of `build` in progress?
    pub fn held(state_root: &Path, build: &BuildName) -> Result<bool> {
        let path = StartLock::path(state_root, build);
        let Some((file, _)) = fsutil::open_regular(&path)? else {
            return Ok(false);
        };
        Ok(matches!(
            file.try_lock_shared(),
            Err(fs::TryLockError::WouldBlock)
        ))
    }
}

/// A run id unique per start: time, pid and a few bits of clock noise.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{:06x}",
        Timestamp::now().compact(),
        std::process::id(),
        now & 0xff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(name: &str) -> BuildName {
        BuildName::parse(name).expect("valid")
    }

    #[test]
    fn sub_run_keys_are_what_the_watcher_makes_and_nothing_that_leaves_the_directory() {
        for key in ["01", "01-linux", "01-smoke.launch", "02-a..b", "100-x"] {
            assert!(is_subrun_key(key), "{key}");
        }
        for key in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(!is_subrun_key(key), "{key:?}");
        }
        let root = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::new(root.path(), &build("b1"));
        assert!(sd.subrun_keys().expect("no subruns/ yet").is_empty());
        for key in ["100-late", "02-a..b", "01-smoke.launch"] {
            fs::create_dir_all(sd.subrun_dir(key)).expect("mkdir");
        }
        fs::write(sd.subrun_dir("03-a-file"), "").expect("file");
        std::os::unix::fs::symlink(root.path(), sd.subrun_dir("04-link")).expect("symlink");
        assert_eq!(
            sd.subrun_keys().expect("listed"),
            ["01-smoke.launch", "02-a..b", "100-late"],
            "in the watcher's order; no file, no link"
        );
    }

    #[test]
    fn a_symlinked_or_open_subdirectory_of_the_state_is_refused_by_name() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        let sd = StateDir::new(root.path(), &build("b1"));
        sd.check().expect("nothing there yet");
        sd.create().expect("create");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(elsewhere.path(), sd.runner_dir()).expect("symlink");
        let err = sd.check().expect_err("runner/ is a link");
        let text = err.to_string();
        assert!(
            text.contains("symbolic link") && text.contains("/b1/runner"),
            "{text}"
        );
        fs::remove_file(sd.runner_dir()).expect("unlink");
        let locks = root.path().join(".locks");
        fs::create_dir(&locks).expect("mkdir");
        fs::set_permissions(&locks, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = sd.check().expect_err(".locks is world-writable");
        assert!(err.to_string().contains(".locks"), "{err}");
    }

    #[test]
    fn archive_moves_everything_and_keeps_the_newest_twenty() {
        let root = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::new(root.path(), &build("b1"));
        let archive_root = root.path().join(".archive");
        for i in 0..23 {
            sd.create().expect("create");
            fs::write(sd.path().join("n"), i.to_string()).expect("write");
            sd.write_marker(&sd.cancelled_marker(), "old")
                .expect("marker");
            let to = sd.archive(&archive_root).expect("archive").expect("moved");
            assert!(!sd.exists());
            assert_eq!(
                fs::read_to_string(to.join("n")).expect("read"),
                i.to_string()
            );
        }
        let mut kept: Vec<String> = fs::read_dir(archive_root.join("b1"))
            .expect("ls")
            .map(|e| e.expect("entry").path())
            .map(|p| fs::read_to_string(p.join("n")).expect("read"))
            .collect();
        kept.sort_by_key(|s| s.parse::<u32>().unwrap_or(0));
        let expected: Vec<String> = (3..23).map(|i| i.to_string()).collect();
        assert_eq!(kept, expected);
    }

    #[test]
    fn archives_are_ordered_by_start_whatever_their_time_stamps_say() {
        let root = tempfile::tempdir().expect("tempdir");
        let base = root.path().join("b1");
        fs::create_dir(&base).expect("mkdir");
        // Named by an older version while the clock ran ahead, then by sequence.
        for name in [
            "20991231T235959Z",
            "20991231T235959Z-001",
            "000007-20991231T000000Z",
            "000008-20261205T000000Z",
        ] {
            fs::create_dir(base.join(name)).expect("mkdir");
            fs::write(base.join(name).join(crate::history::SUMMARY_FILE), name).expect("write");
        }
        assert_eq!(next_sequence(&base).expect("seq"), 9);
        let order: Vec<String> = in_start_order(&base)
            .expect("ls")
            .into_iter()
            .map(|k| k.1)
            .collect();
        assert_eq!(
            order,
            [
                "20991231T235959Z",
                "20991231T235959Z-001",
                "000007-20991231T000000Z",
                "000008-20261205T000000Z"
            ]
        );
        prune_archives(&base, 2, 1).expect("prune");
        let left: Vec<String> = in_start_order(&base)
            .expect("ls")
            .into_iter()
            .map(|k| k.1)
            .collect();
        assert_eq!(
            left,
            ["000007-20991231T000000Z", "000008-20261205T000000Z"],
            "the newest by start stay"
        );
        // Of the two pruned, the newer one's summary is kept.
        let kept = archived_summaries(&base);
        let names: Vec<String> = kept
            .iter()
            .filter(|p| p.exists())
            .map(|p| fs::read_to_string(p).expect("read"))
            .collect();
        assert_eq!(
            names,
            [
                "20991231T235959Z-001",
                "000007-20991231T000000Z",
                "000008-20261205T000000Z"
            ]
        );
        assert_eq!(
            next_sequence(&base).expect("seq"),
            9,
            "pruning never reuses a sequence"
        );
    }

    #[test]
    fn pruned_archives_keep_their_summaries_longer() {
        let root = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::new(root.path(), &build("b1"));
        let archive_root = root.path().join(".archive");
        for i in 0..(ARCHIVE_KEEP + 5) {
            sd.create().expect("create");
            fs::write(sd.path().join(crate::history::SUMMARY_FILE), i.to_string()).expect("write");
            fs::write(sd.path().join("payload.json"), "bulky").expect("write");
            sd.archive(&archive_root).expect("archive");
        }
        let base = archive_root.join("b1");
        let whole = in_start_order(&base).expect("ls");
        assert_eq!(whole.len(), ARCHIVE_KEEP);
        let all: Vec<String> = archived_summaries(&base)
            .iter()
            .map(|p| fs::read_to_string(p).expect("read"))
            .collect();
        let expected: Vec<String> = (0..ARCHIVE_KEEP + 5).map(|i| i.to_string()).collect();
        assert_eq!(all, expected, "every run's summary, oldest first");
    }

    #[test]
    fn markers_know_their_run() {
        let m = Marker::parse(&Marker::render(Timestamp::from_millis(0), "r1"));
        assert_eq!(m.run_id.as_deref(), Some("r1"));
        assert!(m.belongs_to("r1", Timestamp::from_millis(5), Timestamp::from_millis(0)));
        assert!(!m.belongs_to("r2", Timestamp::from_millis(0), Timestamp::from_millis(9)));
        let touched = Marker::parse("");
        assert!(touched.belongs_to("r2", Timestamp::from_millis(5), Timestamp::from_millis(6)));
        assert!(!touched.belongs_to("r2", Timestamp::from_millis(5), Timestamp::from_millis(4)));
    }

    #[test]
    fn state_round_trips_with_final_and_screaming_states() {
        let mut s = State::new("b", "r", RunState::Completed, "ok");
        s.counts = Some(Counts {
            tests: 3,
            passed: 3,
            ..Counts::default()
        });
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["state"], "COMPLETED");
        assert_eq!(json["final"], true);
        assert_eq!(json["post"]["status"], "none");
        let back: State = serde_json::from_value(json).expect("parse");
        assert_eq!(back, s);
    }

    #[test]
    fn update_state_preserves_a_corrupt_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::new(root.path(), &build("b2"));
        sd.create().expect("create");
        fs::write(sd.state(), "garbage").expect("write");
        let err = sd
            .update_state(|_| Ok((Some(State::new("b2", "r", RunState::Cancelled, "x")), ())))
            .expect_err("corrupt");
        assert!(err.to_string().contains("state.json"), "{err}");
        assert_eq!(fs::read_to_string(sd.state()).expect("read"), "garbage");
    }
}
