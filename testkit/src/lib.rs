//! Test kit for the integration tests of every crate (dev-dependency only): a temporary
//! ATVM environment (every `ATVM_*` path inside a temp directory), a command builder that
//! clears the environment, a fake `systemctl` that runs the rendered units' `ExecStart`, a
//! fake Mattermost webhook on 127.0.0.1 (std `TcpListener`), and the fixtures.
//!
//! The binaries are found next to the test executable in the target directory; `cargo test
//! --workspace` builds all of them before any test runs.

#![allow(clippy::panic, clippy::unwrap_used)] // test support: failing loudly is the point

pub mod assert;
pub mod scenario;
pub mod webhook;

pub use assert::Expect;
pub use webhook::{Echo, FakeWebhook, Reply, attachment, field};

use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub use atvm_common::BINARIES;

/// The fake systemctl script (see its header for what it emulates).
pub const FAKE_SYSTEMCTL: &str = include_str!("fake-systemctl.sh");

/// Path of a workspace binary in the target directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> → target/debug/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// A file under `testkit/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// A temporary controller: state root, log dir, automation root, package root with the
/// binaries and rendered units, and a fake systemctl.
#[derive(Debug)]
pub struct Env {
    dir: tempfile::TempDir,
    pub state_root: PathBuf,
    pub log_dir: PathBuf,
    pub automation_root: PathBuf,
    pub reporter_dir: PathBuf,
    pub package_root: PathBuf,
    pub units_dir: PathBuf,
    pub systemd_dir: PathBuf,
    pub env_file: PathBuf,
    pub inventory: PathBuf,
    pub systemctl: PathBuf,
    vars: Vec<(String, String)>,
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let d = |name: &str| {
            let p = root.join(name);
            fs::create_dir_all(&p).expect("mkdir");
            p
        };
        let state_root = d("var/lib/atvm-run-watcher");
        fs::set_permissions(&state_root, fs::Permissions::from_mode(0o700)).expect("chmod");
        let log_dir = d("tmp");
        let automation_root = d("automation");
        let reporter_dir = d("automation/cypress/cmcReporter");
        let package_root = d("opt/atvm-watcher-service");
        let units_dir = d("etc/systemd/system");
        let systemd_dir = d("systemd-fake");
        let env_file = root.join("etc/atvm-run-watcher.env");
        fs::write(&env_file, "# test env file\n").expect("env file");
        fs::set_permissions(&env_file, fs::Permissions::from_mode(0o600)).expect("chmod");
        for name in BINARIES {
            std::os::unix::fs::symlink(bin(name), package_root.join(name)).expect("link binary");
            // The drop-in names old callers use, as the install tree has them.
            std::os::unix::fs::symlink(name, package_root.join(format!("{name}.sh")))
                .expect("link .sh name");
        }
        for unit in units::ALL {
            fs::write(units_dir.join(unit.name), unit.render(&package_root)).expect("render unit");
        }
        let inventory = package_root.join("vm-inventory.md");
        fs::copy(fixture("vm-inventory.md"), &inventory).expect("inventory");
        let systemctl = root.join("fake-systemctl");
        fs::write(&systemctl, FAKE_SYSTEMCTL).expect("fake systemctl");
        fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut env = Env {
            dir,
            state_root,
            log_dir,
            automation_root,
            reporter_dir,
            package_root,
            units_dir,
            systemd_dir,
            env_file,
            inventory,
            systemctl,
            vars: Vec::new(),
        };
        let p = |p: &PathBuf| p.display().to_string();
        let defaults = [
            ("ATVM_PACKAGE_ROOT", p(&env.package_root)),
            ("ATVM_STATE_ROOT", p(&env.state_root)),
            ("ATVM_AUTOMATION_ROOT", p(&env.automation_root)),
            ("ATVM_REPORTER_DIR", p(&env.reporter_dir)),
            ("ATVM_LOG_DIR", p(&env.log_dir)),
            ("ATVM_ENV_FILE", p(&env.env_file)),
            ("ATVM_INVENTORY", p(&env.inventory)),
            ("ATVM_SYSTEMCTL", p(&env.systemctl)),
            ("FAKE_SYSTEMD_UNITS", p(&env.units_dir)),
            ("FAKE_SYSTEMD_STATE", p(&env.systemd_dir)),
            // Fast timing for tests; individual tests override.
            ("ATVM_POLL_SECONDS", "0.1".to_string()),
            ("ATVM_GRACE_SECONDS", "1".to_string()),
            ("ATVM_START_TIMEOUT_SECONDS", "20".to_string()),
            ("ATVM_HANG_MINUTES", "5".to_string()),
            ("ATVM_POST_RETRY_SECONDS", "5".to_string()),
        ];
        for (k, v) in defaults {
            env.set(k, v);
        }
        env
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Set (or replace) a variable passed to every command.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.unset(key);
        self.vars.push((key.to_string(), value.into()));
    }

    pub fn unset(&mut self, key: &str) {
        self.vars.retain(|(k, _)| k != key);
    }

    /// A command for a workspace binary with a cleared environment: PATH plus our variables.
    /// `name` may be a drop-in name (`start-atvm-run.sh`): it runs through the package
    /// root's link, as an old caller would.
    pub fn cmd(&self, name: &str) -> Command {
        let program = match name.strip_suffix(".sh") {
            Some(_) => self.package_root.join(name),
            None => bin(name),
        };
        let mut c = Command::new(program);
        c.env_clear();
        c.env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_string()),
        );
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    /// Run a binary with arguments and return its output.
    pub fn run(&self, name: &str, args: &[&str]) -> Output {
        self.cmd(name).args(args).output().expect("run binary")
    }

    pub fn state_dir(&self, build: &str) -> PathBuf {
        self.state_root.join(build)
    }

    /// `state.json` of a build (panics if missing or invalid).
    pub fn state(&self, build: &str) -> Value {
        read_json(&self.state_dir(build).join("state.json"))
    }

    pub fn try_state(&self, build: &str) -> Option<Value> {
        let text = fs::read_to_string(self.state_dir(build).join("state.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn status(&self, build: &str) -> Value {
        read_json(&self.state_dir(build).join("runner/status.json"))
    }

    /// `runner/status.json` of a build, if it is there and parses.
    pub fn try_status(&self, build: &str) -> Option<Value> {
        let text = fs::read_to_string(self.state_dir(build).join("runner/status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn run_log(&self, build: &str) -> PathBuf {
        self.log_dir.join(format!("{build}.log"))
    }

    /// Calls the fake systemctl received so far.
    pub fn systemctl_calls(&self) -> String {
        fs::read_to_string(self.systemd_dir.join("calls.log")).unwrap_or_default()
    }

    /// What a unit printed (the fake journal).
    pub fn unit_output(&self, unit: &str) -> String {
        fs::read_to_string(self.systemd_dir.join(format!("{unit}.out"))).unwrap_or_default()
    }

    /// Write an executable shell script into the environment and return its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.root().join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// A shell command that prints a Cypress log fixture (and goes on, for a runner command
    /// that continues after it).
    pub fn cypress_output(&self, fixture_name: &str) -> String {
        format!(
            "cat '{}'",
            fixture(&format!("cypress/{fixture_name}")).display()
        )
    }

    /// A report in mochawesome's format (the real fixture, written by mochawesome) for
    /// `spec` (`area07.cy.js`), whose one failed test is "Login rejects a bad password",
    /// written outside the reporter directory for a runner to copy in.
    pub fn report_for(&self, spec: &str) -> PathBuf {
        let path = self.root().join(spec.replace(".cy.js", ".json"));
        let real = fs::read_to_string(fixture("mochawesome/login.json")).expect("fixture");
        fs::write(&path, real.replace("login.cy.js", spec)).expect("report");
        path
    }

    /// A runner command that prints a Cypress log fixture and exits with `code`.
    pub fn cypress_command(&self, fixture_name: &str, code: i32) -> String {
        format!("{}; exit {code}", self.cypress_output(fixture_name))
    }

    /// Poll `check` every 20 ms until it returns true; panic naming `what` after `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\nsystemctl calls:\n{}\nstate dir listing: {:?}",
                    self.systemctl_calls(),
                    fs::read_dir(&self.state_root).map(|d| d
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name())
                        .collect::<Vec<_>>())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Write `request.json` as start-atvm-run-watcher would (for tests of the watcher
    /// alone); `extra` fields are merged in. Returns the run id.
    pub fn write_request(&self, build: &str, extra: Value) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let run_id = format!("test-{}-{nanos}", std::process::id());
        let mut req = serde_json::json!({
            "build_name": build,
            "run_id": run_id,
            "requested_at": now_rfc3339(),
        });
        if let (Some(obj), Some(more)) = (req.as_object_mut(), extra.as_object()) {
            for (k, v) in more {
                obj.insert(k.clone(), v.clone());
            }
        }
        let dir = self.state_dir(build);
        fs::create_dir_all(&dir).expect("state dir");
        fs::write(
            dir.join("request.json"),
            serde_json::to_vec_pretty(&req).expect("json"),
        )
        .expect("request");
        run_id
    }

    /// Start a binary in the background.
    pub fn spawn(&self, name: &str, args: &[&str]) -> std::process::Child {
        self.cmd(name)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    }

    /// Start a binary in the background with its stdout and stderr in a file (returned), which
    /// the test can read while it runs.
    pub fn spawn_logged(&self, name: &str, args: &[&str]) -> (std::process::Child, PathBuf) {
        let log = self.root().join(format!("{name}.output"));
        let file = fs::File::create(&log).expect("output file");
        let child = self
            .cmd(name)
            .args(args)
            .stdout(file.try_clone().expect("clone"))
            .stderr(file)
            .spawn()
            .expect("spawn");
        (child, log)
    }

    /// Run the fake systemctl directly, with the environment the tools get (a unit it starts
    /// runs the real `ExecStart`).
    pub fn systemctl(&self, args: &[&str]) -> Output {
        Command::new(&self.systemctl)
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("fake systemctl")
    }

    /// Take the build's start lock as a start helper does (exclusively, creating `.locks`),
    /// and hold it until the returned guard is dropped: a start in progress. It is held by
    /// another process (`flock(1)`), as a start helper would hold it, not by the test: a
    /// cancel refuses to wait for a start that is its own ancestor.
    pub fn hold_start_lock(&self, build: &str) -> HeldLock {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let locks = self.state_root.join(".locks");
        fs::create_dir_all(&locks).expect("mkdir .locks");
        fs::set_permissions(&locks, fs::Permissions::from_mode(0o700)).expect("chmod");
        let path = locks.join(format!("{build}.start.lock"));
        let mut child = Command::new("flock")
            .args(["--exclusive", "--nonblock"])
            .arg(&path)
            .args(["-c", "echo locked; exec sleep 600"])
            .stdout(std::process::Stdio::piped())
            // flock(1) forks the command, which inherits the lock: drop kills the group.
            .process_group(0)
            .spawn()
            .expect("flock(1), from util-linux");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "locked", "start lock free");
        HeldLock(child)
    }

    /// Cancel a run the way an operator does: the watcher, then the runner.
    pub fn cancel_run(&self, build: &str) {
        for tool in ["cancel-atvm-run-watcher", "cancel-atvm-runner"] {
            let out = self.run(tool, &["--build-name", build]);
            assert!(out.status.success(), "{tool}: {}", text(&out));
        }
    }

    /// Wait until the build's state.json says `state` (e.g. `WATCHING`).
    pub fn wait_state(&self, build: &str, state: &str, timeout: Duration) {
        self.wait_until(&format!("{build} to be {state}"), timeout, || {
            self.try_state(build).is_some_and(|s| s["state"] == state)
        });
    }

    /// Wait until the build's state.json is final and return it.
    pub fn wait_final(&self, build: &str, timeout: Duration) -> Value {
        let mut last = None;
        self.wait_until(&format!("a final state for {build}"), timeout, || {
            last = self.try_state(build);
            last.as_ref().is_some_and(|s| s["final"] == true)
        });
        last.unwrap_or(Value::Null)
    }

    /// Wait until the fake systemd says the unit is no longer running.
    pub fn wait_unit_inactive(&self, unit: &str, timeout: Duration) {
        self.wait_until(&format!("{unit} to stop"), timeout, || {
            let out = Command::new(&self.systemctl)
                .args(["is-active", unit])
                .env("FAKE_SYSTEMD_UNITS", &self.units_dir)
                .env("FAKE_SYSTEMD_STATE", &self.systemd_dir)
                .output()
                .expect("is-active");
            !out.status.success()
        });
    }

    /// Every file under the environment whose content contains `needle`.
    pub fn files_containing(&self, needle: &str) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        let mut stack = vec![self.root().to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(|e| e.ok()) {
                let path = entry.path();
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file()
                    && meta.len() < 64 * 1024 * 1024
                    && fs::read(&path)
                        .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                {
                    hits.push(path);
                }
            }
        }
        hits
    }
}

/// An [`Env`] whose Mattermost webhook is a [`FakeWebhook`] it owns: for tests that watch
/// a run to its end for real and look at what was posted.
#[derive(Debug)]
pub struct Posting {
    pub env: Env,
    pub hook: FakeWebhook,
}

impl Posting {
    /// A fresh environment posting to a webhook that answers `script`, then `ok`.
    pub fn new(script: Vec<Reply>) -> Posting {
        let mut env = Env::new();
        let hook = FakeWebhook::start(script);
        env.set("MATTERMOST_ATVM_WEBHOOK", hook.url());
        Posting { env, hook }
    }

    /// The payloads received, in order.
    pub fn posts(&self) -> Vec<Value> {
        self.hook.requests().iter().map(|r| r.json()).collect()
    }

    /// The one payload received (panics unless exactly one was).
    pub fn only_post(&self) -> Value {
        let posts = self.posts();
        assert_eq!(posts.len(), 1, "expected exactly one post: {posts:#?}");
        posts.into_iter().next().unwrap_or(Value::Null)
    }

    /// Fail unless the webhook secret appears nowhere: not in `out`, not in any file.
    pub fn assert_no_secret(&self, out: &Output) {
        assert!(
            !text(out).contains(self.hook.secret()),
            "secret in output: {}",
            text(out)
        );
        let files = self.env.files_containing(self.hook.secret());
        assert!(files.is_empty(), "secret stored in {files:?}");
    }
}

impl std::ops::Deref for Posting {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl std::ops::DerefMut for Posting {
    fn deref_mut(&mut self) -> &mut Env {
        &mut self.env
    }
}

impl Drop for Env {
    /// Stop whatever the fake systemd still runs, so no test leaves processes behind.
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(&self.systemd_dir) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(unit) = name.strip_suffix(".pid") {
                let _ = Command::new(&self.systemctl)
                    .args(["stop", unit])
                    .env("FAKE_SYSTEMD_UNITS", &self.units_dir)
                    .env("FAKE_SYSTEMD_STATE", &self.systemd_dir)
                    .env("FAKE_STOP_TIMEOUT", "1")
                    .output();
            }
        }
    }
}

/// A small tmpfs mounted over a directory of the environment (as root only; `None`, saying
/// why, elsewhere), so a test can fill it: a full state root, a full /tmp for the logs.
#[derive(Debug)]
pub struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    /// Mount a tmpfs of `size` (`64k`, `2m`) over `dir`, mode 0700 as the tools want it.
    pub fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        let uid = fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if uid.ok() != Some(0) {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return None;
        }
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status();
        if !ok.is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot mount a tmpfs here");
            return None;
        }
        Some(SmallDisk {
            mount: dir.to_path_buf(),
        })
    }

    /// Fill it to the last byte.
    pub fn fill(&self) {
        self.fill_leaving(0);
        let probe = fs::write(self.mount.join("probe"), b"x");
        assert!(probe.is_err(), "the disk is full");
    }

    /// Fill it but for about `bytes` (whole 4 KiB pages).
    pub fn fill_leaving(&self, bytes: usize) {
        use std::io::Write;
        let mut f = fs::File::create(self.mount.join("filler")).expect("filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0]);
        let keep = bytes.div_ceil(4096) as u64 * 4096;
        let len = f.metadata().expect("filler size").len();
        f.set_len(len.saturating_sub(keep)).expect("shrink filler");
    }

    pub fn free(&self) {
        fs::remove_file(self.mount.join("filler")).expect("remove filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// A lock held by a child process until this is dropped ([`Env::hold_start_lock`]).
#[derive(Debug)]
pub struct HeldLock(std::process::Child);

impl Drop for HeldLock {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// Wait for a child to exit within `timeout` (killing it and panicking otherwise).
pub fn finish(mut child: std::process::Child, timeout: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "process did not exit within {timeout:?}; it printed:\n{}",
                text(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Now as RFC 3339 UTC (seconds), like the tools write it.
pub fn now_rfc3339() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%3NZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}\n{text}", path.display()))
}

/// stdout + stderr of an output, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
