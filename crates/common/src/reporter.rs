//! mochawesome JSON reports in the reporter directory (SPEC §6): counts, failed tests (spec,
//! full title, first line of the error) and activity for hang detection. Only files modified
//! after the runner started count; a malformed file is skipped with a warning.

use crate::state::Counts;
use crate::time::Timestamp;
use serde::Deserialize;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Tolerance between the precise clock and file timestamps (see [`ReporterDir::new`]).
pub const CLOCK_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// Failed tests kept per report file; the message shows at most 10 anyway.
const MAX_FAILURES_PER_REPORT: usize = 50;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedTest {
    /// Spec file as the reporter names it, e.g. `cypress/e2e/login.cy.js`.
    pub spec: String,
    pub full_title: String,
    /// First line of `err.message`.
    pub error: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub counts: Counts,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub duration_ms: Option<u64>,
    /// Spec files the report covers.
    pub specs: Vec<String>,
    pub failures: Vec<FailedTest>,
    /// Failures beyond [`MAX_FAILURES_PER_REPORT`] that were counted but not kept.
    pub more_failures: usize,
}

#[derive(Deserialize)]
struct RawReport {
    stats: RawStats,
    #[serde(default)]
    results: Vec<RawSuite>,
}

#[derive(Deserialize)]
struct RawStats {
    #[serde(default)]
    tests: u64,
    #[serde(default)]
    passes: u64,
    #[serde(default)]
    failures: u64,
    #[serde(default)]
    pending: u64,
    #[serde(default)]
    skipped: u64,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
    #[serde(default)]
    duration: Option<u64>,
}

#[derive(Deserialize)]
struct RawSuite {
    #[serde(default)]
    file: Option<String>,
    #[serde(default, rename = "fullFile")]
    full_file: Option<String>,
    #[serde(default)]
    tests: Vec<RawTest>,
    #[serde(default)]
    suites: Vec<RawSuite>,
}

#[derive(Deserialize)]
struct RawTest {
    #[serde(default)]
    title: String,
    #[serde(default, rename = "fullTitle")]
    full_title: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    err: Option<RawErr>,
}

#[derive(Deserialize)]
struct RawErr {
    #[serde(default)]
    message: Option<String>,
}

/// Parse one mochawesome JSON document.
pub fn parse_report(bytes: &[u8]) -> Result<Report, String> {
    let raw: RawReport = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let s = &raw.stats;
    let mut report = Report {
        counts: Counts {
            tests: s.tests,
            passed: s.passes,
            failed: s.failures,
            pending: s.pending,
            skipped: s.skipped,
        },
        start: s.start.as_deref().and_then(Timestamp::parse),
        end: s.end.as_deref().and_then(Timestamp::parse),
        duration_ms: s.duration,
        ..Report::default()
    };
    for suite in &raw.results {
        let spec = spec_name(suite);
        if !spec.is_empty() && !report.specs.contains(&spec) {
            report.specs.push(spec.clone());
        }
        collect_failures(suite, &spec, &mut report);
    }
    Ok(report)
}

fn spec_name(suite: &RawSuite) -> String {
    let file = suite
        .file
        .as_deref()
        .or(suite.full_file.as_deref())
        .unwrap_or("");
    file.trim_start_matches('/').to_string()
}

fn collect_failures(suite: &RawSuite, spec: &str, report: &mut Report) {
    for test in &suite.tests {
        if test.state.as_deref() != Some("failed") {
            continue;
        }
        if report.failures.len() >= MAX_FAILURES_PER_REPORT {
            report.more_failures += 1;
            continue;
        }
        let message = test
            .err
            .as_ref()
            .and_then(|e| e.message.as_deref())
            .unwrap_or("");
        let title = if test.full_title.is_empty() {
            &test.title
        } else {
            &test.full_title
        };
        report.failures.push(FailedTest {
            spec: spec.to_string(),
            full_title: title.clone(),
            error: message
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_string(),
        });
    }
    for child in &suite.suites {
        collect_failures(child, spec, report);
    }
}

#[derive(Debug)]
struct Entry {
    mtime: SystemTime,
    size: u64,
    report: Option<Report>,
}

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
    dir_mtime: Option<SystemTime>,
    entries: HashMap<OsString, Entry>,
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
            dir_mtime: None,
            entries: HashMap::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
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
        let mut seen = Vec::new();
        for entry in listing.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            if !name.to_string_lossy().ends_with(".json") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let Ok(mtime) = meta.modified() else { continue };
            if !meta.is_file() || mtime < self.since {
                continue;
            }
            seen.push(name.clone());
            if let Some(e) = self.entries.get(&name)
                && e.mtime == mtime
                && e.size == meta.len()
            {
                continue;
            }
            let path = self.dir.join(&name);
            let report = match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| parse_report(&b))
            {
                Ok(r) => Some(r),
                Err(e) => {
                    result.warnings.push(format!(
                        "skipping malformed report: {e} ({})",
                        path.display()
                    ));
                    None
                }
            };
            self.entries.insert(
                name,
                Entry {
                    mtime,
                    size: meta.len(),
                    report,
                },
            );
            result.changed = true;
        }
        let before = self.entries.len();
        self.entries.retain(|name, _| seen.contains(name));
        result.changed |= self.entries.len() != before;
        result
    }

    /// Newest mtime of any counted report file (activity for hang detection).
    pub fn newest_mtime(&self) -> Option<SystemTime> {
        self.entries.values().map(|e| e.mtime).max()
    }

    /// Parsed reports with their mtimes, oldest first.
    pub fn reports(&self) -> Vec<(SystemTime, &Report)> {
        let mut v: Vec<_> = self
            .entries
            .values()
            .filter_map(|e| e.report.as_ref().map(|r| (e.mtime, r)))
            .collect();
        v.sort_by_key(|(m, _)| *m);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_and_broken_documents() {
        let r = parse_report(br#"{"stats":{"tests":1,"passes":1}}"#).expect("minimal");
        assert_eq!(r.counts.tests, 1);
        assert!(parse_report(b"{\"stats\":").is_err());
        assert!(parse_report(b"[]").is_err());
    }
}
