//! Where the watcher's "now" comes from. Production reads the wall clock and CLOCK_BOOTTIME
//! ([`Moment::now`]); tests hand the watcher a clock they step, to show that a wall-clock
//! step alone never ends a run.

use atvm_common::Moment;

pub trait Clock: std::fmt::Debug + Sync {
    fn now(&self) -> Moment;
}

/// The machine's clocks.
#[derive(Debug)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Moment {
        Moment::now()
    }
}

/// The clock every watcher uses outside tests.
pub static SYSTEM: SystemClock = SystemClock;
