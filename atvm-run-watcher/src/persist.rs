//! What the watcher keeps on disk and how (docs/watcher-service.md): `state.json` for operators (kept under
//! 8 KiB, see [`fit`]), the resume point in its own compact `watcher/checkpoint.json`
//! ([`Checkpoint`]: no buffers — a half-read line is read again — and rewritten only when
//! its bytes change), loading the records of a run being resumed, and the cancel check
//! that saving does under the state lock.
//!
//! `state.json` is shared with the cancel helper and the start helpers, so it is rewritten
//! under `state.lock` and, under that lock, a final state another tool wrote for this run is
//! kept, and a cancel marker of this run turns whatever was about to be written into
//! CANCELLED: read outside the lock, a cancel landing in between would be lost.

use crate::ctx::Ctx;
use crate::decide::transition_allowed;
use crate::record::RunRecord;
use atvm_common::cypress::LogParser;
use atvm_common::error::{Error, Result};
use atvm_common::follow::{FileId, FollowPoint};
use atvm_common::procfs::ProcessId;
use atvm_common::state::{PostStatus, Request, RunState, State};
use atvm_common::{Moment, StateDir, Timestamp, fsutil, logging};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The watcher's resume point, in `watcher/checkpoint.json` (earlier versions kept it in
/// `state.json` as `checkpoint`; it is migrated from there). The serde names are a stored
/// format: a watcher restarted across an upgrade resumes from them (fields that are gone
/// are ignored, new ones default).
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
    /// The start (`start_id`) of the runner whose log `follow` is in, for a run started
    /// through the runner: once a later runner has started, the point is that earlier
    /// log's, however its identity is reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_start_id: Option<String>,
    /// The earlier runners' logs of this run (`runner/status.json`'s `earlier_logs`) as they
    /// were read: each to its end before the next, or found gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_read: Vec<EarlierRead>,
    /// The pipe that runner writes its output into (`| tee B.log`): once the runner is
    /// gone, a reader of it that still writes the log means its output is not all there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_pipe: Option<u64>,
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
    /// Every sub-run's key, in log order: a restarted watcher finds them all (state.json
    /// lists only the latest when there are many).
    #[serde(default)]
    pub subrun_keys: Vec<String>,
    /// Every process followed by its command line, oldest first (at most
    /// [`MAX_ADOPTED`]): a later run of the build name never takes one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopted: Vec<ProcessId>,
    /// The hand-started runner's log was truncated (and read again from its start) since
    /// the runner was adopted: a newer runner taking over wrote it from its start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated_since_adoption: bool,
}

/// How far an earlier runner's log was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlierRead {
    pub file: FileId,
    pub read: u64,
    /// It was there to be read to its end (it was not removed, or rotated away by a third
    /// runner, first).
    pub found: bool,
}

/// How many adopted processes a checkpoint remembers.
pub const MAX_ADOPTED: usize = 20;

impl Checkpoint {
    /// Remember that `id` was followed as this run's runner.
    pub fn note_adopted(&mut self, id: ProcessId) {
        if !self.adopted.contains(&id) {
            if self.adopted.len() == MAX_ADOPTED {
                self.adopted.remove(0);
            }
            self.adopted.push(id);
        }
    }
}

/// The cancel marker's time, if the marker belongs to this run.
pub fn cancelled_at(sd: &StateDir, request: &Request) -> Result<Option<Timestamp>> {
    sd.marked_for(&sd.cancelled_marker(), request)
}

/// The final state another tool recorded for this run, if it did (a start helper whose
/// runner could not start ends the run UNKNOWN, then stops the watcher).
pub fn ended_elsewhere(sd: &StateDir, request: &Request) -> Result<Option<State>> {
    Ok(sd
        .read_state()?
        .filter(|s| s.is_final && s.run_id == request.run_id))
}

/// `watcher/checkpoint.json`: the checkpoint and the run it belongs to.
#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    run_id: String,
    #[serde(flatten)]
    checkpoint: Checkpoint,
}

/// Load what an earlier watcher of this run saved (with a [`Store`] that knows it is on
/// disk already, so resuming rewrites nothing that did not change), or start afresh.
pub fn load(ctx: &Ctx) -> Result<(RunRecord, Checkpoint, Store)> {
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
            let (cp, cp_on_disk) = load_checkpoint(ctx, &saved)?;
            let (subruns, all_read) = load_subruns(ctx, &saved, &cp)?;
            logging::info(format!(
                "resuming {build} ({}, run {})",
                saved.state, request.run_id
            ));
            let on_disk = RunRecord {
                state: saved,
                subruns,
                categorized: request.categorize,
            };
            let mut record = on_disk.clone();
            record.state.checkpoint = None;
            // A sub-run made again from its summary has no file yet: write everything.
            let store = match all_read {
                true => Store {
                    saved: Some((
                        on_disk,
                        if cp_on_disk {
                            cp.clone()
                        } else {
                            Checkpoint::default()
                        },
                    )),
                    checkpoint_bytes: Vec::new(),
                },
                false => Store::default(),
            };
            Ok((record, cp, store))
        }
        Some(other) => {
            logging::warn(format!(
                "state.json belongs to run {}, not to the requested run {}; starting afresh ({})",
                other.run_id,
                request.run_id,
                sd.state().display()
            ));
            Ok((fresh, Checkpoint::default(), Store::default()))
        }
        None => Ok((fresh, Checkpoint::default(), Store::default())),
    }
}

/// The checkpoint file of this run; else one an earlier version kept in `state.json`
/// (whose saved half line is dropped and read again); else a fresh start. The flag says
/// whether it came from the checkpoint file (and so needs no rewriting as it is).
fn load_checkpoint(ctx: &Ctx, saved: &State) -> Result<(Checkpoint, bool)> {
    let path = ctx.sd.checkpoint();
    if let Some(file) = fsutil::read_json::<CheckpointFile>(&path)?
        && file.run_id == ctx.request.run_id
    {
        return Ok((file.checkpoint, true));
    }
    let Some(old) = &saved.checkpoint else {
        return Ok((Checkpoint::default(), false));
    };
    let unparsable = |e: serde_json::Error| {
        Error::file(
            format!("watcher checkpoint does not parse: {e}"),
            ctx.sd.state(),
        )
    };
    let mut cp: Checkpoint = serde_json::from_value(old.clone()).map_err(unparsable)?;
    let half_line = old["parser"]["partial"].as_array().map_or(0, Vec::len) as u64;
    if let Some(follow) = cp.follow.as_mut() {
        follow.offset = follow.offset.saturating_sub(half_line);
        follow.seam = None;
        follow.read = None;
    }
    Ok((cp, false))
}

/// Every sub-run, in log order: the checkpoint lists all their keys (`state.json` lists
/// only the latest when there are many); each is read from its own `state.json`, or made
/// again from its summary (or as open) if that was never written. A checkpoint of an
/// earlier version has no keys: `state.json`'s list, which it never shortened, is used.
/// The flag says whether every one was read from its file.
fn load_subruns(ctx: &Ctx, saved: &State, cp: &Checkpoint) -> Result<(Vec<State>, bool)> {
    let listed = saved.subruns.as_deref().unwrap_or_default();
    let keys: Vec<&str> = match cp.subrun_keys.is_empty() {
        false => cp.subrun_keys.iter().map(String::as_str).collect(),
        true => listed.iter().map(|s| s.key.as_str()).collect(),
    };
    let blocks = &cp.parser.summary().runs;
    let mut subruns = Vec::new();
    let mut all_read = true;
    for (i, key) in keys.into_iter().enumerate() {
        let path = ctx.sd.subrun_dir(key).join("state.json");
        if let Some(sub) = fsutil::read_json::<State>(&path)? {
            subruns.push(sub);
            continue;
        }
        all_read = false;
        let summary = listed.iter().find(|s| s.key == key);
        let state = summary.map_or(RunState::Watching, |s| s.state);
        let mut s = State::new(ctx.build.as_str(), &ctx.request.run_id, state, "");
        s.key = Some(key.to_string());
        s.group = match summary {
            Some(sum) => sum.group.clone(),
            None => blocks.get(i).and_then(|b| b.group.clone()),
        };
        if let Some(sum) = summary {
            s.counts = sum.counts;
            s.post = sum.post.clone();
        }
        subruns.push(s);
    }
    Ok((subruns, all_read))
}

/// Writes the run's records, remembering what was last written so an idle watcher writes
/// nothing.
#[derive(Debug, Default)]
pub struct Store {
    saved: Option<(RunRecord, Checkpoint)>,
    /// The bytes last written to `watcher/checkpoint.json`.
    checkpoint_bytes: Vec<u8>,
}

impl Store {
    /// Write the checkpoint, sub-run files and `state.json`, each if it changed. Under the
    /// state lock, a cancel marker turns whatever we were about to write into CANCELLED;
    /// the record then holds what was written.
    pub fn save(&mut self, ctx: &Ctx, record: &mut RunRecord, cp: &Checkpoint) -> Result<()> {
        record.state.subruns = record.summaries();
        if ctx.sink.is_dry_run() {
            // A dry run writes nothing but post.json: a later real watcher behaves exactly
            // as if it never happened (docs/watcher-service.md).
            return Ok(());
        }
        let cp_changed = self.saved.as_ref().is_none_or(|(_, old)| old != cp);
        let record_changed = self
            .saved
            .as_ref()
            .is_none_or(|(old, _)| !unchanged(old, record));
        // Checkpoint first: a resumed watcher then at worst re-decides from further on.
        if cp_changed {
            self.save_checkpoint(ctx, cp)?;
        }
        if !record_changed {
            self.saved = Some((record.clone(), cp.clone()));
            return Ok(());
        }
        self.save_subruns(ctx, record)?;
        let mut next = record.state.clone();
        fit(&mut next);
        let written = ctx.sd.update_state(|current| {
            if !next.is_final
                && let Some(ended) = current.filter(|c| c.is_final && c.run_id == next.run_id)
            {
                // Another tool ended this run (a start helper whose runner could not
                // start, the cancel helper): its verdict stands.
                return Ok((None, ended));
            }
            // A cancel wins over anything not delivered yet, a result waiting to be
            // posted included (docs/watcher-service.md): this is the record of an attempt
            // the watcher then does not send.
            let posted = next.post.status == PostStatus::Posted;
            if next.state != RunState::Cancelled
                && transition_allowed(next.state, next.is_final, posted, RunState::Cancelled)
                && cancelled_at(&ctx.sd, &ctx.request)?.is_some()
            {
                next.end_unposted(
                    RunState::Cancelled,
                    "cancelled with cancel-atvm-run-watcher",
                );
            }
            if next.state == RunState::Cancelled && next.post.status != PostStatus::Posted {
                // A cancelled run posts nothing: an attempt that failed after the cancel
                // (its window ran out, say) does not make it a failed post.
                next.post.status = PostStatus::Suppressed;
            }
            next.updated_at = Timestamp::now();
            Ok((Some(next.clone()), next))
        })?;
        if written.state != record.state.state || written.is_final != record.state.is_final {
            record.ended_elsewhere(&written);
            self.save_subruns(ctx, record)?;
        }
        record.state.updated_at = written.updated_at;
        self.saved = Some((record.clone(), cp.clone()));
        Ok(())
    }

    /// `watcher/checkpoint.json`, compact, positioned at the start of the line the parser
    /// has not seen the end of; written only when its bytes change.
    fn save_checkpoint(&mut self, ctx: &Ctx, cp: &Checkpoint) -> Result<()> {
        let mut stored = cp.clone();
        if let Some(follow) = stored.follow.as_mut()
            && cp.parser.unterminated() > 0
        {
            follow.offset = follow.offset.saturating_sub(cp.parser.unterminated());
            follow.read = follow
                .read
                .map(|r| r.saturating_sub(cp.parser.unterminated()));
            // The seam was taken where reading stopped, not at the line's start: without
            // one, the resumed watcher takes a fresh seam after its first read.
            follow.seam = None;
        }
        let file = CheckpointFile {
            run_id: ctx.request.run_id.clone(),
            checkpoint: stored,
        };
        let bytes = serde_json::to_vec(&file)
            .map_err(|e| Error::failed(format!("cannot encode the checkpoint: {e}")))?;
        if bytes == self.checkpoint_bytes {
            return Ok(());
        }
        let path = ctx.sd.checkpoint();
        if let Some(dir) = path.parent() {
            fsutil::create_dir(dir, 0o700)?;
        }
        fsutil::write_atomic(&path, &bytes, 0o600)?;
        self.checkpoint_bytes = bytes;
        Ok(())
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
            let mut written = sub.clone();
            fit(&mut written);
            fsutil::write_json(&dir.join("state.json"), &written, 0o644)?;
        }
        Ok(())
    }
}

/// Nothing worth writing changed since the last write (the common case for an idle
/// watcher): skip the lock, the serialisation and the fsync.
fn unchanged(old: &RunRecord, record: &RunRecord) -> bool {
    old.subruns.len() == record.subruns.len()
        && same_but_time(&old.state, &record.state)
        && old
            .subruns
            .iter()
            .zip(&record.subruns)
            .all(|(a, b)| same_but_time(a, b))
}

/// `state.json` stays under this many bytes, whatever the run (docs/watcher-service.md).
pub const STATE_BUDGET: usize = 8 * 1024 - 256;

/// Keep `state` within [`STATE_BUDGET`] bytes as written. Texts (reason, errors, details,
/// group names) are cut, more and more if need be, and the oldest finished sub-runs are
/// left out of the list (each keeps its own file; `subruns_total` says how many there are);
/// as a last resort the oldest open ones too.
pub fn fit(state: &mut State) {
    let total = state.subruns.as_ref().map_or(0, Vec::len);
    for max_bytes in [1000, 300, 100, 40] {
        cut_texts(state, max_bytes);
        while encoded_len(state) > STATE_BUDGET && drop_oldest(state, total, true) {}
        if encoded_len(state) <= STATE_BUDGET {
            return;
        }
    }
    while encoded_len(state) > STATE_BUDGET && drop_oldest(state, total, false) {}
}

/// Cut every text of `state` that comes from a log, a server or an option to `max_bytes`.
fn cut_texts(state: &mut State, max_bytes: usize) {
    cut(&mut state.reason, max_bytes);
    if let Some(e) = state.post.last_error.as_mut() {
        cut(e, max_bytes);
    }
    for value in state.details.values_mut() {
        if let serde_json::Value::String(s) = value {
            cut(s, max_bytes);
        }
    }
    for sub in state.subruns.iter_mut().flatten() {
        if let Some(g) = sub.group.as_mut() {
            cut(g, max_bytes.min(100));
        }
        if let Some(e) = sub.post.last_error.as_mut() {
            cut(e, max_bytes);
        }
    }
}

/// Leave the oldest (finished, if `finished_only`) sub-run out of the list.
fn drop_oldest(state: &mut State, total: usize, finished_only: bool) -> bool {
    let Some(list) = state.subruns.as_mut() else {
        return false;
    };
    let Some(i) = list
        .iter()
        .position(|s| !finished_only || s.state.is_terminal())
    else {
        return false;
    };
    list.remove(i);
    state.subruns_total = Some(total);
    true
}

fn encoded_len(state: &State) -> usize {
    serde_json::to_vec_pretty(state).map_or(usize::MAX, |v| v.len() + 1)
}

/// Cut `text` to at most `max_bytes` bytes (on a character boundary), marking the cut.
fn cut(text: &mut String, max_bytes: usize) {
    if text.len() <= max_bytes {
        return;
    }
    let mut end = max_bytes.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

/// Equal apart from `updated_at`.
fn same_but_time(a: &State, b: &State) -> bool {
    State {
        updated_at: b.updated_at,
        ..a.clone()
    } == *b
}

#[cfg(test)]
mod tests {
    use super::*;
    use atvm_common::state::{Post, SubRunSummary};

    fn sub(i: usize, state: RunState) -> SubRunSummary {
        SubRunSummary {
            key: format!("{i:02}-group-with-a-fairly-long-name-{i}"),
            group: Some(format!("group with a fairly long name {i}")),
            state,
            counts: None,
            post: Post::default(),
        }
    }

    #[test]
    fn state_json_fits_in_8_kib_dropping_the_oldest_finished_sub_runs() {
        let mut s = State::new("b", "r", RunState::Watching, "x".repeat(50_000));
        s.details.insert(
            "progress".into(),
            serde_json::Value::String("y".repeat(50_000)),
        );
        let mut list: Vec<SubRunSummary> = (1..=200).map(|i| sub(i, RunState::Completed)).collect();
        list[0].state = RunState::Watching;
        s.subruns = Some(list);
        fit(&mut s);
        assert!(encoded_len(&s) <= STATE_BUDGET, "{}", encoded_len(&s));
        assert_eq!(s.subruns_total, Some(200));
        let kept = s.subruns.as_ref().map_or(0, Vec::len);
        assert!(kept > 5 && kept < 200, "{kept}");
        let list = s.subruns.as_ref().unwrap();
        assert_eq!(
            list[0].state,
            RunState::Watching,
            "an open sub-run is never left out"
        );
        assert!(list.last().is_some_and(|x| x.key.starts_with("200-")));
        assert!(s.reason.len() <= 1000 && s.reason.ends_with('…'));
    }

    #[test]
    fn multi_byte_texts_and_open_sub_runs_fit_too() {
        let emoji = "🚀".repeat(1200);
        let mut plain = State::new("b", "r", RunState::Watching, emoji.clone());
        for key in ["progress", "run_url", "log", "last_activity"] {
            plain
                .details
                .insert(key.into(), serde_json::Value::String(emoji.clone()));
        }
        plain.post.last_error = Some(emoji.clone());
        fit(&mut plain);
        assert!(
            encoded_len(&plain) <= STATE_BUDGET,
            "{}",
            encoded_len(&plain)
        );
        let mut open = State::new("b", "r", RunState::Watching, emoji.clone());
        open.subruns = Some(
            (1..=300)
                .map(|i| {
                    let mut s = sub(i, RunState::Watching);
                    s.group = Some(emoji.clone());
                    s
                })
                .collect(),
        );
        fit(&mut open);
        assert!(encoded_len(&open) <= STATE_BUDGET, "{}", encoded_len(&open));
        assert_eq!(open.subruns_total, Some(300));
        assert!(open.subruns.as_ref().is_some_and(|l| !l.is_empty()));
    }

    #[test]
    fn a_small_state_is_left_as_it_is() {
        let mut s = State::new("b", "r", RunState::Watching, "fine");
        s.subruns = Some((1..=3).map(|i| sub(i, RunState::Completed)).collect());
        let before = s.clone();
        fit(&mut s);
        assert_eq!(s, before);
    }
}
