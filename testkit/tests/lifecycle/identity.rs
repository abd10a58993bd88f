//! Run identity (issue 11; docs/watcher-service.md, "How the watcher knows what belongs to
//! this run" and "Starting a run") through the binaries, plain names and `.sh` drop-in links
//! alike: the watcher follows this run and nothing else — not a start helper,
//! not another user's process or planted log, not the previous run of a reused build name,
//! not another build's reports — refused logs surface at once, concurrent starts are
//! serialised, lock links are not followed and a state root others can write is refused.
//! The fallback for runners started by hand still works.
//!
//! The fallback looks at every process of the machine whose command line names the build,
//! so each test has its own build name.

use serde_json::Value;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use testkit::{Env, Expect, Posting, attachment, fixture, text};

const LONG: Duration = Duration::from_secs(30);
/// How much sooner than the 10 s confirmation window a refused start must be reported.
const AT_ONCE: Duration = Duration::from_secs(5);
/// The two names of every tool: the binary's own and the drop-in link old callers use.
const NAMES: [&str; 2] = ["", ".sh"];

fn watcher_unit(build: &str) -> String {
    format!("atvm-run-watcher@{build}.service")
}

fn runner_unit(build: &str) -> String {
    format!("atvm-runner@{build}.service")
}

#[track_caller]
fn assert_code(out: &Output, code: i32, what: &str) {
    assert_eq!(out.status.code(), Some(code), "{what}: {}", text(out));
}

/// `start-atvm-run{suffix}` for `build` with a template step and `runner`.
fn start_run(env: &Env, suffix: &str, build: &str, runner: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "--build-name",
        build,
        "--template",
        "migration",
        "--template-command",
        "echo selecting specs",
        "--runner-command",
        runner,
    ];
    args.extend_from_slice(extra);
    env.run(&format!("start-atvm-run{suffix}"), &args)
}

/// Make the fake systemctl answer the calls matching `pattern` (a shell `case` pattern over
/// its arguments) only after `seconds`: a start helper then lives that much longer at that
/// step, the window in which a watcher could mistake it for the runner, or read a log
/// before the runner has replaced it.
fn slow_systemctl(env: &mut Env, pattern: &str, seconds: &str) {
    let script = env.script(
        "slow-systemctl",
        &format!(
            "case \"$*\" in {pattern}) sleep {seconds} ;; esac\nexec '{}' \"$@\"",
            env.systemctl.display()
        ),
    );
    env.set("ATVM_SYSTEMCTL", script.display().to_string());
}

/// The watcher never took a process it found by its command line for the runner.
#[track_caller]
/// Wait until the watcher of `build` says it follows process `pid` by its command line.
fn wait_following(env: &Env, build: &str, pid: u32) {
    let said = format!("following runner pid {pid} ");
    env.wait_until(&format!("the watcher to follow pid {pid}"), LONG, || {
        env.unit_output(&watcher_unit(build)).contains(&said)
    });
}

fn assert_no_fallback(env: &Env, build: &str) {
    let journal = env.unit_output(&watcher_unit(build));
    assert!(
        !journal.contains("following runner pid"),
        "the watcher adopted a process by its command line:\n{journal}"
    );
}

/// Wait for a final state and for the watcher unit to have exited.
fn finished(env: &Env, build: &str) -> Value {
    let s = env.wait_final(build, LONG);
    env.wait_unit_inactive(&watcher_unit(build), LONG);
    s
}

/// The posts about `build`, in order.
fn posts_of(p: &Posting, build: &str) -> Vec<Value> {
    let name = format!("build `{build}`");
    p.posts()
        .into_iter()
        .filter(|post| post["text"].as_str().is_some_and(|t| t.contains(&name)))
        .collect()
}

fn footer(post: &Value) -> String {
    attachment(post)["footer"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn request_run_id(env: &Env, build: &str) -> String {
    testkit::read_json(&env.state_dir(build).join("request.json"))["run_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A process group started by the test and killed when it ends, passed or not.
struct Group(Child);

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        Group(cmd.process_group(0).spawn().expect("spawn"))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// A runner started by hand, as operators did before these tools (`python3
/// ./run-sorry-cypress.py … --build_name B > /tmp/B.log &`): `script` runs in a shell whose
/// command line names the build, with its output in the run log.
fn detached_runner(env: &Env, build: &str, script: &str) -> Group {
    let log = fs::File::create(env.run_log(build)).unwrap();
    Group::spawn(
        Command::new("sh")
            .args(["-c", script, "sh", "--build_name", build])
            .stdin(Stdio::null())
            .stdout(log),
    )
}

// ----- the two flows, through both names ----------------------------------------------------

/// `wrapper… <tool> args…` with the tools' environment: a process that names the build
/// and merely wraps one of ours (`sudo`, `timeout`, a shell).
fn wrapped(env: &Env, wrapper: &[&str], name: &str, args: &[&str]) -> Command {
    let tool = env.cmd(name);
    let mut c = Command::new(wrapper[0]);
    c.args(&wrapper[1..])
        .arg(tool.get_program())
        .args(args)
        .env_clear()
        .envs(tool.get_envs().filter_map(|(k, v)| Some((k, v?))));
    c
}

#[test]
fn the_two_step_flow_follows_the_runner_not_the_start_helper() {
    let shell: &[&str] = &["sh", "-c", "\"$0\" \"$@\"; :"];
    let timeout: &[&str] = &["timeout", "60"];
    for (suffix, wrapper) in [
        ("", None),
        (".sh", None),
        (".sh", Some(timeout)),
        ("", Some(shell)),
    ] {
        let build = format!(
            "e2e-identity-two-step{}{}",
            suffix.replace('.', "-"),
            wrapper.map_or(String::new(), |w| format!("-{}", w[0]))
        );
        let b = build.as_str();
        let mut p = Posting::new(vec![]);
        // start-atvm-runner lives a second with `--build-name B` in its argv before the
        // runner spec exists, while the watcher polls every 0.1 s.
        slow_systemctl(&mut p, "*\"is-active atvm-runner@\"*", "1");
        let run = |name: &str, args: &[&str]| match wrapper {
            Some(w) => wrapped(&p, w, name, args).output().unwrap(),
            None => p.run(name, args),
        };
        let out = run(
            &format!("start-atvm-run-watcher{suffix}"),
            &["--build-name", b, "--template", "migration"],
        );
        assert_code(&out, 0, "start-atvm-run-watcher");
        p.wait_state(b, "STARTING", LONG);
        let out = run(
            &format!("start-atvm-runner{suffix}"),
            &[
                "--build-name",
                b,
                "--runner-command",
                &p.cypress_command("passing.log", 0),
            ],
        );
        assert_code(&out, 0, "start-atvm-runner");
        let s = finished(&p, b);
        assert_eq!(s["state"], "COMPLETED", "{suffix}: {s:#}");
        assert_eq!(s["counts"]["tests"], 6, "{suffix}");
        assert_no_fallback(&p, b);
        let post = p.only_post();
        assert!(
            footer(&post).contains(&request_run_id(&p, b)),
            "{suffix}: {post:#}"
        );
    }
}

#[test]
fn the_combined_flow_follows_the_runner_not_the_start_helper() {
    for suffix in NAMES {
        let build = format!("e2e-identity-combined{}", suffix.replace('.', "-"));
        let b = build.as_str();
        let mut p = Posting::new(vec![]);
        slow_systemctl(&mut p, "*\"is-active atvm-runner@\"*", "1");
        let out = start_run(
            &p,
            suffix,
            b,
            &p.cypress_command("failing-2-of-20.log", 2),
            &[],
        );
        assert_code(&out, 0, "start-atvm-run");
        let run_id = request_run_id(&p, b);
        assert!(
            text(&out).contains(&run_id),
            "the caller is told the run that is watched: {}",
            text(&out)
        );
        let s = finished(&p, b);
        assert_eq!(s["state"], "FAILED", "{suffix}: {s:#}");
        assert_eq!(s["run_id"], run_id.as_str());
        assert_no_fallback(&p, b);
        let post = p.only_post();
        assert!(footer(&post).contains(&run_id), "{suffix}: {post:#}");
        let calls = p.systemctl_calls();
        let w = calls.find(&format!("start {}", watcher_unit(b))).unwrap();
        let r = calls.find(&format!("start {}", runner_unit(b))).unwrap();
        assert!(w < r, "watcher before runner:\n{calls}");
    }
}

// ----- a reused build name inherits nothing ------------------------------------------------

/// The three-group fixture after a wait for `go`.
fn three_groups_after(go: &Path) -> String {
    format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; cat '{}'; exit 1",
        go.display(),
        fixture("cypress/categorized-3-groups.log").display()
    )
}

#[test]
fn a_categorized_build_name_reused_twice_posts_each_run_s_groups_once() {
    const B: &str = "e2e-identity-reuse-categorized";
    let mut p = Posting::new(vec![]);
    let mut run_ids: Vec<String> = Vec::new();
    for run in 0..3 {
        if run == 1 {
            // From now on the runner starts a second after its watcher, with the previous
            // run's log still at the log path.
            slow_systemctl(&mut p, "*\"start atvm-runner@\"*", "1");
        }
        let go = p.root().join(format!("go{run}"));
        let out = start_run(&p, ".sh", B, &three_groups_after(&go), &["--categorize"]);
        assert_code(&out, 0, &format!("start {run}"));
        let run_id = request_run_id(&p, B);
        assert!(!run_ids.contains(&run_id));
        p.wait_state(B, "WATCHING", LONG);
        // A few polls with the runner silent: nothing of an earlier run is posted again.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(p.posts().len(), 3 * run, "{:#?}", p.hook.texts());
        assert!(p.state(B)["subruns"].as_array().is_none_or(Vec::is_empty));

        fs::write(&go, "").unwrap();
        assert_eq!(finished(&p, B)["state"], "FAILED");
        run_ids.push(run_id);
        let posts = p.posts();
        assert_eq!(posts.len(), 3 * (run + 1), "{:#?}", p.hook.texts());
        for (i, post) in posts.iter().enumerate() {
            let id = &run_ids[i / 3];
            assert!(footer(post).contains(id.as_str()), "post {i}: {post:#}");
        }
    }
}

#[test]
fn an_uncategorized_build_name_reused_posts_only_the_new_run() {
    const B: &str = "e2e-identity-reuse-plain";
    let mut p = Posting::new(vec![]);
    let report = p.report_for("area07.cy.js");
    let failing = format!(
        "cp '{}' '{}'; {}",
        report.display(),
        p.reporter_dir.display(),
        p.cypress_command("failing-2-of-20.log", 2)
    );
    assert_code(&start_run(&p, "", B, &failing, &[]), 0, "first start");
    assert_eq!(finished(&p, B)["state"], "FAILED");
    let first = p.only_post();
    assert!(
        attachment(&first)["text"]
            .as_str()
            .unwrap()
            .contains("area07.cy.js")
    );

    slow_systemctl(&mut p, "*\"start atvm-runner@\"*", "1");
    let passing = p.cypress_command("passing.log", 0);
    assert_code(&start_run(&p, "", B, &passing, &[]), 0, "second start");
    let s = finished(&p, B);
    assert_eq!(s["state"], "COMPLETED", "{s:#}");
    assert_eq!(s["counts"]["tests"], 6, "only the new log counts");
    let posts = p.posts();
    assert_eq!(posts.len(), 2);
    let a = attachment(&posts[1]);
    assert!(
        a["title"].as_str().unwrap().starts_with("COMPLETED"),
        "{a:#}"
    );
    assert!(
        !posts[1].to_string().contains("area07"),
        "the old run's failures are not mixed in: {:#}",
        posts[1]
    );
}

// ----- an impostor of another user ---------------------------------------------------------

/// Why a test that runs a process as another user cannot run here, if it cannot.
fn drop_privileges_skip_reason() -> Option<&'static str> {
    if atvm_common::fsutil::effective_uid() != 0 {
        return Some("needs root to run a process as nobody");
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        return Some("setpriv is missing (apt-get install util-linux)");
    }
    None
}

#[test]
fn an_impostor_of_another_user_is_never_adopted_and_its_planted_log_refuses_the_start() {
    const B: &str = "e2e-identity-impostor";
    if let Some(why) = drop_privileges_skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut p = Posting::new(vec![]);
    // The log directory is world-writable, as /tmp is, and reachable by nobody.
    fs::set_permissions(p.root(), fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(&p.log_dir, fs::Permissions::from_mode(0o1777)).unwrap();
    let log = p.run_log(B);
    // nobody plants a passing Cypress log at <log-dir>/<build>.log, holds it open for
    // writing, and stays alive with `--build-name <build>` in its command line.
    let _impostor = Group::spawn(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["sh", "-c", "exec 3>\"$1\"; cat >&3; sleep 60; :", "sh"])
            .arg(&log)
            .args(["--build-name", B])
            .stdin(fs::File::open(fixture("cypress/passing.log")).unwrap()),
    );
    let planted = fs::metadata(fixture("cypress/passing.log")).unwrap().len();
    p.wait_until("the planted log", LONG, || {
        fs::metadata(&log).is_ok_and(|m| m.len() == planted)
    });
    assert_eq!(fs::metadata(&log).unwrap().uid(), 65534);

    // A watcher started alone, for a run not started through the tools: it waits for a
    // runner of its own user and gives up at the start timeout.
    p.set("ATVM_START_TIMEOUT_SECONDS", "2");
    let out = p.run("start-atvm-run-watcher.sh", &["--build-name", B]);
    assert_code(&out, 0, "start-atvm-run-watcher.sh");
    p.wait_state(B, "STARTING", LONG);
    p.wait_until("the watcher to stop waiting", LONG, || {
        p.try_state(B).is_some_and(|s| s["state"] != "STARTING")
    });
    let s = p.state(B);
    assert_eq!(s["state"], "UNKNOWN", "{s:#}");
    finished(&p, B);
    assert!(s["reason"].as_str().unwrap().contains("no runner"), "{s:#}");
    assert_no_fallback(&p, B);
    assert!(p.posts().is_empty(), "{:#?}", p.hook.texts());

    // The real start refuses the planted log at once, naming it.
    p.set("ATVM_START_TIMEOUT_SECONDS", "60");
    let t = Instant::now();
    let out = start_run(&p, "", B, &p.cypress_command("passing.log", 0), &[]);
    assert!(t.elapsed() < AT_ONCE, "took {:?}", t.elapsed());
    assert_code(&out, 5, "start-atvm-run");
    out.said(&log.display().to_string());
    let s = finished(&p, B);
    assert_eq!(s["state"], "UNKNOWN", "{s:#}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains(&log.display().to_string()),
        "{s:#}"
    );
    assert!(p.posts().is_empty(), "{:#?}", p.hook.texts());
    assert_eq!(fs::metadata(&log).unwrap().len(), planted, "left alone");
}

// ----- a refused run log ---------------------------------------------------------------------

/// A run log planted as a link to a file that must not be created.
fn symlinked_log(env: &Env, build: &str) -> PathBuf {
    let target = env.root().join("link-target");
    symlink(&target, env.run_log(build)).unwrap();
    target
}

#[track_caller]
fn assert_refused_naming_the_log(env: &Env, build: &str, out: &Output, took: Duration) {
    let log = env.run_log(build).display().to_string();
    assert!(took < AT_ONCE, "took {took:?}: {}", text(out));
    assert_code(out, 5, "start");
    assert!(text(out).contains(&log), "{}", text(out));
    // Recorded at once: by the start helper, or by the watcher from the runner's refusal.
    let s = env.wait_final(build, AT_ONCE);
    env.wait_unit_inactive(&watcher_unit(build), LONG);
    assert_eq!(s["state"], "UNKNOWN", "{s:#}");
    assert!(s["reason"].as_str().unwrap().contains(&log), "{s:#}");
}

#[test]
fn a_symlinked_run_log_refuses_the_combined_start_at_once() {
    for suffix in NAMES {
        let build = format!("e2e-identity-log-link{}", suffix.replace('.', "-"));
        let b = build.as_str();
        let mut p = Posting::new(vec![]);
        p.set("ATVM_START_TIMEOUT_SECONDS", "60");
        let target = symlinked_log(&p, b);
        let t = Instant::now();
        let out = start_run(&p, suffix, b, &p.cypress_command("passing.log", 0), &[]);
        assert_refused_naming_the_log(&p, b, &out, t.elapsed());
        assert!(!target.exists(), "the link was followed");
        assert!(p.posts().is_empty(), "{:#?}", p.hook.texts());
    }
}

#[test]
fn a_symlinked_run_log_refuses_the_two_step_start_at_once() {
    for suffix in NAMES {
        let build = format!("e2e-identity-log-link-2{}", suffix.replace('.', "-"));
        let b = build.as_str();
        let mut p = Posting::new(vec![]);
        p.set("ATVM_START_TIMEOUT_SECONDS", "60");
        let target = symlinked_log(&p, b);
        let out = p.run(
            &format!("start-atvm-run-watcher{suffix}"),
            &["--build-name", b],
        );
        assert_code(&out, 0, "start-atvm-run-watcher");
        let t = Instant::now();
        let out = p.run(
            &format!("start-atvm-runner{suffix}"),
            &[
                "--build-name",
                b,
                "--runner-command",
                &p.cypress_command("passing.log", 0),
            ],
        );
        // The watcher ends the run itself, from the runner's refusal.
        assert_refused_naming_the_log(&p, b, &out, t.elapsed());
        assert!(!target.exists(), "the link was followed");
        assert!(p.posts().is_empty(), "{:#?}", p.hook.texts());
    }
}

#[test]
fn a_symlinked_launch_log_is_not_followed_and_nothing_starts() {
    const B: &str = "e2e-identity-launch-link";
    let p = Posting::new(vec![]);
    let target = p.root().join("link-target");
    let launch_log = p.log_dir.join(format!("{B}.launch.log"));
    symlink(&target, &launch_log).unwrap();
    let out = start_run(&p, ".sh", B, "true", &[]);
    assert_code(&out, 1, "start-atvm-run.sh");
    out.said(&launch_log.display().to_string());
    assert!(!target.exists(), "the link was followed");
    assert!(!p.systemctl_calls().contains("start "), "nothing started");
    assert!(!p.state_dir(B).exists(), "nothing recorded");
}

// ----- two builds sharing the reporter directory -------------------------------------------

#[test]
fn two_builds_at_once_each_post_only_their_own_failures() {
    const A: &str = "e2e-identity-shared-a";
    const B: &str = "e2e-identity-shared-b";
    let p = Posting::new(vec![]);
    // Build B runs other specs: zone01 … zone20, failing zone07 and zone13.
    let zone_log = p.root().join("zones.log");
    fs::write(
        &zone_log,
        fs::read_to_string(fixture("cypress/failing-2-of-20.log"))
            .unwrap()
            .replace("area", "zone"),
    )
    .unwrap();
    let area_log = fixture("cypress/failing-2-of-20.log");
    let dir = p.reporter_dir.display().to_string();
    // Each runner writes its report, waits until the other build's report is there too, then
    // prints its log: both reports are in the shared directory while both runs are watched.
    let runner = |report: &Path, other: &str, log: &Path| {
        format!(
            "cp '{}' '{dir}/'; while [ ! -e '{dir}/{other}' ]; do sleep 0.05; done; cat '{}'; exit 2",
            report.display(),
            log.display()
        )
    };
    let area = runner(&p.report_for("area07.cy.js"), "zone13.json", &area_log);
    let zone = runner(&p.report_for("zone13.cy.js"), "area07.json", &zone_log);
    assert_code(&start_run(&p, "", A, &area, &[]), 0, "start A");
    assert_code(&start_run(&p, ".sh", B, &zone, &[]), 0, "start B");
    for build in [A, B] {
        assert_eq!(finished(&p, build)["state"], "FAILED");
    }
    for (build, own, other) in [(A, "area07.cy.js", "zone"), (B, "zone13.cy.js", "area")] {
        let posts = posts_of(&p, build);
        assert_eq!(posts.len(), 1, "{build}: {:#?}", p.hook.texts());
        let failed = attachment(&posts[0])["text"].as_str().unwrap();
        assert!(
            failed.contains(&format!("cypress/e2e/{own} › Login rejects a bad password")),
            "{build}: {failed}"
        );
        assert!(
            !failed.contains(other),
            "{build} lists another build's failure: {failed}"
        );
    }
    assert_eq!(p.posts().len(), 2);
}

// ----- concurrent starts -----------------------------------------------------------------

#[test]
fn three_concurrent_starts_of_one_build_start_it_once() {
    const B: &str = "e2e-identity-race";
    let p = Posting::new(vec![]);
    let passing = p.cypress_command("passing.log", 0);
    // An earlier run of the build: the only archive there may be afterwards.
    assert_code(&start_run(&p, "", B, &passing, &[]), 0, "earlier run");
    finished(&p, B);
    assert_eq!(p.posts().len(), 1);

    // The template step takes a moment, so the three overlap.
    let args = [
        "--build-name",
        B,
        "--template-command",
        "sleep 0.5",
        "--runner-command",
        passing.as_str(),
    ];
    let results: Vec<(Output, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = ["start-atvm-run", "start-atvm-run.sh", "start-atvm-run"]
            .into_iter()
            .map(|name| {
                let p = &p;
                scope.spawn(move || {
                    let t = Instant::now();
                    let out = p.run(name, &args);
                    (out, t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (winners, losers): (Vec<_>, Vec<_>) =
        results.iter().partition(|(out, _)| out.status.success());
    assert_eq!(winners.len(), 1, "exactly one starts: {results:#?}");
    let (winner, winner_took) = winners[0];
    let lock = format!(".locks/{B}.start.lock");
    for (out, took) in &losers {
        assert_code(out, 4, "a concurrent start");
        assert!(text(out).contains(&lock), "{}", text(out));
        assert!(
            took < winner_took,
            "refused at once, not after waiting: {took:?}"
        );
    }

    let run_id = request_run_id(&p, B);
    assert!(text(winner).contains(&run_id), "{}", text(winner));
    let s = finished(&p, B);
    assert_eq!(s["state"], "COMPLETED", "{s:#}");
    assert_eq!(s["run_id"], run_id.as_str());
    let archived = fs::read_dir(p.state_root.join(".archive").join(B))
        .unwrap()
        .count();
    assert_eq!(archived, 1, "only the earlier run was archived");
    let posts = p.posts();
    assert_eq!(posts.len(), 2, "{:#?}", p.hook.texts());
    assert!(footer(&posts[1]).contains(&run_id), "{:#}", posts[1]);
    let starts = p
        .systemctl_calls()
        .matches(&format!("start {}", watcher_unit(B)))
        .count();
    assert_eq!(starts, 2, "one watcher start per run");
}

// ----- locks and directories --------------------------------------------------------------

#[test]
fn planted_lock_links_are_not_followed() {
    const B: &str = "e2e-identity-lock-link";
    let p = Posting::new(vec![]);
    p.write_request(B, serde_json::json!({}));
    let target = p.root().join("lock-target");
    let watcher_lock = p.state_dir(B).join("watcher.lock");
    symlink(&target, &watcher_lock).unwrap();
    let named = |out: &Output, path: &Path| text(out).contains(&path.display().to_string());
    for name in ["atvm-run-watcher", "atvm-run-watcher.sh"] {
        let out = p.run(name, &["--build-name", B, "--once"]);
        assert_code(&out, 1, name);
        assert!(named(&out, &watcher_lock), "{}", text(&out));
    }
    let out = p.run("start-atvm-run-watcher", &["--build-name", B]);
    assert_code(&out, 1, "start-atvm-run-watcher");
    assert!(named(&out, &watcher_lock), "{}", text(&out));
    assert!(!target.exists(), "the watcher lock link was followed");

    let locks = p.state_root.join(".locks");
    fs::create_dir_all(&locks).unwrap();
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o700)).unwrap();
    let start_lock = locks.join(format!("{B}.start.lock"));
    // (The start helper above took the real lock: replace it with the link.)
    let _ = fs::remove_file(&start_lock);
    symlink(&target, &start_lock).unwrap();
    for name in [
        "start-atvm-run",
        "start-atvm-run.sh",
        "start-atvm-run-watcher",
        "start-atvm-runner.sh",
    ] {
        let out = p.run(name, &["--build-name", B, "--runner-command", "true"]);
        assert_code(&out, 1, name);
        assert!(named(&out, &start_lock), "{name}: {}", text(&out));
    }
    // The cancel helpers wait on the start lock (shared) before they cancel.
    for name in ["cancel-atvm-run-watcher", "cancel-atvm-runner.sh"] {
        let out = p.run(name, &["--build-name", B]);
        assert_code(&out, 1, name);
        assert!(named(&out, &start_lock), "{name}: {}", text(&out));
    }
    assert!(!target.exists(), "the start lock link was followed");
    assert!(!p.systemctl_calls().contains("start "), "nothing started");
    fs::remove_file(&start_lock).unwrap();

    // The lock around state.json, which the cancel helper takes to record CANCELLED.
    let state_lock = p.state_dir(B).join("state.lock");
    symlink(&target, &state_lock).unwrap();
    let out = p.run("cancel-atvm-run-watcher.sh", &["--build-name", B]);
    assert_code(&out, 1, "cancel-atvm-run-watcher.sh");
    assert!(named(&out, &state_lock), "{}", text(&out));
    assert!(!target.exists(), "the state lock link was followed");
}

/// Every path under `dir` with its mode, size and modification time.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let m = fs::symlink_metadata(&d).unwrap();
        out.push(format!(
            "{} {:o} {} {:?}",
            d.display(),
            m.mode(),
            m.len(),
            m.modified().ok()
        ));
        if m.is_dir() {
            stack.extend(fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_state_root_or_build_directory_others_can_write_is_refused() {
    const B: &str = "e2e-identity-perms";
    let p = Posting::new(vec![]);
    p.write_request(B, serde_json::json!({}));
    let build_dir = p.state_dir(B);
    let runner = ["--runner-command", "true"];
    let tools: &[(&str, &[&str])] = &[
        ("start-atvm-run", &runner),
        (
            "start-atvm-run.sh",
            &["--runner-command", "true", "--dry-run"],
        ),
        ("start-atvm-run-watcher.sh", &[]),
        ("start-atvm-run-watcher", &["--dry-run"]),
        ("start-atvm-runner", &runner),
        (
            "start-atvm-runner.sh",
            &["--runner-command", "true", "--dry-run"],
        ),
        ("atvm-run-watcher", &["--once"]),
        ("cancel-atvm-runner", &[]),
        ("cancel-atvm-run-watcher.sh", &[]),
    ];
    for (dir, mode) in [
        (&p.state_root, 0o777),
        (&p.state_root, 0o770),
        (&build_dir, 0o777),
        (&build_dir, 0o770),
    ] {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
        let named = format!("({})", dir.display());
        for (name, extra) in tools {
            let before = snapshot(&p.state_root);
            let mut args = vec!["--build-name", B];
            args.extend_from_slice(extra);
            let out = p.run(name, &args);
            assert_code(&out, 1, &format!("{name} with {} {mode:o}", dir.display()));
            assert!(text(&out).contains(&named), "{name}: {}", text(&out));
            if args.contains(&"--dry-run") {
                assert_eq!(snapshot(&p.state_root), before, "{name} wrote something");
            }
        }
        if dir == &p.state_root {
            for args in [&["--build-name", B][..], &[][..]] {
                let out = p.run("atvm-run-status", args);
                assert_code(&out, 1, "atvm-run-status");
                out.said(&named);
            }
        } else {
            // A build that cannot be trusted is listed with the error, not read.
            let out = p.run("atvm-run-status", &["--build-name", B]);
            out.said(&named);
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    }
    assert!(!p.systemctl_calls().contains("start "), "nothing started");
    assert!(!build_dir.join("runner").exists() && !build_dir.join("state.json").exists());
}

// ----- the fallback for runners started by hand ---------------------------------------------

#[test]
fn a_runner_started_by_hand_is_followed_when_only_the_watcher_is_started_through_the_tools() {
    // Through the .sh name with the runner launched first (how the old validation did it),
    // through the plain name with the watcher first.
    for (suffix, runner_first) in [(".sh", true), ("", false)] {
        let build = format!("e2e-identity-by-hand{}", suffix.replace('.', "-"));
        let b = build.as_str();
        let p = Posting::new(vec![]);
        let go = p.root().join("go");
        let script = format!(
            "while [ ! -e '{}' ]; do sleep 0.05; done; cat '{}'; :",
            go.display(),
            fixture("cypress/passing.log").display()
        );
        let start_watcher = || {
            let out = p.run(
                &format!("start-atvm-run-watcher{suffix}"),
                &["--build-name", b, "--template", "migration"],
            );
            assert_code(&out, 0, "start-atvm-run-watcher");
        };
        let _runner = if runner_first {
            let runner = detached_runner(&p, b, &script);
            start_watcher();
            runner
        } else {
            start_watcher();
            p.wait_state(b, "STARTING", LONG);
            detached_runner(&p, b, &script)
        };
        p.wait_state(b, "WATCHING", LONG);
        fs::write(&go, "").unwrap();
        let s = finished(&p, b);
        assert_eq!(s["state"], "COMPLETED", "{suffix}: {s:#}");
        assert_eq!(s["counts"]["tests"], 6);
        let journal = p.unit_output(&watcher_unit(b));
        assert!(journal.contains("following runner pid"), "{journal}");
        let post = p.only_post();
        assert!(post["text"].as_str().unwrap().starts_with("COMPLETED · "));
    }
}

#[test]
fn an_operator_s_status_loop_naming_the_build_is_not_taken_for_the_runner() {
    const B: &str = "e2e-identity-status-loop";
    let p = Posting::new(vec![]);
    // `while :; do atvm-run-status --build-name B; sleep 1; done`, since before the run: a
    // shell that names the build and runs one of ours now and then (as `watch` does).
    let seen = p.root().join("status-loop.out");
    let _loop = Group::spawn(
        wrapped(
            &p,
            &["sh", "-c", "while :; do \"$0\" \"$@\"; sleep 0.3; done"],
            "atvm-run-status.sh",
            &["--build-name", B],
        )
        .stdout(fs::File::create(&seen).unwrap())
        .stderr(fs::File::create(&seen).unwrap()),
    );
    // It is older than the runner: it has shown the status once already.
    p.wait_until("the loop's first status", LONG, || {
        fs::metadata(&seen).is_ok_and(|m| m.len() > 0)
    });
    let go = p.root().join("go");
    let runner = detached_runner(
        &p,
        B,
        &format!(
            "while [ ! -e '{}' ]; do sleep 0.05; done; cat '{}'; :",
            go.display(),
            fixture("cypress/passing.log").display()
        ),
    );
    let out = p.run("start-atvm-run-watcher", &["--build-name", B]);
    assert_code(&out, 0, "start-atvm-run-watcher");
    p.wait_state(B, "WATCHING", LONG);
    let journal = p.unit_output(&watcher_unit(B));
    assert!(
        journal.contains(&format!("following runner pid {} ", runner.0.id())),
        "{journal}"
    );
    fs::write(&go, "").unwrap();
    let s = finished(&p, B);
    assert_eq!(s["state"], "COMPLETED", "{s:#}");
    assert_eq!(p.posts().len(), 1);
}

#[test]
fn a_status_loop_started_beside_an_adopted_runner_never_takes_its_place() {
    // The operator's script starts the runner in the background, then a status loop beside
    // it (same script, same process group), as `… & sh -c 'while :; do atvm-run-status
    // --build-name "$1"; sleep 1; done' loop B &` would: the tool is inside the loop's
    // script, so its command line does not show that it wraps ours. The loop is newer and its session writes the log, but it writes nothing
    // itself: when it is stopped, the run goes on and its result is posted.
    const B: &str = "e2e-identity-loop-beside";
    let p = Posting::new(vec![]);
    let dir = p.root();
    let (go_loop, go_run, loop_pid, loop_out) = (
        dir.join("go-loop"),
        dir.join("go-run"),
        dir.join("loop.pid"),
        dir.join("loop.out"),
    );
    let status = p.package_root.join("atvm-run-status.sh");
    let script = format!(
        "sh -c 'while [ ! -e \"{go_run}\" ]; do sleep 0.05; done; cat \"{log}\"; exit 2' sh --build_name {B} > '{run_log}' &
         while [ ! -e '{go_loop}' ]; do sleep 0.05; done
         sh -c 'echo $$ > \"{loop_pid}\"; while :; do \"{status}\" \"$@\" >/dev/null 2>&1; echo tick >> \"{loop_out}\"; sleep 0.1; done' loop --build-name {B} &
         wait",
        go_run = go_run.display(),
        log = fixture("cypress/failing-2-of-20.log").display(),
        run_log = p.run_log(B).display(),
        go_loop = go_loop.display(),
        loop_pid = loop_pid.display(),
        loop_out = loop_out.display(),
        status = status.display(),
    );
    let _script = Group::spawn(
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .envs(
                p.cmd("atvm-run-status")
                    .get_envs()
                    .filter_map(|(k, v)| Some((k, v?))),
            ),
    );
    let out = p.run("start-atvm-run-watcher", &["--build-name", B]);
    assert_code(&out, 0, "start-atvm-run-watcher");
    p.wait_until("the runner adopted", LONG, || {
        p.unit_output(&watcher_unit(B))
            .contains("following runner pid")
    });
    fs::write(&go_loop, "").unwrap();
    // Let the loop run through several of the watcher's polls, then stop it.
    p.wait_until("the loop's statuses", LONG, || {
        fs::read_to_string(&loop_out).is_ok_and(|t| t.lines().count() >= 8)
    });
    let pid = fs::read_to_string(&loop_pid).unwrap();
    Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    fs::write(&go_run, "").unwrap();
    let s = finished(&p, B);
    let journal = p.unit_output(&watcher_unit(B));
    assert_eq!(s["state"], "FAILED", "{s:#}\n{journal}");
    assert!(!journal.contains("left over"), "{journal}");
    assert_eq!(p.posts().len(), 1);
}

#[test]
fn a_cancelled_hand_started_run_s_process_is_never_the_next_run_s_runner() {
    // A runner started by hand is followed; the operator cancels the watch, but the runner
    // goes on (nothing of ours can stop a process we did not start). A new run of the same
    // name must not adopt it and post its result as the new run's.
    const B: &str = "e2e-identity-after-cancel";
    let mut p = Posting::new(vec![]);
    p.set("ATVM_START_TIMEOUT_SECONDS", "1.5");
    let go = p.root().join("go");
    let runner = detached_runner(
        &p,
        B,
        &format!(
            "while [ ! -e '{}' ]; do sleep 0.05; done; cat '{}'; exit 2",
            go.display(),
            fixture("cypress/failing-2-of-20.log").display()
        ),
    );
    assert_code(
        &p.run("start-atvm-run-watcher", &["--build-name", B]),
        0,
        "first start",
    );
    wait_following(&p, B, runner.0.id());
    assert_code(
        &p.run("cancel-atvm-run-watcher", &["--build-name", B]),
        0,
        "cancel",
    );
    // The next run, before the operator starts its runner: while the old process lives.
    assert_code(
        &p.run("start-atvm-run-watcher", &["--build-name", B]),
        0,
        "second start",
    );
    let following = format!("following runner pid {} ", runner.0.id());
    p.wait_until(
        "the second run to end or to adopt the process",
        LONG,
        || {
            p.unit_output(&watcher_unit(B)).matches(&following).count() > 1
                || p.try_state(B).is_some_and(|s| s["final"] == true)
        },
    );
    fs::write(&go, "").unwrap();
    let s = finished(&p, B);
    let journal = p.unit_output(&watcher_unit(B));
    assert_eq!(s["state"], "UNKNOWN", "{s:#}\n{journal}");
    assert!(
        journal.contains(&format!("pid {} ran an earlier run of {B}", runner.0.id())),
        "{journal}"
    );
    assert!(p.posts().is_empty(), "{:?}", p.posts());
}

#[test]
fn a_copy_of_one_of_our_binaries_outside_the_package_root_is_never_the_runner() {
    // A copy of cancel-atvm-runner (a staging build, say) waits on another controller's
    // start lock with its output in this build's log: it is ours by its content, not a run.
    const B: &str = "e2e-identity-copied-binary";
    let mut p = Posting::new(vec![]);
    p.set("ATVM_START_TIMEOUT_SECONDS", "1.5");
    let other = Env::new();
    let _held = other.hold_start_lock(B);
    fs::create_dir_all(other.state_dir(B)).unwrap();
    let copy = p.root().join("staging-cancel-runner");
    fs::copy(testkit::bin("cancel-atvm-runner"), &copy).unwrap();
    let log = fs::File::create(p.run_log(B)).unwrap();
    let _copy = Group::spawn(
        Command::new(&copy)
            .args(["--build-name", B])
            .env_clear()
            .env("ATVM_STATE_ROOT", &other.state_root)
            .env("ATVM_SYSTEMCTL", &other.systemctl)
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    assert_code(
        &p.run("start-atvm-run-watcher", &["--build-name", B]),
        0,
        "start",
    );
    let s = finished(&p, B);
    let journal = p.unit_output(&watcher_unit(B));
    assert_eq!(s["state"], "UNKNOWN", "{s:#}\n{journal}");
    assert!(!journal.contains("following runner"), "{journal}");
    assert!(p.posts().is_empty());
}

#[test]
fn every_process_an_earlier_run_followed_is_barred_from_the_next_run_not_only_the_last() {
    // Run 1 follows A, then B2 (a newer process writing the log itself) takes over. After
    // a cancel, run 2 must not fall back on A, which still writes the log.
    const B: &str = "e2e-identity-earlier-first";
    let mut p = Posting::new(vec![]);
    p.set("ATVM_START_TIMEOUT_SECONDS", "1.5");
    let first = detached_runner(
        &p,
        B,
        &format!(
            "cat '{}'; sleep 30; :",
            fixture("cypress/cut-off.log").display()
        ),
    );
    assert_code(
        &p.run("start-atvm-run-watcher", &["--build-name", B]),
        0,
        "run 1",
    );
    wait_following(&p, B, first.0.id());
    let log = fs::OpenOptions::new()
        .append(true)
        .open(p.run_log(B))
        .unwrap();
    let second = Group::spawn(
        Command::new("sh")
            .args(["-c", "sleep 30; :", "sh", "--build_name", B])
            .stdin(Stdio::null())
            .stdout(log),
    );
    p.wait_until("run 1 switches to the newer process", LONG, || {
        p.unit_output(&watcher_unit(B)).contains(&format!(
            "runner pid {} started after pid {}",
            second.0.id(),
            first.0.id()
        ))
    });
    assert_code(
        &p.run("cancel-atvm-run-watcher", &["--build-name", B]),
        0,
        "cancel",
    );
    assert_code(
        &p.run("start-atvm-run-watcher", &["--build-name", B]),
        0,
        "run 2",
    );
    let s = finished(&p, B);
    let journal = p.unit_output(&watcher_unit(B));
    assert_eq!(s["state"], "UNKNOWN", "{s:#}\n{journal}");
    let request = testkit::read_json(&p.state_dir(B).join("request.json"));
    let barred: Vec<u64> = request["earlier_runners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pid"].as_u64().unwrap())
        .collect();
    assert!(
        barred.contains(&u64::from(first.0.id())) && barred.contains(&u64::from(second.0.id())),
        "{barred:?}"
    );
    assert!(p.posts().is_empty(), "{:?}", p.posts());
}
