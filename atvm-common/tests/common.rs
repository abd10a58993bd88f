//! atvm-common against real-shaped inputs: the Cypress log fixtures, mochawesome JSON and
//! JUnit XML written by the real reporters, and log files that are appended to, truncated and rotated.

#![allow(clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use atvm_common::cypress::{FlakyInLog, LogParser, LogSummary, Outcome};
use atvm_common::follow::{FileId, LogFollower};
use atvm_common::reporter::{ReporterDir, SpecSet, parse_report};
use atvm_common::state::Counts;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testkit/fixtures")
        .join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    fs::read(fixture(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

fn parse_chunked(bytes: &[u8], chunk: usize) -> LogSummary {
    let mut p = LogParser::new();
    for c in bytes.chunks(chunk) {
        p.feed(c);
    }
    p.summary().clone()
}

fn parse(rel: &str) -> LogSummary {
    parse_chunked(&read(rel), usize::MAX)
}

fn counts(tests: u64, passed: u64, failed: u64, pending: u64, skipped: u64) -> Counts {
    Counts {
        tests,
        passed,
        failed,
        pending,
        skipped,
    }
}

#[test]
fn passing_run() {
    let s = parse("cypress/passing.log");
    assert_eq!(s.runs.len(), 1);
    let run = &s.runs[0];
    assert_eq!(run.cypress_version.as_deref(), Some("12.17.4"));
    assert_eq!(run.browser.as_deref(), Some("Electron 106 (headless)"));
    assert_eq!(run.specs_found, Some(3));
    assert_eq!(run.group.as_deref(), Some("linux"));
    assert_eq!(
        run.run_url.as_deref(),
        Some("https://cloud.cypress.io/projects/x7k2pq/runs/1842")
    );
    assert_eq!(
        run.recorded_run.as_deref(),
        Some("https://cloud.cypress.io/projects/x7k2pq/runs/1842")
    );
    let footer = run.footer.as_ref().expect("finished");
    assert_eq!(footer.outcome, Outcome::AllPassed);
    assert_eq!(footer.counts, counts(6, 5, 0, 1, 0));
    assert_eq!(footer.duration.as_deref(), Some("00:18"));
    assert_eq!(run.spec_rows.len(), 3);
    assert!(!run.has_failures());
    assert_eq!(
        run.current.as_ref().map(|c| (c.index, c.total)),
        Some((3, 3))
    );
    assert!(s.no_specs.is_none());
}

#[test]
fn failing_run_counts_specs_not_tests() {
    let s = parse("cypress/failing-2-of-20.log");
    let run = &s.runs[0];
    let footer = run.footer.as_ref().expect("finished");
    assert_eq!(
        footer.outcome,
        Outcome::SpecsFailed {
            failed: 2,
            total: 20
        }
    );
    assert_eq!(footer.counts, counts(40, 38, 2, 0, 0));
    assert_eq!(run.spec_rows.len(), 20);
    let failing: Vec<&str> = run
        .spec_rows
        .iter()
        .filter(|r| r.mark == '✖')
        .map(|r| r.spec.as_str())
        .collect();
    assert_eq!(
        failing,
        ["cypress/e2e/area07.cy.js", "cypress/e2e/area13.cy.js"]
    );
    assert!(run.has_failures());
}

#[test]
fn no_spec_files_found() {
    let s = parse("cypress/no-specs.log");
    assert!(s.runs.is_empty());
    let ns = s.no_specs.expect("recognised");
    assert_eq!(
        ns.pattern.as_deref(),
        Some("/root/cdc-e2e-cyp-12.17.4/cypress/e2e/migration/redhat9.6/**/*.cy.js")
    );
}

#[test]
fn categorized_run_has_one_block_per_group() {
    let s = parse("cypress/categorized-3-groups.log");
    let keys: Vec<String> = s
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| LogSummary::subrun_key(i + 1, r.group.as_deref()))
        .collect();
    assert_eq!(keys, ["01-linux", "02-windows", "03-ubuntu-24.04"]);
    let failing: Vec<bool> = s.runs.iter().map(|r| r.has_failures()).collect();
    assert_eq!(failing, [false, true, false]);
    assert!(s.runs.iter().all(|r| r.is_finished()));
    assert_eq!(
        s.runs[1].footer.as_ref().map(|f| f.counts),
        Some(counts(4, 3, 1, 0, 0))
    );
}

#[test]
fn wrapped_cells_are_joined() {
    let s = parse("cypress/wrapped.log");
    let run = &s.runs[0];
    assert_eq!(
        run.run_url.as_deref(),
        Some(
            "https://cypress-dashboard.qa.example.internal/projects/cdc-e2e-cyp-12-17-4/runs/e2e-redhat9.6-ubuntu24.04-w2k25-fc-20261124"
        )
    );
    let long = "cypress/e2e/migration/redhat9.6/upgrade_from_previous_release_keeps_settings.cy.js";
    assert_eq!(run.spec_rows[0].spec, long);
    assert_eq!(run.spec_rows[1].spec, "cypress/e2e/login.cy.js");
    assert_eq!(run.specs_found, Some(2));
}

#[test]
fn wrapped_running_line_is_joined_while_the_spec_runs() {
    let text = String::from_utf8(read("cypress/wrapped.log")).expect("utf-8");
    let upto = text.find("  (Results)").expect("results");
    let s = parse_chunked(&text.as_bytes()[..upto], usize::MAX);
    let cur = s.runs[0].current.as_ref().expect("running");
    assert_eq!(
        cur.spec,
        "cypress/e2e/migration/redhat9.6/upgrade_from_previous_release_keeps_settings.cy.js"
    );
    assert_eq!((cur.index, cur.total), (1, 2));
}

#[test]
fn colour_codes_do_not_change_the_result() {
    let s = parse("cypress/coloured.log");
    let run = &s.runs[0];
    assert_eq!(run.group.as_deref(), Some("linux"));
    let footer = run.footer.as_ref().expect("finished");
    assert_eq!(
        footer.outcome,
        Outcome::SpecsFailed {
            failed: 1,
            total: 2
        }
    );
    assert_eq!(footer.counts, counts(4, 3, 1, 0, 0));
    assert_eq!(run.spec_rows[1].spec, "cypress/e2e/billing.cy.js");
    assert_eq!(run.spec_rows[1].mark, '✖');
}

#[test]
fn cloud_canceled_and_cut_off_runs() {
    let s = parse("cypress/cloud-canceled.log");
    assert_eq!(
        s.runs[0].footer.as_ref().map(|f| f.outcome.clone()),
        Some(Outcome::Canceled)
    );
    let s = parse("cypress/cut-off.log");
    assert!(!s.runs[0].is_finished());
    assert_eq!(
        s.runs[0].current.as_ref().map(|c| c.spec.as_str()),
        Some("cypress/e2e/dashboard.cy.js")
    );
}

#[test]
fn any_chunking_gives_the_same_result() {
    for name in [
        "passing.log",
        "failing-2-of-20.log",
        "categorized-3-groups.log",
        "wrapped.log",
        "coloured.log",
        "no-specs.log",
        "retries.log",
    ] {
        let bytes = read(&format!("cypress/{name}"));
        let whole = parse_chunked(&bytes, usize::MAX);
        for chunk in [1, 7, 4096] {
            assert_eq!(
                parse_chunked(&bytes, chunk),
                whole,
                "{name} in {chunk}-byte chunks"
            );
        }
    }
}

#[test]
fn tests_that_pass_on_a_retry_are_flaky_and_those_that_never_pass_are_not() {
    let s = parse("cypress/retries.log");
    let b = &s.runs[0];
    assert_eq!(b.flaky_total, 1);
    assert_eq!(
        b.flaky,
        [FlakyInLog {
            spec: "cypress/e2e/checkout.cy.js".into(),
            title: "sends the receipt".into()
        }]
    );
    // The flaky test counts as passed, the retried failure as failed: Cypress's own counts.
    assert_eq!(
        b.footer.as_ref().map(|f| f.counts),
        Some(counts(5, 4, 1, 0, 0))
    );
    let ok = parse("cypress/flaky-passing.log");
    assert_eq!(ok.runs[0].flaky_total, 1);
    assert!(!ok.runs[0].has_failures());
    for name in ["passing.log", "failing-2-of-20.log", "coloured.log"] {
        assert_eq!(
            parse(&format!("cypress/{name}")).runs[0].flaky_total,
            0,
            "{name}"
        );
    }
    // A checkpoint taken between the attempts and the final line resumes the retry.
    let bytes = read("cypress/retries.log");
    let text = String::from_utf8(bytes.clone()).expect("utf-8");
    let cut = text.find("    (Attempt 2 of 3) sends").expect("attempt");
    let mut first = LogParser::new();
    first.feed(&bytes[..cut]);
    let saved = serde_json::to_string(&first).expect("serialise");
    let mut resumed: LogParser = serde_json::from_str(&saved).expect("restore");
    resumed.feed(&bytes[cut..]);
    assert_eq!(resumed.summary(), &parse_chunked(&bytes, usize::MAX));
}

#[test]
fn a_checkpointed_parser_resumes_exactly() {
    let bytes = read("cypress/categorized-3-groups.log");
    let whole = parse_chunked(&bytes, usize::MAX);
    // Stop in the middle of a line, serialise, restore, continue.
    let cut = bytes.len() / 2 + 3;
    let mut first = LogParser::new();
    first.feed(&bytes[..cut]);
    let saved = serde_json::to_string(&first).expect("serialise");
    assert!(
        !saved.contains("partial"),
        "no buffer is saved, the line is read again: {saved}"
    );
    let mut resumed: LogParser = serde_json::from_str(&saved).expect("restore");
    let back = first.unterminated() as usize;
    assert!(back > 0, "the cut is mid-line");
    resumed.feed(&bytes[cut - back..]);
    assert_eq!(resumed.summary(), &whole);
}

#[test]
fn a_long_line_cut_off_resumes_from_its_start_and_is_still_skipped() {
    let mut log = b"  (Run Starting)\n".to_vec();
    log.extend(std::iter::repeat_n(b'x', 100_000));
    log.extend_from_slice(b"\n  (Run Finished)\n");
    let whole = parse_chunked(&log, usize::MAX);
    let cut = 50_000;
    let mut first = LogParser::new();
    first.feed(&log[..cut]);
    assert_eq!(first.unterminated(), (cut - 17) as u64);
    let mut resumed: LogParser =
        serde_json::from_str(&serde_json::to_string(&first).expect("json")).expect("parse");
    resumed.feed(&log[cut - first.unterminated() as usize..]);
    assert_eq!(resumed.summary(), &whole);
}

#[test]
fn mochawesome_report_from_the_real_reporter() {
    let r = parse_report(&read("mochawesome/login.json")).expect("parses");
    assert_eq!(r.counts, counts(4, 2, 1, 1, 0));
    assert_eq!(r.specs, ["cypress/e2e/login.cy.js"]);
    assert_eq!(r.failures.len(), 1);
    assert_eq!(r.failures[0].full_title, "Login rejects a bad password");
    assert_eq!(
        r.failures[0].error,
        "AssertionError: expected the error banner"
    );
    assert_eq!(r.failures[0].spec, "cypress/e2e/login.cy.js");
    assert!(r.start.is_some() && r.end >= r.start);
    let ok = parse_report(&read("mochawesome/dashboard.json")).expect("parses");
    assert_eq!(ok.counts, counts(2, 2, 0, 0, 0));
    assert!(ok.failures.is_empty());
}

#[test]
fn junit_report_from_the_real_reporter_under_cypress() {
    let r = parse_report(&read("junit/checkout.xml")).expect("parses");
    // A pass, a failure, a skip and a test that passed on its retry (which
    // mocha-junit-reporter does not record: it is a plain pass).
    assert_eq!(r.counts, counts(4, 2, 1, 1, 0));
    assert_eq!(
        r.specs,
        ["cypress/e2e/checkout.cy.js"],
        "the root suite's file"
    );
    assert_eq!(r.failures.len(), 1);
    assert_eq!(r.failures[0].spec, "cypress/e2e/checkout.cy.js");
    assert_eq!(r.failures[0].full_title, "Checkout charges the card");
    assert_eq!(r.failures[0].error, "expected the payment to go through");
    assert!(r.flaky.is_empty());
    let ok = parse_report(&read("junit/search.xml")).expect("parses");
    assert_eq!(ok.counts, counts(2, 2, 0, 0, 0));
    assert_eq!(ok.specs, ["cypress/e2e/search.cy.js"]);
    // Plain mocha names the file on the suites themselves, absolute.
    let plain = parse_report(&read("junit/checkout-mocha.xml")).expect("parses");
    assert_eq!(plain.failures[0].full_title, "Checkout charges the card");
    assert!(SpecSet::new(["checkout.cy.js"]).matches(&plain.specs[0]));
}

#[test]
fn reporter_dir_reads_junit_beside_mochawesome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let since = SystemTime::now() - Duration::from_secs(60);
    for (from, to) in [
        ("junit/checkout.xml", "results-1a2b.xml"),
        ("mochawesome/login.json", "login.json"),
        ("junit/search.xml", "notes.txt"),
    ] {
        fs::copy(fixture(from), dir.path().join(to)).expect("copy");
    }
    let specs = SpecSet::new(["checkout.cy.js", "login.cy.js", "search.cy.js"]);
    let mut rd = ReporterDir::new(dir.path(), since);
    assert!(rd.scan(true).warnings.is_empty());
    assert_eq!(rd.counts(&specs).map(|c| c.tests), Some(8), "not notes.txt");
    let summary = rd.summarize(|_| true, &specs, 10);
    assert_eq!((summary.reports, summary.failures_total), (2, 2));
    let titles: Vec<&str> = summary
        .failures
        .iter()
        .map(|f| f.full_title.as_str())
        .collect();
    assert!(titles.contains(&"Checkout charges the card"), "{titles:?}");
}

#[test]
fn twin_reports_of_one_spec_count_once_and_name_each_failure_once() {
    // cypress-multi-reporters: mochawesome's login.json and JUnit's login.xml of one run.
    let dir = tempfile::tempdir().expect("tempdir");
    let since = SystemTime::now() - Duration::from_secs(60);
    fs::copy(
        fixture("mochawesome/login.json"),
        dir.path().join("login.json"),
    )
    .expect("copy");
    fs::copy(fixture("junit/login.xml"), dir.path().join("login.xml")).expect("copy");
    let specs = SpecSet::new(["login.cy.js"]);
    let mut rd = ReporterDir::new(dir.path(), since);
    rd.scan(true);
    assert_eq!(
        rd.counts(&specs),
        Some(counts(4, 2, 1, 1, 0)),
        "once, not twice"
    );
    let summary = rd.summarize(|_| true, &specs, 10);
    assert_eq!((summary.reports, summary.failures_total), (2, 1));
    assert_eq!(summary.failures.len(), 1);
    assert_eq!(
        summary.failures[0].error, "AssertionError: expected the error banner",
        "the record that says more (mochawesome keeps the error's type)"
    );
    // What a post may call fixed: a test a report shows passing, never the pending one or
    // one no report names.
    let passing = rd.passing(|_| true, &specs, |_, title| title.starts_with("Login"));
    let mut titles: Vec<&str> = passing.iter().map(|p| p.full_title.as_str()).collect();
    titles.sort();
    assert_eq!(
        titles,
        [
            "Login Session expires after 30 minutes",
            "Login shows the login form"
        ]
    );
}

#[test]
fn reporter_dir_counts_only_new_files_and_skips_malformed_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stale = dir.path().join("stale.json");
    fs::copy(fixture("mochawesome/login.json"), &stale).expect("copy");
    let old = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&stale)
        .expect("open")
        .set_modified(old)
        .expect("mtime");
    let since = SystemTime::now() - Duration::from_secs(60);
    let specs = SpecSet::new(["login.cy.js", "dashboard.cy.js"]);
    let mut rd = ReporterDir::new(dir.path(), since);
    assert!(!rd.scan(true).changed);
    assert!(
        rd.counts(&specs).is_none(),
        "a report older than the runner must not count"
    );

    fs::copy(
        fixture("mochawesome/dashboard.json"),
        dir.path().join("dashboard.json"),
    )
    .expect("copy");
    fs::write(dir.path().join("broken.json"), b"{\"stats\": {").expect("write");
    let scan = rd.scan(false);
    assert!(scan.changed);
    assert_eq!(scan.warnings.len(), 1);
    assert!(
        scan.warnings[0].contains("broken.json"),
        "{:?}",
        scan.warnings
    );
    assert_eq!(rd.counts(&specs).map(|c| c.tests), Some(2));
    assert_eq!(
        rd.counts(&SpecSet::new(["login.cy.js"])),
        None,
        "another run's report"
    );
    let summary = rd.summarize(|_| true, &specs, 10);
    assert_eq!((summary.reports, summary.failures_total), (1, 0));
    // Nothing changed: nothing re-parsed, no repeated warning.
    let again = rd.scan(true);
    assert!(!again.changed && again.warnings.is_empty());
    assert!(rd.newest_mtime(&specs).is_some_and(|m| m >= since));
    assert_eq!(rd.newest_mtime(&SpecSet::new(["other.cy.js"])), None);
}

#[test]
fn reporter_summary_rereads_failures_bounded_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let since = SystemTime::now() - Duration::from_secs(60);
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let text = String::from_utf8(read("mochawesome/login.json"))
            .expect("utf-8")
            .replace("login.cy.js", &format!("{name}.cy.js"));
        let path = dir.path().join(format!("{name}.json"));
        fs::write(&path, text).expect("write");
        let t = SystemTime::now() - Duration::from_secs(10 - i as u64);
        fs::File::options()
            .write(true)
            .open(&path)
            .expect("open")
            .set_modified(t)
            .expect("mtime");
    }
    let mut rd = ReporterDir::new(dir.path(), since);
    rd.scan(true);
    let abc = SpecSet::new(["a.cy.js", "b.cy.js", "c.cy.js"]);
    assert_eq!(rd.counts(&abc).map(|c| c.failed), Some(3));
    let all = rd.summarize(|_| true, &abc, 2);
    assert_eq!(
        (all.reports, all.failures_total, all.failures.len()),
        (3, 3, 2)
    );
    assert_eq!(all.failures[0].spec, "cypress/e2e/a.cy.js", "oldest first");
    let only_c = rd.summarize(|_| true, &SpecSet::new(["e2e/c.cy.js"]), 10);
    assert_eq!(only_c.failures.len(), 1);
    assert_eq!(only_c.failures[0].spec, "cypress/e2e/c.cy.js");
}

#[test]
fn a_report_swapped_for_a_fifo_after_the_scan_is_skipped_not_waited_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let since = SystemTime::now() - Duration::from_secs(60);
    let report = dir.path().join("login.json");
    fs::copy(fixture("mochawesome/login.json"), &report).expect("copy");
    let mut rd = ReporterDir::new(dir.path(), since);
    rd.scan(true);
    let specs = SpecSet::new(["login.cy.js"]);
    assert!(rd.counts(&specs).is_some());
    // Another user of the shared directory swaps the file between two reads.
    fs::remove_file(&report).expect("unlink");
    mkfifo(&report);
    let reports = within_seconds(5, move || rd.summarize(|_| true, &specs, 10).reports);
    assert_eq!(reports, 0);
}

fn append(path: &std::path::Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("open")
        .write_all(bytes)
        .expect("append");
}

fn id(path: &std::path::Path) -> FileId {
    FileId::of(&fs::metadata(path).expect("stat"))
}

#[test]
fn follower_reads_increments_truncation_and_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("b.log");
    let bytes = read("cypress/passing.log");
    let (a, b) = bytes.split_at(bytes.len() / 3);
    append(&log, a);
    let first = id(&log);
    let mut parser = LogParser::new();
    let mut f = LogFollower::new(&log, None);
    assert_eq!(
        f.poll(first, &mut parser, u64::MAX).expect("poll").bytes,
        a.len() as u64
    );
    assert_eq!(
        f.poll(first, &mut parser, u64::MAX).expect("poll").bytes,
        0,
        "nothing new"
    );
    append(&log, b);
    f.poll(first, &mut parser, u64::MAX).expect("poll");
    assert!(parser.summary().runs[0].is_finished());

    // Truncated in place: read again from the start.
    fs::write(&log, b"  (Run Starting)\n").expect("truncate");
    let p = f.poll(first, &mut parser, u64::MAX).expect("poll");
    assert!(p.truncated);
    assert_eq!(parser.summary().runs.len(), 2);

    // Truncated and written again past where reading had got to: still read from the start.
    let again = format!("  (Run Finished)\n  (Run Starting)\n{}\n", "x".repeat(200));
    fs::write(&log, &again).expect("rewrite");
    let p = f.poll(first, &mut parser, u64::MAX).expect("poll");
    assert!(p.truncated, "rewritten beyond the old length");
    assert_eq!(p.bytes, again.len() as u64);
    assert_eq!(parser.summary().runs.len(), 3);
    // The same bytes before the offset, more after them: plain new output.
    append(&log, b"  (Run Starting)\n");
    let p = f.poll(first, &mut parser, u64::MAX).expect("poll");
    assert!(!p.truncated);
    assert_eq!(parser.summary().runs.len(), 4);

    // A new runner rotates the log and starts a new file: the old one is finished first.
    append(&log, b"  (Run Finished)\n\n\n       Spec\n");
    fs::rename(&log, dir.path().join("b.log.1")).expect("rotate");
    append(&log, b"  (Run Starting)\n");
    let second = id(&log);
    f.poll(second, &mut parser, u64::MAX).expect("poll");
    assert_eq!(parser.summary().runs.len(), 5);
    assert_eq!(f.point().map(|p| p.file), Some(second));
}

#[test]
fn follower_never_reads_a_file_that_is_not_the_expected_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("b.log");
    fs::write(&log, read("cypress/passing.log")).expect("stale log of an earlier run");
    let mut parser = LogParser::new();
    let mut f = LogFollower::new(&log, None);
    let other = FileId { dev: 1, ino: 1 };
    assert_eq!(f.poll(other, &mut parser, u64::MAX).expect("poll").bytes, 0);
    assert!(parser.summary().runs.is_empty());

    // And a symlink at the log path is never followed.
    let target = dir.path().join("target.log");
    fs::rename(&log, &target).expect("move");
    std::os::unix::fs::symlink(&target, &log).expect("symlink");
    let target_id = id(&target);
    assert_eq!(
        f.poll(target_id, &mut parser, u64::MAX)
            .expect("poll")
            .bytes,
        0
    );

    // Nor waited on: a FIFO at the log path would block a plain open forever.
    fs::remove_file(&log).expect("unlink");
    mkfifo(&log);
    let polled = within_seconds(5, move || {
        let mut f = LogFollower::new(&log, None);
        f.poll(target_id, &mut LogParser::new(), u64::MAX)
            .map(|p| p.bytes)
            .map_err(|e| e.to_string())
    });
    assert_eq!(polled, Ok(0));
}

fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// `f()`, or a failure naming the hang if it takes longer than `secs`.
fn within_seconds<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("blocked on a FIFO")
}

#[test]
fn follower_budget_splits_a_large_backlog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("b.log");
    let bytes = read("cypress/failing-2-of-20.log");
    fs::write(&log, &bytes).expect("write");
    let mut parser = LogParser::new();
    let mut f = LogFollower::new(&log, None);
    let mut polls = 0;
    loop {
        polls += 1;
        let p = f.poll(id(&log), &mut parser, 4096).expect("poll");
        if !p.more {
            break;
        }
    }
    assert!(polls > 3);
    assert_eq!(parser.summary(), &parse_chunked(&bytes, usize::MAX));
}
