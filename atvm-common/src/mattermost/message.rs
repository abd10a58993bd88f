//! What a result message says: the payload posted to the webhook and its text, with every
//! piece of text from logs, reports and options made inert and the whole kept below
//! Mattermost's size limit.

use crate::inventory::Vm;
use crate::reporter::FailedTest;
use crate::state::{Counts, Request, RunState};
use serde::Serialize;

pub const USERNAME: &str = "atvm-watcher";
/// Mattermost refuses posts over 16,383 characters; stay below 16,000.
pub const MAX_TEXT: usize = 15_900;
/// Failed tests listed in a message.
pub const MAX_FAILURES_SHOWN: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Payload {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    pub username: String,
    pub text: String,
}

impl Payload {
    pub fn new(channel: Option<&str>, text: String) -> Payload {
        Payload {
            channel: channel.map(str::to_string),
            username: USERNAME.to_string(),
            text,
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising three strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Everything a result message shows.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    pub state: RunState,
    pub build: &'a str,
    /// Set for a categorized sub-run.
    pub group: Option<&'a str>,
    pub reason: &'a str,
    pub request: &'a Request,
    pub counts: Option<Counts>,
    pub duration: Option<String>,
    pub vms: Vec<&'a Vm>,
    pub run_url: Option<&'a str>,
    pub failures: &'a [FailedTest],
    /// All failed tests known, including those not in `failures`.
    pub failures_total: usize,
}

fn emoji(state: RunState) -> &'static str {
    match state {
        RunState::Completed => ":white_check_mark:",
        RunState::Failed => ":x:",
        _ => ":warning:",
    }
}

/// Make text from logs, reports and options inert: one line, bounded, Markdown escaped,
/// and `@channel`/`@all`/`@here`/`@user` mentions broken with a zero-width space.
pub fn inert(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if count >= max_chars {
            out.push('…');
            break;
        }
        count += 1;
        match c {
            c if c.is_control() => out.push(' '),
            '\\' | '`' | '*' | '_' | '~' | '[' | ']' | '(' | ')' | '<' | '>' | '|' | '#' | '!'
            | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '@' => {
                out.push('@');
                if chars
                    .peek()
                    .is_some_and(|n| n.is_alphanumeric() || matches!(n, '_' | '-' | '.'))
                {
                    out.push('\u{200B}');
                }
            }
            ':' => {
                // `:smile:`-style shortcodes stay literal.
                out.push(':');
                if chars.peek().is_some_and(|n| n.is_alphanumeric()) {
                    out.push('\u{200B}');
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A link only for plain http(s) URLs; anything else is shown as inert text.
fn link(url: &str) -> String {
    let clean = url.trim();
    let safe = (clean.starts_with("https://") || clean.starts_with("http://"))
        && clean.len() < 600
        && !clean.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, '(' | ')' | '<' | '>' | '[' | ']' | '`' | '"')
        });
    if safe {
        let shown = clean.split_once("://").map_or(clean, |(_, rest)| rest);
        format!("[{}]({clean})", inert(shown, 120))
    } else {
        inert(clean, 300)
    }
}

/// The Markdown text of a result message.
pub fn render(m: &Message) -> String {
    let mut lines = Vec::new();
    let mut status = format!(
        "{} **{}** · build {}",
        emoji(m.state),
        m.state,
        inert(m.build, 128)
    );
    if let Some(group) = m.group {
        status.push_str(&format!(" · group {}", inert(group, 80)));
    }
    lines.push(status);
    if !m.reason.is_empty() && m.state != RunState::Completed {
        lines.push(inert(m.reason, 300));
    }
    let r = m.request;
    let mut field = |label: &str, value: &Option<String>| {
        if let Some(v) = value.as_deref().filter(|v| !v.trim().is_empty()) {
            lines.push(format!("**{label}:** {}", inert(v, 300)));
        }
    };
    field("Template", &r.template);
    field("Config family", &r.config_family);
    field("Config file", &r.config_file);
    field("Migration style", &r.migration_style);
    field("Integration plugin", &r.integration_plugin);
    field("Scope", &r.scope_description);
    if let Some(c) = m.counts {
        lines.push(format!(
            "**Tests:** {} · passed {} · failed {} · pending {} · skipped {}",
            c.tests, c.passed, c.failed, c.pending, c.skipped
        ));
    }
    if let Some(d) = &m.duration {
        lines.push(format!("**Duration:** {}", inert(d, 40)));
    }
    if !m.vms.is_empty() {
        let vms: Vec<String> = m
            .vms
            .iter()
            .map(|vm| {
                let detail: Vec<&str> = [vm.os.as_deref(), vm.address.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                if detail.is_empty() {
                    inert(&vm.name, 80)
                } else {
                    format!(
                        "{} ({})",
                        inert(&vm.name, 80),
                        inert(&detail.join(", "), 120)
                    )
                }
            })
            .collect();
        lines.push(format!("**VMs:** {}", vms.join(", ")));
    }
    if let Some(url) = m.run_url {
        lines.push(format!("**Run:** {}", link(url)));
    }
    if !m.failures.is_empty() {
        lines.push("**Failed tests:**".to_string());
        for f in m.failures.iter().take(MAX_FAILURES_SHOWN) {
            let mut item = format!("- {} › {}", inert(&f.spec, 200), inert(&f.full_title, 300));
            if !f.error.is_empty() {
                item.push_str(&format!(" — {}", inert(&f.error, 300)));
            }
            lines.push(item);
        }
        let shown = m.failures.len().min(MAX_FAILURES_SHOWN);
        let more = m.failures_total.max(m.failures.len()) - shown;
        if more > 0 {
            lines.push(format!("and {more} more"));
        }
    }
    cap(lines.join("\n"))
}

/// The labelled message `atvm-run-watcher --test-post` sends.
pub fn test_message(host: &str) -> String {
    cap(format!(
        ":test_tube: **ATVM watcher test message** from {} — the webhook configuration works. No run was watched.",
        inert(host, 100)
    ))
}

fn cap(text: String) -> String {
    if text.chars().count() <= MAX_TEXT {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_TEXT - 20).collect();
    cut.push_str("\n…(truncated)");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_and_markdown_are_neutralised() {
        let t = inert(
            "@channel look at *this* [link](http://x) @here_team @all",
            1000,
        );
        assert!(
            !t.contains("@channel") && !t.contains("@here") && !t.contains("@all"),
            "{t}"
        );
        assert!(t.contains("\\*this\\*") && t.contains("\\[link\\]"), "{t}");
        assert_eq!(inert("a\nb\tc", 100), "a b c");
        assert_eq!(inert("abcdef", 3), "abc…");
        assert_eq!(inert("user@ example", 100), "user@ example");
    }

    #[test]
    fn the_text_is_capped_below_mattermosts_limit() {
        let capped = cap("x".repeat(40_000));
        assert!(capped.chars().count() <= MAX_TEXT && capped.ends_with("…(truncated)"));
        assert_eq!(cap("short".into()), "short");
    }

    #[test]
    fn ten_failures_then_and_n_more() {
        let failures: Vec<FailedTest> = (0..14)
            .map(|i| FailedTest {
                spec: "a.cy.js".into(),
                full_title: format!("test {i}"),
                error: "boom".into(),
            })
            .collect();
        let request = Request::default();
        let text = render(&Message {
            state: RunState::Failed,
            build: "b",
            group: None,
            reason: "",
            request: &request,
            counts: None,
            duration: None,
            vms: vec![],
            run_url: None,
            failures: &failures,
            failures_total: 20,
        });
        assert!(
            text.contains("test 9") && !text.contains("test 10"),
            "{text}"
        );
        assert!(text.ends_with("and 10 more"), "{text}");
    }

    #[test]
    fn only_plain_http_urls_become_links() {
        assert_eq!(
            link("https://cloud.cypress.io/runs/1"),
            "[cloud.cypress.io/runs/1](https://cloud.cypress.io/runs/1)"
        );
        assert!(!link("javascript:alert(1)").contains("]("));
        assert!(!link("https://x/a)(b").contains("]("));
    }
}
