//! Runs under a real systemd user manager, following
//! `../shared/tools/systemd-user-manager-recipe.sh`: the manager runs in its own sub-cgroup
//! and in private mount + cgroup namespaces (kept exactly as in the recipe: without them a
//! `systemd --user` moves every other process of the machine into its own cgroups). The tools
//! drive it with `ATVM_SYSTEMCTL="systemctl --user"`.
//!
//! The units are the real ones, `units::ALL` rendered for the test's package root, sandbox and
//! all. The only change is a drop-in the test writes, as an operator with a state root other
//! than /var/lib/atvm-run-watcher must (docs/units.md): `ReadWritePaths=` for the test's state
//! root. Units, drop-in and env file live in an overlay on /etc seen only by the manager.
//!
//! What this proves about the hardened watcher unit: it follows a run started through
//! `start-atvm-run` to COMPLETED and posts once; it finds a run by the command-line fallback
//! (a runner started outside systemd, with every capability) and reads that process's
//! `/proc/<pid>/exe` and `fd/` to tie the log to it; and the boot-time unit restarts the
//! watcher of an unfinished run, which then ends in its true state.
//!
//! Skipped, with the reason printed, where the machine cannot do this (not root, no systemd,
//! no writable cgroup2 hierarchy).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use testkit::{Env, Expect, FakeWebhook, fixture, text};

const LONG: Duration = Duration::from_secs(30);

fn skip_reason(cgroup_root: &Path) -> Option<String> {
    if std::env::var_os("ATVM_SKIP_SYSTEMD_TEST").is_some() {
        return Some("ATVM_SKIP_SYSTEMD_TEST is set".into());
    }
    let uid = fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(1);
    if uid != 0 {
        return Some("needs root (mounts in a private namespace)".into());
    }
    for tool in [
        "/lib/systemd/systemd",
        "/usr/bin/unshare",
        "/usr/bin/setsid",
    ] {
        if !Path::new(tool).exists() {
            return Some(format!(
                "{tool} is missing (apt-get install systemd util-linux)"
            ));
        }
    }
    if Command::new("systemctl").arg("--version").output().is_err() {
        return Some("systemctl is missing".into());
    }
    if !cgroup_root.join("cgroup.procs").exists() {
        return Some(format!("no cgroup2 hierarchy at {}", cgroup_root.display()));
    }
    None
}

/// A user manager for one test. Tears itself down and removes its cgroups even if the test
/// fails.
struct Manager {
    work: PathBuf,
    cgroup: PathBuf,
    child: Child,
}

impl Manager {
    /// Start a user manager that runs our units for `env`, posting to `hook`; `None` (with
    /// the reason printed) where this machine cannot. `tag` keeps the cgroups of tests that
    /// run at the same time apart.
    fn start(env: &mut Env, hook: &FakeWebhook, tag: &str) -> Option<Manager> {
        let unified = Path::new("/sys/fs/cgroup/unified");
        let cg_root = if unified.is_dir() {
            unified.to_path_buf()
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        if let Some(why) = skip_reason(&cg_root) {
            eprintln!("skipped: {why}");
            return None;
        }
        let work = env.root().join("sysd");
        let runtime = work.join("runtime");
        let etc_upper = work.join("etc-upper");
        let unit_dir = etc_upper.join("systemd/user");
        for d in [
            &runtime,
            &unit_dir,
            &work.join("etc-work"),
            &work.join("xdg"),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        // Our units, rendered for the test's package root, where the manager looks for them.
        for unit in units::ALL {
            fs::write(unit_dir.join(unit.name), unit.render(&env.package_root)).unwrap();
        }
        // The one change to them: the drop-in an operator writes for a state root of their
        // own (docs/units.md), here the test's.
        let drop_in = unit_dir.join(format!("{}.d", units::WATCHER.name));
        fs::create_dir_all(&drop_in).unwrap();
        fs::write(
            drop_in.join("state-root.conf"),
            format!("[Service]\nReadWritePaths={}\n", env.state_root.display()),
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/null", unit_dir.join("dbus.socket")).unwrap();
        // The env file the units load: the webhook, the test's paths and timing, and the
        // systemctl the boot-time unit starts watchers with.
        let unit_env = format!(
            "MATTERMOST_ATVM_WEBHOOK={}\nATVM_STATE_ROOT={}\nATVM_LOG_DIR={}\nATVM_AUTOMATION_ROOT={}\nATVM_REPORTER_DIR={}\nATVM_INVENTORY={}\nATVM_PACKAGE_ROOT={}\nATVM_POLL_SECONDS=0.2\nATVM_GRACE_SECONDS=1\nATVM_SYSTEMCTL=\"systemctl --user\"\nXDG_RUNTIME_DIR={}\n",
            hook.url(),
            env.state_root.display(),
            env.log_dir.display(),
            env.automation_root.display(),
            env.reporter_dir.display(),
            env.inventory.display(),
            env.package_root.display(),
            runtime.display(),
        );
        fs::write(etc_upper.join("atvm-run-watcher.env"), unit_env).unwrap();

        let cgroup = cg_root.join(format!("sysd-ci-atvm-{}-{tag}", std::process::id()));
        fs::create_dir_all(&cgroup).unwrap();
        let inner = format!(
            "mount -t tmpfs tmpfs /run/systemd; mkdir /run/systemd/system\n  mount -t cgroup2 cgroup2 /sys/fs/cgroup\n  mount -t overlay overlay -o lowerdir=/etc,upperdir={},workdir={} /etc\n  exec /lib/systemd/systemd --user --default-standard-output=inherit --default-standard-error=inherit",
            etc_upper.display(),
            work.join("etc-work").display()
        );
        let outer = format!(
            "echo $$ > {}/cgroup.procs; exec unshare --mount --cgroup --propagation private sh -ec '{inner}'",
            cgroup.display()
        );
        let log = fs::File::create(work.join("manager.log")).unwrap();
        let xdg = work.join("xdg");
        let child = Command::new("setsid")
            .args(["sh", "-c", &outer])
            .env("XDG_RUNTIME_DIR", &runtime)
            // StateDirectory= of a user manager's unit lands in $XDG_STATE_HOME: keep it
            // (and the manager's other per-user files) out of the real home directory.
            .env("XDG_STATE_HOME", xdg.join("state"))
            .env("XDG_CONFIG_HOME", xdg.join("config"))
            .env("XDG_DATA_HOME", xdg.join("data"))
            .env("XDG_CACHE_HOME", xdg.join("cache"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let manager = Manager {
            work,
            cgroup,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while manager.show("", "SystemState") != "running" {
            assert!(
                Instant::now() < deadline,
                "the user manager did not come up:\n{}",
                manager.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        env.set("ATVM_SYSTEMCTL", "systemctl --user");
        env.set("XDG_RUNTIME_DIR", runtime.display().to_string());
        env.set("MATTERMOST_ATVM_WEBHOOK", hook.url());
        Some(manager)
    }

    fn systemctl(&self) -> Command {
        let mut c = Command::new("systemctl");
        c.arg("--user")
            .env("XDG_RUNTIME_DIR", self.work.join("runtime"));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.systemctl().args(args).output().unwrap()
    }

    /// One property of `unit` (of the manager itself for "").
    fn show(&self, unit: &str, property: &str) -> String {
        let mut c = self.systemctl();
        c.args(["show", "-p", property, "--value"]);
        if !unit.is_empty() {
            c.arg(unit);
        }
        String::from_utf8_lossy(&c.output().unwrap().stdout)
            .trim()
            .to_string()
    }

    /// What the units printed, then what systemd says of each of our units (exit codes such
    /// as 226/NAMESPACE or a SIGSYS show there: this manager has no journal).
    fn log(&self) -> String {
        let status = self.run(&[
            "show",
            "--property=Id,Result,ExecMainCode,ExecMainStatus",
            "atvm-*",
        ]);
        format!(
            "{}\n--- systemctl --user show atvm-*:\n{}",
            self.output(),
            String::from_utf8_lossy(&status.stdout)
        )
    }

    /// What the units printed (inherited into the manager's log).
    fn output(&self) -> String {
        fs::read_to_string(self.work.join("manager.log")).unwrap_or_default()
    }

    fn wait_inactive(&self, unit: &str) {
        let deadline = Instant::now() + LONG;
        while self.run(&["is-active", unit]).status.success() {
            assert!(
                Instant::now() < deadline,
                "{unit} still active:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The watcher unit of `build` ran sandboxed, exited 0 and is gone.
    fn assert_watcher_done(&self, build: &str) {
        let unit = format!("atvm-run-watcher@{build}.service");
        self.wait_inactive(&unit);
        // The unit as loaded, drop-in included, still carries the sandbox.
        assert_eq!(self.show(&unit, "ProtectSystem"), "strict");
        assert_eq!(self.show(&unit, "ProtectHome"), "read-only");
        assert_eq!(
            self.show(&unit, "CapabilityBoundingSet"),
            "cap_sys_ptrace",
            "{}",
            self.log()
        );
        assert!(
            self.show(&unit, "DropInPaths").ends_with("state-root.conf"),
            "{}",
            self.show(&unit, "DropInPaths")
        );
        // A clean exit: no seccomp kill (SIGSYS), no 226/NAMESPACE, no failure.
        assert_eq!(self.show(&unit, "Result"), "success", "{}", self.log());
        assert_eq!(self.show(&unit, "ExecMainStatus"), "0", "{}", self.log());
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.systemctl().arg("exit").output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // find $CG -depth -type d -exec rmdir {} \;
        let _ = Command::new("find")
            .arg(&self.cgroup)
            .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
            .output();
    }
}

fn wait_final(env: &Env, build: &str, manager: &Manager) -> serde_json::Value {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(s) = env.try_state(build).filter(|s| s["final"] == true) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no final state for {build}: {:?}\nmanager log:\n{}",
            env.try_state(build),
            manager.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sandbox refused nothing the watcher tried (its warnings name what it could not read).
fn assert_nothing_refused(manager: &Manager) {
    let log = manager.output();
    for word in ["Permission denied", "Operation not permitted", "Read-only"] {
        assert!(!log.contains(word), "`{word}` in the manager log:\n{log}");
    }
}

#[test]
fn start_atvm_run_under_a_real_user_manager_completes_and_posts_once() {
    const B: &str = "e2e-redhat9.6-ubuntu24.04-real";
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    let Some(manager) = Manager::start(&mut env, &hook, "run") else {
        return;
    };
    let out = env.run(
        "start-atvm-run",
        &[
            "--build-name",
            B,
            "--template-command",
            "echo template ok",
            "--runner-command",
            &env.cypress_command("passing.log", 0),
        ],
    );
    assert!(
        out.status.success(),
        "start-atvm-run failed: {}\nmanager log:\n{}",
        text(&out),
        manager.log()
    );
    let state = wait_final(&env, B, &manager);
    assert_eq!(state["state"], "COMPLETED", "{state:#}\n{}", manager.log());
    // The watcher exits after a final state; systemd sees a clean stop.
    manager.assert_watcher_done(B);
    assert_eq!(hook.requests().len(), 1, "{}", manager.log());
    // Read again: `state` was taken the moment it became final, before delivery.
    assert_eq!(env.state(B)["post"]["status"], "posted");
    // The runner unit (lightly hardened) ran the command and exited with it.
    let runner = format!("atvm-runner@{B}.service");
    assert_eq!(manager.show(&runner, "Result"), "success");
    assert_eq!(manager.show(&runner, "ProtectKernelModules"), "yes");
    let log = manager.output();
    assert!(
        log.contains("started run") && log.contains("posted COMPLETED"),
        "{log}"
    );
    assert_nothing_refused(&manager);
}

#[test]
fn the_hardened_watcher_finds_a_run_started_outside_systemd_by_its_command_line() {
    // Its own build name: the fallback looks at every process of the machine.
    const B: &str = "e2e-real-systemd-fallback";
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    let Some(manager) = Manager::start(&mut env, &hook, "fallback") else {
        return;
    };
    // An operator's detached runner, as before these tools: a root process of this test, with
    // every capability, outside the manager, naming the build and writing the run log.
    let log = fs::File::create(env.run_log(B)).unwrap();
    let script = format!(
        "cat '{}'; sleep 3",
        fixture("cypress/passing.log").display()
    );
    let mut runner = Command::new("sh")
        .args(["-c", &script, "sh", "--build_name", B])
        .stdout(log)
        .spawn()
        .unwrap();
    // Only the watcher is started through the tools.
    let out = env.run("start-atvm-run-watcher", &["--build-name", B]);
    assert!(
        out.status.success(),
        "start-atvm-run-watcher failed: {}\nmanager log:\n{}",
        text(&out),
        manager.log()
    );
    let state = wait_final(&env, B, &manager);
    runner.wait().unwrap();
    // COMPLETED needs the log tied to the runner through /proc/<pid>/fd: a log no process
    // of the run holds open is never read (TERMINATED "without a Cypress summary").
    assert_eq!(state["state"], "COMPLETED", "{state:#}\n{}", manager.log());
    assert_eq!(state["counts"]["tests"], 6, "{state:#}");
    manager.assert_watcher_done(B);
    assert_eq!(hook.requests().len(), 1, "{}", manager.log());
    assert_eq!(env.state(B)["post"]["status"], "posted");
    assert_nothing_refused(&manager);
}

#[test]
fn the_boot_time_unit_resumes_an_unfinished_run_which_ends_terminated() {
    const B: &str = "e2e-real-systemd-resume";
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    let Some(manager) = Manager::start(&mut env, &hook, "resume") else {
        return;
    };
    let out = env.run(
        "start-atvm-run",
        &[
            "--build-name",
            B,
            "--runner-command",
            &format!("{}; sleep 60", env.cypress_output("cut-off.log")),
        ],
    );
    assert!(
        out.status.success(),
        "start-atvm-run failed: {}\n{}",
        text(&out),
        manager.log()
    );
    env.wait_state(B, "WATCHING", LONG);
    // What a reboot leaves: the watcher stopped before its run ended (state saved, not
    // final), and the runner gone without recording an exit.
    let watcher = format!("atvm-run-watcher@{B}.service");
    let runner = format!("atvm-runner@{B}.service");
    assert!(manager.run(&["stop", &watcher]).status.success());
    assert_eq!(env.state(B)["final"], false, "{}", manager.log());
    let kill = manager.run(&["kill", "--signal=SIGKILL", &runner]);
    kill.succeeds();
    manager.wait_inactive(&runner);

    // The boot-time unit, as systemd starts it at boot (the installer enables it).
    let resume = units::RESUME.name;
    let out = manager.run(&["start", resume]);
    assert!(
        out.status.success(),
        "{resume}: {}\n{}",
        text(&out),
        manager.log()
    );
    assert_eq!(
        manager.show(resume, "Result"),
        "success",
        "{}",
        manager.log()
    );
    assert!(manager.output().contains(&format!("resumed {watcher}")));
    let state = wait_final(&env, B, &manager);
    assert_eq!(state["state"], "TERMINATED", "{state:#}\n{}", manager.log());
    manager.assert_watcher_done(B);
    assert_eq!(hook.requests().len(), 0, "TERMINATED is never posted");
    // Nothing is left to resume.
    assert!(manager.run(&["start", resume]).status.success());
    assert_eq!(
        manager.output().matches("resumed ").count(),
        1,
        "{}",
        manager.log()
    );
    assert_nothing_refused(&manager);
}
