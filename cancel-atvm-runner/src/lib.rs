//! cancel-atvm-runner: mark the run as deliberately cancelled, then stop
//! `atvm-runner@<build>.service` (docs/watcher-service.md). The mark is what makes the watcher's state
//! CANCELLED instead of TERMINATED. A start of the build in progress is waited for first
//! (the start lock, shared), so the cancel reaches the run that start makes.

use atvm_common::error::Result;
use atvm_common::procfs::{self, ProcessId};
use atvm_common::state::{RunnerStatus, StartLock};
use atvm_common::systemctl::{Systemctl, UnitKind};
use atvm_common::{BuildName, Paths, Timestamp, logging};
use clap::Parser;

const EXAMPLE: &str = "\
Example:
  cancel-atvm-runner --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc

Cancelling a runner that is not running is not an error; a build name this controller has
never run is (exit 1, naming the closest known names). To also stop the watcher without
a post, run cancel-atvm-run-watcher for the same build. While a start of the build is in
progress, it waits for that start to finish (saying so) and then cancels the run it made.

Environment:
  ATVM_STATE_ROOT              state directories [default: /var/lib/atvm-run-watcher]
  ATVM_ENV_FILE                the env file: its ATVM_* lines apply where the environment sets none [default: /etc/atvm-run-watcher.env]
  ATVM_SYSTEMCTL               the program used for systemctl [default: systemctl]
  JOURNAL_STREAM               set by systemd: lines carry journal priorities";

#[derive(Debug, Parser)]
#[command(name = "cancel-atvm-runner", version, about = "Cancel the Cypress runner of a build", after_help = EXAMPLE)]
pub struct Cli {
    /// Build name whose runner to cancel.
    #[arg(long, value_name = "BUILD", allow_hyphen_values = true)]
    pub build_name: String,
}

pub fn run(cli: Cli) -> Result<()> {
    let build = BuildName::parse(&cli.build_name)?;
    cancel(&build, &Paths::from_env()?, &Systemctl::from_env()?)
}

pub fn cancel(build: &BuildName, paths: &Paths, systemctl: &Systemctl) -> Result<()> {
    // A start under way is about to archive the run and start a new one: cancel that one,
    // once it is there, and keep another start from beginning until the cancel is applied.
    let _start = StartLock::wait(&paths.state_root, build)?;
    let unit = UnitKind::Runner.unit(build);
    let sd = paths.state_dir(build);
    let activity = systemctl.is_active(&unit)?;
    sd.check()?;
    let status = if sd.exists() { sd.read_status()? } else { None };
    let wrapper = status
        .as_ref()
        .filter(|s| !s.has_exited() && s.pid != 0)
        .map(|s| ProcessId {
            pid: s.pid,
            start_ticks: s.pid_start_ticks,
        })
        .filter(|id| procfs::is_alive(*id));
    if !sd.exists() && !activity.is_running() {
        // Never seen here (no state, no unit running): a typo, not a run to call cancelled.
        return Err(atvm_common::builds::unknown(paths, build));
    }
    if !activity.is_running() && wrapper.is_none() {
        logging::info(format!(
            "{unit} is not running ({}); nothing to cancel (a runner started by hand is not \
             stopped by this tool: cancel its run with cancel-atvm-run-watcher)",
            activity.word()
        ));
        return Ok(());
    }
    if sd.runner_spec().exists() {
        mark_cancel_requested(&sd, build)?;
    }
    if activity.is_running() {
        systemctl.stop(&unit)?;
    } else if let Some(id) = wrapper {
        // A wrapper started outside systemd: stop it the way systemd would.
        // SAFETY: kill(2) with a pid we just verified by start time; no memory is involved.
        unsafe { libc::kill(id.pid as libc::pid_t, libc::SIGTERM) };
    }
    logging::info(format!("cancelled {unit}"));
    Ok(())
}

/// Record the cancel before stopping, so the wrapper's exit record carries it. If the wrapper
/// has not written its status yet, leave a pid-less status that it will keep.
fn mark_cancel_requested(sd: &atvm_common::StateDir, build: &BuildName) -> Result<()> {
    let spec: Option<atvm_common::state::RunnerSpec> =
        atvm_common::fsutil::read_json(&sd.runner_spec())?;
    sd.update_status(|current| {
        let mut status = current.unwrap_or_else(|| RunnerStatus {
            build_name: build.to_string(),
            run_id: spec.as_ref().map(|s| s.run_id.clone()).unwrap_or_default(),
            ..RunnerStatus::default()
        });
        if status.has_exited() {
            return Ok((None, ()));
        }
        status.cancel_requested = true;
        status.cancel_requested_at = Some(Timestamp::now());
        Ok((Some(status), ()))
    })
}
