//! Prometheus text exposition format 0.0.4: a small writer (HELP, TYPE, escaped labels), the HTTP
//! request counter the server core feeds, and atomic, change-only writes of a textfile.
//!
//! Our own writer rather than the `prometheus` crate: what we expose is a handful of gauges built
//! fresh at every scrape from systemd's answers, plus one counter; a registry, its macros and its
//! protobuf support would be most of the code and none of the need.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;

/// `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every name we expose starts with this, as node_exporter's start with `node_`.
pub const PREFIX: &str = "homelab_";

/// The metric kinds we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A page of metrics in the text format. Each family is written once, with its `# HELP` and
/// `# TYPE` lines, then its samples; a family with no sample still says what it would be.
#[derive(Default)]
pub struct Writer {
    out: String,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Starts a family: `name` without the prefix (added here), its help text and kind.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> Family<'_> {
        let name = format!("{PREFIX}{name}");
        debug_assert!(valid_name(&name), "bad metric name {name}");
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        Family { w: self, name }
    }

    /// One gauge family with a single unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, help, Kind::Gauge).sample(&[], value);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// The samples of one family.
pub struct Family<'a> {
    w: &'a mut Writer,
    name: String,
}

impl Family<'_> {
    /// One sample: `name{label="value",...} value`. Label values are escaped.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let out = &mut self.w.out;
        out.push_str(&self.name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                debug_assert!(valid_label(k), "bad label name {k}");
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape_label(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", number(value));
        self
    }
}

/// A sample value as the format spells it (`NaN`, `+Inf`, `-Inf`, integers without a fraction).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Label values: backslash, double quote and line feed are escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Help text: backslash and line feed are escaped (a quote is not, in `# HELP`).
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label(n: &str) -> bool {
    valid_name(n) && !n.contains(':') && !n.starts_with("__")
}

/// HTTP requests answered, by method, route pattern (`/models/{}/start`, never the raw path, so
/// that hostile paths cannot grow the page) and status code. Since the service started: a
/// service that exits when idle starts again from zero, which Prometheus' `rate()` reads as a
/// counter reset.
static HTTP_REQUESTS: Mutex<BTreeMap<(&'static str, String, u16), u64>> =
    Mutex::new(BTreeMap::new());

/// The route label of requests that matched no route (404s, and those refused before routing).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Counts one answered request; called by the HTTP server core for every request it answers.
pub fn count_request(method: &'static str, route: Option<&str>, status: u16) {
    let route = route.unwrap_or(UNMATCHED_ROUTE).to_string();
    let mut map = HTTP_REQUESTS.lock().unwrap_or_else(|e| e.into_inner());
    *map.entry((method, route, status)).or_insert(0) += 1;
}

/// Writes the `homelab_http_requests_total` family.
pub fn write_http_requests(w: &mut Writer) {
    let map = HTTP_REQUESTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut f = w.family(
        "http_requests_total",
        "HTTP requests answered since the service started, by method, route pattern and status code.",
        Kind::Counter,
    );
    for ((method, route, status), n) in map {
        f.sample(
            &[
                ("method", method),
                ("route", &route),
                ("code", &status.to_string()),
            ],
            n as f64,
        );
    }
}

/// Replaces `path` with `text` atomically ([`crate::statefile::write_atomic`]), and
/// only when the content differs: node_exporter's textfile collector reads whole files, and an
/// unchanged file is not rewritten (no write every few seconds to an SSD for nothing).
/// Returns whether it wrote.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(false);
    }
    // node_exporter reads only `*.prom`: the temporary name keeps it from reading half a file.
    crate::statefile::write_atomic(path, text.as_bytes(), 0o644).map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_and_type_precede_the_samples() {
        let mut w = Writer::new();
        w.family(
            "models_up",
            "Whether the model's unit is active.",
            Kind::Gauge,
        )
        .sample(&[("model", "llama.env")], 1.0)
        .sample(&[("model", "b")], 0.0);
        w.gauge("x_seconds", "A value.", 1.5);
        assert_eq!(
            w.finish(),
            "# HELP homelab_models_up Whether the model's unit is active.\n\
             # TYPE homelab_models_up gauge\n\
             homelab_models_up{model=\"llama.env\"} 1\n\
             homelab_models_up{model=\"b\"} 0\n\
             # HELP homelab_x_seconds A value.\n\
             # TYPE homelab_x_seconds gauge\n\
             homelab_x_seconds 1.5\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("two\nlines"), "two\\nlines");
        assert_eq!(escape_label("Mon..Fri 23:00 ü"), "Mon..Fri 23:00 ü");
        assert_eq!(escape_help("a\\b\n\"c\""), "a\\\\b\\n\"c\"");
        let mut w = Writer::new();
        w.family("s", "h", Kind::Gauge)
            .sample(&[("calendar", "x\"}\n y 1"), ("k", "v")], 2.0);
        let page = w.finish();
        assert!(
            page.ends_with("homelab_s{calendar=\"x\\\"}\\n y 1\",k=\"v\"} 2\n"),
            "{page}"
        );
        // A hostile value stays on its one line.
        assert_eq!(page.lines().count(), 3, "{page}");
    }

    #[test]
    fn numbers_are_spelled_as_the_format_wants() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(-2.0), "-2");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(1.7e9), "1700000000");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("homelab_http_requests_total"));
        assert!(!valid_name("9x"));
        assert!(!valid_name("a-b"));
        assert!(valid_label("route"));
        assert!(!valid_label("__name"));
    }

    #[test]
    fn requests_are_counted_by_route_pattern_and_code() {
        count_request("GET", Some("/test/{}"), 200);
        count_request("GET", Some("/test/{}"), 200);
        count_request("POST", None, 404);
        let mut w = Writer::new();
        write_http_requests(&mut w);
        let page = w.finish();
        assert!(page.contains("# TYPE homelab_http_requests_total counter\n"));
        assert!(
            page.contains(
                "homelab_http_requests_total{method=\"GET\",route=\"/test/{}\",code=\"200\"} 2\n"
            ),
            "{page}"
        );
        assert!(
            page.contains(
                "homelab_http_requests_total{method=\"POST\",route=\"unmatched\",code=\"404\"} 1\n"
            ),
            "{page}"
        );
    }

    #[test]
    fn textfile_is_written_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("homelab.prom");
        assert!(write_textfile(&path, "a 1\n").unwrap());
        assert!(!write_textfile(&path, "a 1\n").unwrap());
        assert!(write_textfile(&path, "a 2\n").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
    }

    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("homelab.prom");
        // What another user of the folder could plant: the temporary name, pointing elsewhere.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched\n").unwrap();
        let tmp = dir
            .path()
            .join(format!(".homelab.prom.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        assert!(write_textfile(&path, "a 1\n").unwrap());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 1\n");
        assert!(
            !std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the textfile is a link"
        );
        assert!(!tmp.exists() && std::fs::symlink_metadata(&tmp).is_err());
    }
}
