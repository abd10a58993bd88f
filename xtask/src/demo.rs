//! `cargo xtask demo`: install into `target/demo/root` (a `--destdir` install) and watch two
//! sample runs of one build name end to end on this machine, without touching systemd,
//! /etc or /tmp: the test kit's fake systemctl runs the installed units' ExecStart lines,
//! and a local webhook on 127.0.0.1 prints what the watcher posts. The second run's post
//! compares with the first (a failure again, a new one, a fixed one) and names a flaky
//! test; it is written to `target/demo/post.json` in the layout of the README's example,
//! and `--update-readme` puts it there.

use crate::layout::{self, DEFAULT_PREFIX, Tree};
use crate::{Args, Result};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::{FAKE_SYSTEMCTL, FakeWebhook, fixture};

const BUILD: &str = "demo-redhat9.6-ubuntu24.04-w2k25";

pub fn run(args: &Args) -> Result {
    let demo = layout::target_dir().join("demo");
    if demo.exists() && !args.flag("--keep") {
        fs::remove_dir_all(&demo).map_err(|e| format!("cannot clear {}: {e}", demo.display()))?;
    }
    let bins = layout::build_release()?;
    let tree = Tree {
        destdir: demo.join("root"),
        prefix: PathBuf::from(DEFAULT_PREFIX),
    };
    layout::run_installer(crate::install::command(
        &bins,
        &demo.join("stage"),
        Some(&tree.destdir),
        &tree.prefix,
    )?)?;
    crate::install::check_help(&tree.package_root())?;
    println!("demo: installed into {}", tree.destdir.display());

    // The controller, in a directory.
    let pkg = tree.package_root();
    let dirs = |p: &str| -> Result<PathBuf> {
        let d = demo.join(p);
        fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        Ok(d)
    };
    let units = dirs("fake-systemd/units")?;
    let systemd_state = dirs("fake-systemd/state")?;
    let automation = dirs("automation")?;
    let reporter = dirs("automation/cypress/cmcReporter")?;
    let log_dir = dirs("tmp")?;
    for unit in units::ALL {
        // The units run the binaries where the demo installed them.
        fs::write(units.join(unit.name), unit.render(&pkg)).map_err(|e| e.to_string())?;
    }
    let systemctl = demo.join("fake-systemctl");
    fs::write(&systemctl, FAKE_SYSTEMCTL).map_err(|e| e.to_string())?;
    fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let hook = FakeWebhook::start(vec![]);

    // The real mochawesome report, as written for area07.cy.js, one of the specs the sample
    // logs run and fail: reports count for a run only when its log names their spec.
    let report = demo.join("area07.json");
    let real = fs::read_to_string(fixture("mochawesome/login.json")).map_err(|e| e.to_string())?;
    fs::write(&report, real.replace("login.cy.js", "area07.cy.js")).map_err(|e| e.to_string())?;
    let runner = |log: &str| {
        format!(
            "echo 'npx cypress run --record --group linux'; sleep 1; cp '{}' '{}'; cat '{}'; exit 2",
            report.display(),
            reporter.display(),
            fixture(&format!("cypress/{log}")).display()
        )
    };
    let env = [
        ("ATVM_PACKAGE_ROOT", pkg.clone()),
        ("ATVM_STATE_ROOT", tree.state_root()),
        ("ATVM_AUTOMATION_ROOT", automation),
        ("ATVM_REPORTER_DIR", reporter.clone()),
        ("ATVM_LOG_DIR", log_dir.clone()),
        ("ATVM_ENV_FILE", tree.env_file()),
        ("ATVM_INVENTORY", pkg.join(layout::INVENTORY)),
        ("ATVM_SYSTEMCTL", systemctl.clone()),
        ("FAKE_SYSTEMD_UNITS", units.clone()),
        ("FAKE_SYSTEMD_STATE", systemd_state.clone()),
    ];
    let controller = Controller {
        pkg: &pkg,
        env: &env,
        hook: &hook,
        state_file: tree.state_root().join(BUILD).join("state.json"),
        systemctl: &systemctl,
        units: &units,
        systemd_state: &systemd_state,
    };
    // Yesterday's run, then today's: the second post compares with the first.
    for log in ["failing-2-of-20.log", "failing-3-and-7-of-20.log"] {
        controller.run(&runner(log))?;
    }
    let texts = hook.texts();
    println!("\ndemo: Mattermost received {} post(s):", texts.len());
    for t in &texts {
        for line in t.lines() {
            println!("    {line}");
        }
    }
    if texts.len() != 2 {
        return Err(format!("expected one post per run, got {}", texts.len()));
    }
    let last = hook.requests().last().map(|r| r.json()).unwrap_or_default();
    // The footer names the log by its path on this machine: the README shows it relative
    // to the repository, where the demo puts it.
    let here = layout::target_dir().to_string_lossy().into_owned() + "/";
    let shown = readme_json(&last).replace(&here, "target/");
    let post = demo.join("post.json");
    fs::write(&post, &shown).map_err(|e| format!("cannot write {}: {e}", post.display()))?;
    println!(
        "\ndemo: the second post, as the README shows it: {}",
        post.display()
    );
    if args.flag("--update-readme") {
        update_readme(&shown)?;
        println!("demo: README.md updated");
    }
    println!(
        "\ndemo: everything is under {}; run it again with `cargo xtask demo`",
        demo.display()
    );
    Ok(())
}

/// The demo's controller: where the installed tools are, their environment, the fake
/// systemd and the webhook.
struct Controller<'a> {
    pkg: &'a Path,
    env: &'a [(&'static str, PathBuf)],
    hook: &'a FakeWebhook,
    state_file: PathBuf,
    systemctl: &'a Path,
    units: &'a Path,
    systemd_state: &'a Path,
}

impl Controller<'_> {
    /// One run of the build through start-atvm-run, followed to its end.
    fn run(&self, runner: &str) -> Result {
        let mut cmd = Command::new(self.pkg.join("start-atvm-run"));
        cmd.args([
            "--build-name",
            BUILD,
            "--template",
            "migration",
            "--template-command",
            "echo selecting specs for redhat9.6, ubuntu24.04 and w2k25",
            "--runner-command",
            runner,
            "--config-family",
            "redhat",
            "--scope-description",
            "cargo xtask demo",
        ]);
        cmd.envs(self.env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .env("MATTERMOST_ATVM_WEBHOOK", self.hook.url())
            .env("MATTERMOST_ATVM_MENTION", "@qa-oncall")
            .env("ATVM_POLL_SECONDS", "0.5")
            .env("ATVM_GRACE_SECONDS", "2");
        println!("demo: start-atvm-run --build-name {BUILD} … (template step, watcher, runner)");
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run start-atvm-run: {e}"))?;
        if !status.success() {
            return Err(format!("start-atvm-run failed ({status})"));
        }
        self.wait()
    }

    /// Until the run is final and its watcher has exited; then what it said.
    fn wait(&self) -> Result {
        let unit = format!("atvm-run-watcher@{BUILD}.service");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = fs::read_to_string(&self.state_file)
                .is_ok_and(|t| t.contains("\"final\": true"))
                && !Command::new(self.systemctl)
                    .args(["is-active", &unit])
                    .env("FAKE_SYSTEMD_UNITS", self.units)
                    .env("FAKE_SYSTEMD_STATE", self.systemd_state)
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
            if done {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the watcher did not finish within 60 s; see {}",
                    self.systemd_state.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("\ndemo: watcher output ({unit}):");
        print_indented(&self.systemd_state.join(format!("{unit}.out")));
        println!("\ndemo: {} says:", self.state_file.display());
        let state = fs::read_to_string(&self.state_file).map_err(|e| e.to_string())?;
        for key in ["\"state\"", "\"reason\"", "\"status\"", "\"attempts\""] {
            if let Some(line) = state.lines().find(|l| l.trim_start().starts_with(key)) {
                println!("    {}", line.trim().trim_end_matches(','));
            }
        }
        Ok(())
    }
}

/// A payload in the README's layout: one line per top-level key and per field.
fn readme_json(post: &Value) -> String {
    let line = |v: &Value| serde_json::to_string(v).unwrap_or_default();
    let mut out = String::from("{\n");
    for key in ["channel", "username", "text"] {
        if let Some(v) = post.get(key) {
            out.push_str(&format!("  \"{key}\": {},\n", line(v)));
        }
    }
    out.push_str("  \"attachments\": [{\n");
    let a = &post["attachments"][0];
    // In the order Mattermost's documentation and the payload use, not the map's.
    let order = [
        "fallback",
        "color",
        "title",
        "title_link",
        "text",
        "fields",
        "footer",
    ];
    let keys = order.iter().filter_map(|k| a.get(*k).map(|v| (*k, v)));
    let mut parts = Vec::new();
    for (k, v) in keys {
        if k == "fields" {
            let fields: Vec<String> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    format!(
                        "      {{ \"title\": {}, \"value\": {}, \"short\": {} }}",
                        line(&f["title"]),
                        line(&f["value"]),
                        line(&f["short"])
                    )
                })
                .collect();
            parts.push(format!("    \"fields\": [\n{}\n    ]", fields.join(",\n")));
        } else {
            parts.push(format!("    \"{k}\": {}", line(v)));
        }
    }
    out.push_str(&parts.join(",\n"));
    out.push_str("\n  }]\n}\n");
    out
}

/// Put `shown` in the README's example block, the one after "what `cargo xtask demo` posts".
fn update_readme(shown: &str) -> Result {
    let path = layout::repo_root().join("README.md");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let marker = "what `cargo xtask demo` posts";
    let at = text
        .find(marker)
        .ok_or("README.md has no demo post to update")?;
    let open = at
        + text[at..]
            .find("```json\n")
            .ok_or("no ```json block after the demo line")?
        + 8;
    let close = open
        + text[open..]
            .find("```")
            .ok_or("the json block is not closed")?;
    let updated = format!("{}{shown}{}", &text[..open], &text[close..]);
    fs::write(&path, updated).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn print_indented(path: &Path) {
    for line in fs::read_to_string(path).unwrap_or_default().lines() {
        println!("    {line}");
    }
}
