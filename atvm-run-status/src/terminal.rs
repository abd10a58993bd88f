//! How wide the table may be. On a terminal: its own width (TIOCGWINSZ on stdout, through
//! rustix), else `COLUMNS`, else 80. Into a pipe or a file: `COLUMNS` when a script sets
//! it, else no limit — a pipe gets whole lines (bash does not export `COLUMNS`, so a
//! table read by `grep` or `less -S` is never cut).

use std::io::IsTerminal;

/// The width to fit, or `None` for whole lines.
pub fn width() -> Option<usize> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return columns();
    }
    match rustix::termios::tcgetwinsize(&stdout) {
        Ok(size) if size.ws_col > 0 => Some(usize::from(size.ws_col)),
        _ => columns().or(Some(80)),
    }
}

fn columns() -> Option<usize> {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c: &usize| c > 0)
}
