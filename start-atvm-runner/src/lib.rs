//! start-atvm-runner: record the runner command in `runner/spec.json` and start
//! `atvm-runner@<build>.service` (docs/watcher-service.md).

use atvm_common::config;
use atvm_common::error::{Error, Result};
use atvm_common::procfs;
use atvm_common::state::{RunnerSpec, StartLock, new_run_id};
use atvm_common::systemctl::{Systemctl, UnitKind};
use atvm_common::{BuildName, Paths, StateDir, Timestamp, fsutil, logging};
use clap::Parser;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to wait for the wrapper to confirm (or refuse) the start (docs/watcher-service.md).
pub const CONFIRM_VAR: &str = "ATVM_START_CONFIRM_SECONDS";

const EXAMPLE: &str = "\
Example:
  start-atvm-runner --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc \\
      --runner-command 'python3 ./run-sorry-cypress.py --config_family gold \\
          --build_name e2e-redhat9.6-ubuntu24.04-w2k25-fc --categorize' \\
      --workdir /root/cdc-e2e-cyp-12.17.4

Starts atvm-runner@<build>.service, which runs the command with /bin/sh -c and writes its
output to <log-dir>/<build>.log. Start the watcher first (start-atvm-run does both, in order).
A command that names another build (--build_name X), or has --categorize for a run started
without it, is refused (exit 2). A working directory that is missing or not a directory is
refused before anything starts
(exit 5, naming it) and recorded in runner/status.json, so the build's watcher ends the run
UNKNOWN at once instead of waiting for its start timeout.

Environment:
  ATVM_STATE_ROOT              state directories [default: /var/lib/atvm-run-watcher]
  ATVM_ENV_FILE                the env file: its ATVM_* lines apply where the environment sets none [default: /etc/atvm-run-watcher.env]
  ATVM_AUTOMATION_ROOT         the runner's default working directory [default: /root/cdc-e2e-cyp-12.17.4]
  ATVM_LOG_DIR                 where the run log goes [default: /tmp]
  ATVM_SYSTEMCTL               the program used for systemctl [default: systemctl]
  ATVM_START_CONFIRM_SECONDS   how long to wait for the runner to confirm its start [default: 10]
  JOURNAL_STREAM               set by systemd: lines carry journal priorities";

#[derive(Debug, Parser)]
#[command(name = "start-atvm-runner", version, about = "Start the Cypress runner unit for a build", after_help = EXAMPLE)]
pub struct Cli {
    /// Build name; also the unit instance (`atvm-runner@<build>.service`).
    #[arg(long, value_name = "BUILD", allow_hyphen_values = true)]
    pub build_name: String,
    #[command(flatten)]
    pub runner: RunnerArgs,
    /// Check everything a start would check and say what it would do; change nothing.
    #[arg(long)]
    pub dry_run: bool,
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
    let paths = Paths::from_env()?;
    let systemctl = Systemctl::from_env()?;
    refuse_contradictions(
        &build,
        &cli.runner.runner_command,
        recorded_categorize(&build, &paths),
    )?;
    if cli.dry_run {
        return dry_run(&build, &paths, &systemctl, &cli.runner);
    }
    let lock = StartLock::acquire(&checked_state_root(&paths)?, &build)?;
    start(&build, &paths, &systemctl, &cli.runner, &lock)?;
    Ok(())
}

/// The state root, created if missing, and refused unless it is ours alone (docs/watcher-service.md).
pub fn checked_state_root(paths: &Paths) -> Result<PathBuf> {
    if fs::symlink_metadata(&paths.state_root).is_err() {
        fsutil::create_dir(&paths.state_root, 0o700)?;
    }
    fsutil::check_private_dir(&paths.state_root)?;
    Ok(paths.state_root.clone())
}

/// Refuse a runner command that contradicts the helper's own options (exit 2, naming both
/// values, before anything is touched): one naming another build (`--build_name X`,
/// `--build-name X`), or one that categorizes (`--categorize`) for a run that is not
/// categorized — the watcher would post one combined message instead of one per group.
/// `categorize` is `None` when the run's setting is not known here. The reverse (a helper
/// told `--categorize` with a wrapper script that categorizes by itself) is allowed.
pub fn refuse_contradictions(
    build: &BuildName,
    runner_command: &str,
    categorize: Option<bool>,
) -> Result<()> {
    let words = shlex::split(runner_command).unwrap_or_else(|| {
        // Unbalanced quotes: /bin/sh will say so; the words are still worth a look.
        runner_command
            .split_whitespace()
            .map(str::to_string)
            .collect()
    });
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    if let Some(other) = procfs::argv_build_names(&words).find(|n| *n != build.as_str()) {
        return Err(Error::Usage(format!(
            "--build-name is {build} but --runner-command names build {other}: the watcher of {build} would never see that run; give both the same name"
        )));
    }
    if categorize == Some(false) && words.contains(&"--categorize") {
        return Err(Error::Usage(format!(
            "--runner-command has --categorize but the run of {build} is not categorized (no --categorize): the watcher would post one combined message instead of one per group; add --categorize"
        )));
    }
    Ok(())
}

/// Whether the recorded run of `build` is categorized, if a request can be read.
fn recorded_categorize(build: &BuildName, paths: &Paths) -> Option<bool> {
    let sd = paths.state_dir(build);
    sd.read_request().ok().flatten().map(|r| r.categorize)
}

/// An empty command is a usage error (exit 2): there is nothing to run.
fn check_command(args: &RunnerArgs) -> Result<()> {
    if args.runner_command.trim().is_empty() {
        return Err(Error::Usage(
            "--runner-command must not be empty".to_string(),
        ));
    }
    Ok(())
}

/// The runner's working directory: `--workdir`, else `$ATVM_AUTOMATION_ROOT`.
fn workdir(paths: &Paths, args: &RunnerArgs) -> PathBuf {
    args.workdir
        .clone()
        .unwrap_or_else(|| paths.automation_root.clone())
}

/// The runner's working directory, made absolute. A missing one, or one that is not a
/// directory, is a start the runner would refuse: exit 5 naming the path. start-atvm-run
/// checks it before its template step.
pub fn checked_workdir(build: &BuildName, paths: &Paths, args: &RunnerArgs) -> Result<PathBuf> {
    let workdir = workdir(paths, args);
    RunnerSpec::check_workdir(&workdir).map_err(|e| refused(build, &e))?;
    Ok(absolute(&workdir))
}

/// The runner will not start, for `why` (exit 5).
fn refused(build: &BuildName, why: &Error) -> Error {
    Error::RunnerStart {
        unit: UnitKind::Runner.unit(build),
        why: why.to_string(),
    }
}

/// `--dry-run`: every check of a real start, then what it would do; nothing is written.
fn dry_run(
    build: &BuildName,
    paths: &Paths,
    systemctl: &Systemctl,
    args: &RunnerArgs,
) -> Result<()> {
    check_command(args)?;
    preflight(build, paths)?;
    systemctl.refuse_if_running(UnitKind::Runner, build)?;
    refuse_if_ended(build, paths)?;
    let workdir = checked_workdir(build, paths, args)?;
    logging::info(format!(
        "would start {}: /bin/sh -c {:?} in {}, log {} (--dry-run: nothing done)",
        UnitKind::Runner.unit(build),
        args.runner_command,
        workdir.display(),
        paths.run_log(build).display()
    ));
    Ok(())
}

/// Refuse a runner for a run that has already ended: its result is recorded (and posted
/// or not) for good, so a runner started under it would run unwatched and unreported.
fn refuse_if_ended(build: &BuildName, paths: &Paths) -> Result<()> {
    let sd = paths.state_dir(build);
    if !sd.exists() {
        return Ok(());
    }
    let Some(request) = sd.read_request()? else {
        return Ok(());
    };
    match sd.read_state()? {
        Some(state) if state.run_id == request.run_id && state.is_final => {
            Err(Error::failed(format!(
                "the run {} of {build} has already ended {} ({}); start a new run first: \
                 start-atvm-run-watcher --build-name {build} …",
                request.run_id, state.state, state.reason
            )))
        }
        _ => Ok(()),
    }
}

/// The checks about the state root a dry run can make without writing: ownership and mode
/// of what exists, and no start of the build in progress.
pub fn preflight(build: &BuildName, paths: &Paths) -> Result<()> {
    if fs::symlink_metadata(&paths.state_root).is_ok() {
        paths.state_dir(build).check()?;
        if StartLock::held(&paths.state_root, build)? {
            return Err(Error::AlreadyRunning {
                what: format!("another start of {build} is in progress"),
                unit: StartLock::path(&paths.state_root, build)
                    .display()
                    .to_string(),
            });
        }
    }
    Ok(())
}

/// Refuse while the runner unit is active, write the spec, `reset-failed`, `start`, and
/// wait until the wrapper confirms it took this start up (or refused it: exit 5). Returns
/// the run id the runner reports. The caller holds the build's start lock.
///
/// A working directory the runner could not use is refused before anything starts, and the
/// refusal is recorded as the wrapper records its own: a watcher already following the
/// build ends the run UNKNOWN at once, naming the path, instead of waiting for the start
/// timeout. (Only after the unit is known not to run: a live runner's status is not ours to
/// overwrite.)
pub fn start(
    build: &BuildName,
    paths: &Paths,
    systemctl: &Systemctl,
    args: &RunnerArgs,
    _held: &StartLock,
) -> Result<String> {
    check_command(args)?;
    systemctl.refuse_if_running(UnitKind::Runner, build)?;
    let unit = UnitKind::Runner.unit(build);
    let sd = paths.state_dir(build);
    sd.check()?;
    refuse_if_ended(build, paths)?;
    let workdir = workdir(paths, args);
    if let Err(why) = RunnerSpec::check_workdir(&workdir) {
        if let Err(e) = sd.record_refusal(&paths.run_log(build), &why.to_string()) {
            logging::error(e);
        }
        return Err(refused(build, &why));
    }
    let workdir = absolute(&workdir);
    // The watcher only follows the runner whose run_id matches its request.
    let run_id = match sd.read_request()? {
        Some(request) => request.run_id,
        None => new_run_id(),
    };
    let spec = RunnerSpec {
        build_name: build.to_string(),
        run_id: run_id.clone(),
        command: args.runner_command.clone(),
        workdir,
        log_path: paths.run_log(build),
        created_at: Timestamp::now(),
        start_id: new_run_id(),
    };
    sd.create_runner_dir()?;
    fsutil::write_json(&sd.runner_spec(), &spec, 0o600)?;
    // A unit that failed last time must be reset or start limits may refuse it; a unit that
    // was never loaded has nothing to reset, which systemctl reports as an error: ignore it.
    let _ = systemctl.reset_failed(&unit);
    systemctl.start(&unit)?;
    if let Err(e) = confirm(&sd, &spec, &unit) {
        // Reported as not started: it must not start late, unwatched. (A wrapper that
        // refused has exited already; the stop is then a no-op.)
        if let Err(stop) = systemctl.stop(&unit) {
            logging::error(stop);
        }
        return Err(e);
    }
    logging::info(format!(
        "started {unit} (run {run_id}); log: {}",
        spec.log_path.display()
    ));
    Ok(run_id)
}

/// Wait up to `ATVM_START_CONFIRM_SECONDS` (10) for the wrapper's status of this start.
fn confirm(sd: &StateDir, spec: &RunnerSpec, unit: &str) -> Result<()> {
    let window = config::seconds_from_env(CONFIRM_VAR, 10.0)?;
    let deadline = Instant::now() + window;
    loop {
        match sd.read_status() {
            // A refusal of the spec itself (a link, someone else's) cannot name its start:
            // it is this start's if it is for this run and came after the spec.
            Ok(Some(s))
                if s.start_id == spec.start_id
                    || (s.start_id.is_empty()
                        && s.refused.is_some()
                        && s.run_id == spec.run_id
                        && s.started_at >= spec.created_at) =>
            {
                return match s.refused {
                    Some(why) => Err(Error::RunnerStart {
                        unit: unit.to_string(),
                        why,
                    }),
                    None => Ok(()),
                };
            }
            // Half-written by someone else or not there yet: look again.
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                return Err(Error::RunnerStart {
                    unit: unit.to_string(),
                    why: format!(
                        "no status from its wrapper within {}s; see journalctl -u {unit}",
                        window.as_secs_f64()
                    ),
                });
            }
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
