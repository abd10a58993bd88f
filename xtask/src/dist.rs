//! `cargo xtask dist`: one tarball of the install tree to unpack at `/` on a controller
//! without Rust, with a `.sha256` beside it. Operator-owned files (the env file, the
//! inventory) ship only as `*.example`, so unpacking can never overwrite them.

use crate::layout::{self, DEFAULT_PREFIX, OperatorFiles, Tree};
use crate::{Args, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn run(args: &Args) -> Result {
    let out = args
        .path("--out")
        .unwrap_or_else(|| layout::target_dir().join("dist"));
    let bins = layout::build_release()?;
    let stage = out.join("root");
    if stage.exists() {
        fs::remove_dir_all(&stage).map_err(|e| format!("cannot clear {}: {e}", stage.display()))?;
    }
    let tree = Tree {
        destdir: stage.clone(),
        prefix: PathBuf::from(DEFAULT_PREFIX),
    };
    layout::lay_out(&tree, &bins, OperatorFiles::ExamplesOnly)?;
    let name = format!(
        "atvm-watcher-service-{}-{}.tar.gz",
        workspace_version()?,
        std::env::consts::ARCH
    );
    let tarball = out.join(name);
    let sha = package(&stage, &tarball)?;
    println!("dist: {}", tarball.display());
    println!("dist: {}", sha.display());
    println!(
        "dist: on the controller: sha256sum -c {} && tar -xzf {} -C /   (see docs/install.md)",
        sha.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        tarball
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    Ok(())
}

/// The members of the tarball: the leaves of the tree only, so unpacking at `/` never
/// touches the modes of `/`, `/etc`, `/opt` or `/var`.
pub fn members() -> Vec<String> {
    let mut m = vec![DEFAULT_PREFIX.trim_start_matches('/').to_string()];
    for unit in units::ALL {
        m.push(format!("{}/{}", layout::UNIT_DIR, unit.name));
    }
    m.push(layout::STATE_ROOT.to_string());
    m
}

/// Tar `stage` (root-owned, sorted, fixed mtime: reproducible) into `tarball` and write
/// `<tarball>.sha256` in `sha256sum -c` format. Returns the checksum file.
pub fn package(stage: &Path, tarball: &Path) -> Result<PathBuf> {
    if let Some(dir) = tarball.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let status = Command::new("tar")
        .arg("--create")
        .arg("--gzip")
        .arg("--file")
        .arg(tarball)
        .arg("--directory")
        .arg(stage)
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{}", source_date_epoch()))
        .args(members())
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !status.success() {
        return Err(format!("tar failed for {}", tarball.display()));
    }
    let out = Command::new("sha256sum")
        .arg(tarball)
        .output()
        .map_err(|e| format!("cannot run sha256sum: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hash = text
        .split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .ok_or("sha256sum printed no hash")?;
    let name = tarball
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let sha = PathBuf::from(format!("{}.sha256", tarball.display()));
    fs::write(&sha, format!("{hash}  {name}\n"))
        .map_err(|e| format!("cannot write {}: {e}", sha.display()))?;
    Ok(sha)
}

/// `SOURCE_DATE_EPOCH`, else the last commit's time, else now.
fn source_date_epoch() -> u64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    let git = Command::new("git")
        .current_dir(layout::repo_root())
        .args(["log", "-1", "--format=%ct"])
        .output();
    if let Some(v) = git
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
    {
        return v;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `[workspace.package] version` from the root manifest.
fn workspace_version() -> Result<String> {
    let manifest = layout::repo_root().join("Cargo.toml");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tarball_holds_the_tree_as_root_with_the_spec_modes() {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("root");
        let tree = Tree {
            destdir: stage.clone(),
            prefix: PathBuf::from(DEFAULT_PREFIX),
        };
        layout::lay_out(
            &tree,
            &crate::layout::tests::fake_bins(dir.path()),
            OperatorFiles::ExamplesOnly,
        )
        .unwrap();
        let tarball = dir.path().join("out/x.tar.gz");
        let sha = package(&stage, &tarball).unwrap();
        let listing = Command::new("tar")
            .args(["-tvzf"])
            .arg(&tarball)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout).to_string();
        let line = |name: &str| {
            listing
                .lines()
                .find(|l| l.ends_with(name))
                .unwrap_or_else(|| panic!("{name} missing:\n{listing}"))
                .to_string()
        };
        assert!(
            line("opt/atvm-watcher-service/atvm-run-watcher").starts_with("-rwxr-xr-x 0/0"),
            "{listing}"
        );
        assert!(
            line("opt/atvm-watcher-service/atvm-run-watcher.sh -> atvm-run-watcher")
                .starts_with("lrwxrwxrwx 0/0")
        );
        assert!(line("etc/systemd/system/atvm-runner@.service").starts_with("-rw-r--r-- 0/0"));
        assert!(line("var/lib/atvm-run-watcher/").starts_with("drwx------ 0/0"));
        assert!(
            !listing.contains("atvm-run-watcher.env\n")
                && !listing
                    .lines()
                    .any(|l| l.ends_with("etc/atvm-run-watcher.env")),
            "the env file is never shipped: {listing}"
        );
        assert!(
            !listing
                .lines()
                .any(|l| l.ends_with(" ./") || l.ends_with(" opt/") || l.ends_with(" etc/")),
            "no parent directories: {listing}"
        );
        let check = Command::new("sha256sum")
            .arg("-c")
            .arg(sha.file_name().unwrap())
            .current_dir(tarball.parent().unwrap())
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
    }

    #[test]
    fn the_version_comes_from_the_workspace() {
        assert_eq!(workspace_version().unwrap().split('.').count(), 3);
    }
}
