//! mochawesome JSON (docs/watcher-service.md): `stats` with the counts and times,
//! `results[].suites[].tests[]` with `title`, `fullTitle`, `state`, `err.message`, and
//! `results[].file` naming the spec. mochawesome records only a test's last attempt, so it
//! shows no flaky test (the log's `(Attempt N of M)` lines do).

use super::{FailedTest, Report, first_line, plain};
use crate::state::Counts;
use crate::time::Timestamp;
use serde::Deserialize;
use std::borrow::Cow;

// The raw documents borrow their strings from the file's bytes (zero-copy): a report is
// parsed for a handful of fields, and allocating every title of every passed test would
// leave a watcher of a 10,000-spec run fragmented and several megabytes bigger.

#[derive(Deserialize)]
struct RawReport<'a> {
    stats: RawStats<'a>,
    #[serde(default, borrow)]
    results: Vec<RawSuite<'a>>,
}

#[derive(Deserialize)]
struct RawStats<'a> {
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
    #[serde(default, borrow)]
    start: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    end: Option<Cow<'a, str>>,
    #[serde(default)]
    duration: Option<u64>,
}

#[derive(Deserialize)]
struct RawSuite<'a> {
    #[serde(default, borrow)]
    file: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "fullFile")]
    full_file: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tests: Vec<RawTest<'a>>,
    #[serde(default, borrow)]
    suites: Vec<RawSuite<'a>>,
}

#[derive(Deserialize)]
struct RawTest<'a> {
    #[serde(default, borrow)]
    title: Cow<'a, str>,
    #[serde(default, borrow, rename = "fullTitle")]
    full_title: Cow<'a, str>,
    #[serde(default, borrow)]
    state: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    err: Option<RawErr<'a>>,
}

#[derive(Deserialize)]
struct RawErr<'a> {
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

impl RawStats<'_> {
    fn counts(&self) -> Counts {
        Counts {
            tests: self.tests,
            passed: self.passes,
            failed: self.failures,
            pending: self.pending,
            skipped: self.skipped,
        }
    }
}

/// Parse one mochawesome JSON document.
pub fn parse(bytes: &[u8]) -> Result<Report, String> {
    let raw: RawReport = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let s = &raw.stats;
    let mut report = Report {
        counts: s.counts(),
        start: s.start.as_deref().and_then(Timestamp::parse),
        end: s.end.as_deref().and_then(Timestamp::parse),
        duration_ms: s.duration,
        ..Report::default()
    };
    for suite in &raw.results {
        let spec = spec_name(suite);
        report.add_spec(&spec);
        collect_tests(suite, &spec, &mut report);
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

/// The failed tests (with their first error line) and the passed ones of `suite` and the
/// suites inside it.
fn collect_tests(suite: &RawSuite, spec: &str, report: &mut Report) {
    for test in &suite.tests {
        let title = match test.full_title.is_empty() {
            true => &test.title,
            false => &test.full_title,
        };
        match test.state.as_deref() {
            Some("failed") => {
                let message = test
                    .err
                    .as_ref()
                    .and_then(|e| e.message.as_deref())
                    .unwrap_or("");
                report.push_failure(FailedTest {
                    spec: spec.to_string(),
                    full_title: plain(title),
                    error: first_line(message),
                });
            }
            Some("passed") => report.push_passed(spec, plain(title)),
            _ => {}
        }
    }
    for child in &suite.suites {
        collect_tests(child, spec, report);
    }
}

/// Only the `stats` of a report and the spec files it covers (what every poll needs),
/// without building the rest.
pub fn parse_counts(bytes: &[u8]) -> Result<(Counts, Vec<String>), String> {
    #[derive(Deserialize)]
    struct FileOnly<'a> {
        #[serde(default, borrow)]
        file: Option<Cow<'a, str>>,
        #[serde(default, borrow, rename = "fullFile")]
        full_file: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct StatsAndFiles<'a> {
        #[serde(borrow)]
        stats: RawStats<'a>,
        #[serde(default, borrow)]
        results: Vec<FileOnly<'a>>,
    }
    let only: StatsAndFiles = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let specs = only
        .results
        .iter()
        .filter_map(|r| r.file.as_deref().or(r.full_file.as_deref()))
        .map(str::to_string)
        .collect();
    Ok((only.stats.counts(), specs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_in_an_error_are_removed_whole() {
        let doc = br#"{"stats":{"tests":1,"failures":1},"results":[{"file":"cypress/e2e/a.cy.js",
            "suites":[{"title":"A","tests":[{"title":"t","fullTitle":"A \u001b[1mt\u001b[22m",
            "state":"failed","err":{"message":"\u001b[31mAssertionError\u001b[39m: expected red\nstack"}}],
            "suites":[]}]}]}"#;
        let r = parse(doc).expect("report");
        assert_eq!(r.failures[0].full_title, "A t");
        assert_eq!(r.failures[0].error, "AssertionError: expected red");
    }

    #[test]
    fn minimal_and_broken_documents() {
        let r = parse(br#"{"stats":{"tests":1,"passes":1}}"#).expect("minimal");
        assert_eq!(r.counts.tests, 1);
        assert!(parse(b"{\"stats\":").is_err());
        assert!(parse(b"[]").is_err());
    }
}
