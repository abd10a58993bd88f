//! Build names (docs/watcher-service.md). A build name becomes a unit instance, a directory name and part of a
//! path under world-writable /tmp, so it is checked before anything is touched.

use crate::error::{Error, Result};
use std::fmt;

/// A validated build name: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$` without `..`, not ending
/// in `.launch`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BuildName(String);

/// The rule in words, for error messages and `--help`.
pub const RULE: &str = "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$, must not contain \"..\" and must not end in \".launch\"";

impl BuildName {
    pub fn parse(name: &str) -> Result<BuildName> {
        let bad = |rule| {
            Err(Error::BuildName {
                name: name.to_string(),
                rule,
            })
        };
        let bytes = name.as_bytes();
        match bytes.first() {
            None => return bad("must not be empty"),
            Some(c) if !c.is_ascii_alphanumeric() => {
                return bad("must start with a letter or digit (^[A-Za-z0-9])");
            }
            _ => {}
        }
        if bytes.len() > 128 {
            return bad("must be at most 128 characters");
        }
        if !bytes
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            return bad("may only contain A-Z a-z 0-9 . _ -");
        }
        if name.contains("..") {
            return bad("must not contain \"..\"");
        }
        if name.ends_with(".launch") {
            // `<log-dir>/X.launch.log` is this build's run log and build X's launch log.
            return bad(
                "must not end in \".launch\" (its run log would be another build's launch log)",
            );
        }
        Ok(BuildName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `-`-separated tokens, used to match inventory OS names and aliases.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('-').filter(|t| !t.is_empty())
    }
}

impl fmt::Display for BuildName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_names() {
        for good in [
            "e2e-redhat9.6-ubuntu24.04-w2k25-fc",
            "a",
            "B_1.x",
            &"x".repeat(128),
        ] {
            assert!(BuildName::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        let long = "x".repeat(129);
        for bad in [
            "", "../x", "a/b", &long, "-x", ".x", "_x", "ümlaut", "a..b", "a b", "a\nb", "b.launch",
        ] {
            let e = BuildName::parse(bad).expect_err(bad);
            assert_eq!(e.exit_code(), 2, "{bad}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn tokens_split_on_dashes() {
        let b = BuildName::parse("e2e-redhat9.6-ubuntu24.04").expect("valid");
        assert_eq!(
            b.tokens().collect::<Vec<_>>(),
            ["e2e", "redhat9.6", "ubuntu24.04"]
        );
    }
}
