//! `cargo xtask uninstall [--destdir D] [--prefix P]`: remove what install added; keep the
//! state root and the env file (and an inventory the operator edited).

use crate::layout::{self, DEFAULT_PREFIX, INVENTORY, Tree};
use crate::{Args, Result};
use std::fs;
use std::path::PathBuf;
use std::process::Command;

pub fn run(args: &Args) -> Result {
    let destdir = args.path("--destdir");
    let prefix = args
        .path("--prefix")
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PREFIX));
    let tree = Tree {
        destdir: destdir.clone().unwrap_or_else(|| PathBuf::from("/")),
        prefix,
    };
    for line in remove(&tree)? {
        println!("uninstall: {line}");
    }
    if destdir.is_none() {
        let status = Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        if !status.success() {
            return Err("systemctl daemon-reload failed".to_string());
        }
    }
    Ok(())
}

pub fn remove(tree: &Tree) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut removed = 0;
    for path in layout::owned_paths(tree) {
        if fs::symlink_metadata(&path).is_ok() {
            fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
            removed += 1;
        }
    }
    notes.push(format!(
        "removed {removed} files (binaries, links, units, examples)"
    ));
    let inventory = tree.package_root().join(INVENTORY);
    let shipped = fs::read_to_string(layout::repo_root().join("inventory/vm-inventory.md"))
        .unwrap_or_default();
    match fs::read_to_string(&inventory) {
        Ok(text) if text == shipped => {
            fs::remove_file(&inventory)
                .map_err(|e| format!("cannot remove {}: {e}", inventory.display()))?;
        }
        Ok(_) => notes.push(format!(
            "kept {} (edited by the operator)",
            inventory.display()
        )),
        Err(_) => {}
    }
    if fs::remove_dir(tree.package_root()).is_ok() {
        notes.push(format!("removed {}", tree.package_root().display()));
    }
    notes.push(format!(
        "kept {} and {}",
        tree.env_file().display(),
        tree.state_root().display()
    ));
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::OperatorFiles;

    #[test]
    fn uninstall_removes_the_install_but_keeps_state_and_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let tree = crate::layout::tests::staged(dir.path());
        layout::lay_out(
            &tree,
            &crate::layout::tests::fake_bins(dir.path()),
            OperatorFiles::CreateIfAbsent,
        )
        .unwrap();
        fs::create_dir_all(tree.state_root().join("b1")).unwrap();
        remove(&tree).unwrap();
        assert!(
            !tree.package_root().exists(),
            "an unedited inventory goes too"
        );
        assert!(!tree.unit_dir().join("atvm-runner@.service").exists());
        assert!(tree.env_file().exists());
        assert!(tree.state_root().join("b1").exists());
    }

    #[test]
    fn an_edited_inventory_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let tree = crate::layout::tests::staged(dir.path());
        layout::lay_out(
            &tree,
            &crate::layout::tests::fake_bins(dir.path()),
            OperatorFiles::CreateIfAbsent,
        )
        .unwrap();
        fs::write(
            tree.package_root().join(INVENTORY),
            "| VM | OS |\n|--|--|\n| mine | fc |\n",
        )
        .unwrap();
        let notes = remove(&tree).unwrap();
        assert!(tree.package_root().join(INVENTORY).exists());
        assert!(
            notes.iter().any(|n| n.contains("edited by the operator")),
            "{notes:?}"
        );
        assert!(!tree.package_root().join("atvm-run-watcher").exists());
    }
}
