//! cancel-atvm-runner through its binary. (Cancelling a live run end to end is in the runner
//! crate's tests.)

#![allow(clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::time::Duration;
use testkit::{Env, text};

const B: &str = "e2e-redhat9.6-ubuntu24.04-w2k25-fc";

#[test]
fn cancelling_nothing_is_not_an_error() {
    let env = Env::new();
    let out = env.run("cancel-atvm-runner", &["--build-name", B]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing to cancel"), "{}", text(&out));
    assert!(!env.state_dir(B).exists(), "nothing written");
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
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("no status from its wrapper"),
        "{}",
        text(&out)
    );
    // The unit is activating, but run-atvm-runner has not written its status yet.
    let activating = env.script(
        "activating-systemctl",
        "case \"$1\" in is-active) echo activating; exit 3;; esac\nexit 0",
    );
    env.set("ATVM_SYSTEMCTL", activating.display().to_string());
    let out = env.run("cancel-atvm-runner", &["--build-name", B]);
    assert!(out.status.success(), "{}", text(&out));
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
