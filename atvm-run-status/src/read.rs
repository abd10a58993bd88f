//! Reading the state root without getting in anyone's way. No lock is taken: the writers
//! replace every file atomically, so a plain read sees a whole old or a whole new file, and
//! a watcher or start helper never waits on us. Files are opened without following symbolic
//! links (docs/watcher-service.md) and without blocking on a FIFO, and a file that cannot be read becomes an
//! error in its run's record instead of ending the listing.

use crate::view::{
    Detail, FileError, Groups, MarkerView, PostView, RunView, RunnerView, SubRunView,
};
use atvm_common::error::{Error, Result};
use atvm_common::state::{self, Marker, PostStatus, Request, RunnerStatus, State};
use atvm_common::time::Moment;
use atvm_common::{BuildName, Paths, StateDir, Timestamp, fsutil, logging};
use serde::de::DeserializeOwned;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where one run's files are: a build's current directory or one of its archives.
#[derive(Debug)]
pub struct Source {
    pub build: BuildName,
    /// The archive's directory name; `None` for the current run.
    pub archive: Option<String>,
    pub dir: StateDir,
}

/// Every current run (and with `all` every archived one) under the state root.
pub fn all_runs(paths: &Paths, all: bool) -> Result<Vec<Source>> {
    let root = &paths.state_root;
    check_root(root)?;
    let mut sources = Vec::new();
    for (name, path) in subdirs(root).map_err(|e| Error::io("cannot list state root", root, e))? {
        match BuildName::parse(&name) {
            Ok(build) => sources.push(Source {
                dir: paths.state_dir(&build),
                build,
                archive: None,
            }),
            Err(e) => logging::warn(format!(
                "ignoring a directory that is not a build: {e} ({})",
                path.display()
            )),
        }
    }
    if all {
        let archive_root = paths.archive_root();
        for (name, _) in subdirs(&archive_root).or_else(absent_is_empty(&archive_root))? {
            if let Ok(build) = BuildName::parse(&name) {
                sources.extend(archives(paths, &build)?);
            }
        }
    }
    Ok(sources)
}

/// One build's current run (and with `all` its archives); an unknown build is an error.
pub fn build_runs(paths: &Paths, build: &BuildName, all: bool) -> Result<Vec<Source>> {
    check_root(&paths.state_root)?;
    let dir = paths.state_dir(build);
    let mut sources = Vec::new();
    if fs::symlink_metadata(dir.path()).is_ok() {
        sources.push(Source {
            build: build.clone(),
            archive: None,
            dir,
        });
    }
    if all {
        sources.extend(archives(paths, build)?);
    }
    if sources.is_empty() && !all && !archives(paths, build)?.is_empty() {
        return Err(Error::file(
            format!("no current run of {build}, only archived ones: add --all to see them"),
            paths.state_dir(build).path(),
        ));
    }
    if sources.is_empty() {
        return Err(atvm_common::builds::unknown(paths, build));
    }
    Ok(sources)
}

/// `<state-root>/.archive/<build>/<NNNNNN>-<stamp>/`: each is a whole state directory moved
/// aside (`.summaries/`, what pruning keeps of older runs, is not one).
fn archives(paths: &Paths, build: &BuildName) -> Result<Vec<Source>> {
    let base = paths.archive_root().join(build.as_str());
    let mut out = Vec::new();
    // A link or a directory others can write is not read (not followed into /etc, say).
    if fs::symlink_metadata(&base).is_ok()
        && let Err(e) = fsutil::check_private_dir(&base)
    {
        logging::warn(e);
        return Ok(out);
    }
    for (stamp, path) in subdirs(&base).or_else(absent_is_empty(&base))? {
        // Archive names (`000007-20261124T193530Z`; before sequences, `20261124T193530Z`,
        // `…-001`) pass the build name rule; that lets StateDir name the files inside as
        // it does for a current run.
        match BuildName::parse(&stamp) {
            Ok(name) => out.push(Source {
                build: build.clone(),
                dir: StateDir::new(&base, &name),
                archive: Some(stamp),
            }),
            Err(_) => logging::warn(format!(
                "ignoring an archive with an unexpected name ({})",
                path.display()
            )),
        }
    }
    Ok(out)
}

fn absent_is_empty(path: &Path) -> impl FnOnce(io::Error) -> Result<Vec<(String, PathBuf)>> {
    move |e| match e.kind() {
        io::ErrorKind::NotFound => Ok(Vec::new()),
        _ => Err(Error::io("cannot list archive", path, e)),
    }
}

/// Directories (and symbolic links, so they are reported rather than hidden) in `dir`,
/// without dot entries (`.archive`, temp files) or plain files (locks).
fn subdirs(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type()?;
        if !name.starts_with('.') && (kind.is_dir() || kind.is_symlink()) {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

/// The state root must be a directory owned by us and writable by no one else (docs/watcher-service.md):
/// otherwise what it says cannot be trusted, and we refuse (exit 1) naming it.
fn check_root(root: &Path) -> Result<()> {
    fs::symlink_metadata(root).map_err(|e| Error::io("cannot read state root", root, e))?;
    fsutil::check_private_dir(root)
}

/// Collects the errors of one run's files while the rest is still read.
struct Reader {
    errors: Vec<FileError>,
    /// A file or directory of the run was missing where the listing found it: it is being
    /// moved or pruned.
    vanished: bool,
}

impl Reader {
    fn json<T: DeserializeOwned>(&mut self, path: &Path) -> Option<T> {
        self.keep(path, fsutil::read_json(path))
    }

    fn marker(&mut self, path: &Path) -> Option<MarkerView> {
        let (bytes, _) = self.keep(path, fsutil::read_file(path))?;
        let m = Marker::parse(&String::from_utf8_lossy(&bytes));
        Some(MarkerView {
            at: m.at,
            run_id: m.run_id,
        })
    }

    fn keep<T>(&mut self, path: &Path, result: Result<Option<T>>) -> Option<T> {
        result.unwrap_or_else(|e| {
            self.push(path, e);
            None
        })
    }

    fn push(&mut self, path: &Path, e: Error) {
        if let Error::Io { source, .. } = &e {
            self.vanished |= source.kind() == io::ErrorKind::NotFound;
        }
        self.errors.push(FileError {
            path: path.to_path_buf(),
            error: e.to_string(),
        });
    }
}

/// Read one run: its summary, and with `detail` everything else. Units are left `None`;
/// the caller asks systemctl for all of them at once.
pub fn run(src: &Source, paths: &Paths, detail: bool, now: &Moment) -> RunView {
    let mut r = Reader {
        errors: Vec::new(),
        vanished: false,
    };
    let dir = src.dir.path();
    let (readable, mtime) = match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            r.push(dir, Error::file("refusing to follow a symbolic link", dir));
            (false, None)
        }
        Ok(m) => {
            let readable = fsutil::check_private_dir(dir)
                .map_err(|e| r.push(dir, e))
                .is_ok();
            (readable, m.modified().ok().map(Timestamp::from_system))
        }
        // Moved by a start or a prune between the listing and now: read again, once.
        Err(e) => {
            r.push(dir, Error::io("cannot read", dir, e));
            (false, None)
        }
    };
    let (request, state) = if readable {
        (
            r.json::<Request>(&src.dir.request()),
            r.json::<State>(&src.dir.state()),
        )
    } else {
        (None, None)
    };
    let updated_at = state.as_ref().map(|s| s.updated_at);
    let requested_at = request.as_ref().map(|q| q.requested_at);
    let since = updated_at.or(requested_at);
    let categorized = request.as_ref().is_some_and(|q| q.categorize)
        || state.as_ref().is_some_and(|s| s.subruns.is_some());
    let groups = categorized.then(|| {
        let subruns = state
            .as_ref()
            .and_then(|s| s.subruns.as_deref())
            .unwrap_or_default();
        // A long list is cut to the latest sub-runs in state.json; those left out ended.
        let total = state
            .as_ref()
            .and_then(|s| s.subruns_total)
            .unwrap_or(subruns.len())
            .max(subruns.len());
        let posts = |status: PostStatus| subruns.iter().filter(|s| s.post.status == status).count();
        Groups {
            done: subruns.iter().filter(|s| s.state.is_terminal()).count() + total - subruns.len(),
            total,
            posted: posts(PostStatus::Posted),
            post_failed: posts(PostStatus::Failed),
        }
    });
    // The runner's record of this run, for the duration (its errors are the detail's).
    let status: Option<RunnerStatus> = match (readable, detail) {
        (false, _) => None,
        (true, true) => r.json(&src.dir.runner_status()),
        (true, false) => fsutil::read_json(&src.dir.runner_status()).ok().flatten(),
    };
    let exited = status
        .as_ref()
        .filter(|s| request.as_ref().is_some_and(|q| q.run_id == s.run_id))
        .and_then(RunnerStatus::exited);
    // The end: the runner's recorded exit (both clocks), else the final state's time.
    let end = state
        .as_ref()
        .filter(|s| s.is_final)
        .map(|s| exited.unwrap_or_else(|| Moment::wall(s.updated_at)));
    let ended_at = end.as_ref().map(|e| e.wall);
    let start = request.as_ref().map(Request::requested);
    // On the boot clock when both ends are of one boot: a clock step changes nothing.
    let duration_seconds = start
        .as_ref()
        .map(|a| a.until(end.as_ref().unwrap_or(now)).as_secs());
    // A run whose directory cannot be read still gets every detail key (null), as documented.
    let detail = detail.then(|| {
        read_detail(
            &mut r,
            src,
            paths,
            readable,
            request.clone(),
            status.as_ref(),
            state.as_ref(),
        )
    });
    RunView {
        build_name: src.build.to_string(),
        archive: src.archive.clone(),
        dir: dir.to_path_buf(),
        run_id: state
            .as_ref()
            .map(|s| s.run_id.clone())
            .or_else(|| request.as_ref().map(|q| q.run_id.clone())),
        state: state.as_ref().map(|s| s.state),
        is_final: state.as_ref().map(|s| s.is_final),
        reason: state.as_ref().map(|s| s.reason.clone()),
        requested_at,
        updated_at,
        age_seconds: since.map(|t| t.until(now.wall).as_secs()),
        ended_at,
        duration_seconds,
        counts: state.as_ref().and_then(|s| s.counts),
        flaky: state.as_ref().and_then(flaky),
        post: state.as_ref().map(|s| PostView::from(&s.post)),
        groups,
        watcher_unit: None,
        runner_unit: None,
        errors: r.errors,
        detail,
        start,
        sort_time: requested_at.or(mtime).unwrap_or_default(),
        vanished: r.vanished,
    }
}

/// The flaky tests the watcher recorded: `details.flaky`, a count or a list of them.
fn flaky(state: &State) -> Option<u64> {
    match state.details.get("flaky")? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::Array(list) => Some(list.len() as u64),
        _ => None,
    }
}

/// Read one run as [`run`] does; a run whose directory vanished meanwhile (a start swapping
/// in a new directory, a prune removing an old archive) is read once more, and an archive
/// that is gone then was pruned: it is left out, not reported as unreadable.
pub fn settled(src: &Source, paths: &Paths, detail: bool, now: &Moment) -> Option<RunView> {
    let first = run(src, paths, detail, now);
    if !first.vanished {
        return Some(first);
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = run(src, paths, detail, now);
    match (again.vanished, &src.archive) {
        (true, Some(_)) => None,
        _ => Some(again),
    }
}

fn read_detail(
    r: &mut Reader,
    src: &Source,
    paths: &Paths,
    readable: bool,
    request: Option<Request>,
    status: Option<&RunnerStatus>,
    state: Option<&State>,
) -> Detail {
    let sd = &src.dir;
    let details = state.map(|s| &s.details);
    let text = |key: &str| {
        details
            .and_then(|d| d.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let run_log = status
        .map(|s| s.log_path.clone())
        .or_else(|| text("log").map(PathBuf::from))
        .unwrap_or_else(|| paths.run_log(&src.build));
    let subruns = state.and_then(|s| s.subruns.as_ref()).map(|list| {
        list.iter()
            .map(|sum| {
                // The key names a directory: read it only if it cannot leave `subruns/`
                // (the watcher's own rule: `01-smoke.launch` is a key like any other).
                let own: Option<State> = match state::is_subrun_key(&sum.key) {
                    true => r.json(&sd.subrun_dir(&sum.key).join("state.json")),
                    false => {
                        let e = Error::file(
                            format!("sub-run key {:?} is not a plain file name", sum.key),
                            sd.state(),
                        );
                        r.push(&sd.state(), e);
                        None
                    }
                };
                SubRunView {
                    key: sum.key.clone(),
                    group: sum.group.clone(),
                    state: sum.state,
                    is_final: own.as_ref().map(|s| s.is_final),
                    reason: own.as_ref().map(|s| s.reason.clone()),
                    updated_at: own.as_ref().map(|s| s.updated_at),
                    counts: sum.counts,
                    flaky: own.as_ref().and_then(flaky),
                    post: PostView::from(&sum.post),
                }
            })
            .collect()
    });
    Detail {
        request,
        runner: status.map(RunnerView::from),
        run_log,
        launch_log: paths.launch_log(&src.build),
        progress: text("progress"),
        run_url: text("run_url"),
        last_activity: text("last_activity").and_then(|t| Timestamp::parse(&t)),
        cancelled: readable.then(|| r.marker(&sd.cancelled_marker())).flatten(),
        posted: readable.then(|| r.marker(&sd.posted_marker())).flatten(),
        last_error: state.and_then(|s| s.post.last_error.clone()),
        watcher_error: text("watcher_error"),
        subruns,
        history: src
            .archive
            .is_none()
            .then(|| crate::history::rows(paths, &src.build)),
    }
}
