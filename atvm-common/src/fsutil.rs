//! File primitives with the guarantees SPEC §4/§5 ask for: atomic replacement (temp file in
//! the same directory, fsync, rename, fsync of the directory), JSON that is reported by name
//! when it does not parse, safe creation of logs in world-writable directories, and locks.

use crate::error::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Write `bytes` to `path` so that readers see either the old or the new content, never a
/// mix, and a crash leaves the old file in place.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_atomic_with(path, mode, |f| f.write_all(bytes))
}

/// [`write_atomic`] with the content produced by `fill`; if `fill` fails part-way (a full
/// disk, say) the temp file is removed and the old file is untouched.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; state files must be exactly what we asked for.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        fill(&mut f)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("cannot write", path, e)
    })
}

/// Serialise `value` as pretty JSON (with a trailing newline) and write it atomically.
pub fn write_json(path: &Path, value: &impl Serialize, mode: u32) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::failed(format!("cannot encode {}: {e}", path.display())))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, mode)
}

/// Read and parse a JSON file. `Ok(None)` when it does not exist; a file that does not parse
/// is an error naming the file, never silently replaced.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::file(format!("does not parse as expected: {e}"), path))
}

/// Create `dir` (and parents) and set it to `mode`.
pub fn create_dir(dir: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("cannot create directory", dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("cannot set mode of", dir, e))
}

/// Open a fresh log at `path` in a possibly world-writable directory (SPEC §5): an existing
/// regular file of ours is moved to `<path>.1`; a symlink or a file owned by someone else is
/// an error and is never followed or written through. The new file is created with
/// `O_CREAT|O_EXCL|O_NOFOLLOW`, so a link planted between the check and the open fails too.
pub fn create_fresh_log(path: &Path) -> Result<File> {
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            if meta.file_type().is_symlink() {
                return Err(Error::file(
                    "refusing to use log: it is a symbolic link",
                    path,
                ));
            }
            if !meta.file_type().is_file() {
                return Err(Error::file("refusing to use log: not a regular file", path));
            }
            if meta.uid() != effective_uid() {
                return Err(Error::file(
                    format!(
                        "refusing to use log: owned by uid {}, not by us",
                        meta.uid()
                    ),
                    path,
                ));
            }
            let rotated = with_suffix(path, ".1");
            fs::rename(path, &rotated).map_err(|e| Error::io("cannot rotate log", path, e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot inspect log", path, e)),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o640)
        .open(path)
        .map_err(|e| Error::io("cannot create log", path, e))
}

/// `path` with `suffix` appended to its file name (`/tmp/b.log` → `/tmp/b.log.1`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The effective uid of this process (`/proc/self` is owned by it), without `unsafe`.
pub fn effective_uid() -> u32 {
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// An exclusive advisory lock (flock) held for as long as the value lives.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    fn open(path: &Path) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("cannot open lock", path, e))
    }

    /// Take the lock or fail at once with `LockHeld` (exit 4).
    pub fn try_exclusive(path: &Path) -> Result<Lock> {
        let file = Lock::open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Lock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(Error::LockHeld {
                path: path.to_path_buf(),
            }),
            Err(fs::TryLockError::Error(e)) => Err(Error::io("cannot lock", path, e)),
        }
    }

    /// Wait for the lock; for short critical sections such as a read-modify-write.
    pub fn exclusive(path: &Path) -> Result<Lock> {
        let file = Lock::open(path)?;
        file.lock().map_err(|e| Error::io("cannot lock", path, e))?;
        Ok(Lock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one", 0o600).expect("first write");
        write_atomic(&p, b"two", 0o644).expect("second write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(
            fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn failed_atomic_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.json");
        write_atomic(&p, b"old", 0o600).expect("write");
        // The disk fills up half-way through the new content.
        let err = write_atomic_with(&p, 0o600, |f| {
            f.write_all(b"{\"half\":")?;
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        })
        .expect_err("must fail");
        assert!(err.to_string().contains("state.json"), "{err}");
        assert_eq!(fs::read(&p).expect("read"), b"old");
        assert_eq!(
            fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "temp file left behind"
        );
    }

    #[test]
    fn corrupt_json_is_reported_by_path_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.json");
        fs::write(&p, b"{ not json").expect("write");
        let err = read_json::<serde_json::Value>(&p).expect_err("corrupt");
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");
        assert_eq!(fs::read(&p).expect("read"), b"{ not json");
        assert!(
            read_json::<serde_json::Value>(&dir.path().join("absent"))
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn second_lock_attempt_fails_with_exit_4() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("watcher.lock");
        let held = Lock::try_exclusive(&p).expect("first");
        let err = Lock::try_exclusive(&p).expect_err("second");
        assert_eq!(err.exit_code(), 4);
        drop(held);
        Lock::try_exclusive(&p).expect("free again");
    }

    #[test]
    fn fresh_log_rotates_ours_and_refuses_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("b.log");
        fs::write(&log, b"previous run").expect("write");
        let mut f = create_fresh_log(&log).expect("create");
        f.write_all(b"new").expect("write");
        assert_eq!(
            fs::read(with_suffix(&log, ".1")).expect("read"),
            b"previous run"
        );

        let target = dir.path().join("target");
        fs::write(&target, b"precious").expect("write");
        let link = dir.path().join("evil.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = create_fresh_log(&link).expect_err("symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read(&target).expect("read"), b"precious");
        assert!(
            fs::symlink_metadata(&link)
                .expect("still there")
                .file_type()
                .is_symlink()
        );
    }
}
