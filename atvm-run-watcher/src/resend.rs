//! `atvm-run-watcher --build-name B --resend [--group KEY]`: send again, with its stored
//! payload, each post of B (or of one group) that failed for good — for the operator who
//! fixed the webhook after an outage longer than the retry window (docs/watcher-service.md,
//! "Resend").
//!
//! It is the watcher's own delivery ([`crate::deliver`]) with a ledger of its own, so the
//! same rules hold: each attempt is recorded (`pending`, `post.ready`) before it is sent, the
//! cancel marker is checked before each attempt and right before the send, and `posted` is
//! recorded (with `resent_at`) only after Mattermost answered `ok`. It holds `watcher.lock`
//! (exit 4 while a watcher of B runs) and never sends a post that was delivered, is still
//! owed (the watcher delivers those), was never due (suppressed) or whose run was
//! cancelled. Only the routing is today's: the stored payload goes to the channel
//! configured now, so a channel fixed in the env file takes effect.
//!
//! Exit 0 only when every post it took up was delivered: a stop mid-send leaves that post
//! owed (`pending`), which a start of the build refuses to archive and only a watcher run
//! delivers — the error line says so, with the command.

use crate::deliver::{self, Job, Ledger, Outcome, PAYLOAD_FILE, Sink};
use crate::shutdown::Shutdown;
use atvm_common::config::MattermostConfig;
use atvm_common::error::{Error, Result};
use atvm_common::fsutil::{self, Lock};
use atvm_common::mattermost::{Client, Payload, Poster};
use atvm_common::state::{FAILED_MARKER, Post, PostStatus, Request, RunState, State};
use atvm_common::{BuildName, Paths, StateDir, Timestamp, builds, logging};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One post of the run: the run's own, or a sub-run's.
#[derive(Clone, Debug)]
struct Target {
    /// `None` for the run itself.
    key: Option<String>,
    /// Where its `state.json`, payload and markers are.
    dir: PathBuf,
    state: State,
}

impl Target {
    fn label(&self) -> String {
        match &self.key {
            None => self.state.state.to_string(),
            Some(key) => format!("sub-run {key} {}", self.state.state),
        }
    }
}

/// Re-send every post of `build` (or of group `group`) that failed for good, within
/// `window` each. Exit 0 when each was delivered or there was none, 1 when one failed again.
pub fn run(paths: &Paths, build: &BuildName, group: Option<&str>, window: Duration) -> Result<()> {
    let sd = paths.state_dir(build);
    if !sd.exists() {
        return Err(builds::unknown(paths, build));
    }
    sd.check()?;
    let request = sd
        .read_request()?
        .ok_or_else(|| Error::file("no request for this build: nothing to resend", sd.request()))?;
    let _lock = hold_watcher_lock(&sd, build)?;
    let config = MattermostConfig::load(&paths.env_file)?;
    let webhook = config.require_webhook(&paths.env_file)?.clone();
    let targets = targets(&sd, &request, group)?;
    if cancelled(&sd, &request, &targets)? {
        logging::info(format!(
            "nothing to resend for {build}: the run was cancelled, and a cancelled run posts nothing"
        ));
        return Ok(());
    }
    let failed: Vec<Target> = targets
        .iter()
        .filter(|t| t.state.post.status == PostStatus::Failed)
        .cloned()
        .collect();
    if failed.is_empty() {
        logging::info(format!(
            "nothing to resend for {build}: no post failed for good ({})",
            describe(&targets, build)
        ));
        return Ok(());
    }
    let poster: Arc<dyn Poster> = Arc::new(Client::new(webhook, window));
    let sink = Sink::Mattermost {
        poster,
        channel: config.channel,
        format: config.format,
        posting: config.posting,
    };
    let shutdown = Shutdown::install()?;
    send_all(&sd, &request, &sink, window, &shutdown, failed)?.verdict(build)
}

/// What became of the posts a resend took up: delivered ones are not listed.
#[derive(Debug, Default)]
struct Tally {
    /// Refused again (or the window ran out): `label: error`. They stay `failed`.
    failed: Vec<String>,
    /// A stop request came while one was being sent: it is owed (`pending`) now, which
    /// only a watcher run delivers — and a start of the build refuses meanwhile.
    owed: Vec<String>,
    /// The stop came before they were tried: they stay `failed`.
    untried: Vec<String>,
}

impl Tally {
    /// Exit 0 only when every post taken up was delivered; otherwise one line saying what
    /// is still undelivered and how each will go out.
    fn verdict(self, build: &BuildName) -> Result<()> {
        let mut parts = Vec::new();
        if !self.failed.is_empty() {
            parts.push(format!("failed again: {}", self.failed.join("; ")));
        }
        if !self.owed.is_empty() {
            parts.push(format!(
                "stopped with the {} post still owed: a watcher run delivers it (atvm-run-watcher --build-name {build} --once), and no new run of {build} starts until then",
                self.owed.join(", ")
            ));
        }
        if !self.untried.is_empty() {
            parts.push(format!(
                "stopped before the {} post was tried: it stays failed (atvm-run-watcher --build-name {build} --resend)",
                self.untried.join(", ")
            ));
        }
        match parts.is_empty() {
            true => Ok(()),
            false => Err(Error::failed(format!(
                "resend of {build} not delivered: {}",
                parts.join("; ")
            ))),
        }
    }
}

/// Send each of `failed` in turn, until a stop request.
fn send_all(
    sd: &StateDir,
    request: &Request,
    sink: &Sink,
    window: Duration,
    shutdown: &Shutdown,
    failed: Vec<Target>,
) -> Result<Tally> {
    let mut tally = Tally::default();
    for target in failed {
        let label = target.label();
        if shutdown.requested() {
            tally.untried.push(label);
            continue;
        }
        let payload = stored_payload(&target, sink)?;
        // The failure's record goes: from here on the post is attempted again, and the
        // attempt's own record (`pending`, `post.ready`) says so before anything is sent.
        remove_failed_marker(&target)?;
        let job = Job {
            dir: target.dir.clone(),
            payload,
            label: label.clone(),
            sd,
            request,
            sink,
            window,
            shutdown,
        };
        let mut ledger = ResendLedger {
            sd,
            request,
            target,
        };
        let mut post = ledger.target.state.post.clone();
        // Kept with every record of the attempt, so that a watcher delivering it after a
        // stop records it as resent too.
        post.resend_started_at = Some(Timestamp::now());
        match deliver::deliver(&job, post, &mut ledger)? {
            Outcome::Posted => logging::info(format!(
                "{}: re-sent the {label} post; Mattermost answered ok",
                request.build_name
            )),
            Outcome::Failed(error) => tally.failed.push(format!("{label}: {error}")),
            Outcome::Interrupted => tally.owed.push(label),
            // Cancelled since: nothing is owed any more, as for a watcher.
            Outcome::Cancelled | Outcome::DryRun => {}
        }
    }
    Ok(tally)
}

/// `watcher.lock`, as a watcher holds it: a resend never runs beside a watcher of the
/// build (exit 4).
fn hold_watcher_lock(sd: &StateDir, build: &BuildName) -> Result<Lock> {
    Lock::try_exclusive_within(&sd.watcher_lock(), Duration::from_secs(1)).map_err(|e| match e {
        Error::LockHeld { path } => Error::AlreadyRunning {
            what: format!(
                "a watcher of {build} or another resend is running: it delivers what it has taken up; resend once it has ended (atvm-run-status --build-name {build})"
            ),
            unit: path.display().to_string(),
        },
        other => other,
    })
}

/// The run's post and each sub-run's (every `subruns/<key>/state.json`: the parent's list
/// may be cut short), or only group `group`'s. An unknown group is an error naming the
/// groups there are.
fn targets(sd: &StateDir, request: &Request, group: Option<&str>) -> Result<Vec<Target>> {
    let run = sd
        .read_state()?
        .filter(|s| s.run_id == request.run_id)
        .ok_or_else(|| Error::file("no state of this run yet: nothing to resend", sd.state()))?;
    let mut subs = Vec::new();
    // Listed as the watcher names them (`01-smoke.launch` too), in its order.
    for key in sd.subrun_keys()? {
        let dir = sd.subrun_dir(&key);
        if let Some(state) = fsutil::read_json::<State>(&dir.join("state.json"))?
            .filter(|s| s.run_id == request.run_id)
        {
            subs.push(Target {
                key: Some(key),
                dir,
                state,
            });
        }
    }
    let Some(group) = group else {
        let own = Target {
            key: None,
            dir: sd.path().to_path_buf(),
            state: run,
        };
        return Ok(std::iter::once(own).chain(subs).collect());
    };
    let known: Vec<String> = subs.iter().filter_map(|t| t.key.clone()).collect();
    let chosen: Vec<Target> = subs
        .into_iter()
        .filter(|t| t.key.as_deref() == Some(group) || t.state.group.as_deref() == Some(group))
        .collect();
    if chosen.is_empty() {
        let there = match known.is_empty() {
            true => "the run has no groups".to_string(),
            false => format!("its groups are {}", known.join(", ")),
        };
        return Err(Error::file(
            format!("no group {group:?} in this run: {there}"),
            sd.path().join("subruns"),
        ));
    }
    Ok(chosen)
}

/// Was the run cancelled (its marker, or a CANCELLED state)? Then nothing is sent.
fn cancelled(sd: &StateDir, request: &Request, targets: &[Target]) -> Result<bool> {
    Ok(sd.marked_for(&sd.cancelled_marker(), request)?.is_some()
        || targets
            .iter()
            .any(|t| t.key.is_none() && t.state.state == RunState::Cancelled))
}

/// `posted`, `01-linux posted, 02-windows suppressed`, … for the "nothing to resend" line.
fn describe(targets: &[Target], build: &BuildName) -> String {
    let word = |p: &Post| format!("{:?}", p.status).to_lowercase();
    targets
        .iter()
        .map(|t| match &t.key {
            None if t.state.post.status == PostStatus::Pending => format!(
                "the run's post is owed, not failed: the watcher delivers it (atvm-run-watcher --build-name {build} --once)"
            ),
            None => format!("the run's post: {}", word(&t.state.post)),
            Some(key) => format!("{key}: {}", word(&t.state.post)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The payload kept beside the post since its first attempt, addressed to the channel
/// configured now (kept so, for a restart that finds this attempt owed).
fn stored_payload(target: &Target, sink: &Sink) -> Result<Payload> {
    let path = target.dir.join(PAYLOAD_FILE);
    let mut payload: Payload = fsutil::read_json(&path)?.ok_or_else(|| {
        Error::file(
            "the post's stored payload is missing: it cannot be re-sent as it was",
            &path,
        )
    })?;
    let channel = sink.channel().map(str::to_string);
    if payload.channel != channel {
        payload.channel = channel;
        fsutil::write_json(&path, &payload, 0o600)?;
    }
    Ok(payload)
}

fn remove_failed_marker(target: &Target) -> Result<()> {
    let marker = target.dir.join(FAILED_MARKER);
    match std::fs::remove_file(&marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("cannot clear", &marker, e))
        }
        _ => Ok(()),
    }
}

/// The records a resend changes: the post of one result, in its own `state.json` and (for
/// a sub-run) in the parent's list, under the state lock.
struct ResendLedger<'a> {
    sd: &'a StateDir,
    request: &'a Request,
    target: Target,
}

impl Ledger for ResendLedger<'_> {
    fn record(&mut self, post: &Post) -> Result<()> {
        // `resent_at` comes with the delivery (the job's post carries `resend_started_at`).
        let post = post.clone();
        self.target.state.post = post.clone();
        let key = self.target.key.clone();
        if key.is_some() {
            fsutil::write_json(
                &self.target.dir.join("state.json"),
                &self.target.state,
                0o644,
            )?;
        }
        let run_id = &self.request.run_id;
        self.sd.update_state(|current| {
            let Some(mut state) = current.filter(|s| &s.run_id == run_id) else {
                return Ok((None, ()));
            };
            match &key {
                // Delivered: the run stays what was reported, even if a cancel marked it
                // CANCELLED while the post was on the wire (as the watcher's delivery does).
                None if post.status == PostStatus::Posted => {
                    state.state = self.target.state.state;
                    state.is_final = self.target.state.is_final;
                    state.reason.clone_from(&self.target.state.reason);
                    state.post = post.clone();
                }
                None => state.post = post.clone(),
                Some(k) => {
                    for sub in state.subruns.iter_mut().flatten().filter(|s| &s.key == k) {
                        sub.post = post.clone();
                    }
                }
            }
            state.updated_at = Timestamp::now();
            Ok((Some(state), ()))
        })
    }

    fn cancelled(&mut self) -> bool {
        // A marker that cannot be read leaves the question open: do not send.
        self.sd
            .marked_for(&self.sd.cancelled_marker(), self.request)
            .map_or(true, |m| m.is_some())
            || self
                .sd
                .read_state()
                .ok()
                .flatten()
                .is_some_and(|s| s.run_id == self.request.run_id && s.state == RunState::Cancelled)
    }
}
