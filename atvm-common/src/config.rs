//! Mattermost configuration: `MATTERMOST_ATVM_WEBHOOK` / `MATTERMOST_ATVM_CHANNEL` from the
//! process environment, else from the env file (SPEC §2). The webhook URL is a secret: the
//! [`Webhook`] type never prints it, only its host.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub const WEBHOOK_VAR: &str = "MATTERMOST_ATVM_WEBHOOK";
pub const CHANNEL_VAR: &str = "MATTERMOST_ATVM_CHANNEL";

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

    /// `host[:port]` of the URL: the most an error message may say.
    pub fn host(&self) -> String {
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
    /// `text` with the URL and its secret path replaced, for server answers and error
    /// messages that might echo them.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.replace(&self.0, "[webhook]");
        let rest = self.0.split_once("://").map_or(self.0.as_str(), |(_, r)| r);
        if let Some(i) = rest.find('/') {
            let path = &rest[i..];
            if path.len() > 3 {
                out = out.replace(path, "/[redacted]");
            }
        }
        out
    }
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
}

impl MattermostConfig {
    /// From the process environment first, then the env file. A missing env file is fine
    /// (nothing configured); an unreadable one is an error naming it.
    pub fn load(env_file: &Path) -> Result<MattermostConfig> {
        let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut webhook = from_env(WEBHOOK_VAR);
        let mut channel = from_env(CHANNEL_VAR);
        if webhook.is_none() || channel.is_none() {
            let file = read_env_file(env_file)?;
            webhook = webhook.or_else(|| file.get(WEBHOOK_VAR).cloned());
            channel = channel.or_else(|| file.get(CHANNEL_VAR).cloned());
        }
        Ok(MattermostConfig {
            webhook: webhook
                .filter(|w| !w.trim().is_empty())
                .map(|w| Webhook::new(&w)),
            channel: channel.filter(|c| !c.trim().is_empty()),
        })
    }

    /// The webhook, or the exit-78 error that tells the operator where to put it.
    pub fn require_webhook(&self, env_file: &Path) -> Result<&Webhook> {
        self.webhook.as_ref().ok_or_else(|| Error::Config {
            what: format!("no Mattermost webhook configured: set {WEBHOOK_VAR} in the env file"),
            path: env_file.to_path_buf(),
        })
    }
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
            "{var}={value:?} is not a positive number of seconds"
        ))),
    }
}

/// Parse a systemd-style `EnvironmentFile`: `KEY=VALUE` lines, `#`/`;` comments, optional
/// `export `, values optionally in single or double quotes.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        let value = match (value.chars().next(), value.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(e)) if q == e && value.len() >= 2 => {
                &value[1..value.len() - 1]
            }
            _ => value,
        };
        out.insert(key.to_string(), value.to_string());
    }
    out
}

pub fn read_env_file(path: &Path) -> Result<HashMap<String, String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(parse_env_file(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(Error::io("cannot read env file", path, e)),
    }
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

    #[test]
    fn env_file_syntax() {
        let m = parse_env_file(
            "# comment\nexport MATTERMOST_ATVM_WEBHOOK=\"https://h/hooks/x\"\n MATTERMOST_ATVM_CHANNEL = 'qa'\nnoise\n",
        );
        assert_eq!(
            m.get(WEBHOOK_VAR).map(String::as_str),
            Some("https://h/hooks/x")
        );
        assert_eq!(m.get(CHANNEL_VAR).map(String::as_str), Some("qa"));
        assert_eq!(m.len(), 2);
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
