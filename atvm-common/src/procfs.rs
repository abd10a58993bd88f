//! Process identity from /proc: is a recorded pid still the same process (pid + start time),
//! and the fallback search for runs not started through start-atvm-runner (docs/watcher-service.md): who
//! names the build, who is ours (by executable, not by name), who owns what, and who holds
//! a log open for writing.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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

/// When `id` started, on the wall clock (the boot time from /proc/stat plus its start
/// ticks), if it is still running.
pub fn started_at(id: ProcessId) -> Option<std::time::SystemTime> {
    if !is_alive(id) {
        return None;
    }
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf(3) only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    let since_boot = std::time::Duration::from_millis(id.start_ticks.saturating_mul(1000) / hz);
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(btime) + since_boot)
}

/// Is the process that was `id` still running?
pub fn is_alive(id: ProcessId) -> bool {
    id.pid != 0 && start_ticks(id.pid) == Some(id.start_ticks)
}

/// Does this argv carry `--build_name B` / `--build-name B` (or the `=` forms)?
pub fn argv_names_build(argv: &[&str], build: &str) -> bool {
    argv_build_names(argv).any(|b| b == build)
}

/// Every build name this argv carries: `--build_name B`, `--build-name B` and the `=`
/// forms, in order.
pub fn argv_build_names<'a>(argv: &'a [&'a str]) -> impl Iterator<Item = &'a str> + 'a {
    argv.iter()
        .enumerate()
        .filter_map(|(i, a)| match a.split_once('=') {
            Some(("--build_name" | "--build-name", name)) => Some(name),
            None if matches!(*a, "--build_name" | "--build-name") => argv.get(i + 1).copied(),
            _ => None,
        })
}

/// The project's own binaries, recognised by what a process runs (`/proc/<pid>/exe`), not
/// by what it calls itself: `start-atvm-run-watcher.sh`, a copy or a link of a package
/// binary is still ours, and never "the runner" (docs/watcher-service.md).
#[derive(Clone, Debug, Default)]
pub struct OwnBinaries {
    /// (device, inode) of every package binary, and of the running program itself.
    files: Vec<(u64, u64)>,
    /// `<package-root>/<binary>`: how an upgraded (deleted) binary still shows in `exe`.
    paths: Vec<String>,
    /// Executables looked into for [`crate::cli::MARKER`], by (device, inode): each is read
    /// once per watcher.
    marked: std::cell::RefCell<std::collections::HashMap<(u64, u64), bool>>,
}

impl OwnBinaries {
    pub fn new(package_root: &Path) -> OwnBinaries {
        let mut own = OwnBinaries::default();
        let candidates = crate::BINARIES
            .iter()
            .map(|name| package_root.join(name))
            .chain(std::iter::once(PathBuf::from("/proc/self/exe")));
        for path in candidates {
            if let Ok(meta) = fs::metadata(&path) {
                own.files.push((meta.dev(), meta.ino()));
            }
            if let Ok(real) = fs::canonicalize(&path) {
                own.paths.push(real.to_string_lossy().into_owned());
            }
            own.paths.push(path.to_string_lossy().into_owned());
        }
        own
    }

    /// Is `pid` running one of our binaries: a package binary, or any executable that
    /// carries the project's marker (a copy elsewhere, another build)?
    pub fn runs_in(&self, pid: u32) -> bool {
        let exe = format!("/proc/{pid}/exe");
        if let Ok(meta) = fs::metadata(&exe) {
            let id = (meta.dev(), meta.ino());
            if self.files.contains(&id) || self.carries_marker(Path::new(&exe), id) {
                return true;
            }
        }
        // Replaced by an upgrade while running: the link reads `<path> (deleted)`.
        fs::read_link(&exe).is_ok_and(|target| {
            let target = target.to_string_lossy();
            let target = target.strip_suffix(" (deleted)").unwrap_or(&target);
            self.paths.iter().any(|p| p == target)
        })
    }

    /// Does `argv` run one of our binaries as a command (`timeout 60 start-atvm-runner.sh
    /// --build-name B …`, `watch atvm-run-status --build-name B`, a shell loop over one)?
    /// Such a process wraps ours even while no child of it is running one. A word is taken
    /// as a command as `pid` would run it: a path relative to its working directory, or a
    /// bare name looked up in its `PATH`.
    fn invoked_by(&self, pid: u32, argv: &[String]) -> bool {
        let mut search: Option<Vec<PathBuf>> = None;
        argv.iter().skip(1).any(|word| {
            if word.is_empty() || word.starts_with('-') {
                return false;
            }
            if word.contains('/') {
                let path = Path::new(word);
                let path = if path.is_absolute() {
                    path.to_path_buf()
                } else {
                    PathBuf::from(format!("/proc/{pid}/cwd")).join(path)
                };
                return self.is_own_file(&path);
            }
            search
                .get_or_insert_with(|| search_path(pid))
                .iter()
                .any(|dir| self.is_own_file(&dir.join(word)))
        })
    }

    fn is_own_file(&self, path: &Path) -> bool {
        fs::metadata(path).is_ok_and(|m| {
            let id = (m.dev(), m.ino());
            m.is_file() && (self.files.contains(&id) || self.carries_marker(path, id))
        })
    }

    /// Does the file at `path` (identity `id`) contain the project's marker? Only regular
    /// files of a plausible size are read, each once.
    fn carries_marker(&self, path: &Path, id: (u64, u64)) -> bool {
        if let Some(&known) = self.marked.borrow().get(&id) {
            return known;
        }
        let found = fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() < MAX_EXE_BYTES)
            && fs::read(path).is_ok_and(|bytes| {
                memchr::memmem::find(&bytes, crate::cli::MARKER.as_bytes()).is_some()
            });
        self.marked.borrow_mut().insert(id, found);
        found
    }
}

/// Executables larger than this are not looked into for the marker (ours are a few MB;
/// a debug build some tens).
const MAX_EXE_BYTES: u64 = 512 * 1024 * 1024;

/// The absolute directories of `pid`'s `PATH` (a usual default when it cannot be read).
fn search_path(pid: u32) -> Vec<PathBuf> {
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let path = environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"PATH="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    path.split(':')
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .collect()
}

/// What /proc says about one process, for the fallback search.
#[derive(Clone, Debug)]
struct Proc {
    id: ProcessId,
    ppid: u32,
    names_build: bool,
    /// Its command line runs one of our binaries (only looked at for those naming the build).
    invokes_own: bool,
}

/// Fields 4 (ppid) and 6 (session) of /proc/<pid>/stat.
fn stat_ids(pid: u32) -> Option<(u32, i32)> {
    stat_fields(pid).map(|(ppid, _, sid)| (ppid, sid))
}

/// Fields 4 (ppid), 5 (process group) and 6 (session) of /proc/<pid>/stat.
fn stat_fields(pid: u32) -> Option<(u32, i32, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((
        fields.get(1)?.parse().ok()?,
        fields.get(2)?.parse().ok()?,
        fields.get(3)?.parse().ok()?,
    ))
}

/// The session a process belongs to.
pub fn session(pid: u32) -> Option<i32> {
    stat_ids(pid).map(|(_, sid)| sid)
}

/// The pipe a process writes its standard output into, if it does (`runner | tee B.log`):
/// the inode of `pipe:[N]` behind `/proc/<pid>/fd/1`.
pub fn stdout_pipe(pid: u32) -> Option<u64> {
    pipe_of(pid, 1)
}

fn pipe_of(pid: u32, fd: u32) -> Option<u64> {
    let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let text = target.to_str()?;
    text.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

/// Does a process reading the pipe `pipe` (the `| tee` or `| sed` after a hand-started
/// runner) hold the file `(dev, ino)` open for writing: is the runner's output still being
/// drained into its log?
pub fn pipe_drains_into(pipe: u64, dev: u64, ino: u64) -> bool {
    pids()
        .into_iter()
        .filter(|&p| pipe_of(p, 0) == Some(pipe))
        .any(|p| !write_flags(p, dev, ino).is_empty())
}

/// Is `pid` a descendant of `ancestor` (through any number of parents)? A process the
/// runner started is part of its run, however it names the build.
pub fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    // A parent chain is short; the bound only guards against a loop read mid-change.
    for _ in 0..512 {
        match stat_ids(current) {
            Some((ppid, _)) if ppid == ancestor => return true,
            Some((ppid, _)) if ppid > 1 => current = ppid,
            _ => return false,
        }
    }
    false
}

/// The processes holding a `flock` on the file with inode `ino` (from /proc/locks, where a
/// line reads `1: FLOCK  ADVISORY  WRITE 5392 00:27:11 0 EOF`).
pub fn flock_holders(ino: u64) -> Vec<u32> {
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    locks
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (kind, pid, file) = (fields.get(1)?, fields.get(4)?, fields.get(5)?);
            let inode: u64 = file.rsplit(':').next()?.parse().ok()?;
            (*kind == "FLOCK" && inode == ino).then(|| pid.parse().ok())?
        })
        .collect()
}

/// Real and effective uid of a process (`Uid:` in /proc/<pid>/status).
pub fn uids(pid: u32) -> Option<(u32, u32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|v| v.parse::<u32>().ok());
    Some((ids.next()??, ids.next()??))
}

fn pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn argv(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .split('\0')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// The runner of a run not started through start-atvm-runner (docs/watcher-service.md):
/// a live process whose command line names `build`, that belongs to `uid` (no other user's
/// process is ever adopted), is not one of our binaries, does not run one of them (a `sudo`,
/// `timeout`, shell or loop wrapping ours), and — what ties it to this run — holds the run
/// log `log` open for writing, itself or through a process of its session. Of several, the
/// newest that is not the child of another candidate: a runner left over from an earlier
/// run of the build name is older. The watcher asks again at every poll, so a newer run
/// that appears after a leftover was adopted takes its place. Processes of `earlier` runs
/// of the build name (and their descendants) are never candidates.
pub fn find_fallback(
    build: &str,
    uid: u32,
    own: &OwnBinaries,
    log: (u64, u64),
    earlier: &[ProcessId],
) -> Option<ProcessId> {
    let me = std::process::id();
    let procs: Vec<Proc> = pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let (ppid, _) = stat_ids(pid)?;
            let start_ticks = start_ticks(pid)?;
            let argv = argv(pid).unwrap_or_default();
            let words: Vec<&str> = argv.iter().map(String::as_str).collect();
            let names_build = argv_names_build(&words, build);
            Some(Proc {
                id: ProcessId { pid, start_ticks },
                ppid,
                names_build,
                invokes_own: names_build && own.invoked_by(pid, &argv),
            })
        })
        .collect();
    // An earlier run's process, or one it started: never this run's, nor does its writing
    // of the log make another process of its session look like the runner.
    let of_earlier = |pid: u32, start_ticks: Option<u64>| {
        earlier.iter().any(|e| {
            (e.pid == pid && start_ticks.is_none_or(|t| t == e.start_ticks))
                || (is_alive(*e) && descends_from(pid, e.pid))
        })
    };
    let candidates: Vec<&Proc> = procs
        .iter()
        .filter(|p| p.names_build)
        .filter(|p| uids(p.id.pid).is_some_and(|(real, eff)| real == uid && eff == uid))
        .filter(|p| !own.runs_in(p.id.pid) && !p.invokes_own && !wraps_own(p.id.pid, &procs, own))
        .filter(|p| !of_earlier(p.id.pid, Some(p.id.start_ticks)))
        .collect();
    let mut roots: Vec<ProcessId> = candidates
        .iter()
        .filter(|p| !candidates.iter().any(|q| q.id.pid == p.ppid))
        .map(|p| p.id)
        .collect();
    // Newest first (a pid breaks a tie within one clock tick): a leftover writing the log
    // itself must not win over a newer run that writes it through `| tee log`.
    roots.sort_by_key(|id| std::cmp::Reverse((id.start_ticks, id.pid)));
    roots.into_iter().find(|id| {
        session_writers_where(id.pid, log.0, log.1, |p| !of_earlier(p, start_ticks(p)))
            .next()
            .is_some()
    })
}

/// Does a descendant of `pid` run one of our binaries?
fn wraps_own(pid: u32, procs: &[Proc], own: &OwnBinaries) -> bool {
    let edges: Vec<(u32, u32)> = procs.iter().map(|p| (p.id.pid, p.ppid)).collect();
    family(pid, &edges)
        .into_iter()
        .skip(1)
        .any(|p| own.runs_in(p))
}

/// `root` and its descendants, from `(pid, ppid)` pairs (at most 10,000: a bound against
/// a table read while it changes).
fn family(root: u32, edges: &[(u32, u32)]) -> Vec<u32> {
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() && tree.len() < 10_000 {
        let parent = tree[i];
        tree.extend(
            edges
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// Does `pid` write `(dev, ino)` apart from `other`: itself or through a descendant, or —
/// only when its process group is not `other`'s — through a process of its group (`… | tee
/// B.log` beside it)? What makes a newer process a new run that takes over from `other`, an
/// adopted leftover: a process that merely shares the adopted runner's session (an
/// operator's status loop, a shell started from the same terminal) and writes nothing is
/// not one.
pub fn writes_apart_from(pid: u32, other: u32, dev: u64, ino: u64) -> bool {
    let all: Vec<(u32, u32, i32)> = pids()
        .into_iter()
        .filter_map(|p| stat_fields(p).map(|(ppid, pgrp, _)| (p, ppid, pgrp)))
        .collect();
    let edges: Vec<(u32, u32)> = all.iter().map(|(p, ppid, _)| (*p, *ppid)).collect();
    if family(pid, &edges)
        .into_iter()
        .any(|p| !write_flags(p, dev, ino).is_empty())
    {
        return true;
    }
    let group = |p: u32| all.iter().find(|(q, ..)| *q == p).map(|(.., g)| *g);
    match (group(pid), group(other)) {
        (Some(mine), theirs) if Some(mine) != theirs => all
            .iter()
            .filter(|(.., g)| *g == mine)
            .any(|(p, ..)| !write_flags(*p, dev, ino).is_empty()),
        _ => false,
    }
}

/// Is the file `(dev, ino)` open for writing by `pid` or by any process of `pid`'s session
/// (`… > /tmp/B.log` holds it in the runner itself, `… | tee /tmp/B.log` in its sibling)?
pub fn held_for_writing(pid: u32, dev: u64, ino: u64) -> bool {
    session_writers(pid, dev, ino).next().is_some()
}

/// Is the file `(dev, ino)` written in append mode by `pid` or its session (`>> B.log`,
/// `tee -a B.log`)? Such a log keeps an earlier run's lines before this run's.
pub fn appended_by(pid: u32, dev: u64, ino: u64) -> bool {
    session_writers(pid, dev, ino).any(|flags| flags & O_APPEND != 0)
}

/// `O_APPEND` in the octal `flags:` of /proc/<pid>/fdinfo/<fd>.
const O_APPEND: u32 = 0o2000;

/// The open flags of every descriptor of `pid`'s session that writes `(dev, ino)`.
fn session_writers(pid: u32, dev: u64, ino: u64) -> impl Iterator<Item = u32> {
    session_writers_where(pid, dev, ino, |_| true)
}

/// [`session_writers`], counting only the processes `counts` admits.
fn session_writers_where(
    pid: u32,
    dev: u64,
    ino: u64,
    counts: impl Fn(u32) -> bool,
) -> impl Iterator<Item = u32> {
    let sid = session(pid);
    pids()
        .into_iter()
        .filter(move |&p| sid.is_some() && (p == pid || session(p) == sid))
        .filter(move |&p| counts(p))
        .flat_map(move |p| write_flags(p, dev, ino))
}

/// The open flags of each of `pid`'s descriptors that has `(dev, ino)` open for writing.
fn write_flags(pid: u32, dev: u64, ino: u64) -> Vec<u32> {
    descriptors_of(pid, dev, ino)
        .filter_map(|fd| open_flags(pid, &fd.file_name().to_string_lossy()))
        // The low two bits are the access mode: 0 is read-only.
        .filter(|flags| flags & 0o3 != 0)
        .collect()
}

/// The entries of `/proc/<pid>/fd` that lead to the file `(dev, ino)`.
fn descriptors_of(pid: u32, dev: u64, ino: u64) -> impl Iterator<Item = fs::DirEntry> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(move |fd| fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino))
}

/// Open for reading the file `(dev, ino)` that process `id` holds open, through its
/// descriptor under /proc — the way to a file whose path was removed or now leads to
/// another file. Checked again after the open: the pid must still be that process, and
/// the file the expected one.
pub fn open_held(id: ProcessId, dev: u64, ino: u64) -> Option<fs::File> {
    let file = descriptors_of(id.pid, dev, ino).find_map(|fd| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(fd.path())
            .ok()
    })?;
    let meta = file.metadata().ok()?;
    (meta.is_file() && meta.dev() == dev && meta.ino() == ino && is_alive(id)).then_some(file)
}

/// The mount point of the file system that holds `path` (the longest mount point in
/// /proc/self/mountinfo that is a prefix of it): how an error names a full file system.
pub fn mount_point(path: &Path) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        // Field 5 is the mount point, with spaces and the like octal-escaped.
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
}

/// `flags:` in /proc/<pid>/fdinfo/<fd>, which is octal.
fn open_flags(pid: u32, fd: &str) -> Option<u32> {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_start_time_is_on_the_wall_clock() {
        let me = self_id().expect("own stat");
        let started = started_at(me).expect("start time");
        let age = std::time::SystemTime::now()
            .duration_since(started)
            .expect("started in the past");
        // btime has a one-second resolution; the test process started minutes ago at most.
        assert!(age < std::time::Duration::from_secs(3600), "{age:?}");
    }

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
    fn recognises_both_flag_spellings() {
        assert!(argv_names_build(
            &["node", "run.js", "--build_name", "b1"],
            "b1"
        ));
        assert!(argv_names_build(&["x", "--build-name=b1"], "b1"));
        assert!(!argv_names_build(&["x", "--build-name", "b10"], "b1"));
        assert!(!argv_names_build(&["sh", "-c", "x --build-name b1"], "b1"));
    }

    #[test]
    fn a_flock_we_hold_is_listed_with_our_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = fs::File::create(dir.path().join("l")).expect("create");
        let ino = f.metadata().expect("meta").ino();
        assert!(flock_holders(ino).is_empty());
        f.lock().expect("lock");
        assert_eq!(flock_holders(ino), vec![std::process::id()]);
    }

    #[test]
    fn a_grandchild_descends_from_us_and_we_do_not_descend_from_it() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .expect("spawn");
        let me = std::process::id();
        let mut grandchild = None;
        for _ in 0..200 {
            grandchild = pids()
                .into_iter()
                .find(|&p| stat_ids(p).is_some_and(|(ppid, _)| ppid == child.id()));
            if grandchild.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let grandchild = grandchild.expect("sleep started");
        let found = (
            descends_from(grandchild, me),
            descends_from(grandchild, child.id()),
            descends_from(me, grandchild),
        );
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, (true, true, false));
    }

    #[test]
    fn we_are_our_own_binary_and_uids_and_sessions_read() {
        let own = OwnBinaries::new(Path::new("/nonexistent"));
        assert!(own.runs_in(std::process::id()), "/proc/self/exe is ours");
        assert!(!own.runs_in(1) || std::process::id() == 1);
        let euid = crate::fsutil::effective_uid();
        assert_eq!(uids(std::process::id()).map(|(_, e)| e), Some(euid));
        assert!(session(std::process::id()).is_some());
    }

    #[test]
    fn a_log_held_open_for_writing_is_found_and_a_read_only_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("b.log");
        let f = fs::File::create(&log).expect("create");
        let meta = f.metadata().expect("meta");
        let me = std::process::id();
        assert!(held_for_writing(me, meta.dev(), meta.ino()));
        assert!(
            !appended_by(me, meta.dev(), meta.ino()),
            "truncated, not appended"
        );
        drop(f);
        let reader = fs::File::open(&log).expect("open");
        assert!(!held_for_writing(me, meta.dev(), meta.ino()));
        drop(reader);
        let _appender = fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("append");
        assert!(held_for_writing(me, meta.dev(), meta.ino()));
        assert!(appended_by(me, meta.dev(), meta.ino()), "`>> log` is seen");
    }

    #[test]
    fn a_process_whose_command_line_runs_one_of_ours_is_not_the_runner() {
        // `timeout 60 /opt/…/start-atvm-runner.sh --build-name B > B.log`, and `watch
        // atvm-run-status --build-name B` found through PATH, between two runs of ours; each
        // writes the log, so only the wrapper rule keeps it out.
        let me = fs::read_link("/proc/self/exe").expect("exe");
        let dir = me.parent().expect("dir").to_string_lossy().into_owned();
        let name = me.file_name().expect("name").to_string_lossy().into_owned();
        let own = OwnBinaries::new(Path::new("/nonexistent"));
        let uid = crate::fsutil::effective_uid();
        let logs = tempfile::tempdir().expect("tempdir");
        for (build, word, path) in [
            (
                "procfs-test-by-path",
                me.to_string_lossy().into_owned(),
                "/bin",
            ),
            ("procfs-test-by-name", name, dir.as_str()),
        ] {
            let log = fs::File::create(logs.path().join(build)).expect("log");
            let meta = log.metadata().expect("meta");
            let mut child = std::process::Command::new("/bin/sh")
                .args(["-c", "/bin/sleep 30; :", "sh", &word, "--build_name", build])
                .env("PATH", path)
                .stdout(log)
                .spawn()
                .expect("spawn");
            let named = |pid| argv(pid).is_some_and(|a| a.iter().any(|w| w == build));
            for _ in 0..200 {
                if named(child.id()) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let seen =
                named(child.id()) && !write_flags(child.id(), meta.dev(), meta.ino()).is_empty();
            let found = find_fallback(build, uid, &own, (meta.dev(), meta.ino()), &[]);
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                seen,
                "{build}: the shell never showed its command line and log"
            );
            assert_eq!(found, None, "{build}: a wrapper of ours was adopted");
        }
    }

    #[test]
    fn finds_the_process_that_names_the_build_and_writes_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("b.log");
        let out = fs::File::create(&log).expect("log");
        let meta = out.metadata().expect("meta");
        let id = (meta.dev(), meta.ino());
        let spawn = |stdout: std::process::Stdio| {
            std::process::Command::new("sh")
                .args([
                    "-c",
                    "sleep 30; :",
                    "sh",
                    "--build_name",
                    "procfs-test-build",
                ])
                .stdout(stdout)
                .spawn()
                .expect("spawn")
        };
        // One that names the build but writes no log, then the real one, writing it.
        let mut idle = spawn(std::process::Stdio::null());
        let mut runner = spawn(out.try_clone().expect("clone").into());
        drop(out);
        let own = OwnBinaries::new(Path::new("/nonexistent"));
        let uid = crate::fsutil::effective_uid();
        // Until the children have exec'ed, their command lines are still ours.
        let mut found = None;
        for _ in 0..200 {
            found = find_fallback("procfs-test-build", uid, &own, id, &[]);
            if found.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let other_user = find_fallback("procfs-test-build", uid.wrapping_add(1), &own, id, &[]);
        let earlier: Vec<ProcessId> = found.into_iter().collect();
        let again = find_fallback("procfs-test-build", uid, &own, id, &earlier);
        for child in [&mut idle, &mut runner] {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(found.map(|f| f.pid), Some(runner.id()));
        assert_eq!(other_user, None, "another user's process is never adopted");
        assert_eq!(again, None, "an earlier run's process is never adopted");
    }
}
