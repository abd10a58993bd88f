//! Following the run log: read from a stored offset, cope with truncation and rotation, and
//! only ever read the file whose identity (device + inode) the runner recorded, so a stale
//! log of an earlier run at the same path never counts (docs/watcher-service.md).

use crate::cypress::LogParser;
use crate::fsutil::with_suffix;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const CHUNK: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Where reading stopped: which file and how far. Stored in the watcher's checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowPoint {
    pub file: FileId,
    pub offset: u64,
    /// A hash of the [`SEAM`] bytes before `offset`, as they were read: if they are not
    /// there any more, the file was truncated and written again — even past its old length,
    /// which a size check alone would take for new output (`> B.log` by a second runner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seam: Option<u64>,
    /// Every byte of this file fed to the parser, truncations included: equal to what the
    /// runner wrote when nothing was lost (an operator's truncation of a log already read
    /// loses nothing). `None` in a checkpoint of an earlier version: the offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<u64>,
}

impl FollowPoint {
    /// Bytes of the file read so far (see [`FollowPoint::read`]).
    pub fn bytes_read(&self) -> u64 {
        self.read.unwrap_or(self.offset)
    }
}

/// How many bytes before the offset [`FollowPoint::seam`] covers.
pub const SEAM: u64 = 64;

/// FNV-1a: a stable hash (it is stored), and plenty to tell two byte strings apart here.
fn seam_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The seam of `file` before `offset` (`None` when the file is shorter).
fn seam_of(file: &mut File, offset: u64) -> io::Result<Option<u64>> {
    let start = offset.saturating_sub(SEAM);
    let mut buf = vec![0u8; (offset - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => return Ok(None),
            n => got += n,
        }
    }
    Ok(Some(seam_hash(&buf)))
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub bytes: u64,
    /// The file was shorter than the offset: it was truncated and is read again from 0.
    pub truncated: bool,
    /// More bytes are waiting (the per-poll budget was used up).
    pub more: bool,
    /// The expected file is open: neither at the log's path nor at `<path>.1` was it found
    /// otherwise (removed, or replaced by another file).
    pub open: bool,
}

#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    file: Option<(File, FileId)>,
    point: Option<FollowPoint>,
    /// On truncation, forget what was parsed too, not only a half-read line.
    restart_on_truncation: bool,
}

impl LogFollower {
    pub fn new(path: &Path, point: Option<FollowPoint>) -> LogFollower {
        LogFollower {
            path: path.to_path_buf(),
            file: None,
            point,
            restart_on_truncation: false,
        }
    }

    /// A truncated log starts over: what was parsed before came from output that is gone
    /// (a hand-started run's `> B.log` truncates the file a leftover of an earlier run
    /// wrote). Not for a log the runner created itself, which an operator may truncate to
    /// free space while the run goes on.
    pub fn restart_on_truncation(mut self, yes: bool) -> LogFollower {
        self.restart_on_truncation = yes;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn point(&self) -> Option<FollowPoint> {
        self.point
    }

    /// Read the expected file through `file`, opened elsewhere than at the log's path (the
    /// writer's descriptor under /proc, when the path no longer leads to it).
    pub fn use_file(&mut self, file: File, id: FileId) {
        self.file = Some((file, id));
    }

    /// Read what is new in the file identified by `expected`, feeding `parser`, at most
    /// `budget` bytes. When `expected` is a different file from the one read so far (a new
    /// runner rotated the log), the old one is read to its end first.
    pub fn poll(
        &mut self,
        expected: FileId,
        parser: &mut LogParser,
        budget: u64,
    ) -> io::Result<Progress> {
        let mut progress = Progress::default();
        let mut budget = budget;
        if self.point.is_some_and(|p| p.file != expected) {
            // Finish the previous generation if it is still open, then start the new one.
            if let Some((file, id)) = self.file.take()
                && self.point.is_some_and(|p| p.file == id)
            {
                let mut file = file;
                let offset = self.point.map_or(0, |p| p.offset);
                let (n, _) = read_from(&mut file, offset, parser, u64::MAX)?;
                progress.bytes += n;
            }
            parser.finish_partial_line();
            self.point = None;
        }
        if self.file.as_ref().is_none_or(|(_, id)| *id != expected) {
            self.file = self.open_expected(expected)?.map(|f| (f, expected));
        }
        let Some((file, _)) = self.file.as_mut() else {
            return Ok(progress);
        };
        progress.open = true;
        let len = file.metadata()?.len();
        let mut offset = self.point.map_or(0, |p| p.offset);
        let rewritten = match self.point.and_then(|p| p.seam) {
            Some(seam) if len >= offset => seam_of(file, offset)? != Some(seam),
            _ => false,
        };
        if len < offset || rewritten {
            offset = 0;
            if self.restart_on_truncation {
                *parser = LogParser::new();
            } else {
                parser.reset_partial_line();
            }
            progress.truncated = true;
        }
        budget = budget.saturating_sub(progress.bytes);
        let read_before = self
            .point
            .filter(|p| p.file == expected)
            .map_or(0, |p| p.bytes_read());
        // Nothing new (an idle run): no read, and no read buffer to make.
        let (n, more) = match len > offset {
            true => read_from(file, offset, parser, budget)?,
            false => (0, false),
        };
        progress.bytes += n;
        progress.more = more;
        let seam = match (n, self.point) {
            (0, Some(p)) if !progress.truncated => p.seam,
            _ => seam_of(file, offset + n)?,
        };
        self.point = Some(FollowPoint {
            file: expected,
            offset: offset + n,
            seam,
            read: Some(read_before + n),
        });
        Ok(progress)
    }

    /// Open the log if the file at its path (or at `<path>.1`, where a newer runner moved
    /// it) is the expected one. Never follows a symlink, and never waits: a FIFO put at the
    /// path would block a plain open until someone writes to it.
    fn open_expected(&self, expected: FileId) -> io::Result<Option<File>> {
        for candidate in [self.path.clone(), with_suffix(&self.path, ".1")] {
            let file = match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&candidate)
            {
                Ok(f) => f,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ELOOP) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            let meta = file.metadata()?;
            if meta.is_file() && FileId::of(&meta) == expected {
                return Ok(Some(file));
            }
        }
        Ok(None)
    }
}

fn read_from(
    file: &mut File,
    offset: u64,
    parser: &mut LogParser,
    budget: u64,
) -> io::Result<(u64, bool)> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    while total < budget {
        let want = (budget - total).min(CHUNK as u64) as usize;
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Ok((total, false));
        }
        parser.feed(&buf[..n]);
        total += n as u64;
    }
    // Budget used up: is there more?
    let len = file.metadata()?.len();
    Ok((total, offset + total < len))
}
