//! The wrapper copies the command's output (stdout and stderr, one pipe) into the run log
//! itself, rather than handing the command the log file. Two facts come only from here:
//!
//! - **Whether the log could be written.** A full /tmp leaves a log that stops early or
//!   stays empty; read as it is, that looks like a run that printed nothing (COMPLETED) or
//!   did not finish (FAILED). The first failed write is recorded (offset, errno) in
//!   `runner/status.json` at once, the rest of the output is discarded (a log with a hole
//!   is not the run's output either), and the watcher ends the run UNKNOWN naming the file
//!   system. The number of bytes written goes with the exit record: a watcher has read the
//!   whole log only when it has read that many.
//! - **When each Cypress block started and finished** ([`atvm_common::timeline`]): each
//!   event is recorded before the newline of the line that completes it reaches the log,
//!   so a watcher that has parsed the line finds the event. So is, every few seconds while
//!   output flows, that the command printed something: the hang rule's last activity.

use atvm_common::state::LogWriteError;
use atvm_common::timeline::{self, BlockEvent, BlockTracker, Writer};
use atvm_common::{Timestamp, logging};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long output is still copied after the command exited while something it started
/// holds the pipe open (systemd ends such leftovers when the wrapper exits anyway).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How often the copy loop looks at whether the command has exited.
const POLL_MS: i32 = 100;

/// What the copy did, for the exit record.
#[derive(Debug, Default)]
pub struct Copied {
    pub bytes: u64,
    /// Cypress blocks seen in the output.
    pub blocks: usize,
    pub write_error: Option<LogWriteError>,
    pub timeline_error: Option<String>,
}

impl Copied {
    /// A copy that ended without saying what it wrote: the log cannot be trusted.
    pub fn lost(why: &str) -> Copied {
        Copied {
            bytes: 0,
            blocks: 0,
            write_error: Some(LogWriteError {
                offset: 0,
                errno: 0,
                error: why.to_string(),
                at: Timestamp::now(),
            }),
            timeline_error: None,
        }
    }
}

/// The copy from the command's pipe into the log.
#[derive(Debug)]
pub struct Copier {
    log: File,
    log_path: PathBuf,
    tracker: BlockTracker,
    timeline: Result<Writer, String>,
    /// When the last `Output` entry was recorded.
    output_recorded: Option<Instant>,
    done: Copied,
}

impl Copier {
    pub fn new(log: File, log_path: PathBuf, timeline: Result<Writer, String>) -> Copier {
        let timeline_error = timeline.as_ref().err().cloned();
        if let Some(e) = &timeline_error {
            logging::warn(format!(
                "{e}; a categorized run's groups will be posted without their reports"
            ));
        }
        Copier {
            log,
            log_path,
            tracker: BlockTracker::default(),
            timeline,
            output_recorded: None,
            done: Copied {
                timeline_error,
                ..Copied::default()
            },
        }
    }

    /// Copy until the command's output ends (every writer closed the pipe), or for at most
    /// [`DRAIN_AFTER_EXIT`] once `exited` is set. `failed` is told of the first failed
    /// write at once (it records it in the runner's status).
    pub fn run(
        mut self,
        mut pipe: io::PipeReader,
        exited: &AtomicBool,
        mut failed: impl FnMut(&LogWriteError),
    ) -> Copied {
        let mut buf = vec![0u8; 64 * 1024];
        let mut drain_until: Option<Instant> = None;
        loop {
            if exited.load(Ordering::SeqCst) {
                let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN_AFTER_EXIT);
                if Instant::now() >= until {
                    logging::warn(
                        "the command exited but something it started still holds its output open; the log ends here",
                    );
                    break;
                }
            }
            if !readable(&pipe) {
                continue;
            }
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.chunk(&buf[..n], &mut failed),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    logging::warn(format!("cannot read the command's output: {e}"));
                    break;
                }
            }
        }
        self.finish(&mut failed)
    }

    /// One chunk of output: block events are recorded before the newline that completes
    /// their line is written.
    fn chunk(&mut self, bytes: &[u8], failed: &mut impl FnMut(&LogWriteError)) {
        // A sign of life for the hang rule, on the runner's own clocks (every few seconds at
        // most: a run printing thousands of lines a second writes one entry), recorded
        // before the bytes reach the log, so a watcher that read them finds it.
        // Not recorded (the disk was full): tried again with the next output.
        if self
            .output_recorded
            .is_none_or(|t| t.elapsed() >= timeline::OUTPUT_EVERY)
            && self.record(self.tracker.blocks(), BlockEvent::Output)
        {
            self.output_recorded = Some(Instant::now());
        }
        let mut line_start = 0;
        let mut written = 0;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            let events = self.tracker.line(&bytes[line_start..=nl]);
            line_start = nl + 1;
            if events.is_empty() {
                continue;
            }
            self.write(&bytes[written..nl], failed);
            written = nl;
            for (block, event) in events {
                self.record(block, event);
            }
        }
        if line_start < bytes.len() {
            self.tracker.line(&bytes[line_start..]);
        }
        self.write(&bytes[written..], failed);
    }

    /// Write to the log, unless a write failed before (what follows a hole is not kept).
    fn write(&mut self, mut bytes: &[u8], failed: &mut impl FnMut(&LogWriteError)) {
        while !bytes.is_empty() && self.done.write_error.is_none() {
            match self.log.write(bytes) {
                Ok(0) => self.fail(io::Error::from(io::ErrorKind::WriteZero), failed),
                Ok(n) => {
                    self.done.bytes += n as u64;
                    bytes = &bytes[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.fail(e, failed),
            }
        }
    }

    fn fail(&mut self, e: io::Error, failed: &mut impl FnMut(&LogWriteError)) {
        let error = LogWriteError {
            offset: self.done.bytes,
            errno: e.raw_os_error().unwrap_or(0),
            error: e.to_string(),
            at: Timestamp::now(),
        };
        logging::warn(format!(
            "cannot write the run log {} at byte {}: {e}; the rest of the command's output is lost and the run will end UNKNOWN",
            self.log_path.display(),
            error.offset
        ));
        failed(&error);
        self.done.write_error = Some(error);
    }

    /// Record an event; false when it could not be written. A failure (a full state file
    /// system) is said once and the next event is tried again: a timeline that stopped for
    /// good would make a long run look silent to the hang rule.
    fn record(&mut self, block: usize, event: BlockEvent) -> bool {
        let Ok(timeline) = self.timeline.as_mut() else {
            return false;
        };
        let Err(e) = timeline.record(block, event) else {
            return true;
        };
        if self.done.timeline_error.is_none() {
            let why = format!("cannot write {}: {e}", timeline.path().display());
            logging::warn(format!(
                "{why}; a group whose entries are missing is posted without its reports"
            ));
            self.done.timeline_error = Some(why);
        }
        false
    }

    /// The log reaches the disk before the exit is recorded; a sync that fails (a file
    /// system that allocates late can say ENOSPC only now) means written bytes are lost.
    fn finish(mut self, failed: &mut impl FnMut(&LogWriteError)) -> Copied {
        if self.done.write_error.is_none()
            && let Err(e) = self.log.sync_data()
        {
            self.fail(e, failed);
        }
        self.done.blocks = self.tracker.blocks();
        self.done
    }
}

/// Wait up to [`POLL_MS`] for output (or the end of it).
fn readable(pipe: &io::PipeReader) -> bool {
    let mut fds = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd that lives across the call.
    let n = unsafe { libc::poll(&mut fds, 1, POLL_MS) };
    n > 0
}
