//! start-atvm-run: the safe start order (docs/watcher-service.md). The template step runs synchronously and
//! must succeed before anything is started; then the watcher, then the runner; if the runner
//! cannot be started the watcher is stopped again and the run recorded as UNKNOWN.

use atvm_common::config::WEBHOOK_VAR;
use atvm_common::error::{Error, Result};
use atvm_common::state::StartLock;
use atvm_common::systemctl::{Systemctl, UnitKind};
use atvm_common::{BuildName, Paths, fsutil, logging};
use clap::Parser;
use start_atvm_run_watcher::WatchArgs;
use start_atvm_runner::{RunnerArgs, checked_state_root};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Lines of the launch log shown when the template step fails.
const TAIL_LINES: usize = 20;

const EXAMPLE: &str = "\
Example:
  start-atvm-run --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc \\
      --template cmc-e2e --template-command 'python3 ./cmc-templates.py --template_name cmc-e2e \\
          --config_file cypress.atvm-config-gold.ts' \\
      --runner-command 'python3 ./run-sorry-cypress.py --config_family gold \\
          --build_name e2e-redhat9.6-ubuntu24.04-w2k25-fc --categorize' \\
      --config-family gold --config-file cypress.atvm-config-gold.ts \\
      --integration-plugin 'pure with fc' --categorize --scope-description 'nightly upgrade matrix'

Order: first everything that can be refused is checked, the runner's working directory
included (missing or not a directory: exit 5, naming it). (1) the template command runs in
$ATVM_AUTOMATION_ROOT with its output in <log-dir>/<build>.launch.log; if it fails, nothing
is started (exit 3). (2) the watcher is started, (3) then the runner. Use --dry-run to make
the same checks and print the plan without doing anything.

Environment:
  ATVM_STATE_ROOT              state directories [default: /var/lib/atvm-run-watcher]
  ATVM_AUTOMATION_ROOT         where the template step and the runner run [default: /root/cdc-e2e-cyp-12.17.4]
  ATVM_LOG_DIR                 run and launch logs [default: /tmp]
  ATVM_ENV_FILE                the env file: its MATTERMOST_ATVM_* and ATVM_* lines apply where the environment sets none [default: /etc/atvm-run-watcher.env]
  MATTERMOST_ATVM_WEBHOOK      must be set (here or in the env file) before anything starts
  MATTERMOST_ATVM_MENTION, MATTERMOST_ATVM_NOTIFY
                               checked before anything starts (exit 78 when invalid)
  ATVM_SYSTEMCTL               the program used for systemctl [default: systemctl]
  ATVM_START_CONFIRM_SECONDS   how long to wait for the runner to confirm its start [default: 10]
  JOURNAL_STREAM               set by systemd: lines carry journal priorities";

#[derive(Debug, Parser)]
#[command(
    name = "start-atvm-run",
    version,
    about = "Run the template step, then start the watcher and the runner for a build",
    after_help = EXAMPLE,
    mut_arg("runner_command", |a| a.required(true).help(
        "Command atvm-runner@<build>.service runs with /bin/sh -c in --workdir (the Cypress run); \
         refused if it names another build, or has --categorize without it here"
    )),
    mut_arg("template_command", |a| a.help(
        "Template step: run first, synchronously, with /bin/sh -c in $ATVM_AUTOMATION_ROOT; \
         if it fails nothing is started (exit 3)"
    ))
)]
pub struct Cli {
    /// Build name; also the unit instance of both units.
    #[arg(long, value_name = "BUILD", allow_hyphen_values = true)]
    pub build_name: String,
    #[command(flatten)]
    pub watch: WatchArgs,
    /// Working directory of the runner command [default: $ATVM_AUTOMATION_ROOT].
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Check everything a start would check and print what it would do; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(cli: Cli) -> Result<()> {
    let build = BuildName::parse(&cli.build_name)?;
    let paths = Paths::from_env()?;
    let systemctl = Systemctl::from_env()?;
    let runner = RunnerArgs {
        runner_command: cli.watch.runner_command.clone().unwrap_or_default(),
        workdir: cli.workdir.clone(),
    };
    // Everything that can be refused is refused before the template step runs: a runner
    // that cannot start must not leave a template step run, a run archived and a watcher
    // started behind it.
    if runner.runner_command.trim().is_empty() {
        return Err(Error::Usage(
            "--runner-command must not be empty".to_string(),
        ));
    }
    cli.watch.refuse_contradictions(&build)?;
    start_atvm_runner::checked_workdir(&build, &paths, &runner)?;
    if cli.dry_run {
        start_atvm_run_watcher::preflight(&build, &paths, &systemctl)?;
        print_plan(&build, &paths, &cli.watch, &runner);
        return Ok(());
    }
    // Held for the whole sequence: a second start of this build exits 4 at once.
    let lock = StartLock::acquire(&checked_state_root(&paths)?, &build)?;
    start_atvm_run_watcher::refuse_if_active(&build, &systemctl)?;
    start_atvm_run_watcher::check_config(&paths)?;
    paths.state_dir(&build).check()?;
    start_atvm_run_watcher::refuse_if_owed(&build, &paths)?;
    if let Some(cmd) = cli
        .watch
        .template_command
        .as_deref()
        .filter(|c| !c.trim().is_empty())
    {
        template_step(&build, &paths, cmd)?;
    }
    // A watcher that does not come up is abandoned by the watcher's own start.
    start_atvm_run_watcher::start(&build, &paths, &systemctl, &cli.watch, &lock)?;
    if let Err(e) = start_atvm_runner::start(&build, &paths, &systemctl, &runner, &lock) {
        // Stop the watcher again and record why, so the run does not sit in STARTING until
        // the start timeout.
        let reason = match &e {
            Error::RunnerStart { .. } => e.to_string(),
            other => format!("the runner could not be started: {other}"),
        };
        start_atvm_run_watcher::abandon(&build, &paths, &systemctl, &reason);
        return Err(e);
    }
    Ok(())
}

fn print_plan(build: &BuildName, paths: &Paths, watch: &WatchArgs, runner: &RunnerArgs) {
    let workdir = runner
        .workdir
        .clone()
        .unwrap_or_else(|| paths.automation_root.clone());
    let mut step = 1;
    logging::info(format!("plan for {build} (--dry-run: nothing is done)"));
    if let Some(cmd) = &watch.template_command {
        logging::info(format!(
            "  {step}. template step: /bin/sh -c {cmd:?} in {}, output to {}; stop here if it fails",
            paths.automation_root.display(),
            paths.launch_log(build).display()
        ));
        step += 1;
    }
    logging::info(format!(
        "  {step}. archive {} if present, write request.json, start {}",
        paths.state_dir(build).path().display(),
        UnitKind::Watcher.unit(build)
    ));
    logging::info(format!(
        "  {}. start {}: /bin/sh -c {:?} in {}, log {}",
        step + 1,
        UnitKind::Runner.unit(build),
        runner.runner_command,
        workdir.display(),
        paths.run_log(build).display()
    ));
}

/// Run the template command synchronously; on failure show where its output is and how it
/// ended (exit 3).
fn template_step(build: &BuildName, paths: &Paths, cmd: &str) -> Result<()> {
    let launch_log = paths.launch_log(build);
    let log = fsutil::create_fresh_log(&launch_log)?;
    let stderr = log
        .try_clone()
        .map_err(|e| Error::io("cannot use launch log", &launch_log, e))?;
    logging::info(format!(
        "template step: running in {} (output: {})",
        paths.automation_root.display(),
        launch_log.display()
    ));
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(&paths.automation_root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .env_remove(WEBHOOK_VAR)
        .status()
        .map_err(|e| Error::io("cannot run the template step in", &paths.automation_root, e))?;
    if status.success() {
        logging::info("template step succeeded");
        return Ok(());
    }
    let how = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "failed".to_string(),
    };
    let tail = last_lines(&launch_log, TAIL_LINES);
    logging::error(format!(
        "template step failed ({how}); last {} lines of {}:",
        tail.len(),
        launch_log.display()
    ));
    for line in &tail {
        logging::error_detail(format!("  | {line}"));
    }
    Err(Error::TemplateFailed {
        status: format!("{how}; nothing was started"),
        log: launch_log,
    })
}

fn last_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut ring = std::collections::VecDeque::with_capacity(n + 1);
    for line in BufReader::new(file).split(b'\n').map_while(|l| l.ok()) {
        ring.push_back(String::from_utf8_lossy(&line).into_owned());
        if ring.len() > n {
            ring.pop_front();
        }
    }
    ring.into()
}
