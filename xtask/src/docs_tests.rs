//! docs/install.md stays literally true. Its verified command blocks — a fenced `sh` block
//! right after a `<!-- verified: NAME -->` line — run in order, each in a fresh `sh -e`
//! started in the directory holding the dist tarball (built from stand-in binaries), with
//! `DESTDIR` pointing at a copy of the old script install, as an operator rehearsing the
//! migration would run them. Its old → new tables must name every binary, flag and
//! environment variable the tools have, and its links must stay inside the repository.

use crate::completions::COMMANDS;
use crate::install_tests::{
    OLD_SCRIPTS, ROOT, UNITS, check_migrated, old_install, old_script, old_unit, only_stamp, text,
};
use crate::layout::{self, BINARIES};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn doc_path() -> PathBuf {
    layout::repo_root().join("docs/install.md")
}

fn doc() -> String {
    fs::read_to_string(doc_path()).unwrap()
}

/// `(name, commands)` of every verified block, in document order.
fn verified_blocks(doc: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- verified:")
            .and_then(|r| r.strip_suffix("-->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next().map(str::trim),
            Some("```sh"),
            "<!-- verified:{name}--> must be followed by a ```sh block"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push((name.trim().to_string(), body.join("\n") + "\n"));
    }
    blocks
}

/// The name the page uses for the tarball: this version, built on x86_64.
fn documented_dist_name() -> String {
    format!(
        "atvm-watcher-service-{}-x86_64",
        layout::workspace_version().unwrap()
    )
}

#[test]
fn the_documented_migration_works_on_a_copy_of_the_old_install() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    old_install(&dest);
    // The operator's directory: the tarball and its checksum, as copied to the controller.
    let work = dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let (tarball, sha) = crate::dist::build(
        &layout::tests::fake_bins(dir.path()),
        &dir.path().join("out"),
    )
    .unwrap();
    for f in [&tarball, &sha] {
        fs::copy(f, work.join(f.file_name().unwrap())).unwrap();
    }
    // A rehearsal must never reach systemd.
    let fake = dir.path().join("fake-bin");
    fs::create_dir_all(&fake).unwrap();
    fs::write(
        fake.join("systemctl"),
        "#!/bin/sh\necho 'systemctl called in a DESTDIR rehearsal' >&2\nexit 99\n",
    )
    .unwrap();
    fs::set_permissions(fake.join("systemctl"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let doc = doc();
    let documented = documented_dist_name();
    assert!(
        doc.contains(&documented),
        "docs/install.md must name the tarball of this version, {documented}"
    );
    let blocks = verified_blocks(&doc);
    let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["look", "install", "check", "validate", "rollback"]);
    for (name, block) in &blocks {
        // Built here, the tarball is named after this machine's architecture.
        let block = block.replace(&documented, &layout::dist_name().unwrap());
        let out = Command::new("sh")
            .arg("-ec")
            .arg(&block)
            .current_dir(&work)
            .env("DESTDIR", &dest)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "block {name}:\n{block}\n{}",
            text(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        match name.as_str() {
            "install" => {
                check_migrated(&dest, &stdout);
            }
            "validate" => {
                for bin in BINARIES {
                    assert!(stdout.contains(bin), "{bin} did not answer:\n{stdout}");
                }
            }
            "rollback" => check_rolled_back(&dest),
            _ => {}
        }
    }
}

/// The old script install is back in place; the copies stay in `.replaced/`.
fn check_rolled_back(dest: &Path) {
    let root = dest.join(ROOT);
    for name in OLD_SCRIPTS {
        let script = root.join(format!("{name}.sh"));
        let meta = fs::symlink_metadata(&script).unwrap();
        assert!(meta.is_file(), "{name}.sh is not a regular file again");
        assert_eq!(fs::read_to_string(&script).unwrap(), old_script(name));
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    }
    assert!(root.join("atvm_run_watcher.py").is_file());
    for name in BINARIES {
        assert!(!root.join(name).exists(), "{name} is still installed");
    }
    for unit in ["atvm-runner@.service", "atvm-run-watcher@.service"] {
        assert_eq!(
            fs::read_to_string(dest.join(UNITS).join(unit)).unwrap(),
            old_unit(unit)
        );
    }
    only_stamp(&root.join(".replaced"));
}

/// The table row whose "new" cell starts with `` `name` ``.
fn row<'a>(doc: &'a str, name: &str) -> Option<&'a str> {
    doc.lines().find(|l| {
        let cells: Vec<&str> = l.split('|').collect();
        cells.len() > 3 && cells[2].trim().starts_with(&format!("`{name}`"))
    })
}

#[test]
fn the_old_to_new_table_names_every_binary_with_all_its_flags() {
    let doc = doc();
    for &(name, command) in COMMANDS {
        let row = row(&doc, name).unwrap_or_else(|| {
            panic!("docs/install.md has no old → new row for {name}: add one (old: `(new)`)")
        });
        // The binaries that replace an old script name it; new ones have no old name.
        let old = if name == "atvm-run-watcher" {
            Some("`atvm_run_watcher.py`".to_string())
        } else {
            OLD_SCRIPTS.contains(&name).then(|| format!("`{name}.sh`"))
        };
        if let Some(old) = old {
            assert!(row.starts_with(&format!("| {old} |")), "{row}");
        }
        for arg in command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long != "help" && long != "version" {
                assert!(
                    row.contains(&format!("`--{long}`")),
                    "docs/install.md: the row of {name} lacks --{long}"
                );
            }
        }
    }
    assert!(doc.contains("`python3 atvm_run_watcher.py --help`"));
}

/// `"ATVM_…"` and `"MATTERMOST_ATVM_…"` string literals in the Rust files under `dir`, and
/// every other variable read by name (`var("…")`, `var_os("…")`: `JOURNAL_STREAM`, say).
fn variables_in(dir: &Path, found: &mut Vec<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            variables_in(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).unwrap();
            for prefix in ["\"ATVM_", "\"MATTERMOST_ATVM_", "var(\"", "var_os(\""] {
                for (i, _) in text.match_indices(prefix) {
                    let rest = &text[i + prefix.find('"').unwrap() + 1..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                        .unwrap_or(rest.len());
                    // `"ATVM_"` alone is the prefix the env-file lookup filters on.
                    if end > 0 && rest[end..].starts_with('"') && !rest[..end].ends_with('_') {
                        found.push(rest[..end].to_string());
                    }
                }
            }
        }
    }
}

#[test]
fn every_environment_variable_the_tools_read_is_documented() {
    let root = layout::repo_root();
    let mut found = Vec::new();
    variables_in(&root.join("atvm-common/src"), &mut found);
    for &(name, _) in COMMANDS {
        variables_in(&root.join(name).join("src"), &mut found);
    }
    found.sort();
    found.dedup();
    assert!(
        found.contains(&"MATTERMOST_ATVM_WEBHOOK".to_string()),
        "{found:?}"
    );
    let doc = doc();
    for var in found {
        assert!(
            doc.contains(&format!("`{var}`")),
            "docs/install.md does not say what replaces or uses {var}"
        );
    }
}

#[test]
fn the_validation_loop_runs_every_binary_and_nothing_else() {
    let blocks = verified_blocks(&doc());
    let (_, validate) = blocks.iter().find(|(n, _)| n == "validate").unwrap();
    let list: Vec<&str> = validate
        .split("for b in ")
        .nth(1)
        .and_then(|r| r.split("; do").next())
        .unwrap()
        .split_whitespace()
        .filter(|w| *w != "\\")
        .collect();
    let mut expected: Vec<&str> = COMMANDS.iter().map(|(n, _)| *n).collect();
    expected.sort_unstable();
    let mut listed = list.clone();
    listed.sort_unstable();
    assert_eq!(listed, expected);
}

#[test]
fn links_stay_inside_the_repository() {
    let doc = doc();
    for (i, _) in doc.match_indices("](") {
        let target = doc[i + 2..].split(')').next().unwrap();
        assert!(
            !target.contains("://"),
            "link outside the repository: {target}"
        );
        let file = target.split('#').next().unwrap();
        assert!(
            doc_path().parent().unwrap().join(file).exists(),
            "broken link: {target}"
        );
    }
}

#[test]
fn every_link_in_the_docs_the_tarball_ships_resolves_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let stage = layout::stage(dir.path(), &layout::tests::fake_bins(dir.path())).unwrap();
    let mut pages = vec![stage.join("INSTALL.md")];
    for entry in fs::read_dir(stage.join("docs")).unwrap() {
        pages.push(entry.unwrap().path());
    }
    // docs/install.md links to these; they ship with it.
    for page in ["watcher-service.md", "automation-run-learnings.md"] {
        assert!(
            stage.join("docs").join(page).is_file(),
            "{page} is not shipped"
        );
    }
    let top = stage.canonicalize().unwrap();
    for page in &pages {
        let text = fs::read_to_string(page).unwrap();
        for link in layout::links(&text) {
            let file = link.target.split('#').next().unwrap();
            if file.is_empty() || link.target.contains("://") {
                continue;
            }
            let resolved = page.parent().unwrap().join(file);
            let inside = resolved.canonicalize().is_ok_and(|p| p.starts_with(&top));
            assert!(
                inside,
                "{}: the link to {} does not resolve inside the tarball",
                page.display(),
                link.target
            );
        }
    }
    // Links into the source tree became text naming the path.
    let units = fs::read_to_string(stage.join("docs/units.md")).unwrap();
    assert!(
        units.contains("`units/tests/units.rs` (in the source repository)"),
        "{units}"
    );
}

#[test]
fn the_installed_files_table_names_every_unit_and_the_enabling_link() {
    let doc = doc();
    let table: Vec<&str> = doc
        .lines()
        .skip_while(|l| !l.starts_with("## What gets installed"))
        .take_while(|l| !l.starts_with("## Reading"))
        .filter(|l| l.starts_with("| `/"))
        .collect();
    for unit in units::ALL {
        assert!(
            table
                .iter()
                .any(|row| row.contains(&format!("`{}`", unit.name))
                    || row.contains(&format!("/{}`", unit.name))),
            "docs/install.md, What gets installed: no row for {}",
            unit.name
        );
    }
    assert!(
        table
            .iter()
            .any(|row| row.contains("multi-user.target.wants/atvm-run-watcher-resume.service")),
        "docs/install.md, What gets installed: no row for the link that enables the resume unit"
    );
}
