//! The watcher's posts: every one still owed delivered first, each composed from its
//! result's inputs (its record, its part of the log, its reports, the run's VMs) and
//! handed to [`crate::deliver`] with a ledger that records it beside the run's state.

use super::Watcher;
use crate::ctx::Ctx;
use crate::deliver::{self, Job, Ledger, Outcome};
use crate::message::{self, Input};
use crate::persist::{self, Checkpoint, Store};
use crate::record::{RunRecord, Target};
use atvm_common::error::{Error, Result};
use atvm_common::mattermost::{self, Payload};
use atvm_common::state::{Post, RunState};
use atvm_common::{fsutil, logging};
use std::path::PathBuf;

impl Watcher<'_> {
    /// Post every result in `due`, in order. Each became owed (`pending`) when it was
    /// decided and was saved so; a stop before its turn leaves it owed for the next start.
    /// The delivery keeps its payload beside its state before the first attempt, so a
    /// restarted watcher posts exactly those bytes.
    pub(super) fn deliver(&mut self, due: &[Target]) -> Result<()> {
        for &target in due {
            if self.ctx.shutdown.requested() {
                break;
            }
            let payload = self.compose(target);
            self.deliver_one(target, Some(payload))?;
        }
        Ok(())
    }

    /// The directory of `target`'s files: the state directory, or the sub-run's.
    fn target_dir(&self, target: Target) -> PathBuf {
        match target {
            Target::Run => self.ctx.sd.path().to_path_buf(),
            Target::Sub(i) => {
                let key = self.record.subruns[i].key.as_deref();
                self.ctx.sd.subrun_dir(key.unwrap_or("unknown"))
            }
        }
    }

    /// Every post still owed by the run or a sub-run (left by an earlier watcher that was
    /// stopped or died), delivered before anything else.
    pub(super) fn deliver_owed(&mut self) -> Result<()> {
        // What failed for good earlier is never sent again, but still makes the exit 1
        // (unless the run was cancelled since: a cancelled run posts nothing).
        let cancelled = self.record.state.state == RunState::Cancelled;
        for (target, error) in self
            .record
            .failed_for_good()
            .into_iter()
            .filter(|_| !cancelled)
        {
            let label = self.record.label(target);
            self.failed_posts
                .push(format!("{label}: {error} (earlier; never sent again)"));
        }
        let owed = self.record.owed();
        for &target in &owed {
            if self.ctx.shutdown.requested() {
                break;
            }
            logging::info(format!(
                "{}: delivering the owed {} post",
                self.ctx.build,
                self.record.label(target)
            ));
            self.deliver_one(target, None)?;
        }
        if self.record.state.is_final && self.failed_posts.is_empty() {
            logging::info(format!(
                "{}: run is final ({}); nothing left to do",
                self.ctx.build, self.record.state.state
            ));
        }
        Ok(())
    }

    /// Deliver `target`'s `payload`, or the one kept for it (made afresh if there is none).
    fn deliver_one(&mut self, target: Target, payload: Option<Payload>) -> Result<()> {
        let dir = self.target_dir(target);
        let kept = match payload {
            Some(p) => Some(p),
            None => fsutil::read_json(&dir.join(deliver::PAYLOAD_FILE))?,
        };
        let payload = match kept {
            Some(p) => p,
            None => self.compose(target),
        };
        let job = Job {
            dir,
            payload,
            label: self.record.label(target),
            sd: &self.ctx.sd,
            request: &self.ctx.request,
            sink: &self.ctx.sink,
            window: self.ctx.timing.post_retry,
            shutdown: self.ctx.shutdown,
        };
        let post = self.record.state_of(target).post.clone();
        let mut ledger = RecordLedger {
            ctx: &self.ctx,
            record: &mut self.record,
            store: &mut self.store,
            cp: &self.cp,
            target,
            unreadable: None,
        };
        let outcome = deliver::deliver(&job, post, &mut ledger)?;
        if let Some(e) = ledger.unreadable {
            // Nothing was sent; the post stays owed and the file is named.
            return Err(e);
        }
        match outcome {
            // A cancel that came while the refused post was on the wire: the run is
            // CANCELLED, which posts nothing; the refusal is not the watcher's failure.
            Outcome::Failed(_) if self.record.state.state == RunState::Cancelled => {}
            Outcome::Failed(error) => self.failed_posts.push(error),
            Outcome::Cancelled => self.record.cancel(),
            Outcome::Posted | Outcome::DryRun | Outcome::Interrupted => {}
        }
        self.save_or_warn()
    }

    /// The payload for `target`, from its record, its part of the log, its reports and
    /// the run's VMs.
    pub(super) fn compose(&mut self, target: Target) -> Payload {
        self.observer.ready_for_message(&self.ctx, &self.cp);
        let vms = self.observer.vms(&self.ctx);
        let sub = match target {
            Target::Run => None,
            Target::Sub(i) => Some(i),
        };
        let reported = self.observer.reported(&self.cp, sub);
        let (earlier, passed) = self.compared_with(target);
        let runs = &self.cp.parser.summary().runs;
        let blocks = match sub {
            None => &runs[..],
            Some(i) => runs.get(i..=i).unwrap_or(&[]),
        };
        let (start, end) = (
            self.observer.runner_started_at,
            self.observer.runner_exited_at,
        );
        // A sub-run runs from its `(Run Starting)` to its summary (see `group_window`).
        let (started, ended) = match sub {
            None => (start, end),
            Some(i) => (
                self.observer.group_started(&self.cp, i),
                self.observer
                    .group_window(&self.cp, i)
                    .and_then(|(_, to)| to),
            ),
        };
        let host = mattermost::host_name();
        let log = self.cp.log_path.as_ref().map(|p| p.to_string_lossy());
        let composed = message::compose(Input {
            build: &self.ctx.build,
            request: &self.ctx.request,
            record: self.record.state_of(target),
            blocks,
            reported,
            passed,
            duration: self.duration(sub),
            started,
            ended,
            vms: &vms,
            host: &host,
            channel: self.ctx.sink.channel(),
            format: self.ctx.sink.format(),
            log: log.as_deref(),
            earlier: &earlier,
            mention: self.ctx.sink.posting().mention.as_ref().map(|m| m.as_str()),
        });
        self.remember(target, composed.outcome);
        crate::record::note_flaky(self.record.state_of_mut(target), composed.flaky);
        composed.payload
    }
}

/// Delivery's view of the watcher: the one post record it changes, saved with the rest.
struct RecordLedger<'w, 'a> {
    ctx: &'w Ctx<'a>,
    record: &'w mut RunRecord,
    store: &'w mut Store,
    cp: &'w Checkpoint,
    target: Target,
    /// A cancel marker that is there but cannot be read: nothing may be sent.
    unreadable: Option<Error>,
}

impl Ledger for RecordLedger<'_, '_> {
    fn record(&mut self, post: &Post) -> Result<()> {
        *self.record.post_of(self.target) = post.clone();
        self.store.save(self.ctx, self.record, self.cp)
    }

    fn cancelled(&mut self) -> bool {
        if self.record.state.state == RunState::Cancelled {
            // The last record found the cancel under the state lock.
            return true;
        }
        match persist::cancelled_at(&self.ctx.sd, &self.ctx.request) {
            Ok(at) => at.is_some(),
            Err(e) => {
                // Whether the run was cancelled cannot be told: do not send.
                self.unreadable = Some(e);
                true
            }
        }
    }
}
