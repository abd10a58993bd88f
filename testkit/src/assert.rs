//! Chained assertions on a finished command, in the manner of coreutils' test kit
//! (`new_ucmd!().fails().code_is(2).usage_error(..)`): a test says what it expects of an
//! exit and its output in one line, and a failure prints everything the command said.
//!
//! ```ignore
//! env.run("start-atvm-run", &["--build-name", "-x"])
//!     .code_is(2)
//!     .error_line("start-atvm-run", "invalid build name");
//! ```

use std::process::Output;

use crate::text;

/// Assertions on an [`Output`], each returning it again so that they chain.
pub trait Expect {
    /// Exit status 0.
    fn succeeds(&self) -> &Self;
    /// Exit status `code` (not killed by a signal).
    fn code_is(&self, code: i32) -> &Self;
    /// stdout or stderr contains `needle`.
    fn said(&self, needle: &str) -> &Self;
    /// Neither stdout nor stderr contains `needle`.
    fn never_said(&self, needle: &str) -> &Self;
    /// stderr is exactly one line, `<program>: …`, containing `needle` (SPEC's error shape:
    /// `<program>: <what> (<path or unit>)`).
    fn error_line(&self, program: &str, needle: &str) -> &Self;
    /// stdout and stderr together, lossily decoded.
    fn text(&self) -> String;
}

impl Expect for Output {
    #[track_caller]
    fn succeeds(&self) -> &Self {
        assert!(
            self.status.success(),
            "expected success, got {}:\n{}",
            self.status,
            text(self)
        );
        self
    }

    #[track_caller]
    fn code_is(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit {code}, got {}:\n{}",
            self.status,
            text(self)
        );
        self
    }

    #[track_caller]
    fn said(&self, needle: &str) -> &Self {
        assert!(
            text(self).contains(needle),
            "expected the output to contain {needle:?}; it was:\n{}",
            text(self)
        );
        self
    }

    #[track_caller]
    fn never_said(&self, needle: &str) -> &Self {
        assert!(
            !text(self).contains(needle),
            "expected the output not to contain {needle:?}; it was:\n{}",
            text(self)
        );
        self
    }

    #[track_caller]
    fn error_line(&self, program: &str, needle: &str) -> &Self {
        let stderr = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines.len() == 1
                && lines[0].starts_with(&format!("{program}: "))
                && lines[0].contains(needle),
            "expected one stderr line `{program}: …{needle}…`; stderr was:\n{stderr}"
        );
        self
    }

    fn text(&self) -> String {
        text(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(script: &str) -> Output {
        Command::new("sh").args(["-c", script]).output().unwrap()
    }

    #[test]
    fn assertions_chain_and_pass_on_what_they_describe() {
        sh("echo 'tool: cannot read it (/x)' >&2; exit 4")
            .code_is(4)
            .said("cannot read")
            .never_said("secret")
            .error_line("tool", "(/x)");
        sh("echo hi").succeeds().said("hi");
    }

    #[test]
    #[should_panic(expected = "expected exit 2, got exit status: 1")]
    fn a_wrong_code_fails_showing_it() {
        sh("exit 1").code_is(2);
    }

    #[test]
    #[should_panic(expected = "expected one stderr line")]
    fn two_error_lines_are_not_one() {
        sh("echo 'tool: a' >&2; echo 'tool: b' >&2; exit 1").error_line("tool", "a");
    }

    #[test]
    #[should_panic(expected = "not to contain")]
    fn never_said_fails_when_it_was_said() {
        sh("echo the-key").never_said("the-key");
    }
}
