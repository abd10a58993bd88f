//! Decisions that must not depend on when the watcher looked, nor on an input it could not
//! read or the runner could not write (docs/watcher-service.md, "Restart equivalence"),
//! through the binaries with the real runner wrapper: a log emptied by a reboot, groups
//! that print the same spec names finishing while the watcher was stopped, a full /tmp,
//! Cypress Cloud's cancel, and reports an earlier run left just before the start.

use super::{B, LONG, assert_final, start_runner, watch};
use serde_json::{Value, json};
use std::fs;
use std::process::Output;
use std::time::{Duration, SystemTime};
use testkit::scenario::{Ending, Group, Play, Scenario, Spec};
use testkit::{Expect, Posting, SmallDisk, attachment, finish};

/// Another boot than the machine's (the watcher compares boot ids to tell a reboot).
const OTHER_BOOT: &str = "0123456789abcdef0123456789abcdef";

fn spec(name: &str, fails: u32) -> Spec {
    Spec {
        name: name.to_string(),
        fails,
        flaky: false,
        report: true,
    }
}

fn group(name: Option<&str>, specs: Vec<Spec>) -> Group {
    Group {
        name: name.map(str::to_string),
        specs,
        finished: true,
    }
}

fn scenario(categorized: bool, groups: Vec<Group>, ending: Ending) -> Scenario {
    Scenario {
        seed: 0,
        categorized,
        groups,
        ending,
    }
}

/// One evaluation by a fresh watcher, as a restart at every poll is.
fn once(p: &Posting) -> Output {
    let out = p.run("atvm-run-watcher", &["--build-name", B, "--once"]);
    out.succeeds();
    out
}

/// A watcher started after a reboot (another boot id), run to the end.
fn watch_after_reboot(p: &Posting) -> Output {
    let child = p
        .cmd("atvm-run-watcher")
        .args(["--build-name", B])
        .env("ATVM_BOOT_ID", OTHER_BOOT)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    finish(child, LONG)
}

/// A passing plain run of two specs, held after `steps` steps with a watcher having
/// followed each of them.
fn passing_run_followed(p: &Posting, steps: usize) -> Play {
    p.write_request(B, json!({}));
    let sc = scenario(
        false,
        vec![group(
            Some("linux"),
            vec![spec("verify.cy.ts", 0), spec("login.cy.js", 0)],
        )],
        Ending::Exit(0),
    );
    let mut run = Play::start(p, B, &sc);
    for _ in 0..steps {
        run.step(p, B);
        once(p);
    }
    run
}

#[test]
fn a_passing_run_whose_log_was_emptied_by_a_reboot_is_unknown_not_failed() {
    let p = Posting::new(vec![]);
    // Followed to "running spec 2 of 2" (header, spec 1, spec 2); then the watcher dies.
    let mut run = passing_run_followed(&p, 3);
    let s = p.state(B);
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("running spec 2 of 2"),
        "{s:#}"
    );
    // The run passes and ends while no watcher runs; /tmp is emptied at boot.
    run.to_end(&p, B);
    fs::remove_file(p.run_log(B)).unwrap();
    let out = watch_after_reboot(&p);
    let s = assert_final(&p, &out, "UNKNOWN");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains(&p.run_log(B).display().to_string())
            && reason.contains("removed or replaced before it was read to its end"),
        "{reason}"
    );
    assert_eq!(s["post"]["status"], "suppressed", "{s:#}");
    assert_eq!(p.hook.count(), 0, "an UNKNOWN run posts nothing");
}

#[test]
fn a_log_read_to_its_end_before_it_vanished_decides_as_usual() {
    let p = Posting::new(vec![]);
    // Every step followed, summary included; the log goes before the command ends.
    let mut run = passing_run_followed(&p, 4);
    fs::remove_file(p.run_log(B)).unwrap();
    run.to_end(&p, B);
    let s = assert_final(&p, &watch_after_reboot(&p), "COMPLETED");
    assert_eq!(s["post"]["status"], "posted", "{s:#}");
    assert_eq!(p.hook.count(), 1);
}

#[test]
fn a_log_removed_while_the_runner_writes_it_is_read_through_its_descriptor() {
    let p = Posting::new(vec![]);
    // A /tmp cleaner removes the log after the first step; no watcher had it open.
    let mut run = passing_run_followed(&p, 0);
    run.step(&p, B);
    fs::remove_file(p.run_log(B)).unwrap();
    run.step(&p, B);
    let watcher = p.spawn("atvm-run-watcher", &["--build-name", B]);
    run.to_end(&p, B);
    let out = finish(watcher, LONG);
    let s = assert_final(&p, &out, "COMPLETED");
    out.said("reading it through the runner's descriptor");
    assert_eq!(s["counts"]["tests"], 2, "{s:#}");
}

/// Groups `linux` then `windows`, each failing a spec Cypress prints as `verify.cy.ts`:
/// the watcher sees `linux` start, is stopped, and both groups finish before it starts
/// again. Each group's post lists its own failed test, not the other's.
#[test]
fn groups_printing_the_same_spec_names_keep_their_own_failures_across_a_restart() {
    let mut p = Posting::new(vec![]);
    p.set("ATVM_GRACE_SECONDS", "0.2");
    p.write_request(B, json!({"categorize": true}));
    let sc = scenario(
        true,
        vec![
            group(Some("linux"), vec![spec("verify.cy.ts", 1)]),
            group(Some("windows"), vec![spec("verify.cy.ts", 1)]),
        ],
        Ending::Exit(2),
    );
    let mut run = Play::start(&p, B, &sc);
    run.step(&p, B);
    once(&p);
    run.to_end(&p, B);
    assert_final(&p, &watch(&p, &[]), "FAILED");
    let posts = p.posts();
    assert_eq!(posts.len(), 2, "{posts:#?}");
    for (post, (own, other)) in posts
        .iter()
        .zip([("linux", "windows"), ("windows", "linux")])
    {
        let a = attachment(post);
        assert!(a["title"].as_str().unwrap().ends_with(own), "{a:#}");
        let listed = a["text"].as_str().unwrap();
        assert!(
            listed.contains(&format!(
                "cypress/e2e/{own}/verify.cy.ts › {own} verify.cy.ts rejects a bad password"
            )),
            "{own}'s post lacks its failed test: {listed}"
        );
        assert!(
            !listed.contains(&format!("{other} verify.cy.ts")),
            "{own}'s post lists {other}'s failed test: {listed}"
        );
    }
}

/// The runner writes its log on a 64 KiB file system that is full.
fn full_log_dir(p: &Posting, leave: usize) -> Option<SmallDisk> {
    let disk = SmallDisk::mount(&p.log_dir, "64k")?;
    disk.fill_leaving(leave);
    Some(disk)
}

#[test]
fn a_run_whose_log_could_not_be_written_at_all_is_unknown_not_completed() {
    let p = Posting::new(vec![]);
    let Some(_disk) = full_log_dir(&p, 0) else {
        return;
    };
    p.write_request(B, json!({}));
    // The test failed (its report, on another file system, says so) and the command
    // swallows the exit code: nothing reaches the log.
    let report = p.report_for("area07.cy.js");
    start_runner(
        &p,
        &format!(
            "cp '{}' '{}'; {}",
            report.display(),
            p.reporter_dir.display(),
            p.cypress_command("failing-2-of-20.log", 0)
        ),
    );
    let s = assert_final(&p, &watch(&p, &[]), "UNKNOWN");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("could not write the run log")
            && reason.contains("No space left on device")
            && reason.contains(&format!("mounted at {}", p.log_dir.display())),
        "{reason}"
    );
    assert_eq!(p.hook.count(), 0);
    assert_eq!(
        p.status(B)["log_write_error"]["offset"],
        0,
        "the runner recorded where the log stopped"
    );
}

#[test]
fn a_run_whose_log_filled_up_mid_run_is_unknown_not_unfinished() {
    let p = Posting::new(vec![]);
    // Room for the start of the log, not for its summary.
    let Some(_disk) = full_log_dir(&p, 4096) else {
        return;
    };
    p.write_request(B, json!({}));
    start_runner(&p, &p.cypress_command("passing.log", 0));
    let s = assert_final(&p, &watch(&p, &[]), "UNKNOWN");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("No space left on device") && !reason.contains("did not finish"),
        "{reason}"
    );
    let offset = p.status(B)["log_write_error"]["offset"].as_u64().unwrap();
    assert!(offset > 0 && offset < 10548, "stopped at {offset}");
    assert_eq!(p.hook.count(), 0);
}

#[test]
fn a_run_cancelled_in_cypress_cloud_before_any_failure_is_cancelled_and_not_posted() {
    let p = Posting::new(vec![]);
    p.write_request(B, json!({}));
    // Cypress exits 1 after "The run was canceled".
    start_runner(&p, &p.cypress_command("cloud-canceled.log", 1));
    let s = assert_final(&p, &watch(&p, &[]), "CANCELLED");
    assert!(
        s["reason"].as_str().unwrap().contains("Cypress Cloud"),
        "{s:#}"
    );
    assert_eq!(s["post"]["status"], "suppressed");
    assert_eq!(p.hook.count(), 0);
}

#[test]
fn a_run_cancelled_in_cypress_cloud_after_a_failure_is_failed_and_says_so() {
    let p = Posting::new(vec![]);
    p.write_request(B, json!({}));
    start_runner(
        &p,
        &p.cypress_command("cloud-canceled-after-failures.log", 1),
    );
    let s = assert_final(&p, &watch(&p, &[]), "FAILED");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("cancelled in Cypress Cloud after failures")
            && reason.contains("1 failing test"),
        "{reason}"
    );
    assert_eq!(p.hook.count(), 1);
}

/// A report for `spec` whose failed test names the run that wrote it, put in the reporter
/// directory now, with its modification time `age` ago (negative: in the future).
fn earlier_report(p: &Posting, spec: &str, writer: &str, age: Duration, future: bool) {
    let report = p.report_for(spec);
    let text = fs::read_to_string(&report).unwrap().replace(
        "Login rejects a bad password",
        &format!("{writer} rejects a bad password"),
    );
    let dest = p.reporter_dir.join(format!("{writer}.json"));
    fs::write(&dest, text).unwrap();
    let when = match future {
        true => SystemTime::now() + age,
        false => SystemTime::now() - age,
    };
    fs::File::options()
        .write(true)
        .open(&dest)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

/// The listed failed tests of the one post.
fn listed(p: &Posting) -> String {
    let post: Value = p.only_post();
    attachment(&post)["text"].as_str().unwrap().to_string()
}

#[test]
fn a_report_an_earlier_run_wrote_just_before_the_start_is_not_this_runs() {
    let p = Posting::new(vec![]);
    p.write_request(B, json!({}));
    // The previous run of the build name wrote its report 300 ms before this run started
    // (within the slack file times are allowed); this run fails the same spec but its
    // reporter writes nothing.
    earlier_report(
        &p,
        "area07.cy.js",
        "the-previous-run",
        Duration::from_millis(300),
        false,
    );
    start_runner(&p, &p.cypress_command("failing-2-of-20.log", 2));
    assert_final(&p, &watch(&p, &[]), "FAILED");
    let listed = listed(&p);
    assert!(!listed.contains("the-previous-run"), "{listed}");
    assert!(listed.contains("area07.cy.js › 1 failing test"), "{listed}");
}

#[test]
fn a_report_dated_in_the_future_does_not_count_for_the_runs_to_come() {
    let p = Posting::new(vec![]);
    p.write_request(B, json!({}));
    // Written before the clock stepped back an hour: its time is still to come.
    // Many of them (a big suite's reports): more than a status file would hold.
    for i in 0..300 {
        earlier_report(
            &p,
            "area07.cy.js",
            &format!("before-the-clock-step-{i}"),
            Duration::from_secs(3600),
            true,
        );
    }
    start_runner(&p, &p.cypress_command("failing-2-of-20.log", 2));
    assert_final(&p, &watch(&p, &[]), "FAILED");
    let listed = listed(&p);
    assert!(!listed.contains("before-the-clock-step"), "{listed}");
    assert!(listed.contains("area07.cy.js › 1 failing test"), "{listed}");
}

/// The three groups of the categorized fixture, each as its own file: linux passes,
/// windows fails, ubuntu passes.
fn group_files(p: &Posting) -> Vec<std::path::PathBuf> {
    let log = fs::read_to_string(testkit::fixture("cypress/categorized-3-groups.log")).unwrap();
    let starts: Vec<usize> = log.match_indices("=== group").map(|(i, _)| i).collect();
    let mut files = Vec::new();
    for (k, &at) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(log.len());
        let file = p.root().join(format!("group-{k}.log"));
        fs::write(&file, &log[at..end]).unwrap();
        files.push(file);
    }
    files
}

/// A categorized run: the first runner prints linux and windows and exits 1, a second runner
/// of the same run prints ubuntu and exits 0, both ended before any watcher runs.
fn two_runners_while_no_watcher_runs() -> Posting {
    let mut p = Posting::new(vec![]);
    p.set("ATVM_GRACE_SECONDS", "0.5");
    p.write_request(B, json!({"categorize": true}));
    let g = group_files(&p);
    start_runner(
        &p,
        &format!("cat '{}' '{}'; exit 1", g[0].display(), g[1].display()),
    );
    p.wait_until("the first runner's exit", LONG, || {
        p.try_status(B).is_some_and(|s| !s["exited_at"].is_null())
    });
    start_runner(&p, &format!("cat '{}'; exit 0", g[2].display()));
    p.wait_until("the second runner's exit", LONG, || {
        p.try_status(B)
            .is_some_and(|s| !s["exited_at"].is_null() && s["earlier_logs"].is_array())
    });
    p
}

/// A categorized run whose first runner prints two groups and whose second runner (within
/// the grace period) prints the third, all while the watcher is down: the first runner's
/// log, moved to `.1` by the second, is still read, so every group is posted once, as an
/// undisturbed watcher would have.
#[test]
fn a_second_runner_s_rotation_while_the_watcher_is_down_loses_no_group() {
    let p = two_runners_while_no_watcher_runs();
    let s = assert_final(&p, &watch(&p, &[]), "FAILED");
    let rows = super::subrun_rows(&s);
    assert_eq!(
        rows,
        [
            ("01-linux", "COMPLETED", "posted"),
            ("02-windows", "FAILED", "posted"),
            ("03-ubuntu-24.04", "COMPLETED", "posted"),
        ],
        "{s:#}"
    );
    assert_eq!(p.hook.count(), 3);
}

/// The same, but the first runner's log is gone before anyone read it: the run cannot be
/// told, so it ends UNKNOWN naming the log, instead of leaving out two groups.
#[test]
fn a_second_runner_s_rotated_log_gone_before_it_was_read_is_unknown() {
    let p = two_runners_while_no_watcher_runs();
    let rotated = rotated_log(&p);
    fs::remove_file(&rotated).unwrap();
    let s = assert_final(&p, &watch(&p, &[]), "UNKNOWN");
    assert!(
        s["reason"].as_str().unwrap().contains("earlier runner"),
        "{s:#}"
    );
}

fn rotated_log(p: &Posting) -> std::path::PathBuf {
    let mut path = p.run_log(B).into_os_string();
    path.push(".1");
    path.into()
}

/// The hang rule counts from when the command last printed something as the runner
/// recorded it, not from when a watcher happened to read it: a watcher down while the
/// last output came, started again after the hang window, finds the run HUNG as an
/// undisturbed one did — not WATCHING from the moment it read that output.
#[test]
fn the_hang_window_runs_from_the_runners_record_not_from_when_the_watcher_looked() {
    let mut p = Posting::new(vec![]);
    p.set("ATVM_HANG_MINUTES", "0.02"); // 1.2 s
    let mut run = passing_run_followed(&p, 2);
    run.step(&p, B); // the second spec's output, while no watcher runs
    std::thread::sleep(Duration::from_millis(1500)); // the hang window passes
    once(&p);
    let s = p.state(B);
    assert_eq!(s["state"], "HUNG", "{s:#}");
    assert_eq!(p.hook.count(), 0);
}

/// Three runners of one categorized run (linux, windows, ubuntu), each started after the
/// one before ended; `between` runs after the first one's exit.
fn three_runners(between: impl Fn(&Posting)) -> Posting {
    let mut p = Posting::new(vec![]);
    p.set("ATVM_GRACE_SECONDS", "0.5");
    p.write_request(B, json!({"categorize": true}));
    let g = group_files(&p);
    for (k, (file, code)) in g.iter().zip([0, 1, 0]).enumerate() {
        start_runner(&p, &format!("cat '{}'; exit {code}", file.display()));
        p.wait_until("a runner's exit", LONG, || {
            p.try_status(B).is_some_and(|s| {
                !s["exited_at"].is_null() && s["earlier_logs"].as_array().map_or(0, Vec::len) == k
            })
        });
        if k == 0 {
            between(&p);
        }
    }
    p
}

/// The first runner's log was read to its end before a third runner moved it away (its
/// inode may even be reused by the third log): the run is judged as usual.
#[test]
fn an_earlier_log_read_to_its_end_then_rotated_away_still_decides() {
    let p = three_runners(|p| {
        once(p);
    });
    let s = assert_final(&p, &watch(&p, &[]), "FAILED");
    let rows = super::subrun_rows(&s);
    assert_eq!(rows.len(), 3, "{s:#}");
    assert_eq!(p.hook.count(), 3);
}

/// The first runner's log was never read and a third runner moved it away: which groups
/// the later logs' blocks are cannot be told, so the run ends UNKNOWN with no group posted
/// under a shifted key.
#[test]
fn an_earlier_log_never_read_and_rotated_away_is_unknown_with_no_group_posted() {
    let p = three_runners(|_| {});
    let s = assert_final(&p, &watch(&p, &[]), "UNKNOWN");
    assert!(
        s["reason"].as_str().unwrap().contains("earlier runner"),
        "{s:#}"
    );
    assert_eq!(p.hook.count(), 0, "{:#?}", p.posts());
}

/// A group of an earlier runner of a categorized run keeps its failed tests' names when the
/// watcher first looks after a later runner started: the run's reports count from its
/// first runner's start, not the latest one's.
#[test]
fn an_earlier_runner_s_group_keeps_its_reports_after_a_later_runner_started() {
    let mut p = Posting::new(vec![]);
    p.set("ATVM_GRACE_SECONDS", "0.5");
    p.write_request(B, json!({"categorize": true}));
    let g = group_files(&p);
    let windows = fs::read_to_string(&g[1]).unwrap();
    let cut = windows.find("(Run Finished)").unwrap();
    let (before, after) = (p.root().join("w-before.log"), p.root().join("w-after.log"));
    fs::write(&before, &windows[..cut]).unwrap();
    fs::write(&after, &windows[cut..]).unwrap();
    let report = p.report_for("agent.cy.js");
    start_runner(
        &p,
        &format!(
            "cat '{}'; sleep 0.1; cp '{}' '{}'; cat '{}'; exit 1",
            before.display(),
            report.display(),
            p.reporter_dir.display(),
            after.display()
        ),
    );
    p.wait_until("the first runner's exit", LONG, || {
        p.try_status(B).is_some_and(|s| !s["exited_at"].is_null())
    });
    start_runner(&p, &format!("cat '{}'; exit 0", g[2].display()));
    p.wait_until("the second runner's exit", LONG, || {
        p.try_status(B)
            .is_some_and(|s| !s["exited_at"].is_null() && s["earlier_logs"].is_array())
    });
    assert_final(&p, &watch(&p, &[]), "FAILED");
    let windows_post = p
        .posts()
        .into_iter()
        .find(|post| {
            attachment(post)["title"]
                .as_str()
                .unwrap()
                .ends_with("windows")
        })
        .unwrap();
    let listed = attachment(&windows_post)["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        listed.contains("agent.cy.js › Login rejects a bad password"),
        "{listed}"
    );
}
