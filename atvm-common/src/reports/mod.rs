//! The test reports Cypress's reporters write into the reporter directory, in the two
//! formats a Cypress project uses: mochawesome JSON ([`mochawesome`]) and JUnit XML
//! ([`junit`], from mocha-junit-reporter, alone or through cypress-multi-reporters). A file is
//! told apart by its content, not its name: the first byte that is not blank is `{` for
//! JSON and `<` for XML. Both come out as one [`Report`]: counts, the spec files covered,
//! the failed tests and the flaky ones (a test that failed an attempt and then passed, where
//! the format records attempts).
//!
//! The scan in [`crate::reporter`] decides which reports belong to a run; this module only
//! reads one document.

pub mod junit;
pub mod mochawesome;

use crate::state::Counts;
use crate::time::Timestamp;

/// Failed tests kept per report file; a message shows at most 10 and the history keeps a
/// bounded list anyway.
pub const MAX_FAILURES_PER_REPORT: usize = 50;
/// Flaky tests kept per report file (a message names 5).
pub const MAX_FLAKY_PER_REPORT: usize = 20;
/// Passed tests kept per report file: what "fixed since the last run" can name. One not
/// kept is never called fixed (the safe side); a spec with more tests than this is rare.
pub const MAX_PASSED_PER_REPORT: usize = 2_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedTest {
    /// Spec file as the reporter names it, e.g. `cypress/e2e/login.cy.js`.
    pub spec: String,
    pub full_title: String,
    /// First line of the error message.
    pub error: String,
}

/// A test whose last attempt passed (flaky or not): a test failed last time counts as
/// fixed only when a report of this run says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassedTest {
    /// The spec as the reporter names it.
    pub spec: String,
    pub full_title: String,
}

/// A test that failed at least one attempt and then passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlakyTest {
    /// The spec as the reporter (or, from the log, Cypress) names it.
    pub spec: String,
    /// The full title from a report; the log prints the test's own title only.
    pub title: String,
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
    pub flaky: Vec<FlakyTest>,
    /// Flaky tests beyond [`MAX_FLAKY_PER_REPORT`], counted but not kept.
    pub more_flaky: usize,
    /// Tests whose last attempt passed, at most [`MAX_PASSED_PER_REPORT`].
    pub passed: Vec<PassedTest>,
}

impl Report {
    fn push_failure(&mut self, failure: FailedTest) {
        match self.failures.len() < MAX_FAILURES_PER_REPORT {
            true => self.failures.push(failure),
            false => self.more_failures += 1,
        }
    }

    fn push_passed(&mut self, spec: &str, full_title: String) {
        if self.passed.len() < MAX_PASSED_PER_REPORT {
            self.passed.push(PassedTest {
                spec: spec.to_string(),
                full_title,
            });
        }
    }

    fn push_flaky(&mut self, flaky: FlakyTest) {
        match self.flaky.len() < MAX_FLAKY_PER_REPORT {
            true => self.flaky.push(flaky),
            false => self.more_flaky += 1,
        }
    }

    fn add_spec(&mut self, spec: &str) {
        let spec = spec.trim().trim_start_matches('/');
        if !spec.is_empty() && !self.specs.iter().any(|s| s == spec) {
            self.specs.push(spec.to_string());
        }
    }
}

/// The two report formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Mochawesome,
    Junit,
}

impl Kind {
    /// Which format `bytes` are, by their first character that is not blank (a UTF-8
    /// byte-order mark included); `None` for anything else.
    pub fn detect(bytes: &[u8]) -> Option<Kind> {
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Some(Kind::Mochawesome),
            Some(b'<') => Some(Kind::Junit),
            _ => None,
        }
    }

    /// The file names the scan looks at: a reporter's own extension, nothing else (the
    /// directory may hold screenshots or an HTML report beside them).
    pub fn may_be(name: &[u8]) -> bool {
        name.ends_with(b".json") || name.ends_with(b".xml")
    }
}

/// Read one report, whichever format it is.
pub fn parse(bytes: &[u8]) -> Result<Report, String> {
    match Kind::detect(bytes) {
        Some(Kind::Mochawesome) => mochawesome::parse(bytes),
        Some(Kind::Junit) => junit::parse(bytes),
        None => Err("neither mochawesome JSON nor JUnit XML".to_string()),
    }
}

/// What every poll needs of a report (its counts and the specs it covers), as cheaply as
/// the format allows.
pub fn parse_counts(bytes: &[u8]) -> Result<(Counts, Vec<String>), String> {
    match Kind::detect(bytes) {
        Some(Kind::Mochawesome) => mochawesome::parse_counts(bytes),
        Some(Kind::Junit) => junit::parse(bytes).map(|r| (r.counts, r.specs)),
        None => Err("neither mochawesome JSON nor JUnit XML".to_string()),
    }
}

/// The first line of an error message that says something, without colour codes (Chai and
/// Cypress colour theirs).
fn first_line(message: &str) -> String {
    plain(
        message
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or(""),
    )
}

/// `text` without ANSI colour codes (the codes go whole, not only their ESC byte).
fn plain(text: &str) -> String {
    match text.contains('\u{1b}') {
        true => crate::cypress::strip_ansi(text.as_bytes()),
        false => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_told_by_content() {
        assert_eq!(Kind::detect(b"  {\"stats\":{}}"), Some(Kind::Mochawesome));
        assert_eq!(Kind::detect(b"\xef\xbb\xbf<?xml?>"), Some(Kind::Junit));
        assert_eq!(Kind::detect(b"\n<testsuites/>"), Some(Kind::Junit));
        assert_eq!(Kind::detect(b"PNG"), None);
        assert_eq!(Kind::detect(b""), None);
        assert!(parse(b"not a report").is_err());
        assert!(Kind::may_be(b"a.xml") && Kind::may_be(b"b.json") && !Kind::may_be(b"c.png"));
    }
}
