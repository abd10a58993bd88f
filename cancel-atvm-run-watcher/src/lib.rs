//! cancel-atvm-run-watcher: write `cancelled.marker`, set `state.json` to CANCELLED (final),
//! stop `atvm-run-watcher@<build>.service`; never post (docs/watcher-service.md). The marker and the state
//! are written under the state lock, so a watcher saving at the same moment sees the marker
//! and cannot overwrite the cancel. A start of the build in progress is waited for first (the
//! start lock, shared), so the cancel reaches the run that start makes.

use atvm_common::error::{Error, Result};
use atvm_common::fsutil::Lock;
use atvm_common::state::{
    FAILED_MARKER, POST_READY, POSTED_MARKER, PostStatus, Request, RunState, StartLock, State,
};
use atvm_common::systemctl::{Systemctl, UnitKind};
use atvm_common::{BuildName, Paths, StateDir, logging};
use clap::Parser;
use std::path::Path;
use std::time::Duration;

const EXAMPLE: &str = "\
Example:
  cancel-atvm-run-watcher --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc

Nothing is posted for a cancelled run. Repeating the command is harmless. To stop the
Cypress run itself, also run cancel-atvm-runner for the same build. While a start of the
build is in progress, it waits for that start to finish (saying so) and then cancels the run
it made.

Environment:
  ATVM_STATE_ROOT              state directories [default: /var/lib/atvm-run-watcher]
  ATVM_ENV_FILE                the env file: its ATVM_* lines apply where the environment sets none [default: /etc/atvm-run-watcher.env]
  ATVM_SYSTEMCTL               the program used for systemctl [default: systemctl]
  JOURNAL_STREAM               set by systemd: lines carry journal priorities";

#[derive(Debug, Parser)]
#[command(name = "cancel-atvm-run-watcher", version, about = "Cancel a build's watcher: mark the run CANCELLED and stop it without posting", after_help = EXAMPLE)]
pub struct Cli {
    /// Build name whose watcher to cancel.
    #[arg(long, value_name = "BUILD", allow_hyphen_values = true)]
    pub build_name: String,
}

pub fn run(cli: Cli) -> Result<()> {
    let build = BuildName::parse(&cli.build_name)?;
    cancel(&build, &Paths::from_env()?, &Systemctl::from_env()?)
}

/// What the cancel found under the state lock.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// The run's result was posted: it stays as it is (docs/watcher-service.md).
    Reported(RunState),
    /// The run had already ended without anything owed (TERMINATED, say): kept.
    EndedUnposted(RunState),
    /// Marked CANCELLED now (or it already was).
    Cancelled,
}

pub fn cancel(build: &BuildName, paths: &Paths, systemctl: &Systemctl) -> Result<()> {
    // A start under way is about to archive the run and start a new one: cancel that one,
    // once it is there (even a first run, whose directory does not exist yet), and keep
    // another start from beginning until the cancel is applied.
    let _start = StartLock::wait(&paths.state_root, build)?;
    let sd = paths.state_dir(build);
    if !sd.exists() {
        return Err(atvm_common::builds::unknown(paths, build));
    }
    sd.check()?;
    let found = mark_cancelled(build, &sd)?;
    if let Found::Reported(state) = found {
        logging::info(format!(
            "{build} was already reported ({state}, posted); nothing to cancel"
        ));
        return Ok(());
    }
    let unit = UnitKind::Watcher.unit(build);
    let activity = systemctl.is_active(&unit)?;
    if activity.is_running() {
        // The watcher finishes a post already on the wire before it exits: afterwards the
        // state says whether that post went out.
        systemctl.stop(&unit)?;
    }
    let mut stopped = match activity.is_running() {
        true => format!("{unit} stopped"),
        false => format!("{unit} was not running ({})", activity.word()),
    };
    let hand_run = wait_for_hand_run_watcher(build, &sd)?;
    match hand_run {
        HandRun::None => {}
        HandRun::Ended => {
            stopped.push_str("; a watcher run outside systemd saw the cancel and ended")
        }
        HandRun::StillRunning => stopped.push_str(
            "; a watcher run outside systemd still runs: it sends nothing more once it sees the cancel",
        ),
    }
    // Read again: a post on the wire when the cancel came has finished now. Its marker is
    // the first record of a delivery (the state may lag: a full disk, a kill).
    let now = sd.read_state()?;
    let request = sd.read_request()?;
    let delivered = now
        .as_ref()
        .filter(|s| {
            s.post.status == PostStatus::Posted || delivered(&sd, request.as_ref(), sd.path())
        })
        .map(|s| s.state);
    // An attempt sent whose answer was never recorded (the watcher was killed waiting for
    // it, or still waits): it may have reached Mattermost. A watcher run by hand that has
    // not seen the cancel yet sends nothing more (it checks the marker right before each
    // attempt): that alone is no attempt under way.
    let unknown = attempt_unanswered(&sd, now.as_ref());
    let groups = now
        .as_ref()
        .map(|s| groups_whose_post(s, PostStatus::Posted))
        .unwrap_or_default();
    let note = groups_note(now.as_ref());
    let line = match (delivered, found) {
        (Some(state), _) => format!(
            "{build} was already reported: its {state} post was delivered before the cancel took effect; {stopped}"
        ),
        (None, _) if unknown => format!(
            "cancelled {build}: state CANCELLED; a post attempt was under way and may have reached Mattermost before the cancel (its footer carries the run id){}; nothing more is posted; {stopped}",
            note
        ),
        (None, Found::EndedUnposted(state)) if note.is_empty() => {
            format!(
                "{build} had already ended as {state} (never posted); marked cancelled; {stopped}"
            )
        }
        (None, Found::EndedUnposted(state)) => {
            format!("{build} had already ended as {state}{note}; marked cancelled; {stopped}")
        }
        (None, _) if groups.is_empty() => {
            format!("cancelled {build}: state CANCELLED, nothing posted; {stopped}")
        }
        (None, _) => format!(
            "cancelled {build}: state CANCELLED; already posted before the cancel: {}; nothing more is posted; {stopped}",
            groups.join(", ")
        ),
    };
    logging::info(line);
    Ok(())
}

/// How long a watcher run by hand gets to see the cancel: a post on the wire finishes
/// within the client's 10 s timeout, a wait between attempts looks at the marker every
/// second, a poll every `--poll-seconds` (the unit's stop timeout is 30 s too).
const HAND_RUN_WATCHER_WAIT: Duration = Duration::from_secs(30);

/// What became of a watcher running outside its unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HandRun {
    /// There was none.
    None,
    /// It saw the cancel and ended.
    Ended,
    /// It still runs after [`HAND_RUN_WATCHER_WAIT`].
    StillRunning,
}

/// Does the result directory `dir` (the run's, or a sub-run's) hold a `posted.marker` of
/// `request`'s run? What Mattermost answered `ok` to is recorded by it first: the state
/// may not say so yet (a full disk, a watcher stopped before it wrote it).
fn delivered(sd: &StateDir, request: Option<&Request>, dir: &Path) -> bool {
    request.is_some_and(|r| {
        sd.marked_for(&dir.join(POSTED_MARKER), r)
            .ok()
            .flatten()
            .is_some()
    })
}

/// Was an attempt (of the run's post or a sub-run's) prepared and sent, with no answer
/// recorded? Its `post.ready` is still there and no posted or failed marker replaced it.
fn attempt_unanswered(sd: &StateDir, state: Option<&State>) -> bool {
    let keys = state
        .and_then(|s| s.subruns.as_ref())
        .map(|l| l.iter().map(|s| sd.subrun_dir(&s.key)).collect::<Vec<_>>())
        .unwrap_or_default();
    std::iter::once(sd.path().to_path_buf())
        .chain(keys)
        .any(|dir| {
            dir.join(POST_READY).exists()
                && !dir.join(POSTED_MARKER).exists()
                && !dir.join(FAILED_MARKER).exists()
        })
}

/// A watcher started by hand (`atvm-run-watcher --build-name B --once`, as start-atvm-run
/// suggests for an owed post) holds `watcher.lock` outside the unit, so stopping the unit
/// does not reach it: wait until it has seen the marker and ended, so that what the cancel
/// says afterwards is what happened.
fn wait_for_hand_run_watcher(build: &BuildName, sd: &StateDir) -> Result<HandRun> {
    let lock = sd.watcher_lock();
    match Lock::try_exclusive(&lock) {
        Ok(_free) => return Ok(HandRun::None),
        Err(Error::LockHeld { .. }) => {}
        Err(e) => return Err(e),
    }
    logging::notice(format!(
        "waiting for the watcher of {build} running outside systemd to see the cancel… ({})",
        lock.display()
    ));
    match Lock::try_exclusive_within(&lock, HAND_RUN_WATCHER_WAIT) {
        Ok(_free) => Ok(HandRun::Ended),
        Err(Error::LockHeld { .. }) => Ok(HandRun::StillRunning),
        Err(e) => Err(e),
    }
}

/// The sub-runs whose post is in `status` (delivered, failed for good, …).
fn groups_whose_post(state: &State, status: PostStatus) -> Vec<String> {
    state
        .subruns
        .iter()
        .flatten()
        .filter(|s| s.post.status == status)
        .map(|s| s.key.clone())
        .collect()
}

/// Was everything of the run that is ever posted, posted? The run's own post, or — for a
/// categorized run that has ended and owes nothing — its groups', none of them failed.
fn reported(state: &State) -> bool {
    state.post.status == PostStatus::Posted
        || (state.is_final
            && !state.owes_a_post()
            && !groups_whose_post(state, PostStatus::Posted).is_empty()
            && groups_whose_post(state, PostStatus::Failed).is_empty())
}

/// `; groups posted: 01-linux; failed to post: 02-windows` for a categorized run, or nothing.
fn groups_note(state: Option<&State>) -> String {
    let Some(state) = state else {
        return String::new();
    };
    let mut note = String::new();
    let posted = groups_whose_post(state, PostStatus::Posted);
    if !posted.is_empty() {
        note.push_str(&format!("; groups posted: {}", posted.join(", ")));
    }
    let failed = groups_whose_post(state, PostStatus::Failed);
    if !failed.is_empty() {
        note.push_str(&format!("; failed to post: {}", failed.join(", ")));
    }
    note
}

/// Under the state lock (so a watcher saving at the same moment sees it): write the
/// marker and make the run CANCELLED — unless its result was already posted.
fn mark_cancelled(build: &BuildName, sd: &StateDir) -> Result<Found> {
    let request = sd.read_request()?;
    sd.update_state(|current| {
        let run_id = request
            .as_ref()
            .map(|r| r.run_id.clone())
            .or_else(|| current.as_ref().map(|s| s.run_id.clone()))
            .unwrap_or_default();
        let mut existing = current.filter(|s| s.run_id == run_id);
        // A delivery its marker records and the state does not show yet is a delivery.
        if let Some(s) = existing.as_mut() {
            if delivered(sd, request.as_ref(), sd.path()) {
                s.post.status = PostStatus::Posted;
            }
            for sub in s.subruns.iter_mut().flatten() {
                if delivered(sd, request.as_ref(), &sd.subrun_dir(&sub.key)) {
                    sub.post.status = PostStatus::Posted;
                }
            }
        }
        if let Some(s) = existing.as_ref().filter(|s| reported(s)) {
            return Ok((None, Found::Reported(s.state)));
        }
        let marked = sd.read_marker(&sd.cancelled_marker())?;
        if marked.is_none_or(|(m, _)| m.run_id.as_deref() != Some(run_id.as_str())) {
            sd.write_marker(&sd.cancelled_marker(), &run_id)?;
        }
        match existing {
            Some(s) if s.is_final && !s.owes_a_post() && s.state != RunState::Cancelled => {
                Ok((None, Found::EndedUnposted(s.state)))
            }
            Some(s) if s.is_final && !s.owes_a_post() => Ok((None, Found::Cancelled)),
            // No state yet, a live run, or a result not delivered yet: CANCELLED, and no
            // owed post (the run's or a sub-run's) will go out.
            existing => {
                let mut state = existing.unwrap_or_else(|| {
                    State::new(build.as_str(), &run_id, RunState::Cancelled, "")
                });
                state.end_unposted(
                    RunState::Cancelled,
                    "cancelled with cancel-atvm-run-watcher",
                );
                for sub in state.subruns.iter_mut().flatten() {
                    if sub.post.status == PostStatus::Pending {
                        sub.post.status = PostStatus::Suppressed;
                    }
                }
                Ok((Some(state), Found::Cancelled))
            }
        }
    })
}
