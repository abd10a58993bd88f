//! Waking on events (docs/watcher-service.md, "Waking"), through the binary: with a
//! safety net far longer than the test's patience (`--poll-seconds 120`), only an event
//! can make the watcher look in time — the runner's exit, the cancel marker, the log
//! growing, a report written. With events off (`ATVM_WATCH_EVENTS=off`) the watcher looks
//! every `--poll-seconds` and reaches the same end.

use super::{B, LONG, start_runner};
use serde_json::json;
use std::fs;
use std::process::Child;
use std::time::Duration;
use testkit::scenario::{Ending, Group, Play, Scenario, Spec};
use testkit::{Env, Expect, Posting, finish};

/// Longer than any wait in these tests: a look before it is an event's doing.
const SAFETY_NET: &str = "120";
/// How long a test waits for what an event should bring: far below the safety net.
const PATIENCE: Duration = Duration::from_secs(20);

fn watcher(env: &Env) -> Child {
    env.spawn(
        "atvm-run-watcher",
        &["--build-name", B, "--poll-seconds", SAFETY_NET],
    )
}

/// A passing two-spec run, played step by step.
fn passing_run(env: &Env) -> Play {
    env.write_request(B, json!({}));
    let sc = Scenario {
        seed: 0,
        categorized: false,
        groups: vec![Group {
            name: Some("linux".into()),
            specs: ["verify.cy.ts", "login.cy.js"]
                .map(|name| Spec {
                    name: name.into(),
                    fails: 0,
                    flaky: false,
                    report: false,
                })
                .to_vec(),
            finished: true,
        }],
        ending: Ending::Exit(0),
    };
    Play::start(env, B, &sc)
}

fn reason(env: &Env) -> String {
    env.try_state(B)
        .and_then(|s| s["reason"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn the_log_growing_wakes_the_watcher() {
    let env = Posting::new(vec![]);
    let mut run = passing_run(&env);
    let w = watcher(&env);
    run.step(&env, B);
    run.step(&env, B);
    env.wait_until("the first spec", PATIENCE, || {
        reason(&env).contains("running spec 1 of 2")
    });
    run.step(&env, B);
    env.wait_until("the second spec", PATIENCE, || {
        reason(&env).contains("running spec 2 of 2")
    });
    drop(run);
    let mut w = w;
    let _ = w.kill();
    let _ = w.wait();
}

#[test]
fn the_runners_exit_wakes_the_watcher_and_the_post_goes_out() {
    let p = Posting::new(vec![]);
    let mut run = passing_run(&p);
    let w = watcher(&p);
    run.to_end(&p, B);
    p.wait_until("the post", PATIENCE, || p.hook.count() == 1);
    let out = finish(w, LONG);
    out.code_is(0);
    assert_eq!(p.state(B)["state"], "COMPLETED");
}

#[test]
fn the_cancel_marker_wakes_the_watcher() {
    let p = Posting::new(vec![]);
    let mut run = passing_run(&p);
    let w = watcher(&p);
    run.step(&p, B);
    p.wait_state(B, "WATCHING", PATIENCE);
    // The watcher here is no unit, so the helper's stop does not reach it: only the
    // marker the helper writes can.
    p.run("cancel-atvm-run-watcher", &["--build-name", B])
        .succeeds();
    let out = finish(w, PATIENCE);
    out.code_is(0);
    assert_eq!(p.state(B)["state"], "CANCELLED");
    assert_eq!(p.hook.count(), 0);
    drop(run);
}

#[test]
fn a_report_written_wakes_the_watcher() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    // Cypress names the spec, then — no more output — its report appears; its counts are
    // the run's until the log has a summary.
    let report = env.report_for("login.cy.js");
    let go = env.root().join("go");
    start_runner(
        &env,
        &format!(
            "printf '  (Run Starting)\\n  Running:  login.cy.js  (1 of 1)\\n'; while [ ! -e '{}' ]; do sleep 0.05; done; cp '{}' '{}'; sleep 60",
            go.display(),
            report.display(),
            env.reporter_dir.display()
        ),
    );
    let mut w = watcher(&env);
    env.wait_until("the first look", PATIENCE, || {
        reason(&env).contains("running spec 1 of 1")
    });
    assert!(env.state(B)["counts"].is_null());
    fs::write(&go, "").unwrap();
    env.wait_until("the report's counts", PATIENCE, || {
        env.try_state(B).is_some_and(|s| s["counts"]["tests"] == 4)
    });
    let _ = w.kill();
    let _ = w.wait();
}

/// What the watcher holds open: `anon_inode:inotify`, `anon_inode:[pidfd]`, …
fn open_kinds(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| fs::read_link(e.path()).ok())
                .map(|t| t.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn events_are_waited_on_and_off_with_the_variable_the_watcher_polls_to_the_same_end() {
    for events in [true, false] {
        let mut p = Posting::new(vec![]);
        if !events {
            p.set("ATVM_WATCH_EVENTS", "off");
        }
        let mut run = passing_run(&p);
        let w = p.spawn(
            "atvm-run-watcher",
            &["--build-name", B, "--poll-seconds", "0.2"],
        );
        run.step(&p, B);
        p.wait_state(B, "WATCHING", PATIENCE);
        let kinds = open_kinds(w.id());
        let waits = |what: &str| kinds.iter().any(|k| k.contains(what));
        assert_eq!(
            (waits("inotify"), waits("pidfd")),
            (events, events),
            "events {events}: {kinds:?}"
        );
        run.to_end(&p, B);
        p.wait_until("the post", PATIENCE, || p.hook.count() == 1);
        finish(w, LONG).code_is(0);
        assert_eq!(p.state(B)["state"], "COMPLETED", "events {events}");
    }
}

/// A hand-started run piped through a filter that still drains its output when the runner
/// exits: the runner's pidfd wakes the watcher at once, but the run's output is not all in
/// the log yet. The watcher waits for the filter (it holds the log open for writing, in the
/// runner's session) instead of ending the run TERMINATED "without a Cypress summary".
#[test]
fn a_hand_started_run_s_filter_still_draining_its_output_is_waited_for() {
    const B: &str = "e2e-fallback-filtered";
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    let inner = format!(
        "sleep 0.5; cat '{}'; exit 2",
        testkit::fixture("cypress/failing-2-of-20.log").display()
    );
    // The filter passes the first line at once (it holds the log from the start) and the
    // rest a second after the runner has written it all.
    let pipeline = format!(
        "sh -c '{inner}' sh --build_name {B} | (IFS= read -r first; printf '%s\\n' \"$first\"; sleep 1.5; cat) > '{}'",
        env.run_log(B).display()
    );
    let mut run = std::process::Command::new("sh")
        .args(["-c", &pipeline])
        .spawn()
        .unwrap();
    let out = finish(
        env.spawn(
            "atvm-run-watcher",
            &["--build-name", B, "--poll-seconds", "0.2"],
        ),
        LONG,
    );
    run.wait().unwrap();
    out.code_is(0);
    let s = env.state(B);
    assert_eq!(s["state"], "FAILED", "{s:#}");
    assert_eq!(env.hook.count(), 1);
}
