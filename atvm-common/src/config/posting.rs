//! Which results are posted and who is named on a failure (docs/watcher-service.md):
//! `MATTERMOST_ATVM_NOTIFY` (`all`, the default, or `failed`) and `MATTERMOST_ATVM_MENTION`
//! (one or more `@name` tokens, put in the top-level text of FAILED posts only — the one
//! mention the service ever makes). Both come from the process environment, else the env
//! file, like the other `MATTERMOST_ATVM_*` settings. A value that is not one of these is
//! refused where the configuration is loaded (exit 78, naming the variable); an invalid
//! mention is never quoted, so it cannot reach a terminal, a log or a post.

use crate::error::{Error, Result};
use crate::state::RunState;
use std::path::Path;

pub const NOTIFY_VAR: &str = "MATTERMOST_ATVM_NOTIFY";
pub const MENTION_VAR: &str = "MATTERMOST_ATVM_MENTION";

/// Which results are posted (`MATTERMOST_ATVM_NOTIFY`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Notify {
    /// COMPLETED and FAILED, as the seed plan says.
    #[default]
    All,
    /// FAILED only: a COMPLETED result is `suppressed`, with that reason.
    Failed,
}

impl Notify {
    /// Is a result in `state` posted?
    pub fn posts(self, state: RunState) -> bool {
        state.is_postable() && (self == Notify::All || state == RunState::Failed)
    }

    /// Why a result that [`Notify::posts`] refuses is not posted.
    pub fn why_not(self) -> String {
        format!("not posted: {NOTIFY_VAR}=failed posts FAILED results only")
    }
}

/// The longest mention, as kept (`@a @b`), that every post format carries whole: the
/// text format's budget for it. A longer one is refused at load rather than cut, since a
/// post naming only some of the owners would mislead.
pub const MENTION_MAX: usize = 120;

/// `MATTERMOST_ATVM_MENTION`: `@name` tokens, each `[A-Za-z0-9._-]`, separated by blanks
/// or commas; kept as `@a @b`, at most [`MENTION_MAX`] characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mention(String);

/// Why a mention is refused (its value is never quoted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadMention {
    /// Not one or more `@name` tokens.
    Syntax,
    /// Longer than [`MENTION_MAX`]: this many characters.
    TooLong(usize),
}

impl Mention {
    /// The tokens of `value`, or why they are not a mention a post can carry.
    pub fn parse(value: &str) -> std::result::Result<Mention, BadMention> {
        let mention = Mention::tokens(value).ok_or(BadMention::Syntax)?;
        match mention.0.len() {
            n if n > MENTION_MAX => Err(BadMention::TooLong(n)),
            _ => Ok(mention),
        }
    }

    /// The tokens of `value`, or `None` when it is not one or more `@name`.
    fn tokens(value: &str) -> Option<Mention> {
        let tokens: Vec<&str> = value
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
            .collect();
        let valid = |t: &&str| {
            t.strip_prefix('@').is_some_and(|name| {
                !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            })
        };
        (!tokens.is_empty() && tokens.len() <= 10 && tokens.iter().all(valid))
            .then(|| Mention(tokens.join(" ")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The two settings, as loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Posting {
    pub notify: Notify,
    pub mention: Option<Mention>,
}

impl Posting {
    /// Both settings: from the process environment, else `env_file` (read only when one
    /// is not in the environment; a missing file is nothing configured).
    pub fn load(env_file: &Path) -> Result<Posting> {
        let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let (mut notify, mut mention) = (from_env(NOTIFY_VAR), from_env(MENTION_VAR));
        if notify.is_none() || mention.is_none() {
            let file = super::read_env_file(env_file)?;
            notify = notify.or_else(|| file.get(NOTIFY_VAR).cloned());
            mention = mention.or_else(|| file.get(MENTION_VAR).cloned());
        }
        let refuse = |what: String| Error::Config {
            what,
            path: env_file.to_path_buf(),
        };
        let notify = match notify.as_deref().map(|n| n.trim().to_ascii_lowercase()) {
            None => Notify::All,
            Some(n) if n.is_empty() || n == "all" => Notify::All,
            Some(n) if n == "failed" => Notify::Failed,
            Some(_) => {
                return Err(refuse(format!(
                    "{NOTIFY_VAR} must be `all` (the default) or `failed`"
                )));
            }
        };
        let mention = match mention.filter(|m| !m.trim().is_empty()) {
            None => None,
            Some(m) => Some(Mention::parse(&m).map_err(|bad| match bad {
                BadMention::Syntax => refuse(format!(
                    "{MENTION_VAR} must be one or more @name tokens (letters, digits, . _ -), e.g. @qa-oncall; its value is not shown"
                )),
                BadMention::TooLong(n) => refuse(format!(
                    "{MENTION_VAR} is {n} characters long, over the {MENTION_MAX} a post carries whole in every format: name fewer owners, or one group such as @qa-oncall; its value is not shown"
                )),
            })?),
        };
        Ok(Posting { notify, mention })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_at_names_only() {
        assert_eq!(
            Mention::parse("@qa-oncall").map(|m| m.0),
            Ok("@qa-oncall".into())
        );
        assert_eq!(
            Mention::parse(" @a.b, @c_d ").map(|m| m.0),
            Ok("@a.b @c_d".into())
        );
        assert_eq!(
            Mention::parse("@channel").map(|m| m.0),
            Ok("@channel".into())
        );
        // Three 45-character names: valid tokens, too long for a post to carry whole.
        let three = [0, 1, 2]
            .map(|i| format!("@{i}{}", "n".repeat(43)))
            .join(" ");
        assert_eq!(Mention::parse(&three), Err(BadMention::TooLong(137)));
        let fits = format!("@{} @{}", "n".repeat(59), "m".repeat(58));
        assert_eq!(Mention::parse(&fits).map(|m| m.0.len()), Ok(MENTION_MAX));
        for bad in [
            "qa",
            "@",
            "@a b",
            "@a!",
            "@a @b\u{200b}",
            "[x](http://e)",
            "@a\n@b`",
        ] {
            assert_eq!(Mention::parse(bad), Err(BadMention::Syntax), "{bad:?}");
        }
    }

    #[test]
    fn notify_all_posts_both_and_failed_only_failures() {
        assert!(Notify::All.posts(RunState::Completed) && Notify::All.posts(RunState::Failed));
        assert!(
            !Notify::Failed.posts(RunState::Completed) && Notify::Failed.posts(RunState::Failed)
        );
        assert!(!Notify::All.posts(RunState::Terminated));
        assert!(
            Notify::Failed
                .why_not()
                .contains("MATTERMOST_ATVM_NOTIFY=failed")
        );
    }
}
