//! atvm-run-status through its binary: the table and `--json` over runs written as fixtures,
//! `--all` with an archived run, unreadable files, a slow or missing systemctl, the detail
//! view of a categorized run, and promptness while locks are held and a real watcher runs.

#![allow(clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use atvm_common::Timestamp;
use serde_json::{Value, json};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use testkit::{Env, Expect, finish, text};

const B: &str = "e2e-redhat9.6-ubuntu24.04-w2k25-fc";
const LONG: Duration = Duration::from_secs(30);
/// Well under the watcher's poll and the tool's own systemctl deadline: "promptly".
const PROMPT: Duration = Duration::from_secs(4);

/// RFC 3339 for `secs` seconds ago.
fn ago(secs: i64) -> String {
    Timestamp::from_millis(Timestamp::now().millis() - secs * 1000).to_string()
}

fn write(path: &Path, value: &Value) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

/// A state directory as the tools leave it: 0700, `request.json`, and `state` when given.
fn run_dir(dir: &Path, build: &str, requested_secs_ago: i64, extra: Value, state: Option<Value>) {
    let mut request = json!({
        "build_name": build,
        "run_id": format!("run-{build}"),
        "requested_at": ago(requested_secs_ago),
    });
    for (k, v) in extra.as_object().unwrap() {
        request[k] = v.clone();
    }
    write(&dir.join("request.json"), &request);
    if let Some(mut s) = state {
        s["build_name"] = json!(build);
        s["run_id"] = json!(format!("run-{build}"));
        write(&dir.join("state.json"), &s);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
}

fn state(name: &str, is_final: bool, reason: &str, secs_ago: i64, post: &str) -> Value {
    json!({
        "state": name, "final": is_final, "reason": reason, "updated_at": ago(secs_ago),
        "counts": null,
        "post": {"status": post, "attempts": 0, "last_error": null},
        // Written by other versions of the watcher: must be ignored, not fail the read.
        "checkpoint": {"offset": 123}, "some_future_field": [1, 2],
    })
}

/// Three current runs in different states and one archived run.
fn three_runs(env: &Env) {
    let mut done = state("COMPLETED", true, "all 20 specs passed", 3 * 3600, "posted");
    done["counts"] = json!({"tests": 20, "passed": 20, "failed": 0, "pending": 0, "skipped": 0});
    run_dir(
        &env.state_dir("done-1"),
        "done-1",
        4 * 3600,
        json!({}),
        Some(done),
    );
    let mut watching = state("WATCHING", false, "running 2 of 3: login.cy.js", 10, "none");
    watching["subruns"] = json!([
        {"key": "01-linux", "group": "linux", "state": "COMPLETED", "counts": null,
         "post": {"status": "posted", "attempts": 1, "last_error": null}},
        {"key": "02-windows", "group": "windows", "state": "WATCHING", "counts": null,
         "post": {"status": "none", "attempts": 0, "last_error": null}},
    ]);
    run_dir(
        &env.state_dir("watching-2"),
        "watching-2",
        600,
        json!({"categorize": true}),
        Some(watching),
    );
    // Started a minute ago; the watcher has not written its state yet.
    run_dir(&env.state_dir("new-3"), "new-3", 60, json!({}), None);
    let archived = env.state_root.join(".archive/done-1/20261101T000000Z");
    let old = state(
        "FAILED",
        true,
        "2 of 20 specs failed",
        30 * 86_400,
        "posted",
    );
    run_dir(&archived, "done-1", 30 * 86_400 + 600, json!({}), Some(old));
}

fn status(env: &Env, args: &[&str]) -> Output {
    finish(env.spawn("atvm-run-status", args), LONG)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok_json(env: &Env, args: &[&str]) -> Value {
    let out = status(env, args);
    out.code_is(0);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn column(table: &str, header: &str) -> Vec<String> {
    let mut lines = table.lines();
    let head = lines.next().unwrap();
    let at = head.find(header).unwrap();
    lines
        .map(|l| l[at..].split("  ").next().unwrap().trim().to_string())
        .collect()
}

#[test]
fn the_table_lists_runs_newest_first_and_all_adds_archived_ones() {
    let env = Env::new();
    three_runs(&env);
    let out = status(&env, &[]);
    out.code_is(0);
    assert!(out.stderr.is_empty(), "{}", text(&out));
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "BUILD", "STATE", "POST", "GROUPS", "STARTED", "DURATION", "TESTS", "RUNNER",
            "WATCHER", "REASON"
        ]
    );
    // Newest first by start: new-3 a minute ago, watching-2 ten minutes, done-1 four hours.
    assert_eq!(column(&table, "BUILD"), ["new-3", "watching-2", "done-1"]);
    assert_eq!(column(&table, "STATE"), ["-", "WATCHING", "COMPLETED"]);
    // watching-2 posts per group: its first group's post shows.
    assert_eq!(column(&table, "POST"), ["-", "1 posted", "posted"]);
    // Posted/seen, `+` while the parent goes on (more groups may come).
    assert_eq!(column(&table, "GROUPS"), ["-", "1/2+", "-"]);
    assert_eq!(column(&table, "TESTS"), ["-", "-", "20/0/0"]);
    assert_eq!(column(&table, "RUNNER"), ["inactive"; 3]);
    assert_eq!(column(&table, "WATCHER"), ["inactive"; 3]);
    // Ten minutes running, and the hour done-1 took.
    assert_eq!(column(&table, "DURATION"), ["1m", "10m", "1h 00m"]);
    let started = column(&table, "STARTED");
    assert!(
        started.iter().all(|s| s.len() == 11 && &s[8..9] == ":"),
        "local month, day and time: {started:?}"
    );
    assert!(lines[2].ends_with("running 2 of 3: login.cy.js"), "{table}");

    let all = stdout(&status(&env, &["--all"]));
    assert_eq!(
        column(&all, "BUILD"),
        ["new-3", "watching-2", "done-1", "done-1"]
    );
    assert_eq!(
        column(&all, "ARCHIVED"),
        ["-", "-", "-", "20261101T000000Z"]
    );
    assert_eq!(
        column(&all, "WATCHER")[3],
        "-",
        "no unit for an archived run"
    );
    // The archived run kept no summary (nothing to compare, as for a cancelled or
    // terminated run): the history still says when it started, from its request.
    let json = ok_json(&env, &["--build-name", "done-1", "--json"]);
    let row = &json["runs"][0]["history"][0];
    assert_eq!(row["archive"], "20261101T000000Z", "{json:#}");
    assert!(row["started_at"].is_string(), "{json:#}");
}

#[test]
fn the_order_of_starts_wins_over_a_clock_that_was_ahead_and_durations_use_the_boot_clock() {
    let mut env = Env::new();
    env.set("ATVM_BOOT_ID", "0123456789abcdef0123456789abcdef");
    // The archived run started while the clock was a day ahead: its request says
    // tomorrow. It is still the older start of the build.
    let mut ahead = state("FAILED", true, "1 of 2 specs failed", -86_400, "posted");
    ahead["counts"] = json!({"tests": 2, "passed": 1, "failed": 1, "pending": 0, "skipped": 0});
    run_dir(
        &env.state_root.join(".archive/b1/000001-20261205T000000Z"),
        "b1",
        -86_400,
        json!({}),
        Some(ahead),
    );
    // The current run was requested ten days ago by the wall clock (stepped back since),
    // and ran 90 s by the boot clock readings of its request and its runner's exit.
    let dir = env.state_dir("b1");
    let boot = |ns: u64| json!({"boot_id": "0123456789abcdef0123456789abcdef", "ns": ns});
    run_dir(
        &dir,
        "b1",
        10 * 86_400,
        json!({"requested_boot": boot(5_000_000_000)}),
        Some(state("COMPLETED", true, "all specs passed", 0, "posted")),
    );
    write(
        &dir.join("runner/status.json"),
        &json!({
            "build_name": "b1", "run_id": "run-b1", "pid": 4242, "pid_start_ticks": 1, "child_pid": 4243,
            "started_at": ago(10 * 86_400), "started_boot": boot(6_000_000_000),
            "log_path": "/tmp/b1.log", "log_dev": 1, "log_inode": 1,
            "exited_at": ago(0), "exited_boot": boot(95_000_000_000), "exit_code": 0,
        }),
    );
    let all = stdout(&status(&env, &["--all"]));
    assert_eq!(
        column(&all, "ARCHIVED"),
        ["-", "000001-20261205T000000Z"],
        "the current run first: {all}"
    );
    assert_eq!(
        column(&all, "DURATION")[0],
        "1m",
        "90 s, not ten days: {all}"
    );
    let json = ok_json(&env, &["--all", "--json"]);
    assert_eq!(json["runs"][0]["archive"], Value::Null, "{json:#}");
    assert_eq!(json["runs"][0]["duration_seconds"], 90, "{json:#}");
    // Across builds: a2 says it was requested a minute ago, but its boot-clock reading of
    // this boot says an hour (the clock was set forward since); a3, with no reading, half
    // an hour ago. a3 is the newer start. (b1, by its boot reading, is the oldest here.)
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    if uptime < 5400.0 {
        eprintln!(
            "skipping the cross-build half: this boot is too young for a reading an hour back"
        );
        return;
    }
    let hour_back = (uptime - 3600.0) as u64 * 1_000_000_000;
    let reading = json!({"boot_id": "0123456789abcdef0123456789abcdef", "ns": hour_back});
    let done = || Some(state("COMPLETED", true, "all specs passed", 0, "posted"));
    run_dir(
        &env.state_dir("a2"),
        "a2",
        60,
        json!({"requested_boot": reading}),
        done(),
    );
    run_dir(&env.state_dir("a3"), "a3", 1800, json!({}), done());
    let table = stdout(&status(&env, &[]));
    assert_eq!(column(&table, "BUILD"), ["a3", "a2", "b1"], "{table}");
}

#[test]
fn json_lists_the_same_runs_with_every_key() {
    let env = Env::new();
    three_runs(&env);
    let report = ok_json(&env, &["--json", "--all"]);
    assert_eq!(report["state_root"], json!(env.state_root));
    assert!(Timestamp::parse(report["generated_at"].as_str().unwrap()).is_some());
    let runs = report["runs"].as_array().unwrap();
    let names: Vec<(&str, &Value)> = runs
        .iter()
        .map(|r| (r["build_name"].as_str().unwrap(), &r["archive"]))
        .collect();
    assert_eq!(
        names,
        [
            ("new-3", &Value::Null),
            ("watching-2", &Value::Null),
            ("done-1", &Value::Null),
            ("done-1", &json!("20261101T000000Z")),
        ]
    );
    let keys: Vec<&str> = runs[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    // serde_json's map is sorted: this checks the set of keys (docs/ shows their order).
    let mut expected = vec![
        "build_name",
        "archive",
        "dir",
        "run_id",
        "state",
        "final",
        "reason",
        "requested_at",
        "updated_at",
        "age_seconds",
        "ended_at",
        "duration_seconds",
        "counts",
        "flaky",
        "post",
        "groups",
        "watcher_unit",
        "runner_unit",
        "errors",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    let w = &runs[1];
    assert_eq!(w["dir"], json!(env.state_dir("watching-2")));
    assert_eq!(w["run_id"], "run-watching-2");
    assert_eq!(
        (&w["state"], &w["final"]),
        (&json!("WATCHING"), &json!(false))
    );
    assert_eq!(
        w["groups"],
        json!({"done": 1, "total": 2, "posted": 1, "post_failed": 0})
    );
    assert_eq!(
        w["post"],
        json!({"status": "none", "attempts": 0, "last_error": null, "posted_at": null, "resent_at": null})
    );
    assert_eq!(
        w["watcher_unit"],
        json!({"name": "atvm-run-watcher@watching-2.service", "active": "inactive", "error": null})
    );
    assert!(w["age_seconds"].as_u64().unwrap() < 600);
    let new = &runs[0];
    assert_eq!(
        (&new["state"], &new["post"], &new["groups"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    assert!(
        new["age_seconds"].as_u64().unwrap() >= 60,
        "age from the request while there is no state"
    );
    assert_eq!(runs[2]["counts"]["passed"], 20);
    assert_eq!(runs[3]["state"], "FAILED");
    assert_eq!(runs[3]["watcher_unit"], Value::Null);
    assert_eq!(
        runs[3]["dir"],
        json!(env.state_root.join(".archive/done-1/20261101T000000Z"))
    );
}

#[test]
fn an_unreadable_build_is_listed_with_its_error_and_the_others_still_show() {
    let env = Env::new();
    three_runs(&env);
    let broken = env.state_dir("broken-4");
    run_dir(&broken, "broken-4", 5, json!({}), None);
    fs::write(broken.join("state.json"), "{ half written").unwrap();
    let linked = env.state_dir("linked-5");
    run_dir(&linked, "linked-5", 5, json!({}), None);
    std::os::unix::fs::symlink(broken.join("request.json"), linked.join("state.json")).unwrap();

    let out = status(&env, &[]);
    out.code_is(0);
    let table = stdout(&out);
    let builds = column(&table, "BUILD");
    for b in ["watching-2", "new-3", "done-1", "broken-4", "linked-5"] {
        assert!(builds.contains(&b.to_string()), "{b} missing:\n{table}");
    }
    let row = table.lines().find(|l| l.starts_with("broken-4")).unwrap();
    assert!(
        row.contains("ERROR") && row.contains("unreadable state.json: does not parse"),
        "{row}"
    );
    let row = table.lines().find(|l| l.starts_with("linked-5")).unwrap();
    assert!(
        row.contains("unreadable state.json: refusing to follow a symbolic link"),
        "{row}"
    );
    // The full error, with the path, on stderr: one warning line per unreadable file.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: does not parse as expected: key must be a string at line 1 column 3 ({})",
            broken.join("state.json").display()
        )),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(broken.join("state.json")).unwrap(),
        "{ half written"
    );

    let report = ok_json(&env, &["--json"]);
    let run = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["build_name"] == "broken-4")
        .unwrap();
    assert_eq!(run["state"], Value::Null);
    assert_eq!(
        run["run_id"], "run-broken-4",
        "what could be read is still shown"
    );
    assert_eq!(run["errors"][0]["path"], json!(broken.join("state.json")));
    assert!(
        run["errors"][0]["error"]
            .as_str()
            .unwrap()
            .starts_with("does not parse")
    );

    // A build directory others may write to is not read at all, in the table or in detail.
    let open = env.state_dir("open-6");
    run_dir(&open, "open-6", 5, json!({}), None);
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let out = status(&env, &["--build-name", "open-6", "--json"]);
    out.code_is(0);
    let run = &serde_json::from_slice::<Value>(&out.stdout).unwrap()["runs"][0];
    assert!(
        run["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("writable by group or others"),
        "{run:#}"
    );
    assert_eq!(
        (&run["request"], &run["runner"]),
        (&Value::Null, &Value::Null)
    );
    assert!(
        run.get("launch_log").is_some(),
        "every detail key is there: {run:#}"
    );
}

#[test]
fn a_state_root_that_cannot_be_trusted_or_read_is_exit_1() {
    let mut env = Env::new();
    fs::set_permissions(&env.state_root, fs::Permissions::from_mode(0o777)).unwrap();
    let out = status(&env, &[]);
    out.code_is(1);
    out.said("writable by group or others");
    fs::set_permissions(&env.state_root, fs::Permissions::from_mode(0o700)).unwrap();
    let missing = env.root().join("nowhere");
    env.set("ATVM_STATE_ROOT", missing.display().to_string());
    let out = status(&env, &["--json"]);
    out.code_is(1);
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "atvm-run-status: cannot read state root: No such file or directory ({})",
            missing.display()
        )
    );
}

#[test]
fn unknown_build_is_exit_1_and_a_bad_name_exit_2() {
    let env = Env::new();
    three_runs(&env);
    let out = status(&env, &["--build-name", "never-started"]);
    out.code_is(1);
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "atvm-run-status: unknown build never-started: this controller has no run of that name; no known build has a similar name (atvm-run-status lists them) ({})",
            env.state_dir("never-started").display()
        )
    );
    // A typo names the build meant.
    status(&env, &["--build-name", "done-2"])
        .code_is(1)
        .error_line("atvm-run-status", "did you mean done-1?");
    // So does one in the wrong case (four letters: more edits than a typo, but no typo).
    status(&env, &["--build-name", "DONE-1"])
        .code_is(1)
        .error_line("atvm-run-status", "did you mean done-1?");
    let out = status(&env, &["--build-name", "../etc", "--json"]);
    out.code_is(2);
    assert!(out.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    out.said("invalid build name");
    // Only archived: shown with --all, unknown without.
    let archive = env.state_root.join(".archive/new-3");
    fs::create_dir_all(&archive).unwrap();
    fs::rename(env.state_dir("new-3"), archive.join("20261124T193530Z")).unwrap();
    assert_eq!(
        status(&env, &["--build-name", "new-3"]).status.code(),
        Some(1)
    );
    let out = status(&env, &["--build-name", "new-3", "--all"]);
    out.code_is(0);
    assert!(
        stdout(&out).starts_with("new-3 (archived 20261124T193530Z)\n"),
        "{}",
        text(&out)
    );
}

/// A categorized run with three sub-runs, the runner exited, every request option set.
fn categorized(env: &Env) {
    let dir = env.state_dir(B);
    let options = json!({
        "categorize": true, "template": "migration",
        "template_command": "./select-specs.sh redhat9.6", "runner_command": "npx cypress run --record",
        "config_family": "redhat", "config_file": "cypress.redhat.config.js",
        "migration_style": "in-place", "integration_plugin": "vault", "scope_description": "nightly",
    });
    let post = |status: &str, attempts: u32, err: Value| json!({"status": status, "attempts": attempts, "last_error": err});
    let counts = json!({"tests": 4, "passed": 3, "failed": 1, "pending": 0, "skipped": 0});
    let subruns = json!([
        {"key": "01-linux", "group": "linux", "state": "COMPLETED", "counts": null, "post": post("posted", 1, Value::Null)},
        {"key": "02-windows", "group": "windows", "state": "FAILED", "counts": counts,
         "post": post("failed", 3, json!("HTTP 404 from chat.example.com"))},
        {"key": "03-ubuntu-24.04", "group": "ubuntu 24.04", "state": "TERMINATED", "counts": null, "post": post("suppressed", 0, Value::Null)},
    ]);
    let mut s = state("FAILED", true, "1 of 3 groups failed", 30, "none");
    s["subruns"] = subruns.clone();
    s["details"] = json!({
        "runner_pid": null, "last_activity": ago(40), "log": "/ignored/when/status/has/it.log",
        "run_url": "https://cloud.cypress.io/projects/x7k2pq/runs/1843", "progress": "1 of 1: install.cy.js",
        "message": {"not": "read"},
    });
    run_dir(&dir, B, 3600, options, Some(s));
    for (i, sub) in subruns.as_array().unwrap().iter().enumerate() {
        let key = sub["key"].as_str().unwrap();
        let mut own = state(
            sub["state"].as_str().unwrap(),
            true,
            &format!("group {i} reason"),
            100,
            "none",
        );
        own["key"] = sub["key"].clone();
        own["group"] = sub["group"].clone();
        own["post"] = sub["post"].clone();
        own["build_name"] = json!(B);
        own["run_id"] = json!(format!("run-{B}"));
        write(&dir.join("subruns").join(key).join("state.json"), &own);
    }
    write(
        &dir.join("runner/status.json"),
        &json!({
            "build_name": B, "run_id": format!("run-{B}"), "pid": 4242, "pid_start_ticks": 1,
            "child_pid": 4243, "started_at": ago(3500), "log_path": env.run_log(B),
            "log_inode": 1, "log_dev": 1, "exited_at": ago(60), "exit_code": 1,
        }),
    );
    fs::write(
        dir.join("posted.marker"),
        format!("{} run_id=run-{B}\n", ago(50)),
    )
    .unwrap();
}

#[test]
fn the_detail_view_shows_everything_about_a_categorized_run() {
    let env = Env::new();
    categorized(&env);
    let out = status(&env, &["--build-name", B]);
    out.code_is(0);
    let t = stdout(&out);
    let launch_log = env.log_dir.join(format!("{B}.launch.log"));
    // A label, padded to the value column, and its value.
    let line = |label: &str, value: &str| format!("  {label:<15}{value}\n");
    let option = |label: &str, value: &str| format!("    {label:<15}{value}\n");
    for want in [
        format!("{B}\n"),
        line("state", "FAILED (final)"),
        line("reason", "1 of 3 groups failed"),
        line("run id", &format!("run-{B}")),
        // The parent posts nothing itself: its groups' posts are what went out.
        format!("  {:<15}none (the run posts per group: ", "post"),
        format!(
            "; once Mattermost is fixed: atvm-run-watcher --build-name {B} --resend (or --group KEY for one)\n"
        ),
        format!("  {:<15}group posts failed for good (", "resend"),
        line(
            "watcher unit",
            &format!("atvm-run-watcher@{B}.service inactive"),
        ),
        line("runner unit", &format!("atvm-runner@{B}.service inactive")),
        format!("  {:<15}pid 4242 (command 4243), started ", "runner"),
        " with code 1\n".into(),
        line("run log", &env.run_log(B).display().to_string()),
        line("launch log", &launch_log.display().to_string()),
        line("progress", "1 of 1: install.cy.js"),
        line(
            "run url",
            "https://cloud.cypress.io/projects/x7k2pq/runs/1843",
        ),
        format!(" (run run-{B})\n"),
        option("runner cmd", "npx cypress run --record"),
        option("template cmd", "./select-specs.sh redhat9.6"),
        option("config file", "cypress.redhat.config.js"),
        option("categorize", "yes"),
        "  sub-runs (3)\n".into(),
    ] {
        assert!(t.contains(&want), "missing {want:?} in:\n{t}");
    }
    let sub_lines: Vec<&str> = t
        .lines()
        .skip_while(|l| !l.starts_with("  sub-runs"))
        .skip(2)
        .collect();
    assert_eq!(sub_lines.len(), 3, "{t}");
    assert!(
        sub_lines[0].starts_with("    01-linux ") && sub_lines[0].contains("posted, 1 attempt"),
        "{t}"
    );
    assert!(
        sub_lines[1].contains("FAILED")
            && sub_lines[1].contains("failed, 3 attempts")
            && sub_lines[1].contains("4 · passed 3 · failed 1"),
        "{t}"
    );
    assert!(
        sub_lines[2].contains("ubuntu 24.04")
            && sub_lines[2].contains("suppressed")
            && sub_lines[2].ends_with("group 2 reason"),
        "{t}"
    );

    let report = ok_json(&env, &["--build-name", B, "--json"]);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(
        r["groups"],
        json!({"done": 3, "total": 3, "posted": 1, "post_failed": 1})
    );
    assert_eq!(r["request"]["integration_plugin"], "vault");
    assert_eq!(r["request"]["categorize"], true);
    assert_eq!(r["runner"]["pid"], 4242);
    assert_eq!(r["runner"]["exit_code"], 1);
    assert_eq!(r["runner"]["log_path"], json!(env.run_log(B)));
    assert!(
        r["runner"].get("log_inode").is_none(),
        "watcher-only fields stay out"
    );
    assert_eq!(r["runner_unit"]["name"], format!("atvm-runner@{B}.service"));
    assert_eq!(r["launch_log"], json!(launch_log));
    assert_eq!(r["run_log"], json!(env.run_log(B)));
    assert!(Timestamp::parse(r["last_activity"].as_str().unwrap()).is_some());
    assert_eq!(r["cancelled"], Value::Null);
    assert_eq!(r["posted"]["run_id"], format!("run-{B}"));
    assert_eq!(r["last_error"], Value::Null);
    assert!(r.get("message").is_none() && r.get("details").is_none());
    let subs = r["subruns"].as_array().unwrap();
    assert_eq!(subs[1]["key"], "02-windows");
    assert_eq!(
        subs[1]["post"]["last_error"],
        "HTTP 404 from chat.example.com"
    );
    assert_eq!(subs[1]["counts"]["failed"], 1);
    assert_eq!(
        (&subs[2]["final"], &subs[2]["reason"]),
        (&json!(true), &json!("group 2 reason"))
    );
}

#[test]
fn every_json_key_is_documented() {
    let env = Env::new();
    categorized(&env);
    let mut keys = std::collections::BTreeSet::new();
    fn collect(v: &Value, keys: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    keys.insert(k.clone());
                    collect(v, keys);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect(v, keys)),
            _ => {}
        }
    }
    collect(&ok_json(&env, &["--build-name", B, "--json"]), &mut keys);
    let doc_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/atvm-run-status.md");
    let doc = fs::read_to_string(&doc_path).unwrap();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in {}: {missing:?}",
        doc_path.display()
    );
}

#[test]
fn a_missing_or_silent_systemctl_shows_a_question_mark() {
    let mut env = Env::new();
    three_runs(&env);
    env.set("ATVM_SYSTEMCTL", "/nonexistent/systemctl");
    let out = status(&env, &[]);
    out.code_is(0);
    assert_eq!(column(&stdout(&out), "WATCHER"), ["?"; 3]);
    assert_eq!(column(&stdout(&out), "RUNNER"), ["?"; 3]);
    let report = ok_json(&env, &["--json"]);
    let unit = &report["runs"][0]["watcher_unit"];
    assert_eq!(unit["active"], Value::Null);
    assert!(
        unit["error"]
            .as_str()
            .unwrap()
            .contains("cannot run /nonexistent/systemctl"),
        "{unit}"
    );

    // A systemd that does not answer: the listing still comes, after the tool's deadline.
    let slow = env.script("slow-systemctl", "sleep 8");
    env.set("ATVM_SYSTEMCTL", slow.display().to_string());
    let start = Instant::now();
    let out = status(&env, &["--json"]);
    assert!(
        start.elapsed() < Duration::from_secs(7),
        "{:?}",
        start.elapsed()
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["runs"][0]["watcher_unit"]["error"]
            .as_str()
            .unwrap()
            .contains("did not answer within 5s"),
        "{report}"
    );
    // ... and leaves no systemctl (nor what it ran) behind.
    let left = std::process::Command::new("pgrep")
        .args(["-f", &slow.display().to_string()])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// Is `path` locked by someone else right now?
fn locked(path: &Path) -> bool {
    fs::File::open(path).is_ok_and(|f| matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)))
}

#[test]
fn it_answers_promptly_while_another_process_holds_the_locks() {
    let env = Env::new();
    three_runs(&env);
    let dir = env.state_dir("watching-2");
    let mut held = Vec::new();
    for name in ["state.lock", "watcher.lock", "runner/status.lock"] {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = fs::File::create(&path).unwrap();
        file.lock().unwrap();
        held.push(file);
    }
    for args in [
        &[][..],
        &["--json", "--all"],
        &["--build-name", "watching-2"],
    ] {
        let start = Instant::now();
        let out = finish(env.spawn("atvm-run-status", args), PROMPT);
        out.code_is(0);
        assert!(stdout(&out).contains("watching-2"), "{}", text(&out));
        assert!(start.elapsed() < PROMPT);
    }
    assert!(
        held.iter().all(|f| f.try_lock().is_ok()),
        "our locks are still ours"
    );
}

#[test]
fn it_answers_while_a_real_watcher_follows_a_run() {
    let env = testkit::Posting::new(vec![]);
    env.write_request(B, json!({}));
    let out = env.run(
        "start-atvm-runner",
        &[
            "--build-name",
            B,
            "--runner-command",
            "echo '  (Run Starting)'; sleep 30; :",
        ],
    );
    out.succeeds();
    env.wait_until("the runner", LONG, || {
        env.state_dir(B).join("runner/status.json").exists()
    });
    let watcher = env.spawn("atvm-run-watcher", &["--build-name", B]);
    let lock = env.state_dir(B).join("watcher.lock");
    env.wait_until("the watcher to hold its lock", LONG, || locked(&lock));

    let out = finish(env.spawn("atvm-run-status", &[]), PROMPT);
    out.code_is(0);
    assert_eq!(column(&stdout(&out), "BUILD"), [B]);
    let out = finish(
        env.spawn("atvm-run-status", &["--build-name", B, "--json"]),
        PROMPT,
    );
    out.code_is(0);
    let r = serde_json::from_slice::<Value>(&out.stdout).unwrap()["runs"][0].clone();
    assert_eq!(r["errors"], json!([]), "{r:#}");
    assert_eq!(r["runner_unit"]["active"], "active", "{r:#}");
    assert_eq!(r["runner"]["pid"], env.status(B)["pid"]);
    assert_eq!(r["runner"]["exited_at"], Value::Null);
    assert!(locked(&lock), "the watcher kept its lock and kept running");

    env.cancel_run(B);
    let out = finish(watcher, LONG);
    out.succeeds();
    let r = &ok_json(&env, &["--json"])["runs"][0];
    assert_eq!(
        (&r["state"], &r["final"]),
        (&json!("CANCELLED"), &json!(true)),
        "{r:#}"
    );
}

#[test]
fn a_run_nobody_follows_and_a_refused_directory_say_so_first() {
    let env = Env::new();
    three_runs(&env);
    // watching-2 is not final, and its watcher unit is not running (the fake systemctl
    // never started it): an operator must see that nobody follows it.
    let table = stdout(&status(&env, &[]));
    let row = table.lines().find(|l| l.starts_with("watching-2")).unwrap();
    assert!(
        row.contains("watcher inactive, run not final: running 2 of 3"),
        "{row}"
    );
    let row = table.lines().find(|l| l.starts_with("done-1")).unwrap();
    assert!(!row.contains("not final"), "{row}");
    let detail = stdout(&status(&env, &["--build-name", "watching-2"]));
    assert!(
        detail.contains("attention      the run is not final but its watcher is inactive")
            && detail.contains("journalctl -u atvm-run-watcher@watching-2.service"),
        "{detail}"
    );
    // A build directory others can write: the cause, not the (long) path, in the table.
    fs::set_permissions(env.state_dir("new-3"), fs::Permissions::from_mode(0o777)).unwrap();
    let table = stdout(&status(&env, &[]));
    let row = table.lines().find(|l| l.starts_with("new-3")).unwrap();
    assert!(
        row.contains("ERROR") && row.contains("refusing to use directory: writable by group"),
        "{row}"
    );
}

#[test]
fn text_that_could_reorder_the_terminal_is_shown_inert() {
    let env = Env::new();
    let mut s = state(
        "WATCHING",
        false,
        "spec \u{202E}gnp.exe \u{200B}x\u{7}",
        5,
        "none",
    );
    s["details"] = json!({"progress": "1 of 2: a\u{2066}b"});
    run_dir(&env.state_dir(B), B, 5, json!({}), Some(s));
    for args in [&[][..], &["--build-name", B][..]] {
        let shown = stdout(&status(&env, args));
        for bad in ['\u{202E}', '\u{200B}', '\u{7}', '\u{2066}'] {
            assert!(!shown.contains(bad), "{bad:?} in:\n{shown}");
        }
    }
}

#[test]
fn an_archive_that_is_a_link_is_not_followed_and_a_refused_directory_says_so() {
    let env = Env::new();
    let elsewhere = env.root().join("elsewhere");
    fs::create_dir_all(elsewhere.join("20261124T193530Z")).unwrap();
    let archive = env.state_root.join(".archive");
    fs::create_dir_all(&archive).unwrap();
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, archive.join("evil")).unwrap();
    let out = env.run("atvm-run-status", &["--all"]);
    out.succeeds();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("evil"),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symbolic link"),
        "{}",
        text(&out)
    );
    // A build directory others can write: the detail view says why it shows nothing.
    run_dir(&env.state_dir(B), B, 10, json!({}), None);
    fs::set_permissions(env.state_dir(B), fs::Permissions::from_mode(0o777)).unwrap();
    let out = env.run("atvm-run-status", &["--build-name", B]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        shown.contains("cannot be read: see errors below"),
        "{shown}"
    );
    assert!(shown.contains("writable by group or others"), "{shown}");
}

// ----- the table under a real terminal --------------------------------------------------

/// Run `atvm-run-status` with its stdout on a pseudo-terminal of `cols` columns (and
/// `COLUMNS` unset, as bash leaves it); returns what it printed there.
fn on_a_terminal(env: &Env, cols: u16) -> String {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::io::Read;
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let terminal = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let size = rustix::termios::Winsize {
        ws_row: 50,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&terminal, size).unwrap();
    let mut cmd = env.cmd("atvm-run-status");
    cmd.env_remove("COLUMNS").stdout(terminal);
    let mut child = cmd.spawn().unwrap();
    // The terminal's last descriptor must close with the child: then the master reads EOF.
    drop(cmd);
    let mut out = Vec::new();
    let mut master = fs::File::from(master);
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break, // EIO once the child closed the terminal
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    assert!(child.wait().unwrap().success());
    String::from_utf8_lossy(&out).replace("\r\n", "\n")
}

#[test]
fn on_a_200_column_terminal_reason_gets_all_the_width_the_other_columns_leave() {
    let env = Env::new();
    three_runs(&env);
    let long = format!("runner exited with code 2: {}", "x".repeat(300));
    let mut failed = state("FAILED", true, &long, 60, "failed");
    failed["post"]["last_error"] = json!("HTTP 503 (chat.example.com)");
    run_dir(
        &env.state_dir("long-4"),
        "long-4",
        30,
        json!({}),
        Some(failed),
    );
    // Spec names in CJK take two columns a character: the line must still fit.
    let wide = format!(
        "2 of 3 specs failed: {}",
        "cypress/e2e/登录/用户登录测试.cy.js, ".repeat(12)
    );
    run_dir(
        &env.state_dir("cjk-5"),
        "cjk-5",
        40,
        json!({}),
        Some(state("FAILED", true, &wide, 50, "posted")),
    );
    let table = on_a_terminal(&env, 200);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    for line in &lines {
        assert!(
            unicode_width::UnicodeWidthStr::width(*line) <= 200,
            "wider than the terminal: {line}"
        );
    }
    let cjk = lines.iter().find(|l| l.starts_with("cjk-5")).unwrap();
    assert!(
        (199..=200).contains(&unicode_width::UnicodeWidthStr::width(*cjk)) && cjk.ends_with('…'),
        "it fills the terminal, no wider: {cjk}"
    );
    let row = lines.iter().find(|l| l.starts_with("long-4")).unwrap();
    let reason_at = lines[0].find("REASON").unwrap();
    let reason: String = row.chars().skip(reason_at).collect();
    assert!(
        reason.chars().count() >= 100 && reason.ends_with('…'),
        "REASON got {} characters: {row}",
        reason.chars().count()
    );
    assert_eq!(row.chars().count(), 200, "it uses the whole width: {row}");
    assert!(row.contains("failed (503)"), "{row}");
    // Into a pipe (COLUMNS unset): whole lines.
    let piped = stdout(&status(&env, &[]));
    assert!(piped.contains(&long), "{piped}");
}

// ----- reads during a start ---------------------------------------------------------------

#[test]
fn a_start_replacing_a_run_never_makes_the_build_unknown_or_unreadable() {
    // The start is held exactly where its old run leaves the build's place: a reader then
    // must see the old run or the new one, never "unknown build" or a read error.
    let mut env = Env::new();
    let hook = testkit::FakeWebhook::start(vec![]);
    env.set("MATTERMOST_ATVM_WEBHOOK", hook.url());
    let old = state("COMPLETED", true, "all specs passed", 60, "posted");
    run_dir(&env.state_dir(B), B, 120, json!({}), Some(old));
    let faults = env.root().join("faults");
    fs::create_dir_all(&faults).unwrap();
    let mut start = env.cmd("start-atvm-run-watcher");
    start
        .args(["--build-name", B])
        .env("ATVM_FAILPOINTS", "start.swapped")
        .env("ATVM_FAILPOINT_DIR", &faults)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = start.spawn().unwrap();
    let reached = faults.join("start.swapped.reached");
    env.wait_until("the start between its two steps", LONG, || reached.exists());
    let detail = ok_json(&env, &["--build-name", B, "--json"]);
    let run = &detail["runs"][0];
    assert!(run["errors"].as_array().unwrap().is_empty(), "{run:#}");
    assert_ne!(
        run["run_id"],
        json!(format!("run-{B}")),
        "the new run is in place"
    );
    let all = ok_json(&env, &["--all", "--json"]);
    for r in all["runs"].as_array().unwrap() {
        assert!(r["errors"].as_array().unwrap().is_empty(), "{r:#}");
    }
    fs::write(faults.join("start.swapped.go"), b"").unwrap();
    finish(child, LONG).succeeds();
    let all = ok_json(&env, &["--all", "--json", "--build-name", B]);
    let ids: Vec<&Value> = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["run_id"])
        .collect();
    assert_eq!(ids.len(), 2, "the old run is archived: {all:#}");
    assert!(ids.contains(&&json!(format!("run-{B}"))));
    env.cancel_run(B);
}

#[test]
fn state_and_since_filter_the_table() {
    let env = Env::new();
    three_runs(&env);
    let table = stdout(&status(&env, &["--state", "completed,WATCHING"]));
    assert_eq!(column(&table, "BUILD"), ["watching-2", "done-1"]);
    let table = stdout(&status(&env, &["--since", "5m"]));
    assert_eq!(column(&table, "BUILD"), ["new-3"]);
    status(&env, &["--state", "DONE"])
        .code_is(2)
        .error_line("atvm-run-status", "not a state");
}
