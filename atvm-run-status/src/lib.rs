//! atvm-run-status: a read-only view of every run (docs/watcher-service.md). Without a build, one line
//! per run, newest first; with `--build-name`, everything about that run; `--json` the same
//! records for scripts (shape in docs/atvm-run-status.md). It takes no lock and writes
//! nothing, so it never waits on — or delays — a watcher or a start helper.
//!
//! Exit status: 0 when it could list (a run whose files cannot be read is listed with the
//! error, and also warned about on stderr); 1 when the state root cannot be read or is not
//! safely owned, or for an unknown build; 2 for an invalid build name.

mod history;
mod order;
mod read;
mod table;
mod terminal;
mod text;
mod units;
mod view;

use atvm_common::error::{Error, Result};
use atvm_common::state::RunState;
use atvm_common::systemctl::{Systemctl, UnitKind};
use atvm_common::time::Moment;
use atvm_common::{BuildName, Paths, logging};
use clap::Parser;
use std::io::Write;
use view::{Report, RunView};

const EXAMPLE: &str = "\
Example:
  atvm-run-status                      # every current run, newest first
  atvm-run-status --all                # and the archived ones
  atvm-run-status --state FAILED,HUNG --since 1d
  atvm-run-status --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc
  atvm-run-status --json | jq -r '.runs[] | select(.final == false) | .build_name'

Columns: BUILD, STATE, POST (a post failed for good shows its HTTP status), GROUPS (sub-runs
posted/seen, + while the run goes on), STARTED (local time), DURATION (or running for),
TESTS (passed/failed/flaky), RUNNER and WATCHER (their units' state), REASON (all the width
the others leave). Nothing is locked or written.

Environment:
  ATVM_STATE_ROOT   state directories [default: /var/lib/atvm-run-watcher]
  ATVM_ENV_FILE     its ATVM_* lines apply where the environment sets none [default: /etc/atvm-run-watcher.env]
  ATVM_LOG_DIR      run and launch logs [default: /tmp]
  ATVM_SYSTEMCTL    program asked `is-active` [default: systemctl]
  COLUMNS           the table's width when the terminal does not say (a pipe gets whole lines)
  TZ                the time zone of STARTED [default: the machine's]
  JOURNAL_STREAM    set by systemd: error lines carry journal priorities";

#[derive(Debug, Parser)]
#[command(name = "atvm-run-status", version, about = "Show the state of every run, or of one run in detail (read-only)", after_help = EXAMPLE)]
pub struct Cli {
    /// Show this build's run in detail instead of the table (with --all, its archived runs
    /// too).
    #[arg(long, value_name = "BUILD", allow_hyphen_values = true)]
    pub build_name: Option<String>,
    /// Print JSON for scripts instead of text (shape: docs/atvm-run-status.md).
    #[arg(long)]
    pub json: bool,
    /// Include archived runs (<state-root>/.archive/<build>/<sequence>-<timestamp>/).
    #[arg(long)]
    pub all: bool,
    /// Only runs in these states (comma-separated, e.g. `FAILED,HUNG`).
    #[arg(long, value_name = "STATE,…", value_delimiter = ',', value_parser = state_word)]
    pub state: Vec<RunState>,
    /// Only runs started within this long (`90m`, `2h`, `1d`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
}

fn state_word(word: &str) -> std::result::Result<RunState, String> {
    serde_json::from_value(serde_json::Value::String(word.trim().to_ascii_uppercase()))
        .map_err(|_| format!("{word:?} is not a state (STARTING, WATCHING, COMPLETED, FAILED, CANCELLED, TERMINATED, HUNG, UNKNOWN)"))
}

pub fn run(cli: Cli) -> Result<()> {
    // Refused before any file or unit is looked at (docs/watcher-service.md).
    let build = cli
        .build_name
        .as_deref()
        .map(BuildName::parse)
        .transpose()?;
    let paths = Paths::from_env()?;
    let now = Moment::now();
    let sources = match &build {
        None => read::all_runs(&paths, cli.all)?,
        Some(b) => read::build_runs(&paths, b, cli.all)?,
    };
    let mut runs: Vec<RunView> = sources
        .iter()
        .filter_map(|s| read::settled(s, &paths, build.is_some(), &now))
        .filter(|r| cli.state.is_empty() || r.state.is_some_and(|s| cli.state.contains(&s)))
        .filter(|r| {
            cli.since
                .is_none_or(|within| r.start.as_ref().is_some_and(|at| at.until(&now) <= within))
        })
        .collect();
    order::newest_first(&mut runs, &now);
    add_units(&mut runs, &Systemctl::from_env()?);
    for run in &runs {
        for e in &run.errors {
            logging::warn(&e.error);
        }
    }
    let out = if cli.json {
        let report = Report {
            state_root: paths.state_root.clone(),
            generated_at: now.wall,
            runs,
        };
        let mut json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::failed(format!("cannot encode the report: {e}")))?;
        json.push('\n');
        json
    } else if build.is_some() {
        let blocks: Vec<String> = runs.iter().map(|r| text::detail(r, now.wall)).collect();
        blocks.join("\n")
    } else {
        table::table(&runs, cli.all, terminal::width())
    };
    print(&out)
}

/// Ask systemctl about the units of current runs only: an archived run's unit name now
/// belongs to the build's current run, if any.
fn add_units(runs: &mut [RunView], systemctl: &Systemctl) {
    let mut wanted = Vec::new();
    for run in runs.iter().filter(|r| r.archive.is_none()) {
        let Ok(build) = BuildName::parse(&run.build_name) else {
            continue;
        };
        wanted.push(UnitKind::Watcher.unit(&build));
        wanted.push(UnitKind::Runner.unit(&build));
    }
    let mut answers = units::query(systemctl, &wanted, units::DEADLINE);
    for run in runs.iter_mut().filter(|r| r.archive.is_none()) {
        let Ok(build) = BuildName::parse(&run.build_name) else {
            continue;
        };
        run.watcher_unit = answers.remove(&UnitKind::Watcher.unit(&build));
        run.runner_unit = answers.remove(&UnitKind::Runner.unit(&build));
    }
}

/// Write to stdout; a reader that went away (`| head`) is not an error.
fn print(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::io("cannot write the listing", "stdout", e))
        }
        _ => Ok(()),
    }
}
