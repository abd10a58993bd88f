//! Shell completions (bash, zsh, fish) and man pages for every binary, generated from each
//! tool's own clap definition (`<tool>::Cli::command()`), so they say exactly what `--help`
//! says. Written into the staged tree under `share/`, which the installer copies to the
//! conventional places under `/usr/local/share` (docs/install.md).

use crate::Result;
use clap::{Command, CommandFactory};
use clap_complete::Shell;
use std::fs;
use std::path::{Path, PathBuf};

/// How to get a tool's clap command: its `Cli::command`.
pub type CommandFn = fn() -> Command;

/// Every binary and its clap command. A new binary must be added here (a test compares this
/// list with `atvm_common::BINARIES`).
pub const COMMANDS: &[(&str, CommandFn)] = &[
    ("start-atvm-run", start_atvm_run::Cli::command),
    (
        "start-atvm-run-watcher",
        start_atvm_run_watcher::Cli::command,
    ),
    ("start-atvm-runner", start_atvm_runner::Cli::command),
    ("run-atvm-runner", run_atvm_runner::Cli::command),
    ("atvm-run-watcher", atvm_run_watcher::Cli::command),
    ("cancel-atvm-runner", cancel_atvm_runner::Cli::command),
    (
        "cancel-atvm-run-watcher",
        cancel_atvm_run_watcher::Cli::command,
    ),
    ("atvm-run-status", atvm_run_status::Cli::command),
];

/// Where each generated file goes, relative to `share/` (= `/usr/local/share` once
/// installed): the directories bash-completion, zsh and fish search for local packages,
/// and section 1 of the manual.
pub fn share_paths(name: &str) -> [(Shell, PathBuf); 3] {
    [
        (
            Shell::Bash,
            PathBuf::from(format!("bash-completion/completions/{name}")),
        ),
        (
            Shell::Zsh,
            PathBuf::from(format!("zsh/site-functions/_{name}")),
        ),
        (
            Shell::Fish,
            PathBuf::from(format!("fish/vendor_completions.d/{name}.fish")),
        ),
    ]
}

pub fn man_path(name: &str) -> PathBuf {
    PathBuf::from(format!("man/man1/{name}.1"))
}

/// Write the completions and man page of every binary under `share`.
pub fn generate(share: &Path) -> Result {
    for &(name, command) in COMMANDS {
        for (shell, rel) in share_paths(name) {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command(), name, &mut out);
            write(&share.join(rel), &out)?;
        }
        let mut out = Vec::new();
        clap_mangen::Man::new(command())
            .manual("ATVM watcher service")
            .render(&mut out)
            .map_err(|e| format!("cannot render the man page of {name}: {e}"))?;
        write(&share.join(man_path(name)), &out)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binary_has_a_command() {
        let listed: Vec<&str> = COMMANDS.iter().map(|(n, _)| *n).collect();
        for name in atvm_common::BINARIES {
            assert!(
                listed.contains(&name),
                "{name} is in atvm_common::BINARIES but not in xtask's COMMANDS: add it there"
            );
        }
        assert_eq!(listed.len(), atvm_common::BINARIES.len(), "{listed:?}");
    }

    #[test]
    fn each_command_is_named_after_its_binary() {
        for &(name, command) in COMMANDS {
            assert_eq!(command().get_name(), name);
        }
    }

    #[test]
    fn completions_and_man_pages_name_every_option() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        for &(name, command) in COMMANDS {
            let man = fs::read_to_string(dir.path().join(man_path(name))).unwrap();
            assert!(
                man.starts_with(".ie") || man.contains(".TH"),
                "{name}: {man}"
            );
            let bash = fs::read_to_string(dir.path().join(&share_paths(name)[0].1)).unwrap();
            let zsh = fs::read_to_string(dir.path().join(&share_paths(name)[1].1)).unwrap();
            let fish = fs::read_to_string(dir.path().join(&share_paths(name)[2].1)).unwrap();
            assert!(zsh.starts_with(&format!("#compdef {name}")), "{zsh}");
            for arg in command().get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                // roff escapes '-' as '\-'.
                assert!(
                    man.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))),
                    "{name}: man page lacks --{long}"
                );
                assert!(bash.contains(&format!("--{long}")), "{name} bash: --{long}");
                assert!(zsh.contains(&format!("--{long}")), "{name} zsh: --{long}");
                assert!(
                    fish.contains(&format!("-l {long}")),
                    "{name} fish: --{long}"
                );
            }
        }
    }
}
