//! cancel-atvm-run-watcher: write `cancelled.marker`, set `state.json` to CANCELLED (final),
//! stop `atvm-run-watcher@<build>.service`; never post (SPEC §9). The marker and the state
//! are written under the state lock, so a watcher saving at the same moment sees the marker
//! and cannot overwrite the cancel.

use atvm_common::error::{Error, Result};
use atvm_common::state::{RunState, State};
use atvm_common::systemctl::{Systemctl, UnitKind};
use atvm_common::{BuildName, Paths, logging};
use clap::Parser;

const EXAMPLE: &str = "\
Example:
  cancel-atvm-run-watcher --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc

Nothing is posted for a cancelled run. Repeating the command is harmless. To stop the
Cypress run itself, also run cancel-atvm-runner for the same build.";

#[derive(Debug, Parser)]
#[command(name = "cancel-atvm-run-watcher", version, about = "Cancel a build's watcher: mark the run CANCELLED and stop it without posting", after_help = EXAMPLE)]
pub struct Cli {
    /// Build name whose watcher to cancel.
    #[arg(long, value_name = "BUILD", allow_hyphen_values = true)]
    pub build_name: String,
}

pub fn run(cli: Cli) -> Result<()> {
    let build = BuildName::parse(&cli.build_name)?;
    cancel(&build, &Paths::from_env(), &Systemctl::from_env())
}

pub fn cancel(build: &BuildName, paths: &Paths, systemctl: &Systemctl) -> Result<()> {
    let sd = paths.state_dir(build);
    if !sd.exists() {
        return Err(Error::file(
            format!("unknown build {build}: no state directory"),
            sd.path(),
        ));
    }
    sd.check()?;
    let request = sd.read_request()?;
    let unit = UnitKind::Watcher.unit(build);
    let outcome = sd.update_state(|current| {
        let run_id = request
            .as_ref()
            .map(|r| r.run_id.clone())
            .or_else(|| current.as_ref().map(|s| s.run_id.clone()))
            .unwrap_or_default();
        let existing = sd.read_marker(&sd.cancelled_marker())?;
        if existing
            .as_ref()
            .is_none_or(|(m, _)| m.run_id.as_deref() != Some(run_id.as_str()))
        {
            sd.write_marker(&sd.cancelled_marker(), &run_id)?;
        }
        let existing = current.filter(|s| s.run_id == run_id);
        match &existing {
            // A result already decided (and perhaps posted) is not rewritten after the fact.
            Some(s) if s.is_final && s.state != RunState::Cancelled => {
                return Ok((None, Some(s.state)));
            }
            // Cancelled before: nothing to change.
            Some(s) if s.is_final => return Ok((None, None)),
            _ => {}
        }
        // No state yet (the watcher never wrote one) or a live one: it becomes CANCELLED.
        let mut state = existing
            .unwrap_or_else(|| State::new(build.as_str(), &run_id, RunState::Cancelled, ""));
        state.end_unposted(
            RunState::Cancelled,
            "cancelled with cancel-atvm-run-watcher",
        );
        Ok((Some(state), None))
    })?;
    if let Some(final_state) = outcome {
        logging::info(format!(
            "{build} already ended as {final_state}; marked cancelled, state left as it is"
        ));
    }
    let activity = systemctl.is_active(&unit)?;
    if activity.is_running() {
        systemctl.stop(&unit)?;
        logging::info(format!(
            "cancelled {build}: state CANCELLED, {unit} stopped, nothing posted"
        ));
    } else {
        logging::info(format!(
            "cancelled {build}: state CANCELLED; {unit} was not running ({})",
            activity.word()
        ));
    }
    Ok(())
}
