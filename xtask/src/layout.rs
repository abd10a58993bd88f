//! The install tree (docs/install.md), staged once for every install path. `cargo xtask dist` tars
//! the staged directory, `cargo xtask install` and `demo` run its `install` script (the one
//! install implementation, `packaging/install.sh`), and `cargo xtask uninstall` runs the same
//! script with `--uninstall`. Staging needs only a directory of built binaries, so the whole
//! install is tested without a release build.
//!
//! The staged directory, `atvm-watcher-service-<version>-<arch>/`:
//!
//! | path | what |
//! |---|---|
//! | `install` | the installer (`packaging/install.sh`), 0755 |
//! | `INSTALL.md`, `VERSION` | `docs/install.md` (its links pointed into `docs/`); the workspace version |
//! | `docs/` | every page `INSTALL.md` links to, and the pages those link to (links into the source tree become plain text) |
//! | `bin/<name>` | the binaries |
//! | `units/<unit>.in` | the unit templates of `units::ALL` (rendered for `--prefix` by `install`) |
//! | `share/…` | completions and man pages, as under `/usr/local/share` |
//! | `examples/` | `vm-inventory.md.example`, `atvm-run-watcher.env.example` |
//! | `SHA256SUMS` | every other file with its hash (`sha256sum -c` format): the payload the installer checks, and installs, before it changes anything |

use crate::Result;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEFAULT_PREFIX: &str = "/opt/atvm-watcher-service";
pub const ENV_FILE: &str = "etc/atvm-run-watcher.env";
pub const STATE_ROOT: &str = "var/lib/atvm-run-watcher";
pub const INVENTORY: &str = "vm-inventory.md";
pub const ENV_EXAMPLE: &str = "atvm-run-watcher.env.example";
pub const INVENTORY_EXAMPLE: &str = "vm-inventory.md.example";
/// The installer, relative to the repository root.
pub const INSTALLER: &str = "packaging/install.sh";

pub use atvm_common::BINARIES;

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

/// `cargo` as a developer's shell runs it. `cargo xtask` is `cargo run`, which hands xtask
/// its own package's variables (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, …); ring's build
/// script declares those as inputs (`rerun-if-env-changed`), so an inner build that
/// inherits them differs from a shell's `cargo build --release`, and each one that follows
/// the other rebuilds ring, rustls and everything above them (about three minutes here).
pub fn cargo() -> Command {
    let program = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if is_package_variable(&key) {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.current_dir(repo_root());
    cmd
}

/// The variables `cargo run` sets for the package it runs.
fn is_package_variable(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_MANIFEST_")
        || matches!(
            key,
            "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
        )
}

/// `cargo build --release` of the product binaries; returns the directory they are in.
pub fn build_release() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--bins"]);
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

/// Where an install puts things, for the tasks that look at an installed tree.
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
    pub fn env_file(&self) -> PathBuf {
        self.destdir.join(ENV_FILE)
    }
    pub fn state_root(&self) -> PathBuf {
        self.destdir.join(STATE_ROOT)
    }
}

/// `[workspace.package] version` from the root manifest.
pub fn workspace_version() -> Result<String> {
    let manifest = repo_root().join("Cargo.toml");
    let text = fs::read_to_string(&manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let mut in_section = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
        } else if let (true, Some(v)) = (in_section, line.strip_prefix("version = ")) {
            return Ok(v.trim_matches('"').to_string());
        }
    }
    Err("no [workspace.package] version in Cargo.toml".to_string())
}

/// `atvm-watcher-service-<version>-<arch>`: the staged directory and the tarball's name.
pub fn dist_name() -> Result<String> {
    Ok(format!(
        "atvm-watcher-service-{}-{}",
        workspace_version()?,
        std::env::consts::ARCH
    ))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result {
    fs::copy(from, to).map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
    set_mode(to, mode)
}

fn write(to: &Path, content: &[u8], mode: u32) -> Result {
    fs::write(to, content).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    set_mode(to, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result {
    fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Stage the tree in a fresh `<parent>/<dist_name>` with the binaries from `bins`; returns
/// the staged directory.
pub fn stage(parent: &Path, bins: &Path) -> Result<PathBuf> {
    let dir = parent.join(dist_name()?);
    if fs::symlink_metadata(&dir).is_ok() {
        fs::remove_dir_all(&dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    let root = repo_root();
    mkdir(&dir.join("bin"))?;
    copy(&root.join(INSTALLER), &dir.join("install"), 0o755)?;
    stage_docs(&root.join("docs"), &dir)?;
    write(
        &dir.join("VERSION"),
        format!("{}\n", workspace_version()?).as_bytes(),
        0o644,
    )?;
    for name in BINARIES {
        let from = bins.join(name);
        if !from.is_file() {
            return Err(format!("binary {name} is not built ({})", from.display()));
        }
        copy(&from, &dir.join("bin").join(name), 0o755)?;
    }
    mkdir(&dir.join("units"))?;
    for unit in units::ALL {
        let to = dir.join("units").join(format!("{}.in", unit.name));
        write(&to, unit.template().as_bytes(), 0o644)?;
    }
    crate::completions::generate(&dir.join("share"))?;
    mkdir(&dir.join("examples"))?;
    copy(
        &root.join("inventory/vm-inventory.md"),
        &dir.join("examples").join(INVENTORY_EXAMPLE),
        0o644,
    )?;
    copy(
        &root.join("packaging").join(ENV_EXAMPLE),
        &dir.join("examples").join(ENV_EXAMPLE),
        0o644,
    )?;
    write_checksums(&dir)?;
    Ok(dir)
}

/// The name of the payload list in the staged tree.
pub const CHECKSUMS: &str = "SHA256SUMS";

/// Write `<dir>/SHA256SUMS`: every file under `dir` but itself, sorted, in `sha256sum` format.
/// The installer installs what it lists and refuses a payload that does not match it (a file
/// missing from the unpacked tarball, or changed). Call it again after changing a staged tree.
pub fn write_checksums(dir: &Path) -> Result {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result {
        let entries =
            fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
                .path();
            if path.is_dir() {
                walk(base, &path, out)?;
            } else if let Ok(rel) = path.strip_prefix(base) {
                let rel = rel.to_string_lossy().to_string();
                if rel != CHECKSUMS {
                    out.push(rel);
                }
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let out = Command::new("sha256sum")
        .arg("--")
        .args(&files)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run sha256sum: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sha256sum failed in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    write(&dir.join(CHECKSUMS), &out.stdout, 0o644)
}

/// The pages of `docs` that ship: `install.md` and every page reachable from it by relative
/// links, in link order.
fn shipped_pages(docs: &Path) -> Result<Vec<String>> {
    let mut pages = vec!["install.md".to_string()];
    let mut i = 0;
    while i < pages.len() {
        let text = fs::read_to_string(docs.join(&pages[i]))
            .map_err(|e| format!("cannot read docs/{}: {e}", pages[i]))?;
        for link in links(&text) {
            let file = link.target.split('#').next().unwrap_or_default();
            if is_page(docs, file) && !pages.iter().any(|p| p == file) {
                pages.push(file.to_string());
            }
        }
        i += 1;
    }
    Ok(pages)
}

/// `file` is a page of `docs` itself (not a path into the rest of the repository).
fn is_page(docs: &Path, file: &str) -> bool {
    !file.is_empty()
        && !file.contains('/')
        && !file.contains("://")
        && file.ends_with(".md")
        && docs.join(file).is_file()
}

/// A Markdown link `[text](target)`: its byte range in the page, its text and its target.
pub struct Link<'a> {
    pub range: std::ops::Range<usize>,
    pub text: &'a str,
    pub target: &'a str,
}

/// The inline links of a Markdown page (`[text](target)`, text without brackets).
pub fn links(page: &str) -> Vec<Link<'_>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = page[from..].find('[').map(|i| from + i) {
        from = open + 1;
        let Some(close) = page[open..].find(']').map(|i| open + i) else {
            break;
        };
        let text = &page[open + 1..close];
        if text.contains('[') || !page[close..].starts_with("](") {
            continue;
        }
        let Some(end) = page[close + 2..].find(')').map(|i| close + 2 + i) else {
            break;
        };
        out.push(Link {
            range: open..end + 1,
            text,
            target: &page[close + 2..end],
        });
        from = end + 1;
    }
    out
}

/// `page` with each link's target changed by `f`: `Some(target)` keeps a link, `None` turns it
/// into its text, marked as a path of the source repository.
fn rewrite_links(page: &str, f: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut last = 0;
    for link in links(page) {
        out.push_str(&page[last..link.range.start]);
        match f(link.target) {
            Some(target) => out.push_str(&format!("[{}]({target})", link.text)),
            None => out.push_str(&format!("{} (in the source repository)", link.text)),
        }
        last = link.range.end;
    }
    out.push_str(&page[last..]);
    out
}

/// `INSTALL.md` at the top of `dir` and the pages it reaches in `dir/docs/`, with every link
/// resolving inside the tarball (docs/install.md's links lead to `docs/…` from the top).
fn stage_docs(docs: &Path, dir: &Path) -> Result {
    let pages = shipped_pages(docs)?;
    let local = |target: &str| -> Option<String> {
        let file = target.split('#').next().unwrap_or_default();
        if file.is_empty() || target.contains("://") || pages.iter().any(|p| p == file) {
            Some(target.to_string())
        } else {
            None
        }
    };
    mkdir(&dir.join("docs"))?;
    for page in &pages {
        let text = fs::read_to_string(docs.join(page))
            .map_err(|e| format!("cannot read docs/{page}: {e}"))?;
        write(
            &dir.join("docs").join(page),
            rewrite_links(&text, local).as_bytes(),
            0o644,
        )?;
    }
    let install = fs::read_to_string(docs.join("install.md"))
        .map_err(|e| format!("cannot read docs/install.md: {e}"))?;
    let top = rewrite_links(&install, |target| {
        let file = target.split('#').next().unwrap_or_default();
        match local(target) {
            Some(t) if !file.is_empty() && !t.contains("://") => Some(format!("docs/{t}")),
            other => other,
        }
    });
    write(&dir.join("INSTALL.md"), top.as_bytes(), 0o644)
}

/// The installer `script` for `destdir` (none: the controller itself) and `prefix`. The
/// script takes a staging root only from `--destdir`, and refuses to run when `DESTDIR` is set
/// without it: so a stray `DESTDIR` in the caller's shell never silently turns
/// `cargo xtask install` into a real install, nor a real one into a staging install.
pub fn installer(script: &Path, destdir: Option<&Path>, prefix: &Path) -> Command {
    let mut cmd = Command::new(script);
    cmd.arg("--prefix").arg(prefix);
    if let Some(d) = destdir {
        cmd.arg("--destdir").arg(d);
    }
    cmd
}

/// Run the installer with its output going to ours.
pub fn run_installer(mut cmd: Command) -> Result {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed ({status})",
            cmd.get_program().to_string_lossy()
        ))
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A directory of stand-in binaries: each answers anything (`--help` included) with its
    /// name.
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
    fn the_inner_cargo_does_not_inherit_xtask_s_package_variables() {
        // Run under `cargo test`, this process has them, as `cargo xtask` would.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let cmd = cargo();
        let removed: Vec<String> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for key in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
        ] {
            assert!(removed.iter().any(|r| r == key), "{key}: {removed:?}");
        }
        assert!(!is_package_variable("CARGO_HOME") && !is_package_variable("CARGO_TARGET_DIR"));
    }

    #[test]
    fn stages_the_payload_the_installer_reads() {
        let dir = tempfile::tempdir().unwrap();
        let stage = stage(dir.path(), &fake_bins(dir.path())).unwrap();
        assert_eq!(
            stage.file_name().unwrap().to_string_lossy(),
            dist_name().unwrap()
        );
        assert_eq!(mode(&stage.join("install")), 0o755);
        assert_eq!(
            fs::read(stage.join("install")).unwrap(),
            fs::read(repo_root().join(INSTALLER)).unwrap()
        );
        for name in BINARIES {
            assert_eq!(mode(&stage.join("bin").join(name)), 0o755, "{name}");
            assert!(stage.join(format!("share/man/man1/{name}.1")).is_file());
            assert!(
                stage
                    .join(format!("share/bash-completion/completions/{name}"))
                    .is_file()
            );
        }
        for unit in units::ALL {
            let text = fs::read_to_string(stage.join(format!("units/{}.in", unit.name))).unwrap();
            assert_eq!(text, unit.template());
        }
        assert!(stage.join("examples").join(ENV_EXAMPLE).is_file());
        assert!(stage.join("examples").join(INVENTORY_EXAMPLE).is_file());
        assert!(stage.join("INSTALL.md").is_file());
        // Staging again starts from scratch.
        fs::write(stage.join("stray"), "x").unwrap();
        let again = super::stage(dir.path(), &fake_bins(dir.path())).unwrap();
        assert!(!again.join("stray").exists());
    }

    #[test]
    fn a_missing_binary_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = stage(dir.path(), &dir.path().join("nothing")).unwrap_err();
        assert!(err.contains("start-atvm-run is not built"), "{err}");
    }

    #[test]
    fn the_version_comes_from_the_workspace() {
        assert_eq!(workspace_version().unwrap().split('.').count(), 3);
    }
}
