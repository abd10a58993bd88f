//! JUnit XML, as mocha-junit-reporter writes it (alone, or through cypress-multi-reporters),
//! read with quick-xml's event reader.
//!
//! What it holds: `<testsuite>` elements, of which Cypress gives the root one (`Root
//! Suite`, no tests) the spec's path relative to the project as its `file` attribute (plain
//! mocha puts the absolute path on each suite instead); `<testcase name=… classname=…>`
//! with mocha's full title as `name`; inside a test case `<failure message=…>` or
//! `<error>` (failed), `<skipped/>` (mocha's pending test), and — where a runner records
//! attempts (Maven Surefire, nextest) — `<flakyFailure>`/`<flakyError>` in a test case
//! that passed in the end: a flaky test. mocha-junit-reporter records only a test's last
//! attempt, so its files show no flaky test; the log's `(Attempt N of M)` lines do.
//!
//! quick-junit was tried first: its reader refuses the time stamps mocha-junit-reporter
//! writes (no time zone), so it could not read the files this service meets.

use super::{FailedTest, FlakyTest, Report, first_line, plain};
use quick_xml::Reader;
use quick_xml::XmlVersion;
use quick_xml::escape::unescape;
use quick_xml::events::{BytesStart, Event};

/// What is known of the test case being read.
#[derive(Debug, Default)]
struct Case {
    spec: String,
    title: String,
    failed: Option<String>,
    skipped: bool,
    flaky: bool,
}

/// Parse one JUnit XML document.
pub fn parse(bytes: &[u8]) -> Result<Report, String> {
    let text = String::from_utf8_lossy(bytes);
    let mut reader = Reader::from_str(&text);
    let mut report = Report::default();
    // The spec of the suites being read: Cypress names it on the root suite only, so it
    // carries on into the suites that follow until another one names a file.
    let mut spec = String::new();
    let mut case: Option<Case> = None;
    // Inside `<failure>`/`<error>` without a message attribute: its text is the message.
    let mut reading_error = false;
    let mut saw_suite = false;
    loop {
        let event = reader.read_event().map_err(|e| {
            format!(
                "not well-formed XML at byte {}: {e}",
                reader.error_position()
            )
        })?;
        match event {
            Event::Start(e) | Event::Empty(e) if is(&e, "testsuite") => {
                saw_suite = true;
                if let Some(file) = attr(&e, "file") {
                    spec = file.trim().trim_start_matches('/').to_string();
                    report.add_spec(&spec);
                }
            }
            Event::Start(e) if is(&e, "testcase") => case = Some(start_case(&e, &spec)),
            Event::Empty(e) if is(&e, "testcase") => finish(start_case(&e, &spec), &mut report),
            Event::Start(e) => {
                if let Some(c) = case.as_mut() {
                    reading_error = note_child(c, &e);
                }
            }
            Event::Empty(e) => {
                if let Some(c) = case.as_mut() {
                    note_child(c, &e);
                }
            }
            Event::CData(t) if reading_error => set_error(&mut case, &t.into_inner()),
            Event::Text(t) if reading_error => {
                set_error(&mut case, &t.xml_content(XmlVersion::Implicit1_0))
            }
            Event::End(e) if e.local_name().as_ref() == "testcase" => {
                if let Some(c) = case.take() {
                    finish(c, &mut report);
                }
                reading_error = false;
            }
            Event::End(e) if matches!(e.local_name().as_ref(), "failure" | "error") => {
                reading_error = false;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_suite {
        return Err("no <testsuite> element: not a JUnit report".to_string());
    }
    Ok(report)
}

fn is(e: &BytesStart, name: &str) -> bool {
    e.local_name().as_ref() == name
}

/// The value of attribute `name`, entities resolved. Not normalised as XML would (line
/// breaks to spaces): mocha-junit-reporter writes a multi-line error message into
/// `message`, and its first line is what a post shows.
fn attr(e: &BytesStart, name: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .map(|a| match unescape(&a.value) {
            Ok(text) => text.into_owned(),
            Err(_) => a.value.into_owned(),
        })
}

fn start_case(e: &BytesStart, spec: &str) -> Case {
    let name = attr(e, "name").unwrap_or_default();
    let title = match name.trim().is_empty() {
        true => attr(e, "classname").unwrap_or_default(),
        false => name,
    };
    Case {
        spec: spec.to_string(),
        title: plain(title.trim()),
        ..Case::default()
    }
}

/// Take note of a test case's child element; true when its text is the error message
/// still to be read.
fn note_child(case: &mut Case, e: &BytesStart) -> bool {
    match e.local_name().as_ref() {
        "failure" | "error" => {
            let message = attr(e, "message").map(|m| first_line(&m));
            let wait_for_text = message.as_deref().is_none_or(str::is_empty);
            case.failed = Some(message.unwrap_or_default());
            wait_for_text
        }
        "skipped" => {
            case.skipped = true;
            false
        }
        "flakyFailure" | "flakyError" => {
            case.flaky = true;
            false
        }
        _ => false,
    }
}

fn set_error(case: &mut Option<Case>, text: &str) {
    if let Some(Case {
        failed: Some(error),
        ..
    }) = case
        && error.is_empty()
    {
        *error = first_line(text);
    }
}

fn finish(case: Case, report: &mut Report) {
    let c = &mut report.counts;
    c.tests += 1;
    match (&case.failed, case.skipped) {
        (Some(error), _) => {
            c.failed += 1;
            report.push_failure(FailedTest {
                spec: case.spec,
                full_title: case.title,
                error: error.clone(),
            });
        }
        (None, true) => c.pending += 1,
        (None, false) => {
            c.passed += 1;
            report.push_passed(&case.spec, case.title.clone());
            if case.flaky {
                report.push_flaky(FlakyTest {
                    spec: case.spec,
                    title: case.title,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surefire_style_attempts_make_a_passing_test_flaky_and_a_failing_one_failed() {
        let xml = br#"<?xml version="1.0"?>
<testsuites><testsuite name="s" tests="3" file="cypress/e2e/a.cy.js">
  <testcase name="A passes on its second attempt"><flakyFailure message="timed out"/></testcase>
  <testcase name="A fails every attempt"><rerunFailure message="first"/><failure message="&lt;last&gt; &amp; final">stack</failure></testcase>
  <testcase name="A is fine"/>
</testsuite></testsuites>"#;
        let r = parse(xml).expect("report");
        assert_eq!(
            (r.counts.tests, r.counts.passed, r.counts.failed),
            (3, 2, 1)
        );
        assert_eq!(
            r.flaky,
            [FlakyTest {
                spec: "cypress/e2e/a.cy.js".into(),
                title: "A passes on its second attempt".into()
            }]
        );
        assert_eq!(r.failures[0].error, "<last> & final");
    }

    #[test]
    fn the_error_comes_from_the_text_when_there_is_no_message() {
        let xml = b"<testsuites><testsuite name=\"s\"><testcase name=\"t\"><failure><![CDATA[\n  Error: boom\n  at x]]></failure></testcase></testsuite></testsuites>";
        let r = parse(xml).expect("report");
        assert_eq!(r.failures[0].error, "Error: boom");
        assert!(r.specs.is_empty(), "no file named");
    }

    #[test]
    fn broken_and_foreign_documents_are_errors() {
        assert!(parse(b"<testsuites><testsuite><testcase></testsuite>").is_err());
        assert!(parse(b"<html><body/></html>").is_err());
    }
}
