//! The life of one post: owed, on its way (attempts recorded as they go), then delivered,
//! failed for good, cancelled or interrupted. The narrow boundary is [`Ledger`]: delivery
//! reads and writes nothing of the watcher but the post record it is given, through the
//! ledger, so it can be reasoned about (and tested) alone.
//!
//! `posted.marker` is written only after Mattermost answered `ok` and is checked first, so
//! a result that was delivered is never posted again.

use crate::shutdown::Shutdown;
use atvm_common::error::Result;
use atvm_common::mattermost::{self, Attempt, Delivery, Format, Hooks, Payload, Poster};
use atvm_common::state::{Post, PostStatus, Request};
use atvm_common::{StateDir, fsutil, logging};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where a postable result's payload is kept from the moment it is due until it is
/// delivered, beside its `state.json`: a restarted watcher posts exactly those bytes.
pub const PAYLOAD_FILE: &str = "payload.json";

/// Where results go: Mattermost, or `post.json` files with `--dry-run`.
#[derive(Clone, Debug)]
pub enum Sink {
    Mattermost {
        poster: Arc<dyn Poster>,
        channel: Option<String>,
        format: Format,
    },
    DryRun {
        channel: Option<String>,
        format: Format,
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

/// How a delivery ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered now, or earlier (its `posted.marker` was there).
    Posted,
    /// `--dry-run`: the payload went to `post.json`.
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
    let marker = job.dir.join("posted.marker");
    let already = job.sd.read_marker(&marker)?.is_some_and(|(m, mtime)| {
        m.belongs_to(&job.request.run_id, job.request.requested_at, mtime)
    });
    if already {
        post.status = PostStatus::Posted;
        ledger.record(&post)?;
        return Ok(Outcome::Posted);
    }
    let payload = &job.payload;
    let poster = match job.sink {
        Sink::DryRun { .. } => {
            fsutil::create_dir(&job.dir, 0o700)?;
            let path = job.dir.join("post.json");
            fsutil::write_json(&path, payload, 0o644)?;
            logging::info(format!("dry run: payload written to {}", path.display()));
            post.dry_run = true;
            ledger.record(&post)?;
            return Ok(Outcome::DryRun);
        }
        Sink::Mattermost { poster, .. } => Arc::clone(poster),
    };
    post.status = PostStatus::Pending;
    ledger.record(&post)?;
    let delivery = {
        let mut hooks = AttemptLog {
            post: &mut post,
            ledger,
            shutdown: job.shutdown,
            build: &job.request.build_name,
        };
        let attempts = hooks.post.attempts;
        mattermost::deliver(
            &poster,
            &payload.to_json(),
            job.window,
            attempts,
            &mut hooks,
        )
    };
    let outcome = conclude(job, &mut post, delivery)?;
    ledger.record(&post)?;
    Ok(outcome)
}

/// Record a finished delivery in `post` (and the marker for a delivered one).
fn conclude(job: &Job, post: &mut Post, delivery: Delivery) -> Result<Outcome> {
    let (build, label) = (&job.request.build_name, &job.label);
    Ok(match delivery {
        Delivery::Delivered { attempts } => {
            job.sd
                .write_marker(&job.dir.join("posted.marker"), &job.request.run_id)?;
            post.status = PostStatus::Posted;
            post.attempts = attempts;
            post.posted_at = Some(atvm_common::Timestamp::now());
            logging::info(format!(
                "{build}: posted {label} to Mattermost after {attempts} attempt(s)"
            ));
            Outcome::Posted
        }
        Delivery::Failed { attempts, error } => {
            post.status = PostStatus::Failed;
            post.attempts = attempts;
            post.last_error = Some(error.clone());
            logging::error(format!("{build}: could not post {label}: {error}"));
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
            post.attempts = attempts;
            post.last_error =
                Some("interrupted by a stop request; the next start retries".to_string());
            Outcome::Interrupted
        }
    })
}

/// The delivery loop's hooks: record each attempt, re-check the cancel marker, sleep on
/// the shutdown pipe.
struct AttemptLog<'a> {
    post: &'a mut Post,
    ledger: &'a mut dyn Ledger,
    shutdown: &'a Shutdown,
    build: &'a str,
}

impl Hooks for AttemptLog<'_> {
    fn cancelled(&mut self) -> bool {
        self.ledger.cancelled()
    }
    fn attempting(&mut self, n: u32) {
        self.post.attempts = n;
        if let Err(e) = self.ledger.record(self.post) {
            logging::warn(e);
        }
    }
    fn attempted(&mut self, _n: u32, outcome: &Attempt) {
        if let Attempt::Retry { error, .. } | Attempt::Permanent { error } = outcome {
            logging::warn(format!("{}: post attempt failed: {error}", self.build));
            self.post.last_error = Some(error.clone());
            if let Err(e) = self.ledger.record(self.post) {
                logging::warn(e);
            }
        }
    }
    fn sleep(&mut self, d: Duration) -> bool {
        self.shutdown.sleep(d)
    }
    fn stop_requested(&mut self) -> bool {
        self.shutdown.requested()
    }
}
