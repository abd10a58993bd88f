//! What the watcher keeps on disk, through the binary (docs/watcher-service.md): `state.json` stays under
//! 8 KiB whatever the size of the run, the resume data lives in `watcher/checkpoint.json`
//! with no buffers in it, an idle watcher rewrites nothing, and a checkpoint an earlier
//! version left in `state.json` still resumes exactly.

use super::{B, LONG, assert_final, start_runner, watch};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;
use testkit::{Expect, Posting, finish};

const RULE: &str = "────────────────────────────────────────────────────────────────────────────────────────────────────";
const BOX: &str = "────────────────────────────────────────────────────────────────────────────────────────────────";

/// One `(Run Starting)` … `(Run Finished)` block as Cypress prints it, for `specs` specs
/// (all passing) under `group`.
fn block(group: &str, specs: &[String]) -> String {
    block_ending(group, specs, false)
}

/// [`block`], its first spec failing one test when `fails`.
fn block_ending(group: &str, specs: &[String], fails: bool) -> String {
    let mut s = String::new();
    let n = specs.len();
    let _ = write!(
        s,
        "\n{}\n\n  (Run Starting)\n\n  ┌{BOX}┐\n  │ Cypress:        12.17.4{:>72}│\n  │ Params:         Tag: false, Group: {group}, Parallel: false{:>39}│\n  └{BOX}┘\n\n",
        "=".repeat(100),
        "",
        ""
    );
    for (i, spec) in specs.iter().enumerate() {
        let _ = write!(
            s,
            "\n{RULE}\n                                                                                                    \n  Running:  {spec:<70}  ({} of {n})\n\n\n  2 passing (4s)\n\n",
            i + 1
        );
    }
    let _ = write!(
        s,
        "\n{}\n\n  (Run Finished)\n\n\n       Spec                                              Tests  Passing  Failing  Pending  Skipped  \n  ┌{BOX}┐\n",
        "=".repeat(100)
    );
    for (i, spec) in specs.iter().enumerate() {
        if i > 0 {
            let _ = writeln!(s, "  ├{BOX}┤");
        }
        let (mark, passing, failing) = match fails && i == 0 {
            true => ('✖', "1", "1"),
            false => ('✔', "2", "-"),
        };
        let _ = writeln!(
            s,
            "  │ {mark}  {spec:<40} 00:05        2        {passing}        {failing}        -        - │"
        );
    }
    let footer = match fails {
        true => format!("✖  1 of {n} failed (50%)                      "),
        false => "✔  All specs passed!                        ".to_string(),
    };
    let failed = usize::from(fails);
    let failing = if fails {
        "1".to_string()
    } else {
        "-".to_string()
    };
    let _ = write!(
        s,
        "  └{BOX}┘\n    {footer}04:50 {:>8} {:>8} {failing:>8}        -        -  \n\n",
        2 * n,
        2 * n - failed,
    );
    s
}

fn specs(prefix: &str, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("cypress/e2e/{prefix}/s{i:04}.cy.js"))
        .collect()
}

/// A runner printing `log` (written to a file first) and exiting 0.
fn runner_printing(p: &Posting, log: &str) -> String {
    let path = p.root().join("generated.log");
    fs::write(&path, log).unwrap();
    format!("cat '{}'; exit 0", path.display())
}

fn state_json_len(p: &Posting) -> u64 {
    fs::metadata(p.state_dir(B).join("state.json"))
        .unwrap()
        .len()
}

#[test]
fn a_2000_spec_run_keeps_state_json_under_8_kib() {
    let p = Posting::new(vec![]);
    p.write_request(B, json!({}));
    start_runner(
        &p,
        &runner_printing(&p, &block("linux", &specs("linux", 2000))),
    );
    let s = assert_final(&p, &watch(&p, &[]), "COMPLETED");
    assert_eq!(s["counts"]["tests"], 4000, "{s}");
    assert!(state_json_len(&p) < 8192, "{} bytes", state_json_len(&p));
    assert!(s.get("checkpoint").is_none());
    // The resume data is compact too: one short row per spec, each spec named once.
    let cp = fs::read_to_string(p.state_dir(B).join("watcher/checkpoint.json")).unwrap();
    assert!(cp.len() < 2000 * 60, "checkpoint of {} bytes", cp.len());
    assert_eq!(cp.matches("linux/s0001.cy.js").count(), 1);
}

#[test]
fn huge_group_names_and_cells_are_not_kept_in_full() {
    let p = Posting::new(vec![]);
    p.write_request(B, json!({"categorize": true}));
    let log: String = (0..20)
        .map(|g| {
            block(
                &format!("g{g}-{}", "x".repeat(3000)),
                &specs(&format!("g{g}"), 2),
            )
        })
        .collect();
    start_runner(&p, &runner_printing(&p, &log));
    assert_final(&p, &watch(&p, &["--grace-seconds", "0.2"]), "COMPLETED");
    let cp = fs::metadata(p.state_dir(B).join("watcher/checkpoint.json")).unwrap();
    // 20 groups × (a 3,000-byte group in Params and in the group) would be 120 KB.
    assert!(cp.len() < 60_000, "checkpoint of {} bytes", cp.len());
    assert_eq!(p.hook.count(), 20);
}

#[test]
fn a_categorized_run_of_40_groups_keeps_state_json_under_8_kib() {
    let p = Posting::new(vec![]);
    p.write_request(B, json!({"categorize": true}));
    // 40 groups list well over 8 KiB of sub-runs.
    let log: String = (0..40)
        .map(|g| block(&format!("group{g:03}"), &specs(&format!("g{g}"), 2)))
        .collect();
    start_runner(&p, &runner_printing(&p, &log));
    let s = assert_final(&p, &watch(&p, &["--grace-seconds", "0.2"]), "COMPLETED");
    assert!(state_json_len(&p) < 8192, "{} bytes", state_json_len(&p));
    assert_eq!(s["subruns_total"], 40, "{s}");
    let listed = s["subruns"].as_array().unwrap();
    assert!(!listed.is_empty() && listed.len() < 40);
    assert_eq!(
        listed.last().unwrap()["key"],
        "40-group039",
        "the latest are listed"
    );
    // Every group has its own file and was posted once.
    for g in 0..40 {
        let sub = p
            .state_dir(B)
            .join(format!("subruns/{:02}-group{g:03}/state.json", g + 1));
        assert!(sub.exists(), "{}", sub.display());
    }
    assert_eq!(p.hook.count(), 40);
}

#[test]
fn an_idle_watcher_rewrites_nothing() {
    let p = Posting::new(vec![]);
    p.write_request(B, json!({}));
    start_runner(&p, "echo '  (Run Starting)'; sleep 30; :");
    let w = p.spawn(
        "atvm-run-watcher",
        &["--build-name", B, "--poll-seconds", "0.05"],
    );
    p.wait_state(B, "WATCHING", LONG);
    let files = ["state.json", "watcher/checkpoint.json"];
    let inode = |f: &str| fs::metadata(p.state_dir(B).join(f)).unwrap().ino();
    // Let the first polls settle, then watch ten more: every write replaces the file.
    std::thread::sleep(Duration::from_millis(300));
    let before: Vec<u64> = files.iter().map(|f| inode(f)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<u64> = files.iter().map(|f| inode(f)).collect();
    assert_eq!(before, after, "nothing changed, nothing was written");
    p.cancel_run(B);
    finish(w, LONG);
}

#[test]
fn resuming_a_run_rewrites_nothing_that_did_not_change() {
    // `atvm-run-status` sorts and ages runs by state.json's updated_at: a watcher that only
    // looks (--once, a restart, a second cancel) must not make a finished run look new.
    let p = Posting::new(vec![]);
    p.write_request(B, json!({}));
    start_runner(&p, &p.cypress_command("passing.log", 0));
    let out = watch(&p, &[]);
    assert_final(&p, &out, "COMPLETED");
    let dir = p.state_dir(B);
    let files = ["state.json", "watcher/checkpoint.json"];
    let snapshot = || -> Vec<(u64, Vec<u8>)> {
        files
            .iter()
            .map(|f| {
                let path = dir.join(f);
                (fs::metadata(&path).unwrap().ino(), fs::read(&path).unwrap())
            })
            .collect()
    };
    let before = snapshot();
    watch(&p, &["--once"]).succeeds().said("nothing left to do");
    watch(&p, &[]).succeeds();
    p.run("cancel-atvm-run-watcher", &["--build-name", B])
        .succeeds()
        .said("already reported");
    assert!(snapshot() == before, "a finished run was rewritten");
    assert_eq!(p.hook.count(), 1);
}

#[test]
fn a_checkpoint_left_in_state_json_by_an_earlier_version_resumes_exactly() {
    let p = Posting::new(vec![]);
    p.write_request(B, json!({}));
    let go = p.root().join("go");
    let f = testkit::fixture("cypress/failing-2-of-20.log")
        .display()
        .to_string();
    // Stop in the middle of the summary row of a failed spec, as the earlier version's
    // checkpoint would have: that row must not be lost.
    let whole = fs::read(&f).unwrap();
    let row = "✖  cypress/e2e/area07".as_bytes();
    let cut = whole.windows(row.len()).position(|w| w == row).unwrap() + 8;
    start_runner(
        &p,
        &format!(
            "head -c {cut} '{f}'; while [ ! -e '{}' ]; do sleep 0.05; done; tail -c +{} '{f}'; exit 2",
            go.display(),
            cut + 1
        ),
    );
    let out = watch(&p, &["--once"]);
    out.succeeds();
    // Rewrite what this version saved into the earlier format: the checkpoint inside
    // state.json, the half line in the parser's `partial` and the offset after it.
    let dir = p.state_dir(B);
    let cp_path = dir.join("watcher/checkpoint.json");
    let mut cp = testkit::read_json(&cp_path);
    let line_start = cp["follow"]["offset"].as_u64().unwrap() as usize;
    let log = fs::read(p.run_log(B)).unwrap();
    let half: Vec<Value> = log[line_start..cut].iter().map(|b| json!(b)).collect();
    assert!(!half.is_empty());
    cp["follow"]["offset"] = json!(cut);
    cp["parser"]["partial"] = Value::Array(half);
    let mut state = testkit::read_json(&dir.join("state.json"));
    state["checkpoint"] = cp;
    fs::write(dir.join("state.json"), state.to_string()).unwrap();
    fs::remove_file(&cp_path).unwrap();
    // The upgraded watcher resumes from it and reads the log exactly once.
    fs::write(&go, "").unwrap();
    let s = assert_final(&p, &watch(&p, &[]), "FAILED");
    assert_eq!(s["counts"]["tests"], 40, "{s}");
    let post = p.only_post().to_string();
    assert!(
        post.contains("area07.cy.js") && post.contains("area13.cy.js"),
        "both failing rows were read: {post}"
    );
    assert!(cp_path.exists(), "migrated to its own file");
    assert!(
        testkit::read_json(&dir.join("state.json"))
            .get("checkpoint")
            .is_none()
    );
}

#[test]
fn a_restart_of_a_run_with_more_groups_than_state_json_lists_posts_each_group_once_rightly() {
    let p = Posting::new(vec![]);
    p.write_request(B, json!({"categorize": true}));
    // 40 groups (state.json lists only the latest); group 31 fails. The runner stops in the
    // middle of group 31 (running, not finished) until the test says go.
    let part = |range: std::ops::Range<usize>| -> String {
        range
            .map(|g| block_ending(&format!("grp{g:02}"), &specs(&format!("g{g}"), 2), g == 31))
            .collect()
    };
    let g31 = part(31..32);
    let cut = g31.find("  (Run Finished)").unwrap();
    let first = p.root().join("first.log");
    let rest = p.root().join("rest.log");
    fs::write(&first, part(1..31) + &g31[..cut]).unwrap();
    fs::write(&rest, g31[cut..].to_string() + &part(32..41)).unwrap();
    let go = p.root().join("go");
    start_runner(
        &p,
        &format!(
            "cat '{}'; while [ ! -e '{}' ]; do sleep 0.05; done; cat '{}'; exit 1",
            first.display(),
            go.display(),
            rest.display()
        ),
    );
    let w = p.spawn(
        "atvm-run-watcher",
        &["--build-name", B, "--grace-seconds", "0.2"],
    );
    p.wait_until("30 group posts", LONG, || p.hook.count() == 30);
    p.wait_until("group 31 open", LONG, || {
        p.try_state(B).is_some_and(|s| {
            s["subruns"]
                .as_array()
                .is_some_and(|l| l.last().is_some_and(|x| x["key"] == "31-grp31"))
        })
    });
    std::process::Command::new("kill")
        .args(["-TERM", &w.id().to_string()])
        .status()
        .unwrap();
    finish(w, LONG);
    fs::write(&go, "").unwrap();
    assert_final(&p, &watch(&p, &["--grace-seconds", "0.2"]), "FAILED");
    let posts: Vec<String> = p
        .posts()
        .iter()
        .map(|b| b["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(posts.len(), 40, "{posts:#?}");
    for g in 1..41 {
        let group = format!("`grp{g:02}`");
        let mine: Vec<&String> = posts.iter().filter(|t| t.contains(&group)).collect();
        assert_eq!(mine.len(), 1, "group {g}: {mine:#?}");
        let expected = if g == 31 { "FAILED" } else { "COMPLETED" };
        assert!(mine[0].starts_with(expected), "group {g}: {}", mine[0]);
    }
}

#[test]
fn a_watcher_stopped_by_an_unreadable_checkpoint_says_why_where_operators_look() {
    let p = Posting::new(vec![]);
    p.write_request(B, json!({}));
    start_runner(&p, "echo '  (Run Starting)'; sleep 30; :");
    let out = watch(&p, &["--once"]);
    out.succeeds();
    let cp = p.state_dir(B).join("watcher/checkpoint.json");
    fs::write(&cp, "{\"run_id\": 5").unwrap();
    watch(&p, &["--once"]).code_is(1).said("checkpoint.json");
    assert_eq!(
        fs::read_to_string(&cp).unwrap(),
        "{\"run_id\": 5",
        "kept as it was"
    );
    let s = p.state(B);
    let why = s["details"]["watcher_error"].as_str().unwrap_or_default();
    assert!(why.contains("checkpoint.json"), "{s:#}");
    p.run("atvm-run-status", &["--build-name", B])
        .succeeds()
        .said("attention")
        .said("(it stopped: ");
    p.cancel_run(B);
}
