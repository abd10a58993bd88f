//! cancel-atvm-run-watcher through its binary.

#![allow(clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use serde_json::json;
use std::fs;
use std::time::Duration;
use testkit::{Env, Expect, finish, text};

const B: &str = "e2e-redhat9.6-ubuntu24.04-w2k25-fc";

#[test]
fn cancelling_an_unknown_build_is_an_error() {
    let env = Env::new();
    let out = env.run(
        "cancel-atvm-run-watcher",
        &["--build-name", "never-started"],
    );
    out.code_is(1);
    out.said("unknown build never-started");
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn errors_under_systemd_carry_journal_priorities() {
    let mut env = Env::new();
    env.set("JOURNAL_STREAM", "8:1234");
    let out = env.run("cancel-atvm-run-watcher", &["--build-name", "nope"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "<3>cancel-atvm-run-watcher: unknown build nope: this controller has no run of that name; no build has run on this controller yet ({})",
            env.state_dir("nope").display()
        )
    );
}

#[test]
fn cancel_marks_and_is_harmless_to_repeat() {
    let env = Env::new();
    let run_id = env.write_request(B, json!({}));
    for _ in 0..2 {
        let out = env.run("cancel-atvm-run-watcher", &["--build-name", B]);
        out.succeeds();
        out.said("was not running");
    }
    let s = env.state(B);
    assert_eq!(
        (s["state"].as_str(), s["final"].as_bool()),
        (Some("CANCELLED"), Some(true))
    );
    assert_eq!(s["post"]["status"], "suppressed");
    let marker = fs::read_to_string(env.state_dir(B).join("cancelled.marker")).unwrap();
    assert!(marker.contains(&format!("run_id={run_id}")), "{marker}");
}

/// A final state of `state` for `B` whose post is `post`.
fn ended(env: &Env, state: &str, post: &str) {
    let run_id = env.write_request(B, json!({}));
    let done = json!({
        "build_name": B, "run_id": run_id, "state": state, "final": true, "reason": "why",
        "updated_at": "2026-11-24T10:00:00.000Z", "counts": null,
        "post": {"status": post, "attempts": 1, "last_error": null}
    });
    fs::write(
        env.state_dir(B).join("state.json"),
        serde_json::to_vec(&done).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_run_already_reported_stays_as_it_is() {
    let env = Env::new();
    ended(&env, "COMPLETED", "posted");
    let out = env.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    assert_eq!(
        text(&out).trim(),
        format!("{B} was already reported (COMPLETED, posted); nothing to cancel")
    );
    assert_eq!(env.state(B)["state"], "COMPLETED");
    assert!(!env.state_dir(B).join("cancelled.marker").exists());
}

#[test]
fn a_result_not_posted_yet_is_cancelled_and_never_posted() {
    let env = Env::new();
    ended(&env, "FAILED", "pending");
    let out = env.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    // One answer, not "already ended" and "cancelled" both.
    assert_eq!(text(&out).lines().count(), 1, "{}", text(&out));
    out.said("state CANCELLED, nothing posted");
    let s = env.state(B);
    assert_eq!(
        (&s["state"], &s["post"]["status"]),
        (&json!("CANCELLED"), &json!("suppressed"))
    );
    assert!(env.state_dir(B).join("cancelled.marker").exists());
}

#[test]
fn a_run_that_ended_unposted_keeps_its_state() {
    let env = Env::new();
    ended(&env, "TERMINATED", "suppressed");
    let out = env.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    out.said("had already ended as TERMINATED");
    assert_eq!(env.state(B)["state"], "TERMINATED");
    assert!(env.state_dir(B).join("cancelled.marker").exists());
}

/// A categorized run's state: groups `posted` (keys) and one still running, or all ended.
fn categorized(env: &Env, final_state: Option<&str>, posted: &[&str]) {
    let run_id = env.write_request(B, json!({"categorize": true}));
    let mut subruns: Vec<serde_json::Value> = posted
        .iter()
        .map(|k| {
            json!({"key": k, "group": k, "state": "COMPLETED", "counts": null,
                   "post": {"status": "posted", "attempts": 1, "last_error": null}})
        })
        .collect();
    if final_state.is_none() {
        subruns.push(
            json!({"key": "03-open", "group": "open", "state": "WATCHING",
                            "counts": null,
                            "post": {"status": "none", "attempts": 0, "last_error": null}}),
        );
    }
    let state = json!({
        "build_name": B, "run_id": run_id, "state": final_state.unwrap_or("WATCHING"),
        "final": final_state.is_some(), "reason": "why", "updated_at": "2026-11-24T10:00:00.000Z",
        "counts": null, "post": {"status": "none", "attempts": 0, "last_error": null},
        "subruns": subruns
    });
    fs::write(env.state_dir(B).join("state.json"), state.to_string()).unwrap();
}

#[test]
fn a_categorized_run_with_a_group_post_failed_for_good_is_not_called_reported() {
    let env = Env::new();
    categorized(&env, Some("FAILED"), &["01-linux"]);
    let path = env.state_dir(B).join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    state["subruns"].as_array_mut().unwrap().push(json!({
        "key": "02-windows", "group": "windows", "state": "FAILED", "counts": null,
        "post": {"status": "failed", "attempts": 1, "last_error": "HTTP 400 (chat.example.com)"}
    }));
    fs::write(&path, state.to_string()).unwrap();
    let table = env.run("atvm-run-status", &[]);
    table.succeeds().said("1 posted, 1 failed");
    let out = env.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds()
        .never_said("already reported")
        .said("had already ended as FAILED; groups posted: 01-linux; failed to post: 02-windows; marked cancelled");
    assert_eq!(text(&out).lines().count(), 1, "{}", text(&out));
    assert_eq!(
        env.state(B)["state"],
        "FAILED",
        "an ended run keeps its state"
    );
}

#[test]
fn a_categorized_run_cancelled_midway_names_the_groups_already_posted() {
    let env = Env::new();
    categorized(&env, None, &["01-linux"]);
    let out = env.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    assert_eq!(text(&out).lines().count(), 1, "{}", text(&out));
    out.said("state CANCELLED; already posted before the cancel: 01-linux; nothing more is posted");
}

#[test]
fn a_categorized_run_whose_groups_were_all_posted_is_already_reported() {
    let env = Env::new();
    categorized(&env, Some("FAILED"), &["01-linux", "02-windows"]);
    let out = env.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    out.said("was already reported (FAILED, posted)");
    assert_eq!(env.state(B)["state"], "FAILED");
    assert!(!env.state_dir(B).join("cancelled.marker").exists());
}

#[test]
fn a_cancel_during_a_start_waits_for_it_and_cancels_the_new_run() {
    let env = Env::new();
    let earlier = env.write_request(B, json!({}));
    let start = env.hold_start_lock(B);
    let (mut cancel, output) = env.spawn_logged("cancel-atvm-run-watcher", &["--build-name", B]);
    let said = || fs::read_to_string(&output).unwrap_or_default();
    let waiting = format!("cancel-atvm-run-watcher: waiting for the start of {B} in progress…");
    env.wait_until("the cancel to wait or end", Duration::from_secs(10), || {
        said().contains(&waiting) || cancel.try_wait().unwrap().is_some()
    });
    assert_eq!(said().trim(), waiting, "it waits, saying so on one line");
    assert!(cancel.try_wait().unwrap().is_none(), "{}", said());
    assert!(!env.state_dir(B).join("cancelled.marker").exists());
    assert!(!env.state_dir(B).join("state.json").exists());
    assert!(
        !env.systemctl_calls().contains("stop"),
        "{}",
        env.systemctl_calls()
    );
    // The start goes on: it archives the earlier run and records a new one.
    let archived = env.root().join("archived");
    fs::rename(env.state_dir(B), &archived).unwrap();
    let new = env.write_request(B, json!({}));
    drop(start);
    let out = finish(cancel, Duration::from_secs(10));
    assert!(out.status.success(), "{}", said());
    assert!(said().contains(&format!("cancelled {B}")), "{}", said());
    let marker = fs::read_to_string(env.state_dir(B).join("cancelled.marker")).unwrap();
    assert!(marker.contains(&format!("run_id={new}")), "{marker}");
    let s = env.state(B);
    assert_eq!(
        (s["run_id"].as_str(), s["state"].as_str()),
        (Some(new.as_str()), Some("CANCELLED"))
    );
    assert!(
        !archived.join("cancelled.marker").exists(),
        "{earlier} kept as it was"
    );
}

#[test]
fn no_start_begins_while_a_cancel_is_applied() {
    let mut env = Env::new();
    env.write_request(B, json!({}));
    env.hold_start_lock(B); // makes .locks, as any earlier start did; released at once
    // A watcher that takes its time to stop (a post on the wire, say).
    let stopping = env.root().join("stopping");
    let go = env.root().join("go");
    let slow = env.script(
        "slow-systemctl",
        &format!(
            "case \"$1\" in\n  is-active) echo active ;;\n  stop) touch '{}'; while [ ! -e '{}' ]; do sleep 0.02; done ;;\nesac\nexit 0",
            stopping.display(),
            go.display()
        ),
    );
    env.set("ATVM_SYSTEMCTL", slow.display().to_string());
    let (cancel, output) = env.spawn_logged("cancel-atvm-run-watcher", &["--build-name", B]);
    env.wait_until(
        "the cancel to stop the watcher",
        Duration::from_secs(10),
        || stopping.exists(),
    );
    let out = env.run("start-atvm-run-watcher", &["--build-name", B]);
    out.code_is(4);
    assert!(
        text(&out).contains("a cancel") && text(&out).contains(&format!(".locks/{B}.start.lock")),
        "{}",
        text(&out)
    );
    fs::write(&go, "").unwrap();
    let out = finish(cancel, Duration::from_secs(10));
    let said = fs::read_to_string(&output).unwrap();
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("cancelled {B}")), "{said}");
    assert!(
        !env.state_root.join(".archive").exists(),
        "the cancelled run stays"
    );
}

#[test]
fn without_a_locks_directory_the_cancel_neither_waits_nor_makes_one() {
    let env = Env::new();
    env.write_request(B, json!({}));
    let out = env.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    out.never_said("waiting");
    assert!(!env.state_root.join(".locks").exists());
}
