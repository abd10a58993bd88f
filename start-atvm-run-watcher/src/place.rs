//! Putting a new run's state directory in place without a moment where the build has none
//! (docs/atvm-run-status.md): a reader polling `atvm-run-status --build-name B` during a
//! start sees the old run or the new one, never "unknown build".
//!
//! The new directory is prepared beside the state root's listing, in
//! `<state-root>/.new-<build>-<pid>/<build>/` (dot names are no build), with its
//! `request.json`; then Linux `renameat2(RENAME_EXCHANGE)` swaps it with the old directory
//! in one step, and the old run — now in the prepared place — is archived from there as
//! before (the archive's naming and pruning are `StateDir::archive`'s). A file system
//! without the exchange gets the old order: archive, then rename into place.
//!
//! A start killed half way leaves its `.new-…` directory: the next start of the build (under
//! the same start lock) archives whatever run is in it, so nothing is lost or hidden.

use atvm_common::error::{Error, Result};
use atvm_common::state::Request;
use atvm_common::{BuildName, Paths, StateDir, failpoint, fsutil, logging};
use rustix::fs::{CWD, RenameFlags, renameat_with};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Write `request` into a new state directory for `build` and put it in place of the old
/// one, which is archived. Returns where the old one went, if there was one.
pub fn replace(paths: &Paths, build: &BuildName, request: &Request) -> Result<Option<PathBuf>> {
    sweep(paths, build)?;
    let sd = paths.state_dir(build);
    let staging = paths
        .state_root
        .join(format!(".new-{build}-{}", std::process::id()));
    fsutil::create_dir(&staging, 0o700)?;
    let prepared = StateDir::new(&staging, build);
    prepared.create()?;
    // 0600: it records command lines.
    fsutil::write_json(&prepared.request(), request, 0o600)?;
    let archived = match sd.exists() {
        true => swap_in(paths, &prepared, &sd)?,
        false => {
            fs::rename(prepared.path(), sd.path())
                .map_err(|e| Error::io("cannot put in place", sd.path(), e))?;
            None
        }
    };
    remove_staging(&staging);
    Ok(archived)
}

/// Exchange the prepared directory with the old one, then archive the old one from where
/// the prepared one was.
fn swap_in(paths: &Paths, prepared: &StateDir, sd: &StateDir) -> Result<Option<PathBuf>> {
    match exchange(prepared.path(), sd.path()) {
        Ok(()) => {
            failpoint::pause("start.swapped");
            prepared.archive(&paths.archive_root())
        }
        Err(e) if unsupported(&e) => {
            // No exchange on this file system: the old order, with its short gap.
            let archived = sd.archive(&paths.archive_root())?;
            fs::rename(prepared.path(), sd.path())
                .map_err(|e| Error::io("cannot put in place", sd.path(), e))?;
            Ok(archived)
        }
        Err(e) => Err(Error::io("cannot swap in the new state of", sd.path(), e)),
    }
}

fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(io::Error::from)
}

/// The kernel or the file system does not do `RENAME_EXCHANGE`.
fn unsupported(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP]
        .iter()
        .any(|n| e.raw_os_error() == Some(n.raw_os_error()))
}

/// Archive what killed starts of `build` left in `.new-<build>-*` (an old run swapped out
/// but not archived yet, or a new one never put in place), and remove those directories.
fn sweep(paths: &Paths, build: &BuildName) -> Result<()> {
    let prefix = format!(".new-{build}-");
    let Ok(entries) = fs::read_dir(&paths.state_root) else {
        return Ok(());
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix) else {
            continue;
        };
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let left = entry.path();
        fsutil::check_private_dir(&left)?;
        if let Some(to) = StateDir::new(&left, build).archive(&paths.archive_root())? {
            logging::info(format!(
                "archived what an interrupted start of {build} left in {} to {}",
                left.display(),
                to.display()
            ));
        }
        remove_staging(&left);
    }
    Ok(())
}

fn remove_staging(dir: &Path) {
    if let Err(e) = fs::remove_dir(dir) {
        logging::warn(format!(
            "cannot remove the empty staging directory: {e} ({})",
            dir.display()
        ));
    }
}
