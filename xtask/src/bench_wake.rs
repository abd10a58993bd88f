//! The benchmark's rows on waking (docs/watcher-service.md, "Waking"), each measured
//! with events on and with `ATVM_WATCH_EVENTS=off` (looking every `--poll-seconds` only)
//! in the same run:
//!
//! - post latency: from the runner's command exiting (it writes its own exit time) to the
//!   local webhook receiving the POST, for a real `run-atvm-runner` and a release watcher
//!   with the default settings; the exits are spread over the 5 s poll period;
//! - wake-ups per idle minute of one watcher (voluntary context switches, every thread);
//! - looks per second while the log grows by thousands of lines a second (bursts are
//!   coalesced).

use crate::Result;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use testkit::FakeWebhook;

const B: &str = "bench-wake";

/// A table row: what, result, target.
pub type Row = (String, String, &'static str);

/// The waking rows: latency, idle wake-ups and burst looks, events on and off.
pub fn rows(bins: &Path, dir: &Path, quick: bool) -> Result<Vec<Row>> {
    let (runs, idle) = match quick {
        true => (5, Duration::from_secs(10)),
        false => (20, Duration::from_secs(60)),
    };
    let log = dir.join("cypress-1MiB.log");
    let mut rows = Vec::new();
    for events in [true, false] {
        let mode = mode(events);
        let mut lat = post_latencies(bins, dir, events, runs)?;
        lat.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        rows.push((
            format!("post latency, {runs} runs ({mode})"),
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                ms(lat[0]),
                ms(lat[lat.len() / 2]),
                ms(lat[lat.len() - 1])
            ),
            if events {
                "min / median / max; median ≤ 100 ms, max ≤ 1 s"
            } else {
                "min / median / max"
            },
        ));
        let wakeups = idle_wakeups(bins, dir, &log, events, idle)?;
        rows.push((
            format!("wake-ups per idle minute, 1 watcher ({mode})"),
            format!("{wakeups:.1}"),
            "≈ 12 (the 5 s safety net)",
        ));
        let looks = burst_looks(bins, dir, events)?;
        rows.push((
            format!("looks per second, log growing 5,000 lines/s ({mode})"),
            format!("{looks:.1}"),
            if events {
                "≈ 10 (one look per 100 ms settle)"
            } else {
                ""
            },
        ));
    }
    Ok(rows)
}

pub fn mode(events: bool) -> &'static str {
    match events {
        true => "events",
        false => "poll only",
    }
}

/// A controller directory for one measurement: state root (0700), log dir, reports.
fn controller(dir: &Path, name: &str) -> Result<PathBuf> {
    let root = dir.join(name);
    let _ = fs::remove_dir_all(&root);
    for sub in ["state", "tmp", "reports", "work"] {
        fs::create_dir_all(root.join(sub)).map_err(|e| e.to_string())?;
    }
    fs::set_permissions(root.join("state"), fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    Ok(root)
}

fn env(cmd: &mut Command, root: &Path, events: bool) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ATVM_STATE_ROOT", root.join("state"))
        .env("ATVM_LOG_DIR", root.join("tmp"))
        .env("ATVM_REPORTER_DIR", root.join("reports"))
        .env("ATVM_AUTOMATION_ROOT", root.join("work"))
        .env("ATVM_INVENTORY", root.join("none.md"))
        .env("ATVM_ENV_FILE", root.join("none.env"))
        .env("ATVM_PACKAGE_ROOT", root.join("none"));
    if !events {
        cmd.env("ATVM_WATCH_EVENTS", "off");
    }
}

/// request.json and runner/spec.json of a run started through the runner.
fn request_run(root: &Path, command: &str) -> Result {
    let sd = root.join("state").join(B);
    fs::create_dir_all(sd.join("runner")).map_err(|e| e.to_string())?;
    for d in [&sd, &sd.join("runner")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    }
    let t = atvm_common::Timestamp::now();
    let request = serde_json::json!({
        "build_name": B, "run_id": "bench", "requested_at": t, "runner_command": command,
    });
    let spec = serde_json::json!({
        "build_name": B, "run_id": "bench", "command": command, "workdir": root.join("work"),
        "log_path": root.join("tmp").join(format!("{B}.log")), "created_at": t, "start_id": "bench",
    });
    let write = |path: PathBuf, v: serde_json::Value| -> Result {
        fs::write(&path, v.to_string()).map_err(|e| e.to_string())?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())
    };
    write(sd.join("request.json"), request)?;
    write(sd.join("runner/spec.json"), spec)
}

fn state_is(root: &Path, state: &str) -> bool {
    fs::read_to_string(root.join("state").join(B).join("state.json"))
        .is_ok_and(|t| t.contains(&format!("\"state\": \"{state}\"")))
}

fn wait(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > timeout {
            return Err(format!("bench: timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Kill and reap.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `runs` times: a real runner prints a passing log and, at the go-ahead, writes the time
/// and exits 0; a release watcher with the default settings posts; the webhook notes when
/// the POST arrives. The go-ahead comes at `i/runs` of the poll period after the watcher's
/// first look, so a polling watcher's phase is sampled evenly.
fn post_latencies(bins: &Path, dir: &Path, events: bool, runs: usize) -> Result<Vec<Duration>> {
    let fixture = testkit::fixture("cypress/passing.log");
    let mut out = Vec::new();
    for i in 0..runs {
        let root = controller(
            dir,
            &format!("latency-{}-{i}", mode(events).replace(' ', "-")),
        )?;
        let go = root.join("go");
        let exited = root.join("exited");
        let command = format!(
            "cat '{}'; while [ ! -e '{}' ]; do sleep 0.002; done; date +%s.%N > '{}'; exit 0",
            fixture.display(),
            go.display(),
            exited.display()
        );
        request_run(&root, &command)?;
        let hook = FakeWebhook::start(vec![]);
        let mut runner = Command::new(bins.join("run-atvm-runner"));
        env(&mut runner, &root, events);
        let mut runner = runner
            .args(["--build-name", B])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut watcher = Command::new(bins.join("atvm-run-watcher"));
        env(&mut watcher, &root, events);
        let mut watcher = watcher
            .args(["--build-name", B])
            .env("MATTERMOST_ATVM_WEBHOOK", hook.url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let measured = (|| -> Result<Duration> {
            wait("the watcher's first look", Duration::from_secs(30), || {
                state_is(&root, "WATCHING")
            })?;
            std::thread::sleep(Duration::from_secs(5).mul_f64(i as f64 / runs as f64));
            fs::write(&go, "").map_err(|e| e.to_string())?;
            wait("the post", Duration::from_secs(30), || hook.count() >= 1)?;
            let received = hook.requests()[0].received;
            let text = fs::read_to_string(&exited).map_err(|e| e.to_string())?;
            let secs: f64 = text
                .trim()
                .parse()
                .map_err(|_| format!("bad time {text:?}"))?;
            let exit = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs);
            received
                .duration_since(exit)
                .map_err(|_| "the post arrived before the exit".to_string())
        })();
        if measured.is_ok() {
            let _ = wait("the watcher to end", Duration::from_secs(30), || {
                watcher.try_wait().ok().flatten().is_some()
            });
        }
        stop(&mut runner);
        stop(&mut watcher);
        out.push(measured?);
    }
    Ok(out)
}

/// Voluntary context switches of every thread of `pid`: each one a wait that ended.
fn wakeups(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// A release watcher (dry run) of a run whose runner is alive and silent.
fn idle_watcher(bins: &Path, root: &Path, log: &Path, events: bool) -> Result<(Child, Child)> {
    let runner = Command::new("sleep")
        .arg("3600")
        .spawn()
        .map_err(|e| e.to_string())?;
    crate::bench::fake_run_at(&root.join("state"), B, runner.id(), log, false)?;
    let mut cmd = Command::new(bins.join("atvm-run-watcher"));
    env(&mut cmd, root, events);
    let watcher = cmd
        .args(["--build-name", B, "--dry-run", "--hang-minutes", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    Ok((runner, watcher))
}

/// Wake-ups per minute of one watcher of an idle run.
fn idle_wakeups(bins: &Path, dir: &Path, log: &Path, events: bool, idle: Duration) -> Result<f64> {
    let root = controller(
        dir,
        &format!("idle-wake-{}", mode(events).replace(' ', "-")),
    )?;
    let (mut runner, mut watcher) = idle_watcher(bins, &root, log, events)?;
    std::thread::sleep(Duration::from_secs(3));
    let before = wakeups(watcher.id());
    let t = Instant::now();
    std::thread::sleep(idle);
    let after = wakeups(watcher.id());
    let minutes = t.elapsed().as_secs_f64() / 60.0;
    stop(&mut watcher);
    stop(&mut runner);
    Ok(after.saturating_sub(before) as f64 / minutes)
}

/// Looks per second of one watcher while its run's log grows by 5,000 lines a second for
/// five seconds (a watcher's look is a wake-up: it waits again after each).
fn burst_looks(bins: &Path, dir: &Path, events: bool) -> Result<f64> {
    use std::io::Write;
    let root = controller(dir, &format!("burst-{}", mode(events).replace(' ', "-")))?;
    let log = root.join("tmp").join(format!("{B}.log"));
    fs::write(&log, "  (Run Starting)\n  Running:  a.cy.js  (1 of 1)\n")
        .map_err(|e| e.to_string())?;
    let (mut runner, mut watcher) = idle_watcher(bins, &root, &log, events)?;
    std::thread::sleep(Duration::from_secs(2));
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .map_err(|e| e.to_string())?;
    let line = "[cmc-plugin] DEBUG vm=atvm-rh96-01 step=migrate-settings progress=0.42\n";
    let before = wakeups(watcher.id());
    let t = Instant::now();
    // 50 writes of 100 lines a second, for 5 s.
    for k in 0..250u32 {
        file.write_all(line.repeat(100).as_bytes())
            .map_err(|e| e.to_string())?;
        let next = Duration::from_millis(20) * (k + 1);
        std::thread::sleep(next.saturating_sub(t.elapsed()));
    }
    let after = wakeups(watcher.id());
    let secs = t.elapsed().as_secs_f64();
    stop(&mut watcher);
    stop(&mut runner);
    Ok(after.saturating_sub(before) as f64 / secs)
}
