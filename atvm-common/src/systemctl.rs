//! The few systemctl verbs the tools use, run through `ATVM_SYSTEMCTL` (default `systemctl`;
//! tests point it at a fake, the user-manager test at `systemctl --user`). Failures carry the
//! command's own output so the operator sees why (exit 5).

use crate::build_name::BuildName;
use crate::error::{Error, Result};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The two unit templates (docs/units.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    Runner,
    Watcher,
}

impl UnitKind {
    pub fn template(self) -> &'static str {
        match self {
            UnitKind::Runner => "atvm-runner@.service",
            UnitKind::Watcher => "atvm-run-watcher@.service",
        }
    }

    /// The helper that cancels what this unit does.
    pub fn cancel_tool(self) -> &'static str {
        match self {
            UnitKind::Runner => "cancel-atvm-runner",
            UnitKind::Watcher => "cancel-atvm-run-watcher",
        }
    }

    /// The instance unit: the build name itself is the instance (`%i`).
    pub fn unit(self, build: &BuildName) -> String {
        match self {
            UnitKind::Runner => format!("atvm-runner@{build}.service"),
            UnitKind::Watcher => format!("atvm-run-watcher@{build}.service"),
        }
    }
}

/// `systemctl is-active` answers, reduced to what the tools decide on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Activity {
    /// active, activating, deactivating, reloading, refreshing: something is running.
    Running(String),
    /// inactive, failed, unknown, ...: nothing is running.
    Stopped(String),
}

impl Activity {
    /// The `is-active` words that mean something is running.
    pub fn word_is_running(word: &str) -> bool {
        matches!(
            word,
            "active" | "activating" | "deactivating" | "reloading" | "refreshing"
        )
    }

    pub fn is_running(&self) -> bool {
        matches!(self, Activity::Running(_))
    }
    pub fn word(&self) -> &str {
        match self {
            Activity::Running(w) | Activity::Stopped(w) => w,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Systemctl {
    program: String,
    fixed_args: Vec<String>,
}

impl Systemctl {
    /// `ATVM_SYSTEMCTL`, resolved as the paths are: the environment, then the env file.
    pub fn from_env() -> Result<Systemctl> {
        let spec = crate::paths::Settings::load()?
            .get("ATVM_SYSTEMCTL")
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Systemctl::new(&spec))
    }

    /// `spec` is a program and fixed arguments separated by whitespace (`systemctl --user`).
    pub fn new(spec: &str) -> Systemctl {
        let mut words = spec.split_whitespace().map(str::to_string);
        Systemctl {
            program: words.next().unwrap_or_else(|| "systemctl".to_string()),
            fixed_args: words.collect(),
        }
    }

    fn run(&self, action: &'static str, args: &[&str], unit: &str) -> Result<Output> {
        let program = &self.program;
        Command::new(program)
            .args(&self.fixed_args)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Systemctl {
                action,
                unit: unit.to_string(),
                detail: format!("cannot run {program}: {e}"),
            })
    }

    fn checked(&self, action: &'static str, args: &[&str], unit: &str) -> Result<()> {
        let out = self.run(action, args, unit)?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error::Systemctl {
            action,
            unit: unit.to_string(),
            detail: describe(&out),
        })
    }

    pub fn start(&self, unit: &str) -> Result<()> {
        self.checked("start", &["start", unit], unit)
    }

    pub fn stop(&self, unit: &str) -> Result<()> {
        self.checked("stop", &["stop", unit], unit)
    }

    /// Clear a previous failure so `start` is not refused by start limits. A unit that was
    /// never loaded has nothing to reset, so failure here is reported but not fatal.
    pub fn reset_failed(&self, unit: &str) -> Result<()> {
        self.checked("reset-failed", &["reset-failed", unit], unit)
    }

    /// Refuse (exit 4) while the `kind` unit of `build` is running, naming the helper that
    /// cancels it.
    pub fn refuse_if_running(&self, kind: UnitKind, build: &BuildName) -> Result<()> {
        let unit = kind.unit(build);
        let activity = self.is_active(&unit)?;
        if activity.is_running() {
            return Err(Error::AlreadyRunning {
                what: format!(
                    "already {}; cancel it first with {} --build-name {build}",
                    activity.word(),
                    kind.cancel_tool()
                ),
                unit,
            });
        }
        Ok(())
    }

    pub fn is_active(&self, unit: &str) -> Result<Activity> {
        let out = self.run("is-active", &["is-active", unit], unit)?;
        Ok(activity(&out))
    }

    /// [`Systemctl::is_active`], giving up at `deadline`: a systemctl (or a wrapper script
    /// and what it runs) still going then is killed, so that a wedged systemd leaves no
    /// process behind a read-only view that asked it.
    pub fn is_active_until(&self, unit: &str, deadline: Instant) -> Result<Activity> {
        let program = &self.program;
        let failed = |detail: String| Error::Systemctl {
            action: "is-active",
            unit: unit.to_string(),
            detail,
        };
        let mut child = Command::new(program)
            .args(&self.fixed_args)
            .args(["is-active", unit])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so the kill below reaches what a wrapper started.
            .process_group(0)
            .spawn()
            .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
        loop {
            if child
                .try_wait()
                .map_err(|e| failed(e.to_string()))?
                .is_some()
            {
                let out = child
                    .wait_with_output()
                    .map_err(|e| failed(e.to_string()))?;
                return Ok(activity(&out));
            }
            if Instant::now() >= deadline {
                // SAFETY: kill(2) on the child's own process group; no memory involved.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(failed("no answer in time; it was stopped".to_string()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What `systemctl is-active` said, reduced to [`Activity`].
fn activity(out: &Output) -> Activity {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let word = stdout.split_whitespace().next().unwrap_or("").to_string();
    match word.as_str() {
        w if Activity::word_is_running(w) => Activity::Running(word),
        "" if out.status.success() => Activity::Running("active".to_string()),
        "" => Activity::Stopped(describe(out)),
        _ => Activity::Stopped(word),
    }
}

/// The most useful part of a failed command's output, on one line.
fn describe(out: &Output) -> String {
    let text = [&out.stderr[..], &out.stdout[..]]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    let text: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let status = match out.status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    };
    if text.is_empty() {
        status
    } else {
        format!("{} [{status}]", text.join(" / "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_use_the_build_name_as_instance() {
        let b = BuildName::parse("e2e-ubuntu24.04").expect("valid");
        assert_eq!(
            UnitKind::Runner.unit(&b),
            "atvm-runner@e2e-ubuntu24.04.service"
        );
        assert_eq!(
            UnitKind::Watcher.unit(&b),
            "atvm-run-watcher@e2e-ubuntu24.04.service"
        );
    }

    #[test]
    fn failures_carry_the_output_and_a_missing_program_is_exit_5() {
        let sc = Systemctl::new("false");
        let err = sc.start("u.service").expect_err("false fails");
        assert_eq!(err.exit_code(), 5);
        assert!(err.to_string().contains("exit status 1"), "{err}");
        let missing = Systemctl::new("/nonexistent/systemctl");
        let err = missing.stop("u.service").expect_err("missing");
        assert!(
            err.to_string()
                .contains("cannot run /nonexistent/systemctl"),
            "{err}"
        );
        assert_eq!(err.exit_code(), 5);
    }

    #[test]
    fn is_active_reads_the_word() {
        assert!(
            Systemctl::new("echo active")
                .is_active("u")
                .expect("runs")
                .is_running()
        );
        let inactive = Systemctl::new("echo inactive")
            .is_active("u")
            .expect("runs");
        assert_eq!(inactive, Activity::Stopped("inactive".to_string()));
        assert!(
            !Systemctl::new("false")
                .is_active("u")
                .expect("runs")
                .is_running()
        );
    }
}
