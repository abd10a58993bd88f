//! The systemd units (docs/units.md), kept as files in `units/` with a `@PACKAGE_ROOT@`
//! placeholder and rendered for a package root by `cargo xtask install` and by the tests:
//! the two template units a run is made of (`atvm-runner@.service`,
//! `atvm-run-watcher@.service`, one instance per build) and the boot-time unit that resumes
//! the watchers of unfinished runs (`atvm-run-watcher-resume.service`). docs/units.md says
//! why each directive is there.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitTemplate {
    /// The unit's file name, e.g. `atvm-runner@.service` (a template: it ends in `@.service`)
    /// or `atvm-run-watcher-resume.service`.
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

/// The boot-time unit: `atvm-run-watcher --resume-all` (docs/units.md), enabled by the installer.
pub const RESUME: UnitTemplate = UnitTemplate {
    name: "atvm-run-watcher-resume.service",
    template: include_str!("../units/atvm-run-watcher-resume.service.in"),
};

/// Every unit the installer lays out.
pub const ALL: [UnitTemplate; 3] = [RUNNER, WATCHER, RESUME];

const PLACEHOLDER: &str = "@PACKAGE_ROOT@";

impl UnitTemplate {
    /// The unit file for binaries installed in `package_root`.
    pub fn render(&self, package_root: &Path) -> String {
        let root = package_root.to_string_lossy();
        self.template
            .replace(PLACEHOLDER, root.trim_end_matches('/'))
    }

    /// Is this a template unit (one instance per build, `%i` in it)?
    pub fn is_template(&self) -> bool {
        self.name.ends_with("@.service")
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

    #[test]
    fn only_the_run_units_are_templates() {
        assert!(RUNNER.is_template() && WATCHER.is_template());
        assert!(!RESUME.is_template());
        assert_eq!(
            exec_start(&RESUME.render(Path::new("/opt/atvm-watcher-service"))),
            Some("/opt/atvm-watcher-service/atvm-run-watcher --resume-all")
        );
    }
}
