//! Project tasks (`cargo xtask <task>`, see `.cargo/config.toml`):
//!
//! - `install [--destdir D] [--prefix P]` — build release binaries, stage the install tree
//!   and run its installer (`packaging/install.sh`, docs/install.md): replaces an old install,
//!   keeping what it replaces in `.replaced/`; without `--destdir` it also reloads systemd,
//!   checks every binary's `--help` and moves a leftover `/root/atvm-watcher-service` aside.
//! - `dist` — one tarball of the same staged tree, installer included (plus its SHA-256), for
//!   controllers without Rust.
//! - `uninstall [--destdir D] [--prefix P]` — the installer's `--uninstall`: remove what
//!   install added; keep state, the env file, an edited inventory and `.replaced/`.
//! - `demo` — install into `target/demo` and watch two sample runs of one build end to end
//!   (`--update-readme` puts the second post into the README).
//! - `bench` — performance measurements (parse throughput, poll cost, RSS, idle CPU, post
//!   latency and wake-ups, events on and off).
//!
//! Deliberately dependency-light: std, the `units` crate, the tool crates' clap definitions
//! (for completions and man pages), and the system's `sh`, `tar` and `sha256sum`.

mod bench;
mod bench_wake;
mod completions;
mod demo;
mod dist;
#[cfg(test)]
mod docs_tests;
mod install;
#[cfg(test)]
mod install_tests;
mod layout;
#[cfg(test)]
mod tidy;
mod uninstall;

use std::path::PathBuf;
use std::process::ExitCode;

pub type Result<T = ()> = std::result::Result<T, String>;

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  install   [--destdir D] [--prefix /opt/atvm-watcher-service]
  dist      [--out DIR]
  uninstall [--destdir D] [--prefix /opt/atvm-watcher-service]
  demo      [--keep] [--update-readme]
  bench     [--quick]";

/// `--name value` options, plus bare `--flag`s.
#[derive(Debug, Default)]
pub struct Args {
    pairs: Vec<(String, String)>,
    flags: Vec<String>,
}

impl Args {
    fn parse(words: &[String], with_values: &[&str], flags: &[&str]) -> Result<Args> {
        let mut args = Args::default();
        let mut it = words.iter();
        while let Some(w) = it.next() {
            if with_values.contains(&w.as_str()) {
                let v = it.next().ok_or_else(|| format!("{w} needs a value"))?;
                args.pairs.push((w.clone(), v.clone()));
            } else if flags.contains(&w.as_str()) {
                args.flags.push(w.clone());
            } else {
                return Err(format!("unknown option {w}\n{USAGE}"));
            }
        }
        Ok(args)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.value(name).map(PathBuf::from)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}

fn run(words: &[String]) -> Result {
    let (task, rest) = words.split_first().ok_or_else(|| USAGE.to_string())?;
    match task.as_str() {
        "install" => install::run(&Args::parse(rest, &["--destdir", "--prefix"], &[])?),
        "dist" => dist::run(&Args::parse(rest, &["--out"], &[])?),
        "uninstall" => uninstall::run(&Args::parse(rest, &["--destdir", "--prefix"], &[])?),
        "demo" => demo::run(&Args::parse(rest, &[], &["--keep", "--update-readme"])?),
        "bench" => bench::run(&Args::parse(rest, &[], &["--quick"])?),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown task {other:?}\n{USAGE}")),
    }
}

fn main() -> ExitCode {
    let words: Vec<String> = std::env::args().skip(1).collect();
    match run(&words) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
