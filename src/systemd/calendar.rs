//! systemd's own calendar parser, asked through `systemd-analyze calendar`: whether an
//! expression is valid, and when it next elapses, in seconds since the epoch whatever the
//! machine's time zone (the one caller of `systemd-analyze` in the project).

use std::process::{Command, Stdio};

/// Why a calendar expression has no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalendarError {
    /// systemd's parser refuses it; what it says.
    Invalid(String),
    /// `systemd-analyze` could not be run, or its answer could not be read.
    Unavailable(String),
}

impl std::fmt::Display for CalendarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalendarError::Invalid(why) => write!(f, "systemd's calendar parser refuses it: {why}"),
            CalendarError::Unavailable(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for CalendarError {}

/// The next elapse of `expr` after `base` (seconds since the epoch; `None`: now), in seconds
/// since the epoch; `Ok(None)` when it never elapses again. As a timer would see it: in the
/// machine's time zone, unless the expression names its own.
pub fn next_elapse(expr: &str, base: Option<i64>) -> Result<Option<i64>, CalendarError> {
    run(expr, base, None)
}

/// [`next_elapse`], with `systemd-analyze` run in the time zone `tz` when given (for tests).
fn run(expr: &str, base: Option<i64>, tz: Option<&str>) -> Result<Option<i64>, CalendarError> {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["calendar", "--iterations=1"]);
    if let Some(base) = base {
        cmd.arg(format!("--base-time=@{base}"));
    }
    cmd.args(["--", expr])
        .stdin(Stdio::null())
        .env("LC_ALL", "C")
        .env("SYSTEMD_COLORS", "0");
    if let Some(tz) = tz {
        cmd.env("TZ", tz);
    }
    let out = cmd.output().map_err(|e| {
        CalendarError::Unavailable(format!(
            "cannot run systemd-analyze to read the calendar expression: {e}"
        ))
    })?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(CalendarError::Invalid(if why.is_empty() {
            format!("systemd-analyze ended {}", out.status)
        } else {
            why
        }));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// The next elapse in `systemd-analyze calendar`'s answer. It prints the time in the machine's
/// zone ("Next elapse:"), and under it the same time in UTC ("(in UTC):") unless it takes the
/// zone for UTC: offset 0 and no daylight saving, whatever the zone is called (`UTC`, but also
/// `GMT` in Atlantic/Reykjavik or Etc/GMT). So the UTC line is the answer where there is one,
/// else the local line is UTC; the zone's name is never read.
fn parse(out: &str) -> Result<Option<i64>, CalendarError> {
    let field = |name: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let unreadable = || {
        CalendarError::Unavailable(format!(
            "systemd-analyze calendar gave no next elapse that can be read: {:?}",
            out.trim()
        ))
    };
    let next = field("Next elapse:").ok_or_else(unreadable)?;
    if next == "never" {
        return Ok(None);
    }
    let utc = field("(in UTC):").unwrap_or(next);
    // "Thu 2026-11-19 07:00:00 GMT": the weekday, the date and time, and a zone we ignore.
    let mut words = utc.split_whitespace();
    let (Some(_weekday), Some(date), Some(time)) = (words.next(), words.next(), words.next())
    else {
        return Err(unreadable());
    };
    let t = chrono::NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M:%S")
        .map_err(|_| unreadable())?;
    Ok(Some(t.and_utc().timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wed 2026-11-18 11:06:40 UTC: winter in the north, summer in the south.
    const BASE: i64 = 1_795_000_000;
    /// Thu 2026-11-19 00:00:00 UTC.
    const NEXT_MIDNIGHT_UTC: i64 = 1_795_046_400;

    #[test]
    fn the_next_elapse_is_right_in_every_kind_of_zone() {
        // "07:00" local after BASE, and the zone's offset from UTC then (minutes east).
        for (tz, offset_minutes, day) in [
            ("UTC", 0, 1),
            // Offset 0 without daylight saving: systemd prints "GMT" and no UTC line.
            ("Etc/GMT", 0, 1),
            ("Atlantic/Reykjavik", 0, 1),
            ("Africa/Abidjan", 0, 1),
            ("America/Danmarkshavn", 0, 1),
            // Offset 0 now, with daylight saving in summer: a UTC line.
            ("Europe/London", 0, 1),
            ("Europe/Berlin", 60, 1),
            // 07:00 in New York (12:00 UTC) is still ahead on the 18th.
            ("America/New_York", -300, 0),
            ("Asia/Kolkata", 330, 1),
            // Summer time, +11: 07:00 of the 19th is 20:00 UTC of the 18th.
            ("Australia/Lord_Howe", 660, 1),
            ("Etc/GMT-14", 840, 1),
        ] {
            let local_seven = NEXT_MIDNIGHT_UTC - 86_400 + day * 86_400 + 7 * 3600;
            let expected = local_seven - offset_minutes * 60;
            assert_eq!(
                run("*-*-* 07:00", Some(BASE), Some(tz)),
                Ok(Some(expected)),
                "{tz}"
            );
        }
    }

    #[test]
    fn an_expression_with_its_own_zone_is_read_in_it() {
        for tz in ["UTC", "Atlantic/Reykjavik", "Europe/Berlin", "Asia/Kolkata"] {
            // 07:00 in Berlin in winter is 06:00 UTC.
            assert_eq!(
                run("*-*-* 07:00 Europe/Berlin", Some(BASE), Some(tz)),
                Ok(Some(NEXT_MIDNIGHT_UTC + 6 * 3600)),
                "{tz}"
            );
        }
    }

    #[test]
    fn invalid_and_past_expressions_say_so() {
        match run("Feb 30 nonsense", Some(BASE), Some("UTC")) {
            Err(CalendarError::Invalid(why)) => assert!(why.contains("calendar"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(run("2001-01-01", Some(BASE), Some("UTC")), Ok(None));
        assert!(next_elapse("*-*-* 07:00", None).unwrap().unwrap() > BASE);
    }

    #[test]
    fn answers_parse_without_reading_the_zone() {
        let utc = "  Original form: 07:00\nNormalized form: *-*-* 07:00:00\n    Next elapse: Wed 2023-11-15 07:00:00 UTC\n       From now: 3 years ago\n";
        assert_eq!(parse(utc), Ok(Some(1_700_031_600)));
        let gmt = "    Next elapse: Wed 2023-11-15 07:00:00 GMT\n";
        assert_eq!(parse(gmt), Ok(Some(1_700_031_600)));
        let zoned = "    Next elapse: Wed 2023-11-15 07:00:00 CET\n       (in UTC): Wed 2023-11-15 06:00:00 UTC\n";
        assert_eq!(parse(zoned), Ok(Some(1_700_028_000)));
        assert_eq!(parse("    Next elapse: never\n"), Ok(None));
        for bad in [
            "",
            "Next elapse: soon",
            "Next elapse: Wed 2023-13-45 07:00:00 X",
        ] {
            assert!(
                matches!(parse(bad), Err(CalendarError::Unavailable(_))),
                "{bad}"
            );
        }
    }
}
