//! Checks on the rendered unit files: names, `%i`, the directives SPEC §10 requires, and
//! `systemd-analyze verify` printing nothing.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use units::{ALL, RUNNER, WATCHER, exec_start};

/// The tools' binary names: every crate folder at the repository root with a `src/main.rs`
/// (package name = folder name = binary name), apart from the `xtask` task runner.
fn workspace_binaries() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(&root).expect("list the repository root") {
        let dir = entry.expect("entry").path();
        let Ok(text) = fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        if !dir.join("src/main.rs").is_file() {
            continue;
        }
        let name = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = "))
            .map(|v| v.trim_matches('"').to_string())
            .expect("package name");
        if name != "xtask" {
            names.insert(name);
        }
    }
    names
}

#[test]
fn every_exec_start_names_a_workspace_binary() {
    let bins = workspace_binaries();
    assert_eq!(bins.len(), 8, "{bins:?}");
    for unit in ALL {
        let text = unit.render(Path::new("/opt/atvm-watcher-service"));
        let cmd = exec_start(&text).expect("ExecStart");
        let program = cmd.split_whitespace().next().expect("program");
        let name = program
            .strip_prefix("/opt/atvm-watcher-service/")
            .expect("in package root");
        assert!(
            bins.contains(name),
            "{} runs {name}, not a workspace binary",
            unit.name
        );
        assert!(cmd.ends_with("--build-name %i"), "{cmd}");
    }
}

#[test]
fn templates_use_percent_i_never_percent_capital_i() {
    for unit in ALL {
        assert!(!unit.template().contains("%I"), "{} uses %I", unit.name);
        assert!(unit.template().contains("%i"), "{} lacks %i", unit.name);
        assert!(
            unit.template()
                .contains("EnvironmentFile=-/etc/atvm-run-watcher.env")
        );
    }
}

#[test]
fn runner_stop_reaches_the_wrapper_first_and_watcher_restarts_on_failure_only() {
    let runner = RUNNER.template();
    assert!(runner.contains("\nKillMode=mixed\n"));
    assert!(runner.contains("\nTimeoutStopSec="));
    assert!(runner.contains("\nRestart=no\n"));
    let watcher = WATCHER.template();
    assert!(watcher.contains("\nRestart=on-failure\n"));
}

#[test]
fn every_non_obvious_directive_has_a_comment() {
    // Directives an operator would not guess the reason for must be preceded by a comment.
    let explained = [
        "Type=",
        "ExecStart=",
        "EnvironmentFile=",
        "UnsetEnvironment=",
        "KillMode=",
        "Restart=",
        "RestartPreventExitStatus=",
        "StartLimitIntervalSec=",
        "TimeoutStopSec=",
        "Wants=",
    ];
    for unit in ALL {
        let lines: Vec<&str> = unit.template().lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if explained.iter().any(|d| line.starts_with(d)) {
                let commented = lines[..i]
                    .iter()
                    .rev()
                    .take_while(|l| !l.is_empty() && !l.starts_with('['))
                    .any(|l| l.starts_with('#'));
                assert!(commented, "{}: `{line}` has no comment above it", unit.name);
            }
        }
    }
}

/// A package root with an executable for every ExecStart, so `verify` can check them.
fn fake_package_root(dir: &Path) -> PathBuf {
    let root = dir.join("pkg");
    fs::create_dir_all(&root).expect("mkdir");
    for name in workspace_binaries() {
        let p = root.join(name);
        fs::write(&p, "#!/bin/sh\nexit 0\n").expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    root
}

#[test]
fn systemd_analyze_verify_prints_nothing() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let root = fake_package_root(dir.path());
    let unit_dir = dir.path().join("units");
    fs::create_dir_all(&unit_dir).expect("mkdir");
    let mut paths = Vec::new();
    for unit in ALL {
        // verify needs an instance to resolve %i; it loads the template from the same dir.
        let template = unit_dir.join(unit.name);
        fs::write(&template, unit.render(&root)).expect("write");
        paths.push(unit_dir.join(unit.name.replace("@.", "@e2e-redhat9.6-ubuntu24.04.")));
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", unit_dir.display()))
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify said:\n{text}"
    );
}
