//! Restart equivalence as a property (docs/watcher-service.md, "Restart equivalence"): a
//! generated run (`testkit::scenario`) is played step by step under the real runner
//! wrapper, once with a watcher left alone and again with the watcher restarted at every
//! step boundary (`--once` after each step), stopped (SIGTERM) or killed (SIGKILL, also at
//! the pause points between a decision and its delivery), and taken across a new boot id.
//! The reference waits on events; half the disturbed plays only poll
//! (`ATVM_WATCH_EVENTS=off`), so the event and the poll paths are both held to it.
//! The posts (everything but the footer's times and the run's own duration, which differ
//! between two plays) and the final `state.json` must be equal — and the posts must be
//! right: a group's post lists its own failed tests and no other group's.
//!
//! Seeded and reproducible: a failure names its seed; `ATVM_EQUIVALENCE_SEED=<n>` plays
//! that one scenario, `ATVM_EQUIVALENCE_CASES=<n>` plays more than the default.

use serde_json::{Value, json};
use std::fs;
use std::path::Path;
use std::process::Child;
use std::time::Duration;
use testkit::scenario::{Ending, Play, Rng, Scenario};
use testkit::{Posting, attachment, finish, text};

const B: &str = "e2e-redhat9.6-ubuntu24.04-w2k25-fc";
const LONG: Duration = Duration::from_secs(30);
/// Scenarios per `cargo test`, spread over [`SHARDS`] tests that run in parallel.
const DEFAULT_CASES: u64 = 24;
const SHARDS: u64 = 4;

/// How the watcher is disturbed while a scenario plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disturb {
    /// One watcher, never disturbed: the reference.
    None,
    /// A fresh `atvm-run-watcher --once` after every step: a restart at every poll.
    OncePerStep,
    /// A watcher stopped (SIGTERM) or killed (SIGKILL) at some step boundaries and started
    /// again, then, after the runner's exit, started under another boot id.
    Signals,
    /// A watcher killed at a pause point between a decision and its post (`watch.decided`)
    /// or between recording an attempt and sending it (`deliver.recorded`).
    Failpoint(&'static str),
}

/// What a play produced, as compared.
#[derive(Debug, PartialEq)]
struct Outcome {
    posts: Vec<Value>,
    state: Value,
}

/// The posts a play's webhook received: each payload once (a payload sent again byte for
/// byte, footer and run id included, is the re-send of the documented SIGKILL window), and
/// how many were such re-sends. A request cut off by a kill is no post (the server answers
/// it 400).
fn received(p: &Posting) -> (Vec<Value>, usize) {
    let mut seen: Vec<String> = Vec::new();
    let mut resent = 0;
    for body in p.hook.requests().into_iter().map(|r| r.body) {
        if serde_json::from_str::<Value>(&body).is_err() {
            continue;
        }
        if seen.contains(&body) {
            resent += 1;
        } else {
            seen.push(body);
        }
    }
    let posts = seen
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    (posts, resent)
}

/// A running watcher process, if any.
struct Watcher {
    child: Option<Child>,
    /// One was killed with SIGKILL during the play (a re-sent post is then allowed: the
    /// documented window between the server's answer and its record).
    killed: bool,
}

impl Watcher {
    fn start(p: &Posting, env: &[(&str, &str)]) -> Watcher {
        let mut cmd = p.cmd("atvm-run-watcher");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.root().join("watcher.output"))
            .unwrap();
        cmd.args(["--build-name", B])
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Watcher {
            child: Some(cmd.spawn().unwrap()),
            killed: false,
        }
    }

    fn signal(&mut self, sig: i32) {
        if let Some(mut child) = self.child.take() {
            self.killed |= sig == libc::SIGKILL && child.try_wait().unwrap().is_none();
            // SAFETY: kill(2) on our own child's pid, which we have not waited for yet.
            unsafe { libc::kill(child.id() as i32, sig) };
            let _ = child.wait();
        }
    }

    /// Start another watcher in its place.
    fn restart(&mut self, p: &Posting, env: &[(&str, &str)]) {
        let killed = self.killed;
        *self = Watcher::start(p, env);
        self.killed = killed;
    }

    /// Wait for it to end by itself (the run is final).
    fn wait(&mut self) {
        if let Some(child) = self.child.take() {
            finish(child, LONG);
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// One play of `sc` under `disturb`, the watcher waking on events or (`events` false)
/// looking every poll only; `rng` varies the pacing and where signals land.
fn play(sc: &Scenario, disturb: Disturb, events: bool, rng: &mut Rng) -> (Outcome, usize) {
    let mut p = Posting::new(vec![]);
    if !events {
        p.set("ATVM_WATCH_EVENTS", "off");
    }
    p.set("ATVM_POLL_SECONDS", "0.05");
    p.set("ATVM_GRACE_SECONDS", "0.3");
    p.write_request(B, json!({ "categorize": sc.categorized }));
    let mut run = Play::start(&p, B, sc);
    let fp_dir = p.root().join("failpoints");
    fs::create_dir_all(&fp_dir).unwrap();
    let mut watcher = match disturb {
        Disturb::OncePerStep => Watcher {
            child: None,
            killed: false,
        },
        Disturb::Failpoint(step) => {
            let dir = fp_dir.display().to_string();
            Watcher::start(
                &p,
                &[("ATVM_FAILPOINTS", step), ("ATVM_FAILPOINT_DIR", &dir)],
            )
        }
        _ => Watcher::start(&p, &[]),
    };
    let mut restarts = 0;
    while run.step(&p, B) {
        restarts += disturb_at(&p, disturb, &mut watcher, &fp_dir, rng);
    }
    restarts += finish_play(&p, disturb, &mut watcher, &fp_dir);
    let (o, resent) = outcome(&p);
    assert!(
        resent == 0 || watcher.killed,
        "seed {}: {disturb:?} sent a post twice without a SIGKILL",
        sc.seed
    );
    if std::env::var_os("ATVM_EQUIVALENCE_KEEP").is_some() {
        eprintln!("{disturb:?}: kept {}", p.root().display());
        std::mem::forget(p);
    }
    (o, restarts)
}

/// The disturbance at one step boundary; how many restarts it made.
fn disturb_at(
    p: &Posting,
    disturb: Disturb,
    watcher: &mut Watcher,
    fp_dir: &Path,
    rng: &mut Rng,
) -> usize {
    match disturb {
        Disturb::None => {
            // Vary what a continuous watcher sees at once.
            std::thread::sleep(Duration::from_millis(rng.below(40)));
            0
        }
        Disturb::OncePerStep => {
            once(p, &[]);
            1
        }
        Disturb::Signals if rng.chance(40) => {
            let sig = if rng.chance(50) {
                libc::SIGKILL
            } else {
                libc::SIGTERM
            };
            std::thread::sleep(Duration::from_millis(rng.below(30)));
            watcher.signal(sig);
            watcher.restart(p, &[]);
            1
        }
        Disturb::Failpoint(step) => kill_at_failpoint(p, watcher, fp_dir, step),
        Disturb::Signals => 0,
    }
}

/// A watcher paused at `step` is killed and started again without pause points.
fn kill_at_failpoint(p: &Posting, watcher: &mut Watcher, fp_dir: &Path, step: &str) -> usize {
    if !fp_dir.join(format!("{step}.reached")).exists() {
        return 0;
    }
    // Killed before anything was sent: the post goes out once, never twice.
    let killed = watcher.killed;
    watcher.signal(libc::SIGKILL);
    fs::remove_file(fp_dir.join(format!("{step}.reached"))).unwrap();
    watcher.restart(p, &[]);
    watcher.killed = killed;
    1
}

/// After the runner's end: the watcher goes on to a final state.
fn finish_play(p: &Posting, disturb: Disturb, watcher: &mut Watcher, fp_dir: &Path) -> usize {
    let mut restarts = 0;
    match disturb {
        Disturb::OncePerStep => {
            p.wait_until("a final state through --once", LONG, || {
                once(p, &[]);
                restarts += 1;
                p.try_state(B).is_some_and(|s| s["final"] == true)
            });
        }
        Disturb::Signals => {
            // The machine "rebooted" after the runner's exit: another boot id.
            watcher.signal(libc::SIGKILL);
            watcher.restart(p, &[("ATVM_BOOT_ID", &"ab".repeat(16))]);
            restarts += 1;
            watcher.wait();
        }
        Disturb::Failpoint(step) => {
            p.wait_until("the watcher to end", LONG, || {
                restarts += kill_at_failpoint(p, watcher, fp_dir, step);
                watcher
                    .child
                    .as_mut()
                    .is_none_or(|c| c.try_wait().unwrap().is_some())
            });
        }
        Disturb::None => watcher.wait(),
    }
    restarts
}

fn once(p: &Posting, env: &[(&str, &str)]) {
    let mut cmd = p.cmd("atvm-run-watcher");
    cmd.args(["--build-name", B, "--once"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "--once: {}", text(&out));
}

/// The posts without what differs between two plays of one scenario (the footer's times
/// and run id, the run's measured duration), and the final state's decisions.
fn outcome(p: &Posting) -> (Outcome, usize) {
    let (posts, resent) = received(p);
    let posts = posts
        .into_iter()
        .map(|mut post| {
            let a = &mut post["attachments"][0];
            if let Some(a) = a.as_object_mut() {
                a.remove("footer");
            }
            if let Some(fields) = a["fields"].as_array_mut() {
                fields.retain(|f| f["title"] != "Duration");
            }
            post
        })
        .collect();
    let s = p.state(B);
    let subruns: Vec<Value> = s["subruns"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|x| {
                    json!({"key": x["key"], "group": x["group"], "state": x["state"],
                           "counts": x["counts"], "post": x["post"]["status"]})
                })
                .collect()
        })
        .unwrap_or_default();
    let state = json!({
        "state": s["state"], "final": s["final"], "reason": s["reason"],
        "counts": s["counts"], "post": s["post"]["status"], "subruns": subruns,
    });
    (Outcome { posts, state }, resent)
}

/// What any play of `sc` must show, whatever the watcher went through: every group that
/// finished is posted as its summary says, and lists its own failed tests, no other's.
fn check_right(sc: &Scenario, o: &Outcome) {
    let seed = sc.seed;
    for (i, group) in sc.groups.iter().enumerate() {
        let post = o.posts.iter().find(|post| {
            let title = attachment(post)["title"].as_str().unwrap_or_default();
            !sc.categorized
                || group
                    .name
                    .as_ref()
                    .is_some_and(|g| title.ends_with(g.as_str()))
        });
        if !group.finished {
            continue;
        }
        let fails = group.specs.iter().any(|s| s.fails > 0);
        let post = post.unwrap_or_else(|| {
            panic!("seed {seed}: group {i} finished and was not posted: {o:#?}")
        });
        let title = attachment(post)["title"].as_str().unwrap_or_default();
        let expected = if fails { "FAILED" } else { "COMPLETED" };
        if sc.categorized || sc.ending == Ending::Exit(0) {
            assert!(
                title.starts_with(expected),
                "seed {seed}: group {i}: {title}"
            );
        }
        let listed = attachment(post)["text"].as_str().unwrap_or_default();
        for title in sc.reported_titles(i) {
            assert!(
                listed.contains(&title),
                "seed {seed}: {title} missing from {listed}"
            );
        }
        for other in (0..sc.groups.len()).filter(|&j| j != i) {
            for title in sc.reported_titles(other) {
                assert!(
                    !listed.contains(&title),
                    "seed {seed}: {title} of group {other} in group {i}'s post: {listed}"
                );
            }
        }
    }
}

/// Play scenario `seed` undisturbed and disturbed two ways, and compare.
fn check(seed: u64) -> usize {
    let sc = Scenario::generate(seed);
    let mut rng = Rng::new(seed ^ 0x5eed);
    let (reference, _) = play(&sc, Disturb::None, true, &mut rng);
    check_right(&sc, &reference);
    let other = match rng.below(3) {
        0 => Disturb::Signals,
        1 => Disturb::Failpoint("watch.decided"),
        _ => Disturb::Failpoint("deliver.recorded"),
    };
    // Half the disturbed plays wait on events, half only poll: both paths decide alike.
    let events = seed.is_multiple_of(2);
    let mut restarts = 0;
    for disturb in [Disturb::OncePerStep, other] {
        let (got, n) = play(&sc, disturb, events, &mut rng);
        restarts += n;
        assert_eq!(
            got, reference,
            "seed {seed}: {disturb:?} (events {events}) changed the outcome (reproduce with ATVM_EQUIVALENCE_SEED={seed})\nscenario: {sc:#?}"
        );
    }
    restarts
}

fn shard(k: u64) {
    if let Ok(seed) = std::env::var("ATVM_EQUIVALENCE_SEED") {
        if k == 0 {
            let seed: u64 = seed.parse().expect("ATVM_EQUIVALENCE_SEED is a number");
            eprintln!("seed {seed}: {} restarts", check(seed));
        }
        return;
    }
    let cases = std::env::var("ATVM_EQUIVALENCE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let base: u64 = 0x00a7_0000;
    let restarts: usize = (0..cases)
        .filter(|i| i % SHARDS == k)
        .map(|i| check(base + i))
        .sum();
    eprintln!("shard {k}: {restarts} restart points, all equivalent");
}

#[test]
fn restart_equivalence_shard_0() {
    shard(0);
}

#[test]
fn restart_equivalence_shard_1() {
    shard(1);
}

#[test]
fn restart_equivalence_shard_2() {
    shard(2);
}

#[test]
fn restart_equivalence_shard_3() {
    shard(3);
}
