//! File primitives with the guarantees docs/watcher-service.md ask for: atomic replacement (temp file in
//! the same directory, fsync, rename, fsync of the directory), JSON that is reported by name
//! when it does not parse, safe creation of logs in world-writable directories, and locks.
//!
//! Nothing in the state root is opened through a symbolic link: reads, locks and markers
//! use `O_NOFOLLOW` (a planted `watcher.lock -> /etc/x` fails instead of making root create
//! `/etc/x`), new files are created with `O_EXCL`, and directories are checked to be real
//! directories owned by us and writable by no one else ([`check_private_dir`]).

use crate::error::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
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

/// Larger than any file the tools write; a bound so a stray huge file cannot eat memory.
pub const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;

/// Open `path` for reading without following a symbolic link or blocking on a FIFO, and
/// check it is a regular file. `Ok(None)` when it does not exist.
pub fn open_regular(path: &Path) -> Result<Option<(File, fs::Metadata)>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::file("refusing to follow a symbolic link", path));
        }
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io("cannot read", path, e))?;
    if !meta.is_file() {
        return Err(Error::file("refusing to read: not a regular file", path));
    }
    Ok(Some((file, meta)))
}

/// The bytes of `path` (see [`open_regular`]), with its metadata; `Ok(None)` when absent.
pub fn read_file(path: &Path) -> Result<Option<(Vec<u8>, fs::Metadata)>> {
    let Some((file, meta)) = open_regular(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.take(MAX_READ_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("cannot read", path, e))?;
    if bytes.len() as u64 > MAX_READ_BYTES {
        return Err(Error::file("refusing to read: larger than 16 MiB", path));
    }
    Ok(Some((bytes, meta)))
}

/// Read and parse a JSON file. `Ok(None)` when it does not exist; a file that does not parse
/// is an error naming the file, never silently replaced.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let Some((bytes, _)) = read_file(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::file(format!("does not parse as expected: {e}"), path))
}

/// Refuse (exit 1, naming the path) a directory we are about to trust that is a symbolic
/// link, not a directory, owned by someone else, or writable by group or others: whoever
/// can write there can forge what it holds (docs/watcher-service.md).
pub fn check_private_dir(dir: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(dir).map_err(|e| Error::io("cannot use", dir, e))?;
    check_private_meta(dir, &meta)
}

fn check_private_meta(dir: &Path, meta: &fs::Metadata) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::file(
            format!("refusing to use directory: {why}"),
            dir,
        ))
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return refuse("not a directory".into());
    }
    if meta.uid() != effective_uid() {
        return refuse(format!("owned by uid {}, not by us", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return refuse(format!("writable by group or others (mode {mode:04o})"));
    }
    Ok(())
}

/// Create `dir` (its parents as needed) or take the one that is there, check it is ours
/// ([`check_private_dir`]) and set it to `mode` — through the opened directory, so a link
/// swapped in meanwhile is never chmod'ed.
pub fn create_dir(dir: &Path, mode: u32) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Missing parents are made with the same mode (`subruns/` of `subruns/01-linux`
            // is as private as the sub-run's own directory); existing ones are left alone.
            if let Some(parent) = dir.parent().filter(|p| fs::symlink_metadata(p).is_err()) {
                create_dir(parent, mode)?;
            }
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("cannot create directory", dir, e)),
            }
        }
        Err(e) => return Err(Error::io("cannot create directory", dir, e)),
    }
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            // A symlink (ELOOP) or a file (ENOTDIR) where the directory should be: say so.
            Some(libc::ELOOP | libc::ENOTDIR) => match check_private_dir(dir) {
                Err(clear) => clear,
                Ok(()) => Error::io("cannot open directory", dir, e),
            },
            _ => Error::io("cannot open directory", dir, e),
        })?;
    let meta = handle
        .metadata()
        .map_err(|e| Error::io("cannot open directory", dir, e))?;
    // Group/world-writable is about to be fixed by the chmod; ownership is not.
    if meta.uid() != effective_uid() {
        return check_private_meta(dir, &meta);
    }
    handle
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("cannot set mode of", dir, e))
}

/// Open a fresh log at `path` in a possibly world-writable directory (docs/watcher-service.md): an existing
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
            fs::rename(path, &rotated).map_err(|e| {
                Error::io(
                    format!("cannot rotate log {} to", path.display()),
                    &rotated,
                    e,
                )
            })?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot inspect log", path, e)),
    }
    // Appending: a log an operator truncates to free space goes on at its new end, so the
    // bytes written and the bytes a reader can read still add up (no hole of zeros).
    OpenOptions::new()
        .append(true)
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
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => {
                    Error::file("refusing to open lock: it is a symbolic link", path)
                }
                _ => Error::io("cannot open lock", path, e),
            })?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("cannot open lock", path, e))?;
        if !meta.is_file() {
            return Err(Error::file(
                "refusing to open lock: not a regular file",
                path,
            ));
        }
        Ok(file)
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

    /// [`Lock::try_exclusive`], trying again for up to `patience` while someone else holds
    /// it (for locks that others only probe for an instant).
    pub fn try_exclusive_within(path: &Path, patience: std::time::Duration) -> Result<Lock> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match Lock::try_exclusive(path) {
                Err(Error::LockHeld { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                other => return other,
            }
        }
    }

    /// Take the lock shared, waiting while someone holds it exclusively; `on_wait` is
    /// called once, first, when it has to wait (to say so, or to refuse with an error).
    /// Shared holders do not exclude each other, only an exclusive one.
    pub fn shared_waiting(path: &Path, on_wait: impl FnOnce(&File) -> Result<()>) -> Result<Lock> {
        let file = Lock::open(path)?;
        match file.try_lock_shared() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait(&file)?;
                file.lock_shared()
                    .map_err(|e| Error::io("cannot lock", path, e))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("cannot lock", path, e)),
        }
        Ok(Lock { _file: file })
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
    fn locks_and_reads_never_follow_a_planted_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        let link = dir.path().join("watcher.lock");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = Lock::try_exclusive(&link).expect_err("symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!target.exists(), "the link's target was created");
        fs::write(&target, b"{}").expect("write");
        let err = read_json::<serde_json::Value>(&link).expect_err("symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn missing_parents_get_the_same_mode_and_existing_ones_are_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let deep = dir.path().join("subruns/01-linux");
        create_dir(&deep, 0o700).expect("create");
        for d in [&deep, &dir.path().join("subruns")] {
            let mode = fs::metadata(d).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        let top = fs::metadata(dir.path()).expect("meta").permissions().mode() & 0o777;
        assert_eq!(top, 0o755, "an existing parent keeps its mode");
    }

    #[test]
    fn private_dirs_are_ours_and_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("a/b");
        create_dir(&d, 0o700).expect("create with parents");
        check_private_dir(&d).expect("ours");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = check_private_dir(&d).expect_err("world-writable");
        assert!(err.to_string().contains("mode 0777"), "{err}");
        create_dir(&d, 0o700).expect("an existing dir of ours is fixed");
        check_private_dir(&d).expect("closed again");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&d, &link).expect("symlink");
        assert!(check_private_dir(&link).is_err());
        let err = create_dir(&link, 0o700).expect_err("never through a link");
        assert!(err.to_string().contains("it is a symbolic link"), "{err}");
        let file = dir.path().join("file");
        fs::write(&file, b"").expect("write");
        let err = create_dir(&file, 0o700).expect_err("a file");
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn a_log_that_cannot_be_rotated_is_refused_naming_where_it_would_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("b.log");
        fs::write(&log, b"previous run").expect("write");
        let rotated = with_suffix(&log, ".1");
        fs::create_dir(&rotated).expect("a directory where b.log.1 would go");
        fs::write(rotated.join("x"), b"").expect("non-empty");
        let err = create_fresh_log(&log).expect_err("cannot rotate");
        assert!(
            err.to_string().contains(&rotated.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read(&log).expect("untouched"), b"previous run");
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
