//! atvm-run-watcher through its binary: every terminal state with a real runner (started by
//! start-atvm-runner under the fake systemd, printing a Cypress fixture), categorized runs,
//! stale inputs, signals, restarts, and Mattermost delivery against a fake webhook.

#![allow(clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

#[path = "watcher/clock.rs"]
mod clock;
#[path = "watcher/delivery.rs"]
mod delivery;
#[path = "watcher/message.rs"]
mod message;
#[path = "watcher/restart.rs"]
mod restart;
#[path = "watcher/storage.rs"]
mod storage;
#[path = "watcher/wake.rs"]
mod wake;

use serde_json::{Value, json};
use std::fs;
use std::process::Output;
use std::time::{Duration, Instant};
use testkit::{Env, Expect, FakeWebhook, Posting, Reply, attachment, field, finish, fixture, text};

const B: &str = "e2e-redhat9.6-ubuntu24.04-w2k25-fc";
const RUNNER_UNIT: &str = "atvm-runner@e2e-redhat9.6-ubuntu24.04-w2k25-fc.service";
const LONG: Duration = Duration::from_secs(30);

fn start_runner(env: &Env, command: &str) {
    let out = env.run(
        "start-atvm-runner",
        &["--build-name", B, "--runner-command", command],
    );
    out.succeeds();
}

/// Run the watcher in the foreground until it exits.
fn watch(env: &Env, extra: &[&str]) -> Output {
    let mut args = vec!["--build-name", B];
    args.extend_from_slice(extra);
    finish(env.spawn("atvm-run-watcher", &args), LONG)
}

fn state(env: &Env) -> Value {
    env.state(B)
}

fn assert_final(env: &Env, out: &Output, expected: &str) -> Value {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    let s = state(env);
    assert_eq!(s["state"], expected, "{}\n{s:#}", text(out));
    assert_eq!(s["final"], true);
    s
}

/// `(key, state, post status)` of every sub-run `state.json` lists.
fn subrun_rows(s: &Value) -> Vec<(&str, &str, &str)> {
    s["subruns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["key"].as_str().unwrap(),
                x["state"].as_str().unwrap(),
                x["post"]["status"].as_str().unwrap(),
            )
        })
        .collect()
}

// ----- terminal states ---------------------------------------------------------------------

#[test]
fn passing_run_is_completed_and_posted() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({"template": "migration"}));
    start_runner(&env, &env.cypress_command("passing.log", 0));
    let s = assert_final(&env, &watch(&env, &[]), "COMPLETED");
    assert_eq!(
        s["counts"],
        json!({"tests": 6, "passed": 5, "failed": 0, "pending": 1, "skipped": 0})
    );
    assert_eq!(s["post"]["status"], "posted");
    let post = env.only_post();
    let text = post["text"].as_str().unwrap();
    assert!(
        text.starts_with("COMPLETED · build `e2e-redhat9.6-ubuntu24.04-w2k25-fc`"),
        "{text}"
    );
    let a = attachment(&post);
    assert_eq!(a["title"], "COMPLETED · e2e-redhat9.6-ubuntu24.04-w2k25-fc");
    assert_eq!(a["color"], "#2E7D32", "green for COMPLETED");
    assert_eq!(
        field(&post, "Tests").as_deref(),
        Some("6 · passed 5 · failed 0 · pending 1 · skipped 0")
    );
    let vms = field(&post, "VMs").unwrap();
    assert!(
        vms.contains("atvm-rh96-01 (redhat9.6, 192.0.2.11)") && vms.contains("atvm-w2k25-01"),
        "{vms}"
    );
    assert_eq!(
        a["title_link"],
        "https://cloud.cypress.io/projects/x7k2pq/runs/1842"
    );
    assert!(env.state_dir(B).join("posted.marker").exists());
}

#[test]
fn failing_run_is_failed_with_its_failed_tests() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    // The real report, as written for one of the specs this run's log names.
    let report = env.report_for("area07.cy.js");
    start_runner(
        &env,
        &format!(
            "sleep 0.3; cp '{}' '{}'; {}",
            report.display(),
            env.reporter_dir.display(),
            env.cypress_command("failing-2-of-20.log", 2)
        ),
    );
    let s = assert_final(&env, &watch(&env, &[]), "FAILED");
    assert!(
        s["reason"].as_str().unwrap().contains("exited with code 2"),
        "{s}"
    );
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("2 of 20 specs failed"),
        "{s}"
    );
    assert_eq!(s["counts"]["failed"], 2);
    let post = env.only_post();
    let a = attachment(&post);
    assert!(
        post["text"].as_str().unwrap().starts_with("FAILED · "),
        "{post}"
    );
    assert_eq!(a["color"], "#C62828", "red for FAILED");
    let text = a["text"].as_str().unwrap();
    assert!(text.contains("- `cypress/e2e/area07.cy.js › Login rejects a bad password — AssertionError: expected the error banner`"), "{text}");
    // The log says area13.cy.js failed too; it has no report, so it is named by the log.
    assert!(
        text.contains("- `cypress/e2e/area13.cy.js › 1 failing test`") && !text.contains("more"),
        "{text}"
    );
}

#[test]
fn more_than_ten_failed_tests_are_listed_as_ten_and_n_more() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    // Twelve reports from the real one, each for one of the log's two failing specs, with
    // one failed test each, all different (the same test named by two reports is one).
    let real = fs::read_to_string(fixture("mochawesome/login.json")).unwrap();
    let reports = env.root().join("reports");
    fs::create_dir(&reports).unwrap();
    for i in 0..12 {
        let spec = if i % 2 == 0 { "area07" } else { "area13" };
        fs::write(
            reports.join(format!("r{i:02}.json")),
            real.replace("login.cy.js", &format!("{spec}.cy.js"))
                .replace(
                    "rejects a bad password",
                    &format!("rejects a bad password {i:02}"),
                ),
        )
        .unwrap();
    }
    let cmd = format!(
        "cp '{}'/*.json '{}'; {}",
        reports.display(),
        env.reporter_dir.display(),
        env.cypress_command("failing-2-of-20.log", 2)
    );
    start_runner(&env, &cmd);
    assert_final(&env, &watch(&env, &[]), "FAILED");
    let post = env.only_post();
    let text = attachment(&post)["text"].as_str().unwrap();
    assert_eq!(
        text.matches(" › Login rejects a bad password ").count(),
        10,
        "{text}"
    );
    assert!(
        text.ends_with(
            "and 2 more\n\nFirst finished run of this build name: nothing to compare with yet."
        ),
        "{text}"
    );
}

#[test]
fn exit_code_zero_with_failures_in_the_summary_is_failed() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    // 256 failing tests make Cypress exit with 0.
    start_runner(&env, &env.cypress_command("failing-2-of-20.log", 0));
    let s = assert_final(&env, &watch(&env, &[]), "FAILED");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("the runner exited 0; the log shows the failures"),
        "{s}"
    );
}

#[test]
fn no_spec_files_found_is_failed_with_the_stale_spec_pattern_hint() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    start_runner(&env, &env.cypress_command("no-specs.log", 1));
    let s = assert_final(&env, &watch(&env, &[]), "FAILED");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("no spec files") && reason.contains("re-run the template step"),
        "{reason}"
    );
    assert!(
        reason.contains("cypress/e2e/migration/redhat9.6/**/*.cy.js"),
        "{reason}"
    );
    assert_eq!(env.hook.count(), 1, "FAILED is posted");
}

#[test]
fn coloured_output_gives_the_same_result() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    start_runner(&env, &env.cypress_command("coloured.log", 1));
    let s = assert_final(&env, &watch(&env, &[]), "FAILED");
    assert_eq!(
        s["counts"],
        json!({"tests": 4, "passed": 3, "failed": 1, "pending": 0, "skipped": 0})
    );
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("1 of 2 specs failed"),
        "{s}"
    );
}

#[test]
fn a_log_written_in_small_chunks_while_being_read_gives_the_same_result() {
    for block in [1, 4096] {
        let env = Posting::new(vec![]);
        env.write_request(B, json!({}));
        let f = fixture("cypress/wrapped.log").display().to_string();
        // Stop half-way through a line (and maybe a UTF-8 character) for longer than a poll.
        let cmd = format!(
            "head -c 3001 '{f}' | dd bs={block} 2>/dev/null; sleep 0.4; tail -c +3002 '{f}' | dd bs={block} 2>/dev/null; exit 0"
        );
        start_runner(&env, &cmd);
        let out = watch(&env, &["--poll-seconds", "0.05"]);
        let s = assert_final(&env, &out, "COMPLETED");
        assert_eq!(s["counts"]["tests"], 4, "{block}-byte chunks");
        assert_eq!(
            s["details"]["run_url"],
            "https://cypress-dashboard.qa.example.internal/projects/cdc-e2e-cyp-12-17-4/runs/e2e-redhat9.6-ubuntu24.04-w2k25-fc-20261124",
            "{block}-byte chunks"
        );
    }
}

#[test]
fn cancel_of_the_runner_is_cancelled_and_never_posted() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    start_runner(&env, "echo '  (Run Starting)'; sleep 30; :");
    let watcher = env.spawn("atvm-run-watcher", &["--build-name", B]);
    env.wait_state(B, "WATCHING", LONG);
    let out = env.run("cancel-atvm-runner", &["--build-name", B]);
    out.succeeds();
    let s = assert_final(&env, &finish(watcher, LONG), "CANCELLED");
    assert_eq!(s["post"]["status"], "suppressed");
    assert_eq!(env.hook.count(), 0, "nothing posted");
}

#[test]
fn a_cancelled_runner_killed_when_its_stop_timed_out_is_still_cancelled() {
    let mut env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    // A runner that ignores SIGTERM: the stop times out and everything is SIGKILLed, the
    // wrapper too, before it can record the exit.
    start_runner(&env, "trap '' TERM; echo '  (Run Starting)'; sleep 30; :");
    let watcher = env.spawn("atvm-run-watcher", &["--build-name", B]);
    env.wait_state(B, "WATCHING", LONG);
    env.set("FAKE_STOP_TIMEOUT", "1");
    let out = env.run("cancel-atvm-runner", &["--build-name", B]);
    out.succeeds();
    let s = assert_final(&env, &finish(watcher, LONG), "CANCELLED");
    assert_eq!(s["post"]["status"], "suppressed");
    assert_eq!(env.hook.count(), 0, "nothing posted");
}

#[test]
fn cancel_marker_stops_the_watch_without_a_post() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    start_runner(&env, "sleep 30; :");
    let watcher = env.spawn("atvm-run-watcher", &["--build-name", B]);
    env.wait_state(B, "WATCHING", LONG);
    let out = env.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    let s = assert_final(&env, &finish(watcher, LONG), "CANCELLED");
    assert_eq!(s["post"]["status"], "suppressed");
    assert!(env.state_dir(B).join("cancelled.marker").exists());
    assert_eq!(env.hook.count(), 0, "nothing posted");
}

#[test]
fn runner_killed_is_terminated_and_not_posted() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    start_runner(
        &env,
        &format!("{}; sleep 30; :", env.cypress_output("cut-off.log")),
    );
    env.wait_until("the runner", LONG, || {
        env.state_dir(B).join("runner/status.json").exists()
    });
    let watcher = env.spawn("atvm-run-watcher", &["--build-name", B]);
    env.wait_state(B, "WATCHING", LONG);
    let wrapper = env.status(B)["pid"].as_u64().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-KILL", &wrapper])
        .status()
        .unwrap();
    let s = assert_final(&env, &finish(watcher, LONG), "TERMINATED");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("without recording an exit"),
        "{s}"
    );
    assert_eq!(s["post"]["status"], "suppressed");
    assert_eq!(env.hook.count(), 0, "nothing posted");
    let child = env.status(B)["child_pid"].as_i64().unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{child}")])
        .status();
}

#[test]
fn abnormal_ends_are_logged_at_warning_priority_under_journald() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    start_runner(&env, "echo '  (Run Starting)'; kill -KILL $$");
    let out = finish(
        env.cmd("atvm-run-watcher")
            .args(["--build-name", B])
            .env("JOURNAL_STREAM", "8:424242")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        LONG,
    );
    assert_final(&env, &out, "TERMINATED");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("<4>atvm-run-watcher: warning: ")
                && l.contains("→ TERMINATED (runner command was killed by SIGKILL)")),
        "{stderr}"
    );
    // A normal end stays informational.
    let ok = Posting::new(vec![]);
    ok.write_request(B, json!({}));
    start_runner(&ok, &ok.cypress_command("passing.log", 0));
    let out = finish(
        ok.cmd("atvm-run-watcher")
            .args(["--build-name", B])
            .env("JOURNAL_STREAM", "8:424242")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        LONG,
    );
    assert_final(&ok, &out, "COMPLETED");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("<6>") && !text(&out).contains("<4>"),
        "{}",
        text(&out)
    );
}

#[test]
fn runner_command_killed_by_a_signal_is_terminated() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    start_runner(&env, "echo '  (Run Starting)'; kill -KILL $$");
    let s = assert_final(&env, &watch(&env, &[]), "TERMINATED");
    assert!(s["reason"].as_str().unwrap().contains("SIGKILL"), "{s}");
}

#[test]
fn a_silent_runner_is_hung_and_left_running() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    start_runner(&env, "echo '  (Run Starting)'; sleep 30; :");
    let out = watch(&env, &["--hang-minutes", "0.01"]);
    let s = assert_final(&env, &out, "HUNG");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("no log or reporter activity since 20") && reason.contains("left running"),
        "{reason}"
    );
    assert_eq!(s["post"]["status"], "suppressed");
    let out = std::process::Command::new(&env.systemctl)
        .args(["is-active", RUNNER_UNIT])
        .env("FAKE_SYSTEMD_UNITS", &env.units_dir)
        .env("FAKE_SYSTEMD_STATE", &env.systemd_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "the hung runner is left alone");
}

#[test]
fn no_runner_within_the_start_timeout_is_unknown() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    let started = Instant::now();
    let out = watch(&env, &["--start-timeout-seconds", "0.5"]);
    let s = assert_final(&env, &out, "UNKNOWN");
    assert!(s["reason"].as_str().unwrap().contains("no runner"), "{s}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(s["post"]["status"], "suppressed");
}

#[test]
fn an_unreadable_runner_status_is_unknown_and_named() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    fs::create_dir_all(env.state_dir(B).join("runner")).unwrap();
    fs::write(env.state_dir(B).join("runner/status.json"), "{ truncated").unwrap();
    let s = assert_final(&env, &watch(&env, &[]), "UNKNOWN");
    assert!(s["reason"].as_str().unwrap().contains("status.json"), "{s}");
    assert_eq!(
        fs::read_to_string(env.state_dir(B).join("runner/status.json")).unwrap(),
        "{ truncated",
        "not replaced"
    );
}

// ----- stale inputs ------------------------------------------------------------------------

#[test]
fn a_stale_finished_log_never_completes_a_new_watch() {
    let env = Posting::new(vec![]);
    // An earlier run of the same build name left a complete, passing log behind.
    fs::copy(fixture("cypress/passing.log"), env.run_log(B)).unwrap();
    env.write_request(B, json!({}));
    let out = watch(&env, &["--once"]);
    out.succeeds();
    assert_eq!(
        state(&env)["state"],
        "STARTING",
        "no runner yet: the old log means nothing"
    );
    // The new runner (started properly) fails; the old log is rotated away.
    start_runner(&env, &env.cypress_command("cut-off.log", 3));
    let s = assert_final(&env, &watch(&env, &[]), "FAILED");
    assert!(s["reason"].as_str().unwrap().contains("code 3"), "{s}");
}

#[test]
fn a_cypress_run_cut_off_under_a_wrapper_that_exits_0_is_failed_not_completed() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    // `npx cypress run …; exit 0`: Cypress dies mid-spec, the wrapper reports success.
    start_runner(
        &env,
        &format!("{}; exit 0", env.cypress_output("cut-off.log")),
    );
    let s = assert_final(&env, &watch(&env, &[]), "FAILED");
    assert!(
        s["reason"].as_str().unwrap().contains("did not finish"),
        "{s}"
    );
    assert_eq!(env.hook.count(), 1, "a cut-off run is posted as FAILED");
}

/// Start a runner by hand, as operators did before these tools (`python3
/// ./run-sorry-cypress.py … --build_name B > /tmp/B.log &`): a process naming the build,
/// with `stdout` going where the caller says.
fn detached_runner(script: &str, build: &str, stdout: std::process::Stdio) -> std::process::Child {
    std::process::Command::new("sh")
        .args(["-c", script, "sh", "--build_name", build])
        .stdout(stdout)
        .spawn()
        .unwrap()
}

#[test]
fn a_stale_log_that_no_process_of_the_run_holds_open_is_never_read() {
    // Its own build name: the fallback looks at every process of the machine.
    const B: &str = "e2e-fallback-stale";
    let env = Env::new();
    fs::copy(fixture("cypress/passing.log"), env.run_log(B)).unwrap();
    env.write_request(B, json!({}));
    // Processes that name the build but do not write its log: an old-style runner that
    // writes elsewhere, and an operator's loop over our own tools.
    let mut runner = detached_runner("sleep 3; :", B, std::process::Stdio::null());
    let status = env.package_root.join("atvm-run-status.sh");
    let mut lp = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "while :; do '{}' \"$@\" >/dev/null 2>&1; sleep 0.2; done",
                status.display()
            ),
            "loop",
            "--build-name",
            B,
        ])
        .spawn()
        .unwrap();
    let out = finish(
        env.spawn(
            "atvm-run-watcher",
            &[
                "--build-name",
                B,
                "--dry-run",
                "--start-timeout-seconds",
                "2",
            ],
        ),
        LONG,
    );
    let _ = lp.kill();
    lp.wait().unwrap();
    runner.wait().unwrap();
    out.code_is(0);
    assert!(
        text(&out).contains("would be UNKNOWN (no runner for this run within 2s"),
        "nothing is taken for the runner; the stale log is never read: {}",
        text(&out)
    );
    out.never_said("following runner");
}

#[test]
fn a_runner_left_over_from_an_earlier_run_is_not_taken_for_the_new_one() {
    const B: &str = "e2e-fallback-leftover";
    let env = Posting::new(vec![]);
    // The earlier run's runner is still alive (a HUNG run leaves it running), still holding
    // the log path it wrote, which the new run then truncates and writes again.
    let old = detached_runner(
        "sleep 30; :",
        B,
        fs::File::create(env.run_log(B)).unwrap().into(),
    );
    std::thread::sleep(Duration::from_millis(20));
    // The new run, started by hand the old way, truncating the log path.
    let script = format!(
        "sleep 0.5; cat '{}'; sleep 1; :",
        fixture("cypress/passing.log").display()
    );
    let mut new = detached_runner(&script, B, fs::File::create(env.run_log(B)).unwrap().into());
    env.write_request(B, json!({}));
    let out = watch_build(&env, B);
    new.wait().unwrap();
    let mut old = old;
    let _ = old.kill();
    old.wait().unwrap();
    out.code_is(0);
    assert_eq!(env.state(B)["state"], "COMPLETED", "{}", text(&out));
    assert_eq!(env.hook.count(), 1);
}

/// The watcher's `runner_pid` for `build`, once it has one.
fn followed_pid(env: &Env, build: &str) -> Option<u64> {
    let path = env.state_dir(build).join("state.json");
    let text = fs::read_to_string(path).ok()?;
    let state: Value = serde_json::from_str(&text).ok()?;
    state["details"]["runner_pid"].as_u64()
}

#[test]
fn a_run_started_after_a_leftover_was_adopted_takes_its_place() {
    const B: &str = "e2e-fallback-later";
    let env = Posting::new(vec![]);
    // A leftover of an earlier run, still writing the log path; the watcher starts first
    // and can only adopt it.
    let mut old = detached_runner(
        "echo earlier; sleep 30; :",
        B,
        fs::File::create(env.run_log(B)).unwrap().into(),
    );
    env.write_request(B, json!({}));
    let watcher = env.spawn("atvm-run-watcher", &["--build-name", B]);
    env.wait_until("the leftover adopted", LONG, || {
        followed_pid(&env, B) == Some(u64::from(old.id()))
    });
    // Then the new run, by hand, truncating the same log: it fails.
    let script = format!(
        "sleep 0.3; cat '{}'; sleep 0.5; exit 1",
        fixture("cypress/failing-2-of-20.log").display()
    );
    let mut new = detached_runner(&script, B, fs::File::create(env.run_log(B)).unwrap().into());
    let out = finish(watcher, LONG);
    new.wait().unwrap();
    let _ = old.kill();
    old.wait().unwrap();
    out.code_is(0);
    let s = env.state(B);
    assert_eq!(s["state"], "FAILED", "{s}\n{}", text(&out));
    out.said("is taken for a leftover");
    assert_eq!(env.hook.count(), 1, "the new run's result is posted");
}

#[test]
fn a_leftover_s_passing_output_truncated_by_a_new_run_never_counts_for_it() {
    const B: &str = "e2e-fallback-truncated";
    let env = Posting::new(vec![]);
    // An earlier run hung after its summary: its passing output is in the log.
    let script = format!(
        "cat '{}'; sleep 30; :",
        fixture("cypress/passing.log").display()
    );
    let mut old = detached_runner(&script, B, fs::File::create(env.run_log(B)).unwrap().into());
    env.write_request(B, json!({}));
    let watcher = env.spawn("atvm-run-watcher", &["--build-name", B]);
    env.wait_until("the leftover adopted", LONG, || {
        followed_pid(&env, B) == Some(u64::from(old.id()))
    });
    // The new run truncates the log and dies before Cypress prints anything.
    let mut new = detached_runner(
        "sleep 0.3; echo 'Error: Cannot find module cypress'; sleep 0.5; exit 1",
        B,
        fs::File::create(env.run_log(B)).unwrap().into(),
    );
    let out = finish(watcher, LONG);
    new.wait().unwrap();
    let _ = old.kill();
    old.wait().unwrap();
    let s = env.state(B);
    assert_eq!(s["state"], "TERMINATED", "{s}\n{}", text(&out));
    out.said("was truncated");
    assert_eq!(
        env.hook.count(),
        0,
        "nothing posted from the earlier run's output"
    );
}

#[test]
fn a_newer_run_writing_through_tee_wins_over_a_leftover_writing_the_log_itself() {
    const B: &str = "e2e-fallback-tee";
    let env = Posting::new(vec![]);
    let mut old = detached_runner(
        "sleep 30; :",
        B,
        fs::File::create(env.run_log(B)).unwrap().into(),
    );
    std::thread::sleep(Duration::from_millis(20));
    // `sh -c "…" --build_name B | tee B.log`: the runner writes a pipe, tee the log.
    let inner = format!(
        "sleep 0.5; cat '{}'; sleep 1; :",
        fixture("cypress/passing.log").display()
    );
    let pipeline = format!(
        "sh -c '{inner}' sh --build_name {B} | tee '{}' >/dev/null",
        env.run_log(B).display()
    );
    let mut new = std::process::Command::new("sh")
        .args(["-c", &pipeline])
        .spawn()
        .unwrap();
    env.write_request(B, json!({}));
    let out = watch_build(&env, B);
    new.wait().unwrap();
    let _ = old.kill();
    old.wait().unwrap();
    out.code_is(0);
    assert_eq!(env.state(B)["state"], "COMPLETED", "{}", text(&out));
    assert_eq!(env.hook.count(), 1);
}

#[test]
fn a_hand_started_wrapper_that_retried_cypress_is_judged_by_the_last_attempt() {
    const B: &str = "e2e-fallback-retry";
    let env = Posting::new(vec![]);
    let failing = fixture("cypress/failing-2-of-20.log");
    let script = format!(
        "head -100 '{f}'; sleep 0.3; cat '{f}'; sleep 0.5; exit 1",
        f = failing.display()
    );
    let mut runner = detached_runner(&script, B, fs::File::create(env.run_log(B)).unwrap().into());
    env.write_request(B, json!({}));
    let out = watch_build(&env, B);
    runner.wait().unwrap();
    let s = env.state(B);
    assert_eq!(s["state"], "FAILED", "{s}\n{}", text(&out));
    assert_eq!(env.hook.count(), 1);
}

#[test]
fn a_log_appended_to_by_a_hand_started_run_is_named_in_a_warning() {
    const B: &str = "e2e-fallback-append";
    let env = Posting::new(vec![]);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.run_log(B))
        .unwrap();
    let script = format!(
        "cat '{}'; sleep 1; :",
        fixture("cypress/passing.log").display()
    );
    let mut runner = detached_runner(&script, B, log.into());
    env.write_request(B, json!({}));
    let out = watch_build(&env, B);
    runner.wait().unwrap();
    out.code_is(0);
    let log = env.run_log(B).display().to_string();
    out.said(&format!("{log} is written in append mode"));
}

/// Run the watcher of `build` to its end.
fn watch_build(env: &Env, build: &str) -> Output {
    finish(
        env.spawn("atvm-run-watcher", &["--build-name", build]),
        LONG,
    )
}

#[test]
fn a_detached_runner_found_by_its_build_name_is_followed_from_its_log() {
    const B: &str = "e2e-fallback-detached";
    let env = Posting::new(vec![]);
    // An earlier run's failing log is in the way; the new run's redirection replaces it.
    fs::copy(fixture("cypress/failing-2-of-20.log"), env.run_log(B)).unwrap();
    // The run is launched first, the watcher after it (how the old validation did it).
    let log = fs::File::create(env.run_log(B)).unwrap();
    let script = format!(
        "cat '{}'; sleep 1; :",
        fixture("cypress/passing.log").display()
    );
    let mut runner = detached_runner(&script, B, log.into());
    env.write_request(B, json!({}));
    let out = finish(env.spawn("atvm-run-watcher", &["--build-name", B]), LONG);
    runner.wait().unwrap();
    out.code_is(0);
    let s = env.state(B);
    assert_eq!(s["state"], "COMPLETED", "{s}\n{}", text(&out));
    assert_eq!(s["counts"]["tests"], 6);
    assert_eq!(env.hook.count(), 1, "COMPLETED is posted");
}

#[test]
fn a_second_hand_started_runner_of_a_categorized_run_gets_new_keys_and_posts() {
    // The first runner prints the linux group and exits; within the grace period the
    // operator starts the rest by hand, truncating the log (`> B.log`). Its groups come
    // after linux: new keys, each posted, none taken for the one already reported.
    const B: &str = "e2e-fallback-categorized-again";
    let env = Posting::new(vec![]);
    let log = fs::read_to_string(fixture("cypress/categorized-3-groups.log")).unwrap();
    let windows = log.find("=== group windows").unwrap();
    let (first, rest) = (env.root().join("first.log"), env.root().join("rest.log"));
    fs::write(&first, &log[..windows]).unwrap();
    fs::write(&rest, &log[windows..]).unwrap();
    env.write_request(B, json!({"categorize": true}));
    let mut one = detached_runner(
        &format!("cat '{}'; sleep 0.5; :", first.display()),
        B,
        fs::File::create(env.run_log(B)).unwrap().into(),
    );
    let watcher = env.spawn(
        "atvm-run-watcher",
        &["--build-name", B, "--grace-seconds", "2"],
    );
    env.wait_until("the linux group posted", LONG, || env.hook.count() == 1);
    one.wait().unwrap();
    let mut two = detached_runner(
        &format!("cat '{}'; sleep 0.3; exit 1", rest.display()),
        B,
        fs::File::create(env.run_log(B)).unwrap().into(),
    );
    let out = finish(watcher, LONG);
    two.wait().unwrap();
    out.code_is(0);
    let s = env.state(B);
    assert_eq!(s["state"], "FAILED", "{s:#}");
    let subs = subrun_rows(&s);
    assert_eq!(
        subs,
        [
            ("01-linux", "COMPLETED", "posted"),
            ("02-windows", "FAILED", "posted"),
            ("03-ubuntu-24.04", "COMPLETED", "posted"),
        ],
        "{}",
        text(&out)
    );
    assert_eq!(env.hook.count(), 3);
}

#[test]
fn a_report_rewritten_in_place_is_read_again_before_the_post() {
    // mochawesome with a fixed report name rewrites the same file: no directory changes.
    let env = Posting::new(vec![]);
    let report = env.report_for("area07.cy.js");
    let in_place = env.reporter_dir.join("area07.json");
    fs::write(&in_place, "{\"stats\": {\"tests\": 0}}").unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&in_place)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    env.write_request(B, json!({}));
    start_runner(
        &env,
        &format!(
            "sleep 0.5; cat '{}' > '{}'; {}",
            report.display(),
            in_place.display(),
            env.cypress_command("failing-2-of-20.log", 2)
        ),
    );
    assert_final(&env, &watch(&env, &[]), "FAILED");
    let text = attachment(&env.only_post())["text"].to_string();
    assert!(text.contains("Login rejects a bad password"), "{text}");
}

#[test]
fn a_hand_started_run_s_reports_count_from_its_own_start_and_its_footer_has_both_times() {
    // The old validation launched the run first and the watcher after it: a report the run
    // wrote before the watcher came is still the run's.
    const B: &str = "e2e-fallback-early-report";
    let env = Posting::new(vec![]);
    let report = env.report_for("area07.cy.js");
    let go = env.root().join("go");
    let script = format!(
        "cp '{}' '{}'; while [ ! -e '{}' ]; do sleep 0.05; done; cat '{}'; sleep 0.3; exit 2",
        report.display(),
        env.reporter_dir.display(),
        go.display(),
        fixture("cypress/failing-2-of-20.log").display()
    );
    let mut runner = detached_runner(&script, B, fs::File::create(env.run_log(B)).unwrap().into());
    let copied = env.reporter_dir.join("area07.json");
    env.wait_until("the early report", LONG, || copied.exists());
    std::thread::sleep(Duration::from_millis(1100));
    env.write_request(B, json!({}));
    let watcher = env.spawn("atvm-run-watcher", &["--build-name", B]);
    env.wait_until("the runner adopted", LONG, || {
        env.try_state(B).is_some_and(|s| s["state"] == "WATCHING")
    });
    fs::write(&go, "").unwrap();
    let out = finish(watcher, LONG);
    runner.wait().unwrap();
    out.code_is(0);
    assert_eq!(env.state(B)["state"], "FAILED");
    let a = attachment(&env.only_post()).clone();
    assert!(
        a["text"]
            .to_string()
            .contains("Login rejects a bad password"),
        "{a}"
    );
    let footer = a["footer"].as_str().unwrap();
    assert!(footer.contains(" → "), "start and end: {footer}");
}

#[test]
fn a_hand_started_run_whose_log_is_not_trusted_ends_unknown_naming_it() {
    // The file at the log path is a link (someone planted it in /tmp): never read, and
    // when no runner turns up the reason says what was refused, not only the timeout.
    const B: &str = "e2e-fallback-untrusted-log";
    let env = Posting::new(vec![]);
    let target = env.root().join("elsewhere.log");
    fs::copy(fixture("cypress/passing.log"), &target).unwrap();
    std::os::unix::fs::symlink(&target, env.run_log(B)).unwrap();
    env.write_request(B, json!({}));
    let out = finish(
        env.spawn(
            "atvm-run-watcher",
            &["--build-name", B, "--start-timeout-seconds", "0.5"],
        ),
        LONG,
    );
    out.code_is(0);
    let s = env.state(B);
    assert_eq!(s["state"], "UNKNOWN", "{s:#}");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "{} is not read as this run's log: it is a symbolic link",
            env.run_log(B).display()
        )),
        "{reason}"
    );
    assert_eq!(env.hook.count(), 0);
}

#[test]
fn a_second_categorized_runner_writing_the_same_bytes_again_still_gets_new_keys() {
    // A rerun of the same groups with the same output, truncating the log (`> B.log`)
    // and writing it all within one poll: nothing about the bytes says they are new, the
    // new writer does (it did not open the log to append).
    const B: &str = "e2e-fallback-categorized-same";
    let env = Posting::new(vec![]);
    let log = fixture("cypress/categorized-3-groups.log");
    env.write_request(B, json!({"categorize": true}));
    let mut one = detached_runner(
        &format!("cat '{}'; sleep 2.5; exit 1", log.display()),
        B,
        fs::File::create(env.run_log(B)).unwrap().into(),
    );
    let watcher = env.spawn(
        "atvm-run-watcher",
        &[
            "--build-name",
            B,
            "--grace-seconds",
            "3",
            "--poll-seconds",
            "1",
        ],
    );
    env.wait_until("the first runner's groups posted", LONG, || {
        env.hook.count() == 3
    });
    one.wait().unwrap();
    let mut two = detached_runner(
        &format!("cat '{}'; sleep 1.5; exit 1", log.display()),
        B,
        fs::File::create(env.run_log(B)).unwrap().into(),
    );
    let out = finish(watcher, LONG);
    two.wait().unwrap();
    out.code_is(0);
    let s = env.state(B);
    let keys: Vec<&str> = s["subruns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "01-linux",
            "02-windows",
            "03-ubuntu-24.04",
            "04-linux",
            "05-windows",
            "06-ubuntu-24.04"
        ],
        "{}",
        text(&out)
    );
    assert_eq!(env.hook.count(), 6);
}

#[test]
fn a_stale_report_from_an_earlier_run_is_not_counted() {
    let env = Posting::new(vec![]);
    let stale = env.reporter_dir.join("stale.json");
    fs::copy(fixture("mochawesome/login.json"), &stale).unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    env.write_request(B, json!({}));
    start_runner(&env, &env.cypress_command("passing.log", 0));
    assert_final(&env, &watch(&env, &[]), "COMPLETED");
    let text = env.only_post().to_string();
    assert!(!text.contains("rejects a bad password"), "{text}");
}

#[test]
fn a_malformed_report_is_skipped_with_a_warning() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    let broken = env.reporter_dir.join("broken.json");
    start_runner(
        &env,
        &format!(
            "echo '{{\"stats\":' > '{}'; {}",
            broken.display(),
            env.cypress_command("passing.log", 0)
        ),
    );
    let out = watch(&env, &[]);
    assert_final(&env, &out, "COMPLETED");
    assert!(
        text(&out).contains("skipping malformed report") && text(&out).contains("broken.json"),
        "{}",
        text(&out)
    );
}

// ----- categorized runs --------------------------------------------------------------------

#[test]
fn cancelling_a_categorized_run_cancels_its_open_sub_run() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({"categorize": true}));
    start_runner(
        &env,
        &format!("{}; sleep 30; :", env.cypress_output("cut-off.log")),
    );
    env.wait_until("the runner's output", LONG, || {
        fs::read_to_string(env.run_log(B)).is_ok_and(|t| t.contains("(2 of 3)"))
    });
    // A long poll: the watcher is asleep when the cancel and the SIGTERM arrive.
    let watcher = env.spawn(
        "atvm-run-watcher",
        &["--build-name", B, "--poll-seconds", "30"],
    );
    env.wait_until("sub-run 01-linux", LONG, || {
        env.try_state(B)
            .is_some_and(|s| s["subruns"].as_array().is_some_and(|a| !a.is_empty()))
    });
    assert!(
        env.run("cancel-atvm-run-watcher", &["--build-name", B])
            .status
            .success()
    );
    // What systemd does next: SIGTERM.
    std::process::Command::new("kill")
        .args(["-TERM", &watcher.id().to_string()])
        .status()
        .unwrap();
    let s = assert_final(&env, &finish(watcher, LONG), "CANCELLED");
    assert_eq!(s["subruns"][0]["state"], "CANCELLED");
    let sub = testkit::read_json(&env.state_dir(B).join("subruns/01-linux/state.json"));
    assert_eq!(
        (sub["state"].as_str(), sub["final"].as_bool()),
        (Some("CANCELLED"), Some(true))
    );
    assert_eq!(env.hook.count(), 0, "nothing posted");
    assert!(
        env.run("cancel-atvm-runner", &["--build-name", B])
            .status
            .success()
    );
}

/// A runner that prints the three-group fixture one group at a time, waiting for the test's
/// go-ahead files between groups.
fn three_groups_runner(env: &Env, exit: i32) -> String {
    let log = fs::read_to_string(fixture("cypress/categorized-3-groups.log")).unwrap();
    let parts: Vec<&str> = log.split("=== group ").collect();
    let mut cmd = format!("printf '%s' '{}'", parts[0].replace('\'', "'\\''"));
    for (i, part) in parts[1..].iter().enumerate() {
        let file = env.root().join(format!("group{i}.txt"));
        fs::write(&file, format!("=== group {part}")).unwrap();
        if i > 0 {
            let go = env.root().join(format!("go{i}"));
            cmd.push_str(&format!(
                "; while [ ! -e '{}' ]; do sleep 0.05; done",
                go.display()
            ));
        }
        cmd.push_str(&format!("; cat '{}'", file.display()));
    }
    cmd.push_str(&format!("; exit {exit}"));
    cmd
}

#[test]
fn a_categorized_group_whose_cypress_crashed_is_posted_failed() {
    // The linux group's Cypress crashes before its summary; the wrapper goes on with the
    // windows and ubuntu groups and exits 0. The crashed group is not a pass.
    let env = Posting::new(vec![]);
    env.write_request(B, json!({"categorize": true}));
    let log = fs::read_to_string(fixture("cypress/categorized-3-groups.log")).unwrap();
    let cut = log.find("  (Run Finished)").unwrap();
    let rest = log.find("=== group windows").unwrap();
    let crashed = format!(
        "{}\n  Oops...we've encountered an error. Cypress crashed\n\n{}",
        &log[..cut],
        &log[rest..]
    );
    let path = env.root().join("crashed.log");
    fs::write(&path, crashed).unwrap();
    start_runner(&env, &format!("cat '{}'; exit 0", path.display()));
    let out = watch(&env, &["--grace-seconds", "0.2"]);
    let s = assert_final(&env, &out, "FAILED");
    let subs = subrun_rows(&s);
    assert_eq!(
        subs,
        [
            ("01-linux", "FAILED", "posted"),
            ("02-windows", "FAILED", "posted"),
            ("03-ubuntu-24.04", "COMPLETED", "posted"),
        ]
    );
    let first = &env.posts()[0];
    assert!(
        first["text"].as_str().unwrap().contains("linux")
            && first["text"]
                .as_str()
                .unwrap()
                .contains("crashed or was killed"),
        "{first}"
    );
    assert_eq!(env.hook.count(), 3);
}

#[test]
fn categorized_groups_post_one_by_one_while_the_watcher_keeps_going() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({"categorize": true}));
    start_runner(&env, &three_groups_runner(&env, 1));
    let watcher = env.spawn(
        "atvm-run-watcher",
        &["--build-name", B, "--grace-seconds", "0.5"],
    );
    let subruns = env.state_dir(B).join("subruns");
    for (i, key) in ["01-linux", "02-windows"].iter().enumerate() {
        env.wait_until(&format!("the post of sub-run {key}"), LONG, || {
            env.hook.count() == i + 1
        });
        let s = state(&env);
        assert_eq!(s["final"], false, "the parent keeps watching after {key}");
        fs::write(env.root().join(format!("go{}", i + 1)), "").unwrap();
    }
    let out = finish(watcher, LONG);
    let s = assert_final(&env, &out, "FAILED");
    let keys: Vec<&str> = s["subruns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["01-linux", "02-windows", "03-ubuntu-24.04"]);
    let states: Vec<&str> = s["subruns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["COMPLETED", "FAILED", "COMPLETED"]);
    assert_eq!(
        s["post"]["status"], "none",
        "the parent posts nothing itself"
    );
    let groups: Vec<String> = env
        .posts()
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        groups.len(),
        3,
        "one post per group, none from the parent: {groups:#?}"
    );
    assert!(
        groups.iter().all(|t| t.contains("· group `")),
        "{groups:#?}"
    );
    let windows = env.posts()[1].clone();
    assert!(
        windows["text"]
            .as_str()
            .unwrap()
            .starts_with("FAILED · build `e2e-redhat9.6-ubuntu24.04-w2k25-fc` · group `windows`"),
        "{windows}"
    );
    assert_eq!(
        attachment(&windows)["title"],
        "FAILED · e2e-redhat9.6-ubuntu24.04-w2k25-fc · windows"
    );
    assert!(
        field(&windows, "Tests")
            .unwrap()
            .starts_with("4 · passed 3 · failed 1"),
        "{windows}"
    );
    let sub = testkit::read_json(&subruns.join("03-ubuntu-24.04/state.json"));
    assert_eq!(sub["group"], "ubuntu 24.04");
    assert_eq!(sub["final"], true);
}

#[test]
fn categorized_run_that_fails_before_any_group_posts_once_from_the_parent() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({"categorize": true}));
    start_runner(&env, &env.cypress_command("no-specs.log", 1));
    let s = assert_final(&env, &watch(&env, &["--grace-seconds", "0.2"]), "FAILED");
    assert_eq!(s["subruns"], json!([]));
    assert_eq!(env.hook.count(), 1, "the parent posts the runner failure");
}

#[test]
fn categorized_group_cut_off_by_a_kill_is_terminated_not_posted() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({"categorize": true}));
    let cmd = format!("{}; kill -KILL $$", env.cypress_output("cut-off.log"));
    start_runner(&env, &cmd);
    let s = assert_final(
        &env,
        &watch(&env, &["--grace-seconds", "0.2"]),
        "TERMINATED",
    );
    assert_eq!(s["subruns"][0]["key"], "01-linux");
    assert_eq!(s["subruns"][0]["state"], "TERMINATED");
    assert_eq!(env.hook.count(), 0, "nothing posted");
}

// ----- signals, restarts, locks ------------------------------------------------------------

#[test]
fn sigterm_stops_within_a_second_and_a_restart_resumes() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    let go = env.root().join("go");
    let f = fixture("cypress/failing-2-of-20.log").display().to_string();
    start_runner(
        &env,
        &format!(
            "head -c 20000 '{f}'; while [ ! -e '{}' ]; do sleep 0.05; done; tail -c +20001 '{f}'; exit 2",
            go.display()
        ),
    );
    env.wait_until("the runner", LONG, || {
        env.state_dir(B).join("runner/status.json").exists()
    });
    let watcher = env.spawn(
        "atvm-run-watcher",
        &["--build-name", B, "--poll-seconds", "30"],
    );
    env.wait_state(B, "WATCHING", LONG);
    let stopped_at = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &watcher.id().to_string()])
        .status()
        .unwrap();
    let out = finish(watcher, Duration::from_secs(5));
    assert!(
        stopped_at.elapsed() < Duration::from_secs(1),
        "took {:?}",
        stopped_at.elapsed()
    );
    out.code_is(0);
    let s = state(&env);
    assert_eq!(s["state"], "WATCHING");
    assert_eq!(s["final"], false);
    assert!(
        s.get("checkpoint").is_none(),
        "resume data is not in state.json"
    );
    let cp = testkit::read_json(&env.state_dir(B).join("watcher/checkpoint.json"));
    let offset = cp["follow"]["offset"].as_u64().unwrap() as usize;
    // The runner stopped mid-line after 20,000 bytes: the checkpoint holds no half line, it
    // points at that line's start to read it again.
    let log = fs::read(env.run_log(B)).unwrap();
    assert!(
        (19_000..=20_000).contains(&offset) && log[offset - 1] == b'\n',
        "the read position was saved at a line start: {offset}"
    );
    assert!(!cp.to_string().contains("partial"), "{cp}");
    fs::write(&go, "").unwrap();
    let s = assert_final(&env, &watch(&env, &[]), "FAILED");
    assert_eq!(
        s["counts"]["tests"], 40,
        "resumed mid-log with the parser's state"
    );
}

#[test]
fn once_evaluates_and_exits() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    start_runner(&env, "echo '  (Run Starting)'; sleep 30; :");
    env.wait_until("the runner", LONG, || {
        env.state_dir(B).join("runner/status.json").exists()
    });
    let out = watch(&env, &["--once"]);
    out.succeeds();
    assert_eq!(state(&env)["state"], "WATCHING");
}

#[test]
fn a_second_watcher_for_the_same_build_exits_4() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    let first = env.spawn("atvm-run-watcher", &["--build-name", B]);
    env.wait_until("the first watcher", LONG, || env.try_state(B).is_some());
    let out = watch(&env, &[]);
    out.code_is(4);
    out.said("watcher.lock");
    std::process::Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    finish(first, LONG);
}

#[test]
fn a_corrupt_state_file_is_reported_by_name_and_kept() {
    let env = Posting::new(vec![]);
    env.write_request(B, json!({}));
    fs::write(env.state_dir(B).join("state.json"), "{ half written").unwrap();
    let out = watch(&env, &[]);
    out.code_is(1);
    out.said("state.json");
    assert_eq!(
        fs::read_to_string(env.state_dir(B).join("state.json")).unwrap(),
        "{ half written"
    );
}

#[test]
fn missing_request_and_missing_webhook_are_clear_errors() {
    let env = Env::new();
    let out = watch(&env, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("request.json") && text(&out).contains("start-atvm-run-watcher"),
        "{}",
        text(&out)
    );
    env.write_request(B, json!({}));
    let out = watch(&env, &[]);
    out.code_is(78);
    out.said(&env.env_file.display().to_string());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn a_webhook_that_is_not_a_url_is_refused_and_never_shown() {
    // A common slip: only the key pasted, or the scheme left out. Nothing can be told
    // apart from the key then, so nothing of the value may be printed or stored.
    let key = "zhre8c2t6begdx3kqf9wmy4una";
    for value in [key.to_string(), format!("chat.example.com/hooks/{key}")] {
        let mut env = Env::new();
        env.write_request(B, json!({}));
        env.set("MATTERMOST_ATVM_WEBHOOK", value.as_str());
        let out = watch(&env, &[]);
        out.code_is(78)
            .error_line(
                "atvm-run-watcher",
                "MATTERMOST_ATVM_WEBHOOK does not start with https://",
            )
            .never_said(&key[..8]);
        env.run("atvm-run-watcher", &["--test-post"])
            .code_is(78)
            .never_said(&key[..8]);
        env.run(
            "start-atvm-run",
            &["--build-name", "e2e-other", "--runner-command", "true"],
        )
        .code_is(78)
        .never_said(&key[..8]);
        assert!(env.files_containing(&key[..8]).is_empty());
        assert!(
            !env.systemctl_calls().contains("start "),
            "{}",
            env.systemctl_calls()
        );
    }
}

// ----- Mattermost delivery -----------------------------------------------------------------

fn with_webhook(env: &mut Env, hook: &FakeWebhook) {
    env.set("MATTERMOST_ATVM_WEBHOOK", hook.url());
    env.set("MATTERMOST_ATVM_CHANNEL", "qa-results");
}

fn completed_run(env: &Env) {
    env.write_request(B, json!({"scope_description": "@channel nightly **matrix** @here", "config_family": "redhat @all"}));
    start_runner(env, &env.cypress_command("passing.log", 0));
}

fn assert_no_secret(env: &Env, hook: &FakeWebhook, out: &Output) {
    assert!(
        !text(out).contains(hook.secret()),
        "secret in output: {}",
        text(out)
    );
    let files = env.files_containing(hook.secret());
    assert!(files.is_empty(), "secret stored in {files:?}");
}

#[test]
fn delivered_once_with_the_expected_payload() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    with_webhook(&mut env, &hook);
    completed_run(&env);
    let out = watch(&env, &[]);
    let s = assert_final(&env, &out, "COMPLETED");
    assert_eq!(s["post"]["status"], "posted");
    assert_eq!(s["post"]["attempts"], 1);
    assert!(env.state_dir(B).join("posted.marker").exists());
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, format!("/hooks/{}", hook.secret()));
    let body = reqs[0].json();
    assert_eq!(body["username"], "atvm-watcher");
    assert_eq!(body["channel"], "qa-results");
    // Options are Markdown field values: in code, where nothing is a mention or formatting.
    assert_eq!(
        field(&body, "Scope").as_deref(),
        Some("`@channel nightly **matrix** @here`")
    );
    assert_eq!(
        field(&body, "Config family").as_deref(),
        Some("`redhat @all`")
    );
    assert!(!body["text"].as_str().unwrap().contains('@'), "{body}");
    assert!(reqs[0].body.chars().count() < 16_000);
    assert_no_secret(&env, &hook, &out);
    // A restarted watcher finds the run final and posted: no second post.
    let again = watch(&env, &[]);
    assert!(again.status.success(), "{}", testkit::text(&again));
    assert_eq!(hook.requests().len(), 1);
}

#[test]
fn server_errors_are_retried_until_ok() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![Reply::status(500, "oops"), Reply::status(503, "busy")]);
    with_webhook(&mut env, &hook);
    completed_run(&env);
    let out = watch(&env, &[]);
    let s = assert_final(&env, &out, "COMPLETED");
    assert_eq!(s["post"]["status"], "posted");
    assert_eq!(s["post"]["attempts"], 3);
    assert_eq!(
        hook.requests().len(),
        3,
        "two refused attempts and one delivery"
    );
    assert_eq!(
        hook.texts()
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1,
        "the same message each time"
    );
    assert_no_secret(&env, &hook, &out);
}

#[test]
fn retry_after_is_honoured() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![Reply::Status {
        code: 429,
        body: "slow down".into(),
        retry_after: Some(1),
    }]);
    with_webhook(&mut env, &hook);
    completed_run(&env);
    let out = watch(&env, &[]);
    assert_final(&env, &out, "COMPLETED");
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs[1].at.duration_since(reqs[0].at) >= Duration::from_millis(950),
        "waited {:?}",
        reqs[1].at.duration_since(reqs[0].at)
    );
}

#[test]
fn a_client_error_is_permanent_and_exits_1() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![Reply::status(
        400,
        &format!(
            "{{\"message\":\"Invalid webhook /hooks/{}\"}}",
            "s3cr3t-echo"
        ),
    )]);
    with_webhook(&mut env, &hook);
    completed_run(&env);
    let out = watch(&env, &[]);
    out.code_is(1);
    let s = state(&env);
    assert_eq!(s["state"], "COMPLETED");
    assert_eq!(s["post"]["status"], "failed");
    assert_eq!(s["post"]["attempts"], 1);
    let err = s["post"]["last_error"].as_str().unwrap();
    assert!(
        err.contains("HTTP 400") && err.contains(&hook.host()),
        "{err}"
    );
    assert_eq!(hook.requests().len(), 1, "no retry");
    assert!(!env.state_dir(B).join("posted.marker").exists());
    assert_no_secret(&env, &hook, &out);
    // A permanent failure is final: a restart (by hand, or after a reboot) never re-sends
    // it — the server would refuse it again, or worse, take it twice.
    for _ in 0..2 {
        let again = watch(&env, &[]);
        again.code_is(1);
        assert!(
            text(&again).contains("HTTP 400") && text(&again).contains("never sent again"),
            "{}",
            text(&again)
        );
    }
    assert_eq!(state(&env)["post"]["status"], "failed");
    assert_eq!(hook.requests().len(), 1, "sent once, never again");
}

#[test]
fn a_200_without_ok_is_not_delivered() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![Reply::status(200, "<html>captive portal</html>")]);
    with_webhook(&mut env, &hook);
    completed_run(&env);
    let out = watch(&env, &[]);
    out.code_is(1);
    let s = state(&env);
    assert_eq!(s["post"]["status"], "failed");
    assert!(
        s["post"]["last_error"]
            .as_str()
            .unwrap()
            .contains("without `ok`"),
        "{s}"
    );
    assert!(!env.state_dir(B).join("posted.marker").exists());
}

#[test]
fn a_server_that_never_answers_fails_within_the_window() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![Reply::Silent; 20]);
    with_webhook(&mut env, &hook);
    completed_run(&env);
    let started = Instant::now();
    let out = watch(&env, &["--post-retry-seconds", "2"]);
    out.code_is(1);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "bounded: {:?}",
        started.elapsed()
    );
    let s = state(&env);
    assert_eq!(s["post"]["status"], "failed");
    assert!(
        s["post"]["last_error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("timeout"),
        "{s}"
    );
    assert_no_secret(&env, &hook, &out);
}

#[test]
fn a_cancel_during_retries_stops_them() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![Reply::status(500, "down"); 1000]);
    with_webhook(&mut env, &hook);
    completed_run(&env);
    let watcher = env.spawn(
        "atvm-run-watcher",
        &["--build-name", B, "--post-retry-seconds", "60"],
    );
    env.wait_until("a first attempt", LONG, || !hook.requests().is_empty());
    let out = env.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    let out = finish(watcher, LONG);
    out.code_is(0);
    let s = state(&env);
    assert_eq!(s["state"], "CANCELLED");
    assert_eq!(s["post"]["status"], "suppressed");
    let n = hook.requests().len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hook.requests().len(), n, "no attempts after the cancel");
}

#[test]
fn test_post_sends_one_labelled_message() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    with_webhook(&mut env, &hook);
    let out = env.run("atvm-run-watcher", &["--test-post"]);
    out.succeeds();
    assert_eq!(hook.requests().len(), 1);
    assert!(
        hook.texts()[0].contains("ATVM watcher test message"),
        "{:?}",
        hook.texts()
    );
    assert!(
        text(&out).contains(&hook.host()) && !text(&out).contains(hook.secret()),
        "{}",
        text(&out)
    );
}

#[test]
fn the_webhook_can_come_from_the_env_file() {
    let env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    fs::write(
        &env.env_file,
        format!("MATTERMOST_ATVM_WEBHOOK=\"{}\"\n", hook.url()),
    )
    .unwrap();
    let out = env.run("atvm-run-watcher", &["--test-post"]);
    out.succeeds();
    assert_eq!(hook.requests().len(), 1);
}

// ----- boot resume ---------------------------------------------------------------------------

/// A runner status as run-atvm-runner writes it, for a run of an earlier boot: its pid and
/// start time are those of a process that is alive now (pid 1), as can happen after a
/// reboot, so only the boot id tells it is not that run's runner.
fn status_from_an_earlier_boot(env: &Env, build: &str, run_id: &str) {
    let stat = fs::read_to_string("/proc/1/stat").unwrap();
    let ticks: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let dir = env.state_dir(build).join("runner");
    fs::create_dir_all(&dir).unwrap();
    let status = json!({
        "build_name": build, "run_id": run_id, "start_id": "s1",
        "pid": 1, "pid_start_ticks": ticks, "child_pid": 2,
        "started_at": testkit::now_rfc3339(),
        "started_boot": {"boot_id": "0".repeat(32), "ns": 1},
        "log_path": env.run_log(build), "log_inode": 1, "log_dev": 1,
    });
    fs::write(dir.join("status.json"), status.to_string()).unwrap();
}

#[test]
fn after_a_reboot_resume_all_ends_open_runs_in_their_true_state_and_delivers_owed_posts() {
    let p = Posting::new(vec![]);
    // A run that was being watched when the machine went down.
    let open = "e2e-resume-open";
    let run_id = p.write_request(open, json!({}));
    status_from_an_earlier_boot(&p, open, &run_id);
    fs::write(
        p.state_dir(open).join("state.json"),
        json!({"build_name": open, "run_id": run_id, "state": "WATCHING", "final": false,
               "reason": "running spec 3 of 20", "updated_at": testkit::now_rfc3339(),
               "counts": null, "post": {"status": "none", "attempts": 0, "last_error": null}})
        .to_string(),
    )
    .unwrap();
    // A run that ended and was reported: left alone.
    let done = "e2e-resume-done";
    let done_id = p.write_request(done, json!({}));
    let done_state = json!({"build_name": done, "run_id": done_id, "state": "COMPLETED",
        "final": true, "reason": "all specs passed", "updated_at": testkit::now_rfc3339(),
        "counts": null, "post": {"status": "posted", "attempts": 1, "last_error": null}});
    fs::write(p.state_dir(done).join("state.json"), done_state.to_string()).unwrap();

    // A run that ended and whose post was still owed when the machine went down.
    let owed = "e2e-resume-owed";
    let owed_id = p.write_request(owed, json!({}));
    fs::write(
        p.state_dir(owed).join("state.json"),
        json!({"build_name": owed, "run_id": owed_id, "state": "FAILED", "final": true,
               "reason": "runner exited with code 2", "updated_at": testkit::now_rfc3339(),
               "counts": null, "post": {"status": "pending", "attempts": 1, "last_error": null}})
        .to_string(),
    )
    .unwrap();

    let out = p.run("atvm-run-watcher", &["--resume-all"]);
    out.succeeds();
    assert!(text(&out).contains(&format!("atvm-run-watcher@{open}.service")));
    assert!(text(&out).contains(&format!(
        "atvm-run-watcher@{owed}.service (a post is still owed)"
    )));
    out.never_said(done);
    p.wait_until("the owed post", LONG, || p.hook.count() == 1);
    p.wait_unit_inactive(&format!("atvm-run-watcher@{owed}.service"), LONG);
    assert_eq!(p.state(owed)["post"]["status"], "posted");
    assert!(
        p.posts()[0].to_string().contains(&owed_id),
        "the owed FAILED post, with its run id"
    );
    let s = p.wait_final(open, LONG);
    assert_eq!(s["state"], "TERMINATED", "{s}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("the machine rebooted while the runner (pid 1) ran"),
        "pid 1 of this boot is not the run's runner: {s}"
    );
    p.wait_unit_inactive(&format!("atvm-run-watcher@{open}.service"), LONG);
    assert_eq!(p.hook.count(), 1, "TERMINATED is never posted");
    assert_eq!(p.state(done), done_state, "a reported run is not touched");
    // Resuming again finds nothing to do.
    let again = p.run("atvm-run-watcher", &["--resume-all"]);
    assert!(
        again.status.success() && !text(&again).contains("resumed"),
        "{}",
        text(&again)
    );
}
