//! Generated runs for the restart-equivalence property (docs/watcher-service.md, "Restart
//! equivalence"): a seeded generator of plain and categorized runs — 1 to 4 groups whose
//! specs Cypress prints with the same names, failures, flaky retries, reports per spec,
//! Cypress crashing between groups, exit codes and signals — and the runner script that
//! plays one out step by step, each step waiting for the test's go-ahead, so a test can
//! stop, kill or restart the watcher at every step boundary.
//!
//! The log follows Cypress's CLI layout (the shape of `fixtures/cypress/`); the reports are
//! the real mochawesome fixtures with their spec path and failed test's title changed to
//! name the group, so a report attributed to the wrong group shows in the post.

use crate::Env;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// SplitMix64: small, seedable, and the same on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Spec names every group draws from: the same printed name in two groups is two specs
/// (`cypress/e2e/linux/verify.cy.ts`, `cypress/e2e/windows/verify.cy.ts`).
const SPECS: [&str; 3] = ["verify.cy.ts", "login.cy.js", "migrate.cy.ts"];
const GROUPS: [&str; 4] = ["linux", "windows", "ubuntu", "w2k25"];

#[derive(Clone, Debug)]
pub struct Spec {
    /// As Cypress prints it (relative to the specs' common root).
    pub name: String,
    /// Failing tests (0: the spec passes).
    pub fails: u32,
    /// A test that failed its first attempt and passed its second.
    pub flaky: bool,
    /// The reporter wrote a report for it.
    pub report: bool,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub name: Option<String>,
    pub specs: Vec<Spec>,
    /// Cypress printed the summary; otherwise it crashed after its last spec.
    pub finished: bool,
}

/// How the runner's command ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Exit(i32),
    /// Killed by SIGKILL (a crash of the wrapper script itself).
    Killed,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    pub categorized: bool,
    pub groups: Vec<Group>,
    pub ending: Ending,
}

/// One step of a run: output appended to the log, and a report written, before the next.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub output: String,
    /// `(file name, contents)` for the reporter directory.
    pub report: Option<(String, String)>,
}

impl Scenario {
    pub fn generate(seed: u64) -> Scenario {
        let mut rng = Rng::new(seed);
        let categorized = rng.chance(60);
        let n = if categorized { 1 + rng.below(4) } else { 1 };
        let groups: Vec<Group> = (0..n as usize)
            .map(|i| Group {
                name: (categorized || rng.chance(50)).then(|| GROUPS[i].to_string()),
                specs: (0..1 + rng.below(3))
                    .map(|k| Spec {
                        name: SPECS[k as usize].to_string(),
                        fails: if rng.chance(35) {
                            1 + rng.below(2) as u32
                        } else {
                            0
                        },
                        flaky: rng.chance(20),
                        report: rng.chance(85),
                    })
                    .collect(),
                finished: rng.chance(85),
            })
            .collect();
        let failed: u32 = groups.iter().flat_map(|g| &g.specs).map(|s| s.fails).sum();
        let ending = match rng.below(10) {
            0 => Ending::Killed,
            1 | 2 => Ending::Exit(0),
            _ if groups.iter().all(|g| g.finished) => Ending::Exit(failed as i32 % 256),
            _ => Ending::Exit(1),
        };
        Scenario {
            seed,
            categorized,
            groups,
            ending,
        }
    }

    /// The steps, in order: each group's header, each spec (its output, then its report),
    /// the summary of a group that finished; the command's end is not a step.
    pub fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        for group in &self.groups {
            steps.push(Step {
                output: header(group),
                report: None,
            });
            let n = group.specs.len();
            for (i, spec) in group.specs.iter().enumerate() {
                steps.push(Step {
                    output: running(spec, i + 1, n),
                    report: spec.report.then(|| report(group, spec)),
                });
            }
            if group.finished {
                steps.push(Step {
                    output: summary(group),
                    report: None,
                });
            }
        }
        steps
    }

    /// A runner script playing the steps out: before each step it reads one line from the
    /// FIFO `<dir>/go` (which the caller makes), then appends the step's output, writes
    /// its report and creates `<dir>/done.<k>`; after one more line the command ends as
    /// [`Ending`] says. Waiting on a FIFO costs no CPU, however long the test holds a step.
    pub fn script(&self, dir: &Path, reporter_dir: &Path) -> PathBuf {
        let steps = self.steps();
        let mut sh = format!("#!/bin/sh\nD='{}'\nexec 3<> \"$D/go\"\n", dir.display());
        for (k, step) in steps.iter().enumerate() {
            let out = dir.join(format!("step.{k}.out"));
            fs::write(&out, &step.output).expect("step output");
            let _ = writeln!(sh, "read -r _ <&3; cat '{}'", out.display());
            if let Some((name, contents)) = &step.report {
                let staged = dir.join(format!("step.{k}.report"));
                fs::write(&staged, contents).expect("step report");
                // Written beside, then renamed: a report appears whole, as mochawesome's do.
                let _ = writeln!(
                    sh,
                    "cp '{}' '{rd}/.{name}.tmp' && mv '{rd}/.{name}.tmp' '{rd}/{name}'",
                    staged.display(),
                    rd = reporter_dir.display()
                );
            }
            let _ = writeln!(sh, ": > \"$D/done.{k}\"");
        }
        sh.push_str("read -r _ <&3\n");
        match self.ending {
            Ending::Exit(code) => {
                let _ = writeln!(sh, "exit {code}");
            }
            Ending::Killed => sh.push_str("kill -KILL $$\n"),
        }
        let path = dir.join("runner.sh");
        fs::write(&path, sh).expect("runner script");
        path
    }

    /// The failed test titles the reports of `group` name (what its post may list).
    pub fn reported_titles(&self, group: usize) -> Vec<String> {
        let g = &self.groups[group];
        g.specs
            .iter()
            .filter(|s| s.fails > 0 && s.report)
            .map(|s| failed_title(g, s))
            .collect()
    }
}

/// A scenario being played by the real runner wrapper (started with start-atvm-runner), one
/// step at a time.
#[derive(Debug)]
pub struct Play {
    dir: PathBuf,
    go: fs::File,
    steps: usize,
    next: usize,
}

impl Play {
    /// Start `sc`'s runner for `build` (whose request is written) and hold it before its
    /// first step.
    pub fn start(env: &Env, build: &str, sc: &Scenario) -> Play {
        let dir = env.root().join(format!("play-{build}"));
        fs::create_dir_all(&dir).expect("play dir");
        let fifo = dir.join("go");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let script = sc.script(&dir, &env.reporter_dir);
        let command = format!("sh '{}'", script.display());
        let out = env.run(
            "start-atvm-runner",
            &["--build-name", build, "--runner-command", &command],
        );
        assert!(
            out.status.success(),
            "start-atvm-runner: {}",
            crate::text(&out)
        );
        let mut go = None;
        env.wait_until("the runner script to open its FIFO", LONG, || {
            go = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .ok();
            go.is_some()
        });
        Play {
            dir,
            go: go.expect("fifo"),
            steps: sc.steps().len(),
            next: 0,
        }
    }

    /// How many steps are left before the command's end.
    pub fn remaining(&self) -> usize {
        self.steps - self.next
    }

    /// Play the next step and wait until it is done; after the last step, end the command
    /// and wait for the runner's exit record. Returns false when there is nothing left.
    pub fn step(&mut self, env: &Env, build: &str) -> bool {
        if self.next > self.steps {
            return false;
        }
        let k = self.next;
        writeln!(self.go, "{k}").expect("go");
        self.next += 1;
        if k < self.steps {
            let done = self.dir.join(format!("done.{k}"));
            env.wait_until(&format!("step {k}"), LONG, || done.exists());
        } else {
            env.wait_until("the runner's exit record", LONG, || {
                env.try_status(build)
                    .is_some_and(|s| !s["exited_at"].is_null())
            });
        }
        true
    }

    /// Play every step left, to the command's end.
    pub fn to_end(&mut self, env: &Env, build: &str) {
        while self.step(env, build) {}
    }
}

const LONG: Duration = Duration::from_secs(30);

fn group_label(g: &Group) -> &str {
    g.name.as_deref().unwrap_or("run")
}

/// The failed test's title in a report: it names its group and spec.
pub fn failed_title(g: &Group, s: &Spec) -> String {
    format!("{} {} rejects a bad password", group_label(g), s.name)
}

const RULE: &str = "────────────────────────────────────────────────────────────────────────────────────────────────────";
const BOX: &str = "────────────────────────────────────────────────────────────────────────────────────────────────";

fn header(g: &Group) -> String {
    let group = g.name.as_deref().unwrap_or("false");
    let n = g.specs.len();
    let names: Vec<&str> = g.specs.iter().map(|s| s.name.as_str()).collect();
    let found = format!("{n} found ({})", names.join(", "));
    let params = format!("Tag: false, Group: {group}, Parallel: false");
    let mut s = format!("\n{}\n\n  (Run Starting)\n\n  ┌{BOX}┐\n", "=".repeat(100));
    for (k, v) in [
        ("Cypress:", "12.17.4"),
        ("Browser:", "Electron 106 (headless)"),
        ("Specs:", found.as_str()),
        ("Params:", params.as_str()),
    ] {
        let _ = writeln!(s, "  │ {k:<15} {v:<78} │");
    }
    let _ = write!(s, "  └{BOX}┘\n\n");
    s
}

fn running(spec: &Spec, i: usize, n: usize) -> String {
    let mut s = format!(
        "\n{RULE}\n{:100}\n  Running:  {:<70}  ({i} of {n})\n\n\n  suite\n",
        "", spec.name
    );
    s.push_str("    ✓ shows the login form (812ms)\n");
    if spec.flaky {
        s.push_str("    (Attempt 1 of 2) recovers after a retry\n");
        s.push_str("    ✓ recovers after a retry (402ms)\n");
    }
    for k in 1..=spec.fails {
        let _ = writeln!(s, "    {k}) rejects a bad password");
    }
    let _ = write!(s, "\n\n  {} passing (4s)\n", 1 + u32::from(spec.flaky));
    if spec.fails > 0 {
        let _ = writeln!(s, "  {} failing", spec.fails);
    }
    s
}

fn summary(g: &Group) -> String {
    let mut s = format!(
        "\n{}\n\n  (Run Finished)\n\n\n       Spec                                              Tests  Passing  Failing  Pending  Skipped  \n  ┌{BOX}┐\n",
        "=".repeat(100)
    );
    let (mut tests, mut passing, mut failing, mut failed_specs) = (0, 0, 0, 0);
    for (i, spec) in g.specs.iter().enumerate() {
        if i > 0 {
            let _ = writeln!(s, "  ├{BOX}┤");
        }
        let t = 1 + u32::from(spec.flaky) + spec.fails;
        let p = t - spec.fails;
        tests += t;
        passing += p;
        failing += spec.fails;
        failed_specs += u32::from(spec.fails > 0);
        let mark = if spec.fails > 0 { '✖' } else { '✔' };
        let f = dash(spec.fails);
        let _ = writeln!(
            s,
            "  │ {mark}  {:<40} 00:05 {t:>8} {p:>8} {f:>8}        -        - │",
            spec.name
        );
    }
    let n = g.specs.len();
    let footer = match failed_specs {
        0 => "✔  All specs passed!                        ".to_string(),
        k => format!(
            "✖  {k} of {n} failed ({}%)                      ",
            k * 100 / n as u32
        ),
    };
    let _ = write!(
        s,
        "  └{BOX}┘\n    {footer}00:15 {tests:>8} {passing:>8} {:>8}        -        -  \n\n",
        dash(failing)
    );
    s
}

fn dash(n: u32) -> String {
    match n {
        0 => "-".to_string(),
        n => n.to_string(),
    }
}

/// The report mochawesome writes for `spec` of `g`: the real fixtures, with the spec's
/// path under the group's folder and the failed test named after the group.
fn report(g: &Group, spec: &Spec) -> (String, String) {
    let folder = g
        .name
        .as_deref()
        .map(|n| format!("{n}/"))
        .unwrap_or_default();
    let path = format!("cypress/e2e/{folder}{}", spec.name);
    let fixture = if spec.fails > 0 { "login" } else { "dashboard" };
    let real = fs::read_to_string(crate::fixture(&format!("mochawesome/{fixture}.json")))
        .expect("mochawesome fixture");
    let json = real
        .replace(&format!("cypress/e2e/{fixture}.cy.js"), &path)
        .replace("Login rejects a bad password", &failed_title(g, spec));
    let name = format!(
        "{}-{}.json",
        group_label(g),
        spec.name.replace(['.', '/'], "_")
    );
    (name, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_scenario() {
        let a = Scenario::generate(7);
        let b = Scenario::generate(7);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_ne!(
            format!("{:?}", Scenario::generate(8)),
            format!("{a:?}"),
            "another seed, another run"
        );
    }

    #[test]
    fn the_generated_log_parses_as_the_scenario_says() {
        for seed in 0..200 {
            let sc = Scenario::generate(seed);
            let log: String = sc.steps().iter().map(|s| s.output.as_str()).collect();
            let mut parser = atvm_common::cypress::LogParser::new();
            parser.feed(log.as_bytes());
            let runs = &parser.summary().runs;
            assert_eq!(runs.len(), sc.groups.len(), "seed {seed}");
            for (block, group) in runs.iter().zip(&sc.groups) {
                assert_eq!(block.group, group.name, "seed {seed}");
                assert_eq!(block.is_finished(), group.finished, "seed {seed}\n{log}");
                let fails: u32 = group.specs.iter().map(|s| s.fails).sum();
                if group.finished {
                    assert_eq!(block.has_failures(), fails > 0, "seed {seed}\n{log}");
                }
            }
        }
    }
}
