//! What a result message says (docs/watcher-service.md): the [`Payload`] posted to the webhook, built by
//! [`Payload::build`] from a borrowed [`Message`] as a Mattermost message attachment (the shape
//! GitLab's and Flux's notifications use), or with `MATTERMOST_ATVM_FORMAT=text` as one
//! Markdown message with the same content for servers that render attachments badly.
//!
//! The payload is plain data (`Serialize + Deserialize + PartialEq`) so the watcher can keep
//! the exact body it is about to send and a restarted watcher posts the same bytes.
//!
//! # Inert text
//! Everything that came from logs, reports, request options, the inventory or the host (build,
//! group, reason, option values, VMs, failed tests, host name, run id) is untrusted: it must
//! not notify anyone, format, link or turn into emoji, and it must stay copyable, so no
//! invisible characters are ever inserted (`localhost:8080` and pasted paths survive as they
//! are). First every piece becomes one line (control characters and line or bidi separators
//! become spaces) and is cut to its size. Then, per field:
//! - **Markdown** (top-level `text`, the attachment's `text`, field values, the whole text
//!   format): each untrusted piece is an inline code span whose backtick fence is one longer
//!   than the longest backtick run inside it. Inside code the web app renders no Markdown,
//!   autolinks nothing, shows no emoji and highlights no mention, and the server's mention
//!   parser skips code nodes, so nobody is notified.
//! - **Plain text** (`fallback`, `footer`, and `title` when it has a `title_link`): Mattermost
//!   shows these as text and does not look for mentions in them today; still, an `@` that
//!   starts a word becomes the full-width `＠` there, so `@channel` reads the same and can
//!   never notify, whatever a client or a future server does with those fields. That is a
//!   visible character, and an `@` inside a word, a URL or a path (`qa@example.com`,
//!   `http://h/@x`) is left alone; nothing else changes.
//! - A **`title` without a link** is still run through Markdown, emoji, hashtag and e-mail
//!   linking by the web app and cannot hold code: there build and group keep letters, digits,
//!   spaces and `._-+,/=`; anything else becomes a space, and `www.` loses its dot.
//!
//! Our own labels, counts, durations and timestamps are plain. The run URL becomes a link
//! (`title_link`, or `[…](url)` in the text format) only when it is a plain http(s) URL
//! without characters Markdown could misread.
//!
//! # Budgets
//! Mattermost refuses posts over 16,383 characters; the whole serialized payload stays under
//! [`MAX_PAYLOAD`]. Every section has its own budget, counted in characters of its JSON string
//! (a `"` costs two), so a 200,000-row inventory or a 100 KB reason can never push the failed
//! tests out: summary and fallback 700 each, title 400, footer 450, each option 300, the VMs
//! 2,000 (at most [`MAX_VMS_SHOWN`], then "and N more"), the failed tests 6,600 shared
//! between at most [`MAX_FAILURES_SHOWN`] entries (each with its new/again mark), then "and
//! N more", the flaky tests and the fixed ones 800 each, the mention 200. The text format
//! (`MATTERMOST_ATVM_FORMAT=text`) is one post on the oldest servers too: its whole text
//! stays within [`MAX_TEXT`] (4,000) characters, with smaller budgets, and gives up the VMs
//! and then the options before anything that says what happened.
//!
//! The parts that compare with earlier runs, name flaky tests, the log and the owner are in
//! [`sections`].

use crate::config::Format;
use crate::history::{Failure, Mark};
use crate::inventory::Vm;
use crate::reporter::{FailedTest, FlakyTest};
use crate::state::{Counts, Request, RunState};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

pub const USERNAME: &str = "atvm-watcher";
/// Upper bound of the serialized payload, in characters (Mattermost's limit is 16,383).
pub const MAX_PAYLOAD: usize = 15_900;
/// Failed tests listed in a message.
pub const MAX_FAILURES_SHOWN: usize = 10;
/// VMs listed in a message.
pub const MAX_VMS_SHOWN: usize = 20;

const GREEN: &str = "#2E7D32";
const RED: &str = "#C62828";
const GREY: &str = "#757575";
const BLUE: &str = "#1565C0";

/// The text format's whole text, in characters: the oldest servers' post size, over which
/// Mattermost splits a message into several posts (and still answers one `ok`).
pub const MAX_TEXT: usize = 4_000;

/// Section budgets in JSON characters (see the module doc), one set per format. The
/// attachment's add up to less than [`MAX_PAYLOAD`] with room for the keys, the username
/// and a channel name; the text format's to about [`MAX_TEXT`], and what is over is taken
/// from the VMs and the options, never from the failed tests.
#[derive(Debug)]
struct Budgets {
    summary: usize,
    title: usize,
    footer: usize,
    option: usize,
    vms: usize,
    failures: usize,
    /// The Flaky field, and the line naming the tests fixed since the last run, each.
    names: usize,
    /// The mention before the summary (FAILED only).
    mention: usize,
}

const ATTACHMENT: Budgets = Budgets {
    summary: 700,
    title: 400,
    footer: 450,
    option: 300,
    vms: 2_000,
    failures: 6_600,
    names: 800,
    mention: 200,
};

const TEXT: Budgets = Budgets {
    summary: 400,
    title: 0,
    footer: 300,
    option: 120,
    vms: 500,
    failures: 1_500,
    names: 300,
    mention: 120,
};
// A mention is never cut (a partial owner list would mislead): what the configuration
// takes, every format carries whole.
const _: () = assert!(
    TEXT.mention >= crate::config::MENTION_MAX && ATTACHMENT.mention >= crate::config::MENTION_MAX
);

const URL_MAX: usize = 600;
/// Mattermost channel names are at most 64 characters.
const CHANNEL_MAX: usize = 64;

// Sizes of single pieces, in characters, before any formatting.
const BUILD_MAX: usize = 128;
const GROUP_MAX: usize = 80;
const REASON_MAX: usize = 300;
const OPTION_MAX: usize = 200;
const VM_NAME_MAX: usize = 60;
const VM_DETAIL_MAX: usize = 100;
const SPEC_MAX: usize = 150;
const TEST_TITLE_MAX: usize = 250;
const ERROR_MAX: usize = 250;
const HOST_MAX: usize = 64;
const RUN_ID_MAX: usize = 80;

/// The JSON body posted to the webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    pub username: String,
    /// A one-line summary (attachment format) or the whole message (text format).
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A Mattermost message attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Plain one-line summary for notifications and clients without attachments.
    pub fallback: String,
    pub color: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title_link: Option<String>,
    /// Markdown: the failed tests.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    pub footer: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub title: String,
    /// Markdown.
    pub value: String,
    pub short: bool,
}

/// Everything a result message shows, borrowed from the watcher.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    pub state: RunState,
    pub build: &'a str,
    /// Set for a categorized sub-run.
    pub group: Option<&'a str>,
    pub reason: &'a str,
    /// The start options; its `run_id` goes in the footer, so a duplicate post (docs/watcher-service.md's
    /// one at-least-once window) is recognisable.
    pub request: &'a Request,
    pub counts: Option<Counts>,
    pub duration: Option<String>,
    pub vms: Vec<&'a Vm>,
    pub run_url: Option<&'a str>,
    /// At most [`MAX_FAILURES_SHOWN`] are shown.
    pub failures: &'a [FailedTest],
    /// All failed tests known, including those not in `failures`.
    pub failures_total: usize,
    /// The controller's name ([`host_name`]).
    pub host: &'a str,
    /// When the run (or sub-run) started and ended, where known.
    pub started: Option<Timestamp>,
    pub ended: Option<Timestamp>,
    /// The run log's path: the footer names `host:<path>` (never its content).
    pub log: Option<&'a str>,
    /// Tests that passed only on a retry, the first few named; all of them counted.
    pub flaky: Vec<FlakyTest>,
    pub flaky_total: usize,
    /// How this result compares with the earlier runs of the build name (or group).
    pub trend: Option<&'a Trend>,
    /// `MATTERMOST_ATVM_MENTION`, already validated; named in FAILED posts only.
    pub mention: Option<&'a str>,
}

impl Payload {
    /// The payload for a result, in the configured format. `channel` is cut to Mattermost's
    /// 64-character limit for channel names.
    pub fn build(m: &Message, channel: Option<&str>, format: Format) -> Payload {
        let content = Content::new(m, format);
        let mut payload = match format {
            Format::Attachment => content.attachment(),
            Format::Text => content.markdown(),
        };
        payload.channel = channel.map(|c| c.chars().take(CHANNEL_MAX).collect());
        payload.fit();
        payload
    }

    /// The labelled message `atvm-run-watcher --test-post` sends.
    pub fn test(host: &str, channel: Option<&str>, format: Format) -> Payload {
        let host = clean(host, HOST_MAX);
        let label = "ATVM watcher test message";
        let works = "the webhook configuration works. No run was watched.";
        let now = short_time(Timestamp::now());
        let mut payload = match format {
            Format::Attachment => Payload {
                channel: None,
                username: USERNAME.to_string(),
                text: format!("{label} from {}", code(&host)),
                attachments: vec![Attachment {
                    fallback: format!("{label} from {host}: {works}"),
                    color: BLUE.to_string(),
                    title: label.to_string(),
                    title_link: None,
                    text: format!("Sent by `atvm-run-watcher --test-post`: {works}"),
                    fields: Vec::new(),
                    footer: format!("{host} · {now}"),
                }],
            },
            Format::Text => Payload {
                channel: None,
                username: USERNAME.to_string(),
                text: format!(":test_tube: **{label}** from {} — {works}", code(&host)),
                attachments: Vec::new(),
            },
        };
        payload.channel = channel.map(|c| c.chars().take(CHANNEL_MAX).collect());
        payload
    }

    pub fn to_json(&self) -> String {
        // Serialising strings, booleans and vectors of them cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Last line of defence for the size limit: the section budgets already keep every
    /// payload below it, but should they not, long fields go first (the VMs, then the
    /// options), never the failed tests.
    fn fit(&mut self) {
        while self.to_json().chars().count() >= MAX_PAYLOAD {
            match self.attachments.first_mut() {
                Some(a) if !a.fields.is_empty() => {
                    a.fields.pop();
                }
                Some(a) if !a.text.is_empty() => a.text = fit(&a.text, json_len(&a.text) / 2),
                _ if !self.text.is_empty() => self.text = fit(&self.text, json_len(&self.text) / 2),
                _ => break,
            }
        }
    }
}

/// The controller's host name, from `uname(2)` (the hardened unit hides `/proc/sys`).
pub fn host_name() -> String {
    // SAFETY: `utsname` is plain bytes, so all-zero is a valid value; uname(2) fills it and
    // NUL-terminates `nodename` on success; we read nothing if it fails.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown-host".to_string();
    }
    let bytes: Vec<u8> = uts
        .nodename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let name = String::from_utf8_lossy(&bytes).trim().to_string();
    if name.is_empty() {
        "unknown-host".to_string()
    } else {
        name
    }
}

mod sections;

pub use sections::{FLAKY_NAMED, Trend};

/// A message's pieces, each one clean line cut to its size, not yet formatted for a field.
#[derive(Debug)]
struct Content {
    b: &'static Budgets,
    extra: sections::Extra,
    state: RunState,
    build: String,
    group: Option<String>,
    reason: String,
    counts: Option<Counts>,
    duration: Option<String>,
    /// (label, value) of the request options that are set.
    options: Vec<(&'static str, String)>,
    vms: Vec<String>,
    vms_total: usize,
    run_url: Option<String>,
    failures: Vec<String>,
    failures_total: usize,
    host: String,
    run_id: String,
    started: Option<Timestamp>,
    ended: Option<Timestamp>,
}

impl Content {
    fn new(m: &Message, format: Format) -> Content {
        let r = m.request;
        let options = [
            ("Template", &r.template),
            ("Config family", &r.config_family),
            ("Config file", &r.config_file),
            ("Migration style", &r.migration_style),
            ("Integration plugin", &r.integration_plugin),
            ("Scope", &r.scope_description),
        ]
        .into_iter()
        .filter_map(|(label, value)| {
            let v = clean(value.as_deref()?, OPTION_MAX);
            (!v.is_empty()).then_some((label, v))
        })
        .collect();
        let vms = m
            .vms
            .iter()
            .take(MAX_VMS_SHOWN)
            .map(|vm| {
                let detail: Vec<&str> = [vm.os.as_deref(), vm.address.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                let name = clean(&vm.name, VM_NAME_MAX);
                if detail.is_empty() {
                    name
                } else {
                    format!("{name} ({})", clean(&detail.join(", "), VM_DETAIL_MAX))
                }
            })
            .collect();
        let failures = m
            .failures
            .iter()
            .take(MAX_FAILURES_SHOWN)
            .map(|f| {
                let mut item = format!(
                    "{} › {}",
                    clean(&f.spec, SPEC_MAX),
                    clean(&f.full_title, TEST_TITLE_MAX)
                );
                let error = clean(f.error.lines().next().unwrap_or(""), ERROR_MAX);
                if !error.is_empty() {
                    item.push_str(" — ");
                    item.push_str(&error);
                }
                item
            })
            .collect();
        Content {
            b: match format {
                Format::Attachment => &ATTACHMENT,
                Format::Text => &TEXT,
            },
            extra: sections::Extra::new(m),
            state: m.state,
            build: clean(m.build, BUILD_MAX),
            group: m
                .group
                .map(|g| clean(g, GROUP_MAX))
                .filter(|g| !g.is_empty()),
            reason: clean(m.reason, REASON_MAX),
            counts: m.counts,
            duration: m.duration.as_deref().map(|d| clean(d, 40)),
            options,
            vms,
            vms_total: m.vms.len(),
            run_url: m.run_url.and_then(link_target),
            failures,
            failures_total: m.failures_total.max(m.failures.len()),
            host: clean(m.host, HOST_MAX),
            run_id: clean(&m.request.run_id, RUN_ID_MAX),
            started: m.started,
            ended: m.ended,
        }
    }

    fn color(&self) -> &'static str {
        match self.state {
            RunState::Completed => GREEN,
            RunState::Failed => RED,
            _ => GREY,
        }
    }

    /// `FAILED · build … · group … · reason`, plain.
    fn plain_summary(&self) -> String {
        let mut s = format!("{} · build {}", self.state, self.build);
        if let Some(g) = &self.group {
            s.push_str(&format!(" · group {g}"));
        }
        s.push_str(&self.flaky_note());
        if !self.reason.is_empty() {
            s.push_str(&format!(" · {}", self.reason));
        }
        fit(&unmention(&s), self.b.summary)
    }

    /// The same line with every untrusted piece in code, for a Markdown field. `lead` is our
    /// own decoration of the state.
    fn markdown_summary(&self, lead: &str) -> String {
        let mut s = format!("{lead} · build {}", code_fit(&self.build, 200));
        if let Some(g) = &self.group {
            s.push_str(&format!(" · group {}", code_fit(g, 200)));
        }
        s.push_str(&self.flaky_note());
        if !self.reason.is_empty() {
            let room = self.b.summary.saturating_sub(json_len(&s) + 3);
            let reason = code_fit(&self.reason, room);
            if !reason.is_empty() {
                s.push_str(&format!(" · {reason}"));
            }
        }
        s
    }

    fn title(&self) -> String {
        let linked = self.run_url.is_some();
        let shown = |text: &str| {
            if linked {
                text.to_string()
            } else {
                unlinked_title(text)
            }
        };
        let mut s = format!("{} · {}", self.state, shown(&self.build));
        if let Some(g) = &self.group {
            s.push_str(&format!(" · {}", shown(g)));
        }
        fit(&unmention(&s), self.b.title)
    }

    /// ` · start → end`, or what is known of it.
    fn times(&self) -> String {
        match (self.started, self.ended) {
            (Some(a), Some(b)) => format!(" · {} → {}", short_time(a), short_time(b)),
            (Some(a), None) => format!(" · started {}", short_time(a)),
            (None, Some(b)) => format!(" · ended {}", short_time(b)),
            (None, None) => String::new(),
        }
    }

    /// `host:/tmp/B.log · run <id> · start → end` (`host` alone when the log is not known).
    fn footer(&self) -> String {
        let place = self.log_place().unwrap_or_else(|| self.host.clone());
        let footer = format!("{place} · run {}{}", self.run_id, self.times());
        fit(&unmention(&footer), self.b.footer)
    }

    fn tests_value(&self) -> Option<String> {
        self.counts.map(|c| {
            format!(
                "{} · passed {} · failed {} · pending {} · skipped {}",
                c.tests, c.passed, c.failed, c.pending, c.skipped
            )
        })
    }

    /// (label, Markdown value) of every short field that is known.
    fn short_fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(t) = self.tests_value() {
            out.push(("Tests", t));
        }
        if let Some(d) = self.duration_value() {
            out.push(("Duration", d));
        }
        if let Some(l) = self.last_runs() {
            out.push(("Last runs", l));
        }
        for (label, value) in &self.options {
            out.push((*label, code_fit(value, self.b.option)));
        }
        out
    }

    /// The VMs as code spans within their budget, then "and N more".
    fn vms_value(&self) -> Option<String> {
        if self.vms_total == 0 {
            return None;
        }
        let reserve = 40; // ", and 200000 more"
        let mut shown: Vec<String> = Vec::new();
        let mut used = 0;
        for vm in &self.vms {
            let span = code_fit(vm, 200);
            let cost = json_len(&span) + 2;
            if span.is_empty() || used + cost > self.b.vms - reserve {
                break;
            }
            used += cost;
            shown.push(span);
        }
        let mut value = shown.join(", ");
        let more = self.vms_total - shown.len();
        if more > 0 {
            if !value.is_empty() {
                value.push_str(", ");
            }
            value.push_str(&format!("and {more} more"));
        }
        Some(value)
    }

    /// The failed tests as a Markdown list, each entry with an equal share of the budget.
    fn failures_markdown(&self) -> String {
        if self.failures.is_empty() {
            return String::new();
        }
        let heading = "**Failed tests:**";
        let reserve = json_len(heading) + 40; // heading and "\nand 1234567 more"
        let share = (self.b.failures - reserve) / self.failures.len();
        let mut lines = vec![heading.to_string()];
        for (i, f) in self.failures.iter().enumerate() {
            // "- ", the mark and the line break cost their JSON characters.
            let mark = self.mark(i);
            let room = share.saturating_sub(4 + json_len(&mark));
            lines.push(format!("- {mark}{}", code_fit(f, room)));
        }
        let more = self.failures_total.saturating_sub(self.failures.len());
        if more > 0 {
            // After a blank line: right after the list it would read as part of its last
            // entry (a lazy continuation line).
            lines.push(String::new());
            lines.push(format!("and {more} more"));
        }
        lines.join("\n")
    }

    fn attachment(&self) -> Payload {
        let mut fields: Vec<Field> = self
            .short_fields()
            .into_iter()
            .map(|(title, value)| Field {
                title: title.to_string(),
                value,
                short: true,
            })
            .collect();
        let long = [("Flaky", self.flaky_value()), ("VMs", self.vms_value())];
        for (title, value) in long {
            if let Some(value) = value {
                fields.push(Field {
                    title: title.to_string(),
                    value,
                    short: false,
                });
            }
        }
        Payload {
            channel: None,
            username: USERNAME.to_string(),
            text: format!(
                "{}{}",
                self.mention(),
                self.markdown_summary(self.state.as_str())
            ),
            attachments: vec![Attachment {
                fallback: self.plain_summary(),
                color: self.color().to_string(),
                title: self.title(),
                title_link: self.run_url.clone(),
                text: self.results_markdown(),
                fields,
                footer: self.footer(),
            }],
        }
    }

    /// The failed tests, then (after a blank line) the tests fixed since the last run or
    /// the note that this is the first.
    fn results_markdown(&self) -> String {
        let parts: Vec<String> = [Some(self.failures_markdown()), self.since_last()]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .collect();
        parts.join("\n\n")
    }

    /// The text format: one Markdown message, the same content line by line.
    fn markdown(&self) -> Payload {
        let emoji = match self.state {
            RunState::Completed => ":white_check_mark:",
            RunState::Failed => ":x:",
            _ => ":warning:",
        };
        let summary = self.markdown_summary(&format!("{emoji} **{}**", self.state));
        let head = format!("{}{summary}", self.mention());
        // Lines in the order they are given up when the text is over MAX_TEXT: the VMs,
        // then the options, before anything that says what happened.
        let mut optional: Vec<String> = Vec::new();
        let mut lines = vec![head];
        for (label, value) in self.short_fields() {
            let line = format!("**{label}:** {value}");
            match matches!(label, "Tests" | "Duration" | "Last runs") {
                true => lines.push(line),
                false => optional.push(line),
            }
        }
        if let Some(flaky) = self.flaky_value() {
            lines.push(format!("**Flaky:** {flaky}"));
        }
        if let Some(url) = &self.run_url {
            let shown = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
            lines.push(format!("**Run:** [{}]({url})", code_fit(shown, 200)));
        }
        if let Some(vms) = self.vms_value() {
            optional.push(format!("**VMs:** {vms}"));
        }
        let results = self.results_markdown();
        let place = self.log_place().unwrap_or_else(|| self.host.clone());
        let footer = format!(
            "{} · run {}{}",
            code_fit(&place, self.b.footer - 140),
            code_fit(&self.run_id, 120),
            self.times()
        );
        let text = fit_text(lines, optional, &results, &footer);
        Payload {
            channel: None,
            username: USERNAME.to_string(),
            text,
            attachments: Vec::new(),
        }
    }
}

/// The text format's message within [`MAX_TEXT`] characters: `lines`, the `optional`
/// ones that fit (dropped from the last), the results and the footer. The budgets keep
/// the rest under the limit, so only VMs and options are ever given up; should it still
/// be over, the text is cut.
fn fit_text(lines: Vec<String>, mut optional: Vec<String>, results: &str, footer: &str) -> String {
    let join = |optional: &[String]| {
        let mut all = lines.clone();
        all.extend(optional.iter().cloned());
        all.extend(
            [results.to_string(), footer.to_string()]
                .into_iter()
                .filter(|l| !l.is_empty()),
        );
        all.join("\n")
    };
    let mut text = join(&optional);
    while text.chars().count() > MAX_TEXT && optional.pop().is_some() {
        text = join(&optional);
    }
    if text.chars().count() > MAX_TEXT {
        // Whole lines only: a line cut inside a code span would let what follows the cut
        // of the span out of it.
        let mut kept = String::new();
        for line in text.lines() {
            if kept.chars().count() + line.chars().count() + 2 > MAX_TEXT {
                break;
            }
            kept.push_str(line);
            kept.push('\n');
        }
        kept.push('…');
        text = kept;
    }
    text
}

/// One line of untrusted text, at most `max_chars` characters (then `…`): control
/// characters and line, paragraph and bidi separators become spaces. Reads no further than it
/// keeps, so a 100 KB reason costs nothing.
fn clean(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.trim_start().chars().enumerate() {
        if n == max_chars {
            let mut cut = out.trim_end().to_string();
            cut.push('…');
            return cut;
        }
        let blank = c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        out.push(if blank { ' ' } else { c });
    }
    out.trim_end().to_string()
}

/// Plain `text` in which no `@` starts a word (see the module doc): such an `@` becomes
/// `＠` (U+FF20), which no one's client treats as a mention.
fn unmention(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        // `:` too: the footer's `host:<log path>` puts one before a path that may start with
        // `@`.
        let word_start = prev.is_none_or(|p| p.is_whitespace() || "([{<\"',;:!?*_~>".contains(p));
        let names = chars.peek().is_some_and(|n| n.is_alphanumeric());
        out.push(if c == '@' && word_start && names {
            '＠'
        } else {
            c
        });
        prev = Some(c);
    }
    out
}

/// Characters `c` takes inside a JSON string.
fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        _ => 1,
    }
}

/// Characters `text` takes inside a JSON string (without the quotes).
fn json_len(text: &str) -> usize {
    text.chars().map(json_char_len).sum()
}

/// `text` cut so that its JSON form takes at most `budget` characters, with `…` when cut.
fn fit(text: &str, budget: usize) -> String {
    if json_len(text) <= budget {
        return text.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let cost = json_char_len(c);
        if used + cost + 1 > budget {
            break;
        }
        used += cost;
        out.push(c);
    }
    if budget > 0 {
        out.push('…');
    }
    out
}

/// `text` as an inline code span: a fence one backtick longer than the longest run inside,
/// padded with a space when the text starts or ends with a backtick. Empty text stays empty.
fn code(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{text}{pad}{fence}")
}

/// A code span of `text`, cut so the span's JSON form takes at most `budget` characters
/// (empty when not even `…` fits).
fn code_fit(text: &str, budget: usize) -> String {
    let mut keep = budget;
    loop {
        let span = code(&fit(text, keep));
        let len = json_len(&span);
        if len <= budget {
            return span;
        }
        if keep == 0 {
            return String::new();
        }
        keep = keep.saturating_sub(len - budget).min(keep - 1);
    }
}

/// The group as it may appear in a title without a link (see the module doc).
fn unlinked_title(text: &str) -> String {
    let kept: String = text
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, ' ' | '.' | '-' | '_' | '+' | ',' | '/' | '=') {
                c
            } else {
                ' '
            }
        })
        .collect();
    let mut out = String::with_capacity(kept.len());
    let mut rest = kept.as_str();
    // "www." autolinks even without a scheme.
    while let Some(i) = rest.to_ascii_lowercase().find("www.") {
        out.push_str(&rest[..i + 3]);
        out.push(' ');
        rest = &rest[i + 4..];
    }
    out.push_str(rest);
    out
}

/// The run URL when it is safe as a link target: http(s), bounded, and nothing Markdown or
/// the attachment renderer could misread.
fn link_target(url: &str) -> Option<String> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))?;
    let safe = !rest.is_empty()
        && !rest.starts_with('/')
        && url.len() <= URL_MAX
        && !url.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(
                    c,
                    '(' | ')' | '<' | '>' | '[' | ']' | '`' | '"' | '\'' | '\\' | '{' | '}' | '|'
                )
        });
    safe.then(|| url.to_string())
}

/// `2026-11-24T19:51:47Z`: seconds are enough in a footer.
fn short_time(t: Timestamp) -> String {
    let s = t.to_string();
    match s.split_once('.') {
        Some((secs, _)) => format!("{secs}Z"),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Owned inputs a test can borrow a [`Message`] from.
    struct Input {
        request: Request,
        vms: Vec<Vm>,
        failures: Vec<FailedTest>,
        reason: String,
        group: Option<String>,
        run_url: Option<String>,
        flaky: Vec<FlakyTest>,
        trend: Option<Trend>,
        log: Option<String>,
        mention: Option<String>,
    }

    fn input() -> Input {
        Input {
            request: Request {
                run_id: "run-42".into(),
                template: Some("migration".into()),
                config_family: Some("redhat".into()),
                ..Request::default()
            },
            vms: vec![Vm {
                name: "atvm-rh96-01".into(),
                os: Some("redhat9.6".into()),
                address: Some("192.0.2.11".into()),
                aliases: vec![],
            }],
            failures: vec![FailedTest {
                spec: "cypress/e2e/login.cy.js".into(),
                full_title: "Login rejects a bad password".into(),
                error: "AssertionError: expected the error banner\nsecond line".into(),
            }],
            reason: "runner exited with code 2; 2 of 20 specs failed".into(),
            group: None,
            run_url: Some("https://cloud.cypress.io/projects/x7k2pq/runs/1842".into()),
            flaky: Vec::new(),
            trend: None,
            log: None,
            mention: None,
        }
    }

    fn message(i: &Input) -> Message<'_> {
        Message {
            state: RunState::Failed,
            build: "e2e-redhat9.6-ubuntu24.04-w2k25-fc",
            group: i.group.as_deref(),
            reason: &i.reason,
            request: &i.request,
            counts: Some(Counts {
                tests: 20,
                passed: 18,
                failed: 2,
                pending: 0,
                skipped: 0,
            }),
            duration: Some("3m 12s".into()),
            vms: i.vms.iter().collect(),
            run_url: i.run_url.as_deref(),
            failures: &i.failures,
            failures_total: 2,
            host: "qa-controller-1",
            started: Timestamp::parse("2026-11-24T19:51:47.919Z"),
            ended: Timestamp::parse("2026-11-24T19:55:00.000Z"),
            log: i.log.as_deref(),
            flaky: i.flaky.clone(),
            flaky_total: i.flaky.len(),
            trend: i.trend.as_ref(),
            mention: i.mention.as_deref(),
        }
    }

    fn json_of(p: &Payload) -> Value {
        serde_json::from_str(&p.to_json()).expect("json")
    }

    /// A Markdown string with its code spans (CommonMark: a backtick run closed by the next
    /// run of the same length) removed: what Mattermost would format.
    fn outside_code(md: &str) -> String {
        let chars: Vec<char> = md.chars().collect();
        let run_at = |i: usize| chars[i..].iter().take_while(|&&c| c == '`').count();
        let mut out = String::new();
        let mut i = 0;
        'scan: while i < chars.len() {
            if chars[i] != '`' {
                out.push(chars[i]);
                i += 1;
                continue;
            }
            let n = run_at(i);
            let mut j = i + n;
            while j < chars.len() {
                if chars[j] == '`' {
                    let m = run_at(j);
                    if m == n {
                        i = j + m;
                        out.push(' ');
                        continue 'scan;
                    }
                    j += m;
                } else {
                    j += 1;
                }
            }
            // An unclosed run is literal text.
            out.extend(&chars[i..i + n]);
            i += n;
        }
        out
    }

    /// Every Markdown part of a payload.
    fn markdown_parts(p: &Payload) -> Vec<String> {
        let mut parts = vec![p.text.clone()];
        for a in &p.attachments {
            parts.push(a.text.clone());
            parts.extend(a.fields.iter().map(|f| f.value.clone()));
        }
        parts
    }

    const INVISIBLE: [char; 6] = [
        '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{00AD}',
    ];

    #[test]
    fn a_result_is_a_message_attachment() {
        let i = input();
        let p = Payload::build(&message(&i), Some("qa-results"), Format::Attachment);
        let v = json_of(&p);
        assert_eq!(v["username"], "atvm-watcher");
        assert_eq!(v["channel"], "qa-results");
        assert_eq!(
            v["text"],
            "FAILED · build `e2e-redhat9.6-ubuntu24.04-w2k25-fc` · \
             `runner exited with code 2; 2 of 20 specs failed`"
        );
        let a = &v["attachments"][0];
        assert_eq!(
            a["fallback"],
            "FAILED · build e2e-redhat9.6-ubuntu24.04-w2k25-fc · \
             runner exited with code 2; 2 of 20 specs failed"
        );
        assert_eq!(a["color"], RED);
        assert_eq!(a["title"], "FAILED · e2e-redhat9.6-ubuntu24.04-w2k25-fc");
        assert_eq!(
            a["title_link"],
            "https://cloud.cypress.io/projects/x7k2pq/runs/1842"
        );
        assert_eq!(
            a["text"],
            "**Failed tests:**\n- `cypress/e2e/login.cy.js › Login rejects a bad password — \
             AssertionError: expected the error banner`\n\nand 1 more"
        );
        assert_eq!(
            a["fields"],
            json!([
                {"title": "Tests", "value": "20 · passed 18 · failed 2 · pending 0 · skipped 0", "short": true},
                {"title": "Duration", "value": "3m 12s", "short": true},
                {"title": "Template", "value": "`migration`", "short": true},
                {"title": "Config family", "value": "`redhat`", "short": true},
                {"title": "VMs", "value": "`atvm-rh96-01 (redhat9.6, 192.0.2.11)`", "short": false},
            ])
        );
        assert_eq!(
            a["footer"],
            "qa-controller-1 · run run-42 · 2026-11-24T19:51:47Z → 2026-11-24T19:55:00Z"
        );
        let keys: Vec<&String> = a.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 7, "{keys:?}");
    }

    /// A run with a history: two failed tests (one new, one again), one fixed, a flaky one.
    fn with_history() -> Input {
        let mut i = input();
        i.failures.push(FailedTest {
            spec: "cypress/e2e/cart.cy.js".into(),
            full_title: "Cart keeps the basket".into(),
            error: "expected 2 items".into(),
        });
        i.flaky = vec![FlakyTest {
            spec: "cypress/e2e/checkout.cy.js".into(),
            title: "sends the receipt".into(),
        }];
        i.trend = Some(Trend {
            marks: vec![Mark::New, Mark::Again(3)],
            fixed: vec![Failure {
                spec: "cypress/e2e/search.cy.js".into(),
                test: Some("Search finds a product".into()),
                streak: 1,
            }],
            fixed_total: 1,
            not_compared: 0,
            first: false,
            duration_change: Some("+12% vs 2026-12-04".into()),
            last_runs: Some("✔✖✖ ▂▇▃".into()),
        });
        i.log = Some("/tmp/e2e-redhat9.6-ubuntu24.04-w2k25-fc.log".into());
        i.mention = Some("@qa-oncall @jdoe".into());
        i
    }

    #[test]
    fn a_post_says_what_is_new_what_fails_again_what_is_fixed_and_what_is_flaky() {
        let i = with_history();
        let p = Payload::build(&message(&i), None, Format::Attachment);
        assert!(
            p.text.starts_with("@qa-oncall @jdoe FAILED · build "),
            "{}",
            p.text
        );
        assert_eq!(
            p.text.matches('@').count(),
            2,
            "the one mention: {}",
            p.text
        );
        let a = &p.attachments[0];
        assert!(a.fallback.contains(" · 1 flaky · "), "{}", a.fallback);
        assert!(
            a.text
                .contains("\n- **new** `cypress/e2e/login.cy.js › Login rejects")
                && a.text
                    .contains("\n- **again ×3** `cypress/e2e/cart.cy.js › Cart keeps"),
            "{}",
            a.text
        );
        assert!(
            a.text.ends_with(
                "**Fixed since the last run:** `cypress/e2e/search.cy.js › Search finds a product`"
            ),
            "{}",
            a.text
        );
        let field = |t: &str| {
            a.fields
                .iter()
                .find(|f| f.title == t)
                .map(|f| f.value.clone())
        };
        assert_eq!(
            field("Duration").as_deref(),
            Some("3m 12s, +12% vs 2026-12-04")
        );
        assert_eq!(field("Last runs").as_deref(), Some("✔✖✖ ▂▇▃"));
        assert_eq!(
            field("Flaky").as_deref(),
            Some("1: `cypress/e2e/checkout.cy.js › sends the receipt`")
        );
        assert!(
            a.footer.starts_with(
                "qa-controller-1:/tmp/e2e-redhat9.6-ubuntu24.04-w2k25-fc.log · run run-42 · "
            ),
            "{}",
            a.footer
        );
        let t = Payload::build(&message(&i), None, Format::Text).text;
        for expected in [
            "**Flaky:** 1: `cypress/e2e/checkout.cy.js › sends the receipt`",
            "**Last runs:** ✔✖✖ ▂▇▃",
            "- **again ×3** `cypress/e2e/cart.cy.js › Cart keeps the basket — expected 2 items`",
        ] {
            assert!(t.contains(expected), "{expected:?} missing from:\n{t}");
        }
        assert!(t.starts_with("@qa-oncall @jdoe :x: **FAILED**"), "{t}");
        assert!(
            t.contains("`qa-controller-1:/tmp/e2e-redhat9.6-ubuntu24.04-w2k25-fc.log` · run"),
            "{t}"
        );
    }

    #[test]
    fn after_a_cut_history_a_post_says_again_maybe_and_what_it_could_not_compare() {
        let mut i = with_history();
        let trend = i.trend.as_mut().expect("trend");
        trend.marks = vec![Mark::Unknown, Mark::Again(2)];
        trend.fixed_total = 100;
        trend.not_compared = 20;
        for format in [Format::Attachment, Format::Text] {
            let p = Payload::build(&message(&i), None, format);
            let text = match format {
                Format::Attachment => p.attachments[0].text.clone(),
                Format::Text => p.text.clone(),
            };
            assert!(
                text.contains("- **again?** `cypress/e2e/login.cy.js › Login rejects"),
                "{format:?}: {text}"
            );
            assert!(
                text.contains("**Fixed since the last run:** `cypress/e2e/search.cy.js › Search finds a product`, and 99 more; 20 more failed tests of the last run were not kept (the history keeps 100), so not compared"),
                "{format:?}: {text}"
            );
        }
        // None of the kept failures passes: still said, with what is not known.
        i.trend.as_mut().expect("trend").fixed = Vec::new();
        i.trend.as_mut().expect("trend").fixed_total = 0;
        let p = Payload::build(&message(&i), None, Format::Attachment);
        assert!(
            p.attachments[0].text.ends_with("**Fixed since the last run:** none of the 100 kept; 20 more failed tests of the last run were not kept (the history keeps 100), so not compared"),
            "{}",
            p.attachments[0].text
        );
    }

    #[test]
    fn only_a_failure_names_the_owner_and_a_first_run_says_so() {
        let mut i = with_history();
        i.trend = Some(Trend {
            first: true,
            ..Trend::default()
        });
        i.failures.clear();
        let mut m = message(&i);
        m.state = RunState::Completed;
        m.failures_total = 0;
        for format in [Format::Attachment, Format::Text] {
            let p = Payload::build(&m, None, format);
            assert!(!p.to_json().contains("@qa-oncall"), "{format:?}");
            assert!(
                p.to_json()
                    .contains("First finished run of this build name"),
                "{format:?}"
            );
        }
        let mut g = message(&i);
        g.group = Some("linux");
        let text = Payload::build(&g, None, Format::Attachment).attachments[0]
            .text
            .clone();
        assert_eq!(
            text,
            "First finished run of this group: nothing to compare with yet."
        );
    }

    #[test]
    fn colour_group_and_what_is_unknown() {
        let mut i = input();
        i.group = Some("ubuntu 24.04".into());
        i.run_url = None;
        i.request.template = None;
        i.request.config_family = Some("  ".into());
        i.vms.clear();
        i.failures.clear();
        let mut m = message(&i);
        m.state = RunState::Completed;
        m.counts = None;
        m.duration = None;
        m.failures_total = 0;
        m.started = None;
        let p = Payload::build(&m, None, Format::Attachment);
        let v = json_of(&p);
        assert!(v.get("channel").is_none(), "channel omitted when unset");
        let a = &v["attachments"][0];
        assert_eq!(a["color"], GREEN);
        assert_eq!(
            a["title"],
            "COMPLETED · e2e-redhat9.6-ubuntu24.04-w2k25-fc · ubuntu 24.04"
        );
        assert!(a.get("title_link").is_none());
        assert!(a.get("text").is_none(), "no failures, no text");
        assert!(a.get("fields").is_none(), "nothing known, no fields: {a}");
        assert_eq!(
            a["footer"],
            "qa-controller-1 · run run-42 · ended 2026-11-24T19:55:00Z"
        );
        assert!(p.text.contains(" · group `ubuntu 24.04` · "), "{}", p.text);
    }

    #[test]
    fn the_payload_round_trips_through_json() {
        let i = input();
        for format in [Format::Attachment, Format::Text] {
            let p = Payload::build(&message(&i), Some("qa"), format);
            let back: Payload = serde_json::from_str(&p.to_json()).expect("parse");
            assert_eq!(back, p);
            assert_eq!(back.to_json(), p.to_json(), "identical bytes");
        }
    }

    #[test]
    fn the_text_format_is_one_markdown_message_with_the_same_content() {
        let i = input();
        let p = Payload::build(&message(&i), Some("qa"), Format::Text);
        let v = json_of(&p);
        assert!(v.get("attachments").is_none(), "{v}");
        assert_eq!(v["channel"], "qa");
        let text = &p.text;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            ":x: **FAILED** · build `e2e-redhat9.6-ubuntu24.04-w2k25-fc` · \
             `runner exited with code 2; 2 of 20 specs failed`"
        );
        for expected in [
            "**Tests:** 20 · passed 18 · failed 2 · pending 0 · skipped 0",
            "**Duration:** 3m 12s",
            "**Template:** `migration`",
            "**Config family:** `redhat`",
            "**VMs:** `atvm-rh96-01 (redhat9.6, 192.0.2.11)`",
            "**Run:** [`cloud.cypress.io/projects/x7k2pq/runs/1842`](https://cloud.cypress.io/projects/x7k2pq/runs/1842)",
            "**Failed tests:**",
            "- `cypress/e2e/login.cy.js › Login rejects a bad password — AssertionError: expected the error banner`",
            "and 1 more",
            "`qa-controller-1` · run `run-42` · 2026-11-24T19:51:47Z → 2026-11-24T19:55:00Z",
        ] {
            assert!(
                lines.contains(&expected),
                "{expected:?} missing from:\n{text}"
            );
        }
    }

    /// Untrusted text everywhere: options, group, reason, VMs, failures, host.
    fn hostile() -> Input {
        let evil = "@channel @all @here @jdoe **bold** _em_ [x](http://evil.example) \
                    <http://a.example> https://b.example www.c.example :smile: :+1: #tag ~town-square \
                    `tick` ``two`` | # > ! \\ \"q\" localhost:8080 /var/lib/x:y C:\\path\u{7}\r\n\t end";
        let mut i = input();
        i.reason = evil.to_string();
        i.group = Some(evil.to_string());
        i.request.template = Some(evil.to_string());
        i.request.scope_description = Some(evil.to_string());
        i.vms[0].name = evil.to_string();
        i.failures[0].spec = evil.to_string();
        i.failures[0].full_title = evil.to_string();
        i.failures[0].error = evil.to_string();
        i.flaky = vec![FlakyTest {
            spec: evil.to_string(),
            title: evil.to_string(),
        }];
        i.trend = Some(Trend {
            fixed: vec![Failure {
                spec: evil.to_string(),
                test: Some(evil.to_string()),
                streak: 1,
            }],
            fixed_total: 1,
            ..Trend::default()
        });
        i.log = Some(evil.to_string());
        i
    }

    #[test]
    fn untrusted_text_is_inert_in_every_markdown_part() {
        let i = hostile();
        for format in [Format::Attachment, Format::Text] {
            let p = Payload::build(&message(&i), None, format);
            for part in markdown_parts(&p) {
                // The run link is ours, and checked by `only_plain_http_urls_become_links`.
                let part = part.replace("(https://cloud.cypress.io/projects/x7k2pq/runs/1842)", "");
                let outside = outside_code(&part);
                for bad in [
                    "@", ":smile:", ":+1:", "http", "www.", "[x]", "<", "#tag", "~town", "\\",
                    "\"", "_em_", "|",
                ] {
                    assert!(
                        !outside.contains(bad),
                        "{bad:?} outside code in {part:?} ({outside:?})"
                    );
                }
            }
            let all = p.to_json();
            assert!(!all.chars().any(|c| INVISIBLE.contains(&c)), "{all}");
            // Copyable: host:port pairs and paths survive as they are.
            assert!(
                all.contains("localhost:8080") && all.contains("/var/lib/x:y"),
                "{all}"
            );
            // Control characters became spaces.
            assert!(!all.contains("\\u0007") && !all.contains("\\r") && !all.contains("\\t"));
        }
    }

    #[test]
    fn plain_parts_are_one_line_and_name_no_one() {
        let i = hostile();
        let p = Payload::build(&message(&i), None, Format::Attachment);
        let a = &p.attachments[0];
        assert!(a.fallback.contains("＠channel ＠all") && a.fallback.contains(":smile:"));
        assert!(!a.fallback.contains('\n') && !a.fallback.contains('\u{7}'));
        assert!(a.title_link.is_some());
        assert!(a.title.contains("＠channel"), "{}", a.title);
        for plain in [&a.fallback, &a.title, &a.footer] {
            assert!(
                !plain.contains("@channel") && !plain.contains("@all"),
                "{plain}"
            );
        }
        assert_eq!(
            unmention("@here (@alice) qa@example.com http://h:8080/@x/p @ 1@2 \"@bob\""),
            "＠here (＠alice) qa@example.com http://h:8080/@x/p @ 1@2 \"＠bob\""
        );
    }

    #[test]
    fn a_title_without_a_link_keeps_nothing_mattermost_would_format() {
        let mut i = hostile();
        i.run_url = None;
        i.group = Some("@all :smile: [x](http://e.example) www.c.example #t ~t `c`|\\ <b>".into());
        let p = Payload::build(&message(&i), None, Format::Attachment);
        let title = &p.attachments[0].title;
        assert!(p.attachments[0].title_link.is_none());
        for bad in ["@", ":", "#", "~", "[", "<", "*", "`", "\\", "|", "www."] {
            assert!(!title.contains(bad), "{bad:?} in {title:?}");
        }
        assert!(
            title.contains(" all  smile ") && title.contains("www c.example"),
            "{title}"
        );
        assert_eq!(
            unlinked_title("ubuntu 24.04 linux_x64"),
            "ubuntu 24.04 linux_x64"
        );
    }

    #[test]
    fn code_spans_outgrow_the_backticks_inside() {
        assert_eq!(code("plain"), "`plain`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("a``b`c"), "```a``b`c```");
        assert_eq!(code("`edge`"), "`` `edge` ``");
        assert_eq!(code(""), "");
        assert_eq!(outside_code(&code("x ``` y ` z")), " ");
    }

    #[test]
    fn pieces_become_one_line_and_are_cut() {
        assert_eq!(clean("  a\nb\tc\u{2028}d\u{202E}e  ", 100), "a b c d e");
        assert_eq!(clean("abcdef", 3), "abc…");
        assert_eq!(clean(&"x".repeat(100_000), 5), "xxxxx…");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("\"\"\"\"", 5), "\"\"…");
        assert!(json_len(&code_fit(&"\"`".repeat(500), 101)) <= 101);
        assert_eq!(code_fit("anything", 0), "");
    }

    #[test]
    fn only_plain_http_urls_become_links() {
        assert_eq!(
            link_target(" https://cloud.cypress.io/runs/1 ").as_deref(),
            Some("https://cloud.cypress.io/runs/1")
        );
        for bad in [
            "javascript:alert(1)",
            "https://x/a)(b",
            "https://x/a b",
            "ftp://x/",
            "https://",
            "https:///path",
            "http://x/\"onmouseover",
        ] {
            assert_eq!(link_target(bad), None, "{bad}");
        }
        assert_eq!(link_target(&format!("https://x/{}", "a".repeat(600))), None);
    }

    #[test]
    fn ten_failures_then_and_n_more() {
        let mut i = input();
        i.failures = (0..14)
            .map(|n| FailedTest {
                spec: "a.cy.js".into(),
                full_title: format!("test {n}"),
                error: "boom".into(),
            })
            .collect();
        let mut m = message(&i);
        m.failures_total = 20;
        let text = &Payload::build(&m, None, Format::Attachment).attachments[0].text;
        assert!(
            text.contains("test 9") && !text.contains("test 10"),
            "{text}"
        );
        assert_eq!(text.matches("\n- ").count(), 10, "{text}");
        assert!(text.ends_with("and 10 more"), "{text}");
    }

    #[test]
    fn budgets_keep_the_failed_tests_whatever_else_is_huge() {
        let huge = "\"\\`@".repeat(25_000); // 100 KB of the costliest characters
        let mut i = input();
        i.reason = huge.clone();
        i.group = Some(huge.clone());
        for o in [
            &mut i.request.template,
            &mut i.request.config_family,
            &mut i.request.config_file,
            &mut i.request.migration_style,
            &mut i.request.integration_plugin,
            &mut i.request.scope_description,
        ] {
            *o = Some(huge.clone());
        }
        i.request.run_id = huge.clone();
        // 200,000 rows (each long, though not 100 KB: that would be 20 GB).
        let long = "\"\\`@".repeat(100);
        i.vms = (0..200_000)
            .map(|n| Vm {
                name: format!("vm-{n}-{long}"),
                os: Some(long.clone()),
                address: Some("10.0.0.1".into()),
                aliases: vec![],
            })
            .collect();
        i.failures = (0..60)
            .map(|n| FailedTest {
                spec: format!("spec-{n}-{huge}"),
                full_title: format!("title-{n}-{huge}"),
                error: format!("error-{n}-{huge}"),
            })
            .collect();
        i.flaky = (0..60)
            .map(|n| FlakyTest {
                spec: format!("flaky-{n}-{huge}"),
                title: huge.clone(),
            })
            .collect();
        i.trend = Some(Trend {
            marks: vec![Mark::Again(7); 60],
            fixed: (0..60)
                .map(|n| Failure {
                    spec: format!("fixed-{n}-{huge}"),
                    test: Some(huge.clone()),
                    streak: 1,
                })
                .collect(),
            fixed_total: 60,
            not_compared: 0,
            first: false,
            duration_change: Some(huge.clone()),
            last_runs: Some(huge.clone()),
        });
        i.log = Some(huge.clone());
        i.mention = Some(format!("@{}", "a".repeat(60)).repeat(1).to_string() + &" @b".repeat(9));
        let mut m = message(&i);
        m.failures_total = 60;
        m.host = &huge;
        let channel = "c".repeat(1_000);
        for format in [Format::Attachment, Format::Text] {
            let p = Payload::build(&m, Some(&channel), format);
            let size = p.to_json().chars().count();
            assert!(size < MAX_PAYLOAD, "{format:?}: {size}");
            let failed = match format {
                Format::Attachment => p.attachments[0].text.clone(),
                Format::Text => p.text.clone(),
            };
            for n in 0..10 {
                assert!(
                    failed.contains(&format!("spec-{n}-")),
                    "{format:?} lost failure {n}"
                );
            }
            assert!(!failed.contains("spec-10-"));
            assert!(failed.contains("and 50 more"), "{failed}");
            if format == Format::Text {
                let n = p.text.chars().count();
                assert!(n <= MAX_TEXT, "text format: {n} characters");
            }
            let all = p.to_json();
            assert!(all.contains("more"), "VMs summarised");
            match format {
                Format::Attachment => {
                    let a = &p.attachments[0];
                    assert_eq!(a.fields.len(), 11, "every field kept");
                    let vms = &a.fields[10].value;
                    assert!(vms.ends_with(" more") && vms.contains("and 19999"), "{vms}");
                    assert!(a.footer.chars().count() <= ATTACHMENT.footer);
                }
                Format::Text => assert!(p.text.contains("**VMs:** ")),
            }
        }
    }

    #[test]
    fn at_most_twenty_vms_then_and_n_more() {
        let mut i = input();
        i.vms = (0..25)
            .map(|n| Vm {
                name: format!("vm{n}"),
                ..Vm::default()
            })
            .collect();
        let p = Payload::build(&message(&i), None, Format::Attachment);
        let vms = &p.attachments[0].fields.last().expect("vms").value;
        assert!(
            vms.contains("`vm19`, and 5 more") && !vms.contains("vm20"),
            "{vms}"
        );
    }

    #[test]
    fn the_test_message_is_labelled_in_both_formats() {
        let a = Payload::test("qa-1", Some("qa"), Format::Attachment);
        assert!(a.text.contains("ATVM watcher test message") && a.text.contains("`qa-1`"));
        assert_eq!(a.attachments[0].color, BLUE);
        assert_eq!(a.channel.as_deref(), Some("qa"));
        let t = Payload::test("qa-1", None, Format::Text);
        assert!(t.text.contains("**ATVM watcher test message**") && t.attachments.is_empty());
        assert!(t.channel.is_none());
    }

    #[test]
    fn the_host_name_comes_from_uname() {
        let h = host_name();
        assert!(
            !h.is_empty() && !h.contains('\n') && !h.contains('\0'),
            "{h:?}"
        );
    }
}
