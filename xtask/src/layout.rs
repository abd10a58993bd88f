//! The install tree (SPEC §10), shared by install, dist, uninstall and demo: which files go
//! where with which mode. Laying it out needs only a directory of built binaries, so it is
//! tested without a release build.

use crate::Result;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEFAULT_PREFIX: &str = "/opt/atvm-watcher-service";
pub const ENV_FILE: &str = "etc/atvm-run-watcher.env";
pub const UNIT_DIR: &str = "etc/systemd/system";
pub const STATE_ROOT: &str = "var/lib/atvm-run-watcher";
pub const INVENTORY: &str = "vm-inventory.md";
pub const ENV_EXAMPLE: &str = "atvm-run-watcher.env.example";
pub const INVENTORY_EXAMPLE: &str = "vm-inventory.md.example";

pub use testkit::BINARIES;

/// The repository root (xtask lives in `<root>/xtask`).
pub fn repo_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// `cargo build --release` of the product binaries; returns the directory they are in.
pub fn build_release() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .args(["build", "--release", "--bins"]);
    // Package name = binary name = folder name.
    for pkg in BINARIES {
        cmd.args(["-p", pkg]);
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build --release failed".to_string());
    }
    Ok(target_dir().join("release"))
}

/// `path` inside `destdir` (`/opt/x` under `/tmp/d` is `/tmp/d/opt/x`).
pub fn under(destdir: &Path, path: &Path) -> PathBuf {
    destdir.join(path.strip_prefix("/").unwrap_or(path))
}

#[derive(Debug, Clone)]
pub struct Tree {
    /// Where the tree is rooted (`/` for a real install).
    pub destdir: PathBuf,
    /// The package root as the controller sees it (`/opt/atvm-watcher-service`).
    pub prefix: PathBuf,
}

impl Tree {
    pub fn package_root(&self) -> PathBuf {
        under(&self.destdir, &self.prefix)
    }
    pub fn unit_dir(&self) -> PathBuf {
        self.destdir.join(UNIT_DIR)
    }
    pub fn env_file(&self) -> PathBuf {
        self.destdir.join(ENV_FILE)
    }
    pub fn state_root(&self) -> PathBuf {
        self.destdir.join(STATE_ROOT)
    }
}

/// What a layout did, for the operator.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
}

impl Report {
    fn note(&mut self, line: String) {
        self.lines.push(line);
    }
}

fn io_err(what: &str, path: &Path) -> impl Fn(io::Error) -> String {
    let msg = format!("{what} ({})", path.display());
    move |e| format!("{msg}: {e}")
}

fn set_mode(path: &Path, mode: u32) -> Result {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("cannot set mode", path))
}

/// root:root where we can (installing as root); a staging tree built as a user keeps the
/// user's ownership (the dist tarball records root anyway).
fn own_by_root(path: &Path) {
    let _ = std::os::unix::fs::lchown(path, Some(0), Some(0));
}

/// Copy `from` to `to` atomically (temp + rename), so a running binary is replaced, not
/// rewritten in place.
fn install_file(from: &Path, to: &Path, mode: u32) -> Result {
    let tmp = to.with_extension("xtask-tmp");
    fs::copy(from, &tmp).map_err(io_err("cannot copy", from))?;
    set_mode(&tmp, mode)?;
    own_by_root(&tmp);
    fs::rename(&tmp, to).map_err(io_err("cannot install", to))
}

fn write_file(to: &Path, content: &str, mode: u32) -> Result {
    let tmp = to.with_extension("xtask-tmp");
    fs::write(&tmp, content).map_err(io_err("cannot write", &tmp))?;
    set_mode(&tmp, mode)?;
    own_by_root(&tmp);
    fs::rename(&tmp, to).map_err(io_err("cannot install", to))
}

fn mkdir(path: &Path, mode: Option<u32>) -> Result {
    fs::create_dir_all(path).map_err(io_err("cannot create directory", path))?;
    if let Some(mode) = mode {
        set_mode(path, mode)?;
    }
    Ok(())
}

/// Options for operator-owned files: a real install creates them when absent; the dist
/// tarball ships only their examples, so unpacking it can never overwrite them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorFiles {
    CreateIfAbsent,
    ExamplesOnly,
}

/// Lay out the tree with binaries taken from `bins`.
pub fn lay_out(tree: &Tree, bins: &Path, operator_files: OperatorFiles) -> Result<Report> {
    let mut report = Report::default();
    let root = tree.package_root();
    mkdir(&root, Some(0o755))?;
    for name in BINARIES {
        let from = bins.join(name);
        if !from.is_file() {
            return Err(format!("binary {name} is not built ({})", from.display()));
        }
        install_file(&from, &root.join(name), 0o755)?;
        // `<name>.sh` for callers of the old scripts.
        let link = root.join(format!("{name}.sh"));
        match fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => {
                fs::remove_file(&link).map_err(io_err("cannot replace", &link))?
            }
            Ok(_) => {
                return Err(format!(
                    "{} exists and is not a symlink; move it away first",
                    link.display()
                ));
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(name, &link).map_err(io_err("cannot link", &link))?;
        own_by_root(&link);
    }
    report.note(format!(
        "binaries (0755) and .sh links in {}",
        root.display()
    ));

    let inventory_src = repo_root().join("inventory/vm-inventory.md");
    let inventory_text =
        fs::read_to_string(&inventory_src).map_err(io_err("cannot read", &inventory_src))?;
    let env_src = repo_root().join("packaging").join(ENV_EXAMPLE);
    let env_text = fs::read_to_string(&env_src).map_err(io_err("cannot read", &env_src))?;
    write_file(&root.join(INVENTORY_EXAMPLE), &inventory_text, 0o644)?;
    write_file(&root.join(ENV_EXAMPLE), &env_text, 0o644)?;

    let units = tree.unit_dir();
    mkdir(&units, None)?;
    for unit in units::ALL {
        write_file(&units.join(unit.name), &unit.render(&tree.prefix), 0o644)?;
    }
    report.note(format!("units (0644) in {}", units.display()));

    let state = tree.state_root();
    mkdir(&state, Some(0o700))?;
    own_by_root(&state);
    report.note(format!("state root (0700) {}", state.display()));

    if operator_files == OperatorFiles::CreateIfAbsent {
        let inventory = root.join(INVENTORY);
        if inventory.exists() {
            report.note(format!("kept the existing {}", inventory.display()));
        } else {
            write_file(&inventory, &inventory_text, 0o644)?;
            report.note(format!(
                "example inventory written to {}: list the controller's VMs there",
                inventory.display()
            ));
        }
        let env_file = tree.env_file();
        if env_file.exists() {
            report.note(format!(
                "kept the existing {} (never overwritten)",
                env_file.display()
            ));
        } else {
            mkdir(env_file.parent().unwrap_or(Path::new("/")), None)?;
            write_file(&env_file, &env_text, 0o600)?;
            report.note(format!(
                "created {} (0600): set MATTERMOST_ATVM_WEBHOOK in it",
                env_file.display()
            ));
        }
    }
    Ok(report)
}

/// Paths (relative to the destdir) of everything `lay_out` creates that uninstall removes.
pub fn owned_paths(tree: &Tree) -> Vec<PathBuf> {
    let root = tree.package_root();
    let mut v = Vec::new();
    for name in BINARIES {
        v.push(root.join(name));
        v.push(root.join(format!("{name}.sh")));
    }
    v.push(root.join(INVENTORY_EXAMPLE));
    v.push(root.join(ENV_EXAMPLE));
    for unit in units::ALL {
        v.push(tree.unit_dir().join(unit.name));
    }
    v
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The default tree under `<dir>/dest`.
    pub fn staged(dir: &Path) -> Tree {
        Tree {
            destdir: dir.join("dest"),
            prefix: PathBuf::from(DEFAULT_PREFIX),
        }
    }

    /// A directory of stand-in binaries.
    pub fn fake_bins(dir: &Path) -> PathBuf {
        let bins = dir.join("bins");
        fs::create_dir_all(&bins).unwrap();
        for name in BINARIES {
            fs::write(bins.join(name), format!("#!/bin/sh\necho {name}\n")).unwrap();
            set_mode(&bins.join(name), 0o755).unwrap();
        }
        bins
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn lays_out_the_tree_with_the_spec_modes() {
        let dir = tempfile::tempdir().unwrap();
        let tree = staged(dir.path());
        let bins = fake_bins(dir.path());
        lay_out(&tree, &bins, OperatorFiles::CreateIfAbsent).unwrap();
        let root = dir.path().join("dest/opt/atvm-watcher-service");
        for name in BINARIES {
            assert_eq!(mode(&root.join(name)), 0o755, "{name}");
            assert_eq!(
                fs::read_link(root.join(format!("{name}.sh"))).unwrap(),
                PathBuf::from(name)
            );
        }
        for unit in ["atvm-runner@.service", "atvm-run-watcher@.service"] {
            let p = dir.path().join("dest/etc/systemd/system").join(unit);
            assert_eq!(mode(&p), 0o644);
            assert!(
                fs::read_to_string(&p)
                    .unwrap()
                    .contains("ExecStart=/opt/atvm-watcher-service/")
            );
        }
        assert_eq!(
            mode(&dir.path().join("dest/etc/atvm-run-watcher.env")),
            0o600
        );
        assert_eq!(
            mode(&dir.path().join("dest/var/lib/atvm-run-watcher")),
            0o700
        );
        assert_eq!(mode(&root.join("vm-inventory.md")), 0o644);
    }

    #[test]
    fn env_file_and_inventory_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let tree = staged(dir.path());
        let bins = fake_bins(dir.path());
        lay_out(&tree, &bins, OperatorFiles::CreateIfAbsent).unwrap();
        let env = tree.env_file();
        let inv = tree.package_root().join(INVENTORY);
        fs::write(&env, "MATTERMOST_ATVM_WEBHOOK=https://chat/hooks/x\n").unwrap();
        fs::write(&inv, "| VM | OS |\n|---|---|\n| mine | fc |\n").unwrap();
        let report = lay_out(&tree, &bins, OperatorFiles::CreateIfAbsent).unwrap();
        assert_eq!(
            fs::read_to_string(&env).unwrap(),
            "MATTERMOST_ATVM_WEBHOOK=https://chat/hooks/x\n"
        );
        assert!(fs::read_to_string(&inv).unwrap().contains("mine"));
        assert!(report.lines.iter().any(|l| l.contains("never overwritten")));
    }

    #[test]
    fn examples_only_leaves_operator_files_out() {
        let dir = tempfile::tempdir().unwrap();
        let tree = staged(dir.path());
        lay_out(&tree, &fake_bins(dir.path()), OperatorFiles::ExamplesOnly).unwrap();
        assert!(!tree.env_file().exists());
        assert!(!tree.package_root().join(INVENTORY).exists());
        assert!(tree.package_root().join(INVENTORY_EXAMPLE).exists());
        assert!(tree.package_root().join(ENV_EXAMPLE).exists());
    }

    #[test]
    fn a_missing_binary_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let tree = staged(dir.path());
        let err = lay_out(
            &tree,
            &dir.path().join("nothing"),
            OperatorFiles::CreateIfAbsent,
        )
        .unwrap_err();
        assert!(err.contains("start-atvm-run is not built"), "{err}");
    }
}
