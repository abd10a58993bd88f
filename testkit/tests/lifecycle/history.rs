//! What a post tells beyond its verdict, run after run of one build name through
//! start-atvm-run (docs/watcher-service.md, "What a post tells"): new, again and fixed
//! against the previous finished run, per group for categorized runs; `Last runs`; the
//! duration from the boot clock; flaky tests; JUnit reports; the owner's mention and
//! `MATTERMOST_ATVM_NOTIFY`; the archive's order of starts; the history in
//! `atvm-run-status`; and a text post that stays one post on a 4,000-character server.

use super::{B, LONG, assert_watcher_done, setup, started};
use serde_json::Value;
use std::fs;
use std::time::{Duration, SystemTime};
use testkit::{Env, Expect, FakeWebhook, attachment, field, fixture};

/// Run `command` as the next run of `B` and wait for its end; its post (the last one).
fn next_run(env: &Env, hook: &FakeWebhook, command: &str, extra: &[&str]) -> Value {
    let before = hook.requests().len();
    started(env, command, extra);
    env.wait_final(B, LONG);
    assert_watcher_done(env);
    let posts = hook.requests();
    assert_eq!(posts.len(), before + 1, "one post per run");
    posts[before].json()
}

fn text_of(post: &Value) -> String {
    attachment(post)["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A runner command that copies `reports` into the reporter directory, then prints the log
/// fixture and exits with `code`.
fn with_reports(env: &Env, reports: &[std::path::PathBuf], fixture: &str, code: i32) -> String {
    fs::create_dir_all(&env.reporter_dir).unwrap();
    let mut cmd = String::new();
    for r in reports {
        cmd.push_str(&format!(
            "cp '{}' '{}/'; ",
            r.display(),
            env.reporter_dir.display()
        ));
    }
    cmd + &env.cypress_command(fixture, code)
}

/// The real mochawesome report of `login.cy.js` (`env.report_for`, named after `spec`)
/// with its failing test "Login rejects a bad password" set to `state`, as mochawesome
/// writes such a test (`pending` for `it.skip`, like the fixture's skipped one), or left
/// out (`None`: the test was removed). Written to `<root>/<dir>/`.
fn login_report(env: &Env, spec: &str, dir: &str, state: Option<&str>) -> std::path::PathBuf {
    let mut doc: Value = testkit::read_json(&env.report_for(spec));
    let tests = doc["results"][0]["suites"][0]["tests"]
        .as_array_mut()
        .unwrap();
    let i = tests
        .iter()
        .position(|t| t["fullTitle"] == "Login rejects a bad password")
        .unwrap();
    let counted = match state {
        None => {
            tests.remove(i);
            None
        }
        Some(state) => {
            let t = &mut tests[i];
            t["state"] = state.into();
            t["pass"] = (state == "passed").into();
            t["fail"] = false.into();
            t["pending"] = (state == "pending").into();
            t["err"] = serde_json::json!({});
            Some(if state == "passed" {
                "passes"
            } else {
                "pending"
            })
        }
    };
    let stats = &mut doc["stats"];
    stats["failures"] = 0.into();
    match counted {
        None => stats["tests"] = 3.into(),
        Some(key) => stats[key] = (stats[key].as_u64().unwrap() + 1).into(),
    }
    let out = env.root().join(dir);
    fs::create_dir_all(&out).unwrap();
    let path = out.join(spec.replace(".cy.js", ".json"));
    fs::write(&path, doc.to_string()).unwrap();
    path
}

#[test]
fn each_run_says_what_is_new_what_fails_again_and_what_was_fixed() {
    let (env, hook) = setup();
    let first = next_run(
        &env,
        &hook,
        &env.cypress_command("failing-2-of-20.log", 2),
        &[],
    );
    assert!(
        text_of(&first)
            .ends_with("First finished run of this build name: nothing to compare with yet."),
        "{first:#}"
    );
    assert_eq!(
        field(&first, "Last runs").as_deref(),
        Some("✖ █"),
        "this run alone: the field shows the earlier runs and this one"
    );
    let second = next_run(
        &env,
        &hook,
        &env.cypress_command("failing-3-and-7-of-20.log", 2),
        &[],
    );
    let text = text_of(&second);
    assert!(
        text.contains("- **new** `cypress/e2e/area03.cy.js › 1 failing test`")
            && text.contains("- **again ×2** `cypress/e2e/area07.cy.js › 1 failing test`"),
        "{text}"
    );
    assert!(
        text.ends_with("**Fixed since the last run:** `cypress/e2e/area13.cy.js`"),
        "{text}"
    );
    let marks = field(&second, "Last runs").unwrap_or_default();
    assert!(marks.starts_with("✖✖ "), "{marks}");
    let third = next_run(&env, &hook, &env.cypress_command("passing-20.log", 0), &[]);
    let text = text_of(&third);
    assert!(
        text.contains("`cypress/e2e/area03.cy.js`") && text.contains("`cypress/e2e/area07.cy.js`"),
        "the passing run names both as fixed: {text}"
    );
    assert!(
        field(&third, "Last runs")
            .unwrap_or_default()
            .starts_with("✖✖✔ ")
    );
    assert!(
        field(&third, "Duration")
            .unwrap_or_default()
            .contains("% vs 20"),
        "{third:#}"
    );
    // The archive keeps each run's summary, named by the order of starts.
    let base = env.state_root.join(".archive").join(B);
    let mut names: Vec<String> = fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names[0].starts_with("000001-") && names[1].starts_with("000002-"),
        "{names:?}"
    );
    let summary = testkit::read_json(&base.join(&names[1]).join("summary.json"));
    assert_eq!(summary["run"]["state"], "FAILED", "{summary:#}");
    assert_eq!(summary["run"]["failed"][1]["streak"], 2, "{summary:#}");
    // atvm-run-status shows the same history as a table, and in its JSON.
    let out = env.run("atvm-run-status", &["--build-name", B]);
    out.succeeds()
        .said("history (earlier runs, newest first)")
        .said("RUN")
        .said("DURATION");
    let table: Vec<String> = out
        .text()
        .lines()
        .skip_while(|l| !l.contains("history"))
        .map(str::to_string)
        .collect();
    assert!(
        table[2].contains("000002-") && table[2].contains("FAILED") && table[2].contains("posted"),
        "{table:#?}"
    );
    assert!(table[3].contains("000001-"), "{table:#?}");
    let json: Value = serde_json::from_str(
        &env.run("atvm-run-status", &["--build-name", B, "--json"])
            .text(),
    )
    .unwrap_or(Value::Null);
    let history = &json["runs"][0]["history"];
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{json:#}");
    assert_eq!(history[0]["failed_tests"], 2);
}

#[test]
fn a_group_compares_with_the_same_group_of_the_previous_run() {
    let (env, hook) = setup();
    let cmd = env.cypress_command("categorized-3-groups.log", 1);
    for _ in 0..2 {
        started(&env, &cmd, &["--categorize"]);
        env.wait_final(B, LONG);
        assert_watcher_done(&env);
    }
    let posts: Vec<Value> = hook.requests().iter().map(|r| r.json()).collect();
    assert_eq!(posts.len(), 6, "three groups, twice");
    assert!(text_of(&posts[1]).contains("First finished run of this group"));
    // The second run's windows group failed last time too; linux passed both times.
    let windows = text_of(&posts[4]);
    assert!(
        windows.contains("- **again ×2** `cypress/e2e/agent.cy.js › 1 failing test`"),
        "{windows}"
    );
    assert_eq!(
        field(&posts[4], "Last runs")
            .map(|m| m.chars().take(2).collect::<String>())
            .as_deref(),
        Some("✖✖")
    );
    assert_eq!(
        field(&posts[3], "Last runs")
            .map(|m| m.chars().take(2).collect::<String>())
            .as_deref(),
        Some("✔✔")
    );
}

#[test]
fn notify_failed_keeps_a_pass_quiet_but_in_the_history() {
    let (mut env, hook) = setup();
    env.set("MATTERMOST_ATVM_NOTIFY", "failed");
    started(&env, &env.cypress_command("passing.log", 0), &[]);
    let s = env.wait_final(B, LONG);
    assert_watcher_done(&env);
    assert_eq!(s["state"], "COMPLETED");
    let s = env.state(B);
    assert_eq!(s["post"]["status"], "suppressed", "{s:#}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap_or_default()
            .ends_with("not posted: MATTERMOST_ATVM_NOTIFY=failed posts FAILED results only"),
        "{s:#}"
    );
    assert_eq!(hook.requests().len(), 0);
    let failed = next_run(
        &env,
        &hook,
        &env.cypress_command("failing-2-of-20.log", 2),
        &[],
    );
    assert!(
        field(&failed, "Last runs")
            .unwrap_or_default()
            .starts_with("✔✖ "),
        "{failed:#}"
    );
    assert!(text_of(&failed).contains("- **new** `cypress/e2e/area07.cy.js"));
}

#[test]
fn the_owner_is_named_on_a_failure_only_and_a_bad_mention_is_refused_unquoted() {
    let (mut env, hook) = setup();
    env.set("MATTERMOST_ATVM_MENTION", "@qa-oncall");
    let passed = next_run(&env, &hook, &env.cypress_command("passing.log", 0), &[]);
    assert!(!passed.to_string().contains("@qa-oncall"), "{passed:#}");
    let failed = next_run(
        &env,
        &hook,
        &env.cypress_command("failing-2-of-20.log", 2),
        &[],
    );
    let top = failed["text"].as_str().unwrap_or_default();
    assert!(top.starts_with("@qa-oncall FAILED · build "), "{top}");
    // Not `@name` tokens; and valid tokens too long for the text format to carry whole
    // (three 45-character names), which a post would otherwise drop or cut.
    env.set("MATTERMOST_ATVM_FORMAT", "text");
    let long = [1, 2, 3]
        .map(|i| format!("@oncall-{i}-{}", "x".repeat(35)))
        .join(" ");
    let cmd = env.cypress_command("passing.log", 0);
    for (bad, why, secret) in [
        ("@qa oncall<!channel>", "@name tokens", "oncall<"),
        (long.as_str(), "over the 120", "oncall-1-"),
    ] {
        env.set("MATTERMOST_ATVM_MENTION", bad);
        for (tool, args) in [
            (
                "start-atvm-run",
                vec!["--build-name", B, "--runner-command", cmd.as_str()],
            ),
            ("start-atvm-run-watcher", vec!["--build-name", B]),
            ("atvm-run-watcher", vec!["--build-name", B, "--once"]),
            ("atvm-run-watcher", vec!["--test-post"]),
        ] {
            env.run(tool, &args)
                .code_is(78)
                .error_line(tool, "MATTERMOST_ATVM_MENTION")
                .said(why)
                .never_said(secret);
        }
    }
    assert_eq!(hook.requests().len(), 2, "nothing more was posted");
}

#[test]
fn the_duration_comes_from_the_boot_clock_not_a_stepped_wall_clock() {
    let (env, hook) = setup();
    // The wall clock said 2000 when the runner started (a step since): only the boot
    // clock's readings in runner/status.json tell how long the run took.
    let status = env.state_dir(B).join("runner/status.json");
    let cmd = format!(
        "until [ -s '{0}' ]; do sleep 0.02; done; \
         sed -i 's/\"started_at\": *\"[^\"]*\"/\"started_at\": \"2000-01-01T00:00:00.000Z\"/' '{0}'; {1}",
        status.display(),
        env.cypress_command("passing.log", 0)
    );
    let post = next_run(&env, &hook, &cmd, &[]);
    let duration = field(&post, "Duration").unwrap_or_default();
    assert!(
        duration.ends_with('s') && !duration.contains('h') && !duration.contains('d'),
        "{duration}"
    );
    assert!(
        attachment(&post)["footer"]
            .as_str()
            .unwrap_or_default()
            .contains("2000-01-01")
    );
}

#[test]
fn a_test_that_passed_on_a_retry_is_flaky_and_the_run_stays_green() {
    let (env, hook) = setup();
    let post = next_run(
        &env,
        &hook,
        &env.cypress_command("flaky-passing.log", 0),
        &[],
    );
    assert_eq!(env.state(B)["state"], "COMPLETED");
    // The footer says where the log is: host:<path>, never its content.
    let log = env.log_dir.join(format!("{B}.log"));
    let footer = attachment(&post)["footer"].as_str().unwrap_or_default();
    assert!(
        footer.contains(&format!(":{} · run ", log.display())),
        "{footer}"
    );
    assert!(
        post["text"]
            .as_str()
            .unwrap_or_default()
            .contains(" · 1 flaky · "),
        "{post:#}"
    );
    assert_eq!(
        field(&post, "Flaky").as_deref(),
        Some("1: `cypress/e2e/checkout.cy.js › sends the receipt`")
    );
    // atvm-run-status shows the count the post gave: TESTS passed/failed/flaky, and JSON.
    let table = env.run("atvm-run-status", &[]);
    table.succeeds();
    let row = table.text().lines().nth(1).unwrap_or_default().to_string();
    assert!(row.contains(" 4/0/1 "), "{row}");
    let json: Value =
        serde_json::from_str(&env.run("atvm-run-status", &["--json"]).text()).unwrap();
    assert_eq!(json["runs"][0]["flaky"], 1, "{json:#}");
    env.run("atvm-run-status", &["--build-name", B])
        .succeeds()
        .said("· flaky 1");
    // A test that failed every attempt is a failure, not flaky.
    let post = next_run(&env, &hook, &env.cypress_command("retries.log", 1), &[]);
    assert_eq!(env.state(B)["state"], "FAILED");
    assert!(
        text_of(&post).contains("`cypress/e2e/checkout.cy.js › 1 failing test`"),
        "{post:#}"
    );
    assert_eq!(
        field(&post, "Flaky").as_deref(),
        Some("1: `cypress/e2e/checkout.cy.js › sends the receipt`")
    );
}

#[test]
fn junit_reports_name_the_failed_tests_like_mochawesome_ones() {
    let (env, hook) = setup();
    fs::create_dir_all(&env.reporter_dir).unwrap();
    // A report left by an earlier run (older than the runner) and one of another build's
    // spec: neither counts.
    let stale = env.reporter_dir.join("stale.xml");
    fs::copy(fixture("junit/checkout.xml"), &stale).unwrap();
    let old = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let cmd = format!(
        "cp '{}' '{}/results-1.xml'; cp '{}' '{}/results-2.xml'; {}",
        fixture("junit/checkout.xml").display(),
        env.reporter_dir.display(),
        fixture("junit/search.xml").display(),
        env.reporter_dir.display(),
        env.cypress_command("retries.log", 1)
    );
    let post = next_run(&env, &hook, &cmd, &[]);
    let text = text_of(&post);
    assert!(
        text.contains("`cypress/e2e/checkout.cy.js › Checkout charges the card — expected the payment to go through`"),
        "{text}"
    );
    assert_eq!(
        text.matches("charges the card").count(),
        1,
        "the stale copy is not counted: {text}"
    );
    assert!(
        !text.contains("1 failing test"),
        "the report names it: {text}"
    );
}

#[test]
fn archives_named_while_the_clock_ran_ahead_never_push_out_the_newest() {
    let (env, hook) = setup();
    // Twenty archives an older version named while the clock ran two hours ahead (and
    // years, here): by name they are all newer than anything archived today.
    let base = env.state_root.join(".archive").join(B);
    fs::create_dir_all(&base).unwrap();
    for i in 0..20 {
        fs::create_dir(base.join(format!("20991231T2200{i:02}Z"))).unwrap();
    }
    for _ in 0..2 {
        next_run(&env, &hook, &env.cypress_command("passing.log", 0), &[]);
    }
    let names: Vec<String> = fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(names.len(), 20, "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("000001-")),
        "the run just archived is kept: {names:?}"
    );
    assert!(
        !names.contains(&"20991231T220000Z".to_string()),
        "the oldest start went: {names:?}"
    );
}

#[test]
fn the_text_format_stays_one_post_on_a_4000_character_server() {
    let mut env = Env::new();
    let hook = FakeWebhook::with_post_size(vec![], 4_000);
    env.set("MATTERMOST_ATVM_WEBHOOK", hook.url());
    env.set("MATTERMOST_ATVM_FORMAT", "text");
    // A long scope and a failing run: everything the text can carry.
    let scope = "scope ".repeat(400);
    let post = next_run(
        &env,
        &hook,
        &env.cypress_command("failing-2-of-20.log", 2),
        &[
            "--scope-description",
            &scope,
            "--config-file",
            &"c".repeat(3000),
        ],
    );
    let text = post["text"].as_str().unwrap_or_default();
    assert!(text.chars().count() <= 4_000, "{}", text.chars().count());
    assert_eq!(hook.posts().len(), 1, "Mattermost did not split it");
    assert!(text.contains("area07.cy.js"), "{text}");
}

#[test]
fn a_test_that_is_pending_or_gone_now_is_not_called_fixed() {
    let (env, hook) = setup();
    // Run 1 fails area07's "Login rejects a bad password" (its report) and area13 (the
    // log only: a spec-level failure).
    let failing = [env.report_for("area07.cy.js")];
    let cmd = with_reports(&env, &failing, "failing-2-of-20.log", 2);
    next_run(&env, &hook, &cmd, &[]);
    // Run 2 passes: area07's test is skipped now (`it.skip`), and its report says so.
    for (state, dir) in [(Some("pending"), "skipped"), (None, "removed")] {
        let report = [login_report(&env, "area07.cy.js", dir, state)];
        let post = next_run(
            &env,
            &hook,
            &with_reports(&env, &report, "passing-20.log", 0),
            &[],
        );
        let text = text_of(&post);
        assert!(
            text.ends_with("**Fixed since the last run:** `cypress/e2e/area13.cy.js`"),
            "{dir}: the spec-level failure's row passed; the test did not: {text}"
        );
        // The same failures again, for the next case to compare with.
        next_run(&env, &hook, &cmd, &[]);
    }
    // When its report shows it passing, it is fixed.
    let report = [login_report(
        &env,
        "area07.cy.js",
        "passing",
        Some("passed"),
    )];
    let post = next_run(
        &env,
        &hook,
        &with_reports(&env, &report, "passing-20.log", 0),
        &[],
    );
    let text = text_of(&post);
    assert!(
        text.contains("`cypress/e2e/area07.cy.js › Login rejects a bad password`")
            && text.contains("`cypress/e2e/area13.cy.js`"),
        "{text}"
    );
}

#[test]
fn a_spec_s_two_reports_from_multi_reporters_name_each_failure_once() {
    let (env, hook) = setup();
    // cypress-multi-reporters writes the same spec run as mochawesome JSON and JUnit XML.
    let json = env.report_for("area07.cy.js");
    let xml = env.root().join("area07.xml");
    let junit = fs::read_to_string(fixture("junit/login.xml")).unwrap();
    fs::write(&xml, junit.replace("login.cy.js", "area07.cy.js")).unwrap();
    let cmd = with_reports(&env, &[json, xml], "failing-2-of-20.log", 2);
    let post = next_run(&env, &hook, &cmd, &[]);
    let text = text_of(&post);
    assert_eq!(
        text.matches("Login rejects a bad password").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("Login rejects a bad password — AssertionError: expected the error banner"),
        "the richer record: {text}"
    );
    let summary = testkit::read_json(&env.state_dir(B).join("summary.json"));
    let failed = summary["run"]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "area07's test and area13: {summary:#}");
    assert_eq!(summary["run"]["failed_total"], 2, "{summary:#}");
}

/// Thirty mochawesome reports `s01.json` … `s30.json` (from the real fixture's shape), four
/// tests each (`test 1` … `test 4`), failing in the specs `failing` names.
fn thirty_reports(env: &Env, dir: &str, failing: impl Fn(u32) -> bool) -> Vec<std::path::PathBuf> {
    let template: Value = testkit::read_json(&fixture("mochawesome/login.json"));
    let out = env.root().join(dir);
    fs::create_dir_all(&out).unwrap();
    (1..=30)
        .map(|n| {
            let spec = format!("s{n:02}");
            let mut doc = template.clone();
            let (state, fails) = if failing(n) { ("failed", 4) } else { ("passed", 0) };
            doc["stats"] = serde_json::json!({"tests": 4, "passes": 4 - fails, "failures": fails, "pending": 0, "skipped": 0});
            let result = &mut doc["results"][0];
            result["file"] = format!("/cypress/e2e/{spec}.cy.js").into();
            let suite = &mut result["suites"][0];
            suite["title"] = spec.to_uppercase().into();
            suite["suites"] = serde_json::json!([]);
            let model = suite["tests"][1].clone();
            suite["tests"] = (1..=4)
                .map(|k| {
                    let mut t = model.clone();
                    t["title"] = format!("test {k}").into();
                    t["fullTitle"] = format!("{} test {k}", spec.to_uppercase()).into();
                    t["state"] = state.into();
                    if state == "passed" {
                        t["err"] = serde_json::json!({});
                    }
                    t
                })
                .collect();
            let path = out.join(format!("{spec}.json"));
            fs::write(&path, doc.to_string()).unwrap();
            path
        })
        .collect()
}

#[test]
fn after_more_failures_than_a_summary_keeps_nothing_is_called_new_that_may_not_be() {
    let (env, hook) = setup();
    // Run 1 fails 120 tests in 30 specs; its summary keeps the first 100 (s01…s25).
    let all = thirty_reports(&env, "run1", |_| true);
    next_run(
        &env,
        &hook,
        &with_reports(&env, &all, "failing-120-tests.log", 1),
        &[],
    );
    let summary = testkit::read_json(&env.state_dir(B).join("summary.json"));
    assert_eq!(summary["run"]["failed"].as_array().map(Vec::len), Some(100));
    assert_eq!(summary["run"]["failed_total"], 120);
    // Run 2 fails only s30's four, which failed last time among those not kept.
    let one = thirty_reports(&env, "run2", |n| n == 30);
    let post = next_run(
        &env,
        &hook,
        &with_reports(&env, &one, "failing-s30-of-30.log", 1),
        &[],
    );
    let text = text_of(&post);
    assert_eq!(
        text.matches("- **again?** `cypress/e2e/s30.cy.js › S30 test")
            .count(),
        4,
        "{text}"
    );
    assert!(!text.contains("**new**"), "{text}");
    assert!(
        text.contains("and 95 more; 20 more failed tests of the last run were not kept (the history keeps 100), so not compared"),
        "100 known fixed, 20 not known: {text}"
    );
}
