//! `cargo xtask install [--destdir D] [--prefix P]` (docs/install.md): build release binaries, stage
//! the tree the dist tarball holds, and run its `install` script. The script
//! (`packaging/install.sh`) is the one install implementation, so this path and the
//! tarball's `./install` are literally the same code; what it checks, replaces, keeps and
//! lists is described there and in docs/install.md.

use crate::layout::{self, DEFAULT_PREFIX};
use crate::{Args, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn run(args: &Args) -> Result {
    let prefix = args
        .path("--prefix")
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PREFIX));
    let destdir = args.path("--destdir");
    let bins = layout::build_release()?;
    layout::run_installer(command(&bins, &staging_dir(), destdir.as_deref(), &prefix)?)
}

/// Where `cargo xtask install` stages the tree.
pub fn staging_dir() -> PathBuf {
    layout::target_dir().join("stage")
}

/// Stage the tree with the binaries in `bins` under `stage_parent` and return the command
/// that installs it.
pub fn command(
    bins: &Path,
    stage_parent: &Path,
    destdir: Option<&Path>,
    prefix: &Path,
) -> Result<Command> {
    let stage = layout::stage(stage_parent, bins)?;
    Ok(layout::installer(&stage.join("install"), destdir, prefix))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
