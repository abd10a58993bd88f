//! Incremental parser for Cypress CLI output (docs/watcher-service.md, "Run log").
//!
//! It is fed bytes in whatever chunks the log happens to be read in (partial lines are kept
//! until their newline arrives), strips ANSI colour codes, joins table cells that Cypress
//! wrapped onto continuation lines, and keeps a [`LogSummary`]: one [`RunBlock`] per
//! `(Run Starting)`, with its header table, current `Running:` spec, `(Run Finished)` rows
//! and footer, plus the "no spec files were found" failure. The whole parser state is
//! serialisable, so the watcher checkpoints it with the byte offset and resumes exactly.
//!
//! Most log lines are test output that matters to nobody here; [`LogParser::feed`] rejects
//! them after looking at their first few bytes, which keeps a full parse close to the speed
//! of `grep -c`.

mod attempts;

pub use attempts::FlakyInLog;

use crate::state::Counts;
use serde::{Deserialize, Serialize};

/// Lines longer than this are test noise (minified errors, base64); they are skipped rather
/// than buffered without bound.
const MAX_LINE: usize = 64 * 1024;

/// A header cell, group or spec name is kept to this many bytes (the rest is cut at a
/// character boundary): nothing real is longer, and the parser's state is checkpointed.
pub const MAX_FIELD: usize = 1024;

/// Cut `text` to [`MAX_FIELD`] bytes, on a character boundary.
fn cap(text: &mut String) {
    if text.len() > MAX_FIELD {
        let mut end = MAX_FIELD;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSummary {
    pub runs: Vec<RunBlock>,
    /// `Can't run because no spec files were found.` and the pattern Cypress searched.
    pub no_specs: Option<NoSpecs>,
    /// Complete lines seen so far.
    pub lines: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoSpecs {
    pub pattern: Option<String>,
}

/// One `(Run Starting)` … `(Run Finished)` block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunBlock {
    /// The `(Run Starting)` table has been read to its end: its group is known for good.
    #[serde(default)]
    pub header_complete: bool,
    pub cypress_version: Option<String>,
    pub browser: Option<String>,
    pub specs_found: Option<u32>,
    pub searched: Option<String>,
    pub params: Option<String>,
    /// `Group: …` from `Params:`; `false` there means no group.
    pub group: Option<String>,
    pub run_url: Option<String>,
    /// `Recorded Run: <url>`, printed after the summary.
    pub recorded_run: Option<String>,
    /// The latest `Running:  <spec>  (i of n)`.
    pub current: Option<Running>,
    /// Specs of earlier `Running:` lines of this block (the latest is `current`).
    #[serde(default)]
    pub specs_run: Vec<String>,
    pub spec_rows: Vec<SpecRow>,
    pub footer: Option<Footer>,
    /// Tests that failed an attempt and then passed: the first [`MAX_FLAKY_NAMED`] named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flaky: Vec<FlakyInLog>,
    /// Every flaky test of the block, named or not.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub flaky_total: u32,
}

/// Flaky tests a block keeps by name (a post names 5); the rest are counted. The parser's
/// state is checkpointed, so nothing in it grows with the run.
pub const MAX_FLAKY_NAMED: usize = 20;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub spec: String,
    pub index: u32,
    pub total: u32,
}

/// A row of the `(Run Finished)` table. Stored compactly, as
/// `[spec, mark, duration, tests, passed, failed, pending, skipped]`: a 2,000-spec run has
/// 2,000 of them in the checkpoint. The object form of earlier versions still loads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "SpecRowForm")]
pub struct SpecRow {
    pub spec: String,
    /// `✔`, `✖` or `-` (skipped).
    pub mark: char,
    /// `00:05`, or `SKIPPED`.
    pub duration: String,
    pub counts: Counts,
}

/// How a [`SpecRow`] is stored: the compact tuple, or the object earlier versions wrote.
#[derive(Deserialize)]
#[serde(untagged)]
enum SpecRowForm {
    Compact(String, char, String, u64, u64, u64, u64, u64),
    Object {
        spec: String,
        mark: char,
        duration: String,
        counts: Counts,
    },
}

impl From<SpecRowForm> for SpecRow {
    fn from(form: SpecRowForm) -> SpecRow {
        match form {
            SpecRowForm::Compact(spec, mark, duration, tests, passed, failed, pending, skipped) => {
                SpecRow {
                    spec,
                    mark,
                    duration,
                    counts: Counts {
                        tests,
                        passed,
                        failed,
                        pending,
                        skipped,
                    },
                }
            }
            SpecRowForm::Object {
                spec,
                mark,
                duration,
                counts,
            } => SpecRow {
                spec,
                mark,
                duration,
                counts,
            },
        }
    }
}

impl Serialize for SpecRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = &self.counts;
        (
            &self.spec,
            self.mark,
            &self.duration,
            c.tests,
            c.passed,
            c.failed,
            c.pending,
            c.skipped,
        )
            .serialize(serializer)
    }
}

impl SpecRow {
    /// Marked failed, or counting a failed test (a hook failure marks no test).
    pub fn is_failing(&self) -> bool {
        self.mark == '✖' || self.counts.failed > 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    AllPassed,
    /// `N of M failed (P%)`: specs, not tests.
    SpecsFailed {
        failed: u32,
        total: u32,
    },
    /// `The run was canceled` (cancelled in Cypress Cloud).
    Canceled,
    Other {
        text: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footer {
    pub outcome: Outcome,
    pub duration: Option<String>,
    pub counts: Counts,
}

impl RunBlock {
    pub fn is_finished(&self) -> bool {
        self.footer.is_some()
    }

    /// Totals from the footer, else the sum of the rows seen.
    pub fn counts(&self) -> Option<Counts> {
        if let Some(f) = &self.footer {
            return Some(f.counts);
        }
        if self.spec_rows.is_empty() {
            return None;
        }
        let mut c = Counts::default();
        for row in &self.spec_rows {
            c.add(&row.counts);
        }
        Some(c)
    }

    /// Failing tests or specs anywhere in what was seen of this block.
    pub fn has_failures(&self) -> bool {
        let footer_failed = self.footer.as_ref().is_some_and(|f| {
            f.counts.failed > 0 || matches!(f.outcome, Outcome::SpecsFailed { .. })
        });
        footer_failed || self.spec_rows.iter().any(SpecRow::is_failing)
    }

    /// Every spec this block names, in `Running:` lines or summary rows, as Cypress
    /// prints them (relative to the specs' common root).
    pub fn spec_names(&self) -> impl Iterator<Item = &str> {
        self.specs_run
            .iter()
            .map(String::as_str)
            .chain(self.current.iter().map(|c| c.spec.as_str()))
            .chain(self.spec_rows.iter().map(|r| r.spec.as_str()))
    }

    /// The run's Cypress Cloud URL, if it was recorded.
    pub fn url(&self) -> Option<&str> {
        self.recorded_run.as_deref().or(self.run_url.as_deref())
    }
}

impl LogSummary {
    /// Sub-run keys (docs/watcher-service.md): two-digit ordinal plus the sanitised group, e.g. `01-linux`.
    /// They depend only on the log, so a restarted watcher computes the same keys.
    pub fn subrun_key(ordinal: usize, group: Option<&str>) -> String {
        let mut key = format!("{ordinal:02}");
        if let Some(g) = group.map(sanitise_group).filter(|g| !g.is_empty()) {
            key.push('-');
            key.push_str(&g);
        }
        key
    }
}

/// Keep `[A-Za-z0-9._-]`, turn runs of anything else into one `-`, trim, cap at 48.
pub fn sanitise_group(group: &str) -> String {
    let mut out = String::new();
    for c in group.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches(|c| c == '-' || c == '.');
    trimmed.chars().take(48).collect()
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "in")]
enum Section {
    #[default]
    Top,
    /// Inside the `(Run Starting)` table; `col` is where values start (in chars).
    StartTable {
        col: usize,
        last: Option<String>,
    },
    /// After a `Running:` line whose spec may wrap onto lines indented to `col`.
    RunningWrap {
        col: usize,
    },
    /// Between `(Run Finished)` and the table's top border.
    FinishedHeader,
    FinishedTable,
    FinishedFooter,
    /// After the no-spec error: waiting for the searched pattern.
    NoSpecs {
        searched_line_seen: bool,
    },
}

/// The parser. Its serialised form is the watcher's resume point and holds no buffer: the
/// half-read last line (`partial`) is not saved; a resumed parser is fed again from the
/// start of that line ([`LogParser::unterminated`] bytes before where reading stopped).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogParser {
    #[serde(skip)]
    partial: Vec<u8>,
    #[serde(skip)]
    skipping_long_line: bool,
    /// Bytes fed since the last newline (kept or skipped).
    #[serde(skip)]
    unterminated: u64,
    section: Section,
    summary: LogSummary,
    /// The test whose `(Attempt N of M)` lines are being read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retrying: Option<attempts::Retrying>,
}

impl LogParser {
    pub fn new() -> LogParser {
        LogParser::default()
    }

    pub fn summary(&self) -> &LogSummary {
        &self.summary
    }

    /// How many bytes at the end of what was fed belong to a line whose newline has not
    /// come yet: a parser restored from its serialised form resumes that far back.
    pub fn unterminated(&self) -> u64 {
        self.unterminated
    }

    /// Feed the next bytes of the log.
    pub fn feed(&mut self, bytes: &[u8]) {
        match memchr::memrchr(b'\n', bytes) {
            Some(last) => self.unterminated = (bytes.len() - last - 1) as u64,
            None => self.unterminated += bytes.len() as u64,
        }
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            let line = &bytes[start..nl];
            start = nl + 1;
            if self.skipping_long_line {
                self.skipping_long_line = false;
                self.partial.clear();
                self.summary.lines += 1;
                continue;
            }
            if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut joined = std::mem::take(&mut self.partial);
                joined.extend_from_slice(line);
                self.line(&joined);
                joined.clear();
                self.partial = joined;
            }
        }
        let rest = &bytes[start..];
        if !rest.is_empty() && !self.skipping_long_line {
            if self.partial.len() + rest.len() > MAX_LINE {
                self.partial.clear();
                self.skipping_long_line = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
    }

    /// The log was truncated or replaced: forget a half-read line, keep what was learnt.
    pub fn reset_partial_line(&mut self) {
        self.partial.clear();
        self.skipping_long_line = false;
        self.unterminated = 0;
    }

    /// The end of a log generation (rotation): a last line without newline still counts.
    pub fn finish_partial_line(&mut self) {
        if !self.partial.is_empty() && !self.skipping_long_line {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
        self.reset_partial_line();
    }

    fn line(&mut self, raw: &[u8]) {
        self.summary.lines += 1;
        let mut raw = raw;
        if let Some(stripped) = raw.strip_suffix(b"\r") {
            raw = stripped;
        }
        // A bare carriage return overwrote the line on a terminal: keep what was visible.
        if let Some(cr) = memchr::memrchr(b'\r', raw) {
            raw = &raw[cr + 1..];
        }
        if self.section == Section::Top
            && !maybe_interesting(raw)
            && self.retrying.is_none()
            && !attempts::maybe_attempt(raw.trim_ascii_start())
        {
            return;
        }
        let owned;
        let text: &str = if raw.contains(&0x1b) {
            owned = strip_ansi(raw);
            &owned
        } else {
            match std::str::from_utf8(raw) {
                Ok(s) => s,
                Err(_) => {
                    owned = String::from_utf8_lossy(raw).into_owned();
                    &owned
                }
            }
        };
        self.text_line(text);
    }

    fn text_line(&mut self, line: &str) {
        let trimmed = line.trim();
        match std::mem::take(&mut self.section) {
            Section::Top => self.top_line(line, trimmed),
            Section::StartTable { col, last } => self.start_table_line(line, trimmed, col, last),
            Section::RunningWrap { col } => {
                let indent = line.len() - line.trim_start_matches(' ').len();
                if indent == col && !trimmed.is_empty() && !trimmed.contains(' ') {
                    if let Some(cur) = self.block_mut().current.as_mut() {
                        cur.spec.push_str(trimmed);
                        cap(&mut cur.spec);
                    }
                    self.section = Section::RunningWrap { col };
                } else {
                    self.top_line(line, trimmed);
                }
            }
            Section::FinishedHeader => {
                if trimmed.starts_with('┌') {
                    self.section = Section::FinishedTable;
                } else if trimmed.is_empty() || trimmed.starts_with("Spec ") {
                    self.section = Section::FinishedHeader;
                } else {
                    // The summary never came (cut off): this line is ordinary output.
                    self.top_line(line, trimmed);
                }
            }
            Section::FinishedTable => {
                if trimmed.starts_with(['│', '├', '└']) {
                    self.finished_table_line(trimmed);
                } else {
                    self.top_line(line, trimmed);
                }
            }
            Section::FinishedFooter => {
                if trimmed.is_empty() {
                    self.section = Section::FinishedFooter;
                } else if let Some(footer) = parse_footer(trimmed) {
                    let block = self.block_mut();
                    block.footer = Some(footer);
                    // The summary rows name the specs now; the `Running:` list would only
                    // repeat them in the checkpoint.
                    let rows = &block.spec_rows;
                    block
                        .specs_run
                        .retain(|s| !rows.iter().any(|r| r.spec == *s));
                } else {
                    self.top_line(line, trimmed);
                }
            }
            Section::NoSpecs { searched_line_seen } => {
                if trimmed.is_empty() {
                    self.section = Section::NoSpecs { searched_line_seen };
                } else if trimmed.starts_with("We searched for") {
                    self.section = Section::NoSpecs {
                        searched_line_seen: true,
                    };
                } else if searched_line_seen {
                    let pattern = trimmed.trim_start_matches('>').trim().to_string();
                    if let Some(ns) = self.summary.no_specs.as_mut() {
                        ns.pattern = Some(pattern);
                    }
                } else {
                    self.top_line(line, trimmed);
                }
            }
        }
    }

    fn top_line(&mut self, line: &str, trimmed: &str) {
        if let Some(title) = attempts::follow(&mut self.retrying, trimmed) {
            let block = self.block_mut();
            block.flaky_total += 1;
            if block.flaky.len() < MAX_FLAKY_NAMED {
                let spec = block.current.as_ref().map(|c| c.spec.clone());
                let mut title = title;
                cap(&mut title);
                block.flaky.push(FlakyInLog {
                    spec: spec.unwrap_or_default(),
                    title,
                });
            }
            return;
        }
        if trimmed == "(Run Starting)" {
            self.retrying = None;
            self.summary.runs.push(RunBlock::default());
            self.section = Section::StartTable { col: 0, last: None };
        } else if trimmed == "(Run Finished)" {
            self.retrying = None;
            if self.summary.runs.last().is_none_or(|b| b.is_finished()) {
                // The start of this block was not seen (log read from the middle).
                self.summary.runs.push(RunBlock::default());
            }
            self.section = Section::FinishedHeader;
        } else if let Some(rest) = trimmed.strip_prefix("Running:") {
            if let Some((spec, index, total)) = parse_running(rest) {
                // A retry never finished in the spec before (it crashed) ends here.
                self.retrying = None;
                let col = line.find(spec).unwrap_or(0);
                let block = self.block_mut();
                if let Some(prev) = block.current.take()
                    && !block.specs_run.contains(&prev.spec)
                {
                    block.specs_run.push(prev.spec);
                }
                let mut spec = spec.to_string();
                cap(&mut spec);
                block.current = Some(Running { spec, index, total });
                self.section = Section::RunningWrap { col };
            }
        } else if let Some(url) = trimmed.strip_prefix("Recorded Run:") {
            let mut url = url.trim().to_string();
            cap(&mut url);
            if !url.is_empty() {
                self.block_mut().recorded_run = Some(url);
            }
        } else if trimmed.starts_with("Can't run because no spec files were found") {
            self.summary.no_specs = Some(NoSpecs::default());
            self.section = Section::NoSpecs {
                searched_line_seen: false,
            };
        }
    }

    fn start_table_line(&mut self, line: &str, trimmed: &str, col: usize, last: Option<String>) {
        if trimmed.starts_with('└') {
            self.block_mut().header_complete = true;
            return; // back to Top
        }
        let Some(inner) = table_inner(trimmed) else {
            if trimmed.is_empty() || trimmed.starts_with('┌') {
                self.section = Section::StartTable { col, last };
            } else {
                // Not a table line: the table was cut off.
                self.block_mut().header_complete = true;
                self.top_line(line, trimmed);
            }
            return;
        };
        let starts_with_label = inner.chars().next().is_some_and(|c| !c.is_whitespace());
        if starts_with_label && let Some((label, value)) = inner.split_once(':') {
            let value_trimmed = value.trim_start();
            // Column of the value within the whole line, in chars, for continuations.
            let col = match line.find(value_trimmed) {
                Some(i) if !value_trimmed.is_empty() => line[..i].chars().count(),
                _ => col,
            };
            let label = label.trim().to_string();
            self.set_field(&label, value_trimmed.trim_end().to_string(), false);
            self.section = Section::StartTable {
                col,
                last: Some(label),
            };
            return;
        }
        // A continuation: the value column carries on, exactly from `col` (a leading space
        // there is part of the value).
        if let Some(label) = &last {
            let from_col: String = line.chars().skip(col).collect();
            let piece = from_col.trim_end().trim_end_matches('│').trim_end();
            self.set_field(label, piece.to_string(), true);
        }
        self.section = Section::StartTable { col, last };
    }

    fn set_field(&mut self, label: &str, value: String, append: bool) {
        let block = self.block_mut();
        let slot = match label {
            "Cypress" => &mut block.cypress_version,
            "Browser" => &mut block.browser,
            "Searched" => &mut block.searched,
            "Params" => &mut block.params,
            "Run URL" => &mut block.run_url,
            "Specs" => {
                // Only the count matters; the list is in the summary table.
                if !append {
                    block.specs_found =
                        value.split_whitespace().next().and_then(|n| n.parse().ok());
                }
                return;
            }
            _ => return,
        };
        match (append, slot.as_mut()) {
            (true, Some(existing)) => existing.push_str(&value),
            _ => *slot = Some(value),
        }
        if let Some(text) = slot.as_mut() {
            cap(text);
        }
        if label == "Params" {
            block.group = block.params.as_deref().and_then(group_from_params);
        }
    }

    fn finished_table_line(&mut self, trimmed: &str) {
        if trimmed.starts_with('└') {
            self.section = Section::FinishedFooter;
            return;
        }
        self.section = Section::FinishedTable;
        let Some(inner) = table_inner(trimmed) else {
            return;
        };
        let mut chars = inner.chars();
        let mark = chars.next();
        if let Some(mark @ ('✔' | '✖' | '-')) = mark
            && chars.as_str().starts_with("  ")
        {
            if let Some((mut spec, mut duration, counts)) = parse_counted(chars.as_str()) {
                cap(&mut spec);
                cap(&mut duration);
                self.block_mut().spec_rows.push(SpecRow {
                    spec,
                    mark,
                    duration,
                    counts,
                });
            }
            return;
        }
        // A wrapped spec name continues in the spec column.
        let piece = inner.trim();
        if !piece.is_empty()
            && let Some(row) = self.block_mut().spec_rows.last_mut()
        {
            row.spec.push_str(piece);
            cap(&mut row.spec);
        }
    }

    fn block_mut(&mut self) -> &mut RunBlock {
        if self.summary.runs.is_empty() {
            self.summary.runs.push(RunBlock::default());
        }
        let last = self.summary.runs.len() - 1;
        &mut self.summary.runs[last]
    }
}

/// Could this line (outside any table) mean anything to us? Looks only at the first bytes.
fn maybe_interesting(raw: &[u8]) -> bool {
    let start = raw
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(raw.len());
    match raw.get(start) {
        // (Run Starting) / (Run Finished), Running: / Recorded Run:, Can't run …, colour codes.
        Some(b'(' | b'R' | b'C' | 0x1b) => true,
        _ => false,
    }
}

/// Remove ANSI escape sequences: CSI (`ESC [ … final`), OSC (`ESC ] … BEL|ESC \`) and
/// two-byte escapes.
pub fn strip_ansi(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != 0x1b {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        match raw.get(i + 1) {
            Some(b'[') => {
                i += 2;
                while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                    i += 1;
                }
                i += 1;
            }
            Some(b']') => {
                i += 2;
                while i < raw.len()
                    && raw[i] != 0x07
                    && !(raw[i] == 0x1b && raw.get(i + 1) == Some(&b'\\'))
                {
                    i += 1;
                }
                i += if raw.get(i) == Some(&0x07) { 1 } else { 2 };
            }
            _ => i += 2,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The text between a table row's borders: `│ text │` → `text` (leading space removed).
fn table_inner(trimmed: &str) -> Option<&str> {
    let inner = trimmed.strip_prefix('│')?;
    let inner = inner.trim_end().strip_suffix('│').unwrap_or(inner);
    Some(inner.strip_prefix(' ').unwrap_or(inner).trim_end())
}

/// `<spec>  (i of n)` after `Running:`.
fn parse_running(rest: &str) -> Option<(&str, u32, u32)> {
    let rest = rest.trim();
    let open = rest.rfind('(')?;
    let tag = rest[open..].strip_prefix('(')?.strip_suffix(')')?;
    let (i, n) = tag.split_once(" of ")?;
    let spec = rest[..open].trim();
    if spec.is_empty() {
        return None;
    }
    Some((spec, i.trim().parse().ok()?, n.trim().parse().ok()?))
}

fn group_from_params(params: &str) -> Option<String> {
    let after = params.split("Group:").nth(1)?;
    let group = after.split(", ").next()?.trim();
    (!group.is_empty() && group != "false").then(|| group.to_string())
}

fn count(token: &str) -> Option<u64> {
    if token == "-" {
        Some(0)
    } else {
        token.parse().ok()
    }
}

/// `<text>  <duration>  <tests> <passing> <failing> <pending> <skipped>`, from the right.
fn parse_counted(s: &str) -> Option<(String, String, Counts)> {
    let mut tokens: Vec<&str> = s.split_whitespace().collect();
    if tokens.len() < 7 {
        return None;
    }
    let nums: Vec<u64> = tokens
        .split_off(tokens.len() - 5)
        .into_iter()
        .map(count)
        .collect::<Option<_>>()?;
    let duration = tokens.pop()?.to_string();
    let counts = Counts {
        tests: nums[0],
        passed: nums[1],
        failed: nums[2],
        pending: nums[3],
        skipped: nums[4],
    };
    Some((tokens.join(" "), duration, counts))
}

/// The line under the summary table: a mark, the outcome, duration and the five totals.
fn parse_footer(trimmed: &str) -> Option<Footer> {
    let mut chars = trimmed.chars();
    let body = match chars.next() {
        Some('✔' | '✖' | '-') => chars.as_str().trim_start(),
        _ => return None,
    };
    let (text, duration, counts) = parse_counted(body)?;
    let outcome = if text.starts_with("All specs passed") {
        Outcome::AllPassed
    } else if text.starts_with("The run was canceled") {
        Outcome::Canceled
    } else if let Some((failed, total)) = parse_n_of_m(&text) {
        Outcome::SpecsFailed { failed, total }
    } else {
        Outcome::Other { text }
    };
    Some(Footer {
        outcome,
        duration: Some(duration),
        counts,
    })
}

/// `2 of 20 failed (10%)`.
fn parse_n_of_m(text: &str) -> Option<(u32, u32)> {
    let mut words = text.split_whitespace();
    let failed = words.next()?.parse().ok()?;
    (words.next()? == "of").then_some(())?;
    let total = words.next()?.parse().ok()?;
    (words.next()? == "failed").then_some((failed, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> LogSummary {
        let mut p = LogParser::new();
        p.feed(text.as_bytes());
        p.summary().clone()
    }

    #[test]
    fn spec_rows_are_stored_compactly_and_the_old_object_form_still_loads() {
        let row = SpecRow {
            spec: "cypress/e2e/login.cy.js".into(),
            mark: '✖',
            duration: "00:05".into(),
            counts: Counts {
                tests: 3,
                passed: 1,
                failed: 1,
                pending: 1,
                skipped: 0,
            },
        };
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(json, r#"["cypress/e2e/login.cy.js","✖","00:05",3,1,1,1,0]"#);
        assert_eq!(serde_json::from_str::<SpecRow>(&json).unwrap(), row);
        let old = r#"{"spec":"cypress/e2e/login.cy.js","mark":"✖","duration":"00:05",
            "counts":{"tests":3,"passed":1,"failed":1,"pending":1,"skipped":0}}"#;
        assert_eq!(serde_json::from_str::<SpecRow>(old).unwrap(), row);
    }

    #[test]
    fn an_absurdly_long_cell_is_cut_wherever_the_line_breaks() {
        let long = "é".repeat(3000);
        let log = format!(
            "  (Run Starting)\n  ┌──┐\n  │ Params:   Tag: false, Group: {long}, Parallel: false │\n  └──┘\n  Running:  {long}  (1 of 1)\n"
        );
        let whole = parse(&log);
        let b = &whole.runs[0];
        assert!(b.params.as_ref().unwrap().len() <= MAX_FIELD);
        assert!(b.group.as_ref().unwrap().len() <= MAX_FIELD);
        assert!(b.current.as_ref().unwrap().spec.len() <= MAX_FIELD);
        let mut p = LogParser::new();
        for chunk in log.as_bytes().chunks(7) {
            p.feed(chunk);
        }
        assert_eq!(p.summary(), &whole, "the same in any chunking");
    }

    #[test]
    fn footer_variants() {
        let f = parse_footer("✖  2 of 20 failed (10%)                     04:50       40       38        2        -        -")
            .expect("footer");
        assert_eq!(
            f.outcome,
            Outcome::SpecsFailed {
                failed: 2,
                total: 20
            }
        );
        assert_eq!(
            f.counts,
            Counts {
                tests: 40,
                passed: 38,
                failed: 2,
                pending: 0,
                skipped: 0
            }
        );
        assert_eq!(f.duration.as_deref(), Some("04:50"));
        let ok =
            parse_footer("✔  All specs passed!   XX:XX   3   3   -   -   -").map(|f| f.outcome);
        assert_eq!(ok, Some(Outcome::AllPassed));
        let canceled =
            parse_footer("-  The run was canceled  XX:XX  1  1  -  -  -").map(|f| f.outcome);
        assert_eq!(canceled, Some(Outcome::Canceled));
        assert_eq!(parse_footer("(Run Starting)"), None);
    }

    #[test]
    fn running_lines() {
        assert_eq!(
            parse_running("  login.cy.js          (1 of 20)"),
            Some(("login.cy.js", 1, 20))
        );
        assert_eq!(parse_running(" (1 of 2)"), None);
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            strip_ansi(b"\x1b[90m(Run Finished)\x1b[39m"),
            "(Run Finished)"
        );
        assert_eq!(
            strip_ansi(b"a\x1b]8;;http://x\x07link\x1b]8;;\x07b"),
            "alinkb"
        );
    }

    #[test]
    fn groups_from_params_and_keys() {
        assert_eq!(
            group_from_params("Tag: false, Group: linux, Parallel: false").as_deref(),
            Some("linux")
        );
        assert_eq!(
            group_from_params("Tag: false, Group: false, Parallel: false"),
            None
        );
        assert_eq!(LogSummary::subrun_key(1, Some("linux")), "01-linux");
        assert_eq!(
            LogSummary::subrun_key(3, Some("ubuntu 24.04 / x")),
            "03-ubuntu-24.04-x"
        );
        assert_eq!(LogSummary::subrun_key(2, None), "02");
        assert_eq!(LogSummary::subrun_key(2, Some("@@")), "02");
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        let mut p = LogParser::new();
        p.feed(b"  (Run Star");
        assert!(p.summary().runs.is_empty());
        p.feed(b"ting)\n");
        assert_eq!(p.summary().runs.len(), 1);
    }

    #[test]
    fn overlong_lines_are_skipped_not_buffered() {
        let mut p = LogParser::new();
        p.feed(&vec![b'x'; MAX_LINE + 10]);
        p.feed(b"more\n  (Run Starting)\n");
        assert_eq!(p.summary().runs.len(), 1);
        assert!(p.partial.is_empty());
    }

    #[test]
    fn no_specs_with_its_pattern() {
        let s = parse(
            "Can't run because no spec files were found.\n\nWe searched for specs matching this glob pattern:\n\n  > cypress/e2e/x/**/*.cy.js\n",
        );
        assert_eq!(
            s.no_specs,
            Some(NoSpecs {
                pattern: Some("cypress/e2e/x/**/*.cy.js".to_string())
            })
        );
    }
}
