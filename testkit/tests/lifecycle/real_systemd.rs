//! One run under a real systemd user manager, following
//! `../shared/tools/systemd-user-manager-recipe.sh`: the manager runs in its own sub-cgroup
//! and in private mount + cgroup namespaces (kept exactly as in the recipe: without them a
//! `systemd --user` moves every other process of the machine into its own cgroups). Units and
//! the env file live in an overlay on /etc seen only by the manager; the tools drive it with
//! `ATVM_SYSTEMCTL="systemctl --user"`.
//!
//! Skipped, with the reason printed, where the machine cannot do this (not root, no systemd,
//! no writable cgroup2 hierarchy).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::{Env, FakeWebhook, text};

const B: &str = "e2e-redhat9.6-ubuntu24.04-real";

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

/// Tears the manager down and removes its cgroups even if the test fails.
struct Manager {
    work: PathBuf,
    cgroup: PathBuf,
    child: Child,
}

impl Manager {
    fn systemctl(&self) -> Command {
        let mut c = Command::new("systemctl");
        c.arg("--user")
            .env("XDG_RUNTIME_DIR", self.work.join("runtime"));
        c
    }

    fn log(&self) -> String {
        fs::read_to_string(self.work.join("manager.log")).unwrap_or_default()
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

#[test]
fn start_atvm_run_under_a_real_user_manager_completes_and_posts_once() {
    let unified = Path::new("/sys/fs/cgroup/unified");
    let cg_root = if unified.is_dir() {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    if let Some(why) = skip_reason(&cg_root) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut env = Env::new();
    let hook = FakeWebhook::start(vec![]);
    let work = env.root().join("sysd");
    let runtime = work.join("runtime");
    let etc_upper = work.join("etc-upper");
    for d in [
        &runtime,
        &etc_upper.join("systemd/user"),
        &work.join("etc-work"),
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
        fs::write(
            etc_upper.join("systemd/user").join(unit.name),
            unit.render(&env.package_root),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("/dev/null", etc_upper.join("systemd/user/dbus.socket")).unwrap();
    // The env file the units load: the webhook and the test's paths and timing.
    let unit_env = format!(
        "MATTERMOST_ATVM_WEBHOOK={}\nATVM_STATE_ROOT={}\nATVM_LOG_DIR={}\nATVM_AUTOMATION_ROOT={}\nATVM_REPORTER_DIR={}\nATVM_INVENTORY={}\nATVM_POLL_SECONDS=0.2\nATVM_GRACE_SECONDS=1\n",
        hook.url(),
        env.state_root.display(),
        env.log_dir.display(),
        env.automation_root.display(),
        env.reporter_dir.display(),
        env.inventory.display()
    );
    fs::write(etc_upper.join("atvm-run-watcher.env"), unit_env).unwrap();

    let cgroup = cg_root.join(format!("sysd-ci-atvm-{}", std::process::id()));
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
    let child = Command::new("setsid")
        .args(["sh", "-c", &outer])
        .env("XDG_RUNTIME_DIR", &runtime)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let manager = Manager {
        work: work.clone(),
        cgroup,
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = manager
            .systemctl()
            .args(["show", "-p", "SystemState", "--value"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "running" {
            break;
        }
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
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        if let Some(s) = env.try_state(B).filter(|s| s["final"] == true) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no final state; manager log:\n{}",
            manager.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(state["state"], "COMPLETED", "{state:#}\n{}", manager.log());
    // The watcher exits after a final state; systemd sees a clean stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = manager
            .systemctl()
            .args(["is-active", &format!("atvm-run-watcher@{B}.service")])
            .output()
            .unwrap();
        if !out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "watcher unit still active");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(hook.requests().len(), 1, "{}", manager.log());
    // Read again: `state` was taken the moment it became final, before delivery.
    assert_eq!(env.state(B)["post"]["status"], "posted");
    let log = manager.log();
    assert!(
        log.contains("started run") && log.contains("posted COMPLETED"),
        "{log}"
    );
    drop(manager);
}
