//! RFC 3339 UTC timestamps without a date-time crate: millisecond precision, always `Z`.
//! Parsing accepts what we write plus numeric offsets, which mochawesome's `stats.start` uses.
//!
//! Waiting windows (poll, grace, hang, start timeout, retry window) are not measured on the
//! wall clock, which an NTP step can move by hours: a [`Moment`] carries the boot's
//! CLOCK_BOOTTIME reading with the boot id, and [`Moment::until`] uses it whenever both
//! moments are of the same boot. Across a reboot only the wall clock is comparable.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, serialised as RFC 3339 UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_millis() as i64),
            Err(e) => Timestamp(-(e.duration().as_millis() as i64)),
        }
    }

    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn to_system(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        }
    }

    /// Time elapsed from `self` to `later` (zero if `later` is earlier).
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0).max(0) as u64)
    }

    /// Compact form for directory names: `20261124T193530Z`.
    pub fn compact(self) -> String {
        let (y, mo, d, h, mi, s, _) = civil(self.0);
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
    }

    pub fn parse(text: &str) -> Option<Timestamp> {
        parse_rfc3339(text.trim()).map(Timestamp)
    }

    /// `2026-11-24 18:30` in the machine's time zone (`TZ`, else `/etc/localtime`): for
    /// people at the controller. UTC, marked `Z`, when the zone cannot be applied.
    pub fn local_minutes(self) -> String {
        let secs = self.0.div_euclid(1000) as libc::time_t;
        // SAFETY: an all-zero `tm` is valid (integers and a null zone pointer).
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: localtime_r reads `secs` and writes only into `tm`, which we own; it is
        // the reentrant form, safe beside other threads.
        let converted = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
        if !converted {
            let (y, mo, d, h, mi, _, _) = civil(self.0);
            return format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}Z");
        }
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            i64::from(tm.tm_year) + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d, h, mi, s, ms) = civil(self.0);
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 timestamp: {text:?}")))
    }
}

/// A reading of CLOCK_BOOTTIME (nanoseconds since boot, suspend included, never stepped)
/// and the boot it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootInstant {
    /// `/proc/sys/kernel/random/boot_id` without dashes (systemd's `%b`).
    pub boot_id: String,
    pub ns: u64,
}

impl BootInstant {
    /// Now, if the boot id can be read.
    pub fn now() -> Option<BootInstant> {
        Some(BootInstant {
            boot_id: boot_id()?,
            ns: boottime_ns()?,
        })
    }
}

/// A point in time as the tools record it: the wall clock for people, the boot clock for
/// measuring how long ago it was. Reads a plain timestamp too (what checkpoints written
/// before moments existed hold).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Moment {
    pub wall: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootInstant>,
}

impl Moment {
    pub fn now() -> Moment {
        Moment {
            wall: Timestamp::now(),
            boot: BootInstant::now(),
        }
    }

    /// A moment known only by its wall time (written by an older version, or by hand).
    pub fn wall(wall: Timestamp) -> Moment {
        Moment { wall, boot: None }
    }

    /// Time from `self` to `later` (zero if `later` is earlier): on the boot clock when both
    /// are of the same boot, so a wall-clock step changes nothing; else on the wall clock.
    pub fn until(&self, later: &Moment) -> Duration {
        match (&self.boot, &later.boot) {
            (Some(a), Some(b)) if a.boot_id == b.boot_id => {
                Duration::from_nanos(b.ns.saturating_sub(a.ns))
            }
            _ => self.wall.until(later.wall),
        }
    }

    /// Is `self` later than `other` (by the same rule as [`Moment::until`])?
    pub fn is_after(&self, other: &Moment) -> bool {
        match (&self.boot, &other.boot) {
            (Some(a), Some(b)) if a.boot_id == b.boot_id => a.ns > b.ns,
            _ => self.wall > other.wall,
        }
    }
}

impl<'de> Deserialize<'de> for Moment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Wall(Timestamp),
            Full {
                wall: Timestamp,
                #[serde(default)]
                boot: Option<BootInstant>,
            },
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Wall(wall) => Moment::wall(wall),
            Repr::Full { wall, boot } => Moment { wall, boot },
        })
    }
}

impl fmt::Display for Moment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.wall.fmt(f)
    }
}

/// The current boot's id: `ATVM_BOOT_ID` (the units set it from systemd's `%b`, because
/// the hardened watcher unit cannot see /proc/sys), else the kernel's boot_id. Dashes are
/// dropped and letters lower-cased so both sources compare equal.
pub fn boot_id() -> Option<String> {
    // Read once per process: it does not change while the process lives, and a watcher
    // asks at every look.
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID.get_or_init(read_boot_id).clone()
}

fn read_boot_id() -> Option<String> {
    let raw = std::env::var("ATVM_BOOT_ID")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok())?;
    let id: String = raw
        .trim()
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
}

/// CLOCK_BOOTTIME in nanoseconds.
pub fn boottime_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Human duration for messages: `1h 02m`, `12m 30s`, `45s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

// Howard Hinnant's days-from-civil / civil-from-days algorithms.
fn civil(ms: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, sod / 3600, (sod / 60) % 60, sod % 60, milli)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        let padded: String = frac.chars().chain("000".chars()).take(3).collect();
        millis = padded.parse().ok()?;
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let v = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'-' { -v } else { v }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let t = Timestamp::from_millis(1_795_549_530_123);
        let text = t.to_string();
        assert_eq!(text, "2026-11-24T19:45:30.123Z");
        assert_eq!(Timestamp::parse(&text), Some(t));
        assert_eq!(t.compact(), "20261124T194530Z");
    }

    #[test]
    fn parses_offsets_and_plain_seconds() {
        let a = Timestamp::parse("2026-11-24T20:45:30+01:00").map(Timestamp::millis);
        let b = Timestamp::parse("2026-11-24T19:45:30Z").map(Timestamp::millis);
        assert_eq!(a, b);
        assert_eq!(
            Timestamp::parse("1970-01-01T00:00:00.5Z"),
            Some(Timestamp(500))
        );
        assert_eq!(Timestamp::parse("2026-13-01T00:00:00Z"), None);
        assert_eq!(Timestamp::parse("yesterday"), None);
    }

    #[test]
    fn leap_days_and_pre_epoch() {
        let t = Timestamp::parse("2024-02-29T23:59:59.999Z").expect("valid");
        assert_eq!(t.to_string(), "2024-02-29T23:59:59.999Z");
        let old = Timestamp::parse("1969-12-31T23:59:59Z").expect("valid");
        assert_eq!(old.millis(), -1000);
        assert_eq!(old.to_string(), "1969-12-31T23:59:59.000Z");
    }

    #[test]
    fn moments_of_one_boot_ignore_wall_clock_steps() {
        let boot = |ns: u64| {
            Some(BootInstant {
                boot_id: "a".repeat(32),
                ns,
            })
        };
        let then = Moment {
            wall: Timestamp(0),
            boot: boot(1_000_000_000),
        };
        // The wall clock was stepped 90 minutes forward; 2 s really passed.
        let now = Moment {
            wall: Timestamp(90 * 60 * 1000),
            boot: boot(3_000_000_000),
        };
        assert_eq!(then.until(&now), Duration::from_secs(2));
        assert!(now.is_after(&then));
        // After a reboot only the wall clock compares.
        let rebooted = Moment {
            wall: Timestamp(5000),
            boot: Some(BootInstant {
                boot_id: "b".repeat(32),
                ns: 10,
            }),
        };
        assert_eq!(then.until(&rebooted), Duration::from_secs(5));
        assert_eq!(
            Moment::wall(Timestamp(0)).until(&now),
            Duration::from_secs(5400)
        );
    }

    #[test]
    fn moments_read_their_own_form_and_plain_timestamps() {
        let m = Moment::now();
        let json = serde_json::to_string(&m).expect("json");
        assert_eq!(serde_json::from_str::<Moment>(&json).expect("parse"), m);
        let old: Moment = serde_json::from_str("\"2026-11-24T19:45:30.123Z\"").expect("parse");
        assert_eq!(old, Moment::wall(Timestamp(1_795_549_530_123)));
    }

    #[test]
    fn this_machine_has_a_boot_clock() {
        let a = boottime_ns().expect("CLOCK_BOOTTIME");
        assert!(boottime_ns().expect("again") >= a);
        assert_eq!(boot_id().map(|id| id.len()), Some(32));
    }

    #[test]
    fn local_minutes_are_a_date_and_a_time() {
        // The process's zone is whatever the machine says: the shape is what is checked
        // here (the status tool's tests run it under TZ=UTC).
        let t = Timestamp::parse("2026-11-24T18:37:12.000Z").expect("parse");
        let local = t.local_minutes();
        assert_eq!(local.len(), 16, "{local}");
        assert!(
            local.starts_with("2026-11-2") && &local[13..14] == ":",
            "{local}"
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(750)), "12m 30s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h 02m");
    }
}
