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

/// Every webhook URL this process could know of: the environment's, the env file's, and
/// each http(s) URL with a `/hooks/` path written anywhere in the env file (a line continued with `\` or an unclosed quote can
/// join the webhook into another variable's value, which an error may then quote). Read
/// once, at the first line written.
fn secrets() -> &'static [crate::config::Webhook] {
    static SECRETS: OnceLock<Vec<crate::config::Webhook>> = OnceLock::new();
    SECRETS.get_or_init(|| {
        let mut urls: Vec<String> = std::env::var(crate::config::WEBHOOK_VAR)
            .ok()
            .into_iter()
            .collect();
        let env_file = std::env::var_os("ATVM_ENV_FILE")
            .filter(|v| !v.is_empty())
            .map_or_else(
                || crate::paths::DEFAULT_ENV_FILE.into(),
                std::path::PathBuf::from,
            );
        if let Ok(text) = std::fs::read_to_string(env_file) {
            urls.extend(crate::config::parse_env_file(&text).remove(crate::config::WEBHOOK_VAR));
            // Only what looks like a webhook: other URLs' words are nobody's secret.
            urls.extend(
                urls_in(&text)
                    .into_iter()
                    .filter(|u| u.to_ascii_lowercase().contains("/hooks/")),
            );
        }
        urls.iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| crate::config::Webhook::new(u))
            .collect()
    })
}

/// Each `http://` or `https://` URL in `text`, up to a space, a quote or a line's end.
fn urls_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("http").map(|i| from + i) {
        let rest = &text[at..];
        let url: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | '\\'))
            .collect();
        if url.to_ascii_lowercase().starts_with("http://")
            || url.to_ascii_lowercase().starts_with("https://")
        {
            found.push(url.clone());
        }
        from = at + url.len().max(4);
    }
    found
}

/// `message` with every spelling of a known webhook secret replaced: a line the tools
/// write never carries one, whatever it quotes.
pub fn redact(message: &str) -> String {
    secrets()
        .iter()
        .fold(message.to_string(), |text, webhook| webhook.redact(&text))
}

/// The exact line written for `message` at `priority`, without the newline.
pub fn format_line(priority: u8, message: &str, journal: bool, prefixed: bool) -> String {
    let message = redact(message);
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
    fn urls_are_found_wherever_a_line_put_them() {
        let text = "MATTERMOST_ATVM_CHANNEL=qa\\\nMATTERMOST_ATVM_WEBHOOK=https://chat.example/hooks/abc123def456 # x\nX=\"http://h/hooks/zz\"";
        assert_eq!(
            urls_in(text),
            [
                "https://chat.example/hooks/abc123def456",
                "http://h/hooks/zz"
            ]
        );
        assert!(urls_in("no url here: htt, http:/x").is_empty());
    }

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
