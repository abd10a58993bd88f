//! The one error type every tool returns. Each variant knows its exit code (docs/watcher-service.md) and
//! renders as the single line `<what> (<path or unit>)`; `cli::main` adds the program name.

use std::fmt;
use std::path::{Path, PathBuf};

/// Exit codes shared by all binaries (docs/watcher-service.md).
pub mod exit {
    pub const SUCCESS: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const TEMPLATE_FAILED: u8 = 3;
    pub const ALREADY_RUNNING: u8 = 4;
    pub const SYSTEMCTL: u8 = 5;
    pub const CONFIG: u8 = 78;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line value that clap could not judge on its own.
    #[error("{0}")]
    Usage(String),

    #[error("invalid build name {name:?}: {rule}")]
    BuildName { name: String, rule: &'static str },

    /// An operating-system error on a named file.
    #[error("{what}: {} ({})", io_reason(source), path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file that exists but cannot be used: does not parse, unsafe owner or mode, a symlink.
    #[error("{what} ({})", path.display())]
    File { what: String, path: PathBuf },

    #[error("template step failed ({status}); see {}", log.display())]
    TemplateFailed { status: String, log: PathBuf },

    #[error("{what} ({unit})")]
    AlreadyRunning { what: String, unit: String },

    #[error("another watcher holds the lock ({})", path.display())]
    LockHeld { path: PathBuf },

    /// The runner unit started but its wrapper refused the run, or never confirmed it.
    #[error("the runner did not start: {why} ({unit})")]
    RunnerStart { unit: String, why: String },

    #[error("systemctl {action} failed: {detail} ({unit})")]
    Systemctl {
        action: &'static str,
        unit: String,
        detail: String,
    },

    /// Required configuration is missing (exit 78, EX_CONFIG).
    #[error("{what} ({})", path.display())]
    Config { what: String, path: PathBuf },

    /// Anything else that is a plain failure (exit 1), already phrased for the operator.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// A full disk or an exhausted quota: it clears when space is freed, so a state or
    /// marker write is tried again. Anything else (no permission, a read-only file system,
    /// a link planted in the way) will not clear by waiting.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Io { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        )
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::BuildName { .. } => exit::USAGE,
            Error::Io { .. } | Error::File { .. } | Error::Failed(_) => exit::FAILURE,
            Error::TemplateFailed { .. } => exit::TEMPLATE_FAILED,
            Error::AlreadyRunning { .. } | Error::LockHeld { .. } => exit::ALREADY_RUNNING,
            Error::Systemctl { .. } | Error::RunnerStart { .. } => exit::SYSTEMCTL,
            Error::Config { .. } => exit::CONFIG,
        }
    }

    /// Shorthand for the common "could not <what> <path>" case.
    pub fn io(what: impl Into<String>, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn file(what: impl Into<String>, path: impl AsRef<Path>) -> Self {
        Error::File {
            what: what.into(),
            path: path.as_ref().to_path_buf(),
        }
    }

    pub fn failed(what: impl fmt::Display) -> Self {
        Error::Failed(what.to_string())
    }
}

/// `std::io::Error`'s Display appends "(os error 2)"; operators only need the words.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_full_disk_or_quota_is_worth_waiting_for() {
        let io = |errno| {
            Error::io(
                "cannot write",
                "/s/state.json",
                std::io::Error::from_raw_os_error(errno),
            )
        };
        assert!(io(libc::ENOSPC).is_transient());
        assert!(io(libc::EDQUOT).is_transient());
        for errno in [libc::EACCES, libc::EROFS, libc::ELOOP, libc::EIO] {
            assert!(!io(errno).is_transient(), "errno {errno}");
        }
        assert!(!Error::file("refusing to follow a symbolic link", "/s").is_transient());
    }

    #[test]
    fn io_errors_are_one_line_ending_with_the_path() {
        let e = Error::io(
            "cannot read request",
            "/var/lib/x/request.json",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        let line = e.to_string();
        assert_eq!(
            line,
            "cannot read request: entity not found (/var/lib/x/request.json)"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn exit_codes_follow_the_spec() {
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        assert_eq!(Error::LockHeld { path: "/l".into() }.exit_code(), 4);
        let s = Error::Systemctl {
            action: "start",
            unit: "u".into(),
            detail: "d".into(),
        };
        assert_eq!(s.exit_code(), 5);
        assert_eq!(s.to_string(), "systemctl start failed: d (u)");
        assert_eq!(
            Error::Config {
                what: "w".into(),
                path: "/p".into()
            }
            .exit_code(),
            78
        );
    }
}
