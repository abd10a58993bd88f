//! The builds a controller knows (a state directory, or archived runs), and the one answer
//! for a name it has never seen: exit 1, "unknown build", naming the closest known names.
//! The cancel helpers and `atvm-run-status --build-name` all answer with it, so a typo in a
//! script never reads as "cancelled" or "nothing to cancel" (docs/watcher-service.md).

use crate::build_name::BuildName;
use crate::error::Error;
use crate::paths::Paths;
use std::path::Path;

/// How many near names an "unknown build" error suggests at most.
const SUGGESTIONS: usize = 3;

/// Names of every build with a state directory or an archive, sorted, without repeats.
/// What cannot be listed adds nothing: this only feeds a suggestion.
pub fn known(paths: &Paths) -> Vec<String> {
    let mut names = Vec::new();
    for dir in [paths.state_root.clone(), paths.archive_root()] {
        names.extend(subdir_names(&dir).filter(|n| BuildName::parse(n).is_ok()));
    }
    names.sort();
    names.dedup();
    names
}

fn subdir_names(dir: &Path) -> impl Iterator<Item = String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
}

/// Up to [`SUGGESTIONS`] of `known` that `name` is probably a typo of: within a few edits
/// (a quarter of its length, at least 2), or one containing the other (a name cut short),
/// nearest first. Letter case is no edit (`E2E-FIXED` is a typo of `e2e-fixed`, however
/// long), and a name that differs only in case comes first.
pub fn closest<'a>(known: &'a [String], name: &str) -> Vec<&'a str> {
    let most = (name.chars().count() / 4).max(2);
    let lower = name.to_lowercase();
    let mut near: Vec<(usize, usize, &str)> = known
        .iter()
        .filter(|k| k.as_str() != name)
        .filter_map(|k| {
            let k_lower = k.to_lowercase();
            let d = strsim::damerau_levenshtein(&k_lower, &lower);
            let cut_short = k_lower.contains(&lower) || lower.contains(&k_lower);
            let exact = strsim::damerau_levenshtein(k, name);
            (d <= most || cut_short).then_some((d, exact, k.as_str()))
        })
        .collect();
    near.sort();
    near.into_iter()
        .take(SUGGESTIONS)
        .map(|(_, _, k)| k)
        .collect()
}

/// The error for a build the controller has never seen (exit 1), naming its state
/// directory and the closest known build names.
pub fn unknown(paths: &Paths, build: &BuildName) -> Error {
    let known = known(paths);
    let hint = match closest(&known, build.as_str()).as_slice() {
        [] if known.is_empty() => "no build has run on this controller yet".to_string(),
        [] => "no known build has a similar name (atvm-run-status lists them)".to_string(),
        [one] => format!("did you mean {one}?"),
        many => format!("did you mean one of {}?", many.join(", ")),
    };
    Error::file(
        format!("unknown build {build}: this controller has no run of that name; {hint}"),
        paths.state_dir(build).path(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn typos_and_names_cut_short_find_the_name_meant() {
        let known = names(&[
            "e2e-redhat9.6-ubuntu24.04-w2k25",
            "e2e-redhat9.6-ubuntu24.04-w2k25-fc",
            "e2e-ubuntu24.04-smoke",
            "nightly",
        ]);
        assert_eq!(
            closest(&known, "e2e-redhat9.6-ubuntu24.04-w2k25-cf"),
            [
                "e2e-redhat9.6-ubuntu24.04-w2k25-fc",
                "e2e-redhat9.6-ubuntu24.04-w2k25"
            ]
        );
        assert_eq!(
            closest(&known, "e2e-ubuntu24.04-smok"),
            ["e2e-ubuntu24.04-smoke"]
        );
        assert_eq!(closest(&known, "nighty"), ["nightly"]);
        // Letter case is no edit: a long name in capitals is still the one meant.
        assert_eq!(
            closest(&known, "E2E-UBUNTU24.04-SMOKE"),
            ["e2e-ubuntu24.04-smoke"]
        );
        assert!(closest(&known, "something-else").is_empty());
    }
}
