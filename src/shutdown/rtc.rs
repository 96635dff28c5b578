//! The RTC wake alarm as root sets and clears it (`homelab-power-action`), with root's own
//! record of the alarm it set, and the alarm as anyone reads it.
//!
//! `/sys/class/rtc/rtc0/wakealarm` holds the alarm in the RTC's own count of seconds. That is
//! UTC, unless `/etc/adjtime`'s third line says `LOCAL`: then the RTC keeps the zone's wall
//! clock, and, as util-linux `rtcwake` does (it hands the RTC `localtime()` of the wake time),
//! the value written is the wake time shifted by the zone's UTC offset at that time, and a value
//! read back is shifted the other way.
//!
//! Root clears only an alarm that is in its record (kept in its own state folder, which only
//! root writes) and that the RTC still holds: anyone can read the world-readable `wakealarm` and
//! ask for `clear-wake-<that value>`, and that must not clear an alarm root did not set.

use crate::statefile;
use anyhow::Context;
use chrono::{DateTime, Local, TimeZone};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The RTC alarm: the RTC's seconds since the epoch when armed, empty (or 0) when not.
pub const WAKEALARM: &str = "/sys/class/rtc/rtc0/wakealarm";
/// hwclock's file; its third line says whether the RTC keeps UTC or local time.
pub const ADJTIME: &str = "/etc/adjtime";
/// Root's state folder (`StateDirectory=homelab-power` of `homelab-power-action@.service`).
pub const STATE_DIR: &str = "/var/lib/homelab-power";
/// Root's record of the alarm it set, in [`STATE_DIR`].
pub const RECORD_NAME: &str = "wake-alarm.json";
/// The last RTC value an alarm may have: an RTC of the PC kind (mc146818) keeps a two-digit
/// year, so nothing past 2099 is a time it can hold (2099-12-31T23:59:59 as the RTC counts).
pub const MAX_RTC_VALUE: i64 = 4_102_444_799;

/// How the RTC keeps time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtcClock {
    Utc,
    Local,
}

/// The clock of `/etc/adjtime`'s text, as hwclock and rtcwake read it: the third line `LOCAL`
/// means local time; anything else, a missing line included, means UTC.
pub fn parse_adjtime(text: &str) -> RtcClock {
    match text.lines().nth(2).map(str::trim) {
        Some("LOCAL") => RtcClock::Local,
        _ => RtcClock::Utc,
    }
}

/// The RTC value that stands for the moment `at` (seconds since the epoch): `at` itself for a
/// UTC RTC; for a local one, the zone's wall clock at `at` counted as if it were UTC. `None`
/// when the zone cannot say.
pub fn to_rtc<Tz: TimeZone>(clock: RtcClock, zone: &Tz, at: i64) -> Option<i64> {
    match clock {
        RtcClock::Utc => Some(at),
        RtcClock::Local => Some(
            zone.timestamp_opt(at, 0)
                .single()?
                .naive_local()
                .and_utc()
                .timestamp(),
        ),
    }
}

/// The moment (seconds since the epoch) an RTC value stands for: the inverse of [`to_rtc`].
/// A wall-clock time that comes twice (the hour the clocks go back) is taken at its first
/// coming, when the RTC fires; one that never comes (the hour skipped) is `None`.
pub fn from_rtc<Tz: TimeZone>(clock: RtcClock, zone: &Tz, value: i64) -> Option<i64> {
    match clock {
        RtcClock::Utc => Some(value),
        RtcClock::Local => {
            let wall = DateTime::from_timestamp(value, 0)?.naive_utc();
            Some(zone.from_local_datetime(&wall).earliest()?.timestamp())
        }
    }
}

/// The number `wakealarm` holds: `None` when it is empty or 0 (no alarm armed).
pub(crate) fn parse_alarm(text: &str) -> Option<i64> {
    text.trim().parse().ok().filter(|t| *t > 0)
}

/// The RTC alarm now (seconds since the epoch), `None` when none is armed or there is no RTC;
/// corrected for a local-time RTC. Anyone may read it.
pub fn alarm() -> Option<i64> {
    Rtc::system().alarm()
}

/// The alarm root armed, as its record keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Armed {
    /// The wake time (seconds since the epoch).
    pub at: i64,
    /// What was written to `wakealarm` for it (the RTC's count): what the RTC holds while it is
    /// still this alarm, even if the zone or `/etc/adjtime` changed since.
    pub rtc_value: i64,
    /// When root armed it.
    pub set_at: i64,
}

/// Root's record: the alarm it set last (the RTC holds one alarm, so an older one is gone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub armed: Option<Armed>,
}

/// Why a wake time is refused before anything is touched.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not after now: the kernel takes a past alarm as clearing the alarm.
    NotAhead { at: i64 },
    /// The zone gives no wall-clock time for it (a local-time RTC).
    NoWallClock { at: i64 },
    /// Past what the RTC can hold.
    OutOfRange { at: i64 },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Refused::NotAhead { at } => write!(
                f,
                "the wake time {at} ({}) is not in the future: the kernel would take it as clearing the alarm",
                crate::time::epoch_rfc3339(at)
            ),
            Refused::NoWallClock { at } => write!(
                f,
                "the time zone gives no wall-clock time for the wake time {at}, which a local-time RTC needs"
            ),
            Refused::OutOfRange { at } => write!(
                f,
                "the wake time {at} ({}) is past 2099, which the RTC cannot hold",
                crate::time::epoch_rfc3339(at)
            ),
        }
    }
}

impl std::error::Error for Refused {}

/// What [`Rtc::clear`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleared {
    /// Root's alarm `at` was still armed, and is cleared.
    Cleared,
    /// Root did not set `at` (its record has another alarm, or none): the RTC is left alone.
    NotRoots { held: Option<i64> },
    /// Root set `at`, but the RTC no longer holds it (it fired, or something replaced it): the
    /// RTC is left alone, and the record forgets it.
    NoLongerHeld { held: Option<i64> },
}

/// One RTC and root's record of it; the paths are fields so that tests use a folder of their own.
#[derive(Clone, Debug)]
pub struct Rtc<Tz: TimeZone = Local> {
    pub wakealarm: PathBuf,
    pub adjtime: PathBuf,
    pub record: PathBuf,
    /// The zone a local-time RTC keeps.
    pub zone: Tz,
}

impl Rtc<Local> {
    /// The machine's RTC, `/etc/adjtime` and root's record (in `$STATE_DIRECTORY` when systemd
    /// sets it).
    pub fn system() -> Self {
        Rtc {
            wakealarm: WAKEALARM.into(),
            adjtime: ADJTIME.into(),
            record: statefile::state_dir(STATE_DIR).join(RECORD_NAME),
            zone: Local,
        }
    }
}

impl<Tz: TimeZone> Rtc<Tz> {
    /// How the RTC keeps time: UTC when `/etc/adjtime` is missing or unreadable, as hwclock
    /// takes it.
    pub fn clock(&self) -> RtcClock {
        statefile::read_regular(&self.adjtime, 4096).map_or(RtcClock::Utc, |b| {
            parse_adjtime(&String::from_utf8_lossy(&b))
        })
    }

    /// The raw value `wakealarm` holds (the RTC's count), `None` when no alarm is armed.
    pub fn raw(&self) -> std::io::Result<Option<i64>> {
        Ok(parse_alarm(&std::fs::read_to_string(&self.wakealarm)?))
    }

    /// The alarm now as a moment (seconds since the epoch), corrected for a local-time RTC;
    /// `None` when none is armed or there is no RTC.
    pub fn alarm(&self) -> Option<i64> {
        from_rtc(self.clock(), &self.zone, self.raw().ok()??)
    }

    /// The RTC value for a wake at `at`, or why the kernel or the RTC would refuse it; `now` is
    /// the time it is armed.
    pub fn check(&self, at: i64, now: i64) -> Result<i64, Refused> {
        if at <= now {
            return Err(Refused::NotAhead { at });
        }
        let value = to_rtc(self.clock(), &self.zone, at).ok_or(Refused::NoWallClock { at })?;
        if value > MAX_RTC_VALUE {
            return Err(Refused::OutOfRange { at });
        }
        Ok(value)
    }

    /// Root's record (a corrupt one is moved aside, and nothing is taken as root's).
    pub fn record(&self) -> Record {
        statefile::load(&self.record)
    }

    fn save(&self, record: &Record) -> anyhow::Result<()> {
        statefile::save(&self.record, record)
    }

    /// Arms the alarm at `at` (root), refusing a time the kernel or the RTC would refuse before
    /// anything is touched. The record is written first, so that no alarm root set is ever
    /// missing from it; then, as `rtcwake -m no`, the alarm is cleared (the kernel refuses a new
    /// one while one is armed), written, and read back. Returns the alarm it replaced, if any.
    pub fn arm(&self, at: i64, now: i64) -> anyhow::Result<Option<i64>> {
        let rtc_value = self.check(at, now)?;
        let replaced = self.alarm();
        self.save(&Record {
            armed: Some(Armed {
                at,
                rtc_value,
                set_at: now,
            }),
        })
        .context("cannot keep root's record of the wake alarm, so it is not set")?;
        let write = |v: &str| {
            std::fs::write(&self.wakealarm, v)
                .with_context(|| format!("cannot write {v} to {}", self.wakealarm.display()))
        };
        write("0")?;
        write(&rtc_value.to_string())?;
        match self.raw() {
            Ok(Some(v)) if v == rtc_value => Ok(replaced),
            other => anyhow::bail!(
                "{} reads back as {other:?}, not {rtc_value}",
                self.wakealarm.display()
            ),
        }
    }

    /// Clears the alarm `at` if root set it (it is in the record) and the RTC still holds it;
    /// any other alarm stays as it is.
    pub fn clear(&self, at: i64) -> anyhow::Result<Cleared> {
        let record = self.record();
        let Some(armed) = record.armed.filter(|a| a.at == at) else {
            return Ok(Cleared::NotRoots { held: self.alarm() });
        };
        let raw = self
            .raw()
            .with_context(|| format!("cannot read {}", self.wakealarm.display()))?;
        let outcome = if raw == Some(armed.rtc_value) {
            std::fs::write(&self.wakealarm, "0")
                .with_context(|| format!("cannot write 0 to {}", self.wakealarm.display()))?;
            Cleared::Cleared
        } else {
            Cleared::NoLongerHeld {
                held: raw.and_then(|v| from_rtc(self.clock(), &self.zone, v)),
            }
        };
        self.save(&Record { armed: None })
            .context("cannot update root's record of the wake alarm")?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;
    use std::path::Path;

    /// 2026-12-04T19:00:00Z.
    const NOW: i64 = 1_796_410_800;

    fn rtc<Tz: TimeZone>(dir: &Path, adjtime: &str, zone: Tz) -> Rtc<Tz> {
        let r = Rtc {
            wakealarm: dir.join("wakealarm"),
            adjtime: dir.join("adjtime"),
            record: dir.join(RECORD_NAME),
            zone,
        };
        std::fs::write(&r.wakealarm, "").unwrap();
        std::fs::write(&r.adjtime, adjtime).unwrap();
        r
    }

    fn utc_rtc(dir: &Path) -> Rtc<FixedOffset> {
        rtc(dir, "0.0 0 0\n0\nUTC\n", FixedOffset::east_opt(0).unwrap())
    }

    #[test]
    fn adjtime_says_local_only_on_its_third_line() {
        assert_eq!(parse_adjtime("0.0 0 0.0\n0\nLOCAL\n"), RtcClock::Local);
        assert_eq!(parse_adjtime("0.0 0 0.0\n0\nLOCAL"), RtcClock::Local);
        assert_eq!(parse_adjtime("0.0 0 0.0\n0\nUTC\n"), RtcClock::Utc);
        assert_eq!(parse_adjtime("0.0 0 0.0\n0\n"), RtcClock::Utc);
        assert_eq!(parse_adjtime("LOCAL\n"), RtcClock::Utc);
        assert_eq!(parse_adjtime(""), RtcClock::Utc);
    }

    #[test]
    fn a_local_rtc_is_shifted_by_the_offset_at_the_wake_time() {
        let cet = FixedOffset::east_opt(3600).unwrap();
        let nyc = FixedOffset::west_opt(5 * 3600).unwrap();
        let at = 1_796_454_000; // 2026-12-05T07:00:00Z
        assert_eq!(to_rtc(RtcClock::Utc, &cet, at), Some(at));
        // 08:00 on the wall in CET: the RTC counts 08:00 "as if UTC".
        assert_eq!(to_rtc(RtcClock::Local, &cet, at), Some(at + 3600));
        assert_eq!(to_rtc(RtcClock::Local, &nyc, at), Some(at - 5 * 3600));
        for zone in [cet, nyc] {
            let v = to_rtc(RtcClock::Local, &zone, at).unwrap();
            assert_eq!(from_rtc(RtcClock::Local, &zone, v), Some(at));
        }
        assert_eq!(from_rtc(RtcClock::Utc, &cet, at), Some(at));
        // What `date -u -d "$(date -d @AT '+%F %T')" +%s` gives in the zone.
        assert_eq!(
            to_rtc(RtcClock::Local, &Local, at),
            Some(
                Local
                    .timestamp_opt(at, 0)
                    .unwrap()
                    .naive_local()
                    .and_utc()
                    .timestamp()
            )
        );
    }

    #[test]
    fn times_the_kernel_would_refuse_are_refused_before_anything_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let r = utc_rtc(dir.path());
        std::fs::write(&r.wakealarm, "1796500000\n").unwrap();
        for (at, why) in [
            (NOW, Refused::NotAhead { at: NOW }),
            (NOW - 60, Refused::NotAhead { at: NOW - 60 }),
            (
                MAX_RTC_VALUE + 1,
                Refused::OutOfRange {
                    at: MAX_RTC_VALUE + 1,
                },
            ),
        ] {
            let e = r.arm(at, NOW).unwrap_err();
            assert_eq!(e.downcast_ref::<Refused>(), Some(&why), "{at}: {e:#}");
        }
        // The alarm that was there stays, and nothing is recorded.
        assert_eq!(r.alarm(), Some(1_796_500_000));
        assert!(!r.record.exists());
        assert_eq!(r.check(MAX_RTC_VALUE, NOW), Ok(MAX_RTC_VALUE));
        // A local RTC east of UTC reaches past 2099 an offset earlier.
        let east = rtc(
            dir.path(),
            "0.0 0 0\n0\nLOCAL\n",
            FixedOffset::east_opt(3600).unwrap(),
        );
        assert_eq!(
            east.check(MAX_RTC_VALUE, NOW),
            Err(Refused::OutOfRange { at: MAX_RTC_VALUE })
        );
    }

    #[test]
    fn root_clears_only_the_alarm_it_set_and_the_rtc_still_holds() {
        let dir = tempfile::tempdir().unwrap();
        let r = utc_rtc(dir.path());
        let at = NOW + 8 * 3600;
        assert_eq!(r.arm(at, NOW).unwrap(), None);
        assert_eq!(
            std::fs::read_to_string(&r.wakealarm).unwrap(),
            at.to_string()
        );
        assert_eq!(
            r.record().armed,
            Some(Armed {
                at,
                rtc_value: at,
                set_at: NOW
            })
        );
        // Not root's: another value, even one read from wakealarm by someone else later.
        assert_eq!(
            r.clear(at + 1).unwrap(),
            Cleared::NotRoots { held: Some(at) }
        );
        assert_eq!(r.alarm(), Some(at));
        assert_eq!(r.clear(at).unwrap(), Cleared::Cleared);
        assert_eq!(r.alarm(), None);
        assert_eq!(r.record(), Record::default());
        // Once cleared, it is no longer root's to clear.
        assert_eq!(r.clear(at).unwrap(), Cleared::NotRoots { held: None });
    }

    #[test]
    fn an_alarm_someone_else_set_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let r = utc_rtc(dir.path());
        // Set with rtcwake, say: the value is world-readable, and asked to be cleared.
        std::fs::write(&r.wakealarm, "1796500000\n").unwrap();
        assert_eq!(
            r.clear(1_796_500_000).unwrap(),
            Cleared::NotRoots {
                held: Some(1_796_500_000)
            }
        );
        assert_eq!(r.alarm(), Some(1_796_500_000));
        // Root armed one, and then someone replaced it: root's clear leaves theirs.
        r.arm(NOW + 3600, NOW).unwrap();
        std::fs::write(&r.wakealarm, "1796500000\n").unwrap();
        assert_eq!(
            r.clear(NOW + 3600).unwrap(),
            Cleared::NoLongerHeld {
                held: Some(1_796_500_000)
            }
        );
        assert_eq!(r.alarm(), Some(1_796_500_000));
        assert_eq!(r.record(), Record::default());
    }

    #[test]
    fn a_local_rtc_is_armed_read_and_cleared_in_wall_clock() {
        let dir = tempfile::tempdir().unwrap();
        let cet = FixedOffset::east_opt(3600).unwrap();
        let r = rtc(dir.path(), "0.0 0 0\n0\nLOCAL\n", cet);
        let at = NOW + 3600;
        r.arm(at, NOW).unwrap();
        assert_eq!(
            std::fs::read_to_string(&r.wakealarm).unwrap(),
            (at + 3600).to_string()
        );
        assert_eq!(r.alarm(), Some(at));
        // abc reads the raw value and asks for it: not what root set.
        assert_eq!(
            r.clear(at + 3600).unwrap(),
            Cleared::NotRoots { held: Some(at) }
        );
        // The zone changed since: the RTC still holds what root wrote, which is cleared.
        let moved = Rtc {
            zone: FixedOffset::east_opt(7200).unwrap(),
            ..r.clone()
        };
        assert_eq!(moved.clear(at).unwrap(), Cleared::Cleared);
        assert_eq!(r.raw().unwrap(), None);
    }

    #[test]
    fn a_symlink_planted_for_the_record_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let r = utc_rtc(dir.path());
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let tmp = dir
            .path()
            .join(format!(".{RECORD_NAME}.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        r.arm(NOW + 60, NOW).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(r.record().armed.map(|a| a.at), Some(NOW + 60));
    }
}
