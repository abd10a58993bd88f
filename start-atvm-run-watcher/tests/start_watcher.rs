//! start-atvm-run-watcher through its binary: the request it records, the archive of an
//! earlier run's state, and what it refuses.

#![allow(clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use testkit::{Env, Expect, FakeWebhook, read_json, text};

const B: &str = "e2e-redhat9.6-ubuntu24.04-w2k25-fc";

fn setup() -> (Env, FakeWebhook) {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    env.set("MATTERMOST_ATVM_WEBHOOK", hook.url());
    (env, hook)
}

fn cancel(env: &Env) {
    assert!(
        env.run("cancel-atvm-run-watcher", &["--build-name", B])
            .status
            .success()
    );
}

#[test]
fn every_option_is_recorded_with_a_run_id() {
    let (env, _hook) = setup();
    let out = env.run(
        "start-atvm-run-watcher",
        &[
            "--build-name",
            B,
            "--template",
            "t1",
            "--template-command",
            "tc",
            "--runner-command",
            "rc",
            "--config-family",
            "cf",
            "--config-file",
            "cfg.json",
            "--migration-style",
            "ms",
            "--integration-plugin",
            "ip",
            "--categorize",
            "--scope-description",
            "sd",
        ],
    );
    out.succeeds();
    let request = env.state_dir(B).join("request.json");
    let r = read_json(&request);
    for (k, v) in [
        ("template", "t1"),
        ("template_command", "tc"),
        ("runner_command", "rc"),
        ("config_family", "cf"),
        ("config_file", "cfg.json"),
        ("migration_style", "ms"),
        ("integration_plugin", "ip"),
        ("scope_description", "sd"),
    ] {
        assert_eq!(r[k], v, "{k}");
    }
    assert_eq!(r["categorize"], true);
    assert!(r["run_id"].as_str().is_some_and(|s| !s.is_empty()) && r["requested_at"].is_string());
    assert_eq!(
        fs::metadata(&request).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        env.systemctl_calls()
            .contains(&format!("start atvm-run-watcher@{B}.service"))
    );
    cancel(&env);
}

#[test]
fn each_start_gets_a_new_run_id() {
    let (env, _hook) = setup();
    let mut ids = Vec::new();
    for _ in 0..2 {
        assert!(
            env.run("start-atvm-run-watcher", &["--build-name", B])
                .status
                .success()
        );
        ids.push(read_json(&env.state_dir(B).join("request.json"))["run_id"].clone());
        cancel(&env);
        env.wait_unit_inactive(
            &format!("atvm-run-watcher@{B}.service"),
            Duration::from_secs(20),
        );
    }
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn a_too_open_env_file_is_warned_about() {
    let (env, _hook) = setup();
    fs::set_permissions(&env.env_file, fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run("start-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("chmod 600") && stderr.contains(&env.env_file.display().to_string()),
        "{stderr}"
    );
    cancel(&env);
}

#[test]
fn an_earlier_run_is_archived_not_inherited() {
    let (env, _hook) = setup();
    let old = env.state_dir(B);
    fs::create_dir_all(old.join("subruns/01-linux")).unwrap();
    for f in [
        "cancelled.marker",
        "posted.marker",
        "state.json",
        "subruns/01-linux/posted.marker",
    ] {
        fs::write(old.join(f), "from the earlier run\n").unwrap();
    }
    let out = env.run("start-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    out.said("archived the previous state");
    let entries: Vec<String> = fs::read_dir(&old)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !entries
            .iter()
            .any(|e| e.ends_with(".marker") || e == "subruns"),
        "nothing inherited: {entries:?}"
    );
    let archive = env.state_root.join(".archive").join(B);
    let runs: Vec<_> = fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        fs::read_to_string(runs[0].join("subruns/01-linux/posted.marker")).unwrap(),
        "from the earlier run\n"
    );
    assert_eq!(
        fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o700
    );
    cancel(&env);
}

#[test]
fn a_watcher_process_holding_the_lock_is_refused() {
    let (env, _hook) = setup();
    // A watcher started by hand, outside systemd: the unit is inactive but the lock is held.
    env.write_request(B, serde_json::json!({}));
    let mut watcher = env.spawn(
        "atvm-run-watcher",
        &["--build-name", B, "--poll-seconds", "30"],
    );
    env.wait_until("the hand-started watcher", Duration::from_secs(20), || {
        env.try_state(B).is_some()
    });
    let out = env.run("start-atvm-run-watcher", &["--build-name", B]);
    out.code_is(4);
    out.said("watcher.lock");
    assert!(
        !env.state_root.join(".archive").exists(),
        "nothing archived from under it"
    );
    watcher.kill().unwrap();
    watcher.wait().unwrap();
}

#[test]
fn a_new_run_is_refused_while_the_previous_one_owes_a_post() {
    let (env, _hook) = setup();
    let run_id = env.write_request(B, serde_json::json!({}));
    let owed = serde_json::json!({
        "build_name": B, "run_id": run_id, "state": "FAILED", "final": true, "reason": "why",
        "updated_at": "2026-11-24T10:00:00.000Z", "counts": null,
        "post": {"status": "pending", "attempts": 1, "last_error": "HTTP 503 (chat.example)"}
    });
    std::fs::write(env.state_dir(B).join("state.json"), owed.to_string()).unwrap();
    for args in [
        vec!["--build-name", B, "--dry-run"],
        vec!["--build-name", B],
    ] {
        let out = env.run("start-atvm-run-watcher", &args);
        out.code_is(4);
        let msg = text(&out);
        assert!(
            msg.contains("still owes a post")
                && msg.contains("--once")
                && msg.contains("cancel-atvm-run-watcher"),
            "{msg}"
        );
    }
    assert!(
        !env.state_root.join(".archive").exists(),
        "nothing archived"
    );
    // Dropping it deliberately lets the build name be used again.
    let out = env.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    let out = env.run("start-atvm-run-watcher", &["--build-name", B]);
    out.succeeds();
    cancel(&env);
}

#[test]
fn a_watcher_that_does_not_come_up_leaves_its_run_final_and_never_resumed() {
    const UNIT: &str = "atvm-run-watcher@e2e-redhat9.6-ubuntu24.04-w2k25-fc.service";
    let starts = |env: &Env| {
        env.systemctl_calls()
            .matches(&format!("start {UNIT}"))
            .count()
    };
    for case in ["start fails", "inactive right after"] {
        let (mut env, hook) = setup();
        match case {
            "start fails" => env.set("FAKE_SYSTEMCTL_FAIL", "start:atvm-run-watcher@"),
            _ => {
                let idle = env.script(
                    "idle-systemctl",
                    "case \"$1\" in is-active) echo inactive; exit 3;; esac\nexit 0",
                );
                env.set("ATVM_SYSTEMCTL", idle.display().to_string());
            }
        }
        let out = env.run("start-atvm-run-watcher", &["--build-name", B]);
        assert_eq!(out.status.code(), Some(5), "{case}: {}", text(&out));
        let run_id = read_json(&env.state_dir(B).join("request.json"))["run_id"].clone();
        let s = env.state(B);
        assert_eq!(
            (&s["state"], &s["final"], &s["post"]["status"], &s["run_id"]),
            (
                &"UNKNOWN".into(),
                &true.into(),
                &"suppressed".into(),
                &run_id
            ),
            "{case}: {s:#}"
        );
        assert!(
            s["reason"].as_str().is_some_and(|r| r.contains(UNIT)),
            "{case}: {s:#}"
        );
        // At boot, --resume-all starts the watcher of every run that is not final.
        env.unset("FAKE_SYSTEMCTL_FAIL");
        env.set("ATVM_SYSTEMCTL", env.systemctl.display().to_string());
        let before = starts(&env);
        let out = env.run("atvm-run-watcher", &["--resume-all"]);
        assert!(out.status.success(), "{case}: {}", text(&out));
        assert_eq!(starts(&env), before, "{case}: resumed: {}", text(&out));
        assert!(hook.requests().is_empty());
    }
}

/// The env file, with `lines`, mode 0600.
fn env_file(env: &Env, lines: &str) {
    fs::write(&env.env_file, lines).unwrap();
    fs::set_permissions(&env.env_file, fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn paths_in_the_env_file_are_what_every_tool_uses_unless_the_environment_says_otherwise() {
    // docs/install.md invites ATVM_* overrides in the env file: the units load it, and a
    // shell (which does not) must agree with them about where state lives.
    let (mut env, _hook) = setup();
    let moved = env.root().join("srv/atvm-state");
    fs::create_dir_all(&moved).unwrap();
    fs::set_permissions(&moved, fs::Permissions::from_mode(0o700)).unwrap();
    env_file(
        &env,
        &format!(
            "# state elsewhere\nATVM_STATE_ROOT={}\nATVM_SYSTEMCTL='{}'\n",
            moved.display(),
            env.systemctl.display()
        ),
    );
    env.unset("ATVM_STATE_ROOT");
    env.unset("ATVM_SYSTEMCTL");
    env.run("start-atvm-run-watcher.sh", &["--build-name", B])
        .succeeds();
    assert!(moved.join(B).join("request.json").exists());
    assert!(!env.state_dir(B).exists(), "the environment's old default");
    let out = env.run("atvm-run-status", &["--build-name", B, "--json"]);
    out.succeeds();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state_root"], moved.display().to_string());
    assert_eq!(json["runs"][0]["watcher_unit"]["active"], "active");
    env.run("cancel-atvm-run-watcher", &["--build-name", B])
        .succeeds()
        .said("cancelled");
    env.run("cancel-atvm-runner", &["--build-name", B])
        .succeeds();
    // The environment wins over the file: here the state root it names has no such build.
    env.set("ATVM_STATE_ROOT", env.state_root.display().to_string());
    env.run("atvm-run-status", &["--build-name", B])
        .code_is(1)
        .error_line("atvm-run-status", "unknown build");
}

#[test]
fn a_channel_with_a_trailing_comment_is_refused_by_every_tool_that_loads_it() {
    // As systemd reads the env file, `# optional` is part of the value: the server would
    // answer 404 to every post.
    let (env, hook) = setup();
    env_file(
        &env,
        "MATTERMOST_ATVM_CHANNEL=qa-e2e-results     # optional\n",
    );
    let file = env.env_file.display().to_string();
    for (tool, args) in [
        ("start-atvm-run-watcher", vec!["--build-name", B]),
        (
            "start-atvm-run-watcher",
            vec!["--build-name", B, "--dry-run"],
        ),
        (
            "start-atvm-run",
            vec!["--build-name", B, "--runner-command", "true"],
        ),
        (
            "start-atvm-run",
            vec!["--build-name", B, "--runner-command", "true", "--dry-run"],
        ),
        ("atvm-run-watcher", vec!["--test-post"]),
        ("atvm-run-watcher", vec!["--build-name", B, "--dry-run"]),
    ] {
        env.run(tool, &args)
            .code_is(78)
            .error_line(tool, "MATTERMOST_ATVM_CHANNEL")
            .said("trailing `# comment` is part of the value")
            .said(&file);
    }
    assert!(!env.state_dir(B).exists(), "nothing was written");
    assert_eq!(hook.count(), 0, "nothing was posted");
    // The comment on its own line: the channel is sent as it is.
    env_file(&env, "# optional\nMATTERMOST_ATVM_CHANNEL=qa-e2e-results\n");
    env.run("atvm-run-watcher", &["--test-post"]).succeeds();
    assert_eq!(hook.requests()[0].json()["channel"], "qa-e2e-results");
}

#[test]
fn a_missing_env_file_is_named_as_missing() {
    let mut env = Env::new();
    fs::remove_file(&env.env_file).unwrap();
    env.unset("MATTERMOST_ATVM_WEBHOOK");
    env.run("start-atvm-run-watcher", &["--build-name", B])
        .code_is(78)
        .error_line("start-atvm-run-watcher", "the env file does not exist")
        .said(&env.env_file.display().to_string());
}
