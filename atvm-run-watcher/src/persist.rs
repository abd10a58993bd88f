//! What the watcher keeps on disk and how: the resume point ([`Checkpoint`]), loading the
//! records of a run being resumed, saving them when (and only when) something changed, and
//! the cancel marker check that saving does under the state lock.
//!
//! `state.json` is shared with the cancel helper, so it is rewritten under `state.lock`
//! and, under that lock, a cancel marker of this run turns whatever was about to be written
//! into CANCELLED: read outside the lock, a cancel landing in between would be lost.

use crate::record::RunRecord;
use crate::watch::Ctx;
use atvm_common::cypress::LogParser;
use atvm_common::error::{Error, Result};
use atvm_common::follow::{FileId, FollowPoint};
use atvm_common::procfs::ProcessId;
use atvm_common::state::{Request, RunState, State};
use atvm_common::{Moment, StateDir, Timestamp, fsutil, logging};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The watcher's resume point, stored in `state.json` as `checkpoint`. The serde names are
/// a stored format: a watcher restarted across an upgrade resumes from them (fields that
/// are gone are ignored, new ones default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    #[serde(default)]
    pub follow: Option<FollowPoint>,
    #[serde(default)]
    pub parser: LogParser,
    /// A runner found by its command line (not started through start-atvm-runner).
    #[serde(default)]
    pub fallback: Option<ProcessId>,
    /// The log that runner was seen holding open for writing: the only file read as its
    /// output.
    #[serde(default)]
    pub fallback_log: Option<FileId>,
    #[serde(default)]
    pub last_activity: Option<Moment>,
    /// Since when no runner has been active (categorized grace period).
    #[serde(default)]
    pub runner_inactive_since: Option<Moment>,
    /// When each block's `(Run Finished)` was first seen (assigns reporter files to
    /// sub-runs; compared with the reports' modification times, so wall-clock).
    #[serde(default)]
    pub finished_seen: Vec<Option<Timestamp>>,
}

/// The cancel marker's time, if the marker belongs to this run.
pub fn cancelled_at(sd: &StateDir, request: &Request) -> Result<Option<Timestamp>> {
    Ok(sd
        .read_marker(&sd.cancelled_marker())?
        .filter(|(m, mtime)| m.belongs_to(&request.run_id, request.requested_at, *mtime))
        .map(|(m, mtime)| m.at.unwrap_or(mtime)))
}

/// Load what an earlier watcher of this run saved, or start a fresh record.
pub fn load(ctx: &Ctx) -> Result<(RunRecord, Checkpoint)> {
    let (build, request, sd) = (&ctx.build, &ctx.request, &ctx.sd);
    let fresh = RunRecord {
        state: State::new(
            build.as_str(),
            &request.run_id,
            RunState::Starting,
            "waiting for the runner to start",
        ),
        subruns: Vec::new(),
        categorized: request.categorize,
    };
    match sd.read_state()? {
        Some(saved) if saved.run_id == request.run_id => {
            let cp = match &saved.checkpoint {
                Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                    Error::file(
                        format!("watcher checkpoint does not parse: {e}"),
                        sd.state(),
                    )
                })?,
                None => Checkpoint::default(),
            };
            let subruns = load_subruns(ctx, &saved)?;
            logging::info(format!(
                "resuming {build} ({}, run {})",
                saved.state, request.run_id
            ));
            let mut state = saved;
            state.checkpoint = None;
            Ok((
                RunRecord {
                    state,
                    subruns,
                    categorized: request.categorize,
                },
                cp,
            ))
        }
        Some(other) => {
            logging::warn(format!(
                "state.json belongs to run {}, not to the requested run {}; starting afresh ({})",
                other.run_id,
                request.run_id,
                sd.state().display()
            ));
            Ok((fresh, Checkpoint::default()))
        }
        None => Ok((fresh, Checkpoint::default())),
    }
}

/// Each listed sub-run's own `state.json`, or (if it was never written) its summary.
fn load_subruns(ctx: &Ctx, saved: &State) -> Result<Vec<State>> {
    let mut subruns = Vec::new();
    for summary in saved.subruns.iter().flatten() {
        let path = ctx.sd.subrun_dir(&summary.key).join("state.json");
        let sub: State = fsutil::read_json(&path)?.unwrap_or_else(|| {
            let mut s = State::new(ctx.build.as_str(), &ctx.request.run_id, summary.state, "");
            s.key = Some(summary.key.clone());
            s.group = summary.group.clone();
            s.counts = summary.counts;
            s.post = summary.post.clone();
            s
        });
        subruns.push(sub);
    }
    Ok(subruns)
}

/// Writes the run's records, remembering what was last written so an idle watcher writes
/// nothing.
#[derive(Debug, Default)]
pub struct Store {
    saved: Option<(RunRecord, Checkpoint)>,
}

impl Store {
    /// Write sub-run files and `state.json` if anything changed. Under the state lock, a
    /// cancel marker turns whatever we were about to write into CANCELLED; the record then
    /// holds what was written.
    pub fn save(&mut self, ctx: &Ctx, record: &mut RunRecord, cp: &Checkpoint) -> Result<()> {
        record.state.subruns = record.summaries();
        if ctx.sink.is_dry_run() {
            // A dry run writes nothing but post.json: a later real watcher behaves exactly
            // as if it never happened (SPEC §6).
            return Ok(());
        }
        if self.unchanged(record, cp) {
            return Ok(());
        }
        self.save_subruns(ctx, record)?;
        let checkpoint = serde_json::to_value(cp)
            .map_err(|e| Error::failed(format!("cannot encode checkpoint: {e}")))?;
        let mut next = record.state.clone();
        next.checkpoint = Some(checkpoint);
        let mut written = ctx.sd.update_state(|_current| {
            if !next.is_final && cancelled_at(&ctx.sd, &ctx.request)?.is_some() {
                next.end_unposted(
                    RunState::Cancelled,
                    "cancelled with cancel-atvm-run-watcher",
                );
            }
            next.updated_at = Timestamp::now();
            Ok((Some(next.clone()), next))
        })?;
        // The checkpoint lives in the watcher; the in-memory state does not carry a copy.
        written.checkpoint = None;
        if written.state != record.state.state {
            logging::info(format!(
                "{}: {} → {} ({})",
                ctx.build, record.state.state, written.state, written.reason
            ));
        }
        record.state = written;
        self.saved = Some((record.clone(), cp.clone()));
        Ok(())
    }

    /// Nothing worth writing changed since the last write (the common case for an idle
    /// watcher): skip the lock, the serialisation and the fsync.
    fn unchanged(&self, record: &RunRecord, cp: &Checkpoint) -> bool {
        self.saved.as_ref().is_some_and(|(old, old_cp)| {
            old_cp == cp
                && old.subruns.len() == record.subruns.len()
                && same_but_time(&old.state, &record.state)
                && old
                    .subruns
                    .iter()
                    .zip(&record.subruns)
                    .all(|(a, b)| same_but_time(a, b))
        })
    }

    fn save_subruns(&self, ctx: &Ctx, record: &mut RunRecord) -> Result<()> {
        for (i, sub) in record.subruns.iter_mut().enumerate() {
            let same = self
                .saved
                .as_ref()
                .and_then(|(old, _)| old.subruns.get(i))
                .is_some_and(|old| same_but_time(old, sub));
            if same {
                continue;
            }
            let dir = ctx.sd.subrun_dir(sub.key.as_deref().unwrap_or("unknown"));
            fsutil::create_dir(&dir, 0o700)?;
            sub.updated_at = Timestamp::now();
            fsutil::write_json(&dir.join("state.json"), sub, 0o644)?;
        }
        Ok(())
    }
}

/// Equal apart from `updated_at`.
fn same_but_time(a: &State, b: &State) -> bool {
    State {
        updated_at: b.updated_at,
        ..a.clone()
    } == *b
}
