//! Where everything lives (docs/watcher-service.md). Production defaults, each overridable by an `ATVM_*`
//! variable so tests and demos never touch real paths. An empty variable counts as unset.
//!
//! Every binary resolves them the same way ([`Settings`]): the process environment, then
//! the `ATVM_*` lines of the env file, then the default. The units load the env file into
//! the watcher's and runner's environment; reading its `ATVM_*` lines here too is what makes
//! a start helper run from a shell agree with them about where state lives.

use crate::build_name::BuildName;
use crate::error::Result;
use crate::state::StateDir;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

pub const DEFAULT_PACKAGE_ROOT: &str = "/opt/atvm-watcher-service";
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/atvm-run-watcher";
pub const DEFAULT_AUTOMATION_ROOT: &str = "/root/cdc-e2e-cyp-12.17.4";
pub const DEFAULT_LOG_DIR: &str = "/tmp";
pub const DEFAULT_ENV_FILE: &str = "/etc/atvm-run-watcher.env";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub package_root: PathBuf,
    pub state_root: PathBuf,
    pub automation_root: PathBuf,
    pub reporter_dir: PathBuf,
    pub log_dir: PathBuf,
    pub env_file: PathBuf,
    pub inventory: PathBuf,
}

/// The `ATVM_*` settings as a binary sees them: the process environment first, then the
/// `ATVM_*` assignments of the env file (`ATVM_ENV_FILE`, itself only from the environment),
/// read as systemd reads it. A missing env file adds nothing; an unreadable one is an error
/// naming it (which state root would be meant cannot be told).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    file: HashMap<String, String>,
}

impl Settings {
    pub fn load() -> Result<Settings> {
        let env_file = std::env::var_os("ATVM_ENV_FILE")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_ENV_FILE), PathBuf::from);
        let mut file = crate::envfile::read(&env_file)?.unwrap_or_default();
        file.retain(|k, v| k.starts_with("ATVM_") && k != "ATVM_ENV_FILE" && !v.is_empty());
        Ok(Settings { file })
    }

    /// `key`'s value: the process environment's unless empty, else the env file's.
    pub fn get(&self, key: &str) -> Option<OsString> {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .or_else(|| self.file.get(key).map(OsString::from))
    }
}

impl Paths {
    /// Resolve as every binary does: flags aside, the process environment, then the env
    /// file's `ATVM_*` lines ([`Settings`]).
    pub fn from_env() -> Result<Paths> {
        let settings = Settings::load()?;
        Ok(Paths::resolve(|key| settings.get(key)))
    }

    /// Resolve with an explicit lookup, so the rules are testable without touching the
    /// process environment.
    pub fn resolve(get: impl Fn(&str) -> Option<OsString>) -> Paths {
        let var = |key: &str| get(key).filter(|v| !v.is_empty()).map(PathBuf::from);
        let package_root = var("ATVM_PACKAGE_ROOT").unwrap_or_else(|| DEFAULT_PACKAGE_ROOT.into());
        let automation_root =
            var("ATVM_AUTOMATION_ROOT").unwrap_or_else(|| DEFAULT_AUTOMATION_ROOT.into());
        Paths {
            state_root: var("ATVM_STATE_ROOT").unwrap_or_else(|| DEFAULT_STATE_ROOT.into()),
            reporter_dir: var("ATVM_REPORTER_DIR")
                .unwrap_or_else(|| automation_root.join("cypress/cmcReporter")),
            log_dir: var("ATVM_LOG_DIR").unwrap_or_else(|| DEFAULT_LOG_DIR.into()),
            env_file: var("ATVM_ENV_FILE").unwrap_or_else(|| DEFAULT_ENV_FILE.into()),
            inventory: var("ATVM_INVENTORY")
                .unwrap_or_else(|| package_root.join("vm-inventory.md")),
            package_root,
            automation_root,
        }
    }

    /// `<log-dir>/<build>.log`: the runner's Cypress output.
    pub fn run_log(&self, build: &BuildName) -> PathBuf {
        self.log_dir.join(format!("{build}.log"))
    }

    /// `<log-dir>/<build>.launch.log`: the template step's output.
    pub fn launch_log(&self, build: &BuildName) -> PathBuf {
        self.log_dir.join(format!("{build}.launch.log"))
    }

    pub fn state_dir(&self, build: &BuildName) -> StateDir {
        StateDir::new(&self.state_root, build)
    }

    pub fn archive_root(&self) -> PathBuf {
        self.state_root.join(".archive")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Paths {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Paths::resolve(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_production_paths() {
        let p = with(&[]);
        assert_eq!(p.state_root, PathBuf::from("/var/lib/atvm-run-watcher"));
        assert_eq!(
            p.reporter_dir,
            PathBuf::from("/root/cdc-e2e-cyp-12.17.4/cypress/cmcReporter")
        );
        assert_eq!(
            p.inventory,
            PathBuf::from("/opt/atvm-watcher-service/vm-inventory.md")
        );
        assert_eq!(p.env_file, PathBuf::from("/etc/atvm-run-watcher.env"));
    }

    #[test]
    fn derived_defaults_follow_their_roots_and_empty_means_unset() {
        let p = with(&[
            ("ATVM_AUTOMATION_ROOT", "/a"),
            ("ATVM_PACKAGE_ROOT", "/p"),
            ("ATVM_LOG_DIR", ""),
        ]);
        assert_eq!(p.reporter_dir, PathBuf::from("/a/cypress/cmcReporter"));
        assert_eq!(p.inventory, PathBuf::from("/p/vm-inventory.md"));
        assert_eq!(p.log_dir, PathBuf::from("/tmp"));
        let b = BuildName::parse("b1").expect("valid");
        assert_eq!(p.run_log(&b), PathBuf::from("/tmp/b1.log"));
        assert_eq!(p.launch_log(&b), PathBuf::from("/tmp/b1.launch.log"));
    }
}
