//! What the watcher posts and how it treats the answer, through the binary against the fake
//! webhook: the attachment's shape and budgets, the text format, redirects, a server that
//! echoes the key back, and answers that do not mean delivered.

use super::{
    B, LONG, assert_final, assert_no_secret, completed_run, start_runner, state, watch,
    with_webhook,
};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::fs;
use std::time::Duration;
use testkit::{Echo, Env, Expect, FakeWebhook, Reply, attachment, field, fixture, text};

/// An inventory of `rows` VMs, every one running an OS the build name names.
fn huge_inventory(env: &Env, rows: usize) {
    let mut md = String::from("| VM | OS | IP | Aliases |\n|---|---|---|---|\n");
    for i in 0..rows {
        let _ = writeln!(
            md,
            "| vm-{i:06} | redhat9.6 | 10.{}.{}.{} | |",
            i / 65536,
            (i / 256) % 256,
            i % 256
        );
    }
    fs::write(&env.inventory, md).unwrap();
}

/// A mochawesome report (the real fixture's shape) with `n` failed tests whose titles and
/// errors carry mentions and Markdown, for `area07.cy.js`, a spec the failing log runs.
fn report_with_failures(env: &Env, n: usize) -> std::path::PathBuf {
    let real = fs::read_to_string(fixture("mochawesome/login.json"))
        .unwrap()
        .replace("login.cy.js", "area07.cy.js");
    let mut report: Value = serde_json::from_str(&real).unwrap();
    let suite = &mut report["results"][0]["suites"][0];
    let failed = suite["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "failed")
        .unwrap()
        .clone();
    let tests: Vec<Value> = (0..n)
        .map(|i| {
            let mut t = failed.clone();
            t["title"] = json!(format!("case {i:02} @channel **bold**"));
            t["fullTitle"] = json!(format!("Login case {i:02} @channel **bold**"));
            t["err"]["message"] = json!(format!(
                "AssertionError: case {i:02} at localhost:8080 :smile:\nsecond line"
            ));
            t
        })
        .collect();
    suite["tests"] = Value::Array(tests);
    report["stats"]["tests"] = json!(n);
    report["stats"]["failures"] = json!(n);
    report["stats"]["passes"] = json!(0);
    report["stats"]["pending"] = json!(0);
    let path = env.root().join("sixty.json");
    fs::write(&path, report.to_string()).unwrap();
    path
}

#[test]
fn the_post_is_an_attachment_within_budget_with_a_huge_inventory_and_60_failures() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    with_webhook(&mut env, &hook);
    huge_inventory(&env, 200_000);
    let report = report_with_failures(&env, 60);
    let scope = format!("@channel {}", "nightly **matrix** ".repeat(6_000)); // ~110 KB
    let run_id = env.write_request(
        B,
        json!({"template": "migration", "scope_description": scope}),
    );
    start_runner(
        &env,
        &format!(
            "cp '{}' '{}'; {}",
            report.display(),
            env.reporter_dir.display(),
            env.cypress_command("failing-2-of-20.log", 2)
        ),
    );
    let out = watch(&env, &[]);
    let s = assert_final(&env, &out, "FAILED");
    assert_eq!(s["post"]["status"], "posted");
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0].body.chars().count() < 16_000,
        "{} characters",
        reqs[0].body.chars().count()
    );
    let body = reqs[0].json();
    assert_eq!(body["username"], "atvm-watcher");
    assert_eq!(body["channel"], "qa-results");
    let summary = body["text"].as_str().unwrap();
    assert!(
        summary.starts_with("FAILED · build `e2e-redhat9.6-ubuntu24.04-w2k25-fc` · `"),
        "{summary}"
    );
    let a = attachment(&body);
    let mut keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "color",
            "fallback",
            "fields",
            "footer",
            "text",
            "title",
            "title_link"
        ]
    );
    assert_eq!(a["color"], "#C62828");
    assert_eq!(a["title"], "FAILED · e2e-redhat9.6-ubuntu24.04-w2k25-fc");
    assert_eq!(
        a["title_link"],
        "https://cloud.cypress.io/projects/x7k2pq/runs/1842"
    );
    let fallback = a["fallback"].as_str().unwrap();
    assert!(
        fallback.starts_with("FAILED · build e2e-redhat9.6-ubuntu24.04-w2k25-fc · ")
            && !fallback.contains('`'),
        "{fallback}"
    );
    // The footer names host, run id and times (a duplicate post is recognisable).
    let footer = a["footer"].as_str().unwrap();
    assert!(footer.contains(&format!(" · run {run_id} · ")), "{footer}");
    assert!(footer.contains('→') && footer.ends_with('Z'), "{footer}");
    // Short fields, each only when known, then the long VMs field.
    let fields: Vec<(&str, bool)> = a["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["title"].as_str().unwrap(), f["short"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        fields,
        [
            ("Tests", true),
            ("Duration", true),
            // The first run's own mark: the field shows the earlier runs and this one.
            ("Last runs", true),
            ("Template", true),
            ("Scope", true),
            ("VMs", false)
        ]
    );
    let c = &s["counts"];
    assert_eq!(
        field(&body, "Tests").unwrap(),
        format!(
            "{} · passed {} · failed {} · pending {} · skipped {}",
            c["tests"], c["passed"], c["failed"], c["pending"], c["skipped"]
        )
    );
    let scope = field(&body, "Scope").unwrap();
    assert!(
        scope.starts_with("`@channel nightly **matrix**") && scope.ends_with("…`"),
        "{scope}"
    );
    assert!(scope.chars().count() <= 300, "{}", scope.chars().count());
    let vms = field(&body, "VMs").unwrap();
    assert_eq!(vms.matches("`vm-").count(), 20, "{vms}");
    assert!(vms.ends_with(", and 199980 more"), "{vms}");
    // Ten failed tests, each with the first line of its error, then "and 51 more": the
    // report's other 50, and area13.cy.js, which fails in the log and has no report.
    let failed = a["text"].as_str().unwrap();
    let items: Vec<&str> = failed.lines().filter(|l| l.starts_with("- ")).collect();
    assert_eq!(items.len(), 10, "{failed}");
    assert_eq!(
        items[0],
        "- `cypress/e2e/area07.cy.js › Login case 00 @channel **bold** — \
         AssertionError: case 00 at localhost:8080 :smile:`"
    );
    assert!(!failed.contains("second line"));
    assert!(
        failed.ends_with(
            "\n\nand 51 more\n\nFirst finished run of this build name: nothing to compare with yet."
        ),
        "{failed}"
    );
    assert_no_secret(&env, &hook, &out);
}

#[test]
fn the_text_format_posts_one_markdown_message() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    with_webhook(&mut env, &hook);
    env.set("MATTERMOST_ATVM_FORMAT", "text");
    completed_run(&env);
    let out = watch(&env, &[]);
    assert_final(&env, &out, "COMPLETED");
    let body = hook.requests()[0].json();
    assert!(body.get("attachments").is_none(), "{body}");
    assert_eq!(body["channel"], "qa-results");
    let text = body["text"].as_str().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(
            ":white_check_mark: **COMPLETED** · build `e2e-redhat9.6-ubuntu24.04-w2k25-fc`"
        ),
        "{text}"
    );
    for line in [
        "**Tests:** 6 · passed 5 · failed 0 · pending 1 · skipped 0",
        "**Config family:** `redhat @all`",
        "**Scope:** `@channel nightly **matrix** @here`",
        "**Run:** [`cloud.cypress.io/projects/x7k2pq/runs/1842`](https://cloud.cypress.io/projects/x7k2pq/runs/1842)",
    ] {
        assert!(lines.contains(&line), "{line:?} missing:\n{text}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("**VMs:** ")
                && l.contains("`atvm-rh96-01 (redhat9.6, 192.0.2.11)`")),
        "{text}"
    );
    let run_id = state(&env)["run_id"].as_str().unwrap().to_string();
    assert!(
        lines
            .last()
            .unwrap()
            .contains(&format!(" · run `{run_id}` · ")),
        "{text}"
    );
    assert!(text.chars().count() < 16_000);
}

#[test]
fn test_post_uses_the_format_from_the_env_file() {
    let env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    fs::write(
        &env.env_file,
        format!(
            "MATTERMOST_ATVM_WEBHOOK={}\nMATTERMOST_ATVM_FORMAT=text\n",
            hook.url()
        ),
    )
    .unwrap();
    let out = env.run("atvm-run-watcher", &["--test-post"]);
    out.succeeds();
    let body = hook.requests()[0].json();
    assert!(body.get("attachments").is_none(), "{body}");
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("**ATVM watcher test message**"),
        "{body}"
    );
    // The default is an attachment.
    fs::write(
        &env.env_file,
        format!("MATTERMOST_ATVM_WEBHOOK={}\n", hook.url()),
    )
    .unwrap();
    let out = env.run("atvm-run-watcher", &["--test-post"]);
    out.succeeds();
    let body = hook.requests()[1].json();
    assert_eq!(attachment(&body)["title"], "ATVM watcher test message");
    // A format nobody knows is a configuration error.
    fs::write(
        &env.env_file,
        format!(
            "MATTERMOST_ATVM_WEBHOOK={}\nMATTERMOST_ATVM_FORMAT=html\n",
            hook.url()
        ),
    )
    .unwrap();
    let out = env.run("atvm-run-watcher", &["--test-post"]);
    out.code_is(78);
    out.said("MATTERMOST_ATVM_FORMAT");
    assert_eq!(hook.count(), 2);
}

#[test]
fn a_redirect_is_a_permanent_failure_and_never_followed() {
    for code in [301, 302, 307] {
        let mut env = Env::new();
        let target = FakeWebhook::start(vec![]);
        let hook = FakeWebhook::start(vec![Reply::redirect(code, &target.url())]);
        with_webhook(&mut env, &hook);
        completed_run(&env);
        let out = watch(&env, &[]);
        assert_eq!(out.status.code(), Some(1), "{code}: {}", text(&out));
        let expected = format!("HTTP {code} redirect to {}", target.host());
        assert!(text(&out).contains(&expected), "{code}: {}", text(&out));
        let s = state(&env);
        assert_eq!(s["state"], "COMPLETED");
        assert_eq!(s["post"]["status"], "failed", "{code}: {s}");
        assert_eq!(s["post"]["attempts"], 1);
        let error = s["post"]["last_error"].as_str().unwrap();
        assert!(
            error.contains(&expected) && error.contains(&hook.host()),
            "{error}"
        );
        assert_eq!(hook.count(), 1, "no retry");
        assert_eq!(target.count(), 0, "{code}: the redirect was followed");
        assert!(!env.state_dir(B).join("posted.marker").exists());
        assert_no_secret(&env, &hook, &out);
        assert!(!text(&out).contains(target.secret()) && !error.contains(target.secret()));
    }
}

#[test]
fn a_server_echoing_the_key_never_gets_it_printed_or_stored() {
    for echo in Echo::ALL {
        let mut env = Env::new();
        let hook = FakeWebhook::start(vec![Reply::echo(500, echo), Reply::echo(400, echo)]);
        with_webhook(&mut env, &hook);
        completed_run(&env);
        let out = watch(&env, &[]);
        assert_eq!(out.status.code(), Some(1), "{echo:?}: {}", text(&out));
        let s = state(&env);
        assert_eq!(s["post"]["status"], "failed", "{echo:?}");
        assert_eq!(s["post"]["attempts"], 2, "{echo:?}: 500 retried, 400 final");
        let path = hook.requests()[0].path.clone();
        let secret = hook.secret().to_string();
        for needle in [
            secret.clone(),
            secret.to_uppercase(),
            echo.fragment(&path),
            Echo::PercentEncoded.fragment(&path),
        ] {
            assert!(
                !text(&out).contains(&needle),
                "{echo:?}: {needle:?} printed:\n{}",
                text(&out)
            );
            let files = env.files_containing(&needle);
            assert!(files.is_empty(), "{echo:?}: {needle:?} stored in {files:?}");
        }
        let error = s["post"]["last_error"].as_str().unwrap();
        assert!(error.starts_with("HTTP 400"), "{error}");
        match echo {
            // Only a Mattermost JSON error is quoted, and then without the key.
            Echo::MattermostJson | Echo::Truncated => assert!(
                error.contains("id \"web.incoming_webhook.invalid.app_error\"")
                    && error.contains("message \"Invalid webhook: [redacted]")
                    && error.contains("status_code 400")
                    && !error.contains("no hook at"),
                "{error}"
            ),
            _ => assert_eq!(error, format!("HTTP 400 ({})", hook.host())),
        }
    }
}

#[test]
fn a_200_with_a_body_other_than_ok_is_not_delivered_nor_quoted() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![Reply::status(
        200,
        "<html>Sign in to the Wi-Fi</html>",
    )]);
    with_webhook(&mut env, &hook);
    completed_run(&env);
    let out = watch(&env, &[]);
    out.code_is(1);
    let s = state(&env);
    assert_eq!(s["post"]["status"], "failed");
    let error = s["post"]["last_error"].as_str().unwrap();
    assert_eq!(
        error,
        format!("HTTP 200 without `ok` (not delivered) ({})", hook.host())
    );
    out.never_said("Wi-Fi");
    assert!(!env.state_dir(B).join("posted.marker").exists());
}

#[test]
fn an_answer_later_than_the_request_timeout_is_retried() {
    let mut env = Env::new();
    // A 4 s window gives each request 2 s; the first answer comes after 3 s.
    let hook = FakeWebhook::start(vec![Reply::delayed(Duration::from_secs(3), Reply::Ok)]);
    with_webhook(&mut env, &hook);
    completed_run(&env);
    let out = watch(&env, &["--post-retry-seconds", "4"]);
    let s = assert_final(&env, &out, "COMPLETED");
    assert_eq!(s["post"]["status"], "posted", "{s}");
    assert_eq!(s["post"]["attempts"], 2);
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body, reqs[1].body, "the same bytes each time");
    assert!(
        reqs[1].at.duration_since(reqs[0].at) < LONG,
        "{:?}",
        reqs[1].at.duration_since(reqs[0].at)
    );
}

#[test]
fn a_passing_run_never_lists_the_failure_of_another_build_running_the_same_spec() {
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    with_webhook(&mut env, &hook);
    env.write_request(B, json!({}));
    // Another build, running login.cy.js at the same time, fails it; its report lands in
    // the shared reporter directory while this run passes the same spec.
    start_runner(
        &env,
        &format!(
            "cp '{}' '{}/other-build.json'; {}",
            fixture("mochawesome/login.json").display(),
            env.reporter_dir.display(),
            env.cypress_command("passing.log", 0)
        ),
    );
    let out = watch(&env, &[]);
    let s = assert_final(&env, &out, "COMPLETED");
    assert_eq!(s["post"]["status"], "posted");
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 1);
    let body = reqs[0].body.as_str();
    assert!(
        !body.contains("rejects a bad password") && !body.contains("failing test"),
        "another build's failure in a COMPLETED post: {body}"
    );
}
