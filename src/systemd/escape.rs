//! Unit-name escaping exactly as `systemd-escape` does, and the checks on names that become units.

/// Longest unit name systemd accepts (UNIT_NAME_MAX - 1).
pub const UNIT_NAME_MAX: usize = 255;

/// The instance of `template` (`prefix@.suffix`) for `instance`, escaped as
/// `systemd-escape --template=TEMPLATE INSTANCE` does. `None` when the result is longer than
/// systemd allows.
pub fn template_instance(template: &str, instance: &str) -> Option<String> {
    let (prefix, suffix) = template.split_once("@.")?;
    let name = format!(
        "{prefix}@{}.{suffix}",
        libsystemd::unit::escape_name(instance)
    );
    (name.len() <= UNIT_NAME_MAX && !instance.is_empty()).then_some(name)
}

/// The escaped instance part of `unit` if it is an instance of `template`.
pub fn instance_of<'a>(unit: &'a str, template: &str) -> Option<&'a str> {
    let (prefix, suffix) = template.split_once("@.")?;
    unit.strip_prefix(prefix)?
        .strip_prefix('@')?
        .strip_suffix(suffix)?
        .strip_suffix('.')
        .filter(|i| !i.is_empty())
}

/// Reverses [`libsystemd::unit::escape_name`] (what `%I` gives a unit): `-` is `/`, `\xHH` a byte.
pub fn unescape(escaped: &str) -> Option<String> {
    let b = escaped.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'-' => {
                out.push(b'/');
                i += 1;
            }
            b'\\' => {
                if b.get(i + 1) != Some(&b'x') {
                    return None;
                }
                let hex = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 4;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The unit name in a unit's D-Bus object path (`/org/freedesktop/systemd1/unit/NAME`, each
/// byte other than a letter or digit of `NAME` written `_HH`, as systemd's `bus_path_escape`).
pub fn unit_of_object_path(path: &str) -> Option<String> {
    let b = path
        .strip_prefix("/org/freedesktop/systemd1/unit/")?
        .as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|u| !u.is_empty())
}

/// Every template a user-typed name becomes an instance of (experiments, models and their
/// proxies): [`validate_name`] checks that the escaped name fits each of them.
pub const NAME_TEMPLATES: &[&str] = &[
    "brain-experiment@.service",
    "model@.service",
    "model-proxy@.service",
    "model-proxy@.socket",
];

/// Checks a name that users type and that becomes part of a unit name or a path (a model name,
/// an experiment id): letters, digits, `-`, `_`, `.`; not starting with `.`; 1..=`max` bytes;
/// and, escaped, short enough for a unit name of every template in [`NAME_TEMPLATES`].
/// The error says what is wrong and what to use instead.
pub fn validate_name(what: &str, name: &str, max: usize) -> anyhow::Result<()> {
    validate_name_for(what, name, max, NAME_TEMPLATES)
}

/// [`validate_name`] for the given templates: escaping turns each `-` into 4 bytes (`\x2d`), so
/// a name within `max` bytes can still make a unit name longer than systemd's 255 bytes.
pub fn validate_name_for(
    what: &str,
    name: &str,
    max: usize,
    templates: &[&str],
) -> anyhow::Result<()> {
    validate_chars(what, name, max)?;
    for template in templates {
        if template_instance(template, name).is_none() {
            let len = template.len() + libsystemd::unit::escape_name(name).len();
            let shown: String = name.chars().take(40).collect();
            let more = if name.len() > 40 { "…" } else { "" };
            anyhow::bail!(
                "{what} \"{shown}{more}\" is too long for a unit name: as {template} it would be {len} bytes, at most {UNIT_NAME_MAX} are allowed (each '-' counts 4 bytes); use a shorter name"
            );
        }
    }
    Ok(())
}

fn validate_chars(what: &str, name: &str, max: usize) -> anyhow::Result<()> {
    let shown: String = name.chars().take(40).flat_map(char::escape_debug).collect();
    let shown = if name.chars().count() > 40 {
        format!("{shown}…")
    } else {
        shown
    };
    if name.is_empty() {
        anyhow::bail!("{what} is empty: use letters, digits, '-', '_' and '.'");
    }
    if name.len() > max {
        anyhow::bail!(
            "{what} \"{shown}\" is {} bytes long: at most {max} are allowed",
            name.len()
        );
    }
    if name.starts_with('.') {
        anyhow::bail!("{what} \"{shown}\" starts with '.': hidden names and '..' are not allowed");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        anyhow::bail!(
            "{what} \"{shown}\" is invalid: {:?} is not allowed; use letters, digits, '-', '_' and '.'",
            c
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_come_back_from_object_paths() {
        assert_eq!(
            unit_of_object_path("/org/freedesktop/systemd1/unit/brain_2dexperiment_40e1_2eservice")
                .as_deref(),
            Some("brain-experiment@e1.service")
        );
        assert_eq!(
            unit_of_object_path("/org/freedesktop/systemd1/unit/brain_2drun_2dx_5fy_2eservice")
                .as_deref(),
            Some("brain-run-x_y.service")
        );
        assert_eq!(
            unit_of_object_path("/org/freedesktop/systemd1/unit/bad_2"),
            None
        );
        assert_eq!(unit_of_object_path("/org/freedesktop/systemd1/unit/"), None);
        assert_eq!(unit_of_object_path("/org/freedesktop/systemd1"), None);
    }

    // Expected values are what `systemd-escape --template=homelab-shutdown@.timer ...` printed
    // (systemd 252).
    #[test]
    fn escapes_like_systemd_escape() {
        let t = "homelab-shutdown@.timer";
        assert_eq!(
            template_instance(t, "Mon..Fri 23:00").unwrap(),
            r"homelab-shutdown@Mon..Fri\x2023:00.timer"
        );
        assert_eq!(
            template_instance(t, "@1795414139").unwrap(),
            r"homelab-shutdown@\x401795414139.timer"
        );
        assert_eq!(
            template_instance(t, "*-*-* 10:00/15").unwrap(),
            r"homelab-shutdown@\x2a\x2d\x2a\x2d\x2a\x2010:00-15.timer"
        );
        assert_eq!(libsystemd::unit::escape_name(".a-b/c"), r"\x2ea\x2db-c");
        assert_eq!(template_instance(t, ""), None);
        assert_eq!(template_instance(t, &"x".repeat(300)), None);
        assert_eq!(template_instance("no-template.timer", "x"), None);
    }

    #[test]
    fn unescape_reverses_escape() {
        for s in [
            "Mon..Fri 23:00",
            "@1795414139",
            "*-*-* 10:00/15",
            ".a-b/c",
            "ünïcode ✓",
            "a\\b",
        ] {
            assert_eq!(
                unescape(&libsystemd::unit::escape_name(s)).as_deref(),
                Some(s),
                "{s}"
            );
        }
        assert_eq!(unescape(r"\x4"), None);
        assert_eq!(unescape(r"\y41"), None);
        assert_eq!(unescape(r"\xff"), None);
    }

    #[test]
    fn instance_of_template() {
        let t = "homelab-shutdown@.timer";
        assert_eq!(
            instance_of(r"homelab-shutdown@\x401.timer", t),
            Some(r"\x401")
        );
        assert_eq!(instance_of("homelab-shutdown@.timer", t), None);
        assert_eq!(instance_of("homelab-shutdown@x.service", t), None);
        assert_eq!(instance_of("other@x.timer", t), None);
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("model name", "llama-3.1_8b.env", 255).is_ok());
        for bad in [
            "", "../x", "a/b", "a*", "?", ".hidden", "x y", "a\nb", "x\u{0}", "é",
        ] {
            let e = validate_name("model name", bad, 255)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("model name"), "{bad:?}: {e}");
        }
        let e = validate_name("model name", &"a".repeat(10_000), 255)
            .unwrap_err()
            .to_string();
        assert!(e.contains("10000 bytes") && e.len() < 200, "{e}");
        // x.service is a fine file name; it is escaped into the instance, never a unit of its own.
        assert!(validate_name("model name", "x.service", 255).is_ok());
    }

    #[test]
    fn escaped_names_must_fit_a_unit_name() {
        // 64 '-' are 256 bytes escaped: no template can take them, and nothing panics.
        let dashes = "-".repeat(64);
        let e = validate_name("model name", &dashes, 255)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too long for a unit name"), "{e}");
        assert!(e.contains("model@.service") || e.contains("brain-experiment@.service"));
        let e = validate_name_for("model name", &dashes, 255, &["model@.service"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("as model@.service it would be 270 bytes"), "{e}");
        // The experiment file of the report: a + 63 '-'.
        let id = format!("a{}", "-".repeat(63));
        assert!(validate_name("experiment id", &id, 64).is_err());
        // The longest that fits: brain-experiment@ + 57 escaped '-' + .service = 253 bytes.
        let fits = "-".repeat(57);
        assert!(validate_name("experiment id", &fits, 64).is_ok());
        for t in NAME_TEMPLATES {
            assert!(template_instance(t, &fits).is_some(), "{t}");
        }
        assert!(validate_name("experiment id", &"-".repeat(58), 64).is_err());
        // Plain names up to the byte limit still pass.
        assert!(validate_name("model name", &"a".repeat(200), 255).is_ok());
        assert!(validate_name("model name", &"a".repeat(240), 255).is_err());
    }
}
