//! Mattermost configuration: `MATTERMOST_ATVM_WEBHOOK`, `MATTERMOST_ATVM_CHANNEL`,
//! `MATTERMOST_ATVM_FORMAT` and ([`posting`]) `MATTERMOST_ATVM_NOTIFY` and
//! `MATTERMOST_ATVM_MENTION`, each from the process environment, else from the env file
//! (docs/watcher-service.md). The webhook URL is a secret: the [`Webhook`] type never prints it, only its
//! host, and [`Webhook::redact`] removes it from anything a server or the HTTP client said.

mod posting;

pub use posting::{BadMention, MENTION_MAX, MENTION_VAR, Mention, NOTIFY_VAR, Notify, Posting};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub const WEBHOOK_VAR: &str = "MATTERMOST_ATVM_WEBHOOK";
pub const CHANNEL_VAR: &str = "MATTERMOST_ATVM_CHANNEL";
pub const FORMAT_VAR: &str = "MATTERMOST_ATVM_FORMAT";

/// What a post looks like (`MATTERMOST_ATVM_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A message attachment (colour bar, title, fields, footer): the default.
    #[default]
    Attachment,
    /// One Markdown message with the same content, for servers that render attachments
    /// badly.
    Text,
}

impl Format {
    /// `attachment` (or empty) and `text`, in any case; `None` for anything else.
    pub fn parse(value: &str) -> Option<Format> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "attachment" | "attachments" => Some(Format::Attachment),
            "text" => Some(Format::Text),
            _ => None,
        }
    }
}

/// A webhook URL. `Debug` and `Display` show the host only.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook(String);

impl Webhook {
    pub fn new(url: &str) -> Webhook {
        Webhook(url.trim().to_string())
    }

    /// The full URL, for the HTTP client only.
    pub fn expose_url(&self) -> &str {
        &self.0
    }

    /// Why `url` cannot be a webhook, if it cannot: it must be `http(s)://<host>/…` with no
    /// blank or control character. The answer never quotes the value (a slip such as
    /// pasting only the key would otherwise print the key).
    pub fn problem(url: &str) -> Option<&'static str> {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        let Some(rest) = ["https://", "http://"]
            .iter()
            .find_map(|s| lower.strip_prefix(s))
        else {
            return Some("does not start with https:// or http://");
        };
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Some("contains a blank or a control character");
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.rsplit('@').next().unwrap_or("").is_empty() {
            return Some("has no host");
        }
        None
    }

    /// `host[:port]` of the URL: the most an error message may say. Without a scheme
    /// nothing can be told apart from the key, so nothing is shown.
    pub fn host(&self) -> String {
        if Webhook::problem(&self.0).is_some() {
            return "(unparsable webhook URL)".to_string();
        }
        let rest = self.0.split_once("://").map_or(self.0.as_str(), |(_, r)| r);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        // Drop any user:password@ part as well.
        let host = authority.rsplit('@').next().unwrap_or(authority);
        if host.is_empty() {
            "(unparsable webhook URL)".to_string()
        } else {
            host.to_string()
        }
    }
}

impl Webhook {
    /// `text` with every spelling of the webhook's secret replaced by `[redacted]`, for
    /// anything that came from the server or from the HTTP client before it is logged or
    /// stored.
    ///
    /// The secret is the URL's path and query (the "key"); userinfo counts too. A server or
    /// proxy may echo it raw, percent-encoded (any mix of literal characters and `%XX`, hex in
    /// either case), decoded, in another letter case, with doubled slashes (`//hooks/…`),
    /// JSON-escaped slashes (`\/`), or only the bare key. So the match is made on decoded
    /// bytes, ASCII case-insensitively, with a `/` in the key matching any run of slashes,
    /// against: the key, its path, its query, and each path segment and query value of at
    /// least [`MIN_SECRET_PIECE`] bytes other than `hooks` (shorter pieces are too common
    /// to hide without hiding ordinary words). Replacing a little too much is the safe side.
    ///
    /// A server may also echo only part of the key ("invalid key Xk3p9qWmZ7…"), so a second
    /// pass replaces every run of letters and digits that shares [`MIN_SECRET_FRAGMENT`]
    /// characters in a row with one of those pieces.
    pub fn redact(&self, text: &str) -> String {
        let patterns = self.secret_patterns();
        if patterns.is_empty() {
            return text.to_string();
        }
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match patterns.iter().find_map(|p| match_secret(bytes, i, p)) {
                Some(end) => {
                    out.extend_from_slice(REDACTED.as_bytes());
                    i = end;
                }
                None => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&redact_fragments(&out, &patterns)).into_owned()
    }

    /// The decoded, lower-cased spellings [`Webhook::redact`] looks for, longest first.
    fn secret_patterns(&self) -> Vec<Vec<u8>> {
        let rest = self.0.split_once("://").map_or(self.0.as_str(), |(_, r)| r);
        let rest = rest.split('#').next().unwrap_or("");
        let (authority, key) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (path, query) = key.split_once('?').unwrap_or((key, ""));
        let mut pieces: Vec<&str> = vec![key, path, query];
        if Webhook::problem(&self.0).is_some() {
            // Not a URL this code can take apart: all of it, and each word of it, is secret.
            pieces.push(self.0.as_str());
            pieces.extend(self.0.split(|c: char| !c.is_ascii_alphanumeric()));
        }
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            pieces.push(userinfo);
            pieces.extend(userinfo.split_once(':').map(|(_, password)| password));
        }
        pieces.extend(path.split('/'));
        pieces.extend(
            query
                .split('&')
                .map(|pair| pair.split_once('=').map_or(pair, |(_, value)| value)),
        );
        let mut patterns: Vec<Vec<u8>> = pieces
            .into_iter()
            .map(secret_pattern)
            .filter(|p| {
                let meaningful: Vec<u8> = p.iter().copied().filter(|&b| b != b'/').collect();
                meaningful.len() >= MIN_SECRET_PIECE && meaningful != b"hooks"
            })
            .collect();
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        patterns.dedup();
        patterns
    }
}

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Path segments and query values shorter than this are not treated as secret on their own
/// (a Mattermost key is 26 characters; `hooks`, `api`, `v4` are not secrets).
pub const MIN_SECRET_PIECE: usize = 6;

/// A run of letters and digits sharing this many characters in a row with a secret piece is
/// a fragment of the key: 8 random characters of a 26-character key do not occur in ordinary
/// words by chance.
pub const MIN_SECRET_FRAGMENT: usize = 8;

/// `text` with every run of ASCII letters and digits that contains a fragment of one of
/// `patterns` (see [`MIN_SECRET_FRAGMENT`]) replaced by [`REDACTED`]. A run may spell its
/// letters and digits percent-encoded (`%61%62…`): it is compared decoded.
fn redact_fragments(text: &[u8], patterns: &[Vec<u8>]) -> Vec<u8> {
    let is_secret = |run: &[u8]| {
        run.windows(MIN_SECRET_FRAGMENT).any(|w| {
            patterns
                .iter()
                .any(|p| p.windows(MIN_SECRET_FRAGMENT).any(|q| q == w))
        })
    };
    // A letter or digit at `i`, literal or `%XX`: (it, lower-cased; where the next starts).
    let alnum_at = |i: usize| decode_unit(text, i).filter(|(b, _)| b.is_ascii_alphanumeric());
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let start = i;
        let mut decoded = Vec::new();
        while let Some((b, next)) = alnum_at(i) {
            decoded.push(b.to_ascii_lowercase());
            i = next;
        }
        if i > start {
            match is_secret(&decoded) {
                true => out.extend_from_slice(REDACTED.as_bytes()),
                false => out.extend_from_slice(&text[start..i]),
            }
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// A piece of the URL as [`match_secret`] compares it: percent-decoded, ASCII lower-case,
/// runs of `/` collapsed to one.
fn secret_pattern(piece: &str) -> Vec<u8> {
    let bytes = piece.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some((b, next)) = decode_unit(bytes, i) {
        if !(b == b'/' && out.last() == Some(&b'/')) {
            out.push(b.to_ascii_lowercase());
        }
        i = next;
    }
    out
}

/// One byte of `text` at `i`: a `%XX` escape (either hex case) or a literal byte; and where
/// the next unit starts.
fn decode_unit(text: &[u8], i: usize) -> Option<(u8, usize)> {
    let b = *text.get(i)?;
    let hex = |j: usize| text.get(j).and_then(|c| (*c as char).to_digit(16));
    if b == b'%'
        && let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2))
    {
        return Some(((hi * 16 + lo) as u8, i + 3));
    }
    // A JSON-escaped slash reads as a slash.
    if b == b'\\' && text.get(i + 1) == Some(&b'/') {
        return Some((b'/', i + 2));
    }
    Some((b, i + 1))
}

/// If `pattern` is spelt in `text` starting at `start` (see [`Webhook::redact`]), where
/// that spelling ends.
fn match_secret(text: &[u8], start: usize, pattern: &[u8]) -> Option<usize> {
    let mut t = start;
    for &want in pattern {
        let (got, next) = decode_unit(text, t)?;
        if got.to_ascii_lowercase() != want {
            return None;
        }
        t = next;
        if want == b'/' {
            while let Some((b'/', next)) = decode_unit(text, t) {
                t = next;
            }
        }
    }
    Some(t)
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Webhook({})", self.host())
    }
}

impl fmt::Display for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MattermostConfig {
    pub webhook: Option<Webhook>,
    pub channel: Option<String>,
    pub format: Format,
    /// `MATTERMOST_ATVM_NOTIFY` and `MATTERMOST_ATVM_MENTION`.
    pub posting: Posting,
}

impl MattermostConfig {
    /// Each variable from the process environment first, then the env file. A missing env
    /// file is fine (nothing configured); an unreadable one is an error naming it, and so is
    /// a format other than `attachment` or `text` (exit 78: a typo should stop the start
    /// helper, not silently change every post).
    pub fn load(env_file: &Path) -> Result<MattermostConfig> {
        let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut webhook = from_env(WEBHOOK_VAR);
        let mut channel = from_env(CHANNEL_VAR);
        let mut format = from_env(FORMAT_VAR);
        if webhook.is_none() || channel.is_none() || format.is_none() {
            let file = read_env_file(env_file)?;
            webhook = webhook.or_else(|| file.get(WEBHOOK_VAR).cloned());
            channel = channel.or_else(|| file.get(CHANNEL_VAR).cloned());
            format = format.or_else(|| file.get(FORMAT_VAR).cloned());
        }
        let format = format.unwrap_or_default();
        let format = Format::parse(&format).ok_or_else(|| Error::Config {
            what: format!(
                "{FORMAT_VAR} is neither `attachment` (the default) nor `text`{}",
                value_hints(&format)
            ),
            path: env_file.to_path_buf(),
        })?;
        let webhook = webhook.filter(|w| !w.trim().is_empty());
        if let Some(problem) = webhook.as_deref().and_then(Webhook::problem) {
            let from_env = from_env(WEBHOOK_VAR).is_some();
            return Err(Error::Config {
                what: format!(
                    "{WEBHOOK_VAR} {problem}: it must be the webhook's whole URL, https://<host>/hooks/<key> (its value is a secret and not shown)"
                ),
                path: match from_env {
                    true => format!("{WEBHOOK_VAR} in the environment").into(),
                    false => env_file.to_path_buf(),
                },
            });
        }
        let channel = channel.filter(|c| !c.trim().is_empty());
        if let Some(c) = channel.as_deref().filter(|c| !is_channel(c)) {
            return Err(channel_error(c, from_env(CHANNEL_VAR).is_some(), env_file));
        }
        Ok(MattermostConfig {
            webhook: webhook.map(|w| Webhook::new(&w)),
            channel,
            format,
            posting: Posting::load(env_file)?,
        })
    }

    /// The webhook, or the exit-78 error that tells the operator where to put it (and that
    /// the env file is not there at all, when it is not).
    pub fn require_webhook(&self, env_file: &Path) -> Result<&Webhook> {
        let what = match fs::symlink_metadata(env_file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!(
                "no Mattermost webhook configured: the env file does not exist; create it (mode 0600) with {WEBHOOK_VAR}=https://<host>/hooks/<key>, or set {WEBHOOK_VAR} in the environment"
            ),
            _ => format!("no Mattermost webhook configured: set {WEBHOOK_VAR} in the env file"),
        };
        self.webhook.as_ref().ok_or_else(|| Error::Config {
            what,
            path: env_file.to_path_buf(),
        })
    }
}

/// Is `value` a channel Mattermost's webhook handler takes: a channel name (lowercase
/// letters, digits, `-`, `_`, at most 64, optionally after `#`) or `@user`?
pub fn is_channel(value: &str) -> bool {
    let ok = |name: &str, allowed: fn(char) -> bool| {
        (1..=64).contains(&name.chars().count()) && name.chars().all(allowed)
    };
    match value.strip_prefix('@') {
        Some(user) => ok(user, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
        }),
        None => ok(value.strip_prefix('#').unwrap_or(value), |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')
        }),
    }
}

/// Exit 78 for a channel the server would not find: every post would fail for good. The
/// value itself is not shown: a line continued with `\\` or an unclosed quote can join the
/// next line — the webhook's, a secret — into it. What is wrong with it is said instead.
fn channel_error(value: &str, in_environment: bool, env_file: &Path) -> Error {
    Error::Config {
        what: format!(
            "{CHANNEL_VAR} is not a Mattermost channel name (lowercase letters, digits, - and _, at most 64, optionally after #) or @user{}",
            value_hints(value)
        ),
        path: match in_environment {
            true => format!("{CHANNEL_VAR} in the environment").into(),
            false => env_file.to_path_buf(),
        },
    }
}

/// What usually makes a setting's value wrong, said without showing the value.
fn value_hints(value: &str) -> String {
    let mut hints = vec![format!(
        "its value is {} characters long",
        value.chars().count()
    )];
    if value.contains('#') && !value.starts_with('#') {
        hints.push("it holds a `#`: the env file is read as systemd reads it, where a trailing `# comment` is part of the value — put comments on their own line".to_string());
    }
    if value.contains('=') {
        hints.push("it holds a `=`: a line ending in `\\` or an unclosed quote joined the next line into it".to_string());
    }
    if value.chars().any(char::is_whitespace) {
        hints.push("it holds a space".to_string());
    }
    format!("; {}", hints.join("; "))
}

/// A positive number of seconds from the environment variable `var`, else `default`; a
/// value that is not one is a usage error naming the variable.
pub fn seconds_from_env(var: &str, default: f64) -> Result<std::time::Duration> {
    let value = match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => return Ok(std::time::Duration::from_secs_f64(default)),
    };
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(std::time::Duration::from_secs_f64(s)),
        _ => Err(Error::Usage(format!(
            "{var} is not a positive number of seconds{}",
            value_hints(&value)
        ))),
    }
}

/// The env file's assignments, read as systemd's `EnvironmentFile=` reads them
/// ([`crate::envfile`]); a missing file is empty.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    crate::envfile::parse(text)
}

pub fn read_env_file(path: &Path) -> Result<HashMap<String, String>> {
    Ok(crate::envfile::read(path)?.unwrap_or_default())
}

/// A warning when the env file (which holds the webhook secret) is readable or writable by
/// group or others.
pub fn env_file_warning(path: &Path) -> Option<String> {
    let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "env file is mode {mode:04o} and holds the webhook secret; run: chmod 600 {}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_shows_only_its_host() {
        let w = Webhook::new("https://user:pw@chat.example.com:8443/hooks/s3cr3t?x=1");
        assert_eq!(w.host(), "chat.example.com:8443");
        assert_eq!(
            format!("{w} {w:?}"),
            "chat.example.com:8443 Webhook(chat.example.com:8443)"
        );
        assert!(!format!("{w:?}").contains("s3cr3t"));
        let said = w.redact(
            "bad hook /hooks/s3cr3t?x=1 at https://user:pw@chat.example.com:8443/hooks/s3cr3t?x=1",
        );
        assert!(!said.contains("s3cr3t"), "{said}");
    }

    const KEY: &str = "Xk3p9qWmZ7rT1bYc5dF8gH2jLa";

    #[test]
    fn a_value_that_is_not_a_webhook_url_is_refused_without_quoting_it() {
        for bad in [
            KEY.to_string(),
            format!("hooks/{KEY}"),
            format!("chat.example.com/hooks/{KEY}"),
            format!("https://chat.example.com/hooks/ {KEY}"),
            format!("ftp://chat.example.com/hooks/{KEY}"),
            format!("https:///hooks/{KEY}"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("env");
            fs::write(&p, format!("{WEBHOOK_VAR}={bad}\n")).unwrap();
            let e = MattermostConfig::load(&p).expect_err(&bad).to_string();
            assert!(
                e.contains(WEBHOOK_VAR) && e.contains(&p.display().to_string()),
                "{e}"
            );
            assert!(!e.contains(&KEY[..8]), "{e}");
            let w = Webhook::new(&bad);
            assert!(!w.host().contains(&KEY[..8]), "{bad:?}: {}", w.host());
            assert!(
                !w.redact(&format!("bad uri: {bad} (x)")).contains(&KEY[..8]),
                "{bad:?}"
            );
        }
        for good in [
            format!("https://chat.example.com/hooks/{KEY}"),
            format!("HTTP://127.0.0.1:8065/hooks/{KEY}"),
            format!("  https://chat.example.com/hooks/{KEY}  "),
        ] {
            assert_eq!(Webhook::problem(&good), None, "{good}");
        }
    }

    fn hook() -> Webhook {
        Webhook::new(&format!("https://chat.example.com/hooks/{KEY}"))
    }

    fn assert_redacted(w: &Webhook, said: &str) {
        let out = w.redact(said);
        assert!(
            !out.to_lowercase().contains(&KEY.to_lowercase()[..8]),
            "{said:?} -> {out:?}"
        );
        assert!(out.contains(REDACTED), "{said:?} -> {out:?}");
    }

    #[test]
    fn the_raw_key_and_the_whole_url_are_redacted() {
        let w = hook();
        assert_redacted(
            &w,
            &format!("POST https://chat.example.com/hooks/{KEY} failed"),
        );
        assert_redacted(&w, &format!("no such hook /hooks/{KEY}"));
        assert_eq!(
            w.redact(&format!("at https://chat.example.com/hooks/{KEY}: 404")),
            "at https://chat.example.com[redacted]: 404"
        );
    }

    #[test]
    fn any_letter_case_is_redacted() {
        let w = hook();
        assert_redacted(&w, &format!("/HOOKS/{}", KEY.to_uppercase()));
        assert_redacted(&w, &format!("/hooks/{}", KEY.to_lowercase()));
    }

    #[test]
    fn percent_encoded_forms_are_redacted() {
        let w = hook();
        let all: String = format!("/hooks/{KEY}")
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect();
        assert_eq!(w.redact(&all), REDACTED);
        assert_eq!(w.redact(&all.to_lowercase()), REDACTED);
        // Every other character encoded, hex in alternating case.
        let mixed: String = format!("/hooks/{KEY}")
            .bytes()
            .enumerate()
            .map(|(i, b)| match i % 4 {
                0 => format!("%{b:02x}"),
                2 => format!("%{b:02X}"),
                _ => (b as char).to_string(),
            })
            .collect();
        assert_eq!(w.redact(&format!("path={mixed}.")), "path=[redacted].");
        assert_eq!(w.redact(&format!("%2Fhooks%2F{KEY}")), REDACTED);
        assert_eq!(w.redact(&format!("%2f%2FHOOKS%2f{KEY}?")), "[redacted]?");
    }

    #[test]
    fn a_url_that_is_itself_encoded_is_redacted_decoded_too() {
        let w = Webhook::new("https://h/hooks/abc%2Fdef%3Dghi");
        for said in [
            "/hooks/abc/def=ghi",
            "/hooks/abc%2fdef%3dghi",
            "abc/DEF=ghi",
        ] {
            let out = w.redact(said);
            assert!(!out.contains("def"), "{said:?} -> {out:?}");
        }
    }

    #[test]
    fn double_slashes_json_escapes_and_the_bare_key_are_redacted() {
        let w = hook();
        assert_eq!(w.redact(&format!("//hooks/{KEY}")), REDACTED);
        assert_eq!(w.redact(&format!("/hooks//{KEY}")), REDACTED);
        assert_redacted(&w, &format!("{{\"path\":\"\\/hooks\\/{KEY}\"}}"));
        assert_redacted(&w, &format!("invalid key {KEY}."));
        assert_redacted(&w, &format!("invalid key {}", KEY.to_uppercase()));
        // A configured URL with a doubled slash still hides an echo with a single one.
        let w2 = Webhook::new(&format!("https://chat.example.com//hooks/{KEY}"));
        assert_redacted(&w2, &format!("/hooks/{KEY}"));
    }

    #[test]
    fn query_values_and_userinfo_are_secret_too() {
        let w = Webhook::new("https://bot:pa55word@h:8443/api/hooks?token=t0k3nv4lue&x=1");
        let out = w.redact("token T0K3NV4LUE for bot:pa55word rejected; try api or hooks");
        assert!(
            !out.to_lowercase().contains("t0k3n") && !out.contains("pa55word"),
            "{out}"
        );
        assert!(
            out.contains("try api or hooks"),
            "short pieces and `hooks` stay readable: {out}"
        );
    }

    #[test]
    fn fragments_of_the_key_are_redacted() {
        let w = hook();
        for said in [
            format!("invalid key {}…", &KEY[..12]),
            format!("key ending {} not found", &KEY[16..]),
            format!("token=abc{}xyz", &KEY[5..13].to_uppercase()),
            format!("{{\"key\":\"{}\"}}", &KEY[..MIN_SECRET_FRAGMENT]),
            // Percent-encoded, in either hex case, all of it or a mix.
            format!(
                "path /hooks/{}...",
                KEY[..13]
                    .bytes()
                    .map(|b| format!("%{b:02x}"))
                    .collect::<String>()
            ),
            format!(
                "Location: http://{}{}.evil.example/",
                KEY[..4]
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect::<String>(),
                &KEY[4..12]
            ),
        ] {
            let out = w.redact(&said);
            assert!(out.contains(REDACTED), "{said:?} -> {out:?}");
            for piece in KEY.as_bytes().windows(MIN_SECRET_FRAGMENT - 1) {
                let piece = String::from_utf8_lossy(piece).to_lowercase();
                assert!(!out.to_lowercase().contains(&piece), "{said:?} -> {out:?}");
            }
        }
        // Seven characters in a row are not enough: ordinary words stay readable.
        let short = format!("see {} and more", &KEY[..MIN_SECRET_FRAGMENT - 1]);
        assert_eq!(w.redact(&short), short);
    }

    #[test]
    fn text_without_the_key_is_unchanged() {
        let w = hook();
        let said = "HTTP 500 from chat.example.com: é ünïcode %zz %4 \\ hooks";
        assert_eq!(w.redact(said), said);
        assert_eq!(Webhook::new("https://h/").redact("a/b//c"), "a/b//c");
    }

    #[test]
    fn the_format_is_attachment_unless_text_is_asked_for() {
        assert_eq!(Format::parse(""), Some(Format::Attachment));
        assert_eq!(Format::parse(" Attachment "), Some(Format::Attachment));
        assert_eq!(Format::parse("TEXT"), Some(Format::Text));
        assert_eq!(Format::parse("html"), None);
    }

    #[test]
    fn the_format_comes_from_the_env_file_and_a_bad_one_is_exit_78() {
        if std::env::var_os(FORMAT_VAR).is_some() {
            return; // the process environment wins; nothing to test here
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("env");
        fs::write(&p, "MATTERMOST_ATVM_FORMAT=text\n").expect("write");
        assert_eq!(
            MattermostConfig::load(&p).expect("load").format,
            Format::Text
        );
        fs::write(&p, "MATTERMOST_ATVM_FORMAT=fancy\n").expect("write");
        let e = MattermostConfig::load(&p).expect_err("bad format");
        assert_eq!(e.exit_code(), crate::error::exit::CONFIG);
        // Named, not quoted: a value may hold the next line of a broken file.
        assert!(
            e.to_string().contains(FORMAT_VAR) && !e.to_string().contains("fancy"),
            "{e}"
        );
    }

    #[test]
    fn env_file_syntax() {
        // As systemd reads it: `export` makes no assignment (tests of every rule: envfile.rs).
        let m = parse_env_file(
            "# comment\nexport MATTERMOST_ATVM_FORMAT=text\nMATTERMOST_ATVM_WEBHOOK=\"https://h/hooks/x\"\n MATTERMOST_ATVM_CHANNEL = 'qa'\nnoise\n",
        );
        assert_eq!(
            m.get(WEBHOOK_VAR).map(String::as_str),
            Some("https://h/hooks/x")
        );
        assert_eq!(m.get(CHANNEL_VAR).map(String::as_str), Some("qa"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn channels_are_names_or_users() {
        for good in [
            "qa-e2e-results",
            "#qa_e2e",
            "town-square",
            "@qa.oncall",
            "@Bob-1",
        ] {
            assert!(is_channel(good), "{good}");
        }
        let long = "x".repeat(65);
        for bad in [
            "qa-e2e-results     # optional",
            "QA",
            "qa e2e",
            "#",
            "@",
            "##qa",
            "@a b",
            "q\u{1b}a",
            long.as_str(),
        ] {
            assert!(!is_channel(bad), "{bad:?}");
        }
    }

    #[test]
    fn open_env_files_are_warned_about() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("env");
        fs::write(&p, "").expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(env_file_warning(&p).expect("warn").contains("0644"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(env_file_warning(&p).is_none());
    }
}
