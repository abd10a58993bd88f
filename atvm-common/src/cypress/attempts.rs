//! Test retries as Cypress prints them, for flaky tests (docs/watcher-service.md, "What a
//! post tells"). With retries on, each failed attempt but the last is a line of its own
//! before the test's final line (Cypress's system-test snapshots, `retries_spec`):
//!
//! ```text
//!   (Attempt 1 of 3) fail twice
//!   (Attempt 2 of 3) fail twice
//!   ✓ fail twice
//! ```
//!
//! The experimental strategies mark every attempt, passed or failed
//! (`✖(Attempt 1 of 10) …`, `✓(Attempt 2 of 10) …`). A test is flaky when at least one
//! attempt failed and its final line is `✓ title` (a duration may follow); a final
//! `1) title` or `✖ title` is a failure, never flaky. The lines name the test's own title,
//! not its suites: that is what the log can tell.

use serde::{Deserialize, Serialize};

/// A test whose attempts are being printed: its title, and whether one of them failed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retrying {
    title: String,
    failed: bool,
}

/// A flaky test the log names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlakyInLog {
    pub spec: String,
    pub title: String,
}

/// What a line means for retries.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// `(Attempt N of M) title`, or with the experimental strategies' `✖`/`✓` before it.
    Attempt { title: &'a str, failed: bool },
    /// `✓ title`, maybe with its duration.
    Passed(&'a str),
    /// `1) title` or `✖ title`: the test failed in the end.
    Failed,
}

/// Could this raw line (before ANSI codes are removed) be one of ours while no retry is
/// being followed? Only an attempt line: `(Attempt` or `✖(`/`✓(`.
pub fn maybe_attempt(raw: &[u8]) -> bool {
    raw.starts_with(b"(Attempt ")
        || raw.starts_with("✖(".as_bytes())
        || raw.starts_with("✓(".as_bytes())
}

fn classify(trimmed: &str) -> Option<Line<'_>> {
    let (marked_failed, rest) = match trimmed.strip_prefix('✖') {
        Some(rest) => (Some(true), rest),
        None => match trimmed.strip_prefix('✓') {
            Some(rest) => (Some(false), rest),
            None => (None, trimmed),
        },
    };
    if let Some(tag) = rest.strip_prefix("(Attempt ") {
        let (numbers, title) = tag.split_once(')')?;
        let (n, m) = numbers.split_once(" of ")?;
        n.trim().parse::<u32>().ok()?;
        m.trim().parse::<u32>().ok()?;
        return Some(Line::Attempt {
            title: title.trim(),
            // Without a mark it is the classic strategy, which prints failed attempts only.
            failed: marked_failed.unwrap_or(true),
        });
    }
    match marked_failed {
        Some(false) => Some(Line::Passed(rest.trim())),
        Some(true) => Some(Line::Failed),
        None => {
            let (n, _) = trimmed.split_once(") ")?;
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(Line::Failed)
        }
    }
}

/// `final` is `title`, or `title` followed by a duration (`fail twice (1203ms)`).
fn same_test(final_line: &str, title: &str) -> bool {
    match final_line.strip_prefix(title) {
        Some("") => true,
        Some(rest) => {
            let rest = rest.trim();
            rest.starts_with('(')
                && rest.ends_with(')')
                && rest[1..].starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Follow one trimmed line. `retrying` is the test whose attempts are being printed;
/// returns the title of a test that just turned out flaky.
pub fn follow(retrying: &mut Option<Retrying>, trimmed: &str) -> Option<String> {
    match classify(trimmed) {
        Some(Line::Attempt { title, failed }) => {
            let earlier = retrying
                .take()
                .filter(|r| r.title == title)
                .is_some_and(|r| r.failed);
            *retrying = Some(Retrying {
                title: title.to_string(),
                failed: failed || earlier,
            });
            None
        }
        Some(Line::Passed(line)) => {
            let r = retrying.take_if(|r| same_test(line, &r.title))?;
            r.failed.then_some(r.title)
        }
        Some(Line::Failed) => {
            *retrying = None;
            None
        }
        // Anything else (the test's own output, a blank line) leaves the retry open.
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flaky titles of `lines`, as [`follow`] sees them.
    fn flaky(lines: &[&str]) -> Vec<String> {
        let mut r = None;
        lines
            .iter()
            .filter_map(|l| follow(&mut r, l.trim()))
            .collect()
    }

    #[test]
    fn cypress_s_own_retry_snapshots_count_as_cypress_does() {
        // retries_spec: supports retries
        let passed_third = [
            "(Attempt 1 of 3) fail twice",
            "(Attempt 2 of 3) fail twice",
            "✓ fail twice",
            "1 passing",
        ];
        assert_eq!(flaky(&passed_third), ["fail twice"]);
        // spec_isolation: simple_retrying (t1 fails both attempts, t2 passes at once)
        let retried_and_failed = [
            "simple retrying spec",
            "(Attempt 1 of 2) t1",
            "1) t1",
            "✓ t2",
        ];
        assert!(flaky(&retried_and_failed).is_empty());
        // spec_isolation: a failing hook with retries
        let hook = [
            "(Attempt 1 of 2) never gets here",
            "1) \"before each\" hook for \"never gets here\"",
        ];
        assert!(flaky(&hook).is_empty());
        // experimental_retries: detect-flake-and-pass-on-threshold, passes
        let experimental = [
            "✖(Attempt 1 of 10) deterministically runs pass/fail on this test",
            "✓(Attempt 2 of 10) deterministically runs pass/fail on this test",
            "✓ deterministically runs pass/fail on this test",
        ];
        assert_eq!(
            flaky(&experimental),
            ["deterministically runs pass/fail on this test"]
        );
        // experimental_retries: fails
        let short_circuit = [
            "✖(Attempt 1 of 6) deterministically runs pass/fail on this test",
            "✓(Attempt 2 of 6) deterministically runs pass/fail on this test",
            "✖ deterministically runs pass/fail on this test",
        ];
        assert!(flaky(&short_circuit).is_empty());
        // burn-in: every attempt passed, nothing flaky
        assert!(flaky(&["✓(Attempt 1 of 3) t", "✓(Attempt 2 of 3) t", "✓ t"]).is_empty());
    }

    #[test]
    fn a_duration_after_the_final_line_is_the_same_test_and_output_between_is_ignored() {
        let lines = [
            "(Attempt 1 of 2) sends the receipt",
            "cy.task log line",
            "",
            "✓ sends the receipt (1203ms)",
        ];
        assert_eq!(flaky(&lines), ["sends the receipt"]);
        assert!(
            flaky(&["(Attempt 1 of 2) a", "✓ ab"]).is_empty(),
            "another test"
        );
        assert!(flaky(&["✓ plain pass", "(Attempt 1 of x) t"]).is_empty());
        assert!(maybe_attempt(b"(Attempt 1 of 2) t") && maybe_attempt("✖(Attempt".as_bytes()));
        assert!(!maybe_attempt("✓ t".as_bytes()));
    }
}
