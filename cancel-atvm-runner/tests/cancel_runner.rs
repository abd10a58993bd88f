//! cancel-atvm-runner through its binary. (Cancelling a live run end to end is in the runner
//! crate's tests.)

#![allow(clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use testkit::{Env, Expect, finish};

const B: &str = "e2e-redhat9.6-ubuntu24.04-w2k25-fc";

#[test]
fn cancelling_a_known_build_that_is_not_running_is_not_an_error() {
    let env = Env::new();
    env.write_request(B, serde_json::json!({}));
    let out = env.run("cancel-atvm-runner", &["--build-name", B]);
    out.succeeds();
    out.said("nothing to cancel");
    assert!(!env.state_dir(B).join("runner").exists(), "nothing written");
}

#[test]
fn cancelling_a_build_never_seen_is_an_error_naming_the_build_meant() {
    // A typo must not read as "nothing to cancel" while the real run goes on.
    let env = Env::new();
    env.write_request(B, serde_json::json!({}));
    let typo = "e2e-redhat9.6-ubuntu24.04-w2k25-cf";
    env.run("cancel-atvm-runner.sh", &["--build-name", typo])
        .code_is(1)
        .error_line("cancel-atvm-runner", &format!("unknown build {typo}"))
        .said(&format!("did you mean {B}?"))
        .never_said("nothing to cancel");
    assert!(!env.state_dir(typo).exists(), "nothing written");
}

#[test]
fn a_cancel_that_races_ahead_of_the_wrapper_is_kept() {
    let mut env = Env::new();
    // Record the spec as start-atvm-runner would, with a systemctl that starts nothing.
    let idle = env.script(
        "idle-systemctl",
        "case \"$1\" in is-active) echo inactive; exit 3;; esac\nexit 0",
    );
    env.set("ATVM_SYSTEMCTL", idle.display().to_string());
    env.set("ATVM_START_CONFIRM_SECONDS", "0.2");
    let out = env.run(
        "start-atvm-runner",
        &["--build-name", B, "--runner-command", "sleep 5; :"],
    );
    // Nothing ran, so nothing confirmed the start; the spec is written all the same.
    out.code_is(5);
    out.said("no status from its wrapper");
    // The unit is activating, but run-atvm-runner has not written its status yet.
    let activating = env.script(
        "activating-systemctl",
        "case \"$1\" in is-active) echo activating; exit 3;; esac\nexit 0",
    );
    env.set("ATVM_SYSTEMCTL", activating.display().to_string());
    let out = env.run("cancel-atvm-runner", &["--build-name", B]);
    out.succeeds();
    assert_eq!(env.status(B)["cancel_requested"], true);
    assert_eq!(env.status(B)["pid"], 0);
    // The wrapper starts: its start record keeps the cancel; then systemd's stop arrives.
    let mut runner = env.spawn("run-atvm-runner", &["--build-name", B]);
    env.wait_until(
        "the wrapper's start record",
        Duration::from_secs(20),
        || env.status(B)["pid"].as_u64().is_some_and(|p| p > 0),
    );
    assert_eq!(env.status(B)["cancel_requested"], true);
    std::process::Command::new("kill")
        .args(["-TERM", &runner.id().to_string()])
        .status()
        .unwrap();
    runner.wait().unwrap();
    let status = env.status(B);
    assert_eq!(
        (
            status["cancel_requested"].as_bool(),
            status["stop_signal"].as_i64()
        ),
        (Some(true), Some(15))
    );
}

#[test]
fn a_cancel_during_a_start_waits_for_it_and_cancels_the_new_runner() {
    const UNIT: &str = "atvm-runner@e2e-redhat9.6-ubuntu24.04-w2k25-fc.service";
    let env = Env::new();
    let start = env.hold_start_lock(B);
    let (mut cancel, output) = env.spawn_logged("cancel-atvm-runner", &["--build-name", B]);
    let said = || fs::read_to_string(&output).unwrap_or_default();
    let waiting = format!("cancel-atvm-runner: waiting for the start of {B} in progress…");
    env.wait_until("the cancel to wait or end", Duration::from_secs(10), || {
        said().contains(&waiting) || cancel.try_wait().unwrap().is_some()
    });
    assert_eq!(said().trim(), waiting, "it waits, saying so on one line");
    assert!(cancel.try_wait().unwrap().is_none(), "{}", said());
    assert!(
        !env.systemctl_calls().contains("stop"),
        "{}",
        env.systemctl_calls()
    );
    // The start goes on: the request, the runner's spec (as start-atvm-runner writes them),
    // and the runner unit.
    let run_id = env.write_request(B, serde_json::json!({}));
    let runner_dir = env.state_dir(B).join("runner");
    fs::create_dir(&runner_dir).unwrap();
    fs::set_permissions(&runner_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let spec = runner_dir.join("spec.json");
    let spec_json = serde_json::json!({
        "build_name": B, "run_id": run_id, "command": "sleep 30; :",
        "workdir": env.automation_root, "log_path": env.run_log(B),
        "created_at": testkit::now_rfc3339(), "start_id": "s1",
    });
    fs::write(&spec, spec_json.to_string()).unwrap();
    fs::set_permissions(&spec, fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.systemctl(&["start", UNIT]);
    out.succeeds();
    env.wait_until("the runner to start", Duration::from_secs(10), || {
        env.state_dir(B).join("runner/status.json").exists()
            && env.status(B)["pid"].as_u64().is_some_and(|p| p > 0)
    });
    assert!(cancel.try_wait().unwrap().is_none(), "{}", said());
    drop(start);
    let out = finish(cancel, Duration::from_secs(20));
    assert!(out.status.success(), "{}", said());
    assert!(said().contains(&format!("cancelled {UNIT}")), "{}", said());
    assert!(
        env.systemctl_calls().contains(&format!("stop {UNIT}")),
        "{}",
        env.systemctl_calls()
    );
    let status = env.status(B);
    assert_eq!(
        (
            status["run_id"].as_str(),
            status["cancel_requested"].as_bool()
        ),
        (Some(run_id.as_str()), Some(true)),
        "{status:#}"
    );
}
