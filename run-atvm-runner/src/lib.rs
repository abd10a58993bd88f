//! run-atvm-runner: the ExecStart of `atvm-runner@.service` (docs/watcher-service.md). Runs the recorded
//! command in its own process group, copies its output into the run log ([`copy`]: the one
//! process that knows whether the log could be written, and when each Cypress block
//! started and finished), records pid, log inode, exit and the bytes written in
//! `runner/status.json`, forwards SIGTERM/SIGINT to the group, and exits with the
//! command's code (128+signal when it was killed).

pub mod copy;

use atvm_common::config::WEBHOOK_VAR;
use atvm_common::error::{Error, Result};
use atvm_common::state::{EarlierLog, LogWriteError, RunnerSpec, RunnerStatus};
use atvm_common::time::BootInstant;
use atvm_common::{BuildName, Paths, StateDir, Timestamp, fsutil, logging, procfs};
use atvm_common::{reporter, timeline};
use clap::Parser;
use copy::{Copied, Copier};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

const EXAMPLE: &str = "\
Example (normally run by systemd as atvm-runner@<build>.service):
  run-atvm-runner --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc

Reads <state-root>/<build>/runner/spec.json written by start-atvm-runner.

Environment:
  ATVM_STATE_ROOT              state directories [default: /var/lib/atvm-run-watcher]
  ATVM_ENV_FILE                the env file: its ATVM_* lines apply where the environment sets none [default: /etc/atvm-run-watcher.env]
  ATVM_BOOT_ID                 set by the unit (%b): the boot recorded with the run [default: the kernel's]
  MATTERMOST_ATVM_WEBHOOK      removed from the command's environment: Cypress never sees it
  JOURNAL_STREAM               set by systemd: lines carry journal priorities";

#[derive(Debug, Parser)]
#[command(name = "run-atvm-runner", version, about = "Run a build's Cypress command and record its exit (unit ExecStart)", after_help = EXAMPLE)]
pub struct Cli {
    /// Build name (the unit instance).
    #[arg(long, value_name = "BUILD", allow_hyphen_values = true)]
    pub build_name: String,
}

pub fn run(cli: Cli) -> Result<u8> {
    let build = BuildName::parse(&cli.build_name)?;
    let paths = Paths::from_env()?;
    let sd = paths.state_dir(&build);
    // A state directory someone else could write to cannot be trusted with a record either.
    sd.check()?;
    // Register before spawning: a stop that arrives during start-up is queued, not lost.
    let signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| Error::failed(format!("cannot install signal handlers: {e}")))?;
    // A second wrapper of a start (run by hand beside the unit's) must not touch the live
    // one's log or status: refused without a record, which would be the live one's.
    refuse_if_running(&sd)?;
    let started = match prepare(&sd, &build, &paths.reporter_dir) {
        Ok(started) => started,
        Err(e) => {
            sd.record_refusal(&paths.run_log(&build), &e.to_string())?;
            return Err(e);
        }
    };
    let Started {
        spec,
        mut status,
        mut child,
        copier,
        output,
    } = started;
    status.child_pid = child.id();
    write_start_status(&sd, status)?;
    logging::info(format!(
        "started run {} as pid {}; log: {}",
        spec.run_id,
        child.id(),
        spec.log_path.display()
    ));

    let stop_signal = Arc::new(AtomicI32::new(0));
    let handle = signals.handle();
    let forwarder = {
        let stop_signal = Arc::clone(&stop_signal);
        let pgid = child.id() as libc::pid_t;
        let mut signals = signals;
        std::thread::spawn(move || {
            for sig in signals.forever() {
                stop_signal.store(sig, Ordering::SeqCst);
                // SAFETY: kill(2) on the child's process group; no memory is involved.
                unsafe { libc::kill(-pgid, sig) };
            }
        })
    };
    let exited = Arc::new(AtomicBool::new(false));
    let copying = {
        let exited = Arc::clone(&exited);
        let sd = sd.clone();
        let run_id = spec.run_id.clone();
        std::thread::spawn(move || {
            copier.run(output, &exited, |e| note_write_error(&sd, &run_id, e))
        })
    };
    let waited = child.wait();
    // Only a stop that reached the command stopped the run: one that comes while the
    // output drains or the exit is being recorded finds the command already gone.
    let stop = stop_signal.swap(0, Ordering::SeqCst);
    exited.store(true, Ordering::SeqCst);
    let copied = copying
        .join()
        .unwrap_or_else(|_| Copied::lost("the copy of the command's output stopped"));
    let exit =
        waited.map_err(|e| Error::failed(format!("cannot wait for the runner command: {e}")))?;
    let recorded = record_exit_patiently(
        &sd,
        Exited {
            status: exit,
            stop_signal: (stop != 0).then_some(stop),
            copied,
        },
        &stop_signal,
    );
    handle.close();
    let _ = forwarder.join();
    recorded?;
    let code = exit_code(exit);
    logging::info(format!("run {} ended: {}", spec.run_id, describe(exit)));
    Ok(code)
}

/// A command running under the wrapper, with the status to record for it and the copy of
/// its output (the pipe's reading end) into the log.
struct Started {
    spec: RunnerSpec,
    status: RunnerStatus,
    child: std::process::Child,
    copier: Copier,
    output: std::io::PipeReader,
}

/// Everything that can refuse a run, in order: the spec, the working directory, the log
/// (never through a link or someone else's file in /tmp), starting `/bin/sh`. The reports
/// already in `reporter_dir` are recorded as not this run's.
fn prepare(sd: &StateDir, build: &BuildName, reporter_dir: &std::path::Path) -> Result<Started> {
    let spec = read_spec(sd, build)?;
    refuse_if_ended(sd, &spec)?;
    // The start helper checked it too, but it may have gone since.
    RunnerSpec::check_workdir(&spec.workdir)?;
    let log = fsutil::create_fresh_log(&spec.log_path)?;
    let log_meta = log
        .metadata()
        .map_err(|e| Error::io("cannot stat log", &spec.log_path, e))?;
    let me = procfs::self_id().ok_or_else(|| Error::failed("cannot read /proc/self/stat"))?;
    let status = RunnerStatus {
        build_name: build.to_string(),
        run_id: spec.run_id.clone(),
        start_id: spec.start_id.clone(),
        pid: me.pid,
        pid_start_ticks: me.start_ticks,
        child_pid: 0,
        started_at: Timestamp::now(),
        started_boot: BootInstant::now(),
        log_path: spec.log_path.clone(),
        log_inode: log_meta.ino(),
        log_dev: log_meta.dev(),
        ..RunnerStatus::default()
    };
    // After the start time is taken and before the command runs: what is in the reporter
    // directory now is not this run's, whatever its time says.
    // The run's first runner's record stands: a later runner of the same run would count
    // the first one's last reports as stale.
    if earlier_wrapper(sd, &spec).is_none() {
        record_stale_reports(sd, reporter_dir, status.started_at);
    }
    let (output, input) =
        std::io::pipe().map_err(|e| Error::io("cannot make a pipe for", &spec.log_path, e))?;
    let stderr = input
        .try_clone()
        .map_err(|e| Error::io("cannot make a pipe for", &spec.log_path, e))?;
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.workdir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(input)
        .stderr(stderr)
        .env_remove(WEBHOOK_VAR)
        .spawn()
        .map_err(|e| Error::io("cannot start /bin/sh in", &spec.workdir, e))?;
    let timeline = sd.create_runner_dir().and_then(|()| {
        timeline::Writer::open(
            &sd.runner_timeline(),
            &spec.run_id,
            blocks_before(sd, &spec),
        )
    });
    let copier = Copier::new(
        log,
        spec.log_path.clone(),
        timeline.map_err(|e| e.to_string()),
    );
    Ok(Started {
        spec,
        status,
        child,
        copier,
        output,
    })
}

/// Record the reports already in `reporter_dir` (see [`StateDir::runner_stale_reports`]).
/// Best effort: without the record the watcher falls back to the reports' times alone.
fn record_stale_reports(sd: &StateDir, reporter_dir: &std::path::Path, started: Timestamp) {
    let stale = reporter::stale_reports(reporter_dir, started.to_system());
    let written = sd
        .create_runner_dir()
        .and_then(|()| fsutil::write_json(&sd.runner_stale_reports(), &stale, 0o600));
    if let Err(e) = written {
        logging::warn(format!(
            "{e}; reports written just before this run may be counted for it"
        ));
    }
}

/// The status of an earlier wrapper of this spec's run (a categorized run's second runner
/// is starting), if there was one.
fn earlier_wrapper(sd: &StateDir, spec: &RunnerSpec) -> Option<RunnerStatus> {
    sd.read_status()
        .ok()
        .flatten()
        .filter(|p| p.run_id == spec.run_id && p.pid != 0 && p.refused.is_none())
}

/// How many Cypress blocks the earlier wrappers of this run saw, when each recorded it:
/// this wrapper's blocks are numbered after them.
fn blocks_before(sd: &StateDir, spec: &RunnerSpec) -> Option<usize> {
    let prev = earlier_wrapper(sd, spec)?;
    prev.earlier_logs
        .iter()
        .map(|e| e.blocks)
        .chain([prev.log_blocks])
        .sum()
}

/// Another wrapper of the build is alive (its recorded pid still has its start time): exit 4.
fn refuse_if_running(sd: &StateDir) -> Result<()> {
    let Some(status) = sd.read_status().ok().flatten() else {
        return Ok(());
    };
    let live = procfs::ProcessId {
        pid: status.pid,
        start_ticks: status.pid_start_ticks,
    };
    let me = procfs::self_id();
    if status.exited_at.is_none() && procfs::is_alive(live) && me != Some(live) {
        return Err(Error::AlreadyRunning {
            what: format!(
                "another wrapper (pid {}) runs run {} of this build; stop it with cancel-atvm-runner",
                status.pid, status.run_id
            ),
            unit: sd.runner_status().display().to_string(),
        });
    }
    Ok(())
}

/// A run that has already ended (its start was abandoned as UNKNOWN because this wrapper
/// did not report in time, or it was cancelled) is not started late: nobody would follow
/// it, and the start helper has told the operator it did not start.
fn refuse_if_ended(sd: &StateDir, spec: &RunnerSpec) -> Result<()> {
    match sd.read_state()? {
        Some(state) if state.run_id == spec.run_id && state.is_final => Err(Error::file(
            format!(
                "the run {} has already ended {} ({}); not starting it",
                spec.run_id, state.state, state.reason
            ),
            sd.state(),
        )),
        _ => Ok(()),
    }
}

/// The spec holds a command that runs as root: refuse one that someone else could have
/// written (docs/watcher-service.md).
fn read_spec(sd: &StateDir, build: &BuildName) -> Result<RunnerSpec> {
    let path = sd.runner_spec();
    let meta = fs::symlink_metadata(&path).map_err(|e| {
        Error::io(format!("cannot read runner spec (start the run with start-atvm-runner --build-name {build})"), &path, e)
    })?;
    if !meta.file_type().is_file() {
        return Err(Error::file(
            "refusing runner spec: not a regular file",
            &path,
        ));
    }
    if meta.uid() != fsutil::effective_uid() {
        return Err(Error::file(
            format!(
                "refusing runner spec: owned by uid {}, not by us",
                meta.uid()
            ),
            &path,
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(Error::file(
            format!("refusing runner spec: group- or world-writable (mode {mode:04o})"),
            &path,
        ));
    }
    let spec: RunnerSpec =
        fsutil::read_json(&path)?.ok_or_else(|| Error::file("runner spec vanished", &path))?;
    if spec.build_name != build.as_str() {
        return Err(Error::file(
            format!("runner spec is for build {:?}", spec.build_name),
            &path,
        ));
    }
    Ok(spec)
}

/// Write the start record. A cancel that raced ahead of us (a pid-less status for the same
/// run) is kept.
fn write_start_status(sd: &StateDir, mut status: RunnerStatus) -> Result<()> {
    sd.update_status(|current| {
        match current.filter(|p| p.run_id == status.run_id) {
            Some(prev) if prev.pid == 0 => {
                status.cancel_requested = prev.cancel_requested;
                status.cancel_requested_at = prev.cancel_requested_at;
            }
            // An earlier wrapper of this run (a categorized run's second runner): its log
            // is part of the run's output, and what it recorded of it must not be lost.
            Some(prev) if prev.refused.is_none() => {
                status.earlier_logs = prev.earlier_logs.clone();
                status.earlier_logs.push(EarlierLog {
                    start_id: prev.start_id,
                    started_at: Some(prev.started_at),
                    log_path: prev.log_path,
                    log_dev: prev.log_dev,
                    log_inode: prev.log_inode,
                    log_bytes: prev.log_bytes,
                    log_write_error: prev.log_write_error,
                    blocks: prev.log_blocks,
                });
            }
            _ => {}
        }
        Ok((Some(status), ()))
    })
}

/// A write to the log failed: say so in the status at once (`atvm-run-status` shows it
/// while the run goes on). Best effort: the exit record carries it again.
fn note_write_error(sd: &StateDir, run_id: &str, error: &LogWriteError) {
    let noted = sd.update_status(|current| {
        Ok((
            current.filter(|s| s.run_id == run_id).map(|mut s| {
                s.log_write_error = Some(error.clone());
                s
            }),
            (),
        ))
    });
    if let Err(e) = noted {
        logging::warn(format!("cannot record the failed log write yet: {e}"));
    }
}

/// How the command ended, as the exit record says it.
struct Exited {
    status: ExitStatus,
    stop_signal: Option<i32>,
    copied: Copied,
}

/// How long a stop waits for an exit record the full disk keeps out.
const STOP_PATIENCE: Duration = Duration::from_secs(20);

/// The exit record, written again while the state's file system is full: without it the
/// run would end TERMINATED (an exit nobody recorded) and its result would never be posted.
/// A stop (`systemctl stop`, the unit's shutdown) gives up after [`STOP_PATIENCE`].
fn record_exit_patiently(sd: &StateDir, exited: Exited, stop: &AtomicI32) -> Result<()> {
    let mut give_up_at: Option<Instant> = None;
    let mut said = false;
    loop {
        match record_exit(sd, &exited) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                if !std::mem::replace(&mut said, true) {
                    logging::warn(format!(
                        "cannot record the command's exit yet ({e}); trying again every second"
                    ));
                }
                if stop.load(Ordering::SeqCst) != 0 {
                    let at = *give_up_at.get_or_insert_with(|| Instant::now() + STOP_PATIENCE);
                    if Instant::now() >= at {
                        return Err(e);
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

fn record_exit(sd: &StateDir, exited: &Exited) -> Result<()> {
    sd.update_status(|current| {
        let Some(mut status) = current else {
            return Err(Error::file(
                "runner status vanished before the exit could be recorded",
                sd.runner_status(),
            ));
        };
        status.exited_at = Some(Timestamp::now());
        status.exited_boot = BootInstant::now();
        status.exit_code = exited.status.code();
        status.signal = exited.status.signal();
        status.stop_signal = exited.stop_signal;
        status.log_bytes = Some(exited.copied.bytes);
        status.log_blocks = Some(exited.copied.blocks);
        status.log_write_error = exited.copied.write_error.clone();
        status.timeline_error = exited.copied.timeline_error.clone();
        Ok((Some(status), ()))
    })
}

fn exit_code(exit: ExitStatus) -> u8 {
    match (exit.code(), exit.signal()) {
        (Some(c), _) => (c & 0xff) as u8,
        (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

fn describe(exit: ExitStatus) -> String {
    match (exit.code(), exit.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "unknown exit".to_string(),
    }
}
