//! The installer (`packaging/install.sh`) over a fixture of the old script install, through
//! both install paths — the staged tree as `cargo xtask install` runs it, and the dist
//! tarball unpacked and its `./install` run — and the failures that must leave the old
//! install working: a check that fails (nothing written), a full disk while staging (staged
//! files removed), a rename that fails (renamed files put back). Everything happens in temp
//! destdirs; the failure tests mount over parts of the destdir inside a private mount
//! namespace (`unshare --mount`) and skip, saying why, where that is not possible.

use crate::layout::{self, BINARIES, DEFAULT_PREFIX, INSTALLER};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use testkit::Expect;

pub const ROOT: &str = "opt/atvm-watcher-service";
pub const UNITS: &str = "etc/systemd/system";
const ENV: &str = "etc/atvm-run-watcher.env";
const ENV_TEXT: &str = "MATTERMOST_ATVM_WEBHOOK=https://chat.example.com/hooks/old-secret\n\
                        MATTERMOST_ATVM_CHANNEL=qa-e2e-results\n";
const INVENTORY_TEXT: &str =
    "| VM | OS | IP |\n|---|---|---|\n| rh96-01 | redhat9.6 | 10.0.0.5 |\n";
/// The old install's shell scripts (the watcher was `atvm_run_watcher.py`).
pub const OLD_SCRIPTS: [&str; 6] = [
    "start-atvm-run",
    "start-atvm-run-watcher",
    "start-atvm-runner",
    "run-atvm-runner",
    "cancel-atvm-runner",
    "cancel-atvm-run-watcher",
];

pub fn old_script(name: &str) -> String {
    format!("#!/bin/bash\n# {name}.sh of the old script install\necho old {name}\n")
}

pub fn old_unit(name: &str) -> String {
    format!(
        "# old {name} of the script install\n[Service]\nExecStart=/opt/atvm-watcher-service/old %i\n"
    )
}

fn write(path: &Path, text: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The controller as the old script install left it, under `dest`.
pub fn old_install(dest: &Path) {
    let root = dest.join(ROOT);
    for name in OLD_SCRIPTS {
        write(&root.join(format!("{name}.sh")), &old_script(name), 0o755);
    }
    write(
        &root.join("atvm_run_watcher.py"),
        "#!/usr/bin/env python3\n# the old watcher\n",
        0o755,
    );
    // The old install kept copies of its unit files in the package root too.
    write(
        &root.join("atvm-run-watcher@.service"),
        &old_unit("atvm-run-watcher@.service"),
        0o644,
    );
    write(&root.join("vm-inventory.md"), INVENTORY_TEXT, 0o644);
    write(&root.join("notes.txt"), "the operator's own notes\n", 0o644);
    for unit in ["atvm-runner@.service", "atvm-run-watcher@.service"] {
        write(&dest.join(UNITS).join(unit), &old_unit(unit), 0o644);
    }
    write(&dest.join(ENV), ENV_TEXT, 0o600);
    write(
        &dest.join("var/lib/atvm-run-watcher/b1/state.json"),
        "{\"state\": \"COMPLETED\"}\n",
        0o600,
    );
}

/// Everything under `dir`: path → kind, mode and content (or link target).
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("link -> {}", fs::read_link(&p).unwrap().display()),
                );
            } else if m.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                walk(base, &p, out);
            } else {
                let text = String::from_utf8_lossy(&fs::read(&p).unwrap()).to_string();
                out.insert(rel, format!("file {mode:o} {text}"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

pub fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn succeeded(out: Output) -> String {
    out.succeeds();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The xtask path: stage the tree from stand-in binaries, run its installer.
fn xtask_install(dir: &Path, dest: &Path) -> Output {
    let bins = layout::tests::fake_bins(dir);
    crate::install::command(
        &bins,
        &dir.join("stage"),
        Some(dest),
        Path::new(DEFAULT_PREFIX),
    )
    .unwrap()
    .output()
    .unwrap()
}

/// `cargo xtask uninstall`: the repository's installer with `--uninstall`.
fn xtask_uninstall(dest: &Path) -> Output {
    let mut cmd = layout::installer(
        &layout::repo_root().join(INSTALLER),
        Some(dest),
        Path::new(DEFAULT_PREFIX),
    );
    cmd.arg("--uninstall").output().unwrap()
}

/// The dist path: build the tarball from stand-in binaries, unpack it, return the unpacked
/// directory (which holds `install`).
pub fn unpacked_tarball(dir: &Path) -> PathBuf {
    let bins = layout::tests::fake_bins(dir);
    let (tarball, _) = crate::dist::build(&bins, &dir.join("out")).unwrap();
    let unpack = dir.join("unpacked");
    fs::create_dir_all(&unpack).unwrap();
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .current_dir(&unpack)
        .output()
        .unwrap();
    out.succeeds();
    unpack.join(layout::dist_name().unwrap())
}

fn tarball_install(unpacked: &Path, args: &[&str]) -> Output {
    Command::new("./install")
        .args(args)
        .current_dir(unpacked)
        .env_remove("DESTDIR")
        .output()
        .unwrap()
}

/// The single `<dir>/<UTC timestamp>` directory.
pub fn only_stamp(dir: &Path) -> PathBuf {
    let stamps: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(stamps.len(), 1, "{stamps:?}");
    let name = stamps[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.len() == 16 && name.ends_with('Z') && name.as_bytes()[8] == b'T',
        "{name}"
    );
    stamps[0].clone()
}

/// What installing over `old_install` must leave; returns the two `.replaced` directories.
pub fn check_migrated(dest: &Path, stdout: &str) -> (PathBuf, PathBuf) {
    let root = dest.join(ROOT);
    for name in BINARIES {
        let bin = root.join(name);
        assert_eq!(mode(&bin), 0o755, "{name}");
        assert_eq!(
            fs::read_to_string(&bin).unwrap(),
            format!("#!/bin/sh\necho {name}\n")
        );
        assert_eq!(
            fs::read_link(root.join(format!("{name}.sh"))).unwrap(),
            PathBuf::from(name),
            "{name}.sh"
        );
    }
    let kept = only_stamp(&root.join(".replaced"));
    for name in OLD_SCRIPTS {
        let copy = kept.join(format!("{name}.sh"));
        assert_eq!(fs::read_to_string(&copy).unwrap(), old_script(name));
        assert_eq!(mode(&copy), 0o755);
        assert!(
            stdout.contains(&format!(
                "{}/{name}.sh -> {}",
                root.display(),
                copy.display()
            )),
            "{name}.sh is not listed:\n{stdout}"
        );
    }
    assert!(!root.join("atvm_run_watcher.py").exists());
    assert!(
        fs::read_to_string(kept.join("atvm_run_watcher.py"))
            .unwrap()
            .contains("the old watcher")
    );
    assert!(stdout.contains("atvm_run_watcher.py (retired)"), "{stdout}");
    assert!(!root.join("atvm-run-watcher@.service").exists());
    assert_eq!(
        fs::read_to_string(kept.join("atvm-run-watcher@.service")).unwrap(),
        old_unit("atvm-run-watcher@.service")
    );

    let kept_units = only_stamp(&dest.join("etc/systemd/system.replaced"));
    assert_eq!(kept_units.file_name(), kept.file_name());
    for unit in units::ALL {
        let p = dest.join(UNITS).join(unit.name);
        assert_eq!(mode(&p), 0o644);
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            unit.render(Path::new(DEFAULT_PREFIX))
        );
        // The old install had the two templates; the boot-time unit is new.
        if !unit.is_template() {
            assert!(!kept_units.join(unit.name).exists());
            continue;
        }
        assert_eq!(
            fs::read_to_string(kept_units.join(unit.name)).unwrap(),
            old_unit(unit.name)
        );
        assert!(stdout.contains(&format!("{} ->", p.display())), "{stdout}");
    }

    assert_eq!(
        fs::read_to_string(root.join("vm-inventory.md")).unwrap(),
        INVENTORY_TEXT
    );
    assert_eq!(fs::read_to_string(dest.join(ENV)).unwrap(), ENV_TEXT);
    assert_eq!(mode(&dest.join(ENV)), 0o600);
    assert!(
        stdout.contains("atvm-run-watcher.env (never overwritten)"),
        "{stdout}"
    );
    assert_eq!(
        fs::read_to_string(root.join("notes.txt")).unwrap(),
        "the operator's own notes\n"
    );
    assert_eq!(mode(&dest.join("var/lib/atvm-run-watcher")), 0o700);
    assert!(dest.join("var/lib/atvm-run-watcher/b1/state.json").exists());
    for (name, _) in crate::completions::COMMANDS {
        for p in [
            format!("usr/local/share/bash-completion/completions/{name}"),
            format!("usr/local/share/zsh/site-functions/_{name}"),
            format!("usr/local/share/fish/vendor_completions.d/{name}.fish"),
            format!("usr/local/share/man/man1/{name}.1"),
        ] {
            assert_eq!(mode(&dest.join(&p)), 0o644, "{p}");
        }
    }
    // The manifest checks the install, from the destdir as from / on a controller.
    let check = Command::new("sha256sum")
        .args(["-c", "--quiet"])
        .arg(root.join(".install-manifest"))
        .current_dir(dest)
        .output()
        .unwrap();
    check.succeeds();
    // No temp file or backup is left behind.
    let leftovers: Vec<_> = snapshot(dest)
        .into_keys()
        .filter(|p| p.ends_with(".atvm-new") || p.ends_with(".atvm-old"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    (kept, kept_units)
}

/// After an uninstall: what install added is gone, the operator's things are not.
fn check_uninstalled(dest: &Path) {
    let root = dest.join(ROOT);
    for name in BINARIES {
        assert!(!root.join(name).exists(), "{name}");
        assert!(fs::symlink_metadata(root.join(format!("{name}.sh"))).is_err());
    }
    for unit in units::ALL {
        assert!(!dest.join(UNITS).join(unit.name).exists());
    }
    assert!(!root.join(".install-manifest").exists());
    assert!(!root.join("vm-inventory.md.example").exists());
    let man = dest.join("usr/local/share/man/man1");
    assert_eq!(fs::read_dir(&man).unwrap().count(), 0, "{}", man.display());
    assert_eq!(
        fs::read_to_string(root.join("vm-inventory.md")).unwrap(),
        INVENTORY_TEXT
    );
    assert_eq!(fs::read_to_string(dest.join(ENV)).unwrap(), ENV_TEXT);
    assert!(dest.join("var/lib/atvm-run-watcher/b1/state.json").exists());
    only_stamp(&root.join(".replaced"));
    only_stamp(&dest.join("etc/systemd/system.replaced"));
}

#[test]
fn xtask_install_replaces_the_old_scripts_and_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    old_install(&dest);
    let stdout = succeeded(xtask_install(dir.path(), &dest));
    check_migrated(&dest, &stdout);

    // Our own files are replaced without copies: a second install moves nothing.
    let before = snapshot(&dest);
    let again = succeeded(xtask_install(dir.path(), &dest));
    assert!(again.contains("nothing moved aside"), "{again}");
    check_migrated(&dest, &stdout);
    assert_eq!(
        before,
        snapshot(&dest),
        "a second install changed something"
    );

    let out = succeeded(xtask_uninstall(&dest));
    assert!(
        out.contains("vm-inventory.md (edited by the operator)"),
        "{out}"
    );
    check_uninstalled(&dest);
}

#[test]
fn the_tarball_install_replaces_the_old_scripts_and_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    old_install(&dest);
    let unpacked = unpacked_tarball(dir.path());
    let dest_arg = dest.to_str().unwrap();
    let stdout = succeeded(tarball_install(&unpacked, &["--destdir", dest_arg]));
    check_migrated(&dest, &stdout);
    let again = succeeded(tarball_install(&unpacked, &["--destdir", dest_arg]));
    assert!(again.contains("nothing moved aside"), "{again}");
    succeeded(tarball_install(
        &unpacked,
        &["--uninstall", "--destdir", dest_arg],
    ));
    check_uninstalled(&dest);
}

#[test]
fn a_fresh_install_creates_the_operator_files_from_the_examples() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let stdout = succeeded(xtask_install(dir.path(), &dest));
    assert!(stdout.contains("nothing moved aside"), "{stdout}");
    let root = dest.join(ROOT);
    assert_eq!(
        fs::read(root.join("vm-inventory.md")).unwrap(),
        fs::read(layout::repo_root().join("inventory/vm-inventory.md")).unwrap()
    );
    assert_eq!(mode(&root.join("vm-inventory.md")), 0o644);
    assert_eq!(mode(&dest.join(ENV)), 0o600);
    assert!(
        fs::read_to_string(dest.join(ENV))
            .unwrap()
            .contains("MATTERMOST_ATVM_WEBHOOK=")
    );
    assert!(!root.join(".replaced").exists());
    // An unedited inventory goes with the uninstall; the env file and state stay.
    succeeded(xtask_uninstall(&dest));
    assert!(!root.exists());
    assert!(dest.join(ENV).exists());
    assert!(dest.join("var/lib/atvm-run-watcher").is_dir());
}

#[test]
fn an_installed_file_the_operator_edited_is_kept_on_the_next_install() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    succeeded(xtask_install(dir.path(), &dest));
    let unit = dest.join(UNITS).join("atvm-runner@.service");
    fs::write(&unit, "# edited in place by the operator\n").unwrap();
    let stdout = succeeded(xtask_install(dir.path(), &dest));
    let kept = only_stamp(&dest.join("etc/systemd/system.replaced"));
    assert_eq!(
        fs::read_to_string(kept.join("atvm-runner@.service")).unwrap(),
        "# edited in place by the operator\n"
    );
    assert!(
        stdout.contains(&format!("{} ->", unit.display())),
        "{stdout}"
    );
    assert_eq!(
        fs::read_to_string(&unit).unwrap(),
        units::RUNNER.render(Path::new(DEFAULT_PREFIX))
    );
}

#[test]
fn units_are_rendered_for_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let bins = layout::tests::fake_bins(dir.path());
    let out = crate::install::command(
        &bins,
        &dir.path().join("stage"),
        Some(&dest),
        Path::new("/srv/atvm/"),
    )
    .unwrap()
    .output()
    .unwrap();
    succeeded(out);
    for unit in units::ALL {
        assert_eq!(
            fs::read_to_string(dest.join(UNITS).join(unit.name)).unwrap(),
            unit.render(Path::new("/srv/atvm"))
        );
    }
    assert!(dest.join("srv/atvm/start-atvm-run").is_file());
    let manifest = fs::read_to_string(dest.join("srv/atvm/.install-manifest")).unwrap();
    assert!(
        manifest.contains("  srv/atvm/start-atvm-run\n"),
        "{manifest}"
    );
    assert!(!dest.join(ROOT).exists());
}

#[test]
fn units_that_ask_to_be_enabled_get_the_link_systemctl_enable_makes() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let stage = layout::stage(dir.path(), &layout::tests::fake_bins(dir.path())).unwrap();
    // A boot-time unit like the one docs/watcher-service.md asks for, and a template that cannot be enabled
    // without an instance.
    fs::write(
        stage.join("units/atvm-test-resume.service.in"),
        "[Service]\nExecStart=@PACKAGE_ROOT@/atvm-run-watcher --help\n[Install]\nWantedBy=multi-user.target timers.target\n",
    )
    .unwrap();
    fs::write(
        stage.join("units/atvm-test@.service.in"),
        "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let install = |extra: &[&str]| {
        let mut cmd = layout::installer(
            &stage.join("install"),
            Some(&dest),
            Path::new(DEFAULT_PREFIX),
        );
        cmd.args(extra).output().unwrap()
    };
    let stdout = succeeded(install(&[]));
    assert!(
        stdout.contains("not enabling the template atvm-test@.service"),
        "{stdout}"
    );
    for target in ["multi-user.target", "timers.target"] {
        let link = dest
            .join(UNITS)
            .join(format!("{target}.wants/atvm-test-resume.service"));
        assert_eq!(
            fs::read_link(&link).unwrap(),
            PathBuf::from("/etc/systemd/system/atvm-test-resume.service")
        );
    }
    assert!(
        !dest
            .join(UNITS)
            .join("multi-user.target.wants/atvm-test@.service")
            .exists()
    );
    assert!(
        fs::read_to_string(dest.join(UNITS).join("atvm-test-resume.service"))
            .unwrap()
            .contains("ExecStart=/opt/atvm-watcher-service/atvm-run-watcher --help")
    );
    // Installing again finds its own links; uninstalling removes them.
    let again = succeeded(install(&[]));
    assert!(again.contains("nothing moved aside"), "{again}");
    succeeded(install(&["--uninstall"]));
    assert!(!dest.join(UNITS).join("multi-user.target.wants").exists());
    assert!(!dest.join(UNITS).join("atvm-test-resume.service").exists());
}

#[test]
fn everything_in_the_way_is_reported_at_once_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    old_install(&dest);
    let root = dest.join(ROOT);
    fs::create_dir_all(root.join("start-atvm-run")).unwrap();
    fs::remove_file(root.join("cancel-atvm-runner.sh")).unwrap();
    fs::create_dir_all(root.join("cancel-atvm-runner.sh")).unwrap();
    fs::write(root.join(".atvm-run-watcher.atvm-old"), "left by a crash").unwrap();
    let before = snapshot(&dest);
    let out = xtask_install(dir.path(), &dest);
    out.code_is(1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing was written"), "{err}");
    assert!(
        err.contains("start-atvm-run is in the way: a directory"),
        "{err}"
    );
    assert!(err.contains("cancel-atvm-runner.sh is in the way"), "{err}");
    assert!(err.contains("interrupted install"), "{err}");
    assert_eq!(before, snapshot(&dest));
}

#[test]
fn bad_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let script = layout::repo_root().join(INSTALLER);
    for args in [
        vec!["--prefix", "relative/path"],
        vec!["--prefix", "/opt/with space"],
        vec!["--destdir"],
        vec!["--frobnicate"],
    ] {
        let out = Command::new(&script)
            .arg("--destdir")
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    let help = Command::new(&script).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--destdir DIR"));
}

/// Why a test that mounts inside a private mount namespace cannot run here, if it cannot.
fn cannot_unshare() -> Option<String> {
    if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        return Some("not root".into());
    }
    match Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "unshare --mount fails here: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("no unshare: {e}")),
    }
}

/// Run the staged installer for `dest` after `setup` (sh, with `$T` = `target`) inside a
/// private mount namespace, so the mounts vanish with it.
fn install_after_mount(stage: &Path, dest: &Path, setup: &str, target: &Path) -> Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("set -e; {setup}; exec \"$0\" \"$@\""))
        .arg(stage.join("install"))
        .arg("--destdir")
        .arg(dest)
        .env("T", target)
        .env_remove("DESTDIR")
        .output()
        .unwrap()
}

/// The old install is still whole: the fixture's files, unchanged.
fn check_old_install_intact(dest: &Path, before: &BTreeMap<String, String>) {
    assert_eq!(before, &snapshot(dest), "the old install was changed");
    for name in OLD_SCRIPTS {
        assert_eq!(
            fs::read_to_string(dest.join(ROOT).join(format!("{name}.sh"))).unwrap(),
            old_script(name)
        );
    }
}

#[test]
fn an_unwritable_unit_directory_stops_the_install_before_any_write() {
    if let Some(why) = cannot_unshare() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    old_install(&dest);
    let stage = layout::stage(dir.path(), &layout::tests::fake_bins(dir.path())).unwrap();
    let before = snapshot(&dest);
    let units = dest.join(UNITS);
    let out = install_after_mount(
        &stage,
        &dest,
        "mount --bind \"$T\" \"$T\"; mount -o remount,bind,ro \"$T\"",
        &units,
    );
    out.code_is(1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot write in {}", units.display())),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    check_old_install_intact(&dest, &before);
}

#[test]
fn a_full_disk_while_staging_leaves_everything_as_it_was() {
    if let Some(why) = cannot_unshare() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    old_install(&dest);
    let share = dest.join("usr/local/share");
    fs::create_dir_all(&share).unwrap();
    let stage = layout::stage(dir.path(), &layout::tests::fake_bins(dir.path())).unwrap();
    let before = snapshot(&dest);
    // Completions and man pages are staged after the package root and the units: by then
    // temps, backups and .replaced/ copies exist, and all of them must go again.
    let out = install_after_mount(
        &stage,
        &dest,
        "mount -t tmpfs -o size=8k tmpfs \"$T\"",
        &share,
    );
    out.code_is(1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing was changed"), "{err}");
    check_old_install_intact(&dest, &before);
}

#[test]
fn a_failed_rename_puts_the_old_install_back() {
    if let Some(why) = cannot_unshare() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    old_install(&dest);
    let stage = layout::stage(dir.path(), &layout::tests::fake_bins(dir.path())).unwrap();
    let before = snapshot(&dest);
    // A file mounted over the runner unit: every check and the staging pass, but renaming
    // onto a mount point fails (EBUSY) — after the binaries, the .sh links and the watcher
    // unit are already in place.
    let cover = dir.path().join("cover");
    fs::write(&cover, "mounted over the unit\n").unwrap();
    let unit = dest.join(UNITS).join("atvm-runner@.service");
    let out = install_after_mount(
        &stage,
        &dest,
        &format!("mount --bind '{}' \"$T\"", cover.display()),
        &unit,
    );
    out.code_is(1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot put {} in place", unit.display())),
        "{err}"
    );
    assert!(err.contains("the previous install was put back"), "{err}");
    check_old_install_intact(&dest, &before);
}

#[test]
fn the_installer_passes_shellcheck() {
    let script = layout::repo_root().join(INSTALLER);
    match Command::new("shellcheck")
        .arg("-s")
        .arg("sh")
        .arg(&script)
        .output()
    {
        Ok(out) => assert!(out.status.success(), "{}", text(&out)),
        Err(e) => eprintln!("skipped: no shellcheck ({e})"),
    }
}
