//! start-atvm-run through its binary: the synchronous template step and what it refuses
//! before starting anything. (The whole run, through to Mattermost, is in the test kit's
//! lifecycle tests.)

#![allow(clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::fs;
use testkit::{Env, Expect, FakeWebhook, text};

const B: &str = "e2e-redhat9.6-ubuntu24.04-w2k25-fc";
const WATCHER_UNIT: &str = "atvm-run-watcher@e2e-redhat9.6-ubuntu24.04-w2k25-fc.service";
const RUNNER_UNIT: &str = "atvm-runner@e2e-redhat9.6-ubuntu24.04-w2k25-fc.service";

fn setup() -> (Env, FakeWebhook) {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    env.set("MATTERMOST_ATVM_WEBHOOK", hook.url());
    (env, hook)
}

fn start_run(
    env: &Env,
    template: &str,
    runner_command: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "--build-name",
        B,
        "--template-command",
        template,
        "--runner-command",
        runner_command,
    ];
    args.extend_from_slice(extra);
    env.run("start-atvm-run", &args)
}

#[test]
fn a_failed_template_step_starts_nothing() {
    let (env, hook) = setup();
    let out = start_run(
        &env,
        "for i in $(seq 1 30); do echo template line $i; done; exit 2",
        "true",
        &[],
    );
    out.code_is(3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let launch_log = env.log_dir.join(format!("{B}.launch.log"));
    assert!(
        stderr.contains(&launch_log.display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains("template line 11\n") && stderr.contains("template line 30\n"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("template line 10\n"),
        "only the last 20 lines: {stderr}"
    );
    assert!(stderr.contains("exit status 2"), "{stderr}");
    assert!(
        !env.state_dir(B).exists(),
        "no state directory left half-made"
    );
    assert!(
        !env.systemctl_calls().contains("start "),
        "{}",
        env.systemctl_calls()
    );
    assert!(hook.requests().is_empty());
}

#[test]
fn the_template_step_runs_in_the_automation_root_before_anything_starts() {
    let (env, _hook) = setup();
    // The template step sees no state directory and no started unit: it runs first.
    let probe = format!(
        "pwd; [ -e '{}' ] && echo state-exists; cat '{}' 2>/dev/null | grep -c start || true",
        env.state_dir(B).display(),
        env.systemd_dir.join("calls.log").display()
    );
    let out = start_run(&env, &probe, "sleep 30; :", &[]);
    out.succeeds();
    let launch = fs::read_to_string(env.log_dir.join(format!("{B}.launch.log"))).unwrap();
    assert_eq!(
        launch,
        format!("{}\n0\n", env.automation_root.display()),
        "{launch}"
    );
    env.cancel_run(B);
}

#[test]
fn dry_run_prints_the_plan_and_touches_nothing() {
    let (env, _hook) = setup();
    let out = start_run(
        &env,
        "echo selecting specs",
        "npx cypress run",
        &["--dry-run"],
    );
    out.succeeds();
    let plan = text(&out);
    assert!(
        plan.contains("template step") && plan.contains(WATCHER_UNIT) && plan.contains(RUNNER_UNIT),
        "{plan}"
    );
    assert!(!env.state_dir(B).exists());
    // It asks whether the units run (a real start would refuse then), and changes nothing.
    assert!(
        env.systemctl_calls()
            .lines()
            .all(|call| call.starts_with("is-active ")),
        "{}",
        env.systemctl_calls()
    );
    assert!(!env.log_dir.join(format!("{B}.launch.log")).exists());
}

#[test]
fn a_missing_webhook_is_reported_before_the_template_step_runs() {
    let env = Env::new();
    let out = start_run(&env, "echo selecting specs", "true", &[]);
    out.code_is(78);
    let msg = text(&out);
    assert!(
        msg.contains("MATTERMOST_ATVM_WEBHOOK")
            && msg.contains(&env.env_file.display().to_string()),
        "{msg}"
    );
    assert!(!env.log_dir.join(format!("{B}.launch.log")).exists());
}

#[test]
fn a_symlink_at_the_launch_log_is_refused_and_nothing_starts() {
    let (env, hook) = setup();
    let target = env.root().join("precious");
    fs::write(&target, "keep me\n").unwrap();
    std::os::unix::fs::symlink(&target, env.log_dir.join(format!("{B}.launch.log"))).unwrap();
    let out = start_run(&env, "echo pwned", "true", &[]);
    out.code_is(1);
    out.said("symbolic link");
    assert_eq!(fs::read_to_string(&target).unwrap(), "keep me\n");
    assert!(!env.state_dir(B).exists());
    assert!(
        !env.systemctl_calls().contains("start "),
        "{}",
        env.systemctl_calls()
    );
    assert!(hook.requests().is_empty());
}

#[test]
fn an_empty_runner_command_is_a_usage_error() {
    let (env, _hook) = setup();
    let out = start_run(&env, "echo selecting specs", "  ", &[]);
    out.code_is(2);
    assert!(
        !env.log_dir.join(format!("{B}.launch.log")).exists(),
        "the template step did not run"
    );
}

#[test]
fn a_runner_workdir_that_cannot_be_used_is_refused_before_the_template_step() {
    let (mut env, hook) = setup();
    // An earlier run of the build, which a start would archive.
    let earlier = env.write_request(B, serde_json::json!({}));
    let ran = env.root().join("template-ran");
    let template = format!("touch '{}'", ran.display());
    let missing = env.root().join("no-such-dir");
    let file = env.root().join("a-file");
    fs::write(&file, "").unwrap();
    let refused = |env: &Env, extra: &[&str], dir: &std::path::Path, why: &str| {
        let out = start_run(env, &template, "true", extra);
        assert_eq!(out.status.code(), Some(5), "{extra:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("{why} ({})", dir.display())),
            "{stderr}"
        );
    };
    for (dir, why) in [(&missing, "does not exist"), (&file, "is not a directory")] {
        for dry_run in [&[][..], &["--dry-run"][..]] {
            let mut extra = vec!["--workdir", dir.to_str().unwrap()];
            extra.extend_from_slice(dry_run);
            refused(&env, &extra, dir, why);
        }
    }
    // Without --workdir the runner runs in $ATVM_AUTOMATION_ROOT: checked the same way.
    env.set("ATVM_AUTOMATION_ROOT", missing.display().to_string());
    refused(&env, &[], &missing, "does not exist");
    assert!(!ran.exists(), "the template step ran");
    assert!(
        !env.systemctl_calls().contains("start "),
        "{}",
        env.systemctl_calls()
    );
    assert!(!env.state_root.join(".archive").exists(), "archived");
    let request = testkit::read_json(&env.state_dir(B).join("request.json"));
    assert_eq!(
        request["run_id"],
        earlier.as_str(),
        "the earlier run is kept"
    );
    assert!(hook.requests().is_empty());
}

#[test]
fn a_watcher_that_does_not_start_ends_the_run_and_starts_no_runner() {
    let (mut env, hook) = setup();
    env.set("FAKE_SYSTEMCTL_FAIL", "start:atvm-run-watcher@");
    let out = start_run(&env, "true", "true", &[]);
    out.code_is(5);
    let s = testkit::read_json(&env.state_dir(B).join("state.json"));
    assert_eq!(
        (&s["state"], &s["final"]),
        (&"UNKNOWN".into(), &true.into()),
        "{s:#}"
    );
    assert!(
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains(WATCHER_UNIT)),
        "{s:#}"
    );
    assert!(
        !env.systemctl_calls()
            .contains(&format!("start {RUNNER_UNIT}")),
        "{}",
        env.systemctl_calls()
    );
    assert!(hook.requests().is_empty());
}

#[test]
fn a_template_step_that_cancels_its_own_build_is_refused_not_deadlocked() {
    let (env, _hook) = setup();
    // The start holds the build's start lock while its template step runs; a cancel from
    // inside that step would wait for the start, which waits for the step.
    for cancel in ["cancel-atvm-runner", "cancel-atvm-run-watcher"] {
        let template = format!(
            "'{}' --build-name {B}; echo \"cancel exited $?\"; exit 1",
            testkit::bin(cancel).display()
        );
        let child = env.spawn(
            "start-atvm-run",
            &[
                "--build-name",
                B,
                "--template-command",
                &template,
                "--runner-command",
                "true",
            ],
        );
        let out = testkit::finish(child, std::time::Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(3), "{cancel}: {}", text(&out));
        let launch = fs::read_to_string(env.log_dir.join(format!("{B}.launch.log"))).unwrap();
        assert!(
            launch.contains("from inside its own start") && launch.contains("cancel exited 4"),
            "{cancel}: {launch}"
        );
    }
}

#[test]
fn a_runner_that_reports_too_late_is_stopped_and_never_runs_unwatched() {
    // The runner unit's wrapper is slow to come up (a loaded machine): the start reports
    // that the runner did not start, so it must not run its command afterwards.
    let (mut env, hook) = setup();
    let unit = env.units_dir.join("atvm-runner@.service");
    let text_of_unit = fs::read_to_string(&unit).unwrap();
    let delayed = text_of_unit.replace(
        "ExecStart=",
        "ExecStart=/bin/sh -c 'sleep 1.5; exec \"$0\" \"$@\"' ",
    );
    assert_ne!(delayed, text_of_unit);
    fs::write(&unit, delayed).unwrap();
    env.set("ATVM_START_CONFIRM_SECONDS", "0.5");
    let ran = env.root().join("cypress-ran");
    let out = start_run(&env, "true", &format!("touch '{}'", ran.display()), &[]);
    out.code_is(5)
        .said("no status from its wrapper within 0.5s");
    assert!(
        env.systemctl_calls()
            .contains(&format!("stop {RUNNER_UNIT}")),
        "{}",
        env.systemctl_calls()
    );
    env.wait_unit_inactive(WATCHER_UNIT, std::time::Duration::from_secs(10));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !ran.exists(),
        "the runner command ran after the start gave up"
    );
    assert_eq!(env.state(B)["state"], "UNKNOWN");
    assert!(hook.requests().is_empty());
}

#[test]
fn a_wrapper_that_starts_after_its_run_ended_refuses() {
    // The same, seen from the wrapper: the run it was started for is already final.
    let (env, _hook) = setup();
    let ran = env.root().join("cypress-ran");
    env.write_request(B, serde_json::json!({}));
    let out = env.run(
        "start-atvm-runner",
        &[
            "--build-name",
            B,
            "--runner-command",
            &format!("sleep 0.2; touch '{}'", ran.display()),
        ],
    );
    out.succeeds();
    env.wait_unit_inactive(RUNNER_UNIT, std::time::Duration::from_secs(10));
    // Now end the run (as a start that gave up does) and run the wrapper again by hand.
    fs::remove_file(&ran).ok();
    env.run("cancel-atvm-run-watcher", &["--build-name", B])
        .succeeds();
    let again = env.run("run-atvm-runner", &["--build-name", B]);
    again
        .code_is(1)
        .error_line("run-atvm-runner", "has already ended CANCELLED");
    assert!(!ran.exists());
}

/// Nothing of a start happened: no state, no unit asked to start, no template step.
#[track_caller]
fn nothing_touched(env: &Env) {
    assert_eq!(fs::read_dir(&env.state_root).unwrap().count(), 0);
    assert_eq!(env.systemctl_calls(), "", "systemctl never called");
    assert!(!env.log_dir.join(format!("{B}.launch.log")).exists());
}

#[test]
fn a_runner_command_that_contradicts_the_options_is_refused_before_anything() {
    let (env, hook) = setup();
    let other = "python3 ./run-sorry-cypress.py --config_family gold --build_name e2e-redhat9.6-ubuntu24.04-w2k25";
    for extra in [&[][..], &["--dry-run"][..]] {
        start_run(&env, "touch template-ran", other, extra)
            .code_is(2)
            .error_line("start-atvm-run", &format!("--build-name is {B}"))
            .said("names build e2e-redhat9.6-ubuntu24.04-w2k25:");
        let categorized = format!("python3 ./run-sorry-cypress.py --build_name {B} --categorize");
        start_run(&env, "touch template-ran", &categorized, extra)
            .code_is(2)
            .error_line("start-atvm-run", "--categorize")
            .said("one combined message instead of one per group");
        nothing_touched(&env);
    }
    assert!(!env.automation_root.join("template-ran").exists());
    // Both agreeing is fine; a helper told --categorize with a wrapper that categorizes by
    // itself too.
    let agreed = format!("python3 ./run-sorry-cypress.py --build_name={B} --categorize");
    start_run(&env, "true", &agreed, &["--categorize", "--dry-run"]).succeeds();
    start_run(&env, "true", "./wrapper.sh", &["--categorize", "--dry-run"]).succeeds();
    assert_eq!(hook.count(), 0);
}

#[test]
fn the_two_step_helpers_refuse_the_same_contradictions() {
    let (env, _hook) = setup();
    let cmd = "python3 ./run-sorry-cypress.py --build-name another-build";
    env.run(
        "start-atvm-run-watcher.sh",
        &["--build-name", B, "--runner-command", cmd],
    )
    .code_is(2)
    .error_line("start-atvm-run-watcher", "names build another-build");
    env.run(
        "start-atvm-runner.sh",
        &["--build-name", B, "--runner-command", cmd, "--dry-run"],
    )
    .code_is(2)
    .error_line("start-atvm-runner", "names build another-build");
    nothing_touched(&env);
    // The runner's helper knows the run's own setting from its request.
    env.run("start-atvm-run-watcher", &["--build-name", B])
        .succeeds();
    let categorized = format!("python3 ./run-sorry-cypress.py --build_name {B} --categorize");
    env.run(
        "start-atvm-runner",
        &["--build-name", B, "--runner-command", &categorized],
    )
    .code_is(2)
    .error_line("start-atvm-runner", "--categorize");
    assert!(!env.state_dir(B).join("runner").exists());
    env.cancel_run(B);
}

#[test]
fn the_watcher_helper_says_it_does_not_run_the_template_command() {
    let (env, _hook) = setup();
    let template = "python3 ./cmc-templates.py --template_name cmc-e2e --config_file cypress.atvm-config-gold.ts";
    env.run(
        "start-atvm-run-watcher.sh",
        &["--build-name", B, "--template-command", template],
    )
    .succeeds()
    .said("start-atvm-run-watcher: warning: --template-command is recorded, not run: only start-atvm-run runs the template step");
    env.cancel_run(B);
    // start-atvm-run runs it, and says nothing of the kind.
    start_run(&env, "true", "true", &["--dry-run"])
        .succeeds()
        .never_said("is recorded, not run");
}

#[test]
fn an_open_env_file_is_warned_about_once_per_start() {
    let (env, _hook) = setup();
    fs::set_permissions(
        &env.env_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = start_run(&env, "true", &env.cypress_command("passing.log", 0), &[]);
    out.succeeds();
    assert_eq!(text(&out).matches("chmod 600").count(), 1, "{}", text(&out));
    env.cancel_run(B);
}

#[test]
fn help_describes_this_tool_s_options_with_the_operators_own_commands() {
    let env = Env::new();
    let help = env.run("start-atvm-run.sh", &["--help"]);
    help.succeeds()
        .never_said("start it with start-atvm-runner")
        .never_said("select-specs")
        .never_said("npx cypress")
        .said("python3 ./cmc-templates.py --template_name cmc-e2e")
        .said("python3 ./run-sorry-cypress.py")
        .said("--config-family gold")
        .said("--integration-plugin 'pure with fc'");
    env.run("start-atvm-run-watcher", &["--help"])
        .succeeds()
        .said("does not run --template-command");
}
