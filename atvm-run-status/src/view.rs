//! What atvm-run-status shows about a run, as plain records. The table and the detail view
//! are rendered from them, and `--json` serialises them as they are, so the field names and
//! their order here ARE the documented JSON shape (docs/atvm-run-status.md): change them
//! only together with that page. Every key is always present; `null` means unknown.

use atvm_common::Timestamp;
use atvm_common::state::{Counts, Post, PostStatus, Request, RunState, RunnerStatus};
use atvm_common::time::Moment;
use serde::Serialize;
use std::path::PathBuf;

/// The whole `--json` answer: the same envelope with or without `--build-name`, so a script
/// always reads `.runs[]`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub state_root: PathBuf,
    pub generated_at: Timestamp,
    /// Newest first.
    pub runs: Vec<RunView>,
}

/// One run: a build's current state directory or one of its archives.
#[derive(Debug, Serialize)]
pub struct RunView {
    pub build_name: String,
    /// The archive's directory name (`20261124T193530Z`), `null` for the current run.
    pub archive: Option<String>,
    /// The run's state directory.
    pub dir: PathBuf,
    pub run_id: Option<String>,
    /// `null` until the watcher wrote `state.json` (or when it cannot be read).
    pub state: Option<RunState>,
    #[serde(rename = "final")]
    pub is_final: Option<bool>,
    pub reason: Option<String>,
    pub requested_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    /// Seconds since `updated_at`, or since `requested_at` while there is no state.
    pub age_seconds: Option<u64>,
    /// When the run ended: its runner's recorded exit, else the final state's time; `null`
    /// while it runs.
    pub ended_at: Option<Timestamp>,
    /// From the request to `ended_at`, or to now while the run is not final: on the boot
    /// clock when both ends were recorded in the same boot, else on the wall clock.
    pub duration_seconds: Option<u64>,
    pub counts: Option<Counts>,
    /// Tests that failed an attempt and then passed, as the watcher recorded them
    /// (`details.flaky`); `null` when it recorded none.
    pub flaky: Option<u64>,
    pub post: Option<PostView>,
    /// Sub-runs that ended / sub-runs seen; `null` for a run that is not categorized.
    pub groups: Option<Groups>,
    /// `atvm-run-watcher@<build>.service`; `null` for an archived run (the unit now belongs
    /// to the build's current run, if any).
    pub watcher_unit: Option<UnitView>,
    /// `atvm-runner@<build>.service`, the same way.
    pub runner_unit: Option<UnitView>,
    /// Files of this run that could not be read; the rest of the record is what could be.
    pub errors: Vec<FileError>,
    /// Only with `--build-name`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
    /// When the run was requested, on both clocks (`request.json`): what "newest first"
    /// places it by ([`crate::order`]), and where the duration starts.
    #[serde(skip)]
    pub start: Option<Moment>,
    /// Where "newest first" places the run ([`crate::order`]); read from its start, or
    /// for a run without a readable request its directory's modification time.
    #[serde(skip)]
    pub sort_time: Timestamp,
    /// The run's directory was gone when it was read (a start or a prune moving it): it
    /// is read once more, and a pruned archive is left out.
    #[serde(skip)]
    pub vanished: bool,
}

/// Everything else about one run, for the detail view.
#[derive(Debug, Serialize)]
pub struct Detail {
    /// `request.json` as recorded by start-atvm-run-watcher (all its options).
    pub request: Option<Request>,
    pub runner: Option<RunnerView>,
    pub run_log: PathBuf,
    pub launch_log: PathBuf,
    pub progress: Option<String>,
    pub run_url: Option<String>,
    pub last_activity: Option<Timestamp>,
    pub cancelled: Option<MarkerView>,
    pub posted: Option<MarkerView>,
    /// The run's own post error (sub-runs carry theirs).
    pub last_error: Option<String>,
    /// Why the run's watcher stopped with an error (it exited 1 and the unit stays failed),
    /// as it recorded it.
    pub watcher_error: Option<String>,
    /// `null` for a run that is not categorized.
    pub subruns: Option<Vec<SubRunView>>,
    /// The build's earlier runs, newest first by start (at most 10); `null` for an
    /// archived run's own detail.
    pub history: Option<Vec<HistoryRow>>,
}

/// One earlier run of the build, in the detail view's history.
#[derive(Debug, Serialize)]
pub struct HistoryRow {
    /// The archive's name (`000007-20261124T193530Z`).
    pub archive: Option<String>,
    pub run_id: Option<String>,
    pub started_at: Option<Timestamp>,
    pub state: Option<RunState>,
    /// From the archived `state.json`, while the archive is whole.
    pub counts: Option<Counts>,
    /// Failed tests, from the run's summary.
    pub failed_tests: Option<usize>,
    /// From the boot clock.
    pub duration_seconds: Option<u64>,
    pub post: Option<PostStatus>,
}

#[derive(Debug, Serialize)]
pub struct PostView {
    pub status: PostStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub posted_at: Option<Timestamp>,
    /// When `atvm-run-watcher --resend` delivered it after it had failed for good.
    pub resent_at: Option<Timestamp>,
}

impl From<&Post> for PostView {
    fn from(p: &Post) -> PostView {
        PostView {
            status: p.status,
            attempts: p.attempts,
            last_error: p.last_error.clone(),
            posted_at: p.posted_at,
            resent_at: p.resent_at,
        }
    }
}

impl PostView {
    /// `HTTP 404` when the last error was the server's answer.
    pub fn http_status(&self) -> Option<&str> {
        let e = self.last_error.as_deref()?;
        let at = e.find("HTTP ")?;
        let code = e.get(at..at + 8)?;
        code[5..]
            .chars()
            .all(|c| c.is_ascii_digit())
            .then_some(code)
    }
}

#[derive(Debug, Serialize)]
pub struct Groups {
    pub done: usize,
    pub total: usize,
    /// Sub-runs whose post was delivered, and whose post failed for good (of those listed).
    pub posted: usize,
    pub post_failed: usize,
}

#[derive(Debug, Serialize)]
pub struct UnitView {
    pub name: String,
    /// `systemctl is-active`'s word (`active`, `inactive`, `failed`, …); `null` when
    /// systemctl could not answer, with the reason in `error`.
    pub active: Option<String>,
    pub error: Option<String>,
}

/// `runner/status.json`, without the identity fields only the watcher needs.
#[derive(Debug, Serialize)]
pub struct RunnerView {
    pub run_id: String,
    pub pid: u32,
    pub child_pid: u32,
    pub started_at: Timestamp,
    pub log_path: PathBuf,
    pub exited_at: Option<Timestamp>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stop_signal: Option<i32>,
    pub cancel_requested: bool,
    pub cancel_requested_at: Option<Timestamp>,
}

impl From<&RunnerStatus> for RunnerView {
    fn from(s: &RunnerStatus) -> RunnerView {
        RunnerView {
            run_id: s.run_id.clone(),
            pid: s.pid,
            child_pid: s.child_pid,
            started_at: s.started_at,
            log_path: s.log_path.clone(),
            exited_at: s.exited_at,
            exit_code: s.exit_code,
            signal: s.signal,
            stop_signal: s.stop_signal,
            cancel_requested: s.cancel_requested,
            cancel_requested_at: s.cancel_requested_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct MarkerView {
    pub at: Option<Timestamp>,
    pub run_id: Option<String>,
}

/// A sub-run: the parent's summary, plus what its own `subruns/<key>/state.json` adds.
#[derive(Debug, Serialize)]
pub struct SubRunView {
    pub key: String,
    pub group: Option<String>,
    pub state: RunState,
    /// From the sub-run's own file; `null` when it cannot be read.
    #[serde(rename = "final")]
    pub is_final: Option<bool>,
    pub reason: Option<String>,
    pub updated_at: Option<Timestamp>,
    pub counts: Option<Counts>,
    /// Tests that passed only on a retry, as the watcher recorded them in the sub-run's own
    /// file (`details.flaky`); `null` when it recorded none or the file cannot be read.
    pub flaky: Option<u64>,
    pub post: PostView,
}

#[derive(Debug, Serialize)]
pub struct FileError {
    pub path: PathBuf,
    /// The one-line error, as the tool prints it on stderr.
    pub error: String,
}
