//! The two systemd unit templates (SPEC §10), kept as files in `units/` with a
//! `@PACKAGE_ROOT@` placeholder and rendered for a package root by `cargo xtask install` and
//! by the tests' fake systemctl.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitTemplate {
    /// The template unit's file name, e.g. `atvm-runner@.service`.
    pub name: &'static str,
    template: &'static str,
}

pub const RUNNER: UnitTemplate = UnitTemplate {
    name: "atvm-runner@.service",
    template: include_str!("../units/atvm-runner@.service.in"),
};

pub const WATCHER: UnitTemplate = UnitTemplate {
    name: "atvm-run-watcher@.service",
    template: include_str!("../units/atvm-run-watcher@.service.in"),
};

pub const ALL: [UnitTemplate; 2] = [RUNNER, WATCHER];

const PLACEHOLDER: &str = "@PACKAGE_ROOT@";

impl UnitTemplate {
    /// The unit file for binaries installed in `package_root`.
    pub fn render(&self, package_root: &Path) -> String {
        let root = package_root.to_string_lossy();
        self.template
            .replace(PLACEHOLDER, root.trim_end_matches('/'))
    }

    /// The unprocessed template text.
    pub fn template(&self) -> &'static str {
        self.template
    }
}

/// The `ExecStart=` command line of a rendered unit.
pub fn exec_start(unit_text: &str) -> Option<&str> {
    unit_text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("ExecStart="))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_package_root_into_exec_start() {
        let text = RUNNER.render(Path::new("/opt/atvm-watcher-service/"));
        assert_eq!(
            exec_start(&text),
            Some("/opt/atvm-watcher-service/run-atvm-runner --build-name %i")
        );
        assert!(!text.contains(PLACEHOLDER));
    }
}
