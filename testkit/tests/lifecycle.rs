//! The whole lifecycle through the binaries: start-atvm-run (template step, watcher, runner)
//! with a fake systemctl that runs the rendered units' ExecStart lines, the cancel helpers,
//! and a fake Mattermost webhook; plus one run under a real systemd user manager.

#![allow(clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

#[path = "lifecycle/real_systemd.rs"]
mod real_systemd;

#[path = "lifecycle/identity.rs"]
mod identity;

#[path = "lifecycle/equivalence.rs"]
mod equivalence;

#[path = "lifecycle/history.rs"]
mod history;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;
use testkit::{Env, Expect, FakeWebhook, field, fixture, text};

const B: &str = "e2e-redhat9.6-ubuntu24.04-w2k25-fc";
const WATCHER_UNIT: &str = "atvm-run-watcher@e2e-redhat9.6-ubuntu24.04-w2k25-fc.service";
const RUNNER_UNIT: &str = "atvm-runner@e2e-redhat9.6-ubuntu24.04-w2k25-fc.service";
const LONG: Duration = Duration::from_secs(30);

fn setup() -> (Env, FakeWebhook) {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    env.set("MATTERMOST_ATVM_WEBHOOK", hook.url());
    (env, hook)
}

fn start_run(env: &Env, runner_command: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "--build-name",
        B,
        "--template",
        "migration",
        "--template-command",
        "echo selecting specs for redhat9.6",
        "--runner-command",
        runner_command,
    ];
    args.extend_from_slice(extra);
    env.run("start-atvm-run", &args)
}

fn started(env: &Env, runner_command: &str, extra: &[&str]) {
    let out = start_run(env, runner_command, extra);
    assert!(
        out.status.success(),
        "start-atvm-run failed: {}",
        text(&out)
    );
}

fn is_active(env: &Env, unit: &str) -> bool {
    Command::new(&env.systemctl)
        .args(["is-active", unit])
        .env("FAKE_SYSTEMD_UNITS", &env.units_dir)
        .env("FAKE_SYSTEMD_STATE", &env.systemd_dir)
        .output()
        .unwrap()
        .status
        .success()
}

fn wait_watching(env: &Env) {
    env.wait_state(B, "WATCHING", LONG);
}

/// The unit's main pid, as the fake systemctl records it (`<pid> <start time>`).
fn unit_pid(env: &Env, unit: &str) -> String {
    fs::read_to_string(env.systemd_dir.join(format!("{unit}.pid")))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// After a final state, the watcher unit must have exited (not be left running).
fn assert_watcher_done(env: &Env) {
    env.wait_unit_inactive(WATCHER_UNIT, LONG);
}

#[test]
fn completed_run_posts_once() {
    let (env, hook) = setup();
    started(
        &env,
        &env.cypress_command("passing.log", 0),
        &["--config-family", "redhat"],
    );
    let s = env.wait_final(B, LONG);
    assert_eq!(s["state"], "COMPLETED", "{s:#}");
    assert_watcher_done(&env);
    assert_eq!(hook.requests().len(), 1);
    let post = hook.requests()[0].json();
    assert!(hook.texts()[0].starts_with("COMPLETED · "), "{post}");
    assert_eq!(field(&post, "Template").as_deref(), Some("`migration`"));
    assert_eq!(field(&post, "Config family").as_deref(), Some("`redhat`"));
    // The safe order: template (synchronous), watcher, runner.
    let calls = env.systemctl_calls();
    let w = calls.find(&format!("start {WATCHER_UNIT}")).unwrap();
    let r = calls.find(&format!("start {RUNNER_UNIT}")).unwrap();
    assert!(w < r, "watcher before runner:\n{calls}");
    let launch = fs::read_to_string(env.log_dir.join(format!("{B}.launch.log"))).unwrap();
    assert_eq!(launch, "selecting specs for redhat9.6\n");
    let request = testkit::read_json(&env.state_dir(B).join("request.json"));
    assert_eq!(request["template"], "migration");
    assert_eq!(
        fs::metadata(env.state_dir(B).join("request.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(env.state_dir(B)).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn failed_run_posts_once() {
    let (env, hook) = setup();
    started(&env, &env.cypress_command("failing-2-of-20.log", 2), &[]);
    let s = env.wait_final(B, LONG);
    assert_eq!(s["state"], "FAILED");
    assert_watcher_done(&env);
    assert_eq!(hook.requests().len(), 1);
    assert!(
        hook.texts()[0].starts_with("FAILED · "),
        "{:?}",
        hook.texts()
    );
    // Read again: `s` was taken the moment the state became final, before delivery.
    assert_eq!(env.state(B)["post"]["status"], "posted");
}

/// The three-group fixture, one group at a time: the test releases each next group.
fn three_groups(env: &Env) -> String {
    let log = fs::read_to_string(fixture("cypress/categorized-3-groups.log")).unwrap();
    let parts: Vec<&str> = log.split("=== group ").collect();
    let head = env.root().join("group-head.txt");
    fs::write(&head, parts[0]).unwrap();
    let mut cmd = format!("cat '{}'", head.display());
    for (i, part) in parts[1..].iter().enumerate() {
        let file = env.root().join(format!("group{i}.txt"));
        fs::write(&file, format!("=== group {part}")).unwrap();
        if i > 0 {
            cmd.push_str(&format!(
                "; while [ ! -e '{}' ]; do sleep 0.05; done",
                env.root().join(format!("go{i}")).display()
            ));
        }
        cmd.push_str(&format!("; cat '{}'", file.display()));
    }
    cmd + "; exit 1"
}

#[test]
fn categorized_three_groups_post_in_order_with_the_watcher_alive_between() {
    let (env, hook) = setup();
    started(&env, &three_groups(&env), &["--categorize"]);
    for n in 1..=2 {
        env.wait_until(&format!("post {n}"), LONG, || hook.requests().len() == n);
        assert!(
            is_active(&env, WATCHER_UNIT),
            "the watcher keeps going after group {n}"
        );
        assert_eq!(env.state(B)["final"], false);
        fs::write(env.root().join(format!("go{n}")), "").unwrap();
    }
    let s = env.wait_final(B, LONG);
    assert_eq!(s["state"], "FAILED");
    assert_watcher_done(&env);
    let texts = hook.texts();
    assert_eq!(texts.len(), 3, "{texts:#?}");
    assert!(
        texts[0]
            .starts_with("COMPLETED · build `e2e-redhat9.6-ubuntu24.04-w2k25-fc` · group `linux`"),
        "{}",
        texts[0]
    );
    assert!(
        texts[1]
            .starts_with("FAILED · build `e2e-redhat9.6-ubuntu24.04-w2k25-fc` · group `windows`"),
        "{}",
        texts[1]
    );
    assert!(texts[2].contains("· group `ubuntu 24.04`"), "{}", texts[2]);
    for key in ["01-linux", "02-windows", "03-ubuntu-24.04"] {
        assert!(
            env.state_dir(B)
                .join("subruns")
                .join(key)
                .join("posted.marker")
                .exists(),
            "{key}"
        );
    }
}

#[test]
fn cancelling_both_posts_nothing() {
    let (env, hook) = setup();
    started(&env, "echo '  (Run Starting)'; sleep 60; :", &[]);
    wait_watching(&env);
    env.cancel_run(B);
    env.wait_unit_inactive(RUNNER_UNIT, LONG);
    assert_watcher_done(&env);
    let s = env.state(B);
    assert_eq!(s["state"], "CANCELLED");
    assert_eq!(s["final"], true);
    assert_eq!(s["post"]["status"], "suppressed");
    std::thread::sleep(Duration::from_millis(300));
    assert!(hook.requests().is_empty());
    // Repeating it is harmless.
    let out = env.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    assert_eq!(env.state(B)["state"], "CANCELLED");
}

#[test]
fn a_sigkilled_runner_is_terminated_without_a_post() {
    let (env, hook) = setup();
    started(&env, "echo '  (Run Starting)'; sleep 60; :", &[]);
    wait_watching(&env);
    let wrapper = env.status(B)["pid"].as_u64().unwrap().to_string();
    Command::new("kill")
        .args(["-KILL", &wrapper])
        .status()
        .unwrap();
    let s = env.wait_final(B, LONG);
    assert_eq!(s["state"], "TERMINATED");
    assert_watcher_done(&env);
    assert!(hook.requests().is_empty());
    let child = env.status(B)["child_pid"].as_i64().unwrap();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{child}")])
        .status();
}

#[test]
fn a_hung_runner_is_hung_without_a_post() {
    let (mut env, hook) = setup();
    env.set("ATVM_HANG_MINUTES", "0.01");
    started(&env, "echo '  (Run Starting)'; sleep 60; :", &[]);
    let s = env.wait_final(B, LONG);
    assert_eq!(s["state"], "HUNG");
    assert_watcher_done(&env);
    assert!(is_active(&env, RUNNER_UNIT), "the runner is left alone");
    assert!(hook.requests().is_empty());
}

#[test]
fn reusing_a_build_name_after_a_cancelled_run_posts_normally() {
    let (env, hook) = setup();
    started(&env, "sleep 60; :", &[]);
    wait_watching(&env);
    env.cancel_run(B);
    env.wait_unit_inactive(RUNNER_UNIT, LONG);
    assert_watcher_done(&env);

    started(&env, &env.cypress_command("passing.log", 0), &[]);
    let s = env.wait_final(B, LONG);
    assert_eq!(s["state"], "COMPLETED", "{s:#}");
    assert_watcher_done(&env);
    assert_eq!(hook.requests().len(), 1);
    assert!(
        !env.state_dir(B).join("cancelled.marker").exists(),
        "the old marker was archived, not inherited"
    );
    let archived: Vec<_> = fs::read_dir(env.state_root.join(".archive").join(B))
        .unwrap()
        .collect();
    assert_eq!(archived.len(), 1);
    let old = archived[0].as_ref().unwrap().path();
    assert!(old.join("cancelled.marker").exists());
}

#[test]
fn a_watcher_killed_mid_run_and_restarted_posts_once() {
    let (env, hook) = setup();
    let go = env.root().join("go");
    let f = fixture("cypress/failing-2-of-20.log").display().to_string();
    started(
        &env,
        &format!(
            "head -c 30000 '{f}'; while [ ! -e '{}' ]; do sleep 0.05; done; tail -c +30001 '{f}'; exit 2",
            go.display()
        ),
        &[],
    );
    wait_watching(&env);
    Command::new("kill")
        .args(["-KILL", &unit_pid(&env, WATCHER_UNIT)])
        .status()
        .unwrap();
    env.wait_unit_inactive(WATCHER_UNIT, LONG);
    fs::write(&go, "").unwrap();
    // What systemd's Restart=on-failure does.
    restart_watcher(&env);
    let s = env.wait_final(B, LONG);
    assert_eq!(s["state"], "FAILED");
    assert_eq!(
        s["counts"]["tests"], 40,
        "resumed from the checkpoint, nothing lost or doubled"
    );
    assert_watcher_done(&env);
    assert_eq!(hook.requests().len(), 1);
    // Started again after the post: still one post.
    restart_watcher(&env);
    assert_watcher_done(&env);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(hook.requests().len(), 1);
}

/// Start the watcher unit again, as systemd's Restart=on-failure would, with the same
/// environment the tools get.
fn restart_watcher(env: &Env) {
    let out = Command::new(&env.systemctl)
        .args(["start", WATCHER_UNIT])
        .envs(
            env.cmd("atvm-run-watcher")
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .output()
        .unwrap();
    out.succeeds();
}

#[test]
fn a_runner_that_cannot_start_stops_the_watcher_and_records_unknown() {
    let (mut env, hook) = setup();
    env.set("FAKE_SYSTEMCTL_FAIL", "start:atvm-runner@");
    let out = start_run(&env, "true", &[]);
    out.code_is(5);
    out.said(RUNNER_UNIT);
    env.wait_unit_inactive(WATCHER_UNIT, LONG);
    let s = env.state(B);
    assert_eq!(s["state"], "UNKNOWN");
    assert_eq!(s["final"], true);
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("runner could not be started"),
        "{s}"
    );
    assert!(hook.requests().is_empty());
}

#[test]
fn a_run_abandoned_by_its_start_is_unknown_at_warning_priority_in_the_watcher_s_journal() {
    // The operator looks at `journalctl -u atvm-run-watcher@B -p warning`: the UNKNOWN the
    // start helper records must be there, not only on the helper's stderr. This systemctl
    // fails the runner's start once the watcher is up (it has written its first state).
    let (mut env, hook) = setup();
    let state = env.state_dir(B).join("state.json");
    let systemctl = env.script(
        "systemctl-runner-fails",
        &format!(
            "case \"$1 $2\" in\n  'start atvm-runner@'*)\n    while [ ! -e '{}' ]; do sleep 0.02; done\n    echo 'Job for atvm-runner@x.service failed.' >&2; exit 1 ;;\nesac\nexec '{}' \"$@\"",
            state.display(),
            env.systemctl.display()
        ),
    );
    env.set("ATVM_SYSTEMCTL", systemctl.display().to_string());
    start_run(&env, "true", &[])
        .code_is(5)
        .said("state UNKNOWN recorded");
    env.wait_unit_inactive(WATCHER_UNIT, LONG);
    let s = env.state(B);
    assert_eq!(
        (s["state"].as_str(), s["final"].as_bool()),
        (Some("UNKNOWN"), Some(true))
    );
    let journal = env.unit_output(WATCHER_UNIT);
    let warning = journal
        .lines()
        .find(|l| l.starts_with("<4>") && l.contains("UNKNOWN"))
        .unwrap_or_else(|| panic!("no warning line in:\n{journal}"));
    assert!(warning.contains("runner could not be started"), "{warning}");
    assert!(!journal.contains("saved, not final"), "{journal}");
    assert!(hook.requests().is_empty());
}

#[test]
fn a_second_start_is_refused_while_the_run_is_active() {
    let (env, _hook) = setup();
    started(&env, "sleep 60; :", &[]);
    wait_watching(&env);
    let launch_log = env.log_dir.join(format!("{B}.launch.log"));
    let before = fs::metadata(&launch_log).unwrap().modified().unwrap();
    let out = start_run(&env, "true", &[]);
    out.code_is(4);
    out.said(WATCHER_UNIT);
    assert_eq!(
        fs::metadata(&launch_log).unwrap().modified().unwrap(),
        before,
        "the template step did not run again"
    );
    env.cancel_run(B);
}

#[test]
fn every_binary_refuses_bad_build_names_before_touching_anything() {
    let (env, hook) = setup();
    let long = "x".repeat(129);
    // `b1.launch`: its run log would be build b1's launch log (`/tmp/b1.launch.log`).
    for bad in [
        "../x",
        "a/b",
        "",
        "-x",
        "a..b",
        "ünïcode",
        long.as_str(),
        "b1.launch",
    ] {
        for name in testkit::BINARIES {
            let mut args = vec!["--build-name", bad];
            if matches!(name, "start-atvm-run" | "start-atvm-runner") {
                args.extend(["--runner-command", "true"]);
            }
            let out = env.run(name, &args);
            assert_eq!(out.status.code(), Some(2), "{name} {bad:?}: {}", text(&out));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
            assert!(stderr.contains("invalid build name"), "{name}: {stderr}");
            if bad == "b1.launch" {
                assert!(stderr.contains("must not end in \".launch\""), "{stderr}");
            }
        }
    }
    assert_eq!(
        fs::read_dir(&env.state_root).unwrap().count(),
        0,
        "nothing created"
    );
    assert_eq!(env.systemctl_calls(), "", "systemctl never called");
    assert!(
        fs::read_dir(&env.log_dir).unwrap().next().is_none(),
        "no log created"
    );
    assert!(hook.requests().is_empty());
}

#[test]
fn a_typo_in_a_build_name_is_the_same_unknown_build_for_every_tool_that_looks_one_up() {
    // A script's typo must never read as "cancelled" or "not running" while the real run
    // goes on: both cancel helpers and the status tool say the same, naming the build meant.
    let (env, _hook) = setup();
    env.write_request(B, serde_json::json!({}));
    let typo = "e2e-redhat9.6-ubuntu24.04-w2k25-f";
    let mut said = Vec::new();
    for tool in [
        "cancel-atvm-runner",
        "cancel-atvm-run-watcher",
        "atvm-run-status",
    ] {
        let out = env.run(tool, &["--build-name", typo]);
        out.code_is(1)
            .error_line(tool, &format!("unknown build {typo}"))
            .said(&format!("did you mean {B}?"));
        let line = String::from_utf8_lossy(&out.stderr).to_string();
        said.push(line.split_once(": ").unwrap().1.to_string());
    }
    assert!(said.windows(2).all(|w| w[0] == w[1]), "{said:#?}");
    assert!(!env.state_dir(typo).exists(), "nothing written");
    for untouched in ["state.json", "cancelled.marker", "runner"] {
        assert!(!env.state_dir(B).join(untouched).exists(), "{untouched}");
    }
}

#[test]
fn every_binary_answers_help_with_an_example_and_version() {
    let env = Env::new();
    for name in testkit::BINARIES {
        let out = env.run(name, &["--help"]);
        assert!(out.status.success(), "{name}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Example") && help.contains(name),
            "{name} --help lacks an example:\n{help}"
        );
        let out = env.run(name, &["--version"]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with(name),
            "{name}"
        );
        // The same help through the drop-in name an old caller uses.
        let through_link = env.run(&format!("{name}.sh"), &["--help"]);
        assert_eq!(
            String::from_utf8_lossy(&through_link.stdout),
            help,
            "{name}.sh --help differs"
        );
    }
}

/// Every option of every binary says what it does, and each binary's help lists the
/// environment variables its own code reads (and the state root, which all of them use).
#[test]
fn every_option_has_a_help_line_and_every_binary_lists_its_environment() {
    let env = Env::new();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in testkit::BINARIES {
        let out = env.run(name, &["--help"]);
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        let options = help
            .split("Options:")
            .nth(1)
            .and_then(|rest| rest.split("\n\n").next())
            .unwrap_or_default();
        // Short help: `--flag <VALUE>  What it does`; long help: the text on the next line.
        let lines: Vec<&str> = options.lines().filter(|l| !l.trim().is_empty()).collect();
        for (i, line) in lines.iter().enumerate() {
            let flag = line.trim_start();
            if !flag.starts_with('-') {
                continue;
            }
            let words_after_flag = flag.split("  ").skip(1).any(|w| !w.trim().is_empty());
            let next_is_text = lines
                .get(i + 1)
                .is_some_and(|n| !n.trim_start().starts_with('-'));
            assert!(
                words_after_flag || next_is_text,
                "{name}: `{}` has no help line",
                flag.trim()
            );
        }
        let environment = help
            .split("Environment:")
            .nth(1)
            .unwrap_or_else(|| panic!("{name} --help has no Environment section:\n{help}"));
        let mut wanted = vec!["ATVM_STATE_ROOT".to_string()];
        let mut dirs = vec![repo.join(name).join("src")];
        let mut files = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                match path.is_dir() {
                    true => dirs.push(path),
                    false => files.push(path),
                }
            }
        }
        for file in files {
            let source = fs::read_to_string(file).unwrap();
            for (i, _) in source
                .match_indices("\"ATVM_")
                .chain(source.match_indices("\"MATTERMOST_ATVM_"))
            {
                let var: String = source[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                if source[i + 1 + var.len()..].starts_with('"') {
                    wanted.push(var);
                }
            }
        }
        for var in wanted {
            assert!(
                environment.contains(&var),
                "{name} reads {var} but its --help does not say so"
            );
        }
    }
}

#[test]
fn a_watcher_stopped_by_systemd_saves_and_resumes() {
    let (env, hook) = setup();
    let go = env.root().join("go");
    started(
        &env,
        &format!(
            "echo '  (Run Starting)'; while [ ! -e '{}' ]; do sleep 0.05; done; {}",
            go.display(),
            env.cypress_command("passing.log", 0)
        ),
        &[],
    );
    wait_watching(&env);
    let out = Command::new(&env.systemctl)
        .args(["stop", WATCHER_UNIT])
        .env("FAKE_SYSTEMD_UNITS", &env.units_dir)
        .env("FAKE_SYSTEMD_STATE", &env.systemd_dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = env.state(B);
    assert_eq!(
        (s["state"].as_str(), s["final"].as_bool()),
        (Some("WATCHING"), Some(false))
    );
    assert!(
        env.unit_output(WATCHER_UNIT)
            .contains("<6>stopped by signal"),
        "{}",
        env.unit_output(WATCHER_UNIT)
    );
    fs::write(&go, "").unwrap();
    restart_watcher(&env);
    assert_eq!(env.wait_final(B, LONG)["state"], "COMPLETED");
    assert_watcher_done(&env);
    assert_eq!(hook.requests().len(), 1);
}

#[test]
fn state_files_never_hold_the_webhook() {
    let (env, hook) = setup();
    started(&env, &env.cypress_command("passing.log", 0), &[]);
    env.wait_final(B, LONG);
    assert_watcher_done(&env);
    assert!(
        env.files_containing(hook.secret()).is_empty(),
        "{:?}",
        env.files_containing(hook.secret())
    );
}

/// A broken env file — a line continued with `\`, an unclosed quote — joins the webhook's
/// line into another variable's value. No error, journal line or `--help` quoting that
/// value may show the webhook (it is a secret).
#[test]
fn a_broken_env_file_never_shows_the_webhook() {
    const KEY: &str = "s3cr3tk3yabcdefghijklmnop";
    let hook = format!("https://chat.example.test/hooks/{KEY}");
    let env = Env::new();
    for broken in [
        format!("MATTERMOST_ATVM_CHANNEL=qa\\\nMATTERMOST_ATVM_WEBHOOK={hook}\n"),
        format!("MATTERMOST_ATVM_CHANNEL=\"qa-e2e\nMATTERMOST_ATVM_WEBHOOK={hook}\n"),
        format!("MATTERMOST_ATVM_FORMAT=text\\\nMATTERMOST_ATVM_WEBHOOK={hook}\n"),
    ] {
        fs::write(&env.env_file, &broken).unwrap();
        let runs = [
            env.run("atvm-run-watcher", &["--test-post"]),
            env.run(
                "start-atvm-run",
                &["--build-name", B, "--runner-command", "true", "--dry-run"],
            ),
            env.run(
                "start-atvm-run-watcher.sh",
                &["--build-name", B, "--dry-run"],
            ),
        ];
        for out in &runs {
            assert_eq!(out.status.code(), Some(78), "{broken:?}: {}", text(out));
            assert!(!text(out).contains(KEY), "{broken:?}: {}", text(out));
        }
    }
    // A timing variable that swallowed the next line, under the unit (from its env file):
    // the usage error names the option, not the value; --help does not show it either.
    let mut env = env;
    env.set(
        "ATVM_POLL_SECONDS",
        format!("5MATTERMOST_ATVM_WEBHOOK={hook}"),
    );
    for args in [vec!["--build-name", B], vec!["--help"]] {
        let out = env.run("atvm-run-watcher", &args);
        assert!(!text(&out).contains(KEY), "{args:?}: {}", text(&out));
    }
    env.run("atvm-run-watcher", &["--build-name", B])
        .code_is(2)
        .error_line("atvm-run-watcher", "invalid value for --poll-seconds");
}
