//! `cargo xtask bench [--quick]`: performance of the watcher, measured, never asserted in a
//! test. Generates a Cypress-style log (1 GiB; 64 MiB with --quick) and a reporter directory
//! of 10,000 mochawesome files (1,000), then prints a table:
//!
//! - full parse throughput next to `grep -c` on the same file (target: within 2x);
//! - one watcher poll when nothing changed, for a 1 MiB and the big log (target: O(1));
//! - one poll after 1 MiB was appended;
//! - peak RSS of a release watcher following a run of the big log (target: < 8 MiB);
//! - total CPU of 100 watchers idling for 60 s (10 s with --quick) (target: < 1% of a core),
//!   waiting on events and looking every 5 s only;
//! - post latency, idle wake-ups and looks during a burst, events on and off
//!   ([`crate::bench_wake`]).
//!
//! The in-process numbers come from a release-mode probe (`atvm-run-watcher/examples/
//! bench-probe.rs`); RSS and idle CPU are read from /proc for the real binary (CPU in
//! nanoseconds from `/proc/<pid>/schedstat`: clock ticks are too coarse for idle watchers).

use crate::{Args, Result};
use crate::{bench_wake, layout};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Sizes {
    log_bytes: u64,
    reports: usize,
    idle_watchers: usize,
    idle: Duration,
}

pub fn run(args: &Args) -> Result {
    let quick = args.flag("--quick");
    let sizes = if quick {
        Sizes {
            log_bytes: 64 << 20,
            reports: 1000,
            idle_watchers: 100,
            idle: Duration::from_secs(10),
        }
    } else {
        Sizes {
            log_bytes: 1 << 30,
            reports: 10_000,
            idle_watchers: 100,
            idle: Duration::from_secs(60),
        }
    };
    let dir = layout::target_dir().join("bench");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let bins = layout::build_release()?;
    let probe = build_probe()?;

    let big = dir.join(format!("cypress-{}MiB.log", sizes.log_bytes >> 20));
    let small = dir.join("cypress-1MiB.log");
    generate_log(&big, sizes.log_bytes)?;
    generate_log(&small, 1 << 20)?;
    let reports = dir.join(format!("reports-{}", sizes.reports));
    generate_reports(&reports, sizes.reports)?;
    let empty_reports = dir.join("reports-0");
    fs::create_dir_all(&empty_reports).map_err(|e| e.to_string())?;

    let mut rows: Vec<(String, String, &str)> = Vec::new();
    let gib = sizes.log_bytes as f64 / f64::from(1u32 << 30);

    // Warm the page cache once so parse and grep both read from memory.
    let _ = Command::new("cat").arg(&big).stdout(Stdio::null()).status();
    let parse = probe_kv(&probe, &["parse", &big.display().to_string()])?;
    let parse_s: f64 = num(&parse, "parse_seconds")?;
    let t = Instant::now();
    let grep = Command::new("grep")
        .arg("-c")
        .arg("Running:")
        .arg(&big)
        .output()
        .map_err(|e| e.to_string())?;
    let grep_s = t.elapsed().as_secs_f64();
    if !grep.status.success() {
        return Err("grep -c failed".into());
    }
    let mib = sizes.log_bytes as f64 / f64::from(1u32 << 20);
    rows.push((
        format!("full parse of a {gib:.2} GiB log"),
        format!("{parse_s:.2} s ({:.0} MiB/s)", mib / parse_s),
        "",
    ));
    rows.push((
        "grep -c on the same file".into(),
        format!("{grep_s:.2} s ({:.0} MiB/s)", mib / grep_s),
        "",
    ));
    rows.push((
        "parse time / grep time".into(),
        format!("{:.2}x", parse_s / grep_s),
        "≤ 2x",
    ));

    let polls_small = probe_kv(
        &probe,
        &[
            "polls",
            &small.display().to_string(),
            &empty_reports.display().to_string(),
            "1000",
        ],
    )?;
    let polls_big = probe_kv(
        &probe,
        &[
            "polls",
            &big.display().to_string(),
            &empty_reports.display().to_string(),
            "1000",
        ],
    )?;
    let polls_reports = probe_kv(
        &probe,
        &[
            "polls",
            &small.display().to_string(),
            &reports.display().to_string(),
            "1000",
        ],
    )?;
    let us = |v: f64| format!("{:.1} µs", v * 1e6);
    rows.push((
        "unchanged poll, 1 MiB log".into(),
        us(num(&polls_small, "unchanged_poll_seconds")?),
        "",
    ));
    rows.push((
        format!("unchanged poll, {gib:.2} GiB log"),
        us(num(&polls_big, "unchanged_poll_seconds")?),
        "O(1): ≈ the 1 MiB case",
    ));
    rows.push((
        format!("unchanged poll, {} reports", sizes.reports),
        us(num(&polls_reports, "unchanged_poll_seconds")?),
        "",
    ));
    rows.push((
        "poll after 1 MiB appended".into(),
        format!("{:.2} ms", num(&polls_big, "appended_poll_seconds")? * 1e3),
        "",
    ));
    rows.push((
        format!("first scan of {} reports (+1 MiB log)", sizes.reports),
        format!("{:.0} ms", num(&polls_reports, "first_poll_seconds")? * 1e3),
        "",
    ));

    let rss = peak_rss(&bins.join("atvm-run-watcher"), &big, &reports, &dir)?;
    rows.push((
        format!("peak RSS, watcher following the {gib:.2} GiB run"),
        format!("{:.1} MiB", rss as f64 / 1024.0),
        "< 8 MiB",
    ));

    for events in [true, false] {
        let cpu = idle_cpu(
            &bins.join("atvm-run-watcher"),
            &small,
            &dir,
            (sizes.idle_watchers, sizes.idle),
            events,
        )?;
        rows.push((
            format!(
                "{} idle watchers, {} s ({})",
                sizes.idle_watchers,
                sizes.idle.as_secs(),
                bench_wake::mode(events)
            ),
            format!("{cpu:.3}% of one core"),
            "< 1%",
        ));
    }
    rows.extend(bench_wake::rows(&bins, &dir, quick)?);

    println!("\n{:<48} {:<24} target", "measurement", "result");
    println!("{}", "-".repeat(92));
    for (what, result, target) in rows {
        println!("{what:<48} {result:<24} {target}");
    }
    Ok(())
}

fn build_probe() -> Result<PathBuf> {
    let status = layout::cargo()
        .args([
            "build",
            "--release",
            "-p",
            "atvm-run-watcher",
            "--example",
            "bench-probe",
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building the bench probe failed".into());
    }
    Ok(layout::target_dir().join("release/examples/bench-probe"))
}

fn probe_kv(probe: &Path, args: &[&str]) -> Result<Vec<(String, String)>> {
    let out = Command::new(probe)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run the probe: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "probe {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

fn num(kv: &[(String, String)], key: &str) -> Result<f64> {
    kv.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
        .ok_or(format!("probe did not report {key}"))
}

/// A realistic big run: one `(Run Starting)` block, specs with long verbose output (plugin
/// logging, as the runs that produce gigabyte logs have), then the summary.
fn generate_log(path: &Path, target: u64) -> Result {
    if fs::metadata(path).is_ok_and(|m| m.len() >= target) {
        return Ok(());
    }
    let fixture =
        fs::read_to_string(testkit::fixture("cypress/passing.log")).map_err(|e| e.to_string())?;
    let start = fixture.find("  (Run Starting)").unwrap_or(0);
    let first_spec = fixture.find("────────").unwrap_or(fixture.len());
    let header = &fixture[..first_spec.max(start)];
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(|e| e.to_string())?);
    let w =
        |out: &mut BufWriter<File>, s: &str| out.write_all(s.as_bytes()).map_err(|e| e.to_string());
    w(&mut out, header)?;
    let verbose = "[cmc-plugin] 2026-11-24T10:15:42.123Z DEBUG vm=atvm-rh96-01 step=migrate-settings attempt=1 payload={\"id\":48213,\"state\":\"running\",\"progress\":0.42}\n";
    let per_spec: u64 = 8 << 20;
    let specs = (target / per_spec).max(1);
    for i in 1..=specs {
        let spec = format!("cypress/e2e/migration/area{i:04}.cy.js");
        w(
            &mut out,
            &format!(
                "{}\n{}\n  Running:  {:<68}({i} of {specs})\n\n\n  area {i}\n",
                "─".repeat(100),
                " ".repeat(100),
                spec
            ),
        )?;
        let mut n = 0u64;
        while n < per_spec {
            w(&mut out, verbose)?;
            w(
                &mut out,
                "    ✓ keeps the migrated settings of the VM after the upgrade (812ms)\n",
            )?;
            n += (verbose.len() + 70) as u64;
        }
    }
    // The summary table, one row per spec.
    w(
        &mut out,
        "====================================================================================================\n\n  (Run Finished)\n\n\n       Spec                                              Tests  Passing  Failing  Pending  Skipped  \n",
    )?;
    w(&mut out, &format!("  ┌{}┐\n", "─".repeat(96)))?;
    for i in 1..=specs {
        w(
            &mut out,
            &format!(
                "  │ ✔  {:<35}      01:00        1        1        -        -        - │\n",
                format!("migration/area{i:04}.cy.js")
            ),
        )?;
    }
    w(
        &mut out,
        &format!(
            "  └{}┘\n    ✔  All specs passed!                        {:>5}     {specs:>4}     {specs:>4}        -        -        -  \n",
            "─".repeat(96),
            "99:00"
        ),
    )?;
    out.flush().map_err(|e| e.to_string())
}

fn generate_reports(dir: &Path, n: usize) -> Result {
    if fs::read_dir(dir).is_ok_and(|d| d.count() >= n) {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let template = fs::read_to_string(testkit::fixture("mochawesome/login.json"))
        .map_err(|e| e.to_string())?;
    for i in 0..n {
        let text = template.replace("login.cy.js", &format!("area{i:05}.cy.js"));
        fs::write(dir.join(format!("mochawesome_{i:05}.json")), text).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A controller environment for one release watcher.
fn watcher_env(cmd: &mut Command, root: &Path, log_dir: &Path, reporter: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ATVM_STATE_ROOT", root.join("state"))
        .env("ATVM_LOG_DIR", log_dir)
        .env("ATVM_REPORTER_DIR", reporter)
        .env("ATVM_INVENTORY", root.join("none.md"))
        .env("ATVM_ENV_FILE", root.join("none.env"));
}

/// Write request.json and runner/status.json for `build`: a runner (pid) writing `log`.
fn fake_run(root: &Path, build: &str, pid: u32, log: &Path, exited: bool) -> Result {
    fake_run_at(&root.join("state"), build, pid, log, exited)
}

/// [`fake_run`] in the state root `state`.
pub fn fake_run_at(state: &Path, build: &str, pid: u32, log: &Path, exited: bool) -> Result {
    let sd = state.join(build);
    fs::create_dir_all(sd.join("runner")).map_err(|e| e.to_string())?;
    let start_ticks = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(19))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .ok_or("cannot read the runner's start time")?;
    let meta = fs::metadata(log).map_err(|e| e.to_string())?;
    let (dev, ino) = (
        std::os::unix::fs::MetadataExt::dev(&meta),
        std::os::unix::fs::MetadataExt::ino(&meta),
    );
    let t = "2026-01-01T00:00:00.000Z";
    fs::write(
        sd.join("request.json"),
        format!("{{\"build_name\":\"{build}\",\"run_id\":\"bench\",\"requested_at\":\"{t}\"}}"),
    )
    .map_err(|e| e.to_string())?;
    let exit = if exited {
        format!(",\"exited_at\":\"{t}\",\"exit_code\":0")
    } else {
        String::new()
    };
    fs::write(
        sd.join("runner/status.json"),
        format!(
            "{{\"build_name\":\"{build}\",\"run_id\":\"bench\",\"pid\":{pid},\"pid_start_ticks\":{start_ticks},\"child_pid\":{pid},\"started_at\":\"{t}\",\"log_path\":\"{}\",\"log_inode\":{ino},\"log_dev\":{dev}{exit}}}",
            log.display()
        ),
    )
    .map_err(|e| e.to_string())
}

/// Where `pid`'s open descriptor of `file` stands: `pos:` in /proc/<pid>/fdinfo/<fd>.
fn read_position(pid: u32, file: &Path) -> Option<u64> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    fds.filter_map(|e| e.ok())
        .filter(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == file))
        .find_map(|fd| {
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("pos:"))
                .and_then(|v| v.trim().parse().ok())
        })
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Peak RSS of a release watcher that follows the big log (and the reporter directory) from
/// the first byte to the final state.
fn peak_rss(watcher: &Path, log: &Path, reports: &Path, dir: &Path) -> Result<u64> {
    let root = dir.join("rss");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    // A "runner" that is alive while the watcher reads, then records a clean exit.
    let mut runner = Command::new("sleep")
        .arg("3600")
        .spawn()
        .map_err(|e| e.to_string())?;
    fake_run(&root, "bench-rss", runner.id(), log, false)?;
    let mut cmd = Command::new(watcher);
    watcher_env(
        &mut cmd,
        &root,
        log.parent().unwrap_or(Path::new("/tmp")),
        reports,
    );
    cmd.args([
        "--build-name",
        "bench-rss",
        "--dry-run",
        "--poll-seconds",
        "0.2",
    ])
    .stdout(Stdio::null());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    // Follow the run until the whole log is read, then let the runner "exit". A dry run
    // writes no checkpoint, so how far it read is the position of its descriptor of the log.
    let size = fs::metadata(log).map_err(|e| e.to_string())?.len();
    loop {
        peak = peak.max(vm_hwm_kib(child.id()).unwrap_or(0));
        if read_position(child.id(), log) == Some(size) {
            break;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            return Err("the RSS watcher did not read the whole log".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = runner.kill();
    let _ = runner.wait();
    fake_run_exit(&root, "bench-rss")?;
    while child.try_wait().ok().flatten().is_none() {
        peak = peak.max(vm_hwm_kib(child.id()).unwrap_or(0));
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("the RSS watcher did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(peak)
}

fn fake_run_exit(root: &Path, build: &str) -> Result {
    let p = root.join("state").join(build).join("runner/status.json");
    let text = fs::read_to_string(&p).map_err(|e| e.to_string())?;
    let text = text.trim_end().trim_end_matches('}').to_string()
        + ",\"exited_at\":\"2026-01-01T00:00:01.000Z\",\"exit_code\":0}";
    fs::write(&p, text).map_err(|e| e.to_string())
}

/// Nanoseconds `pid` has spent on a CPU: the first field of `/proc/<pid>/schedstat`. The
/// clock ticks of `/proc/<pid>/stat` (10 ms each) round an idle watcher's few microseconds per
/// poll down to zero, so a sum of them says nothing; the scheduler's own count does.
fn cpu_nanos(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/schedstat");
    let text = fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_schedstat(&text).ok_or_else(|| format!("unexpected content in {path}: {text:?}"))
}

fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// CPU of `n` watchers (default settings: the 5 s safety net) of a run whose runner is
/// alive and silent, waiting on events or (`events` false) looking every 5 s only.
fn idle_cpu(
    watcher: &Path,
    log: &Path,
    dir: &Path,
    (n, idle): (usize, Duration),
    events: bool,
) -> Result<f64> {
    let root = dir.join("idle");
    let _ = fs::remove_dir_all(&root);
    let reporter = root.join("reports");
    fs::create_dir_all(&reporter).map_err(|e| e.to_string())?;
    let mut runner = Command::new("sleep")
        .arg("3600")
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut watchers: Vec<Child> = Vec::new();
    for i in 0..n {
        let build = format!("bench-idle-{i:03}");
        fake_run(&root, &build, runner.id(), log, false)?;
        let mut cmd = Command::new(watcher);
        watcher_env(
            &mut cmd,
            &root,
            log.parent().unwrap_or(Path::new("/tmp")),
            &reporter,
        );
        cmd.args([
            "--build-name",
            &build,
            "--dry-run",
            "--hang-minutes",
            "1000",
        ])
        .stdout(Stdio::null());
        if !events {
            cmd.env("ATVM_WATCH_EVENTS", "off");
        }
        watchers.push(cmd.spawn().map_err(|e| e.to_string())?);
    }
    // Let every watcher finish its first poll (reading the log) before measuring.
    std::thread::sleep(Duration::from_secs(3));
    let before = total_cpu_nanos(&watchers);
    let t = Instant::now();
    std::thread::sleep(idle);
    let after = total_cpu_nanos(&watchers);
    let secs = t.elapsed().as_secs_f64();
    for w in &mut watchers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let _ = runner.kill();
    let _ = runner.wait();
    // Only now, so that an unreadable count still stops every watcher first.
    let (before, after) = (before?, after?);
    Ok(after.saturating_sub(before) as f64 / 1e9 / secs * 100.0)
}

fn total_cpu_nanos(watchers: &[Child]) -> Result<u64> {
    watchers.iter().map(|c| cpu_nanos(c.id())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_nanoseconds_on_cpu() {
        assert_eq!(parse_schedstat("123456789 4567 89\n"), Some(123_456_789));
        assert_eq!(parse_schedstat(""), None);
        // This process has run, so its count is above zero (and below an hour).
        let own = cpu_nanos(std::process::id()).unwrap();
        assert!(own > 0 && own < 3_600_000_000_000, "{own}");
    }
}
