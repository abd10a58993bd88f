//! Release-mode probe for `cargo xtask bench` (not shipped). It measures inside one process
//! what a process-level timer cannot: a full parse through the watcher's parser and the cost
//! of single watcher polls.
//!
//!   bench-probe parse <log>
//!   bench-probe polls <log> <reporter-dir> <repetitions>
//!
//! Prints `key=value` lines for xtask to read.

#![allow(clippy::unwrap_used, clippy::panic)] // a benchmark probe: failing loudly is the point

use atvm_common::cypress::LogParser;
use atvm_common::state::{Request, RunnerStatus};
use atvm_common::{BuildName, Paths, Timestamp, fsutil, procfs};
use atvm_run_watcher::decide::Timing;
use atvm_run_watcher::shutdown::Shutdown;
use atvm_run_watcher::watch::{Sink, Watcher};
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("parse") => parse(Path::new(&args[1])),
        Some("polls") => polls(
            Path::new(&args[1]),
            Path::new(&args[2]),
            args[3].parse().unwrap(),
        ),
        _ => panic!("usage: bench-probe parse <log> | polls <log> <reporter-dir> <n>"),
    }
}

fn parse(log: &Path) {
    let mut file = fs::File::open(log).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut parser = LogParser::new();
    let start = Instant::now();
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        parser.feed(&buf[..n]);
        bytes += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let s = parser.summary();
    println!("parse_seconds={secs}");
    println!("bytes={bytes}");
    println!("lines={}", s.lines);
    println!("runs={}", s.runs.len());
    println!(
        "spec_rows={}",
        s.runs.iter().map(|r| r.spec_rows.len()).sum::<usize>()
    );
}

/// A state directory whose runner is this very process (alive) writing `log`.
fn polls(log: &Path, reporter: &Path, n: u32) {
    let tmp = std::env::temp_dir().join(format!("atvm-bench-probe-{}", std::process::id()));
    fs::create_dir_all(&tmp).unwrap();
    let build = BuildName::parse("bench-redhat9.6").unwrap();
    let vars: Vec<(String, PathBuf)> = vec![
        ("ATVM_STATE_ROOT".into(), tmp.join("state")),
        ("ATVM_REPORTER_DIR".into(), reporter.to_path_buf()),
        ("ATVM_LOG_DIR".into(), log.parent().unwrap().to_path_buf()),
        ("ATVM_INVENTORY".into(), tmp.join("none.md")),
    ];
    let paths = Paths::resolve(|k| {
        vars.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone().into_os_string())
    });
    let sd = paths.state_dir(&build);
    sd.create_runner_dir().unwrap();
    // Started a minute ago, so every report counts as this run's.
    let started = Timestamp::from_millis(Timestamp::now().millis() - 3_600_000);
    let request = Request {
        build_name: build.to_string(),
        run_id: "bench".into(),
        requested_at: started,
        ..Request::default()
    };
    fsutil::write_json(&sd.request(), &request, 0o600).unwrap();
    let me = procfs::self_id().unwrap();
    let meta = fs::metadata(log).unwrap();
    let status = RunnerStatus {
        build_name: build.to_string(),
        run_id: "bench".into(),
        pid: me.pid,
        pid_start_ticks: me.start_ticks,
        child_pid: me.pid,
        started_at: started,
        log_path: log.to_path_buf(),
        log_inode: meta.ino(),
        log_dev: meta.dev(),
        ..RunnerStatus::default()
    };
    fsutil::write_json(&sd.runner_status(), &status, 0o644).unwrap();
    let timing = Timing {
        poll: Duration::from_secs(5),
        grace: Duration::from_secs(120),
        hang: Duration::from_secs(24 * 3600),
        start_timeout: Duration::from_secs(900),
        post_retry: Duration::from_secs(60),
    };
    let shutdown = Shutdown::install().unwrap();
    let mut w = Watcher::resume(
        paths,
        build,
        request,
        timing,
        Sink::DryRun {
            channel: None,
            format: Default::default(),
            posting: Default::default(),
        },
        &shutdown,
    )
    .unwrap();

    let t = Instant::now();
    w.poll().unwrap();
    println!("first_poll_seconds={}", t.elapsed().as_secs_f64());
    assert_eq!(w.state().state.as_str(), "WATCHING");

    let t = Instant::now();
    for _ in 0..n {
        w.poll().unwrap();
    }
    println!(
        "unchanged_poll_seconds={}",
        t.elapsed().as_secs_f64() / f64::from(n)
    );

    // Append 1 MiB of ordinary test output, time one poll, then restore the file.
    let original = meta.len();
    let line = "      ✓ keeps the migrated settings of the VM after the upgrade (812ms)\n";
    let chunk: String = line.repeat((1024 * 1024) / line.len() + 1);
    let mut f = OpenOptions::new().append(true).open(log).unwrap();
    f.write_all(&chunk.as_bytes()[..1024 * 1024]).unwrap();
    f.sync_all().unwrap();
    let t = Instant::now();
    w.poll().unwrap();
    println!("appended_poll_seconds={}", t.elapsed().as_secs_f64());
    f.set_len(original).unwrap();
    drop(f);
    fs::remove_dir_all(&tmp).unwrap();
}
