//! Fixtures the rule tests share: the default timing, moments on one boot, facts about a
//! runner, and a log snippet parsed into blocks.

use super::{Facts, RunnerFacts, Timing};
use atvm_common::cypress::{LogParser, LogSummary};
use atvm_common::time::BootInstant;
use atvm_common::{Moment, Timestamp};
use std::time::Duration;

/// The production defaults.
pub const TIMING: Timing = Timing {
    poll: Duration::from_secs(5),
    grace: Duration::from_secs(120),
    hang: Duration::from_secs(90 * 60),
    start_timeout: Duration::from_secs(900),
    post_retry: Duration::from_secs(1800),
};

/// A moment `secs` into the test; the wall and boot clocks agree.
pub fn t(secs: i64) -> Moment {
    Moment {
        wall: Timestamp::from_millis(1_800_000_000_000 + secs * 1000),
        boot: Some(BootInstant {
            boot_id: "b".repeat(32),
            ns: (10_000 + secs) as u64 * 1_000_000_000,
        }),
    }
}

/// Facts at `now`, with the request at 0 and the last activity at `last_activity`.
pub fn facts(runner: &RunnerFacts, now: i64, last_activity: i64) -> Facts<'_> {
    Facts {
        now: t(now),
        requested: t(0),
        cancelled_at: None,
        runner,
        last_activity: t(last_activity),
        timing: &TIMING,
        untrusted_log: None,
        log_gap: None,
    }
}

/// A runner that exited with `code` at `at`.
pub fn exited(code: i32, at: i64) -> RunnerFacts {
    RunnerFacts::Exited {
        exit_code: Some(code),
        signal: None,
        stop_signal: None,
        cancel_requested: false,
        at: t(at),
    }
}

/// A runner whose command was killed by SIGKILL at `at`.
pub fn killed(at: i64) -> RunnerFacts {
    RunnerFacts::Exited {
        exit_code: None,
        signal: Some(9),
        stop_signal: None,
        cancel_requested: false,
        at: t(at),
    }
}

pub fn summary(log: &str) -> LogSummary {
    let mut p = LogParser::new();
    p.feed(log.as_bytes());
    p.summary().clone()
}
