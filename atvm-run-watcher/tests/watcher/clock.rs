//! A wall-clock step alone never ends a run (docs/watcher-service.md): the watcher's windows are measured on
//! the boot clock. The watcher runs in the test process with a clock the test steps (an NTP
//! step of 90 minutes in one second of boot time), against a real runner started by
//! start-atvm-runner under the fake systemd.

use super::{B, LONG, start_runner};
use atvm_common::config::Format;
use atvm_common::state::{RunState, State};
use atvm_common::time::BootInstant;
use atvm_common::{BuildName, Moment, Paths, Timestamp};
use atvm_run_watcher::clock::Clock;
use atvm_run_watcher::ctx::Ctx;
use atvm_run_watcher::decide::Timing;
use atvm_run_watcher::shutdown::Shutdown;
use atvm_run_watcher::watch::{Sink, Watcher};
use serde_json::json;
use std::fs;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use testkit::Env;

/// The machine's clocks, each moved on by what the test stepped it.
#[derive(Debug, Default)]
struct SteppedClock {
    wall_ms: AtomicI64,
    boot_ns: AtomicU64,
}

impl SteppedClock {
    fn step(&self, wall: Duration, boot: Duration) {
        self.wall_ms
            .fetch_add(wall.as_millis() as i64, Ordering::SeqCst);
        self.boot_ns
            .fetch_add(boot.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for SteppedClock {
    fn now(&self) -> Moment {
        let mut now = Moment::now();
        now.wall = Timestamp::from_millis(now.wall.millis() + self.wall_ms.load(Ordering::SeqCst));
        if let Some(boot) = now.boot.as_mut() {
            boot.ns += self.boot_ns.load(Ordering::SeqCst);
        }
        now
    }
}

fn paths(env: &Env) -> Paths {
    Paths {
        package_root: env.package_root.clone(),
        state_root: env.state_root.clone(),
        automation_root: env.automation_root.clone(),
        reporter_dir: env.reporter_dir.clone(),
        log_dir: env.log_dir.clone(),
        env_file: env.env_file.clone(),
        inventory: env.inventory.clone(),
    }
}

/// Poll until `done` says so.
fn poll_until(w: &mut Watcher, what: &str, done: impl Fn(&State) -> bool) {
    let start = Instant::now();
    loop {
        w.poll().unwrap();
        if done(w.state()) {
            return;
        }
        assert!(
            start.elapsed() < LONG,
            "timed out waiting for {what}: {:?}",
            w.state()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_forward_wall_clock_step_neither_times_out_the_start_nor_hangs_a_live_run() {
    let env = Env::new();
    assert!(
        BootInstant::now().is_some(),
        "this machine has no boot id: windows fall back to the wall clock"
    );
    env.write_request(B, json!({"requested_boot": BootInstant::now()}));
    let paths = paths(&env);
    let build = BuildName::parse(B).unwrap();
    let sd = paths.state_dir(&build);
    let request = sd.read_request().unwrap().unwrap();
    let clock = SteppedClock::default();
    let shutdown = Shutdown::install().unwrap();
    let mut w = Watcher::with_ctx(Ctx {
        paths,
        sd,
        build,
        request,
        timing: Timing {
            poll: Duration::from_millis(50),
            grace: Duration::from_secs(1),
            hang: Duration::from_secs(3 * 60),
            start_timeout: Duration::from_secs(60),
            post_retry: Duration::from_secs(5),
        },
        sink: Sink::DryRun {
            channel: None,
            format: Format::default(),
            posting: Default::default(),
        },
        shutdown: &shutdown,
        clock: &clock,
    })
    .unwrap();
    let ntp_step = || clock.step(Duration::from_secs(90 * 60), Duration::from_secs(1));

    // Waiting for the runner: 90 minutes of wall clock are not the 60 s start timeout.
    w.poll().unwrap();
    assert_eq!(w.state().state, RunState::Starting);
    ntp_step();
    w.poll().unwrap();
    assert_eq!(w.state().state, RunState::Starting, "{}", w.state().reason);

    // A live runner, silent since its first line: 90 minutes of wall clock are not the
    // 3-minute hang window.
    let go = env.root().join("go");
    start_runner(
        &env,
        &format!(
            "echo '  (Run Starting)'; while [ ! -e '{}' ]; do sleep 0.05; done; {}",
            go.display(),
            env.cypress_command("passing.log", 0)
        ),
    );
    poll_until(&mut w, "the runner's first line", |s| {
        s.state == RunState::Watching && s.details.contains_key("runner_pid")
    });
    ntp_step();
    w.poll().unwrap();
    assert_eq!(w.state().state, RunState::Watching, "{}", w.state().reason);
    assert!(!w.state().is_final);

    fs::write(&go, "").unwrap();
    poll_until(&mut w, "the end of the run", |s| s.is_final);
    assert_eq!(w.state().state, RunState::Completed, "{}", w.state().reason);
}
