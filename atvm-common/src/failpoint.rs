//! Named pause points for fault-injection tests, in debug builds only (release builds —
//! what `cargo xtask install` and `dist` ship — compile [`pause`] to nothing).
//!
//! A test lists steps in `ATVM_FAILPOINTS` (comma-separated) and a directory in
//! `ATVM_FAILPOINT_DIR`. A process reaching a listed step creates `<dir>/<step>.reached`
//! and waits until `<dir>/<step>.go` exists; meanwhile the test stops it with SIGTERM or
//! SIGKILL, fills the disk, or whatever the fault is. This is how the delivery tests stop
//! the watcher exactly between "recorded" and "sent", or between "answered ok" and
//! "recorded".

/// Pause here if a test asked for `step`.
pub fn pause(step: &str) {
    #[cfg(debug_assertions)]
    debug::pause(step);
    #[cfg(not(debug_assertions))]
    let _ = step;
}

#[cfg(debug_assertions)]
mod debug {
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn pause(step: &str) {
        let listed =
            std::env::var("ATVM_FAILPOINTS").is_ok_and(|v| v.split(',').any(|s| s.trim() == step));
        let Some(dir) = std::env::var_os("ATVM_FAILPOINT_DIR").map(PathBuf::from) else {
            return;
        };
        if !listed {
            return;
        }
        let _ = std::fs::write(dir.join(format!("{step}.reached")), b"");
        let go = dir.join(format!("{step}.go"));
        while !go.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
