//! The listing's order: newest start first. Within a build that is the order of starts —
//! its current run, then its archives by their start sequence — whatever their recorded
//! times say (a run started while the clock was a day ahead is still older than the run
//! after it). Across builds, where no sequence relates them, a start is placed in time by
//! the boot clock when it was recorded in this boot (a clock step since changes nothing),
//! else by the wall clock; and no run is placed after a newer start of its own build,
//! so both rules hold in one order.

use crate::view::RunView;
use atvm_common::time::{BootInstant, Moment};
use atvm_common::{Timestamp, state};
use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::Duration;

/// Sort `runs` newest first.
pub fn newest_first(runs: &mut [RunView], now: &Moment) {
    let placed: Vec<Timestamp> = runs.iter().map(|r| place(r, now)).collect();
    // Each build's runs, newest start first by sequence: clamp their times so that none
    // is newer than the start after it.
    let mut by_build: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, run) in runs.iter().enumerate() {
        by_build.entry(run.build_name.clone()).or_default().push(i);
    }
    for members in by_build.values_mut() {
        members.sort_by_key(|&i| Reverse(rank(&runs[i])));
        let mut newer: Option<Timestamp> = None;
        for &i in members.iter() {
            let at = newer.map_or(placed[i], |bound| placed[i].min(bound));
            runs[i].sort_time = at;
            newer = Some(at);
        }
    }
    // One lexicographic key: a total order that keeps each build's order of starts.
    runs.sort_by(|a, b| {
        (b.sort_time.cmp(&a.sort_time))
            .then_with(|| a.build_name.cmp(&b.build_name))
            .then_with(|| rank(b).cmp(&rank(a)))
    });
}

/// A run's place among its build's starts: the current run last started, then each
/// archive by its start sequence.
fn rank(run: &RunView) -> (u64, String) {
    match &run.archive {
        None => (u64::MAX, String::new()),
        Some(name) => state::archive_key(name).unwrap_or((0, name.clone())),
    }
}

/// When a run started, as the boot clock places it when its request was made in this
/// boot (now, less the boot-clock time since), else by its wall time; a run without a
/// request by its directory's modification time.
fn place(run: &RunView, now: &Moment) -> Timestamp {
    let Some(start) = &run.start else {
        return run.sort_time;
    };
    match (&start.boot, &now.boot) {
        (Some(BootInstant { boot_id, ns }), Some(n)) if *boot_id == n.boot_id && *ns <= n.ns => {
            let ago = Duration::from_nanos(n.ns - ns);
            Timestamp::from_millis(now.wall.millis() - ago.as_millis() as i64)
        }
        _ => start.wall,
    }
}
