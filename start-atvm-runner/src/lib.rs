//! start-atvm-runner: record the runner command in `runner/spec.json` and start
//! `atvm-runner@<build>.service` (SPEC §5).

use atvm_common::error::{Error, Result};
use atvm_common::state::{RunnerSpec, new_run_id};
use atvm_common::systemctl::{Systemctl, UnitKind};
use atvm_common::{BuildName, Paths, Timestamp, fsutil, logging};
use clap::Parser;
use std::path::{Path, PathBuf};

const EXAMPLE: &str = "\
Example:
  start-atvm-runner --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc \\
      --runner-command 'npx cypress run --record --group linux' \\
      --workdir /root/cdc-e2e-cyp-12.17.4

Starts atvm-runner@<build>.service, which runs the command with /bin/sh -c and writes its
output to <log-dir>/<build>.log. Start the watcher first (start-atvm-run does both, in order).";

#[derive(Debug, Parser)]
#[command(name = "start-atvm-runner", version, about = "Start the Cypress runner unit for a build", after_help = EXAMPLE)]
pub struct Cli {
    /// Build name; also the unit instance (`atvm-runner@<build>.service`).
    #[arg(long, value_name = "BUILD", allow_hyphen_values = true)]
    pub build_name: String,
    #[command(flatten)]
    pub runner: RunnerArgs,
}

/// The runner's options, shared with start-atvm-run.
#[derive(Clone, Debug, clap::Args)]
pub struct RunnerArgs {
    /// Command to run with /bin/sh -c (the Cypress invocation).
    #[arg(long, value_name = "CMD")]
    pub runner_command: String,
    /// Working directory of the command [default: $ATVM_AUTOMATION_ROOT].
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
}

pub fn run(cli: Cli) -> Result<()> {
    let build = BuildName::parse(&cli.build_name)?;
    start(
        &build,
        &Paths::from_env(),
        &Systemctl::from_env(),
        &cli.runner,
    )?;
    Ok(())
}

/// Refuse while the runner unit is active, write the spec, `reset-failed`, `start`.
/// Returns the run id the runner will report.
pub fn start(
    build: &BuildName,
    paths: &Paths,
    systemctl: &Systemctl,
    args: &RunnerArgs,
) -> Result<String> {
    if args.runner_command.trim().is_empty() {
        return Err(Error::Usage(
            "--runner-command must not be empty".to_string(),
        ));
    }
    let workdir = args
        .workdir
        .clone()
        .unwrap_or_else(|| paths.automation_root.clone());
    if !workdir.is_dir() {
        return Err(Error::file(
            "runner working directory does not exist",
            &workdir,
        ));
    }
    systemctl.refuse_if_running(UnitKind::Runner, build)?;
    let unit = UnitKind::Runner.unit(build);
    let sd = paths.state_dir(build);
    // The watcher only follows the runner whose run_id matches its request.
    let run_id = match sd.read_request()? {
        Some(request) => request.run_id,
        None => new_run_id(),
    };
    let spec = RunnerSpec {
        build_name: build.to_string(),
        run_id: run_id.clone(),
        command: args.runner_command.clone(),
        workdir: absolute(&workdir),
        log_path: paths.run_log(build),
        created_at: Timestamp::now(),
    };
    sd.create_runner_dir()?;
    fsutil::write_json(&sd.runner_spec(), &spec, 0o600)?;
    // A unit that failed last time must be reset or start limits may refuse it; a unit that
    // was never loaded has nothing to reset, which systemctl reports as an error: ignore it.
    let _ = systemctl.reset_failed(&unit);
    systemctl.start(&unit)?;
    logging::info(format!(
        "started {unit} (run {run_id}); log: {}",
        spec.log_path.display()
    ));
    Ok(run_id)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
