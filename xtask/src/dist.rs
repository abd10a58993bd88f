//! `cargo xtask dist [--out DIR]`: one tarball of the staged tree (see layout.rs) for a
//! controller without Rust, with a `.sha256` beside it. It unpacks into one directory,
//! `atvm-watcher-service-<version>-<arch>/`, whose executable `install` (the same script
//! `cargo xtask install` runs) puts the tree in place. Operator-owned files (the env file,
//! the inventory) ship only as examples, so nothing in the tarball can overwrite them.

use crate::layout;
use crate::{Args, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn run(args: &Args) -> Result {
    let out = args
        .path("--out")
        .unwrap_or_else(|| layout::target_dir().join("dist"));
    let bins = layout::build_release()?;
    let (tarball, sha) = build(&bins, &out)?;
    let file = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    println!("dist: {}", tarball.display());
    println!("dist: {}", sha.display());
    println!(
        "dist: on the controller, as root: sha256sum -c {} && tar -xzf {} && cd {} && ./install   (see docs/install.md)",
        file(&sha),
        file(&tarball),
        layout::dist_name()?
    );
    Ok(())
}

/// Stage the tree with the binaries in `bins` under `out` and tar it there. Returns the
/// tarball and its checksum file.
pub fn build(bins: &Path, out: &Path) -> Result<(PathBuf, PathBuf)> {
    let stage = layout::stage(out, bins)?;
    let name = layout::dist_name()?;
    let tarball = out.join(format!("{name}.tar.gz"));
    let sha = package(&stage, &tarball)?;
    Ok((tarball, sha))
}

/// Tar the directory `stage` (root-owned, sorted, fixed mtime: reproducible) into `tarball`
/// and write `<tarball>.sha256` in `sha256sum -c` format. Returns the checksum file.
pub fn package(stage: &Path, tarball: &Path) -> Result<PathBuf> {
    let (Some(parent), Some(top)) = (stage.parent(), stage.file_name()) else {
        return Err(format!("cannot package {}", stage.display()));
    };
    if let Some(dir) = tarball.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let status = Command::new("tar")
        .arg("--create")
        .arg("--gzip")
        .arg("--file")
        .arg(tarball)
        .arg("--directory")
        .arg(parent)
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{}", source_date_epoch()))
        .arg(top)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tarball_unpacks_into_one_directory_with_an_executable_install() {
        let dir = tempfile::tempdir().unwrap();
        let bins = crate::layout::tests::fake_bins(dir.path());
        let (tarball, sha) = build(&bins, &dir.path().join("out")).unwrap();
        let name = layout::dist_name().unwrap();
        assert_eq!(
            tarball.file_name().unwrap().to_string_lossy(),
            format!("{name}.tar.gz")
        );
        let listing = Command::new("tar")
            .args(["-tvzf"])
            .arg(&tarball)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout).to_string();
        let line = |path: &str| {
            listing
                .lines()
                .find(|l| l.ends_with(&format!(" {name}/{path}")))
                .unwrap_or_else(|| panic!("{path} missing:\n{listing}"))
                .to_string()
        };
        assert!(line("install").starts_with("-rwxr-xr-x 0/0"), "{listing}");
        assert!(line("bin/atvm-run-watcher").starts_with("-rwxr-xr-x 0/0"));
        assert!(line("units/atvm-runner@.service.in").starts_with("-rw-r--r-- 0/0"));
        assert!(line("share/man/man1/start-atvm-run.1").starts_with("-rw-r--r-- 0/0"));
        line("examples/atvm-run-watcher.env.example");
        for l in listing.lines() {
            let path = l.split_whitespace().last().unwrap();
            assert!(
                path.starts_with(&format!("{name}/")),
                "outside {name}/: {l}"
            );
        }
        assert!(
            !listing
                .lines()
                .any(|l| l.ends_with("/atvm-run-watcher.env")),
            "the env file is never shipped: {listing}"
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
}
