//! start-atvm-run-watcher: archive the build's stale state, record the request and start
//! `atvm-run-watcher@<build>.service` (docs/watcher-service.md). A watcher that does not
//! come up leaves its run final (UNKNOWN), never one a later `--resume-all` would pick up.

mod place;

use atvm_common::config::{MattermostConfig, env_file_warning};
use atvm_common::error::{Error, Result};
use atvm_common::fsutil;
use atvm_common::state::{Request, StartLock, new_run_id};
use atvm_common::systemctl::{Systemctl, UnitKind};
use atvm_common::time::BootInstant;
use atvm_common::{BuildName, Paths, Timestamp, logging};
use clap::Parser;
use start_atvm_runner::checked_state_root;

const EXAMPLE: &str = "\
Example (the two-step flow; start-atvm-run does the template step, watcher and runner in one):
  cd /root/cdc-e2e-cyp-12.17.4 && python3 ./cmc-templates.py --template_name cmc-e2e \\
      --config_file cypress.atvm-config-gold.ts
  start-atvm-run-watcher --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc \\
      --template cmc-e2e --config-family gold --config-file cypress.atvm-config-gold.ts \\
      --migration-style in-place --integration-plugin 'pure with fc' --categorize \\
      --scope-description 'nightly upgrade matrix'
  start-atvm-runner --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc \\
      --runner-command 'python3 ./run-sorry-cypress.py --config_family gold \\
          --build_name e2e-redhat9.6-ubuntu24.04-w2k25-fc --categorize'

This helper does not run --template-command (it records it, and says so on stderr): run the
template step yourself first, as above, or use start-atvm-run. A --runner-command that names
another build, or categorizes without --categorize here, is refused (exit 2).

Any earlier state of the same build name is moved to
<state-root>/.archive/<build>/<sequence>-<time>/ first, so nothing (markers, posts,
sub-runs) is inherited. If the unit cannot be started or is not running right after, the
run is recorded as UNKNOWN (final, naming the unit) and the exit status is 5: the boot-time
--resume-all never starts it later. Start the runner afterwards (start-atvm-runner), or use
start-atvm-run, which does the template step, watcher and runner in that order.

Environment:
  ATVM_STATE_ROOT              state directories [default: /var/lib/atvm-run-watcher]
  ATVM_ENV_FILE                the env file: its MATTERMOST_ATVM_* and ATVM_* lines apply where the environment sets none [default: /etc/atvm-run-watcher.env]
  MATTERMOST_ATVM_WEBHOOK      must be set (here or in the env file) before anything starts
  MATTERMOST_ATVM_MENTION, MATTERMOST_ATVM_NOTIFY
                               checked before anything starts (exit 78 when invalid)
  ATVM_SYSTEMCTL               the program used for systemctl [default: systemctl]
  JOURNAL_STREAM               set by systemd: lines carry journal priorities";

#[derive(Debug, Parser)]
#[command(name = "start-atvm-run-watcher", version, about = "Record a run request and start its watcher unit", after_help = EXAMPLE)]
pub struct Cli {
    /// Build name; also the unit instance (`atvm-run-watcher@<build>.service`).
    #[arg(long, value_name = "BUILD", allow_hyphen_values = true)]
    pub build_name: String,
    #[command(flatten)]
    pub watch: WatchArgs,
    /// Check everything a start would check and say what it would do; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What the run is about; recorded in `request.json` and shown in the Mattermost message.
/// Shared with start-atvm-run.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct WatchArgs {
    /// Template name (shown in the message).
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    /// The template step's command: recorded only (this helper does not run it; run it
    /// first, or use start-atvm-run, which does).
    #[arg(long, value_name = "CMD")]
    pub template_command: Option<String>,
    /// The runner's command: recorded in the request and checked against --build-name and
    /// --categorize (start it with start-atvm-runner).
    #[arg(long, value_name = "CMD")]
    pub runner_command: Option<String>,
    /// Configuration family of the run, e.g. `gold` (shown in the message).
    #[arg(long, value_name = "FAMILY")]
    pub config_family: Option<String>,
    /// Configuration file the run uses, e.g. `cypress.atvm-config-gold.ts` (shown in the
    /// message).
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<String>,
    /// Migration style under test, e.g. `in-place` (shown in the message).
    #[arg(long, value_name = "STYLE")]
    pub migration_style: Option<String>,
    /// Integration plugin under test, e.g. `pure with fc` (shown in the message).
    #[arg(long, value_name = "PLUGIN")]
    pub integration_plugin: Option<String>,
    /// Post one result per Cypress group (each `(Run Starting)` block) as it finishes.
    #[arg(long)]
    pub categorize: bool,
    /// Free-text scope shown in the message.
    #[arg(long, value_name = "TEXT")]
    pub scope_description: Option<String>,
}

pub fn run(cli: Cli) -> Result<()> {
    let build = BuildName::parse(&cli.build_name)?;
    cli.watch.refuse_contradictions(&build)?;
    if cli.watch.template_command.is_some() {
        // Only start-atvm-run runs it: a template step skipped here is how a stale
        // specPattern ends a run as "no spec files were found".
        logging::warn(
            "--template-command is recorded, not run: only start-atvm-run runs the template step (synchronously, before the watcher); run it yourself first, or use start-atvm-run",
        );
    }
    let paths = Paths::from_env()?;
    let systemctl = Systemctl::from_env()?;
    if cli.dry_run {
        return dry_run(&build, &paths, &systemctl);
    }
    let lock = StartLock::acquire(&checked_state_root(&paths)?, &build)?;
    start(&build, &paths, &systemctl, &cli.watch, &lock)?;
    Ok(())
}

impl WatchArgs {
    /// A runner command that contradicts these options (another build, `--categorize`
    /// without it here) is refused before anything is touched: exit 2, naming both.
    pub fn refuse_contradictions(&self, build: &BuildName) -> Result<()> {
        match &self.runner_command {
            Some(cmd) => {
                start_atvm_runner::refuse_contradictions(build, cmd, Some(self.categorize))
            }
            None => Ok(()),
        }
    }
}

/// Refuse while the watcher or runner of this build is active (exit 4).
pub fn refuse_if_active(build: &BuildName, systemctl: &Systemctl) -> Result<()> {
    systemctl.refuse_if_running(UnitKind::Watcher, build)?;
    systemctl.refuse_if_running(UnitKind::Runner, build)
}

/// Check the Mattermost configuration the watcher will need (exit 78 if missing) and warn
/// when the env file holding the secret is open to others.
pub fn check_config(paths: &Paths) -> Result<()> {
    // start-atvm-run checks before its template step and again in the watcher's start:
    // the warning is said once per process.
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Some(warning) = env_file_warning(&paths.env_file) {
        WARNED.call_once(|| logging::warn(warning));
    }
    MattermostConfig::load(&paths.env_file)?.require_webhook(&paths.env_file)?;
    Ok(())
}

/// Every check a start makes, without writing anything (`--dry-run` of the start helpers):
/// the configuration, the units, the state root's and build directory's ownership, no other
/// start in progress, and no watcher process holding the build's lock.
pub fn preflight(build: &BuildName, paths: &Paths, systemctl: &Systemctl) -> Result<()> {
    check_config(paths)?;
    refuse_if_active(build, systemctl)?;
    start_atvm_runner::preflight(build, paths)?;
    refuse_if_locked(build, paths)?;
    refuse_if_owed(build, paths)
}

/// A new run of `build` archives the previous one; a post that run still owes would then
/// never go out. Refuse (exit 4) until it is delivered or deliberately dropped.
pub fn refuse_if_owed(build: &BuildName, paths: &Paths) -> Result<()> {
    let sd = paths.state_dir(build);
    if !sd.exists() {
        return Ok(());
    }
    let previous = sd.read_state().unwrap_or_else(|e| {
        // No watcher can deliver from a state it cannot read either: it is archived as it
        // is (never replaced), and said so.
        logging::warn(format!(
            "the previous run's state is kept in the archive as it is: {e}"
        ));
        None
    });
    match previous {
        Some(previous) if previous.owes_a_post() => Err(Error::AlreadyRunning {
            what: format!(
                "the previous run of {build} (run {}, {}) still owes a post: deliver it with `atvm-run-watcher --build-name {build} --once`, or drop it with `cancel-atvm-run-watcher --build-name {build}`",
                previous.run_id, previous.state
            ),
            unit: sd.state().display().to_string(),
        }),
        _ => Ok(()),
    }
}

fn dry_run(build: &BuildName, paths: &Paths, systemctl: &Systemctl) -> Result<()> {
    preflight(build, paths, systemctl)?;
    let sd = paths.state_dir(build);
    let archive = if sd.exists() {
        format!(
            "move {} to {}/{build}/<time>/, ",
            sd.path().display(),
            paths.archive_root().display()
        )
    } else {
        String::new()
    };
    logging::info(format!(
        "would {archive}write {}, start {} (--dry-run: nothing done)",
        sd.request().display(),
        UnitKind::Watcher.unit(build)
    ));
    Ok(())
}

/// A watcher started by hand (outside systemd) still holds its lock.
fn refuse_if_locked(build: &BuildName, paths: &Paths) -> Result<()> {
    let sd = paths.state_dir(build);
    let Some((file, _)) = fsutil::open_regular(&sd.watcher_lock())? else {
        return Ok(());
    };
    // A shared probe: a watcher starting right now still gets its exclusive lock after
    // us, and one that holds it makes us refuse.
    match file.try_lock_shared() {
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::AlreadyRunning {
            what: format!(
                "a watcher process for {build} holds {}",
                sd.watcher_lock().display()
            ),
            unit: UnitKind::Watcher.unit(build),
        }),
        _ => Ok(()),
    }
}

/// Archive, record the request, start the unit and confirm it is running. The caller holds
/// the build's start lock.
pub fn start(
    build: &BuildName,
    paths: &Paths,
    systemctl: &Systemctl,
    args: &WatchArgs,
    _held: &StartLock,
) -> Result<Request> {
    refuse_if_active(build, systemctl)?;
    check_config(paths)?;
    let sd = paths.state_dir(build);
    sd.check()?;
    refuse_if_locked(build, paths)?;
    refuse_if_owed(build, paths)?;
    // Read before the archive moves them: an earlier run's process still alive is never
    // taken for this run's runner.
    let earlier_runners = sd.live_runners();
    let request = Request {
        build_name: build.to_string(),
        run_id: new_run_id(),
        requested_at: Timestamp::now(),
        requested_boot: BootInstant::now(),
        template: args.template.clone(),
        template_command: args.template_command.clone(),
        runner_command: args.runner_command.clone(),
        config_family: args.config_family.clone(),
        config_file: args.config_file.clone(),
        migration_style: args.migration_style.clone(),
        integration_plugin: args.integration_plugin.clone(),
        categorize: args.categorize,
        scope_description: args.scope_description.clone(),
        earlier_runners,
    };
    // The new directory with its request replaces the old one in one step; the old one
    // is archived (a reader never finds the build missing).
    if let Some(to) = place::replace(paths, build, &request)? {
        logging::info(format!(
            "archived the previous state of {build} to {}",
            to.display()
        ));
    }
    let unit = UnitKind::Watcher.unit(build);
    if let Err(e) = start_unit(systemctl, &unit) {
        // The request is recorded: a run left without a final state would be resumed by
        // `--resume-all` at the next boot and followed, even posted, long after this start
        // was reported as failed.
        abandon(
            build,
            paths,
            systemctl,
            &format!("the watcher could not be started: {e}"),
        );
        return Err(e);
    }
    logging::info(format!("started {unit} (run {})", request.run_id));
    Ok(request)
}

/// `reset-failed`, `start`, and confirm the unit is running right after (exit 5 if not).
fn start_unit(systemctl: &Systemctl, unit: &str) -> Result<()> {
    // Never loaded means nothing to reset; systemctl calls that an error, so ignore it.
    let _ = systemctl.reset_failed(unit);
    systemctl.start(unit)?;
    let activity = systemctl.is_active(unit)?;
    if !activity.is_running() {
        return Err(Error::Systemctl {
            action: "start",
            unit: unit.to_string(),
            detail: format!(
                "the unit is {} right after starting; see journalctl -u {unit}",
                activity.word()
            ),
        });
    }
    Ok(())
}

/// A start that cannot be completed (the watcher or the runner did not come up): end the
/// run UNKNOWN with `reason`, then stop the watcher, which may be half up. In that order,
/// the watcher stopping finds the verdict under the state lock, keeps it and logs it at
/// warning priority in its own journal, where `journalctl -u atvm-run-watcher@B -p warning`
/// shows it. What fails here is reported, not returned: the caller returns the error that
/// brought it here.
pub fn abandon(build: &BuildName, paths: &Paths, systemctl: &Systemctl, reason: &str) {
    let unit = UnitKind::Watcher.unit(build);
    let recorded = paths.state_dir(build).end_unstarted(reason);
    if let Err(e) = systemctl.stop(&unit) {
        logging::error(e);
    }
    match recorded {
        Ok(None) => logging::error(format!("stopped {unit}; state UNKNOWN recorded")),
        Ok(Some(state)) => logging::error(format!(
            "stopped {unit}; the run had already ended {state}, which stands (atvm-run-status --build-name {build})"
        )),
        Err(e) => logging::error(e),
    }
}
