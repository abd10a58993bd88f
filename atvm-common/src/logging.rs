//! Operator-facing output. Errors and warnings go to stderr as `<program>: <message>`;
//! progress goes to stdout. Under systemd (`JOURNAL_STREAM` set) each line starts with an
//! sd-daemon priority prefix (`<3>` error, `<4>` warning, `<6>` info) so journald files it at
//! the right level.

use std::fmt::Display;
use std::io::Write;
use std::sync::OnceLock;

static PROGRAM: OnceLock<&'static str> = OnceLock::new();

/// Set the program name used as prefix; the first call wins.
pub fn init(program: &'static str) {
    let _ = PROGRAM.set(program);
}

pub fn program() -> &'static str {
    PROGRAM.get().copied().unwrap_or("atvm")
}

fn under_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty())
}

/// The exact line written for `message` at `priority`, without the newline.
pub fn format_line(priority: u8, message: &str, journal: bool, prefixed: bool) -> String {
    // A message must stay one line even if it quotes something with newlines, and text
    // quoted from a log must not make journald store the line as binary ("blob data") or
    // drive a terminal: control characters become spaces.
    let message: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut line = String::new();
    if journal {
        line.push_str(&format!("<{priority}>"));
    }
    if prefixed {
        line.push_str(program());
        line.push_str(": ");
    }
    line.push_str(&message);
    line
}

pub fn error(message: impl Display) {
    let line = format_line(3, &message.to_string(), under_journal(), true);
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

pub fn warn(message: impl Display) {
    let line = format_line(4, &format!("warning: {message}"), under_journal(), true);
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Something the operator waits on (`waiting for …`): stderr, so it reaches a terminal even
/// when a script reads stdout, at notice priority under journald.
pub fn notice(message: impl Display) {
    let line = format_line(5, &message.to_string(), under_journal(), true);
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A continuation of the previous error (e.g. lines quoted from a log): stderr, error
/// priority under journald, no program prefix.
pub fn error_detail(message: impl Display) {
    let line = format_line(3, &message.to_string(), under_journal(), false);
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

pub fn info(message: impl Display) {
    let line = format_line(6, &message.to_string(), under_journal(), false);
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_priorities_and_stay_single_line() {
        init("test-prog");
        assert_eq!(
            format_line(3, "bad\nthing", true, true),
            "<3>test-prog: bad thing"
        );
        assert_eq!(format_line(6, "fine", false, false), "fine");
        assert_eq!(
            format_line(4, "spec a\u{8}b\u{7f}\u{1b}[31mred\tx", true, false),
            "<4>spec a b  [31mred x"
        );
    }
}
