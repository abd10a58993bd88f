//! `systemctl is-active` for every unit the listing shows, bounded in time. `ATVM_SYSTEMCTL`
//! may be missing or slow (a busy or wedged systemd answers after its D-Bus timeout): a
//! failure or no answer within [`DEADLINE`] shows as `?` for that unit, never as a hung or
//! failed listing. A few worker threads ask in parallel; a systemctl still running at the
//! deadline is killed (with whatever a wrapper script started), so a `watch atvm-run-status`
//! loop never piles up processes.

use crate::view::UnitView;
use atvm_common::systemctl::Systemctl;
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the whole listing waits for systemctl.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Parallel systemctl calls at most: enough for a few dozen builds, gentle on two cores.
const WORKERS: usize = 4;

/// The activity of each of `units` (names may repeat; each is asked once).
pub fn query(
    systemctl: &Systemctl,
    units: &[String],
    deadline: Duration,
) -> HashMap<String, UnitView> {
    let mut unique: Vec<String> = units.to_vec();
    unique.sort();
    unique.dedup();
    let (tx, rx) = mpsc::channel();
    let mut answers = HashMap::new();
    let end = Instant::now() + deadline;
    let mut workers = Vec::new();
    for w in 0..WORKERS.min(unique.len()) {
        let mine: Vec<String> = unique.iter().skip(w).step_by(WORKERS).cloned().collect();
        let (tx, systemctl) = (tx.clone(), systemctl.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("is-active-{w}"))
            .spawn(move || {
                for unit in mine {
                    let view = ask(&systemctl, &unit, end);
                    if tx.send(view).is_err() {
                        return; // the listing went on without us
                    }
                }
            });
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(e) => {
                for unit in unique.iter().skip(w).step_by(WORKERS) {
                    answers.insert(
                        unit.clone(),
                        failed(unit, format!("cannot ask systemctl: {e}")),
                    );
                }
            }
        }
    }
    drop(tx);
    while answers.len() < unique.len() {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(view) => {
                answers.insert(view.name.clone(), view);
            }
            Err(_) => break, // deadline, or every worker is done
        }
    }
    // Each worker kills its systemctl at the deadline and stops: wait for that, so none
    // outlives the listing.
    drop(rx);
    for handle in workers {
        let _ = handle.join();
    }
    for unit in unique {
        answers.entry(unit.clone()).or_insert_with(|| {
            let secs = deadline.as_secs_f64();
            failed(
                &unit,
                format!("systemctl is-active did not answer within {secs}s"),
            )
        });
    }
    answers
}

fn ask(systemctl: &Systemctl, unit: &str, end: Instant) -> UnitView {
    if Instant::now() >= end {
        return failed(
            unit,
            "not asked: systemctl did not answer in time".to_string(),
        );
    }
    match systemctl.is_active_until(unit, end) {
        // `is-active` answers one lowercase word (`active`, `inactive`, `failed`, …). When
        // it printed none, the wrapper's "word" is its description of the failure instead
        // (no systemd, no bus): that is an error, not a state.
        Ok(activity) if is_state_word(activity.word()) => UnitView {
            name: unit.to_string(),
            active: Some(activity.word().to_string()),
            error: None,
        },
        Ok(activity) => failed(
            unit,
            format!("systemctl is-active failed: {} ({unit})", activity.word()),
        ),
        Err(e) => failed(unit, e.to_string()),
    }
}

fn is_state_word(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '-')
}

fn failed(unit: &str, error: String) -> UnitView {
    UnitView {
        name: unit.to_string(),
        active: None,
        error: Some(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_errors_each_become_a_view() {
        let units = ["a.service".to_string(), "b.service".to_string()];
        let got = query(&Systemctl::new("echo active"), &units, DEADLINE);
        assert_eq!(got["a.service"].active.as_deref(), Some("active"));
        let missing = query(&Systemctl::new("/nonexistent/systemctl"), &units, DEADLINE);
        assert!(missing["b.service"].active.is_none());
        assert!(
            missing["b.service"]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("cannot run /nonexistent/systemctl")),
            "{:?}",
            missing["b.service"]
        );
        let none = query(&Systemctl::new("false"), &units, DEADLINE);
        assert!(
            none["a.service"].active.is_none(),
            "{:?}",
            none["a.service"]
        );
        assert!(
            none["a.service"]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("exit status 1"))
        );
        // No answer in time: tests/ checks that with a systemctl that sleeps.
    }
}
