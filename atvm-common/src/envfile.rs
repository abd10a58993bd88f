//! The env file (`/etc/atvm-run-watcher.env`) read exactly as systemd's `EnvironmentFile=`
//! reads it, because the units load the same file: a value the start helpers see and the
//! watcher under its unit does not see (or sees differently) is a post that fails on the
//! server, or a state root the two disagree about (docs/install.md, "The env file").
//!
//! systemd's rules (`src/basic/env-file.c` and the checks `EnvironmentFile=` applies):
//! - a line whose first non-blank character is `#` or `;` is a comment; nothing else is:
//!   `KEY=value # note` has the value `value # note`;
//! - blanks around the key and after `=` are dropped, and trailing blanks of an unquoted
//!   value;
//! - `'…'` keeps everything literally; `"…"` takes `\` before `"`, `\`, `` ` `` and `$` as an
//!   escape (and keeps it before anything else); outside quotes `\` escapes any character;
//!   a `\` before a line break joins the next line;
//! - quoted and unquoted pieces of one value are joined (`"a" b` is `ab`);
//! - an assignment whose key is not a valid variable name (`export KEY=…`, `KEY-1=…`) or
//!   whose value holds a control character other than tab and newline is ignored; so is a
//!   line without `=`. A later assignment of a key wins.
//!
//! No crate reads systemd's format (dotenv-style crates strip trailing comments and expand
//! `$VAR`, which systemd does not), so this is the state machine of env-file.c, in Rust.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io;
use std::path::Path;

/// Where the parser is within a line (env-file.c's states).
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    Single,
    Double,
    DoubleEscape,
    Comment,
    CommentEscape,
}

/// The assignments of `text`, as systemd would put them into a unit's environment.
pub fn parse(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut at = At::PreKey;
    let (mut key, mut value) = (String::new(), String::new());
    // Where the trailing blanks of the key / of an unquoted value begin.
    let (mut key_blank, mut value_blank): (Option<usize>, Option<usize>) = (None, None);
    let mut push = |key: &mut String, value: &mut String, key_blank: Option<usize>| {
        if let Some(i) = key_blank {
            key.truncate(i);
        }
        if valid_name(key) && valid_value(value) {
            out.insert(std::mem::take(key), std::mem::take(value));
        }
        key.clear();
        value.clear();
    };
    for c in text.chars() {
        let newline = c == '\n' || c == '\r';
        let blank = c == ' ' || c == '\t' || newline;
        at = match at {
            At::PreKey if c == '#' || c == ';' => At::Comment,
            At::PreKey if blank => At::PreKey,
            At::PreKey => {
                key.push(c);
                key_blank = None;
                At::Key
            }
            At::Key if newline => {
                key.clear();
                At::PreKey
            }
            At::Key if c == '=' => {
                value_blank = None;
                At::PreValue
            }
            At::Key => {
                note_blank(blank, &mut key_blank, key.len());
                key.push(c);
                At::Key
            }
            At::PreValue | At::Value if newline => {
                if at == At::Value
                    && let Some(i) = value_blank
                {
                    value.truncate(i);
                }
                push(&mut key, &mut value, key_blank);
                At::PreKey
            }
            At::PreValue if c == '\'' => At::Single,
            At::PreValue if c == '"' => At::Double,
            At::PreValue | At::Value if c == '\\' => {
                value_blank = None;
                At::ValueEscape
            }
            At::PreValue if blank => At::PreValue,
            At::PreValue | At::Value => {
                note_blank(blank, &mut value_blank, value.len());
                value.push(c);
                At::Value
            }
            At::ValueEscape => {
                if !newline {
                    value.push(c);
                }
                At::Value
            }
            At::Single if c == '\'' => At::PreValue,
            At::Double if c == '"' => At::PreValue,
            At::Double if c == '\\' => At::DoubleEscape,
            At::Single | At::Double => {
                value.push(c);
                at
            }
            At::DoubleEscape => {
                match c {
                    '"' | '\\' | '`' | '$' => value.push(c),
                    '\n' => {}
                    other => {
                        value.push('\\');
                        value.push(other);
                    }
                }
                At::Double
            }
            At::Comment if c == '\\' => At::CommentEscape,
            At::Comment | At::CommentEscape if newline => At::PreKey,
            At::Comment | At::CommentEscape => At::Comment,
        };
    }
    // A last line without a line break still counts, as in systemd.
    match at {
        At::Value => {
            if let Some(i) = value_blank {
                value.truncate(i);
            }
            push(&mut key, &mut value, key_blank);
        }
        At::PreValue | At::ValueEscape | At::Single | At::Double | At::DoubleEscape => {
            push(&mut key, &mut value, key_blank)
        }
        _ => {}
    }
    out
}

/// Keep `start` at the first of the trailing blanks of a key or value `len` long, about to
/// get one more character (`blank` or not).
fn note_blank(blank: bool, start: &mut Option<usize>, len: usize) {
    match blank {
        false => *start = None,
        true => {
            start.get_or_insert(len);
        }
    }
}

/// A name systemd accepts for a variable: letters, digits and `_`, not starting with a
/// digit.
fn valid_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// systemd drops a value with a control character other than tab and newline.
fn valid_value(value: &str) -> bool {
    !value
        .chars()
        .any(|c| c.is_control() && c != '\t' && c != '\n')
}

/// The env file's assignments; `None` when it does not exist (nothing configured there,
/// as `EnvironmentFile=-…` treats it). An unreadable file is an error naming it.
pub fn read(path: &Path) -> Result<Option<HashMap<String, String>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(parse(&String::from_utf8_lossy(&bytes)))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read env file", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(text: &str, key: &str) -> Option<String> {
        parse(text).get(key).cloned()
    }

    #[test]
    fn a_trailing_comment_is_part_of_the_value_as_systemd_reads_it() {
        let line = "MATTERMOST_ATVM_CHANNEL=qa-e2e-results     # optional\n";
        assert_eq!(
            get(line, "MATTERMOST_ATVM_CHANNEL").as_deref(),
            Some("qa-e2e-results     # optional")
        );
        // Quoted, the comment is glued on after the quotes: still not a comment.
        assert_eq!(get("A=\"x\" # c\n", "A").as_deref(), Some("x# c"));
    }

    #[test]
    fn comments_blanks_and_quotes() {
        let text = "# a comment\n; another\n  KEY  =  value with blanks   \nQ='a \"b\" $c'\nD=\"x \\\"y\\\" \\$z \\n\"\nE=\nF\n";
        let m = parse(text);
        assert_eq!(m["KEY"], "value with blanks");
        assert_eq!(m["Q"], "a \"b\" $c");
        assert_eq!(m["D"], "x \"y\" $z \\n");
        assert_eq!(m["E"], "");
        assert!(!m.contains_key("F"), "a line without = is ignored");
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn escapes_and_continuation_lines() {
        assert_eq!(get("A=a\\ b\\#c\n", "A").as_deref(), Some("a b#c"));
        assert_eq!(get("A=one\\\ntwo\n", "A").as_deref(), Some("onetwo"));
        assert_eq!(get("A=\"one\\\ntwo\"\n", "A").as_deref(), Some("onetwo"));
        assert_eq!(get("A=\"x\" y\n", "A").as_deref(), Some("xy"));
    }

    #[test]
    fn what_systemd_ignores_is_ignored() {
        let m = parse("export A=1\nB-C=2\n1D=3\nE=ok\nF=bad\u{7}bell\n");
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m["E"], "ok");
    }

    #[test]
    fn the_last_line_needs_no_line_break_and_later_wins() {
        let m = parse("A=1\r\nA=2\nB='open");
        assert_eq!(m["A"], "2");
        assert_eq!(m["B"], "open");
        assert_eq!(get("C=x  ", "C").as_deref(), Some("x"));
    }
}
