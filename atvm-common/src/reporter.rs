//! The reporter directory (docs/watcher-service.md), scanned for the run's reports —
//! mochawesome JSON or JUnit XML, read by [`crate::reports`] — for counts, failed and
//! flaky tests (spec, full title, first line of the error) and activity for hang
//! detection. Only files modified after the runner started count; a malformed file is
//! skipped with a warning.
//!
//! The directory is shared by every build of the controller, so a report counts for a run
//! only when its spec is one the run's log names ([`SpecSet`]): Cypress prints spec paths
//! relative to the specs' common root (`linux/migrate.cy.ts`), mochawesome relative to the
//! project (`cypress/e2e/linux/migrate.cy.ts`); they match when the report's path ends with
//! the log's on a `/` boundary. Another build's reports never enter this run's counts,
//! activity or message.
//!
//! One spec run may be written twice, once per format (cypress-multi-reporters writing
//! `login.json` and `login.xml`): such twins — reports of the same specs in different
//! formats — count once. Failed and flaky tests are one per spec and full title whichever
//! file names them (the record with more to say kept), and counts take the richer twin's.

use crate::reports::{self, Kind};
use crate::state::Counts;
use serde::{Deserialize, Serialize};

pub use crate::reports::{FailedTest, FlakyTest, PassedTest, Report};

/// Read one report, mochawesome or JUnit (see [`crate::reports`]).
pub fn parse_report(bytes: &[u8]) -> Result<Report, String> {
    reports::parse(bytes)
}
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Tolerance between the precise clock and file timestamps (see [`ReporterDir::new`]).
pub const CLOCK_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// A report file as it was when a run's runner started: name, modification time and size.
/// Such a file was written before the run (by the run before it, less than
/// [`CLOCK_SLACK`] earlier, or with a modification time in the future after the clock
/// stepped back) and never counts for it, however its time compares; rewritten, it is
/// another file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportStamp {
    pub name: String,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    pub size: u64,
}

impl ReportStamp {
    fn of(name: &std::ffi::OsStr, meta: &fs::Metadata) -> Option<ReportStamp> {
        let mtime = meta.modified().ok()?;
        Some(ReportStamp {
            name: name.to_string_lossy().into_owned(),
            mtime_ns: nanos(mtime),
            size: meta.len(),
        })
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// How many files [`stale_reports`] records at most: beyond any real reporter directory.
pub const MAX_STALE_REPORTS: usize = 1_000_000;

/// The files in `dir` that a time check alone would take for reports of a run starting at
/// `since` (modified at or after `since` less the slack), recorded by the runner before it
/// starts the command: the way to tell this run's reports from earlier ones that does not
/// depend on the slack (docs/watcher-service.md).
pub fn stale_reports(dir: &Path, since: SystemTime) -> Vec<ReportStamp> {
    let since = since.checked_sub(CLOCK_SLACK).unwrap_or(since);
    let Ok(listing) = fs::read_dir(dir) else {
        return Vec::new();
    };
    listing
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let fresh = meta.is_file() && meta.modified().is_ok_and(|m| m >= since);
            fresh
                .then(|| ReportStamp::of(&e.file_name(), &meta))
                .flatten()
        })
        .take(MAX_STALE_REPORTS)
        .collect()
}

/// What is kept per report file between polls: enough for change detection, activity and
/// counts. Failure details are read again, bounded, only when a message is written
/// ([`ReporterDir::summarize`]): keeping every report's strings for a 10,000-spec run would
/// cost a watcher several megabytes for nothing.
#[derive(Debug)]
struct Entry {
    mtime: SystemTime,
    size: u64,
    /// `None` for a malformed file.
    counts: Option<Counts>,
    /// Hashes of every `/`-suffix of every spec path the report covers ([`SpecSet`]).
    suffixes: Box<[u64]>,
    /// Which specs, whatever their order: a report of the same specs in the other format
    /// is this one's twin.
    specs_key: u64,
    kind: Option<Kind>,
    /// The scan that last saw this file.
    generation: u64,
}

/// The spec files a run's log names. A report belongs to the run when one of its spec paths
/// ends with one of these on a `/` boundary. Kept as hashes of the names, so matching the
/// reports of a 10,000-spec run costs a few bytes per report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecSet {
    hashes: HashSet<u64>,
}

impl SpecSet {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> SpecSet {
        SpecSet {
            hashes: names
                .into_iter()
                .map(normalise)
                .filter(|n| !n.is_empty())
                .map(hash)
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Does a report's spec path (`cypress/e2e/linux/migrate.cy.ts`) belong to this set?
    pub fn matches(&self, report_spec: &str) -> bool {
        suffixes(normalise(report_spec)).any(|s| self.hashes.contains(&hash(s)))
    }

    fn matches_any(&self, suffix_hashes: &[u64]) -> bool {
        suffix_hashes.iter().any(|h| self.hashes.contains(h))
    }
}

fn normalise(path: &str) -> &str {
    path.trim().trim_start_matches("./").trim_start_matches('/')
}

/// `a/b/c.js`, `b/c.js`, `c.js`: the path and every tail of it that starts after a `/`.
fn suffixes(path: &str) -> impl Iterator<Item = &str> {
    std::iter::once(path).chain(path.match_indices('/').map(move |(i, _)| &path[i + 1..]))
}

fn hash(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// The same for reports of the same specs, whatever their order or leading `./` or `/`.
fn specs_key(specs: &[String]) -> u64 {
    let mut names: Vec<&str> = specs.iter().map(|s| normalise(s)).collect();
    names.sort_unstable();
    names.dedup();
    hash(&names.join("\n"))
}

fn suffix_hashes(specs: &[String]) -> Box<[u64]> {
    specs
        .iter()
        .flat_map(|s| suffixes(normalise(s)))
        .filter(|s| !s.is_empty())
        .map(hash)
        .collect()
}

/// Failed tests and totals of the reports in a window, for a message. A test named by
/// two reports (twins in two formats) is in it once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The first failures, oldest report first, at most the number asked for.
    pub failures: Vec<FailedTest>,
    /// All failed tests in those reports.
    pub failures_total: usize,
    pub reports: usize,
    /// The spec paths those reports cover (so a failing spec without one can be named).
    pub specs: Vec<String>,
    /// The first flaky tests (reports that record attempts), at most the number asked for.
    pub flaky: Vec<FlakyTest>,
    /// All flaky tests in those reports.
    pub flaky_total: usize,
}

/// Capacity of the read buffer kept between scans.
const READ_BUFFER_KEEP: usize = 256 * 1024;

/// What one scan found.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// Reports added, changed or removed since the last scan.
    pub changed: bool,
    /// One line per malformed file, first time it is seen in that shape.
    pub warnings: Vec<String>,
}

/// The reporter directory, scanned incrementally: a file is parsed again only when its
/// mtime or size changed.
#[derive(Debug)]
pub struct ReporterDir {
    dir: PathBuf,
    since: SystemTime,
    /// Files as they were before the run started (see [`ReportStamp`]).
    stale: Vec<ReportStamp>,
    dir_mtime: Option<SystemTime>,
    entries: HashMap<OsString, Entry>,
    generation: u64,
    buf: Vec<u8>,
}

impl ReporterDir {
    /// Reports modified at or after `since` (the runner's start) count. File times come from
    /// the kernel's coarse clock, which lags the precise clock `since` was read from by up to
    /// a tick, so a report written right after the start can look a few milliseconds older:
    /// allow [`CLOCK_SLACK`].
    pub fn new(dir: &Path, since: SystemTime) -> ReporterDir {
        ReporterDir {
            dir: dir.to_path_buf(),
            since: since.checked_sub(CLOCK_SLACK).unwrap_or(since),
            stale: Vec::new(),
            dir_mtime: None,
            entries: HashMap::new(),
            generation: 0,
            buf: Vec::new(),
        }
    }

    /// Never count the files in `stale` as they were (the runner's record of the reports
    /// that were there before it started).
    pub fn without(mut self, stale: &[ReportStamp]) -> ReporterDir {
        self.stale = stale.to_vec();
        self
    }

    /// Look for new or changed reports. Without `full`, an unchanged directory mtime means
    /// no file was added or removed and the scan stops there (files rewritten in place are
    /// picked up by the next `full` scan).
    pub fn scan(&mut self, full: bool) -> ScanResult {
        let mut result = ScanResult::default();
        let Ok(dir_mtime) = fs::metadata(&self.dir).and_then(|m| m.modified()) else {
            result.changed = !self.entries.is_empty();
            self.entries.clear();
            self.dir_mtime = None;
            return result;
        };
        if !full && self.dir_mtime == Some(dir_mtime) {
            return result;
        }
        self.dir_mtime = Some(dir_mtime);
        let Ok(listing) = fs::read_dir(&self.dir) else {
            return result;
        };
        // Entries seen in this scan carry its generation; the rest were deleted.
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let mut buf = std::mem::take(&mut self.buf);
        for entry in listing.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            if !Kind::may_be(name.as_bytes()) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let Ok(mtime) = meta.modified() else { continue };
            if !meta.is_file() || mtime < self.since || self.is_stale(&name, &meta) {
                continue;
            }
            if let Some(e) = self.entries.get_mut(&name)
                && e.mtime == mtime
                && e.size == meta.len()
            {
                e.generation = generation;
                continue;
            }
            let path = self.dir.join(&name);
            buf.clear();
            let (counts, specs) =
                match read_into(&path, &mut buf).and_then(|_| reports::parse_counts(&buf)) {
                    Ok((c, specs)) => (Some(c), specs),
                    Err(e) => {
                        result.warnings.push(format!(
                            "skipping malformed report: {e} ({})",
                            path.display()
                        ));
                        (None, Vec::new())
                    }
                };
            self.entries.insert(
                name,
                Entry {
                    mtime,
                    size: meta.len(),
                    kind: counts.and(Kind::detect(&buf)),
                    counts,
                    suffixes: suffix_hashes(&specs),
                    specs_key: specs_key(&specs),
                    generation,
                },
            );
            result.changed = true;
        }
        // One huge report must not pin its buffer for the rest of the run.
        buf.shrink_to(READ_BUFFER_KEEP);
        self.buf = buf;
        let before = self.entries.len();
        self.entries.retain(|_, e| e.generation == generation);
        result.changed |= self.entries.len() != before;
        result
    }

    fn is_stale(&self, name: &std::ffi::OsStr, meta: &fs::Metadata) -> bool {
        !self.stale.is_empty()
            && ReportStamp::of(name, meta).is_some_and(|stamp| self.stale.contains(&stamp))
    }

    /// Newest mtime of the run's report files (activity for hang detection).
    pub fn newest_mtime(&self, specs: &SpecSet) -> Option<SystemTime> {
        self.entries
            .values()
            .filter(|e| specs.matches_any(&e.suffixes))
            .map(|e| e.mtime)
            .max()
    }

    /// Sum of the counts of the run's (well-formed) reports, twins counted once (the
    /// format whose reports of those specs count more tests: mochawesome's `tests` leaves
    /// out what JUnit lists as skipped in some versions).
    pub fn counts(&self, specs: &SpecSet) -> Option<Counts> {
        let mut by_specs: HashMap<(u64, Option<Kind>), Counts> = HashMap::new();
        for e in self
            .entries
            .values()
            .filter(|e| specs.matches_any(&e.suffixes))
        {
            if let Some(c) = &e.counts {
                by_specs.entry((e.specs_key, e.kind)).or_default().add(c);
            }
        }
        let mut richest: HashMap<u64, Counts> = HashMap::new();
        for ((key, _), c) in by_specs {
            let kept = richest.entry(key).or_default();
            if (c.tests, c.passed + c.failed) > (kept.tests, kept.passed + kept.failed) {
                *kept = c;
            }
        }
        richest.into_values().reduce(|mut total, c| {
            total.add(&c);
            total
        })
    }

    /// The well-formed reports whose mtime passes `window` and whose specs belong to
    /// `specs`, oldest first (then by name, for the same order whenever it is asked).
    fn files_in(&self, window: &impl Fn(SystemTime) -> bool, specs: &SpecSet) -> Vec<OsString> {
        let mut files: Vec<(SystemTime, OsString)> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.counts.is_some() && window(e.mtime) && specs.matches_any(&e.suffixes)
            })
            .map(|(n, e)| (e.mtime, n.clone()))
            .collect();
        files.sort();
        files.into_iter().map(|(_, n)| n).collect()
    }

    /// Read report `name` again, if it still parses and covers one of `specs`.
    fn read_again(&self, name: &OsString, specs: &SpecSet, buf: &mut Vec<u8>) -> Option<Report> {
        read_into(&self.dir.join(name), buf).ok()?;
        let report = reports::parse(buf).ok()?;
        report
            .specs
            .iter()
            .any(|s| specs.matches(s))
            .then_some(report)
    }

    /// Read again the reports whose mtime passes `window` and whose specs belong to
    /// `specs`, oldest first, keeping at most `max_failures` failed tests (all are
    /// counted, each test once).
    pub fn summarize(
        &mut self,
        window: impl Fn(SystemTime) -> bool,
        specs: &SpecSet,
        max_failures: usize,
    ) -> Summary {
        let mut summary = Summary::default();
        let mut merge = Merge::default();
        let mut buf = std::mem::take(&mut self.buf);
        for name in self.files_in(&window, specs) {
            let Some(report) = self.read_again(&name, specs, &mut buf) else {
                continue;
            };
            summary.reports += 1;
            for spec in &report.specs {
                if !summary.specs.contains(spec) {
                    summary.specs.push(spec.clone());
                }
            }
            let twin = (specs_key(&report.specs), Kind::detect(&buf));
            merge.add(report, twin, max_failures, &mut summary);
        }
        summary.failures_total = merge.failures_total();
        summary.flaky_total = merge.flaky_total();
        buf.shrink_to(READ_BUFFER_KEEP);
        self.buf = buf;
        summary
    }

    /// Of the tests `wanted` asks about (spec as the report names it, full title), those
    /// the reports in `window` for `specs` show passing and none shows failing: what a
    /// post may call fixed. A test not in any report (removed, renamed) or pending is not
    /// among them.
    pub fn passing(
        &mut self,
        window: impl Fn(SystemTime) -> bool,
        specs: &SpecSet,
        wanted: impl Fn(&str, &str) -> bool,
    ) -> Vec<PassedTest> {
        let mut passed: Vec<PassedTest> = Vec::new();
        let mut failed: HashSet<(String, String)> = HashSet::new();
        let mut buf = std::mem::take(&mut self.buf);
        for name in self.files_in(&window, specs) {
            let Some(report) = self.read_again(&name, specs, &mut buf) else {
                continue;
            };
            for f in report.failures {
                if wanted(&f.spec, &f.full_title) {
                    failed.insert(test_key(&f.spec, &f.full_title));
                }
            }
            for p in report.passed {
                let key = test_key(&p.spec, &p.full_title);
                if wanted(&p.spec, &p.full_title)
                    && !passed
                        .iter()
                        .any(|q| test_key(&q.spec, &q.full_title) == key)
                {
                    passed.push(p);
                }
            }
        }
        buf.shrink_to(READ_BUFFER_KEEP);
        self.buf = buf;
        passed.retain(|p| !failed.contains(&test_key(&p.spec, &p.full_title)));
        passed
    }
}

/// A test's identity across report files: its spec (normalised) and full title.
fn test_key(spec: &str, title: &str) -> (String, String) {
    (normalise(spec).to_string(), title.to_string())
}

/// Does `b` say more about a failure than `a`? (mochawesome's first line keeps the error's
/// type, `AssertionError: …`, which JUnit's message attribute leaves out.)
fn richer(a: &FailedTest, b: &FailedTest) -> bool {
    b.error.len() > a.error.len()
}

/// Failed and flaky tests of several reports, each test once. Those a report counted but
/// did not name (over its per-file limit) cannot be matched by name: they are summed per
/// format, and twins' sums count once (the larger).
#[derive(Default)]
struct Merge {
    /// Every failed test named so far, and where it is listed (if it was kept).
    failed: HashMap<(String, String), Option<usize>>,
    flaky: HashSet<(String, String)>,
    /// Per reports' specs and format: failures and flaky tests counted but not named.
    unnamed: HashMap<(u64, Option<Kind>), (usize, usize)>,
}

impl Merge {
    fn add(
        &mut self,
        report: Report,
        twin: (u64, Option<Kind>),
        max_failures: usize,
        summary: &mut Summary,
    ) {
        for f in report.failures {
            match self.failed.get(&test_key(&f.spec, &f.full_title)) {
                Some(Some(i)) if richer(&summary.failures[*i], &f) => summary.failures[*i] = f,
                Some(_) => {}
                None => {
                    let kept = summary.failures.len() < max_failures;
                    let at = kept.then_some(summary.failures.len());
                    self.failed.insert(test_key(&f.spec, &f.full_title), at);
                    if kept {
                        summary.failures.push(f);
                    }
                }
            }
        }
        for f in report.flaky {
            if self.flaky.insert(test_key(&f.spec, &f.title)) && summary.flaky.len() < max_failures
            {
                summary.flaky.push(f);
            }
        }
        let unnamed = self.unnamed.entry(twin).or_default();
        unnamed.0 += report.more_failures;
        unnamed.1 += report.more_flaky;
    }

    /// Per specs, the larger of the formats' unnamed counts.
    fn unnamed(&self, pick: impl Fn(&(usize, usize)) -> usize) -> usize {
        let mut per_specs: HashMap<u64, usize> = HashMap::new();
        for ((key, _), n) in &self.unnamed {
            let kept = per_specs.entry(*key).or_default();
            *kept = (*kept).max(pick(n));
        }
        per_specs.values().sum()
    }

    fn failures_total(&self) -> usize {
        self.failed.len() + self.unnamed(|n| n.0)
    }

    fn flaky_total(&self) -> usize {
        self.flaky.len() + self.unnamed(|n| n.1)
    }
}

/// Read a report whole. The directory is shared, so what was a regular file at the scan may
/// be a symlink or a FIFO by now: neither is followed or waited on.
fn read_into(path: &Path, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.clear();
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() > MAX_REPORT_BYTES {
        return Err(format!("larger than {} MiB", MAX_REPORT_BYTES >> 20));
    }
    (&mut file)
        .take(MAX_REPORT_BYTES)
        .read_to_end(buf)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A report this large is not mochawesome's (a run of 10,000 tests writes a few MiB).
const MAX_REPORT_BYTES: u64 = 256 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_match_the_log_s_specs_on_a_slash_boundary() {
        let set = SpecSet::new(["login.cy.js", "linux/migrate.cy.ts", "./x/y.cy.js"]);
        assert!(set.matches("cypress/e2e/login.cy.js"));
        assert!(set.matches("/root/p/cypress/e2e/linux/migrate.cy.ts"));
        assert!(set.matches("login.cy.js"));
        assert!(set.matches("cypress/e2e/x/y.cy.js"));
        assert!(
            !set.matches("cypress/e2e/relogin.cy.js"),
            "not on a / boundary"
        );
        assert!(!set.matches("cypress/e2e/windows/migrate.cy.ts"));
        assert!(!set.matches("cypress/e2e/login.cy.js.bak"));
        assert!(SpecSet::new([]).is_empty());
        assert!(!SpecSet::new(["", " "]).matches("a.cy.js"));
    }
}
