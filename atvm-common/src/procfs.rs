//! Process identity from /proc: is a recorded pid still the same process (pid + start time),
//! and the fallback search for runs not started through start-atvm-runner (SPEC §6).

use std::fs;

/// A running process as identified by pid and start time (clock ticks since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    pub start_ticks: u64,
}

/// State letter and start time from /proc/<pid>/stat. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted after the last `)`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); starttime is field 22.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Start time of `pid` if it is alive (zombies count as dead: they only wait to be reaped).
pub fn start_ticks(pid: u32) -> Option<u64> {
    match stat(pid) {
        Some((state, _)) if state == 'Z' || state == 'X' => None,
        Some((_, start)) => Some(start),
        None => None,
    }
}

pub fn self_id() -> Option<ProcessId> {
    let pid = std::process::id();
    start_ticks(pid).map(|start_ticks| ProcessId { pid, start_ticks })
}

/// Is the process that was `id` still running?
pub fn is_alive(id: ProcessId) -> bool {
    id.pid != 0 && start_ticks(id.pid) == Some(id.start_ticks)
}

/// Does this argv carry `--build_name B` / `--build-name B` (or the `=` forms)?
pub fn argv_names_build(argv: &[&str], build: &str) -> bool {
    if let Some(prog) = argv.first() {
        let base = prog.rsplit('/').next().unwrap_or(prog);
        // Our own binaries carry `--build-name B` too; they are never "the runner".
        if crate::BINARIES.contains(&base) {
            return false;
        }
    }
    argv.windows(2)
        .any(|w| matches!(w[0], "--build_name" | "--build-name") && w[1] == build)
        || argv.iter().any(|a| {
            a.strip_prefix("--build_name=")
                .or_else(|| a.strip_prefix("--build-name="))
                == Some(build)
        })
}

/// The oldest live process (other than us) whose command line names `build`.
pub fn find_by_build_name(build: &str) -> Option<ProcessId> {
    let me = std::process::id();
    let mut found: Option<ProcessId> = None;
    for entry in fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&raw);
        let argv: Vec<&str> = text.split('\0').filter(|a| !a.is_empty()).collect();
        if !argv_names_build(&argv, build) {
            continue;
        }
        if let Some(start_ticks) = start_ticks(pid) {
            let candidate = ProcessId { pid, start_ticks };
            if found.is_none_or(|f| candidate.start_ticks < f.start_ticks) {
                found = Some(candidate);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn we_are_alive_and_a_wrong_start_time_is_not_us() {
        let me = self_id().expect("own stat");
        assert!(is_alive(me));
        assert!(!is_alive(ProcessId {
            pid: me.pid,
            start_ticks: me.start_ticks + 1
        }));
        assert!(!is_alive(ProcessId {
            pid: 0,
            start_ticks: 0
        }));
    }

    #[test]
    fn recognises_both_flag_spellings_but_not_our_own_tools() {
        assert!(argv_names_build(
            &["node", "run.js", "--build_name", "b1"],
            "b1"
        ));
        assert!(argv_names_build(&["x", "--build-name=b1"], "b1"));
        assert!(!argv_names_build(&["x", "--build-name", "b10"], "b1"));
        assert!(!argv_names_build(
            &["/opt/p/atvm-run-watcher", "--build-name", "b1"],
            "b1"
        ));
    }

    #[test]
    fn finds_a_live_process_by_its_command_line() {
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "sleep 30; :",
                "sh",
                "--build_name",
                "procfs-test-build",
            ])
            .spawn()
            .expect("spawn");
        // Until the child has exec'ed, its command line is still ours.
        let mut found = None;
        for _ in 0..200 {
            found = find_by_build_name("procfs-test-build");
            if found.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.map(|f| f.pid), Some(child.id()));
    }
}
