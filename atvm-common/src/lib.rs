//! Shared library of the ATVM watcher service: paths, build names, the state directory,
//! markers and locks, Cypress log / report (mochawesome, JUnit) / inventory parsing, the
//! history of earlier runs, Mattermost delivery and the systemctl wrapper. The binaries are
//! thin front ends over this crate.

pub mod build_name;
pub mod builds;
pub mod cli;
pub mod config;
pub mod cypress;
pub mod envfile;
pub mod error;
pub mod failpoint;
pub mod follow;
pub mod fsutil;
pub mod history;
pub mod inventory;
pub mod logging;
pub mod mattermost;
pub mod paths;
pub mod procfs;
pub mod reporter;
pub mod reports;
pub mod state;
pub mod systemctl;
pub mod time;
pub mod timeline;

/// The eight binaries of the product, in the order of the README's table.
pub const BINARIES: [&str; 8] = [
    "start-atvm-run",
    "start-atvm-run-watcher",
    "start-atvm-runner",
    "run-atvm-runner",
    "atvm-run-watcher",
    "cancel-atvm-runner",
    "cancel-atvm-run-watcher",
    "atvm-run-status",
];

pub use build_name::BuildName;
pub use error::{Error, Result};
pub use paths::Paths;
pub use state::StateDir;
pub use time::{Moment, Timestamp};
