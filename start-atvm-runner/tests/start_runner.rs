//! start-atvm-runner through its binary: the spec it writes and what it refuses. (What the
//! runner then does is in the runner crate's tests.)

#![allow(clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use serde_json::json;
use testkit::{Env, read_json, text};

const B: &str = "e2e-redhat9.6-ubuntu24.04-w2k25-fc";

#[test]
fn the_spec_carries_the_request_run_id_and_the_absolute_workdir() {
    let env = Env::new();
    let run_id = env.write_request(B, json!({}));
    let out = env.run(
        "start-atvm-runner",
        &["--build-name", B, "--runner-command", "true"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let spec = read_json(&env.state_dir(B).join("runner/spec.json"));
    assert_eq!(spec["run_id"], run_id.as_str());
    assert_eq!(spec["command"], "true");
    assert_eq!(spec["workdir"], env.automation_root.display().to_string());
    assert_eq!(spec["log_path"], env.run_log(B).display().to_string());
}

#[test]
fn without_a_request_the_run_gets_its_own_id() {
    let env = Env::new();
    let out = env.run(
        "start-atvm-runner",
        &["--build-name", B, "--runner-command", "true"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let spec = read_json(&env.state_dir(B).join("runner/spec.json"));
    assert!(
        spec["run_id"].as_str().is_some_and(|id| id.len() > 10),
        "{spec}"
    );
}

#[test]
fn a_missing_workdir_and_an_empty_command_are_refused() {
    let env = Env::new();
    let missing = env.root().join("no-such-dir");
    let out = env.run(
        "start-atvm-runner",
        &[
            "--build-name",
            B,
            "--runner-command",
            "true",
            "--workdir",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&missing.display().to_string()),
        "{}",
        text(&out)
    );
    let out = env.run(
        "start-atvm-runner",
        &["--build-name", B, "--runner-command", ""],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(env.systemctl_calls(), "", "nothing started");
}
