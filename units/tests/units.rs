//! Checks on the rendered unit files: names, `%i`, the directives docs/units.md requires, a
//! comment on every directive, `systemd-analyze verify` printing nothing, and the watcher's
//! sandbox rated 3.0 or lower by `systemd-analyze security`.

#![allow(clippy::panic)] // test code: failing loudly is the point

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use units::{ALL, RESUME, RUNNER, UnitTemplate, WATCHER, exec_start};

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
        if unit.is_template() {
            assert!(cmd.ends_with("--build-name %i"), "{cmd}");
        } else {
            // A unit of its own (not per build): nothing to take from an instance name.
            assert!(!cmd.contains('%'), "{cmd}");
        }
    }
    assert_eq!(
        exec_start(&RESUME.render(Path::new("/opt/atvm-watcher-service"))),
        Some("/opt/atvm-watcher-service/atvm-run-watcher --resume-all")
    );
}

#[test]
fn templates_use_percent_i_never_percent_capital_i() {
    for unit in ALL {
        assert!(!unit.template().contains("%I"), "{} uses %I", unit.name);
        assert_eq!(
            unit.template().contains("%i"),
            unit.is_template(),
            "{}: %i belongs in the per-build templates only",
            unit.name
        );
        assert!(
            unit.template()
                .contains("\nEnvironmentFile=-/etc/atvm-run-watcher.env\n"),
            "{}",
            unit.name
        );
        // Every unit points at a man page the installer ships, nothing outside the install.
        let docs: Vec<&str> = directives(unit, "Documentation=");
        assert!(!docs.is_empty(), "{} has no Documentation=", unit.name);
        for doc in docs.iter().flat_map(|d| d.split_whitespace()) {
            let page = doc
                .strip_prefix("man:")
                .and_then(|p| p.strip_suffix("(1)"))
                .unwrap_or_else(|| panic!("{}: {doc} is not a man page", unit.name));
            assert!(
                workspace_binaries().contains(page),
                "{}: no man page {page}(1) is installed",
                unit.name
            );
        }
    }
}

/// The values of every `key` line of a unit template (`key` ends in `=`).
fn directives(unit: UnitTemplate, key: &str) -> Vec<&'static str> {
    unit.template()
        .lines()
        .filter_map(|l| l.strip_prefix(key))
        .collect()
}

#[test]
fn runner_stop_reaches_the_wrapper_first_and_watcher_restarts_on_failure_only() {
    let runner = RUNNER.template();
    assert!(runner.contains("\nKillMode=mixed\n"));
    assert!(runner.contains("\nTimeoutStopSec="));
    assert!(runner.contains("\nRestart=no\n"));
    assert!(runner.contains("\nUnsetEnvironment=MATTERMOST_ATVM_WEBHOOK\n"));
    let watcher = WATCHER.template();
    assert!(watcher.contains("\nRestart=on-failure\n"));
    // 1 (a post failed for good) must never be restarted into a second attempt (docs/units.md).
    assert_eq!(
        directives(WATCHER, "RestartPreventExitStatus="),
        ["1 2 4 78"]
    );
}

#[test]
fn the_watcher_stop_timeout_outlasts_a_post_on_the_wire() {
    // SIGTERM lets a POST already sent finish, bounded by the HTTP client's overall timeout.
    const HTTP_OVERALL_TIMEOUT_SECS: u32 = 10;
    let stop: Vec<u32> = directives(WATCHER, "TimeoutStopSec=")
        .iter()
        .map(|v| v.parse().expect("TimeoutStopSec= in plain seconds"))
        .collect();
    assert_eq!(stop.len(), 1);
    assert!(stop[0] >= 2 * HTTP_OVERALL_TIMEOUT_SECS, "{stop:?}");
}

#[test]
fn the_run_units_pass_the_boot_id_the_sandbox_hides() {
    for unit in [RUNNER, WATCHER] {
        assert_eq!(
            directives(unit, "Environment="),
            ["ATVM_BOOT_ID=%b"],
            "{}",
            unit.name
        );
    }
}

#[test]
fn the_watcher_sandbox_keeps_what_the_watcher_needs() {
    let one = |key| {
        let v = directives(WATCHER, key);
        assert_eq!(v.len(), 1, "{key} {v:?}");
        v[0]
    };
    // Reading /proc/<pid>/{exe,fd,fdinfo} of a fallback runner started outside the unit.
    assert_eq!(one("CapabilityBoundingSet="), "CAP_SYS_PTRACE");
    // The reporter directory is under /root; the run log is in the real /tmp.
    assert_eq!(one("ProtectHome="), "read-only");
    assert!(directives(WATCHER, "PrivateTmp=").is_empty());
    assert!(directives(WATCHER, "PrivateUsers=").is_empty());
    // The state root is the one writable place.
    assert_eq!(one("ProtectSystem="), "strict");
    assert_eq!(one("StateDirectory="), "atvm-run-watcher");
    assert_eq!(one("StateDirectoryMode="), "0700");
    // Posting over HTTP(S); the journal.
    assert_eq!(one("RestrictAddressFamilies="), "AF_INET AF_INET6 AF_UNIX");
    // /proc/sys is hidden, so the boot id comes from the unit.
    assert_eq!(one("ProcSubset="), "pid");
}

#[test]
fn the_resume_unit_runs_once_at_boot_after_the_network_and_local_file_systems() {
    assert_eq!(directives(RESUME, "Type="), ["oneshot"]);
    assert_eq!(directives(RESUME, "WantedBy="), ["multi-user.target"]);
    let after = directives(RESUME, "After=").join(" ");
    for target in ["network-online.target", "local-fs.target"] {
        assert!(after.split(' ').any(|t| t == target), "After={after}");
    }
    // It starts units through the service manager's socket: nothing may cut that off.
    assert_eq!(directives(RESUME, "RestrictAddressFamilies="), ["AF_UNIX"]);
    assert!(directives(RESUME, "PrivateNetwork=").is_empty());
    // The run units are started per build, never at boot on their own.
    for unit in [RUNNER, WATCHER] {
        assert!(directives(unit, "WantedBy=").is_empty(), "{}", unit.name);
    }
}

#[test]
fn every_directive_has_a_comment() {
    // Every directive but the description is explained by the comment right above it; one
    // comment may cover a pair that belongs together (Wants= + After=, Restart= +
    // RestartSec=, the two SystemCallFilter= lines), never more.
    for unit in ALL {
        let lines: Vec<&str> = unit.template().lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let is_directive = line.contains('=') && !line.starts_with(['#', '[']);
            if !is_directive || line.starts_with("Description=") {
                continue;
            }
            let above = |n: usize| i.checked_sub(n).map(|j| lines[j]).unwrap_or("");
            let second_of_pair =
                !above(1).starts_with('#') && above(1).contains('=') && above(2).starts_with('#');
            assert!(
                above(1).starts_with('#') || second_of_pair,
                "{}: `{line}` has no comment right above it",
                unit.name
            );
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

/// Is `systemd-analyze` here (and new enough for `--offline`, systemd 250)? Prints why not.
fn systemd_analyze_usable() -> bool {
    match Command::new("systemd-analyze").arg("--version").output() {
        Err(_) => {
            eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
            false
        }
        Ok(out) => {
            let version = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u32>().ok());
            match version {
                Some(v) if v >= 250 => true,
                _ => {
                    eprintln!("skipped: systemd-analyze older than 250 has no --offline");
                    false
                }
            }
        }
    }
}

/// Every unit of `units::ALL` rendered for a fake package root into `<dir>/units`; returns
/// the unit directory.
fn rendered_units(dir: &Path) -> PathBuf {
    let root = fake_package_root(dir);
    let unit_dir = dir.join("units");
    fs::create_dir_all(&unit_dir).expect("mkdir");
    for unit in ALL {
        fs::write(unit_dir.join(unit.name), unit.render(&root)).expect("write");
    }
    unit_dir
}

#[test]
fn systemd_analyze_verify_prints_nothing() {
    if !systemd_analyze_usable() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let unit_dir = rendered_units(dir.path());
    // verify needs an instance to resolve %i; it loads the template from the same dir.
    let paths: Vec<PathBuf> = ALL
        .iter()
        .map(|unit| match unit.is_template() {
            true => unit_dir.join(unit.name.replace("@.", "@e2e-redhat9.6-ubuntu24.04.")),
            false => unit_dir.join(unit.name),
        })
        .collect();
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

/// The most a sandboxed watcher unit may be rated (docs/units.md).
const MAX_WATCHER_EXPOSURE: f64 = 3.0;

/// `systemd-analyze security --offline=yes` of a unit file: the overall exposure level
/// (0.0 safest … 10.0), from its last line, `→ Overall exposure level for <unit>: 2.1 OK`.
fn exposure(unit_file: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit_file)
        .output()
        .expect("run systemd-analyze security");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    parse_exposure(&stdout)
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{stdout}{stderr}"))
}

fn parse_exposure(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let (_, rest) = line.rsplit_once(": ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn the_exposure_parser_reads_systemd_analyze_output() {
    let text = "✗ UMask=   Files created by service are world-readable by default   0.1\n\n\
                → Overall exposure level for atvm-run-watcher@i.service: 9.6 UNSAFE 😨\n";
    assert_eq!(parse_exposure(text), Some(9.6));
    assert_eq!(
        parse_exposure("Overall exposure level for a.service: 2.1 OK"),
        Some(2.1)
    );
    assert_eq!(parse_exposure("nothing here"), None);
}

#[test]
fn systemd_analyze_security_rates_the_watcher_sandbox_at_most_3() {
    if !systemd_analyze_usable() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let unit_dir = rendered_units(dir.path());
    let watcher = exposure(&unit_dir.join(WATCHER.name));
    let runner = exposure(&unit_dir.join(RUNNER.name));
    let resume = exposure(&unit_dir.join(RESUME.name));
    eprintln!("exposure: watcher {watcher}, runner {runner}, resume {resume}");
    assert!(
        watcher <= MAX_WATCHER_EXPOSURE,
        "systemd-analyze security rates {} {watcher}, above {MAX_WATCHER_EXPOSURE}",
        WATCHER.name
    );
    // The check can fail: the same unit without its sandbox section is rated far above.
    let rendered = fs::read_to_string(unit_dir.join(WATCHER.name)).expect("read");
    let (unsandboxed, sandbox) = rendered
        .split_once("# ---- Sandbox")
        .expect("the watcher unit has a sandbox section");
    assert!(sandbox.contains("ProtectSystem=strict"), "{sandbox}");
    let bare_dir = dir.path().join("bare");
    fs::create_dir_all(&bare_dir).expect("mkdir");
    let bare = bare_dir.join(WATCHER.name);
    fs::write(&bare, unsandboxed).expect("write");
    let bare_rating = exposure(&bare);
    assert!(
        bare_rating > MAX_WATCHER_EXPOSURE && bare_rating > watcher + 5.0,
        "without its sandbox the watcher unit is rated {bare_rating}"
    );
    // The boot-time unit talks to systemd, yet is sandboxed too; the runner only lightly.
    assert!(
        resume < bare_rating && runner < bare_rating,
        "{resume} {runner}"
    );
}
