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

/// Drop-ins the old install's operators made: `(path under the unit directory, content,
/// whether the install retires it)`. One runs the old watcher instead of the binary
/// (`ExecStart=`), one runs an old `.sh` for one build, one only adds an environment
/// variable (kept, with a warning).
pub const OLD_DROPINS: [(&str, &str, bool); 3] = [
    (
        "atvm-run-watcher@.service.d/override.conf",
        "[Service]\nExecStart=\nExecStart=/usr/bin/python3 /opt/atvm-watcher-service/atvm_run_watcher.py --build-name %i\n",
        true,
    ),
    (
        "atvm-run-watcher@nightly.service.d/10-prestart.conf",
        "[Service]\nExecStartPre=/opt/atvm-watcher-service/start-atvm-runner.sh --build-name nightly\n",
        true,
    ),
    (
        "atvm-runner@.service.d/proxy.conf",
        "[Service]\nEnvironment=HTTPS_PROXY=http://proxy.example:3128\n",
        false,
    ),
];

/// The controller as the old script install left it, under `dest`.
pub fn old_install(dest: &Path) {
    for (path, text, _) in OLD_DROPINS {
        write(&dest.join(UNITS).join(path), text, 0o644);
    }
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
    // Old unit files may carry Environment=MATTERMOST_ATVM_WEBHOOK=…: the copies are root's.
    assert_eq!(mode(&kept), 0o700, "{}", kept.display());
    assert_eq!(mode(&kept_units), 0o700, "{}", kept_units.display());
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

    // Drop-ins that would run the old scripts are moved aside with them; the others stay.
    for (path, text, retired) in OLD_DROPINS {
        let live = dest.join(UNITS).join(path);
        let kept = kept_units.join(path);
        if retired {
            assert!(!live.exists(), "{path} left in place");
            assert_eq!(fs::read_to_string(&kept).unwrap(), text);
            let listed = format!("{} -> {} (retired)", live.display(), kept.display());
            assert!(stdout.contains(&listed), "{listed} not in:\n{stdout}");
        } else {
            assert_eq!(fs::read_to_string(&live).unwrap(), text);
            assert!(!kept.exists());
        }
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
    // No temp file, backup or journal is left behind.
    let leftovers: Vec<_> = snapshot(dest)
        .into_keys()
        .filter(|p| {
            p.ends_with(".atvm-new") || p.ends_with(".atvm-old") || p.contains(".install-journal")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    (kept, kept_units)
}

/// The drop-in that stays is named in a warning to review it.
fn check_dropin_warning(dest: &Path, out: &Output) {
    let kept = dest.join(UNITS).join("atvm-runner@.service.d/proxy.conf");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = format!(
        "install: warning: kept the drop-in {}: it changes the new unit; review it",
        kept.display()
    );
    assert!(
        stderr.contains(&warning),
        "{warning} not in:\n{}",
        text(out)
    );
    assert_eq!(stderr.matches("kept the drop-in").count(), 1, "{stderr}");
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
    let out = xtask_install(dir.path(), &dest);
    check_dropin_warning(&dest, &out);
    let stdout = succeeded(out);
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
    let out = tarball_install(&unpacked, &["--destdir", dest_arg]);
    check_dropin_warning(&dest, &out);
    let stdout = succeeded(out);
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
    layout::write_checksums(&stage).unwrap();
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
    assert!(err.contains("nothing was changed"), "{err}");
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
    // Three units and the resume unit's enable link all go there: one line says so.
    let line = format!("cannot write in {}\n", units.display());
    assert_eq!(err.matches(&line).count(), 1, "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
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

// ---------------------------------------------------------------------------------------
// Interruptions, concurrent runs, a full disk, a damaged payload: the old install is whole
// again, or the new one complete, never a mix that stays.
// ---------------------------------------------------------------------------------------

/// A staged tree (what `cargo xtask install` runs) built from stand-in binaries.
fn staged(dir: &Path) -> PathBuf {
    layout::stage(dir, &layout::tests::fake_bins(dir)).unwrap()
}

/// The staged installer for `dest`, with `args`.
fn installer_at(stage: &Path, dest: &Path, args: &[&str]) -> Command {
    let mut cmd = layout::installer(
        &stage.join("install"),
        Some(dest),
        Path::new(DEFAULT_PREFIX),
    );
    cmd.args(args);
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// An installer stopped at one of its test pause points (`ATVM_INSTALL_TEST_PAUSE`): it has
/// written `<pause>/reached` and waits for `<pause>/go`.
struct Paused {
    child: std::process::Child,
    pause: PathBuf,
}

impl Paused {
    fn start(mut cmd: Command, point: &str, scratch: &Path) -> Paused {
        let pause = scratch.join(format!("pause-{}", point.replace(':', "-")));
        if pause.exists() {
            fs::remove_dir_all(&pause).unwrap();
        }
        fs::create_dir_all(&pause).unwrap();
        let mut child = cmd
            .env("ATVM_INSTALL_TEST_PAUSE", point)
            .env("ATVM_INSTALL_TEST_PAUSE_DIR", &pause)
            .stdout(fs::File::create(pause.join("stdout")).unwrap())
            .stderr(fs::File::create(pause.join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !pause.join("reached").exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the installer never reached {point}: {status}\n{}{}",
                    fs::read_to_string(pause.join("stdout")).unwrap(),
                    fs::read_to_string(pause.join("stderr")).unwrap()
                );
            }
            assert!(std::time::Instant::now() < deadline, "{point}: timed out");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Paused { child, pause }
    }

    /// SIGKILL: nothing of the installer runs any more, no trap, no cleanup.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM (trapped), then its output once it has exited.
    fn terminate(self) -> Output {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.finish()
    }

    /// Let it go on; its output once it has exited.
    fn resume(self) -> Output {
        fs::write(self.pause.join("go"), "").unwrap();
        self.finish()
    }

    fn finish(mut self) -> Output {
        let status = self.child.wait().unwrap();
        Output {
            status,
            stdout: fs::read(self.pause.join("stdout")).unwrap(),
            stderr: fs::read(self.pause.join("stderr")).unwrap(),
        }
    }
}

/// `snapshot`, with each `.replaced` timestamp directory named `<stamp>`: two installs at
/// different times compare equal when they left the same files.
fn snapshot_unstamped(dir: &Path) -> BTreeMap<String, String> {
    snapshot(dir)
        .into_iter()
        .map(|(path, what)| {
            let path = path
                .split('/')
                .map(|c| {
                    let b = c.as_bytes();
                    if c.len() >= 16
                        && b[8] == b'T'
                        && b[15] == b'Z'
                        && c[..8].bytes().all(|x| x.is_ascii_digit())
                    {
                        "<stamp>"
                    } else {
                        c
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            (path, what)
        })
        .collect()
}

fn journal(dest: &Path) -> PathBuf {
    dest.join(ROOT).join(".install-journal")
}

/// What a clean, uninterrupted install over the old install leaves (stamps unnamed).
fn reference_install(dir: &Path, stage: &Path) -> BTreeMap<String, String> {
    let dest = dir.join("reference");
    old_install(&dest);
    succeeded(run(installer_at(stage, &dest, &[])));
    snapshot_unstamped(&dest)
}

/// Kill the installer at `point` over a fresh old install; `./install --recover` must then
/// leave the old install exactly (`finished` false) or the complete new one (true), and a
/// following `./install` the complete new install with one `.replaced` stamp.
fn killed_at(
    dir: &Path,
    stage: &Path,
    reference: &BTreeMap<String, String>,
    point: &str,
    finished: bool,
) {
    let dest = dir.join(format!("dest-{}", point.replace(':', "-")));
    old_install(&dest);
    let before = snapshot(&dest);
    Paused::start(installer_at(stage, &dest, &[]), point, dir).kill();
    // The kill left work behind (a journal at least): this is what recovery is for.
    assert!(
        journal(&dest).is_dir(),
        "{point}: no journal after the kill"
    );
    assert_ne!(before, snapshot(&dest), "{point}");

    let recovered = run(installer_at(stage, &dest, &["--recover"]));
    recovered
        .succeeds()
        .said("an earlier install here was interrupted");
    if finished {
        recovered.said("it had put every file in place");
        assert_eq!(
            reference,
            &snapshot_unstamped(&dest),
            "{point}: not the complete install"
        );
    } else {
        assert_eq!(
            before,
            snapshot(&dest),
            "{point}: not the old install as it was"
        );
    }
    let again = run(installer_at(stage, &dest, &[]));
    again.succeeds().never_said("interrupted");
    let said = stdout(&recovered) + &stdout(&again);
    check_migrated(&dest, &said);
    assert_eq!(reference, &snapshot_unstamped(&dest), "{point}");
}

#[test]
fn a_kill_before_the_commit_is_rolled_back_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    let reference = reference_install(dir.path(), &stage);
    for point in ["checked", "stage:3", "stage:40", "staged"] {
        killed_at(dir.path(), &stage, &reference, point, false);
    }
}

#[test]
fn a_kill_during_the_commit_is_rolled_back_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    let reference = reference_install(dir.path(), &stage);
    // The first rename; the binaries and .sh links in place but not the units (the old
    // runner unit would run the new run-atvm-runner.sh); everything but the manifest.
    for point in ["commit:1", "commit:16", "commit:56"] {
        killed_at(dir.path(), &stage, &reference, point, false);
    }
}

#[test]
fn a_kill_after_the_commit_is_finished_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    let reference = reference_install(dir.path(), &stage);
    for point in ["committed", "cleanup:5"] {
        killed_at(dir.path(), &stage, &reference, point, true);
    }
}

#[test]
fn after_a_kill_a_plain_install_gives_the_complete_install() {
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    let reference = reference_install(dir.path(), &stage);
    for point in ["commit:16", "committed"] {
        let dest = dir.path().join(format!("dest-{}", point.replace(':', "-")));
        old_install(&dest);
        Paused::start(installer_at(&stage, &dest, &[]), point, dir.path()).kill();
        // The mix a kill in the commit leaves: new .sh links over old units.
        if point == "commit:16" {
            assert!(fs::read_link(dest.join(ROOT).join("run-atvm-runner.sh")).is_ok());
            assert_eq!(
                fs::read_to_string(dest.join(UNITS).join("atvm-runner@.service")).unwrap(),
                old_unit("atvm-runner@.service")
            );
        }
        let out = run(installer_at(&stage, &dest, &[]));
        out.succeeds()
            .said("an earlier install here was interrupted");
        check_migrated(&dest, &stdout(&out));
        assert_eq!(reference, snapshot_unstamped(&dest), "{point}");
        // §6's rollback finds the whole old install in the one .replaced stamp.
        let kept = only_stamp(&dest.join(ROOT).join(".replaced"));
        for name in OLD_SCRIPTS {
            assert_eq!(
                fs::read_to_string(kept.join(format!("{name}.sh"))).unwrap(),
                old_script(name)
            );
        }
    }
}

#[test]
fn a_recovery_that_is_killed_is_finished_by_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    let dest = dir.path().join("dest");
    old_install(&dest);
    let before = snapshot(&dest);
    Paused::start(installer_at(&stage, &dest, &[]), "commit:30", dir.path()).kill();
    for point in ["recover:10", "recover:40"] {
        Paused::start(
            installer_at(&stage, &dest, &["--recover"]),
            point,
            dir.path(),
        )
        .kill();
        assert!(journal(&dest).is_dir());
    }
    run(installer_at(&stage, &dest, &["--recover"]))
        .succeeds()
        .said("put the previous install back");
    assert_eq!(before, snapshot(&dest));
    run(installer_at(&stage, &dest, &["--recover"]))
        .succeeds()
        .said("nothing to recover");
}

#[test]
fn a_terminated_install_puts_the_old_install_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    let dest = dir.path().join("dest");
    old_install(&dest);
    let before = snapshot(&dest);
    let out = Paused::start(installer_at(&stage, &dest, &[]), "commit:16", dir.path()).terminate();
    out.code_is(1)
        .said("interrupted; the previous install was put back; nothing was changed");
    assert_eq!(before, snapshot(&dest));
}

#[test]
fn a_second_run_meanwhile_refuses_at_once_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    let dest = dir.path().join("dest");
    old_install(&dest);
    let first = Paused::start(installer_at(&stage, &dest, &[]), "staged", dir.path());
    let during = snapshot(&dest);
    for args in [&[][..], &["--uninstall"], &["--recover"]] {
        let out = run(installer_at(&stage, &dest, args));
        out.code_is(4)
            .said("another ./install (or --uninstall, --recover) is running")
            .never_said("put back");
        assert_eq!(during, snapshot(&dest), "{args:?} changed something");
    }
    let out = first.resume();
    check_migrated(&dest, &succeeded(out));
}

/// Run `script` (sh, with `$W` = `work`) in a private mount namespace.
fn in_namespace(script: &str, work: &Path) -> Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("W", work)
        .env_remove("DESTDIR")
        .output()
        .unwrap()
}

/// What one installer run of a disk-filling script left under `work` for case `name`
/// (`rc-`, `out-`, `err-<name>` and a copy of the destination in `res-<name>`).
struct FilledRun {
    rc: String,
    out: String,
    err: String,
    res: PathBuf,
    /// Everything it said, for failure messages.
    said: String,
}

impl FilledRun {
    fn read(work: &Path, name: &str) -> Option<FilledRun> {
        let rc = fs::read_to_string(work.join(format!("rc-{name}"))).ok()?;
        let out = fs::read_to_string(work.join(format!("out-{name}"))).unwrap();
        let err = fs::read_to_string(work.join(format!("err-{name}"))).unwrap();
        let said = format!("case {name}: rc {rc}{out}{err}");
        Some(FilledRun {
            rc: rc.trim().to_string(),
            out,
            err,
            res: work.join(format!("res-{name}")),
            said,
        })
    }

    /// The complete new install, as a migration leaves it (paths said of the destination
    /// `work/d` are those of the copy).
    fn assert_complete(&self, work: &Path) {
        let d = work.join("d").display().to_string();
        check_migrated(
            &self.res,
            &self.out.replace(&d, &self.res.display().to_string()),
        );
    }

    /// The old install exactly as it was, and said so.
    fn assert_rolled_back(&self, old: &BTreeMap<String, String>) {
        assert!(self.err.contains("nothing was changed"), "{}", self.said);
        assert!(!self.err.contains("could not"), "{}", self.said);
        assert_eq!(*old, snapshot(&self.res), "{}", self.said);
    }
}

#[test]
fn a_full_disk_anywhere_leaves_the_old_install_or_the_complete_new_one() {
    if let Some(why) = cannot_unshare() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let stage = staged(work);
    old_install(&work.join("old"));
    let old = snapshot(&work.join("old"));
    // The destination is a tmpfs with room for N inodes (each file, directory, temp and
    // symlink takes one); TMPDIR is a full one, which the installer must not need.
    let sizes: Vec<u32> = (30..=160).step_by(7).collect();
    let list: Vec<String> = sizes.iter().map(u32::to_string).collect();
    let script = format!(
        r#"set -u
mkdir -p "$W/full" "$W/d"
mount -t tmpfs -o size=4k,nr_inodes=3 tmpfs "$W/full" && : >"$W/full/x" || exit 90
for n in {sizes}; do
    mount -t tmpfs -o size=8m,nr_inodes=$n tmpfs "$W/d" || exit 91
    if cp -a "$W/old/." "$W/d/" 2>/dev/null; then
        TMPDIR="$W/full" '{install}' --destdir "$W/d" >"$W/out-$n" 2>"$W/err-$n"
        echo $? >"$W/rc-$n"
        mkdir "$W/res-$n" && cp -a "$W/d/." "$W/res-$n/"
    fi
    umount "$W/d"
done"#,
        sizes = list.join(" "),
        install = stage.join("install").display()
    );
    in_namespace(&script, work).succeeds();
    let (mut complete, mut rolled_back) = (0, 0);
    for n in &list {
        let Some(run) = FilledRun::read(work, n) else {
            continue; // the old install itself did not fit
        };
        match run.rc.as_str() {
            "0" => {
                run.assert_complete(work);
                complete += 1;
            }
            "1" => {
                run.assert_rolled_back(&old);
                rolled_back += 1;
            }
            _ => panic!("{n} inodes: {}", run.said),
        }
    }
    assert!(
        complete > 0 && rolled_back > 2,
        "{complete} complete, {rolled_back} rolled back"
    );
}

#[test]
fn a_disk_that_fills_up_at_any_step_leaves_the_old_install_or_the_complete_new_one() {
    if let Some(why) = cannot_unshare() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let stage = staged(work);
    old_install(&work.join("old"));
    let old = snapshot(&work.join("old"));
    // Stopped at each point, the destination (a tmpfs) is filled to the last page; the next
    // write fails: the journal's plan, a temp, a journal record of a new directory (the first
    // kept copy's, after stage:5), the phase.
    let points = [
        "checked",
        "stage:1",
        "stage:5",
        "stage:30",
        "staged",
        "commit:40",
        "committed",
    ];
    let script = format!(
        r#"set -u
mkdir -p "$W/d"
for point in {points}; do
    mount -t tmpfs -o size=2m tmpfs "$W/d" && cp -a "$W/old/." "$W/d/" || exit 91
    p="$W/p-$point"
    mkdir -p "$p"
    ATVM_INSTALL_TEST_PAUSE=$point ATVM_INSTALL_TEST_PAUSE_DIR=$p \
        '{install}' --destdir "$W/d" >"$W/out-$point" 2>"$W/err-$point" &
    pid=$!
    while [ ! -e "$p/reached" ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done
    dd if=/dev/zero of="$W/d/.fill" bs=4k 2>/dev/null
    : >"$p/go"
    wait $pid
    echo $? >"$W/rc-$point"
    rm -f "$W/d/.fill"
    mkdir "$W/res-$point" && cp -a "$W/d/." "$W/res-$point/"
    umount "$W/d"
done"#,
        points = points.join(" "),
        install = stage.join("install").display()
    );
    in_namespace(&script, work).succeeds();
    for point in points {
        let run = FilledRun::read(work, point).unwrap();
        if point == "committed" {
            // Every file was in place: what is left (removing backups) needs no space.
            assert_eq!(run.rc, "0", "full at {point}: {}", run.said);
            run.assert_complete(work);
        } else {
            assert_eq!(run.rc, "1", "full at {point}: {}", run.said);
            run.assert_rolled_back(&old);
        }
    }
}

#[test]
fn an_incomplete_or_changed_payload_is_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let unpacked = unpacked_tarball(dir.path());
    let cases: [(&str, &str); 4] = [
        ("bin/atvm-run-watcher", "is missing (SHA256SUMS lists it)"),
        (
            "units/atvm-runner@.service.in",
            "is missing (SHA256SUMS lists it)",
        ),
        (
            "share/man/man1/start-atvm-run.1",
            "is not the file SHA256SUMS lists",
        ),
        ("SHA256SUMS", "SHA256SUMS is missing"),
    ];
    for (i, (file, why)) in cases.iter().enumerate() {
        let copy = dir.path().join(format!("payload-{i}"));
        Command::new("cp")
            .arg("-a")
            .arg(&unpacked)
            .arg(&copy)
            .status()
            .unwrap();
        if why.contains("not the file") {
            let mut text = fs::read(copy.join(file)).unwrap();
            text.extend_from_slice(b"changed\n");
            fs::write(copy.join(file), text).unwrap();
        } else {
            fs::remove_file(copy.join(file)).unwrap();
        }
        let dest = dir.path().join(format!("dest-{i}"));
        old_install(&dest);
        let before = snapshot(&dest);
        let out = tarball_install(&copy, &["--destdir", dest.to_str().unwrap()]);
        out.code_is(1).said("nothing was changed");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{}", copy.join(file).display())) && err.contains(why),
            "{err}"
        );
        assert_eq!(before, snapshot(&dest), "{file}");
    }
}

#[test]
fn a_package_root_mounted_noexec_is_found_before_any_write() {
    if let Some(why) = cannot_unshare() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    old_install(&dest);
    let stage = staged(dir.path());
    let before = snapshot(&dest);
    let root = dest.join(ROOT);
    let out = install_after_mount(
        &stage,
        &dest,
        "mount --bind \"$T\" \"$T\"; mount -o remount,bind,noexec \"$T\"",
        &root,
    );
    out.code_is(1)
        .said(&format!("programs cannot run from {}", root.display()))
        .said("noexec")
        .said("nothing was changed");
    check_old_install_intact(&dest, &before);
}

#[test]
fn a_kept_copies_directory_that_is_a_link_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    for link in [
        format!("{ROOT}/.replaced"),
        "etc/systemd/system.replaced".to_string(),
    ] {
        let dest = dir.path().join("dest");
        if dest.exists() {
            fs::remove_dir_all(&dest).unwrap();
        }
        old_install(&dest);
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join(&link)).unwrap();
        let before = snapshot(&dest);
        let out = run(installer_at(&stage, &dest, &[]));
        out.code_is(1)
            .said(&format!(
                "{} is a symbolic link",
                dest.join(&link).display()
            ))
            .said("nothing was changed");
        assert_eq!(before, snapshot(&dest));
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "{link}");
    }
}

#[test]
fn an_env_file_others_can_read_is_kept_with_a_warning_saying_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    let dest = dir.path().join("dest");
    old_install(&dest);
    let env = dest.join(ENV);
    fs::set_permissions(&env, fs::Permissions::from_mode(0o644)).unwrap();
    let as_root = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) == 0;
    if as_root {
        Command::new("chown")
            .arg("1234:1234")
            .arg(&env)
            .status()
            .unwrap();
    }
    let out = run(installer_at(&stage, &dest, &[]));
    out.succeeds()
        .said(&format!("kept {} (never overwritten)", env.display()))
        .said(&format!("chmod 0600 {}", env.display()));
    if as_root {
        out.said(&format!("chown root:root {}", env.display()));
        assert_eq!(fs::metadata(&env).unwrap().uid(), 1234);
    }
    assert_eq!(mode(&env), 0o644);
    assert_eq!(fs::read_to_string(&env).unwrap(), ENV_TEXT);
    // A private one says nothing.
    fs::set_permissions(&env, fs::Permissions::from_mode(0o600)).unwrap();
    if as_root {
        Command::new("chown").arg("0:0").arg(&env).status().unwrap();
    }
    run(installer_at(&stage, &dest, &[]))
        .succeeds()
        .never_said(&format!("{} is mode", env.display()));
}

#[test]
fn kept_copies_others_can_read_from_an_older_install_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    let dest = dir.path().join("dest");
    old_install(&dest);
    let older = dest.join(ROOT).join(".replaced/20250101T000000Z");
    write(
        &older.join("atvm-run-watcher@.service"),
        "Environment=MATTERMOST_ATVM_WEBHOOK=x\n",
        0o644,
    );
    fs::set_permissions(older.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    run(installer_at(&stage, &dest, &[]))
        .succeeds()
        .said(&format!(
            "chmod 0700 {}",
            dest.join(ROOT).join(".replaced").display()
        ));
}

#[test]
fn every_tool_it_needs_is_checked_before_the_first_runs() {
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    // Everything of /usr/bin and /bin but rm, mkdir, dirname and flock.
    let tools = dir.path().join("tools");
    fs::create_dir_all(&tools).unwrap();
    let missing = ["rm", "mkdir", "dirname", "flock"];
    for bin in ["/usr/bin", "/bin"] {
        for entry in fs::read_dir(bin).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            let link = tools.join(&name);
            if !missing.contains(&name.to_str().unwrap_or_default()) && !link.exists() {
                std::os::unix::fs::symlink(entry.path(), link).unwrap();
            }
        }
    }
    let dest = dir.path().join("dest");
    for path in [tools.display().to_string(), String::new()] {
        let out = Command::new("/bin/sh")
            .arg(stage.join("install"))
            .arg("--destdir")
            .arg(&dest)
            .env("PATH", &path)
            .output()
            .unwrap();
        out.code_is(1)
            .said("nothing was changed")
            .never_said("not found");
        let err = stderr(&out);
        for tool in missing {
            let line = format!("the {tool} command is missing\n");
            assert_eq!(err.matches(&line).count(), 1, "{tool}: {err}");
        }
        if path.is_empty() {
            assert!(err.contains("the sha256sum command is missing"), "{err}");
        }
        assert!(!dest.exists(), "PATH={path}: something was written");
    }
}

#[test]
fn a_relative_destdir_is_shown_normalised() {
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    let sub = dir.path().join("sub");
    fs::create_dir_all(&sub).unwrap();
    let out = Command::new(stage.join("install"))
        .arg("--destdir=../dest/./")
        .current_dir(&sub)
        .env_remove("DESTDIR")
        .output()
        .unwrap();
    out.succeeds()
        .said(&format!(
            "staging root {} (",
            dir.path().join("dest").display()
        ))
        .never_said("/../")
        .never_said("/./");
}

/// Run `program args` with `env` in a private mount namespace whose `/` is read-only: a
/// test of what must be refused can then never change this machine, whatever the installer
/// does.
fn on_a_readonly_root(program: &Path, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -o remount,bind,ro / && exec \"$0\" \"$@\"")
        .arg(program)
        .args(args)
        .current_dir(cwd)
        .env_remove("DESTDIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn a_destdir_that_is_the_root_or_comes_from_the_environment_is_refused() {
    if let Some(why) = cannot_unshare() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stage = staged(dir.path());
    let install = stage.join("install");
    let rehearsal = dir.path().join("rehearsal");
    let to_root = dir.path().join("to-root");
    std::os::unix::fs::symlink("/", &to_root).unwrap();
    let to_root = to_root.to_str().unwrap();
    // A rehearsal's `export DESTDIR=…` left in the shell: refused, never a staging install
    // (nor, for a packager's DESTDIR, a real one).
    for args in [&[][..], &["--uninstall"], &["--recover"]] {
        on_a_readonly_root(
            &install,
            args,
            &[("DESTDIR", rehearsal.to_str().unwrap())],
            dir.path(),
        )
        .code_is(2)
        .said("DESTDIR is set")
        .said("only with --destdir");
    }
    assert!(!rehearsal.exists());
    for args in [
        &["--destdir", "/"][..],
        &["--destdir", "//"],
        &["--destdir=/tmp/.."],
        &["--destdir", to_root],
        &["--uninstall", "--destdir", "/"],
    ] {
        on_a_readonly_root(&install, args, &[], dir.path())
            .code_is(2)
            .said("--destdir must be a staging root other than /");
    }
    for args in [&["--destdir", ""][..], &["--destdir="]] {
        on_a_readonly_root(&install, args, &[], dir.path())
            .code_is(2)
            .said("--destdir needs a directory");
    }
    // With --destdir, a DESTDIR in the environment is not read.
    let dest = dir.path().join("dest");
    let out = Command::new(&install)
        .arg("--destdir")
        .arg(&dest)
        .env("DESTDIR", &rehearsal)
        .output()
        .unwrap();
    out.succeeds();
    assert!(dest.join(ROOT).join("start-atvm-run").is_file());
    assert!(!rehearsal.exists());
}

#[test]
fn the_manifest_check_it_suggests_works_in_a_destdir_with_blanks() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("staging root");
    let stdout = succeeded(xtask_install(dir.path(), &dest));
    let hint = stdout
        .lines()
        .find_map(|l| l.split_once("(check it with: "))
        .map(|(_, cmd)| cmd.trim_end_matches(')').to_string())
        .unwrap_or_else(|| panic!("no hint in:\n{stdout}"));
    let out = Command::new("sh").arg("-c").arg(&hint).output().unwrap();
    assert!(out.status.success(), "{hint}: {}", text(&out));
}

#[test]
fn uninstall_names_a_link_it_keeps_because_the_operator_replaced_it() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    succeeded(xtask_install(dir.path(), &dest));
    let own = dest.join(ROOT).join("start-atvm-run.sh");
    fs::remove_file(&own).unwrap();
    write(&own, "#!/bin/sh\n# the operator's own wrapper\n", 0o755);
    let out = succeeded(xtask_uninstall(&dest));
    assert!(
        out.contains(&format!(
            "kept {} (not the link the install made: the operator's own)",
            own.display()
        )),
        "{out}"
    );
    assert!(own.exists());
}
