//! The shared `main`: parse the command line, run, turn the typed error into its exit code.
//! Every binary's `main.rs` is one call to [`main`]. Usage errors are one line too.

use crate::error::{Result, exit};
use crate::logging;
use clap::Parser;
use clap::error::{ContextKind, ErrorKind};
use std::process::ExitCode;

/// What a tool's `run` may return on success: nothing (exit 0) or an explicit code
/// (run-atvm-runner exits with its child's code).
pub trait IntoExit {
    fn into_exit(self) -> u8;
}

impl IntoExit for () {
    fn into_exit(self) -> u8 {
        exit::SUCCESS
    }
}

impl IntoExit for u8 {
    fn into_exit(self) -> u8 {
        self
    }
}

/// Every binary of the project carries this string (its `main` refers to it), so the
/// watcher recognises a process running one of ours by its executable's content too — a
/// copy outside the package root, or another version's build (docs/watcher-service.md).
pub const MARKER: &str = "atvm-watcher-service binary 3f9c27d1e8b45a60";

pub fn main<C: Parser, T: IntoExit>(program: &'static str, run: fn(C) -> Result<T>) -> ExitCode {
    std::hint::black_box(MARKER);
    logging::init(program);
    // Parsed under the program's own name, whatever name or link it was started through
    // (`start-atvm-run.sh`): --help and usage errors read the same either way.
    let matches = C::command()
        .name(program)
        .bin_name(program)
        .try_get_matches();
    let cli = match matches.and_then(|m| C::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match run(cli) {
        Ok(t) => ExitCode::from(t.into_exit()),
        Err(e) => {
            logging::error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            })
        }
        // A value clap could not take is not repeated: from the environment (a unit's env
        // file) it may hold more than the operator typed.
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let arg = e
                .get(ContextKind::InvalidArg)
                .map_or("an option".to_string(), |a| a.to_string());
            let why = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            logging::error(format!("invalid value for {arg}{why} (see --help)"));
            ExitCode::from(exit::USAGE)
        }
        _ => {
            logging::error(format!("{} (see --help)", one_line(&e.to_string())));
            ExitCode::from(exit::USAGE)
        }
    }
}

/// clap's message without the `error:` label, the usage block and the `--help` hint.
fn one_line(rendered: &str) -> String {
    let body = rendered.split("\n\nUsage:").next().unwrap_or(rendered);
    let body = body.strip_prefix("error: ").unwrap_or(body);
    let body = body
        .split("\n\nFor more information")
        .next()
        .unwrap_or(body);
    body.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --build-name <BUILD_NAME>\n\nUsage: x --build-name <BUILD_NAME>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(rendered),
            "the following required arguments were not provided: --build-name <BUILD_NAME>"
        );
    }
}
