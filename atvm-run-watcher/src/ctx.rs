//! The watcher's context: what it works with and never changes during a watch — where
//! things are, which run it follows, its timing, where results go, the stop flag and the
//! clock. Its own module so that the parts of the watcher that borrow it (observe,
//! persist, deliver) do not import it back from the loop in `watch.rs`.

use crate::clock::Clock;
use crate::decide::Timing;
use crate::deliver::Sink;
use crate::shutdown::Shutdown;
use atvm_common::state::Request;
use atvm_common::{BuildName, Paths, StateDir};

/// What a watcher works with and never changes: where things are, what it watches, how.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub paths: Paths,
    pub sd: StateDir,
    pub build: BuildName,
    pub request: Request,
    pub timing: Timing,
    pub sink: Sink,
    pub shutdown: &'a Shutdown,
    pub clock: &'a dyn Clock,
}
