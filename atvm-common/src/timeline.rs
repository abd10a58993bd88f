//! The runner's timeline of a run: when each Cypress block of the log (`(Run Starting)` …
//! `(Run Finished)`) started and finished, recorded by run-atvm-runner as it copies the
//! command's output into the log, in `runner/timeline.jsonl` beside `status.json`.
//!
//! Why the runner and not the watcher: a categorized run's reports are told apart by the
//! time they were written (two groups may run specs Cypress prints with the same name).
//! The watcher sees a group finish only when it looks — after a restart it may see every
//! group finish at once — so a window taken from its observation depends on when it
//! looked. The runner sees every byte as it is written: the times it records are facts of
//! the run, the same for any watcher that reads them (docs/watcher-service.md, "Restart
//! equivalence").
//!
//! The file is append-only, one JSON object per line, each written with one `write(2)` and
//! synced before the log line it describes is written: a watcher that has read a block's
//! `(Run Finished)` from the log finds its event here (or the runner recorded why it could
//! not write one). Block numbers count across every wrapper of the run, in log order, as
//! the watcher's parser counts blocks across a rotated log.

use crate::cypress::LogParser;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::time::Moment;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What happened to a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockEvent {
    /// Its `(Run Starting)` line was written.
    Started,
    /// Its summary's footer (`All specs passed!`, `N of M failed`, …) was written: every
    /// report of the block was written before it.
    Finished,
    /// The command printed something (recorded at most every [`OUTPUT_EVERY`]): the
    /// run's last sign of life, on the runner's clocks, for the hang rule.
    Output,
}

/// How often, at most, the runner records that the command printed something.
pub const OUTPUT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One line of `runner/timeline.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub run_id: String,
    /// 0-based, in log order over every wrapper of the run.
    pub block: usize,
    pub event: BlockEvent,
    pub at: Moment,
}

/// A run's timeline as read by the watcher: the blocks' entries, and the last output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    entries: Vec<Entry>,
    last_output: Option<Moment>,
    /// Bytes of the file read so far (up to the end of its last complete line).
    read: u64,
}

impl Timeline {
    /// The entries of `run_id` in `path` (none when the file does not exist). A last line
    /// without its newline is a write that did not complete: it is not an entry yet.
    pub fn read(path: &Path, run_id: &str) -> Result<Timeline> {
        let mut t = Timeline::default();
        t.read_more(path, run_id)?;
        Ok(t)
    }

    /// Read what was appended since the last read (all of it again if the file is shorter
    /// than what was read: another file). Output entries are kept only as the latest one,
    /// so neither memory nor reading grows with a long run's output.
    pub fn read_more(&mut self, path: &Path, run_id: &str) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let Some((mut file, meta)) = fsutil::open_regular(path)? else {
            return Ok(());
        };
        if meta.len() < self.read {
            *self = Timeline::default();
        }
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(self.read))
            .and_then(|_| file.take(fsutil::MAX_READ_BYTES).read_to_end(&mut bytes))
            .map_err(|e| Error::io("cannot read", path, e))?;
        let complete = memchr::memrchr(b'\n', &bytes).map_or(0, |last| last + 1);
        self.read += complete as u64;
        for e in parse(&bytes[..complete])
            .into_iter()
            .filter(|e| e.run_id == run_id)
        {
            match e.event {
                BlockEvent::Output => self.last_output = Some(e.at),
                _ => self.entries.push(e),
            }
        }
        Ok(())
    }

    /// When block `block` started, if the runner recorded it.
    pub fn started(&self, block: usize) -> Option<&Moment> {
        self.find(block, BlockEvent::Started)
    }

    /// When block `block` finished, if the runner recorded it.
    pub fn finished(&self, block: usize) -> Option<&Moment> {
        self.find(block, BlockEvent::Finished)
    }

    /// When the command last printed something, as the runner recorded it.
    pub fn last_output(&self) -> Option<&Moment> {
        self.last_output.as_ref()
    }

    /// How many blocks were started.
    pub fn blocks_started(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.event == BlockEvent::Started)
            .count()
    }

    fn find(&self, block: usize, event: BlockEvent) -> Option<&Moment> {
        self.entries
            .iter()
            .find(|e| e.block == block && e.event == event)
            .map(|e| &e.at)
    }
}

/// The complete lines of the file that are entries. A line that is not (a write cut off by
/// a crash, or garbage) is left out, not the file: the entries around it stay facts.
fn parse(bytes: &[u8]) -> Vec<Entry> {
    let complete = match memchr::memrchr(b'\n', bytes) {
        Some(last) => &bytes[..=last],
        None => return Vec::new(),
    };
    complete
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect()
}

/// The runner's side: appends this wrapper's events, numbering its blocks after the ones
/// earlier wrappers of the run recorded.
#[derive(Debug)]
pub struct Writer {
    file: File,
    path: PathBuf,
    run_id: String,
    /// Blocks earlier wrappers of this run started.
    base: usize,
    /// The last write failed, perhaps part-way through its line.
    torn: bool,
}

impl Writer {
    /// Open (create) the timeline at `path` for appending, this wrapper's blocks numbered
    /// from `base` — how many the earlier wrappers of the run saw — or, when that is not
    /// known, from the blocks the timeline shows started.
    pub fn open(path: &Path, run_id: &str, base: Option<usize>) -> Result<Writer> {
        let base = match base {
            Some(base) => base,
            None => Timeline::read(path, run_id)?.blocks_started(),
        };
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("cannot open the runner timeline", path, e))?;
        // A line an earlier wrapper left cut off is ended, so this one's entries start on
        // a line of their own.
        let len = file
            .metadata()
            .map_err(|e| Error::io("cannot read the runner timeline", path, e))?
            .len();
        if len > 0 && !ends_with_newline(&file, len) {
            file.write_all(b"\n")
                .map_err(|e| Error::io("cannot write the runner timeline", path, e))?;
        }
        Ok(Writer {
            file,
            path: path.to_path_buf(),
            run_id: run_id.to_string(),
            base,
            torn: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record that this wrapper's block `local` had `event` now: one write, then synced,
    /// so the entry is on disk before the log line it describes.
    pub fn record(&mut self, local: usize, event: BlockEvent) -> io::Result<()> {
        let entry = Entry {
            run_id: self.run_id.clone(),
            block: self.base + local,
            event,
            at: Moment::now(),
        };
        // After a write that failed part-way, this entry starts on a line of its own.
        let mut line = match self.torn {
            true => b"\n".to_vec(),
            false => Vec::new(),
        };
        line.extend(serde_json::to_vec(&entry).map_err(io::Error::other)?);
        line.push(b'\n');
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        self.torn = written.is_err();
        written
    }
}

fn ends_with_newline(file: &File, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8];
    file.read_at(&mut last, len - 1).is_ok() && last[0] == b'\n'
}

/// Finds the block events in a stream of log lines with the watcher's own parser, so the
/// runner and the watcher agree on where each block starts and finishes.
#[derive(Debug, Default)]
pub struct BlockTracker {
    parser: LogParser,
    started: usize,
    finished: usize,
}

impl BlockTracker {
    /// How many blocks have started.
    pub fn blocks(&self) -> usize {
        self.started
    }

    /// Feed one line (with its newline, if it has one); the events it completes, in order.
    pub fn line(&mut self, line: &[u8]) -> Vec<(usize, BlockEvent)> {
        self.parser.feed(line);
        let runs = &self.parser.summary().runs;
        let mut events = Vec::new();
        // A block is finished (and so are the ones before it) once its footer is parsed;
        // only the last block can gain one, but a new block also closes the count.
        while self.started < runs.len() {
            events.push((self.started, BlockEvent::Started));
            self.started += 1;
        }
        while self.finished < runs.len() && runs[self.finished].is_finished() {
            events.push((self.finished, BlockEvent::Finished));
            self.finished += 1;
        }
        // A block cut off before its summary (the next one started) never finishes.
        if self.finished + 1 < runs.len() {
            self.finished = runs.len() - 1;
        }
        events
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const BLOCK: &str = "  (Run Starting)\n  ┌────┐\n  │ Cypress:  12.17.4 │\n  │ Params:   Group: linux, Parallel: false │\n  └────┘\n  Running:  a.cy.js  (1 of 1)\n  (Run Finished)\n  ┌──┐\n  │ ✔  a.cy.js   00:01   1   1   -   -   - │\n  └──┘\n    ✔  All specs passed!   00:01   1   1   -   -   -  \n";

    fn events(log: &str) -> Vec<(usize, BlockEvent, String)> {
        let mut t = BlockTracker::default();
        log.split_inclusive('\n')
            .flat_map(|l| {
                t.line(l.as_bytes())
                    .into_iter()
                    .map(move |(b, e)| (b, e, l.trim().to_string()))
            })
            .collect()
    }

    #[test]
    fn a_block_starts_at_its_header_and_finishes_at_its_footer() {
        let got = events(&format!("{BLOCK}{BLOCK}"));
        let kinds: Vec<(usize, BlockEvent)> = got.iter().map(|(b, e, _)| (*b, *e)).collect();
        assert_eq!(
            kinds,
            [
                (0, BlockEvent::Started),
                (0, BlockEvent::Finished),
                (1, BlockEvent::Started),
                (1, BlockEvent::Finished)
            ]
        );
        assert_eq!(got[0].2, "(Run Starting)");
        assert!(got[1].2.contains("All specs passed!"), "{}", got[1].2);
    }

    #[test]
    fn a_block_cut_off_by_the_next_never_finishes() {
        let cut = "  (Run Starting)\n  ┌────┐\n  │ Cypress:  12.17.4 │\n  └────┘\n  Running:  a.cy.js  (1 of 2)\n";
        let got: Vec<(usize, BlockEvent)> = events(&format!("{cut}{BLOCK}"))
            .into_iter()
            .map(|(b, e, _)| (b, e))
            .collect();
        assert_eq!(
            got,
            [
                (0, BlockEvent::Started),
                (1, BlockEvent::Started),
                (1, BlockEvent::Finished)
            ]
        );
    }

    #[test]
    fn entries_are_read_per_run_and_a_torn_last_line_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.jsonl");
        let mut w = Writer::open(&path, "run-a", None).unwrap();
        w.record(0, BlockEvent::Started).unwrap();
        w.record(0, BlockEvent::Finished).unwrap();
        // A second wrapper of the same run numbers its blocks after the first one's.
        let mut w2 = Writer::open(&path, "run-a", None).unwrap();
        w2.record(0, BlockEvent::Started).unwrap();
        let mut other = Writer::open(&path, "run-b", None).unwrap();
        other.record(0, BlockEvent::Started).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"run_id\":\"run-a\",\"blo").unwrap();
        let t = Timeline::read(&path, "run-a").unwrap();
        assert!(t.started(0).is_some() && t.finished(0).is_some());
        assert!(t.started(1).is_some() && t.finished(1).is_none());
        assert_eq!(t.blocks_started(), 2);
        assert_eq!(Timeline::read(&path, "run-b").unwrap().blocks_started(), 1);
    }

    #[test]
    fn a_line_that_does_not_parse_leaves_the_others_standing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.jsonl");
        let mut w = Writer::open(&path, "r", None).unwrap();
        w.record(0, BlockEvent::Started).unwrap();
        // A wrapper killed half-way through a line, then another of the same run.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"run_id\":\"r\",\"blo").unwrap();
        let mut again = Writer::open(&path, "r", None).unwrap();
        again.record(0, BlockEvent::Started).unwrap();
        f.write_all(b"garbage\n").unwrap();
        let t = Timeline::read(&path, "r").unwrap();
        assert_eq!(t.blocks_started(), 2, "both entries survive the torn line");
        assert!(t.started(1).is_some());
    }
}
