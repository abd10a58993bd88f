//! `cargo xtask uninstall [--destdir D] [--prefix P]`: run the installer with `--uninstall`
//! (straight from `packaging/install.sh`: removing needs no payload). It removes what the
//! install's manifest lists (binaries, links, units and their enable links, completions, man
//! pages, examples, the manifest) and keeps the state root, the env file, an edited
//! inventory and `.replaced/`; without `--destdir` it reloads systemd.

use crate::layout::{self, DEFAULT_PREFIX, INSTALLER};
use crate::{Args, Result};
use std::path::PathBuf;

pub fn run(args: &Args) -> Result {
    let prefix = args
        .path("--prefix")
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PREFIX));
    let destdir = args.path("--destdir");
    let mut cmd = layout::installer(
        &layout::repo_root().join(INSTALLER),
        destdir.as_deref(),
        &prefix,
    );
    cmd.arg("--uninstall");
    layout::run_installer(cmd)
}
