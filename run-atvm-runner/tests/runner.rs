//! The runner end to end: start-atvm-runner writes the spec and starts the unit (the fake
//! systemctl runs the rendered ExecStart, i.e. run-atvm-runner), cancel-atvm-runner stops it.

#![allow(clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use serde_json::Value;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Output;
use std::time::Duration;
use testkit::{Env, Expect, finish, text};

const B: &str = "e2e-redhat9.6-ubuntu24.04-w2k25-fc";
const UNIT: &str = "atvm-runner@e2e-redhat9.6-ubuntu24.04-w2k25-fc.service";
const WAIT: Duration = Duration::from_secs(20);

fn start(env: &Env, command: &str) {
    let out = env.run(
        "start-atvm-runner",
        &["--build-name", B, "--runner-command", command],
    );
    assert!(
        out.status.success(),
        "start-atvm-runner failed: {}",
        text(&out)
    );
}

fn wait_exit(env: &Env) -> Value {
    let mut status = Value::Null;
    env.wait_until("the runner's exit record", WAIT, || {
        status = fs::read_to_string(env.state_dir(B).join("runner/status.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        !status["exited_at"].is_null()
    });
    status
}

fn wait_started(env: &Env) -> Value {
    let mut status = Value::Null;
    env.wait_until("the runner's start record", WAIT, || {
        status = fs::read_to_string(env.state_dir(B).join("runner/status.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        status["pid"].as_u64().is_some_and(|p| p > 0)
    });
    status
}

/// A systemctl that reports every unit inactive and does nothing else, so run-atvm-runner
/// can be run by the test itself (to see its own exit code).
fn manual_systemctl(env: &mut Env) {
    let fake = env.script(
        "noop-systemctl",
        "case \"$1\" in is-active) echo inactive; exit 3;; esac\nexit 0",
    );
    env.set("ATVM_SYSTEMCTL", fake.display().to_string());
}

/// With [`manual_systemctl`]: start-atvm-runner records the spec and waits for the wrapper
/// to confirm, while the test plays systemd and runs the wrapper itself once the spec is
/// there. Returns the starter, to be finished after the wrapper ran.
fn start_by_hand(env: &Env, args: &[&str]) -> std::process::Child {
    let spec = env.state_dir(B).join("runner/spec.json");
    let _ = fs::remove_file(&spec);
    let mut full = vec!["--build-name", B];
    full.extend_from_slice(args);
    let starter = env.spawn("start-atvm-runner", &full);
    env.wait_until("the runner spec", WAIT, || spec.exists());
    starter
}

/// [`start_by_hand`] for `command`, then the wrapper; both outputs.
fn run_by_hand(env: &Env, command: &str) -> (Output, Output) {
    let starter = start_by_hand(env, &["--runner-command", command]);
    let wrapper = env.run("run-atvm-runner", &["--build-name", B]);
    (wrapper, finish(starter, WAIT))
}

#[test]
fn exit_zero_is_recorded_with_pid_log_inode_and_output() {
    let env = Env::new();
    start(&env, "echo hello from cypress; echo on stderr >&2; exit 0");
    let status = wait_exit(&env);
    assert_eq!(status["exit_code"], 0);
    assert!(status["signal"].is_null() && status["stop_signal"].is_null());
    assert_eq!(status["cancel_requested"], false);
    assert!(status["pid"].as_u64().unwrap() > 0 && status["pid_start_ticks"].as_u64().unwrap() > 0);
    assert!(status["child_pid"].as_u64().unwrap() > 0);
    let log = env.run_log(B);
    assert_eq!(status["log_path"], log.display().to_string());
    assert_eq!(
        status["log_inode"].as_u64().unwrap(),
        fs::metadata(&log).unwrap().ino()
    );
    let logged = fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("hello from cypress") && logged.contains("on stderr"),
        "{logged}"
    );
    let spec = env.state_dir(B).join("runner/spec.json");
    assert_eq!(
        fs::metadata(&spec).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        env.systemctl_calls()
            .contains(&format!("reset-failed {UNIT}\nstart {UNIT}")),
        "{}",
        env.systemctl_calls()
    );
}

#[test]
fn the_wrapper_exits_with_the_commands_code() {
    let mut env = Env::new();
    manual_systemctl(&mut env);
    let (out, starter) = run_by_hand(&env, "echo failing; exit 7");
    out.code_is(7);
    assert_eq!(env.status(B)["exit_code"], 7);
    assert!(starter.status.success(), "confirmed: {}", text(&starter));

    let (out, _) = run_by_hand(&env, "kill -KILL $$");
    assert_eq!(out.status.code(), Some(128 + 9), "{}", text(&out));
    let status = env.status(B);
    assert_eq!(status["signal"], 9);
    assert!(status["exit_code"].is_null());
}

#[test]
fn child_killed_by_sigkill_from_outside_records_the_signal() {
    let env = Env::new();
    start(&env, "sleep 30; :");
    let status = wait_started(&env);
    let child = status["child_pid"].as_i64().unwrap();
    // SAFETY-free: use kill(1) on the child's process group.
    let out = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{child}")])
        .output()
        .unwrap();
    out.succeeds();
    let status = wait_exit(&env);
    assert_eq!(status["signal"], 9);
    assert!(status["exit_code"].is_null() && status["stop_signal"].is_null());
    assert_eq!(status["cancel_requested"], false);
}

#[test]
fn wrapper_killed_by_sigkill_leaves_no_exit_record() {
    let env = Env::new();
    start(&env, "sleep 30; :");
    let status = wait_started(&env);
    let wrapper = status["pid"].as_u64().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-KILL", &wrapper])
        .status()
        .unwrap();
    env.wait_unit_inactive(UNIT, WAIT);
    let status = env.status(B);
    assert!(
        status["exited_at"].is_null(),
        "no exit can be recorded by a killed wrapper: {status}"
    );
    // Clean up the orphaned command.
    let child = status["child_pid"].as_i64().unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{child}")])
        .status();
}

#[test]
fn cancel_records_the_request_then_stops_the_unit() {
    let env = Env::new();
    start(&env, "echo started; sleep 30; :");
    wait_started(&env);
    let out = env.run("cancel-atvm-runner", &["--build-name", B]);
    out.succeeds();
    out.said("cancelled");
    let status = wait_exit(&env);
    assert_eq!(status["cancel_requested"], true);
    assert!(!status["cancel_requested_at"].is_null());
    assert_eq!(
        status["stop_signal"], 15,
        "the stop reached the wrapper, which forwarded it"
    );
    assert_eq!(status["signal"], 15, "the command's group got SIGTERM");
    env.wait_unit_inactive(UNIT, WAIT);
    // Cancelling again, with nothing running, is fine and says so.
    let out = env.run("cancel-atvm-runner", &["--build-name", B]);
    assert!(out.status.success());
    out.said("nothing to cancel");
}

#[test]
fn a_stop_without_cancel_is_recorded_as_a_stop_signal() {
    let env = Env::new();
    start(&env, "sleep 30; :");
    wait_started(&env);
    let out = std::process::Command::new(&env.systemctl)
        .args(["stop", UNIT])
        .env("FAKE_SYSTEMD_UNITS", &env.units_dir)
        .env("FAKE_SYSTEMD_STATE", &env.systemd_dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let status = wait_exit(&env);
    assert_eq!(status["stop_signal"], 15);
    assert_eq!(status["cancel_requested"], false);
}

#[test]
fn start_is_refused_while_the_runner_is_active() {
    let env = Env::new();
    start(&env, "sleep 30; :");
    wait_started(&env);
    let out = env.run(
        "start-atvm-runner",
        &["--build-name", B, "--runner-command", "true"],
    );
    out.code_is(4);
    out.said(UNIT);
}

#[test]
fn previous_log_is_rotated_to_dot_one() {
    let env = Env::new();
    fs::write(env.run_log(B), "previous run's output\n").unwrap();
    start(&env, "echo this run");
    wait_exit(&env);
    assert_eq!(
        fs::read_to_string(env.log_dir.join(format!("{B}.log.1"))).unwrap(),
        "previous run's output\n"
    );
    assert_eq!(fs::read_to_string(env.run_log(B)).unwrap(), "this run\n");
}

#[test]
fn a_symlink_planted_at_the_log_path_is_refused_and_never_written_through() {
    let mut env = Env::new();
    manual_systemctl(&mut env);
    let target = env.root().join("etc-passwd-stand-in");
    fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, env.run_log(B)).unwrap();
    let (out, starter) = run_by_hand(&env, "echo pwned");
    out.code_is(1);
    let msg = text(&out);
    assert!(
        msg.contains("symbolic link") && msg.contains(&env.run_log(B).display().to_string()),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    assert!(
        fs::symlink_metadata(env.run_log(B))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // Nothing ran, and the refusal is on record for the watcher and the start helper.
    let status = env.status(B);
    assert!(
        status["refused"]
            .as_str()
            .is_some_and(|r| r.contains(&env.run_log(B).display().to_string())),
        "{status}"
    );
    assert_eq!(status["child_pid"], 0);
    starter.code_is(5);
    assert!(
        text(&starter).contains("symbolic link") && text(&starter).contains("atvm-runner@"),
        "{}",
        text(&starter)
    );
}

#[test]
fn a_group_writable_spec_is_refused() {
    let mut env = Env::new();
    manual_systemctl(&mut env);
    let starter = start_by_hand(&env, &["--runner-command", "echo hi"]);
    let spec = env.state_dir(B).join("runner/spec.json");
    fs::set_permissions(&spec, fs::Permissions::from_mode(0o660)).unwrap();
    let out = env.run("run-atvm-runner", &["--build-name", B]);
    assert_eq!(finish(starter, WAIT).status.code(), Some(5));
    out.code_is(1);
    assert!(
        text(&out).contains("group- or world-writable")
            && text(&out).contains(&spec.display().to_string()),
        "{}",
        text(&out)
    );
    assert!(!env.run_log(B).exists(), "no log was created");
}

#[test]
fn a_missing_spec_names_the_file_and_the_fix() {
    let env = Env::new();
    let out = env.run("run-atvm-runner", &["--build-name", B]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("spec.json") && text(&out).contains("start-atvm-runner"),
        "{}",
        text(&out)
    );
}

#[test]
fn fifty_megabytes_of_output_are_logged_completely() {
    let mut env = Env::new();
    manual_systemctl(&mut env);
    let (out, _) = run_by_hand(
        &env,
        "dd if=/dev/zero bs=1048576 count=50 2>/dev/null | tr '\\0' x; echo; echo tail-marker",
    );
    out.succeeds();
    let log = env.run_log(B);
    assert_eq!(
        fs::metadata(&log).unwrap().len(),
        50 * 1024 * 1024 + 1 + "tail-marker\n".len() as u64
    );
}

#[test]
fn the_webhook_secret_never_reaches_the_command() {
    let mut env = Env::new();
    manual_systemctl(&mut env);
    env.set(
        "MATTERMOST_ATVM_WEBHOOK",
        "http://127.0.0.1:9/hooks/never-leak-this",
    );
    let (out, _) = run_by_hand(&env, "echo \"webhook=${MATTERMOST_ATVM_WEBHOOK:-unset}\"");
    out.succeeds();
    assert_eq!(
        fs::read_to_string(env.run_log(B)).unwrap(),
        "webhook=unset\n"
    );
}

#[test]
fn the_command_runs_in_its_workdir_in_its_own_process_group() {
    let mut env = Env::new();
    manual_systemctl(&mut env);
    let workdir = env.root().join("work here");
    fs::create_dir(&workdir).unwrap();
    let starter = start_by_hand(
        &env,
        &[
            "--runner-command",
            "pwd; ps -o pgid= -p $$ | tr -d ' '; echo $$",
            "--workdir",
            workdir.to_str().unwrap(),
        ],
    );
    assert!(
        env.run("run-atvm-runner", &["--build-name", B])
            .status
            .success()
    );
    assert!(finish(starter, WAIT).status.success());
    let log = fs::read_to_string(env.run_log(B)).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], workdir.display().to_string());
    assert_eq!(
        lines[1], lines[2],
        "the shell leads its own process group: {log}"
    );
}

#[test]
fn bad_build_names_touch_nothing() {
    let env = Env::new();
    for bad in ["../x", "a/b", "", "-x", "a..b", "ünï", &"x".repeat(129)] {
        for tool in ["start-atvm-runner", "run-atvm-runner", "cancel-atvm-runner"] {
            let out = env.run(
                tool,
                &["--build-name", bad, "--runner-command", "true"]
                    [..if tool == "start-atvm-runner" { 4 } else { 2 }],
            );
            assert_eq!(out.status.code(), Some(2), "{tool} {bad:?}: {}", text(&out));
            assert_eq!(
                String::from_utf8_lossy(&out.stderr).lines().count(),
                1,
                "one line: {}",
                text(&out)
            );
        }
    }
    assert_eq!(
        fs::read_dir(&env.state_root).unwrap().count(),
        0,
        "nothing created"
    );
    assert_eq!(env.systemctl_calls(), "", "systemctl never called");
}

#[test]
fn a_second_wrapper_of_a_live_start_is_refused_and_touches_nothing() {
    let env = Env::new();
    env.write_request(B, serde_json::json!({}));
    start(&env, "echo first; sleep 3; exit 0");
    let live = wait_started(&env);
    let status_path = env.state_dir(B).join("runner/status.json");
    let before = fs::read_to_string(&status_path).unwrap();
    let log_inode = fs::metadata(env.run_log(B)).unwrap().ino();
    let out = env.run("run-atvm-runner", &["--build-name", B]);
    out.code_is(4).error_line(
        "run-atvm-runner",
        &format!("another wrapper (pid {})", live["pid"]),
    );
    assert_eq!(
        fs::read_to_string(&status_path).unwrap(),
        before,
        "status untouched"
    );
    assert_eq!(
        fs::metadata(env.run_log(B)).unwrap().ino(),
        log_inode,
        "log not rotated"
    );
    assert!(!env.log_dir.join(format!("{B}.log.1")).exists());
    wait_exit(&env);
}

/// A stop that comes after the command exited by itself — while the wrapper waits out a
/// leftover process that still holds the output pipe — stopped nothing: the exit is the
/// command's own, not a stop (which would make the run TERMINATED and unposted).
#[test]
fn a_stop_after_the_command_exited_is_not_recorded_as_a_stop() {
    let env = Env::new();
    let fixture = testkit::fixture("cypress/failing-2-of-20.log");
    start(
        &env,
        &format!("(exec sleep 5 &); cat '{}'; exit 2", fixture.display()),
    );
    let status = wait_started(&env);
    let size = fs::metadata(&fixture).unwrap().len();
    env.wait_until("the command's last output", WAIT, || {
        fs::metadata(env.run_log(B)).is_ok_and(|m| m.len() == size)
    });
    // The command is gone; the wrapper drains the pipe the leftover holds.
    std::thread::sleep(Duration::from_millis(200));
    let pid = status["pid"].as_u64().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_exit(&env);
    assert_eq!(status["exit_code"], 2, "{status:#}");
    assert!(status["stop_signal"].is_null(), "{status:#}");
}

/// With the state's file system full when the command exits, the exit record waits for
/// room instead of being lost (the run would end TERMINATED and never be posted).
#[test]
fn an_exit_record_waits_out_a_full_state_file_system() {
    let env = Env::new();
    let Some(disk) = testkit::SmallDisk::mount(&env.state_root, "1m") else {
        return;
    };
    let go = env.root().join("go");
    start(
        &env,
        &format!(
            "while [ ! -e '{}' ]; do sleep 0.05; done; exit 2",
            go.display()
        ),
    );
    wait_started(&env);
    disk.fill();
    fs::write(&go, "").unwrap();
    // The record cannot be written yet; the wrapper keeps trying.
    std::thread::sleep(Duration::from_millis(1500));
    let status: Value = serde_json::from_str(
        &fs::read_to_string(env.state_dir(B).join("runner/status.json")).unwrap(),
    )
    .unwrap();
    assert!(status["exited_at"].is_null(), "{status:#}");
    disk.free();
    let status = wait_exit(&env);
    assert_eq!(status["exit_code"], 2, "{status:#}");
}

/// The timeline (on the state's file system) that could not be written for a moment is
/// written again afterwards: its record of the command's output resumes, on a line of its
/// own, so a long run does not look silent to the hang rule.
#[test]
fn the_timeline_resumes_after_the_state_file_system_was_full() {
    let env = Env::new();
    let Some(disk) = testkit::SmallDisk::mount(&env.state_root, "1m") else {
        return;
    };
    let (one, two) = (env.root().join("one"), env.root().join("two"));
    let wait =
        |f: &std::path::Path| format!("while [ ! -e '{}' ]; do sleep 0.02; done", f.display());
    start(
        &env,
        &format!("{}; echo one; {}; echo two; exit 0", wait(&one), wait(&two)),
    );
    wait_started(&env);
    disk.fill();
    fs::write(&one, "").unwrap();
    env.wait_until("the first output", WAIT, || {
        fs::read_to_string(env.run_log(B)).is_ok_and(|l| l.contains("one"))
    });
    std::thread::sleep(Duration::from_millis(200));
    disk.free();
    fs::write(&two, "").unwrap();
    wait_exit(&env);
    let timeline = fs::read_to_string(env.state_dir(B).join("runner/timeline.jsonl")).unwrap();
    let outputs = timeline
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "output")
        .count();
    assert_eq!(outputs, 1, "the second output is recorded: {timeline:?}");
}
