//! `cargo xtask demo`: install into `target/demo/root` (a `--destdir` install) and watch a
//! sample run end to end on this machine, without touching systemd, /etc or /tmp: the test
//! kit's fake systemctl runs the installed units' ExecStart lines, and a local webhook on
//! 127.0.0.1 prints what the watcher posts.

use crate::layout::{self, DEFAULT_PREFIX, Tree};
use crate::{Args, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::{FAKE_SYSTEMCTL, FakeWebhook, fixture};

const BUILD: &str = "demo-redhat9.6-ubuntu24.04-w2k25";

pub fn run(args: &Args) -> Result {
    let demo = layout::target_dir().join("demo");
    if demo.exists() && !args.flag("--keep") {
        fs::remove_dir_all(&demo).map_err(|e| format!("cannot clear {}: {e}", demo.display()))?;
    }
    let bins = layout::build_release()?;
    let tree = Tree {
        destdir: demo.join("root"),
        prefix: PathBuf::from(DEFAULT_PREFIX),
    };
    layout::run_installer(crate::install::command(
        &bins,
        &demo.join("stage"),
        Some(&tree.destdir),
        &tree.prefix,
    )?)?;
    crate::install::check_help(&tree.package_root())?;
    println!("demo: installed into {}", tree.destdir.display());

    // The controller, in a directory.
    let pkg = tree.package_root();
    let dirs = |p: &str| -> Result<PathBuf> {
        let d = demo.join(p);
        fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        Ok(d)
    };
    let units = dirs("fake-systemd/units")?;
    let systemd_state = dirs("fake-systemd/state")?;
    let automation = dirs("automation")?;
    let reporter = dirs("automation/cypress/cmcReporter")?;
    let log_dir = dirs("tmp")?;
    for unit in units::ALL {
        // The units run the binaries where the demo installed them.
        fs::write(units.join(unit.name), unit.render(&pkg)).map_err(|e| e.to_string())?;
    }
    let systemctl = demo.join("fake-systemctl");
    fs::write(&systemctl, FAKE_SYSTEMCTL).map_err(|e| e.to_string())?;
    fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let hook = FakeWebhook::start(vec![]);

    // The real mochawesome report, as written for area07.cy.js, one of the specs the sample
    // log runs and fails: reports count for a run only when its log names their spec.
    let report = demo.join("area07.json");
    let real = fs::read_to_string(fixture("mochawesome/login.json")).map_err(|e| e.to_string())?;
    fs::write(&report, real.replace("login.cy.js", "area07.cy.js")).map_err(|e| e.to_string())?;
    let runner = format!(
        "echo 'npx cypress run --record --group linux'; sleep 1; cp '{}' '{}'; cat '{}'; exit 2",
        report.display(),
        reporter.display(),
        fixture("cypress/failing-2-of-20.log").display()
    );
    let mut cmd = Command::new(pkg.join("start-atvm-run"));
    cmd.args([
        "--build-name",
        BUILD,
        "--template",
        "migration",
        "--template-command",
        "echo selecting specs for redhat9.6, ubuntu24.04 and w2k25",
        "--runner-command",
        &runner,
        "--config-family",
        "redhat",
        "--scope-description",
        "cargo xtask demo",
    ]);
    let env = [
        ("ATVM_PACKAGE_ROOT", pkg.clone()),
        ("ATVM_STATE_ROOT", tree.state_root()),
        ("ATVM_AUTOMATION_ROOT", automation),
        ("ATVM_REPORTER_DIR", reporter),
        ("ATVM_LOG_DIR", log_dir.clone()),
        ("ATVM_ENV_FILE", tree.env_file()),
        ("ATVM_INVENTORY", pkg.join(layout::INVENTORY)),
        ("ATVM_SYSTEMCTL", systemctl.clone()),
        ("FAKE_SYSTEMD_UNITS", units.clone()),
        ("FAKE_SYSTEMD_STATE", systemd_state.clone()),
    ];
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .env("MATTERMOST_ATVM_WEBHOOK", hook.url())
        .env("ATVM_POLL_SECONDS", "0.5")
        .env("ATVM_GRACE_SECONDS", "2");
    println!("demo: start-atvm-run --build-name {BUILD} … (template step, watcher, runner)");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run start-atvm-run: {e}"))?;
    if !status.success() {
        return Err(format!("start-atvm-run failed ({status})"));
    }

    let state_file = tree.state_root().join(BUILD).join("state.json");
    let unit = format!("atvm-run-watcher@{BUILD}.service");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = fs::read_to_string(&state_file).is_ok_and(|t| t.contains("\"final\": true"))
            && !Command::new(&systemctl)
                .args(["is-active", &unit])
                .env("FAKE_SYSTEMD_UNITS", &units)
                .env("FAKE_SYSTEMD_STATE", &systemd_state)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
        if done {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the watcher did not finish within 60 s; see {}",
                systemd_state.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\ndemo: watcher output ({unit}):");
    print_indented(&systemd_state.join(format!("{unit}.out")));
    println!("\ndemo: {} says:", state_file.display());
    let state = fs::read_to_string(&state_file).map_err(|e| e.to_string())?;
    for key in ["\"state\"", "\"reason\"", "\"status\"", "\"attempts\""] {
        if let Some(line) = state.lines().find(|l| l.trim_start().starts_with(key)) {
            println!("    {}", line.trim().trim_end_matches(','));
        }
    }
    let texts = hook.texts();
    println!("\ndemo: Mattermost received {} post(s):", texts.len());
    for t in &texts {
        for line in t.lines() {
            println!("    {line}");
        }
    }
    println!(
        "\ndemo: everything is under {}; run it again with `cargo xtask demo`",
        demo.display()
    );
    if texts.len() != 1 {
        return Err(format!("expected exactly one post, got {}", texts.len()));
    }
    Ok(())
}

fn print_indented(path: &Path) {
    for line in fs::read_to_string(path).unwrap_or_default().lines() {
        println!("    {line}");
    }
}
