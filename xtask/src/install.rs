//! `cargo xtask install [--destdir D] [--prefix P]` (SPEC §10).

use crate::layout::{self, DEFAULT_PREFIX, OperatorFiles, Tree};
use crate::{Args, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the old script-based install lived; moved aside (never deleted) by a real install.
pub const LEGACY_DIR: &str = "/root/atvm-watcher-service";

pub fn run(args: &Args) -> Result {
    let prefix = args
        .path("--prefix")
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PREFIX));
    if !prefix.is_absolute() {
        return Err(format!(
            "--prefix must be an absolute path, not {}",
            prefix.display()
        ));
    }
    let destdir = args.path("--destdir");
    let bins = layout::build_release()?;
    let tree = Tree {
        destdir: destdir.clone().unwrap_or_else(|| PathBuf::from("/")),
        prefix,
    };
    let report = layout::lay_out(&tree, &bins, OperatorFiles::CreateIfAbsent)?;
    for line in &report.lines {
        println!("install: {line}");
    }
    check_help(&tree.package_root())?;
    println!("install: every binary answers --help");
    if destdir.is_some() {
        println!("install: --destdir given: systemd and {LEGACY_DIR} left alone");
        return Ok(());
    }
    if let Some(to) = move_aside(Path::new(LEGACY_DIR))? {
        println!(
            "install: moved the old {LEGACY_DIR} aside to {} (nothing deleted)",
            to.display()
        );
    }
    let status = Command::new("systemctl")
        .arg("daemon-reload")
        .status()
        .map_err(|e| format!("cannot run systemctl daemon-reload: {e}"))?;
    if !status.success() {
        return Err("systemctl daemon-reload failed".to_string());
    }
    println!(
        "install: systemd reloaded; next: set MATTERMOST_ATVM_WEBHOOK in /etc/atvm-run-watcher.env and run {}/atvm-run-watcher --test-post",
        tree.prefix.display()
    );
    Ok(())
}

/// Run `<bin> --help` for every binary in `root`; all must exit 0.
pub fn check_help(root: &Path) -> Result {
    for name in layout::BINARIES {
        let bin = root.join(name);
        let out = Command::new(&bin)
            .arg("--help")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} --help failed: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// Rename `dir` to `<dir>.moved-<unix time>` if it exists. Nothing is ever deleted.
pub fn move_aside(dir: &Path) -> Result<Option<PathBuf>> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(None);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut target = PathBuf::from(format!("{}.moved-{stamp}", dir.display()));
    let mut n = 1;
    while fs::symlink_metadata(&target).is_ok() {
        target = PathBuf::from(format!("{}.moved-{stamp}-{n}", dir.display()));
        n += 1;
    }
    fs::rename(dir, &target).map_err(|e| format!("cannot move {} aside: {e}", dir.display()))?;
    Ok(Some(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legacy_directory_is_moved_aside_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("atvm-watcher-service");
        fs::create_dir(&legacy).unwrap();
        fs::write(legacy.join("start-atvm-run.sh"), "old script").unwrap();
        let to = move_aside(&legacy).unwrap().unwrap();
        assert!(!legacy.exists());
        assert_eq!(
            fs::read_to_string(to.join("start-atvm-run.sh")).unwrap(),
            "old script"
        );
        // A second leftover next to the first moved one gets its own name.
        fs::create_dir(&legacy).unwrap();
        let again = move_aside(&legacy).unwrap().unwrap();
        assert_ne!(again, to);
        assert!(to.exists() && again.exists());
        assert_eq!(move_aside(&legacy).unwrap(), None);
    }

    #[test]
    fn help_check_fails_for_a_broken_binary() {
        let dir = tempfile::tempdir().unwrap();
        let bins = crate::layout::tests::fake_bins(dir.path());
        check_help(&bins).unwrap();
        fs::write(bins.join("atvm-run-watcher"), "#!/bin/sh\nexit 1\n").unwrap();
        let err = check_help(&bins).unwrap_err();
        assert!(err.contains("atvm-run-watcher --help failed"), "{err}");
    }
}
