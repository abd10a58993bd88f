//! The life of one post (docs/watcher-service.md): owed, attempted (each attempt durably recorded before it
//! is sent), then delivered, failed for good, cancelled or interrupted. The narrow boundary
//! is [`Ledger`]: delivery touches nothing of the watcher but the post record it is given,
//! through the ledger, so the guarantees can be read here in one place:
//!
//! | step | if the watcher stops (SIGTERM) | if it dies (SIGKILL, power) | if the disk is full |
//! |---|---|---|---|
//! | before the attempt is recorded | owed; the next start sends it | the same | nothing is sent; it waits |
//! | request on the wire | the answer is awaited and recorded | next start re-sends (the one duplicate window) | — |
//! | answered, not yet recorded | recorded first, then exit | next start re-sends | the prepared record is renamed (needs no space) |
//! | recorded | nothing more is sent | nothing more is sent | — |
//!
//! `posted.marker` is written only after Mattermost answered `ok`, `failed.marker` after a
//! permanent answer; both are checked first, so a result that was delivered, or refused for
//! good, is never sent again.

use crate::shutdown::Shutdown;
use atvm_common::config::Posting;
use atvm_common::error::{Error, Result};
use atvm_common::mattermost::{self, Attempt, Delivery, Format, Hooks, Payload, Poster};
use atvm_common::state::{FAILED_MARKER, POST_READY, POSTED_MARKER, Post, PostStatus, Request};
use atvm_common::{StateDir, Timestamp, failpoint, fsutil, logging};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a postable result's payload is kept, beside its `state.json`, from its first
/// attempt until it is delivered: a restarted watcher posts exactly those bytes.
pub const PAYLOAD_FILE: &str = "payload.json";

/// How long to wait between tries of a record that could not be written (a full disk).
const RECORD_RETRY: Duration = Duration::from_secs(2);

/// How often a wait between attempts looks at the cancel marker: a cancel ends the
/// retries within this long, whatever the backoff.
const CANCEL_CHECK: Duration = Duration::from_secs(1);

/// Where results go: Mattermost, or `post.json` files with `--dry-run`.
#[derive(Clone, Debug)]
pub enum Sink {
    Mattermost {
        poster: Arc<dyn Poster>,
        channel: Option<String>,
        format: Format,
        /// `MATTERMOST_ATVM_NOTIFY` and `MATTERMOST_ATVM_MENTION`.
        posting: Posting,
    },
    DryRun {
        channel: Option<String>,
        format: Format,
        posting: Posting,
    },
}

impl Sink {
    pub fn channel(&self) -> Option<&str> {
        match self {
            Sink::Mattermost { channel, .. } | Sink::DryRun { channel, .. } => channel.as_deref(),
        }
    }

    pub fn format(&self) -> Format {
        match self {
            Sink::Mattermost { format, .. } | Sink::DryRun { format, .. } => *format,
        }
    }

    pub fn is_dry_run(&self) -> bool {
        matches!(self, Sink::DryRun { .. })
    }

    pub fn posting(&self) -> &Posting {
        match self {
            Sink::Mattermost { posting, .. } | Sink::DryRun { posting, .. } => posting,
        }
    }
}

/// What delivery needs from the watcher: a place to record the post as it changes, and
/// the cancel marker.
pub trait Ledger {
    /// Make `post` the recorded state of this result's post, durably.
    fn record(&mut self, post: &Post) -> Result<()>;
    /// Is the run cancelled now?
    fn cancelled(&mut self) -> bool;
}

/// One result to deliver.
#[derive(Debug)]
pub struct Job<'a> {
    /// The result's directory: the state directory, or the sub-run's.
    pub dir: PathBuf,
    pub payload: Payload,
    /// For log lines: `COMPLETED`, `sub-run 01-linux FAILED`.
    pub label: String,
    pub sd: &'a StateDir,
    pub request: &'a Request,
    pub sink: &'a Sink,
    pub window: Duration,
    pub shutdown: &'a Shutdown,
}

impl Job<'_> {
    fn posted_marker(&self) -> PathBuf {
        self.dir.join(POSTED_MARKER)
    }

    fn failed_marker(&self) -> PathBuf {
        self.dir.join(FAILED_MARKER)
    }

    fn ready(&self) -> PathBuf {
        self.dir.join(POST_READY)
    }

    /// When `marker` of this run was written, if it was.
    fn marked(&self, marker: &Path) -> Result<Option<Timestamp>> {
        self.sd.marked_for(marker, self.request)
    }
}

/// How a delivery ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered now, or earlier (its `posted.marker` was there).
    Posted,
    /// `--dry-run`: the payload went to `post.json`; nothing else was written.
    DryRun,
    /// Failed for good; the error names the webhook's host only.
    Failed(String),
    /// The cancel marker appeared before it was delivered.
    Cancelled,
    /// A stop request; it stays owed.
    Interrupted,
}

/// Deliver `job`, starting from its recorded `post`.
pub fn deliver(job: &Job, mut post: Post, ledger: &mut dyn Ledger) -> Result<Outcome> {
    let poster = match job.sink {
        Sink::DryRun { .. } => return dry_run(job),
        Sink::Mattermost { poster, .. } => Arc::clone(poster),
    };
    // An outcome an earlier watcher got but could not write into the state.
    if let Some(at) = job.marked(&job.posted_marker())? {
        post.status = PostStatus::Posted;
        post.posted_at.get_or_insert(at);
        if post.resend_started_at.is_some() {
            post.resent_at.get_or_insert(at);
        }
        record_until_done(job, ledger, &post)?;
        return Ok(Outcome::Posted);
    }
    if job.marked(&job.failed_marker())?.is_some() {
        post.status = PostStatus::Failed;
        let error = post
            .last_error
            .get_or_insert_with(|| "failed for good earlier".to_string())
            .clone();
        record_until_done(job, ledger, &post)?;
        return Ok(Outcome::Failed(error));
    }
    let (delivery, unrecordable, unsent) = {
        let mut hooks = AttemptLog {
            job,
            post: &mut post,
            ledger,
            unrecordable: None,
            unrecorded_said: false,
            unsent: false,
        };
        let attempts = hooks.post.attempts;
        let delivery = mattermost::deliver(
            &poster,
            &job.payload.to_json(),
            job.window,
            attempts,
            &mut hooks,
        );
        (delivery, hooks.unrecordable, hooks.unsent)
    };
    let delivery = stopped_by_a_cancel(delivery, ledger);
    if unsent && matches!(delivery, Delivery::Cancelled { .. }) {
        // The attempt prepared last was never sent (the cancel came first): no `post.ready`
        // may suggest to the cancel helper that it is on the wire.
        let _ = std::fs::remove_file(job.ready());
    }
    if let Some(e) = unrecordable {
        // Nothing more was sent: the post stays owed, and the file is named.
        return Err(e);
    }
    let outcome = conclude(job, &mut post, delivery)?;
    if outcome != Outcome::Cancelled {
        record_until_done(job, ledger, &post)?;
    }
    failpoint::pause("deliver.recorded");
    Ok(outcome)
}

/// A delivery interrupted because the cancel helper stopped the watcher (it writes the
/// marker, then stops the unit) is cancelled: the post is not owed, it is never sent, and
/// the journal must say that.
fn stopped_by_a_cancel(delivery: Delivery, ledger: &mut dyn Ledger) -> Delivery {
    match delivery {
        Delivery::Interrupted { attempts } if ledger.cancelled() => {
            Delivery::Cancelled { attempts }
        }
        other => other,
    }
}

/// `--dry-run`: the would-be payload in `post.json`, and nothing else written (docs/watcher-service.md).
fn dry_run(job: &Job) -> Result<Outcome> {
    fsutil::create_dir(&job.dir, 0o700)?;
    let path = job.dir.join("post.json");
    fsutil::write_json(&path, &job.payload, 0o644)?;
    logging::info(format!(
        "dry run: {} would be posted; payload in {}",
        job.label,
        path.display()
    ));
    Ok(Outcome::DryRun)
}

/// Turn how the delivery loop ended into the post's record.
fn conclude(job: &Job, post: &mut Post, delivery: Delivery) -> Result<Outcome> {
    let (build, label) = (&job.request.build_name, &job.label);
    Ok(match delivery {
        Delivery::Delivered { attempts } => {
            failpoint::pause("deliver.answered");
            commit_marker(job, &job.posted_marker())?;
            post.status = PostStatus::Posted;
            post.attempts = attempts;
            post.posted_at = Some(Timestamp::now());
            post.last_error = None;
            // A post `--resend` took up is a resend whoever delivers it (a watcher's
            // `--once` after the resend was stopped, say).
            if post.resend_started_at.is_some() {
                post.resent_at = post.posted_at;
            }
            logging::info(format!(
                "{build}: posted {label} to Mattermost after {attempts} attempt(s)"
            ));
            Outcome::Posted
        }
        Delivery::Failed { attempts, error } => {
            failpoint::pause("deliver.answered");
            // A failure (always after an attempt was sent) is as final as a delivery:
            // recorded so that a restart never sends it again.
            commit_marker(job, &job.failed_marker())?;
            post.status = PostStatus::Failed;
            post.attempts = attempts;
            post.last_error = Some(error.clone());
            logging::error(format!(
                "{build}: could not post {label}, failed for good: {error} (no restart sends it again; once Mattermost is fixed: atvm-run-watcher --build-name {build} --resend)"
            ));
            Outcome::Failed(error)
        }
        Delivery::Cancelled { attempts } => {
            post.attempts = attempts;
            logging::info(format!(
                "{build}: cancelled before {label} was posted; not posting"
            ));
            Outcome::Cancelled
        }
        Delivery::Interrupted { attempts } => {
            // `last_error` keeps the last real error (a timeout, a 503): that is what an
            // operator needs to see, not that the watcher was stopped.
            post.attempts = attempts;
            logging::info(format!(
                "{build}: stopped; the {label} post stays owed: the watcher delivers it at its next start (atvm-run-watcher --build-name {build} --once)"
            ));
            Outcome::Interrupted
        }
    })
}

/// Record a post's outcome as `marker` (posted or failed). The prepared record is renamed
/// (no free space needed); failing that the marker is written afresh, again and again while
/// the disk is full, until it is there or the watcher is stopped. Any other failure ends
/// the watcher at once with the file named. The post is never sent again by this watcher
/// either way; a restart before the marker exists may send it again (said in the log).
fn commit_marker(job: &Job, marker: &Path) -> Result<()> {
    let unrecorded = |why: &str| {
        logging::error(format!(
            "{}: {why} before the outcome of the {} post was recorded in {}; a restart may send it again",
            job.request.build_name,
            job.label,
            marker.display()
        ));
    };
    let mut tries = 0u32;
    loop {
        let done = job
            .sd
            .commit_marker(&job.ready(), marker)
            .or_else(|_| job.sd.write_marker(marker, &job.request.run_id));
        match done {
            Ok(()) => return Ok(()),
            Err(e) if !e.is_transient() => {
                unrecorded("stopping");
                return Err(e);
            }
            Err(e) if tries == 0 => logging::error(format!(
                "{}: the outcome of the {} post cannot be recorded yet; retrying, never re-sending: {e}",
                job.request.build_name, job.label
            )),
            Err(_) => {}
        }
        tries += 1;
        if !job.shutdown.sleep(RECORD_RETRY) {
            unrecorded("stopped");
            return Ok(());
        }
    }
}

/// Write the post's record, trying again while the disk is full (until a stop request).
/// Any other failure is returned: it does not clear by waiting.
fn record_until_done(job: &Job, ledger: &mut dyn Ledger, post: &Post) -> Result<()> {
    let mut tries = 0u32;
    loop {
        match ledger.record(post) {
            Ok(()) => return Ok(()),
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) if tries == 0 => {
                logging::warn(format!("cannot record the {} post yet: {e}", job.label));
            }
            Err(_) => {}
        }
        tries += 1;
        if !job.shutdown.sleep(RECORD_RETRY) {
            return Ok(());
        }
    }
}

/// The delivery loop's hooks: record each attempt before it goes out (with the payload and
/// the prepared marker), re-check the cancel marker, sleep on the shutdown pipe.
struct AttemptLog<'a> {
    job: &'a Job<'a>,
    post: &'a mut Post,
    ledger: &'a mut dyn Ledger,
    /// A record that failed for a reason waiting will not cure: the loop stops, nothing
    /// more is sent, and the error ends the watcher.
    unrecordable: Option<Error>,
    /// The operator was told that an attempt waits for its record (said once, not at
    /// every backoff).
    unrecorded_said: bool,
    /// An attempt was recorded (and `post.ready` prepared) but not sent yet.
    unsent: bool,
}

impl AttemptLog<'_> {
    /// Everything that must be on disk before attempt `n` may be sent.
    fn record_attempt(&mut self, n: u32) -> Result<()> {
        let job = self.job;
        let payload = job.dir.join(PAYLOAD_FILE);
        if fsutil::open_regular(&payload)?.is_none() {
            fsutil::write_json(&payload, &job.payload, 0o600)?;
        }
        job.sd.prepare_marker(&job.ready(), &job.request.run_id)?;
        let mut next = self.post.clone();
        next.status = PostStatus::Pending;
        next.attempts = n;
        self.ledger.record(&next)?;
        *self.post = next;
        Ok(())
    }
}

impl Hooks for AttemptLog<'_> {
    fn cancelled(&mut self) -> bool {
        self.ledger.cancelled()
    }
    fn attempting(&mut self, n: u32) -> bool {
        failpoint::pause("deliver.before-record");
        if self.job.shutdown.requested() {
            // Stopped before this attempt was recorded: it does not start.
            return false;
        }
        match self.record_attempt(n) {
            Ok(()) => {
                self.unsent = true;
                if self.unrecorded_said {
                    logging::info(format!(
                        "{}: attempt {n} of the {} post is recorded now; sending it",
                        self.job.request.build_name, self.job.label
                    ));
                    self.unrecorded_said = false;
                }
                true
            }
            Err(e) => {
                if !self.unrecorded_said {
                    logging::warn(format!(
                        "{}: not sending attempt {n} of the {} post until it can be recorded ({e})",
                        self.job.request.build_name, self.job.label
                    ));
                    self.unrecorded_said = true;
                }
                if !e.is_transient() {
                    self.unrecordable = Some(e);
                }
                false
            }
        }
    }
    fn attempted(&mut self, _n: u32, outcome: &Attempt) {
        self.unsent = false;
        if let Attempt::Retry {
            maybe_delivered: false,
            ..
        } = outcome
        {
            // The server said it did not take it (or was never reached): no `post.ready`
            // may suggest to the cancel helper that an answer is still awaited.
            let _ = std::fs::remove_file(self.job.ready());
        }
        if let Attempt::Retry { error, .. } = outcome {
            logging::warn(format!(
                "{}: post attempt failed: {error}",
                self.job.request.build_name
            ));
            self.post.last_error = Some(error.clone());
            if let Err(e) = self.ledger.record(self.post) {
                logging::warn(e);
            }
        }
    }
    fn sleep(&mut self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            if !self.job.shutdown.sleep(left.min(CANCEL_CHECK)) {
                return false;
            }
            if self.ledger.cancelled() {
                // The wait is over: the loop finds the cancel before its next attempt.
                return true;
            }
        }
    }
    fn stop_requested(&mut self) -> bool {
        self.unrecordable.is_some() || self.job.shutdown.requested()
    }
}
