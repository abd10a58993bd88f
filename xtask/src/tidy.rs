//! The house rules, checked by `cargo test` so nobody has to remember them (in the manner
//! of rust-analyzer's `xtask/src/tidy.rs`): every module says what it is for in a `//!`
//! line, every tool's `main.rs` is the three-line call into its library, every crate
//! folder is named as its package, no TODO is left without an issue number, and no
//! function of the watcher grows past the length the anchors keep theirs to.

use crate::layout;
use std::fs;
use std::path::{Path, PathBuf};

/// Longest non-test function allowed in the watcher crate, in lines (its loop and rules
/// are meant to be read in one screen; docs/DEVELOPERS.md).
const MAX_WATCHER_FN_LINES: usize = 60;

/// Every file under `dir` whose name ends in one of `exts`, skipping build output and VCS.
fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "node_modules") {
                    stack.push(path);
                }
            } else if exts.iter().any(|e| name.ends_with(e)) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(layout::repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The workspace members, from the root Cargo.toml's `members = [...]`.
fn members() -> Vec<String> {
    let manifest = fs::read_to_string(layout::repo_root().join("Cargo.toml")).unwrap();
    let list = manifest
        .split("members = [")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap();
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn every_module_opens_with_what_it_is_for() {
    let missing: Vec<String> = files(&layout::repo_root(), &[".rs"])
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "main.rs"))
        .filter(|p| {
            let text = fs::read_to_string(p).unwrap();
            !text.trim_start().starts_with("//!")
        })
        .map(|p| rel(&p))
        .collect();
    assert!(
        missing.is_empty(),
        "no //! overview at the top of: {missing:?}"
    );
}

#[test]
fn every_tool_main_is_the_three_line_call_into_its_library() {
    for name in layout::BINARIES {
        let path = layout::repo_root().join(name).join("src/main.rs");
        let text = fs::read_to_string(&path).unwrap();
        let lib = name.replace('-', "_");
        let expected = format!(
            "fn main() -> std::process::ExitCode {{\n    atvm_common::cli::main(\"{name}\", {lib}::run)\n}}\n"
        );
        assert_eq!(text, expected, "{}", rel(&path));
    }
}

#[test]
fn every_crate_folder_is_named_as_its_package() {
    for member in members() {
        let manifest = fs::read_to_string(layout::repo_root().join(&member).join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("{member}/Cargo.toml: {e}"));
        let name = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = "))
            .map(|n| n.trim_matches('"'));
        assert_eq!(name, Some(member.as_str()), "{member}/Cargo.toml");
        assert!(!member.contains('/'), "{member}: crates live at the root");
    }
}

#[test]
fn no_todo_without_an_issue() {
    let root = layout::repo_root();
    let exts = [".rs", ".md", ".sh", ".in", ".toml", ".py"];
    let mut bad = Vec::new();
    for path in files(&root, &exts) {
        if path.ends_with("xtask/src/tidy.rs") {
            continue;
        }
        for (n, line) in fs::read_to_string(&path).unwrap().lines().enumerate() {
            let marked = ["// TODO", "# TODO", "TODO:", "TODO(", "FIXME", "XXX:"]
                .iter()
                .any(|m| line.contains(m));
            if marked && !has_issue_number(line) {
                bad.push(format!("{}:{}: {}", rel(&path), n + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "TODO without an issue number:\n{}",
        bad.join("\n")
    );
}

/// Does `line` name an issue (`#12`)?
fn has_issue_number(line: &str) -> bool {
    line.split('#')
        .skip(1)
        .any(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

#[test]
fn a_todo_needs_a_number_not_just_a_hash() {
    assert!(has_issue_number("// TODO(#12): resume sub-runs"));
    assert!(!has_issue_number("# TODO: later"));
    assert!(!has_issue_number("// TODO: see #readme"));
}

/// `(name, lines)` of every function outside `#[cfg(test)]` code in `text`, as rustfmt
/// lays them out: from the `fn` line to the closing brace at the same indentation.
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let end_of_code = lines
        .iter()
        .position(|l| l.trim() == "#[cfg(test)]" && !l.starts_with(' '))
        .filter(|&i| lines.get(i + 1).is_some_and(|l| l.starts_with("mod tests")))
        .unwrap_or(lines.len());
    let mut out = Vec::new();
    for (i, line) in lines[..end_of_code].iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let Some(rest) = [
            "pub fn ",
            "pub(crate) fn ",
            "fn ",
            "const fn ",
            "pub const fn ",
        ]
        .iter()
        .find_map(|p| trimmed.strip_prefix(p)) else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let signature_end = lines[i..end_of_code]
            .iter()
            .find(|l| l.trim_end().ends_with('{') || l.trim_end().ends_with(';'));
        if signature_end.is_none_or(|l| l.trim_end().ends_with(';')) {
            continue; // a declaration without a body (a trait's)
        }
        let close = " ".repeat(indent) + "}";
        if let Some(k) = lines[i..end_of_code].iter().position(|l| *l == close) {
            out.push((name, k + 1));
        }
    }
    out
}

#[test]
fn the_function_length_check_measures_what_it_says() {
    let text = "fn short() {\n    a();\n}\n\ntrait T {\n    fn declared(&self);\n}\n    pub fn method(&self) {\n        x();\n        y();\n    }\n#[cfg(test)]\nmod tests {\n    fn long_test() {\n    }\n}\n";
    assert_eq!(
        function_lengths(text),
        [("short".to_string(), 3), ("method".to_string(), 4)]
    );
}

#[test]
fn no_watcher_function_outgrows_one_screen() {
    let dir = layout::repo_root().join("atvm-run-watcher/src");
    let mut long = Vec::new();
    for path in files(&dir, &[".rs"]) {
        for (name, n) in function_lengths(&fs::read_to_string(&path).unwrap()) {
            if n > MAX_WATCHER_FN_LINES {
                long.push(format!("{}: {name} is {n} lines", rel(&path)));
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_WATCHER_FN_LINES} lines (split it by responsibility):\n{}",
        long.join("\n")
    );
}
