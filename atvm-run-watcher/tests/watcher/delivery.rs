//! Delivery under faults, through the binary (docs/watcher-service.md): the watcher is
//! stopped with SIGTERM and with SIGKILL at each step of a delivery (before the attempt is
//! recorded, request on the wire, answered `ok` but not yet recorded, recorded), restarted,
//! and the fake Mattermost counts what it received; the same with a full disk at each
//! write; a cancel racing a post on the wire; a categorized run stopped with a group post
//! owed; a dry run that must change nothing.
//!
//! Steps are reached exactly with the watcher's debug-build pause points
//! (`atvm_common::failpoint`), not by timing.

use super::{B, LONG, start_runner, three_groups_runner};
use serde_json::{Value, json};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use testkit::{Expect, Posting, Reply, SmallDisk, finish, text};

/// A run that passed, waiting for its watcher.
fn completed(script: Vec<Reply>) -> Posting {
    let p = Posting::new(script);
    p.write_request(B, json!({}));
    start_runner(&p, &p.cypress_command("passing.log", 0));
    p
}

/// The run's `state.json` says `state`, with its post `post`.
#[track_caller]
fn assert_ended(p: &Posting, state: &str, post: &str) {
    let s = p.state(B);
    assert_eq!(
        (&s["state"], &s["post"]["status"]),
        (&json!(state), &json!(post)),
        "{s:#}"
    );
}

/// Where a test's pause points signal (`<step>.reached`) and are released (`<step>.go`).
fn fault_dir(p: &Posting) -> PathBuf {
    let dir = p.root().join("faults");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A watcher for `B` that pauses at `step` (if any).
fn watcher(p: &Posting, step: Option<&str>) -> Child {
    let mut cmd = p.cmd("atvm-run-watcher");
    cmd.args(["--build-name", B])
        .env("ATVM_FAILPOINT_DIR", fault_dir(p))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(step) = step {
        cmd.env("ATVM_FAILPOINTS", step);
    }
    cmd.spawn().unwrap()
}

fn reached(p: &Posting, step: &str) {
    let flag = fault_dir(p).join(format!("{step}.reached"));
    p.wait_until(&format!("the watcher at {step}"), LONG, || flag.exists());
}

fn release(p: &Posting, step: &str) {
    fs::write(fault_dir(p).join(format!("{step}.go")), b"").unwrap();
}

fn kill(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Run the watcher to its end with nothing injected (the restart).
fn restart(p: &Posting) -> Output {
    finish(watcher(p, None), LONG)
}

/// Where the fault is injected.
#[derive(Clone, Copy, Debug)]
enum Step {
    BeforeRecord,
    OnTheWire,
    Answered,
    Recorded,
}

impl Step {
    fn failpoint(self) -> Option<&'static str> {
        match self {
            Step::BeforeRecord => Some("deliver.before-record"),
            Step::OnTheWire => None,
            Step::Answered => Some("deliver.answered"),
            Step::Recorded => Some("deliver.recorded"),
        }
    }
}

/// Stop the watcher with `signal` at `step`, restart it, and return how many posts the
/// server received, after checking the run ends COMPLETED and posted.
fn stopped_at(step: Step, signal: &str) -> usize {
    // On the wire: the server takes the request and answers `ok` only after a while.
    let script = match step {
        Step::OnTheWire => vec![Reply::delayed(Duration::from_millis(1500), Reply::Ok)],
        _ => vec![],
    };
    let p = completed(script);
    let w = watcher(&p, step.failpoint());
    match step.failpoint() {
        Some(fp) => reached(&p, fp),
        None => p.wait_until("the request on the wire", LONG, || p.hook.count() == 1),
    }
    let stopped_at = Instant::now();
    kill(&w, signal);
    if let Some(fp) = step.failpoint() {
        // SIGTERM: the paused step goes on with the stop request pending.
        release(&p, fp);
    }
    let first = finish(w, LONG);
    if let Step::BeforeRecord = step {
        assert_eq!(
            p.hook.count(),
            0,
            "stopped before its record: nothing was sent"
        );
    }
    if signal == "TERM" {
        assert_eq!(first.status.code(), Some(0), "{step:?}: {}", text(&first));
        // A request on the wire is awaited (bounded by the client's timeout); otherwise a
        // stop takes effect within a second.
        let bound = match step {
            Step::OnTheWire => Duration::from_secs(11),
            _ => Duration::from_secs(1),
        };
        assert!(
            stopped_at.elapsed() < bound,
            "{step:?}: took {:?}",
            stopped_at.elapsed()
        );
    }
    let again = restart(&p);
    assert_eq!(again.status.code(), Some(0), "{step:?}: {}", text(&again));
    let s = p.state(B);
    assert_eq!(
        (&s["state"], &s["post"]["status"]),
        (&json!("COMPLETED"), &json!("posted")),
        "{step:?} {signal}: {s:#}"
    );
    assert!(p.state_dir(B).join("posted.marker").exists());
    // Whatever was sent twice is recognisably the same post: the run id is in it.
    let posts = p.posts();
    let run_id = s["run_id"].as_str().unwrap();
    assert!(
        posts
            .iter()
            .all(|b| b == &posts[0] && b.to_string().contains(run_id)),
        "{posts:#?}"
    );
    posts.len()
}

#[test]
fn sigterm_before_the_attempt_is_recorded_leaves_it_owed_and_the_restart_posts_once() {
    assert_eq!(stopped_at(Step::BeforeRecord, "TERM"), 1);
}

#[test]
fn sigkill_before_the_attempt_is_recorded_posts_once() {
    assert_eq!(stopped_at(Step::BeforeRecord, "KILL"), 1);
}

#[test]
fn sigterm_with_the_request_on_the_wire_waits_for_the_answer_and_posts_once() {
    assert_eq!(stopped_at(Step::OnTheWire, "TERM"), 1);
}

#[test]
fn sigkill_with_the_request_on_the_wire_is_the_one_window_that_posts_twice() {
    // The server processed the request; nothing recorded that: the restart re-sends once.
    assert_eq!(stopped_at(Step::OnTheWire, "KILL"), 2);
}

#[test]
fn sigterm_after_ok_records_the_post_before_exiting_and_posts_once() {
    assert_eq!(stopped_at(Step::Answered, "TERM"), 1);
}

#[test]
fn sigkill_after_ok_before_the_record_posts_again_once() {
    assert_eq!(stopped_at(Step::Answered, "KILL"), 2);
}

#[test]
fn sigterm_after_the_record_posts_once() {
    assert_eq!(stopped_at(Step::Recorded, "TERM"), 1);
}

#[test]
fn sigkill_after_the_record_posts_once() {
    assert_eq!(stopped_at(Step::Recorded, "KILL"), 1);
}

#[test]
fn a_stop_in_the_poll_that_decides_the_result_leaves_it_owed() {
    for signal in ["TERM", "KILL"] {
        let p = completed(vec![]);
        let w = watcher(&p, Some("watch.decided"));
        reached(&p, "watch.decided");
        kill(&w, signal);
        release(&p, "watch.decided");
        finish(w, LONG);
        assert_eq!(p.hook.count(), 0, "{signal}: nothing sent yet");
        let s = p.state(B);
        assert_eq!(
            (&s["state"], &s["post"]["status"]),
            (&json!("COMPLETED"), &json!("pending")),
            "{signal}: final and owed in one save: {s:#}"
        );
        assert_eq!(restart(&p).status.code(), Some(0));
        assert_eq!(p.hook.count(), 1, "{signal}: the next start delivers it");
    }
}

// ----- full disk ---------------------------------------------------------------------------

/// `dir` made read-only by a bind mount over itself (as root only): new opens through the
/// path fail with EROFS, even for root, while files already open stay writable.
struct ReadOnly {
    dir: PathBuf,
}

impl ReadOnly {
    fn make(dir: &Path) -> Option<ReadOnly> {
        let mount = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !mount(&["--bind"]) {
            eprintln!("skipped: cannot bind-mount here (needs root)");
            return None;
        }
        let guard = ReadOnly {
            dir: dir.to_path_buf(),
        };
        assert!(mount(&["-o", "remount,bind,ro"]), "remount read-only");
        assert!(fs::write(dir.join("probe"), b"x").is_err(), "read-only");
        Some(guard)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn state_of(dir: &Path) -> Value {
    testkit::read_json(&dir.join("state.json"))
}

#[test]
fn a_full_disk_before_the_attempt_is_recorded_delays_the_post_never_duplicates_it() {
    let p = Posting::new(vec![]);
    let Some(disk) = SmallDisk::mount(&p.state_root, "2m") else {
        return;
    };
    p.write_request(B, json!({}));
    start_runner(&p, &p.cypress_command("passing.log", 0));
    let w = watcher(&p, Some("deliver.before-record"));
    reached(&p, "deliver.before-record");
    disk.fill();
    release(&p, "deliver.before-record");
    // It cannot record the attempt, so it sends nothing, however long the disk stays full.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(p.hook.count(), 0, "sent without a record");
    disk.free();
    let out = finish(w, LONG);
    out.code_is(0);
    assert_eq!(p.hook.count(), 1);
    assert_eq!(state_of(&p.state_dir(B))["post"]["status"], "posted");
    assert_eq!(restart(&p).status.code(), Some(0));
    assert_eq!(p.hook.count(), 1, "never twice");
}

#[test]
fn a_full_disk_after_ok_still_records_the_delivery_and_never_sends_again() {
    let p = Posting::new(vec![]);
    let Some(disk) = SmallDisk::mount(&p.state_root, "2m") else {
        return;
    };
    p.write_request(B, json!({}));
    start_runner(&p, &p.cypress_command("passing.log", 0));
    let w = watcher(&p, Some("deliver.answered"));
    reached(&p, "deliver.answered");
    disk.fill();
    release(&p, "deliver.answered");
    // The prepared marker is renamed: that needs no space.
    let marker = p.state_dir(B).join("posted.marker");
    p.wait_until("posted.marker", LONG, || marker.exists());
    // The state cannot be written yet; a stop now must not lead to a second post, and is
    // a clean stop (exit 1 would say the post failed for good).
    kill(&w, "TERM");
    let out = finish(w, LONG);
    out.code_is(0)
        .said("No space left")
        .said("the next start writes it from the post markers");
    disk.free();
    let again = restart(&p);
    again.code_is(0);
    assert_eq!(state_of(&p.state_dir(B))["post"]["status"], "posted");
    assert_eq!(p.hook.count(), 1, "delivered once, recorded, never re-sent");
}

#[test]
fn a_permanent_failure_on_a_full_disk_then_a_stop_is_never_sent_again() {
    // 200 without `ok`: perhaps processed by the server, certainly not to be re-sent.
    let p = Posting::new(vec![Reply::status(200, "nope")]);
    let Some(disk) = SmallDisk::mount(&p.state_root, "2m") else {
        return;
    };
    p.write_request(B, json!({}));
    start_runner(&p, &p.cypress_command("passing.log", 0));
    let w = watcher(&p, Some("deliver.answered"));
    reached(&p, "deliver.answered");
    disk.fill();
    release(&p, "deliver.answered");
    let failed = p.state_dir(B).join("failed.marker");
    p.wait_until("failed.marker", LONG, || failed.exists());
    kill(&w, "TERM");
    let out = finish(w, LONG);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    disk.free();
    let again = restart(&p);
    assert_eq!(
        again.status.code(),
        Some(1),
        "still failed for good: {}",
        text(&again)
    );
    assert_eq!(state_of(&p.state_dir(B))["post"]["status"], "failed");
    assert_eq!(p.hook.count(), 1, "sent once, never again");
}

#[test]
fn a_read_only_state_root_ends_the_watcher_naming_the_file_and_nothing_is_sent() {
    let p = Posting::new(vec![]);
    p.write_request(B, json!({}));
    start_runner(&p, &p.cypress_command("passing.log", 0));
    let w = watcher(&p, Some("deliver.before-record"));
    reached(&p, "deliver.before-record");
    let Some(read_only) = ReadOnly::make(&p.state_dir(B)) else {
        let _ = finish(w, LONG);
        return;
    };
    release(&p, "deliver.before-record");
    // Waiting does not cure a read-only file system: exit 1 at once, the file named.
    let out = finish(w, LONG);
    drop(read_only);
    out.code_is(1);
    assert!(
        text(&out).contains("Read-only file system") && text(&out).contains(B),
        "{}",
        text(&out)
    );
    assert_eq!(p.hook.count(), 0, "sent without a record");
    let again = restart(&p);
    again.code_is(0);
    assert_eq!(p.hook.count(), 1, "the post stayed owed and went out once");
}

// ----- cancel racing a post ----------------------------------------------------------------

/// A run started the way operators do, with the watcher under (fake) systemd.
fn started(script: Vec<Reply>) -> Posting {
    let p = Posting::new(script);
    let out = p.run(
        "start-atvm-run",
        &[
            "--build-name",
            B,
            "--runner-command",
            &p.cypress_command("passing.log", 0),
        ],
    );
    out.succeeds();
    p
}

/// A run started through start-atvm-run, cancelled while its post is on the wire (the
/// server answers `reply` after 1.5 s): the cancel helper's output.
fn cancelled_on_the_wire(reply: Reply) -> (Posting, Output) {
    let p = started(vec![Reply::delayed(Duration::from_millis(1500), reply)]);
    p.wait_until("the request on the wire", LONG, || p.hook.count() == 1);
    let out = p.run("cancel-atvm-run-watcher", &["--build-name", B]);
    (p, out)
}

#[test]
fn a_cancel_while_the_post_hangs_on_a_silent_server_never_calls_it_owed() {
    // The server takes the request and never answers: the cancel stops the watcher, which
    // waits out the request's timeout. Its journal must say what the state says.
    let (p, out) = cancelled_on_the_wire(Reply::Silent);
    out.succeeds().said("state CANCELLED");
    let unit = "atvm-run-watcher@e2e-redhat9.6-ubuntu24.04-w2k25-fc.service";
    p.wait_unit_inactive(unit, LONG);
    assert_ended(&p, "CANCELLED", "suppressed");
    let journal = p.unit_output(unit);
    assert!(
        !journal.contains("stays owed") && journal.contains("not posting"),
        "{journal}"
    );
    assert_eq!(restart(&p).status.code(), Some(0));
    assert_eq!(p.hook.count(), 1, "nothing sent after the cancel");
}

#[test]
fn a_cancel_while_the_post_is_on_the_wire_and_delivered_reports_it_posted() {
    let (p, out) = cancelled_on_the_wire(Reply::Ok);
    out.succeeds();
    assert_eq!(text(&out).lines().count(), 1, "{}", text(&out));
    assert!(
        text(&out).contains("already reported") && text(&out).contains("delivered"),
        "{}",
        text(&out)
    );
    assert_ended(&p, "COMPLETED", "posted");
    // Nor does a later watcher change that.
    assert_eq!(restart(&p).status.code(), Some(0));
    assert_eq!(p.state(B)["state"], "COMPLETED");
    assert_eq!(p.hook.count(), 1);
}

#[test]
fn a_cancel_while_the_post_is_on_the_wire_and_refused_posts_nothing() {
    // The request on the wire is answered 503: not delivered, and the cancel wins.
    let (p, out) = cancelled_on_the_wire(Reply::status(503, "maintenance"));
    out.succeeds();
    assert_eq!(text(&out).lines().count(), 1, "{}", text(&out));
    out.said("state CANCELLED, nothing posted");
    assert_ended(&p, "CANCELLED", "suppressed");
    assert_eq!(restart(&p).status.code(), Some(0));
    assert_eq!(
        p.hook.count(),
        1,
        "only the refused attempt ever reached the server"
    );
}

#[test]
fn a_cancel_of_a_watcher_run_by_hand_wins_over_the_attempt_it_was_about_to_record() {
    // `atvm-run-watcher --once`, as start-atvm-run suggests for an owed post, runs outside
    // the unit: the cancel cannot stop it, so the attempt's record must find the marker.
    let p = completed(vec![]);
    let w = watcher(&p, Some("deliver.before-record"));
    reached(&p, "deliver.before-record");
    let (cancel, said) = p.spawn_logged("cancel-atvm-run-watcher", &["--build-name", B]);
    p.wait_until("the cancel to wait for the watcher", LONG, || {
        fs::read_to_string(&said).is_ok_and(|t| t.contains("waiting for the watcher"))
    });
    release(&p, "deliver.before-record");
    finish(w, LONG).code_is(0);
    let out = finish(cancel, LONG);
    let said = fs::read_to_string(said).unwrap();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("state CANCELLED, nothing posted")
            && said.contains("a watcher run outside systemd saw the cancel and ended"),
        "{said}"
    );
    assert_ended(&p, "CANCELLED", "suppressed");
    assert_eq!(restart(&p).status.code(), Some(0));
    assert_eq!(p.hook.count(), 0, "nothing was sent");
}

#[test]
fn a_cancel_of_a_watcher_run_by_hand_with_its_post_on_the_wire_says_it_was_delivered() {
    let p = completed(vec![Reply::delayed(Duration::from_millis(1500), Reply::Ok)]);
    let w = watcher(&p, None);
    p.wait_until("the request on the wire", LONG, || p.hook.count() == 1);
    let out = p.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds().said("already reported").said("delivered");
    finish(w, LONG).code_is(0);
    assert_ended(&p, "COMPLETED", "posted");
    assert_eq!(p.hook.count(), 1);
}

#[test]
fn a_cancel_while_a_refused_post_is_on_the_wire_ends_cancelled_and_exits_0() {
    // The server refuses for good (400) the post that was on the wire when the cancel
    // came: the run is CANCELLED, which posts nothing; no failed unit, now or later.
    let (p, out) = cancelled_on_the_wire(Reply::status(400, "bad"));
    out.succeeds().said("state CANCELLED, nothing posted");
    assert_ended(&p, "CANCELLED", "suppressed");
    let unit = "atvm-run-watcher@e2e-redhat9.6-ubuntu24.04-w2k25-fc.service";
    // The refusal is logged as what the server said, but it does not fail the watcher.
    p.wait_unit_inactive(unit, LONG);
    let journal = p.unit_output(unit);
    assert!(journal.contains("COMPLETED → CANCELLED"), "{journal}");
    assert!(
        !journal.contains("Mattermost delivery failed for good"),
        "{journal}"
    );
    restart(&p).code_is(0).never_said("failed for good");
    assert_eq!(p.hook.count(), 1);
}

#[test]
fn a_cancel_during_the_backoff_ends_the_retries_within_a_second() {
    // Mattermost is down; the watcher waits its backoff (here well over a second).
    let p = completed(vec![Reply::status(503, "down"); 5]);
    let mut cmd = p.cmd("atvm-run-watcher");
    cmd.args(["--build-name", B, "--post-retry-seconds", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let w = cmd.spawn().unwrap();
    // After the third refusal the backoff is about 4 s.
    p.wait_until("three refused attempts", LONG, || p.hook.count() == 3);
    let started = Instant::now();
    // The unit is not running (a watcher run by hand): the cancel waits for it.
    p.run("cancel-atvm-run-watcher", &["--build-name", B])
        .succeeds()
        .said("nothing posted");
    finish(w, LONG).code_is(0);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the backoff was waited out: {:?}",
        started.elapsed()
    );
    assert_eq!(p.hook.count(), 3, "no attempt after the cancel");
}

#[test]
fn a_cancel_that_kills_a_watcher_waiting_for_an_answer_does_not_claim_nothing_was_posted() {
    // Mattermost has answered `ok` but the watcher is held before recording it; the cancel
    // stops the unit, whose stop timeout ends in SIGKILL. Whether the post reached the
    // channel is not known to the helper: it must not say "nothing posted".
    let mut p = Posting::new(vec![]);
    p.set("FAKE_STOP_TIMEOUT", "1");
    p.set("ATVM_FAILPOINTS", "deliver.answered");
    let faults = fault_dir(&p).display().to_string();
    p.set("ATVM_FAILPOINT_DIR", faults);
    p.run(
        "start-atvm-run",
        &[
            "--build-name",
            B,
            "--runner-command",
            &p.cypress_command("passing.log", 0),
        ],
    )
    .succeeds();
    reached(&p, "deliver.answered");
    let out = p.run("cancel-atvm-run-watcher", &["--build-name", B]);
    out.succeeds()
        .never_said("nothing posted")
        .said("a post attempt was under way and may have reached Mattermost");
    assert_eq!(p.hook.count(), 1);
}

#[test]
fn a_cancel_after_a_delivery_the_state_does_not_show_yet_says_it_was_reported() {
    // posted.marker is there (renamed into place on `ok`), state.json still says pending:
    // the disk was full when the watcher stopped. The cancel must not undo the delivery.
    let p = Posting::new(vec![]);
    let run_id = p.write_request(B, json!({}));
    let dir = p.state_dir(B);
    let state = json!({
        "build_name": B, "run_id": run_id, "state": "COMPLETED", "final": true,
        "reason": "all specs passed", "updated_at": "2026-12-01T10:00:00.000Z", "counts": null,
        "post": {"status": "pending", "attempts": 1, "last_error": null}
    });
    fs::write(dir.join("state.json"), state.to_string()).unwrap();
    fs::write(
        dir.join("posted.marker"),
        format!("2026-12-01T10:00:01.000Z run_id={run_id}\n"),
    )
    .unwrap();
    p.run("cancel-atvm-run-watcher", &["--build-name", B])
        .succeeds()
        .said("was already reported (COMPLETED, posted)");
    assert_eq!(p.state(B)["state"], "COMPLETED");
    assert!(!dir.join("cancelled.marker").exists());
    // The next watcher records the delivery from the marker and sends nothing.
    restart(&p).code_is(0);
    assert_eq!(p.state(B)["post"]["status"], "posted");
    assert_eq!(p.hook.count(), 0);
}

// ----- owed posts at every start -----------------------------------------------------------

#[test]
fn a_categorized_run_stopped_with_a_group_post_owed_delivers_it_at_the_next_start() {
    // Mattermost is down for the first group's post: the watcher is stopped meanwhile.
    let p = Posting::new(vec![Reply::status(503, "down"); 3]);
    p.write_request(B, json!({"categorize": true}));
    start_runner(&p, &three_groups_runner(&p, 0));
    let w = watcher(&p, None);
    p.wait_until("a failed attempt", LONG, || p.hook.count() >= 1);
    kill(&w, "TERM");
    let out = finish(w, LONG);
    out.code_is(0);
    let s = p.state(B);
    assert_eq!(s["final"], false, "{s:#}");
    assert_eq!(s["subruns"][0]["post"]["status"], "pending", "{s:#}");
    // The next start delivers it first, then watches on.
    let w = watcher(&p, None);
    for i in 1..3 {
        fs::write(p.root().join(format!("go{i}")), "").unwrap();
    }
    let out = finish(w, LONG);
    out.code_is(0);
    let s = p.state(B);
    let posted: Vec<&Value> = s["subruns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| &x["post"]["status"])
        .collect();
    assert_eq!(posted, [&json!("posted"); 3], "{s:#}");
    let groups: Vec<String> = p
        .posts()
        .iter()
        .map(|b| b["text"].as_str().unwrap().to_string())
        .collect();
    // Some 503s for group 1, then exactly one delivered post per group.
    let linux = groups.iter().filter(|t| t.contains("`linux`")).count();
    assert!(linux >= 2, "{groups:#?}");
    assert_eq!(groups.len() - linux, 2, "{groups:#?}");
}

#[test]
fn an_unreadable_cancel_marker_stops_an_owed_post_and_is_named() {
    let p = completed(vec![]);
    let w = watcher(&p, Some("deliver.before-record"));
    reached(&p, "deliver.before-record");
    kill(&w, "TERM");
    release(&p, "deliver.before-record");
    finish(w, LONG);
    // Something that is not a readable marker, where the cancel marker goes.
    let marker = p.state_dir(B).join("cancelled.marker");
    fs::create_dir(&marker).unwrap();
    let out = restart(&p);
    out.code_is(1);
    out.said("cancelled.marker");
    assert_eq!(
        p.hook.count(),
        0,
        "not sent while a cancel cannot be ruled out"
    );
    assert_eq!(p.state(B)["post"]["status"], "pending", "still owed");
}

#[test]
fn a_dry_run_changes_nothing_and_the_next_watcher_still_posts_the_owed_result() {
    let p = completed(vec![]);
    // A watcher stopped before its post could go out leaves it owed.
    let w = watcher(&p, Some("deliver.before-record"));
    reached(&p, "deliver.before-record");
    kill(&w, "TERM");
    release(&p, "deliver.before-record");
    finish(w, LONG);
    let dir = p.state_dir(B);
    assert_eq!(state_of(&dir)["post"]["status"], "pending");
    let before = snapshot(&dir);
    let out = p.run(
        "atvm-run-watcher",
        &["--build-name", B, "--once", "--dry-run"],
    );
    out.succeeds();
    out.said("would be COMPLETED");
    let preview = testkit::read_json(&dir.join("post.json"));
    fs::remove_file(dir.join("post.json")).unwrap();
    assert_eq!(
        snapshot(&dir),
        before,
        "a dry run writes nothing but post.json"
    );
    assert_eq!(p.hook.count(), 0);
    let real = restart(&p);
    real.succeeds();
    assert_eq!(p.hook.count(), 1);
    assert_eq!(p.posts()[0]["attachments"], preview["attachments"]);
}

/// Every file under `dir` with its bytes (and mode), for before/after comparisons.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().map(|e| e.unwrap()) {
            let path = e.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                let bytes = fs::read(&path).unwrap_or_default();
                out.push((path, bytes, meta.permissions().mode()));
            }
        }
    }
    out.sort();
    out
}

// ----- --resend ----------------------------------------------------------------------------

/// `atvm-run-watcher --build-name B --resend` (through the old callers' `.sh` name).
fn resend(p: &Posting, extra: &[&str]) -> Output {
    let mut args = vec!["--build-name", B, "--resend"];
    args.extend_from_slice(extra);
    p.run("atvm-run-watcher.sh", &args)
}

#[test]
fn a_post_lost_to_an_outage_longer_than_the_retry_window_is_resent_once() {
    // Mattermost answers 503 for longer than the watcher's (short) retry window.
    let p = completed(vec![Reply::status(503, "maintenance"); 500]);
    let out = finish(
        p.spawn(
            "atvm-run-watcher",
            &["--build-name", B, "--post-retry-seconds", "1"],
        ),
        LONG,
    );
    out.code_is(1)
        .said("failed for good")
        .said(&format!("atvm-run-watcher --build-name {B} --resend"));
    assert_ended(&p, "COMPLETED", "failed");
    let tried = p.hook.count();
    assert!(tried >= 2, "{tried}");
    let failed = p.state(B)["post"].clone();
    assert!(
        failed["last_error"].as_str().unwrap().contains("HTTP 503"),
        "{failed}"
    );
    // The chat server is back: the operator sends the post again.
    p.hook.recover();
    resend(&p, &[])
        .succeeds()
        .said("re-sent the COMPLETED post");
    assert_eq!(p.hook.count(), tried + 1, "one more request");
    let requests = p.hook.requests();
    assert_eq!(
        requests[tried].body, requests[0].body,
        "the stored payload, byte for byte"
    );
    let s = p.state(B);
    assert_eq!(s["post"]["status"], "posted", "{s:#}");
    assert!(s["post"]["resent_at"].is_string(), "{s:#}");
    assert_eq!(s["post"]["attempts"], tried as u64 + 1);
    let dir = p.state_dir(B);
    assert!(dir.join("posted.marker").exists() && !dir.join("failed.marker").exists());
    // Nothing more to send: a second resend sends nothing, nor does a restarted watcher.
    resend(&p, &[])
        .succeeds()
        .said("nothing to resend")
        .said("the run's post: posted");
    restart(&p).code_is(0).never_said("failed for good");
    assert_eq!(p.hook.count(), tried + 1);
    p.assert_no_secret(&out);
}

#[test]
fn a_resend_that_fails_again_exits_1_and_stays_failed() {
    let p = completed(vec![Reply::status(400, "invalid payload"); 3]);
    finish(p.spawn("atvm-run-watcher", &["--build-name", B]), LONG).code_is(1);
    let out = resend(&p, &[]);
    out.code_is(1);
    let last = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.starts_with("atvm-run-watcher: resend of")
            && last.contains("failed again: COMPLETED: HTTP 400"),
        "{last}"
    );
    assert_ended(&p, "COMPLETED", "failed");
    assert!(p.state_dir(B).join("failed.marker").exists());
    assert_eq!(p.hook.count(), 2);
}

#[test]
fn resend_never_sends_beside_a_watcher_nor_for_a_cancelled_or_delivered_run() {
    // A delivered post: nothing to resend.
    let p = completed(vec![]);
    finish(p.spawn("atvm-run-watcher", &["--build-name", B]), LONG).code_is(0);
    resend(&p, &[]).succeeds().said("nothing to resend");
    assert_eq!(p.hook.count(), 1);
    // A failed post of a run cancelled since: never sent.
    let p = completed(vec![Reply::status(400, "bad"); 3]);
    finish(p.spawn("atvm-run-watcher", &["--build-name", B]), LONG).code_is(1);
    p.run("cancel-atvm-run-watcher", &["--build-name", B])
        .succeeds();
    resend(&p, &[]).succeeds().said("the run was cancelled");
    assert_eq!(p.hook.count(), 1);
    // A watcher holds the lock: exit 4, nothing sent.
    let p = Posting::new(vec![]);
    p.write_request(B, json!({}));
    let w = watcher(&p, None);
    p.wait_state(B, "STARTING", LONG);
    resend(&p, &[])
        .code_is(4)
        .error_line("atvm-run-watcher", "a watcher of");
    kill(&w, "TERM");
    finish(w, LONG);
    assert_eq!(p.hook.count(), 0);
    // An unknown group names the groups there are.
    resend(&p, &["--group", "01-linux"])
        .code_is(1)
        .error_line("atvm-run-watcher", "no group \"01-linux\"");
}

#[test]
fn a_group_post_that_failed_for_good_is_resent_alone_with_group() {
    // The first group's post is refused for good; the others go out as they finish.
    let p = Posting::new(vec![Reply::status(400, "invalid payload")]);
    p.write_request(B, json!({"categorize": true}));
    start_runner(&p, &three_groups_runner(&p, 1));
    let w = p.spawn(
        "atvm-run-watcher",
        &["--build-name", B, "--grace-seconds", "0.5"],
    );
    for i in 1..=2 {
        p.wait_until("the next group's post", LONG, || p.hook.count() == i);
        fs::write(p.root().join(format!("go{i}")), "").unwrap();
    }
    finish(w, LONG).code_is(1);
    assert_eq!(p.hook.count(), 3);
    // Another group's post was delivered: nothing to resend there.
    resend(&p, &["--group", "02-windows"])
        .succeeds()
        .said("nothing to resend")
        .said("02-windows: posted");
    resend(&p, &["--group", "01-linux"])
        .succeeds()
        .said("re-sent the sub-run 01-linux COMPLETED post");
    assert_eq!(p.hook.count(), 4);
    assert_eq!(p.hook.requests()[3].body, p.hook.requests()[0].body);
    let own = testkit::read_json(&p.state_dir(B).join("subruns/01-linux/state.json"));
    assert_eq!(own["post"]["status"], "posted", "{own:#}");
    assert!(own["post"]["resent_at"].is_string());
    assert_eq!(
        super::subrun_rows(&p.state(B))[0],
        ("01-linux", "COMPLETED", "posted")
    );
    resend(&p, &[]).succeeds().said("nothing to resend");
    restart(&p).code_is(0);
    assert_eq!(p.hook.count(), 4);
}

#[test]
fn groups_whose_keys_are_not_build_names_are_resent_too() {
    // Groups `smoke.launch` and `a..b` get the keys `01-smoke.launch` and `02-a..b`:
    // neither is a valid build name, both are keys the watcher makes and posts under.
    let p = Posting::new(vec![Reply::status(400, "invalid payload"); 3]);
    p.write_request(B, json!({"categorize": true}));
    let log = fs::read_to_string(testkit::fixture("cypress/categorized-3-groups.log"))
        .unwrap()
        .replace("Group: linux,", "Group: smoke.launch,")
        .replace("Group: windows,", "Group: a..b,");
    let file = p.root().join("groups.log");
    fs::write(&file, log).unwrap();
    start_runner(&p, &format!("cat '{}'; exit 1", file.display()));
    let w = p.spawn(
        "atvm-run-watcher",
        &["--build-name", B, "--grace-seconds", "0.5"],
    );
    finish(w, LONG).code_is(1);
    let s = p.state(B);
    assert_eq!(
        super::subrun_rows(&s),
        [
            ("01-smoke.launch", "COMPLETED", "failed"),
            ("02-a..b", "FAILED", "failed"),
            ("03-ubuntu-24.04", "COMPLETED", "failed"),
        ],
        "{s:#}"
    );
    p.hook.recover();
    // The status tool reads their files and names the resend.
    p.run("atvm-run-status", &["--build-name", B])
        .succeeds()
        .said("resend")
        .never_said("not a plain file name");
    resend(&p, &["--group", "01-smoke.launch"])
        .succeeds()
        .said("re-sent the sub-run 01-smoke.launch COMPLETED post");
    resend(&p, &[])
        .succeeds()
        .said("re-sent the sub-run 02-a..b FAILED post")
        .said("re-sent the sub-run 03-ubuntu-24.04 COMPLETED post");
    assert_eq!(p.hook.count(), 6, "each group's post once more");
    let s = p.state(B);
    assert!(
        super::subrun_rows(&s).iter().all(|r| r.2 == "posted"),
        "{s:#}"
    );
    resend(&p, &[]).succeeds().said("nothing to resend");
}

#[test]
fn a_resend_stopped_while_mattermost_is_still_down_exits_1_naming_the_owed_post() {
    // Refused for good once; then the server answers 503 while the operator resends.
    let mut script = vec![Reply::status(400, "invalid payload")];
    script.extend(vec![Reply::status(503, "maintenance"); 200]);
    let p = completed(script);
    finish(p.spawn("atvm-run-watcher", &["--build-name", B]), LONG).code_is(1);
    // The resend keeps retrying until the operator stops it (Ctrl-C, a unit's stop).
    let r = p.spawn("atvm-run-watcher", &["--build-name", B, "--resend"]);
    p.wait_until("the resend's first attempt", LONG, || p.hook.count() == 2);
    // A second resend meanwhile is told what holds the lock.
    resend(&p, &[])
        .code_is(4)
        .error_line("atvm-run-watcher", "a watcher of")
        .said("or another resend");
    kill(&r, "TERM");
    let out = finish(r, LONG);
    out.code_is(1).never_said("the next start delivers it");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("atvm-run-watcher: resend of {B} not delivered"))
            && last.contains("COMPLETED post still owed")
            && last.contains(&format!("atvm-run-watcher --build-name {B} --once")),
        "{stderr}"
    );
    assert_ended(&p, "COMPLETED", "pending");
    // A start would archive it unsent: refused while it is owed.
    p.run(
        "start-atvm-run",
        &["--build-name", B, "--runner-command", "true"],
    )
    .code_is(4);
    // The watcher run the line names delivers it, and records it as resent.
    p.hook.recover();
    finish(
        p.spawn("atvm-run-watcher", &["--build-name", B, "--once"]),
        LONG,
    )
    .code_is(0);
    let s = p.state(B);
    assert_eq!(s["post"]["status"], "posted", "{s:#}");
    assert!(s["post"]["resent_at"].is_string(), "{s:#}");
    assert_eq!(p.hook.posts().len(), 1, "delivered once");
    p.assert_no_secret(&out);
}

/// The fake answers as Mattermost does: an unknown hook is 400 with the server's JSON
/// error, a missing channel 404; both are permanent, and only the error's id, message
/// and status are kept. A rate limit (429, plain text) is waited out.
#[test]
fn mattermost_s_own_answers_unknown_hook_missing_channel_and_rate_limit() {
    for (reply, status, id) in [
        (
            Reply::missing_channel(),
            "404",
            "web.incoming_webhook.channel.app_error",
        ),
        (
            Reply::unknown_hook(),
            "400",
            "web.incoming_webhook.invalid.app_error",
        ),
    ] {
        let p = completed(vec![reply]);
        restart(&p).code_is(1).said("failed for good");
        assert_ended(&p, "COMPLETED", "failed");
        let error = p.state(B)["post"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(status) && error.contains(id), "{error}");
        assert!(
            !error.contains("fakerequestid"),
            "no request id is kept: {error}"
        );
        assert_eq!(p.hook.count(), 1);
    }
    let p = completed(vec![Reply::rate_limited(1)]);
    restart(&p).code_is(0);
    assert_ended(&p, "COMPLETED", "posted");
    assert_eq!(p.hook.count(), 2, "retried after the rate limit");
    assert_eq!(p.hook.posts().len(), 1);
}

/// A cancel that arrives while a resend is on the wire, delivered: the run stays what was
/// reported (COMPLETED, posted), as with the watcher's own delivery — never CANCELLED with
/// a delivered post.
#[test]
fn a_cancel_during_a_delivered_resend_leaves_the_run_reported() {
    let p = completed(vec![
        Reply::status(400, "invalid payload"),
        Reply::delayed(Duration::from_secs(2), Reply::Ok),
    ]);
    restart(&p).code_is(1);
    assert_ended(&p, "COMPLETED", "failed");
    let resending = p.spawn("atvm-run-watcher", &["--build-name", B, "--resend"]);
    p.wait_until("the resend on the wire", LONG, || p.hook.count() == 2);
    p.run("cancel-atvm-run-watcher", &["--build-name", B])
        .code_is(0);
    finish(resending, LONG).code_is(0);
    assert_ended(&p, "COMPLETED", "posted");
}
