//! `atvm-run-watcher --resume-all`: the boot-time unit's job (docs/watcher-service.md). After a reboot the
//! watchers of runs that were not final are gone with everything else; this starts the
//! watcher unit of every run that is not final or still owes a post, without archiving
//! anything, so each ends in its true state (usually TERMINATED: its runner died with the
//! machine) and owed posts go out.

use atvm_common::error::{Error, Result};
use atvm_common::systemctl::{Systemctl, UnitKind};
use atvm_common::{BuildName, Paths, fsutil, logging};
use std::fs;
use std::io;

/// Start the watcher of every run that needs one; exit 1 if any could not be started.
pub fn resume_all(paths: &Paths, systemctl: &Systemctl) -> Result<()> {
    let root = &paths.state_root;
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            logging::info(format!(
                "no state root yet; nothing to resume ({})",
                root.display()
            ));
            return Ok(());
        }
        _ => fsutil::check_private_dir(root)?,
    }
    let entries = fs::read_dir(root).map_err(|e| Error::io("cannot list", root, e))?;
    let mut failed = Vec::new();
    for name in entries.filter_map(|e| e.ok()).map(|e| e.file_name()) {
        let name = name.to_string_lossy();
        // `.archive`, `.locks`: not runs.
        if name.starts_with('.') {
            continue;
        }
        let Ok(build) = BuildName::parse(&name) else {
            logging::warn(format!(
                "not a build, skipped ({})",
                root.join(&*name).display()
            ));
            continue;
        };
        if let Err(e) = resume(paths, systemctl, &build) {
            logging::error(&e);
            failed.push(build.to_string());
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(Error::failed(format!(
            "could not resume the watcher of {}",
            failed.join(", ")
        ))),
    }
}

/// Start `build`'s watcher if its run needs one and it is not running already.
fn resume(paths: &Paths, systemctl: &Systemctl, build: &BuildName) -> Result<()> {
    let sd = paths.state_dir(build);
    sd.check()?;
    if sd.read_request()?.is_none() {
        return Ok(());
    }
    let why = match sd.read_state()? {
        None => "no state yet",
        Some(s) if !s.is_final => "not final",
        Some(s) if s.owes_a_post() => "a post is still owed",
        Some(_) => return Ok(()),
    };
    let unit = UnitKind::Watcher.unit(build);
    if systemctl.is_active(&unit)?.is_running() {
        return Ok(());
    }
    // After a reboot the unit may be marked failed from before: that must not stop it.
    let _ = systemctl.reset_failed(&unit);
    systemctl.start(&unit)?;
    logging::info(format!("resumed {unit} ({why})"));
    Ok(())
}
