//! start-atvm-runner through its binary: the spec it writes and what it refuses. (What the
//! runner then does is in the runner crate's tests.)

#![allow(clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use serde_json::json;
use std::time::Duration;
use testkit::{Env, Expect, FakeWebhook, read_json, text};

const B: &str = "e2e-redhat9.6-ubuntu24.04-w2k25-fc";

#[test]
fn the_spec_carries_the_request_run_id_and_the_absolute_workdir() {
    let env = Env::new();
    let run_id = env.write_request(B, json!({}));
    let out = env.run(
        "start-atvm-runner",
        &["--build-name", B, "--runner-command", "true"],
    );
    out.succeeds();
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
    out.succeeds();
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
    for dry_run in [&[][..], &["--dry-run"][..]] {
        let mut args = vec![
            "--build-name",
            B,
            "--runner-command",
            "true",
            "--workdir",
            missing.to_str().unwrap(),
        ];
        args.extend_from_slice(dry_run);
        let out = env.run("start-atvm-runner", &args);
        assert_eq!(out.status.code(), Some(5), "{dry_run:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("does not exist ({})", missing.display())),
            "{stderr}"
        );
    }
    let out = env.run(
        "start-atvm-runner",
        &["--build-name", B, "--runner-command", ""],
    );
    out.code_is(2);
    assert!(
        !env.systemctl_calls().contains("start "),
        "nothing started: {}",
        env.systemctl_calls()
    );
}

#[test]
fn a_missing_workdir_ends_the_watched_run_at_once_naming_it() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    env.set("MATTERMOST_ATVM_WEBHOOK", hook.url());
    // Far longer than the test waits: the run must end from the refusal, not the timeout.
    env.set("ATVM_START_TIMEOUT_SECONDS", "60");
    let out = env.run("start-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    env.wait_state(B, "STARTING", Duration::from_secs(10));
    let run_id = read_json(&env.state_dir(B).join("request.json"))["run_id"].clone();
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
    out.code_is(5);
    out.said(&missing.display().to_string());
    // The record the wrapper writes when it refuses, for this run.
    let status = env.status(B);
    assert_eq!(status["run_id"], run_id, "{status:#}");
    assert!(
        status["refused"]
            .as_str()
            .is_some_and(|r| r.contains(&missing.display().to_string())),
        "{status:#}"
    );
    let s = env.wait_final(B, Duration::from_secs(10));
    assert_eq!(s["state"], "UNKNOWN", "{s:#}");
    assert!(
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&missing.display().to_string())),
        "{s:#}"
    );
    env.wait_unit_inactive(
        &format!("atvm-run-watcher@{B}.service"),
        Duration::from_secs(10),
    );
    assert!(
        !env.systemctl_calls().contains("start atvm-runner@"),
        "{}",
        env.systemctl_calls()
    );
    assert!(hook.requests().is_empty());
}

#[test]
fn a_runner_for_a_run_that_has_already_ended_is_refused() {
    let env = Env::new();
    let run_id = env.write_request(B, json!({}));
    // The run ended UNKNOWN (its start timed out, say): final, never to be watched again.
    std::fs::write(
        env.state_dir(B).join("state.json"),
        json!({
            "build_name": B, "run_id": run_id, "state": "UNKNOWN", "final": true,
            "reason": "no runner for this run within 15m of the request",
            "updated_at": "2026-11-25T05:00:00.000Z",
            "post": {"status": "suppressed", "attempts": 0}
        })
        .to_string(),
    )
    .unwrap();
    for dry in [true, false] {
        let mut args = vec!["--build-name", B, "--runner-command", "true"];
        if dry {
            args.push("--dry-run");
        }
        let out = env.run("start-atvm-runner", &args);
        assert_eq!(out.status.code(), Some(1), "dry {dry}: {}", text(&out));
        assert!(
            text(&out).contains("has already ended UNKNOWN")
                && text(&out).contains("start-atvm-run-watcher"),
            "{}",
            text(&out)
        );
    }
    assert!(!env.state_dir(B).join("runner/spec.json").exists());
    assert!(
        !env.systemctl_calls().contains("start "),
        "{}",
        env.systemctl_calls()
    );
}

#[test]
fn a_refused_spec_is_reported_at_once_by_its_name() {
    // The spec is swapped for a symbolic link between the helper writing it and the
    // wrapper reading it: the wrapper refuses it without knowing which start it was for;
    // the helper still recognises the refusal as its own and says why, at once.
    let mut env = Env::new();
    env.write_request(B, json!({}));
    let spec = env.state_dir(B).join("runner/spec.json");
    let swap = env.script(
        "swapping-systemctl",
        &format!(
            "case \"$1 $2\" in\n  'start atvm-runner@'*) cp '{s}' '{s}.real'; rm '{s}'; ln -s '{s}.real' '{s}' ;;\nesac\nexec '{}' \"$@\"",
            env.systemctl.display(),
            s = spec.display()
        ),
    );
    env.set("ATVM_SYSTEMCTL", swap.display().to_string());
    let started = std::time::Instant::now();
    let out = env.run(
        "start-atvm-runner",
        &["--build-name", B, "--runner-command", "true"],
    );
    out.code_is(5)
        .said("spec.json")
        .never_said("no status from its wrapper");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
