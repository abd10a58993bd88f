//! The shared `main`: parse the command line, run, turn the typed error into its exit code.
//! Every binary's `main.rs` is one call to [`main`]. Usage errors are one line too.

use crate::error::{Result, exit};
use crate::logging;
use clap::Parser;
use clap::error::ErrorKind;
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

pub fn main<C: Parser, T: IntoExit>(program: &'static str, run: fn(C) -> Result<T>) -> ExitCode {
    logging::init(program);
    let cli = match C::try_parse() {
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
