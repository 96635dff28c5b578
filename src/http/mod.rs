//! The socket-activated HTTP core both services share: request/response types, routing, JSON errors.
//!
//! A service is a [`Service`]: a pure function from a parsed [`Request`] to a [`Response`], so its
//! logic is tested in-process; [`server`] puts it behind systemd's socket with bounded resources.

pub mod auth;
pub mod budget;
mod conn;
mod io;
pub mod parse;
pub mod server;
mod timing;
mod worker;

use serde_json::{Value, json};
use std::fmt;

/// Largest request body we read; a larger one gets 413 before its body is read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// HTTP methods the services route on; anything else is answered with 405.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl Method {
    pub fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

/// A request as a service sees it: already parsed and bounded in size by the server, so that a
/// service is tested with plain values and no socket.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    /// Path without the query string (no route takes one), as sent (not percent-decoded).
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Only the head has arrived: the service checks method, route and token and answers
    /// [`CHECKS_PASSED`] instead of acting (see [`route_authorized`]), before the body is read.
    pub checks_only: bool,
}

/// Status of the answer to a [`Request::checks_only`] request whose checks passed; never sent.
pub const CHECKS_PASSED: u16 = 100;

impl Request {
    /// A request with no headers and no body, for tests and internal callers.
    pub fn new(method: Method, target: &str) -> Request {
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        Request {
            method,
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            checks_only: false,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Request {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as a JSON object; an empty body is an empty object (as clients of the Flask
    /// services these replace send). `example` is a body the service takes, for the error message.
    pub fn json_object(&self, example: &str) -> Result<serde_json::Map<String, Value>, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Map::new());
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Err(ApiError::bad_request(format!(
                "the request body must be a JSON object, not {}: send e.g. {example}",
                json_type_name(&other)
            ))),
            Err(e) => Err(ApiError::bad_request(format!(
                "the request body is not valid JSON ({e}): send a JSON object"
            ))),
        }
    }
}

/// A client's value for an error message: a string quoted (its first 40 characters), a number
/// as it is, anything else by its type.
pub fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", s.chars().take(40).collect::<String>()),
        Value::Number(n) => n.to_string(),
        other => json_type_name(other).to_string(),
    }
}

/// Names a JSON value's type the way an error message should.
pub fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON response.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Value,
    /// Extra headers (e.g. `Allow` on 405, `WWW-Authenticate` on 401).
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn ok(body: Value) -> Response {
        Response::with_status(200, body)
    }

    pub fn with_status(status: u16, body: Value) -> Response {
        Response {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// A 200 that is not JSON (the metrics page): the server sends the string as it is, with
    /// this `Content-Type`.
    pub fn text(content_type: &str, text: String) -> Response {
        Response {
            status: 200,
            body: Value::String(text),
            headers: vec![("Content-Type", content_type.to_string())],
        }
    }
}

thread_local! {
    /// The pattern [`route`] matched last on this thread, for the request counter of the
    /// server core (`crate::metrics`): routes are the services', the counting is generic.
    static MATCHED_ROUTE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Takes (and clears) the pattern the last [`route`] call on this thread matched.
pub fn take_matched_route() -> Option<String> {
    MATCHED_ROUTE.with(|r| r.borrow_mut().take())
}

/// An error a client caused or must know about; becomes `{"status":"error","message":...}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// Extra fields merged into the error object (e.g. the existing schedule on 409).
    pub extra: Option<serde_json::Map<String, Value>>,
    pub headers: Vec<(&'static str, String)>,
    /// systemd refused for lack of permission: the service adds what to check
    /// ([`ApiError::with_denied_hint`]).
    pub denied: bool,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            extra: None,
            headers: Vec::new(),
            denied: false,
        }
    }

    /// Appends the service's own advice to a permission refusal; other errors pass unchanged.
    pub fn with_denied_hint(mut self, hint: &str) -> ApiError {
        if self.denied {
            self.message = format!("{}: {hint}", self.message);
            self.denied = false;
        }
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, message)
    }

    pub fn with_extra(mut self, key: &str, value: Value) -> ApiError {
        self.extra
            .get_or_insert_with(serde_json::Map::new)
            .insert(key.to_string(), value);
        self
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> ApiError {
        self.headers.push((name, value));
        self
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Response {
        let mut body = json!({"status": "error", "message": e.message});
        if let (Some(extra), Value::Object(map)) = (e.extra, &mut body) {
            map.extend(extra);
        }
        Response {
            status: e.status,
            body,
            headers: e.headers,
        }
    }
}

/// A failure of systemd is the gateway's (502), with systemd's reason but no path of this
/// machine in it (any client may read it, and a socket or unit file path is no business of
/// theirs); the whole error goes to the journal. A refusal for lack of permission is marked, so
/// that the service can say what to check.
impl From<crate::systemd::SystemdError> for ApiError {
    fn from(e: crate::systemd::SystemdError) -> ApiError {
        use crate::systemd::SystemdError;
        let full = e.to_string();
        let message = match &e {
            SystemdError::Failed(m) if m.starts_with("cannot reach the system bus") => {
                "cannot reach systemd (the system bus does not answer): see the service's journal"
                    .to_string()
            }
            _ => without_paths(&full),
        };
        if message != full {
            crate::log_err!("systemd failed: {full}");
        }
        let mut error = ApiError::new(502, message);
        error.denied = matches!(e, SystemdError::Denied(_));
        match e {
            SystemdError::Job(job) => error
                .with_extra("unit", json!(job.unit))
                .with_extra("job_result", json!(job.result))
                .with_extra("result", json!(job.unit_result))
                .with_extra("journal", json!(job.journal)),
            _ => error,
        }
    }
}

/// `text` with every absolute path (a `/` that starts a word and goes on with a name) replaced
/// by `<path>`.
fn without_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let mut prev: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        let starts_word = prev.is_none_or(|p| !(p.is_alphanumeric() || "/._-".contains(p)));
        let names_something = text[i + 1..]
            .chars()
            .next()
            .is_some_and(|n| n.is_alphanumeric() || n == '_' || n == '.');
        if c == '/' && starts_word && names_something {
            out.push_str("<path>");
            while let Some(&(_, n)) = chars.peek() {
                if n.is_whitespace() || "'\"()[],;".contains(n) {
                    break;
                }
                chars.next();
                prev = Some(n);
            }
            continue;
        }
        out.push(c);
        prev = Some(c);
    }
    out
}

/// What a service is: a name for logs and a handler. Handlers must not panic on any input, and
/// must route through [`route_authorized`] before they act: the server relies on it to check a
/// request's head before it reads the body (see [`Request::checks_only`]).
pub trait Service: Send + Sync {
    /// The human-readable name reported by `/health`.
    fn name(&self) -> &'static str;
    fn handle(&self, req: &Request) -> Response;
}

/// Result of matching a request against a route table.
#[derive(Debug, PartialEq)]
pub enum RouteMatch<'a, R> {
    Found(R, Vec<&'a str>),
    /// The path exists but not for this method; carries the methods it has (for `Allow:`).
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// Matches `path` against patterns such as `/models/{}/start`, where `{}` is one non-empty segment.
/// Returns the route's tag and the captured segments.
pub fn route<'a, R: Copy>(
    routes: &[(Method, &str, R)],
    method: Method,
    path: &'a str,
) -> RouteMatch<'a, R> {
    let mut allowed = Vec::new();
    for &(m, pattern, tag) in routes {
        if let Some(captures) = match_pattern(pattern, path) {
            // HEAD is answered wherever GET is.
            if m == method || (method == Method::Head && m == Method::Get) {
                MATCHED_ROUTE.with(|r| *r.borrow_mut() = Some(pattern.to_string()));
                return RouteMatch::Found(tag, captures);
            }
            if !allowed.contains(&m) {
                allowed.push(m);
            }
        }
    }
    if allowed.is_empty() {
        RouteMatch::NotFound
    } else {
        RouteMatch::MethodNotAllowed(allowed)
    }
}

fn match_pattern<'a>(pattern: &str, path: &'a str) -> Option<Vec<&'a str>> {
    // A trailing slash is the same resource, as Flask's clients may send either.
    let path = if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    let mut captures = Vec::new();
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return Some(captures),
            (Some("{}"), Some(seg)) if !seg.is_empty() => captures.push(seg),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// Routes a request and applies the services' auth policy: every method that changes state
/// (anything but GET and HEAD) needs the bearer token; reads stay open. `Err` is the response
/// to send (404, 405 or 401), or for a [`Request::checks_only`] request whose checks passed a
/// [`CHECKS_PASSED`] answer, so that a service which routes through here first (all do) answers
/// before it acts and the server reads a body only for a request that may have one.
pub fn route_authorized<'a, R: Copy>(
    routes: &[(Method, &str, R)],
    req: &'a Request,
    auth: &auth::Auth,
) -> Result<(R, Vec<&'a str>), Response> {
    let (tag, captures) = match route(routes, req.method, &req.path) {
        RouteMatch::Found(tag, captures) => (tag, captures),
        other => return Err(route_error(other, req.method, &req.path)),
    };
    if !matches!(req.method, Method::Get | Method::Head) {
        auth.check(req)?;
    }
    if req.checks_only {
        return Err(Response::with_status(CHECKS_PASSED, Value::Null));
    }
    Ok((tag, captures))
}

/// The standard answer when [`route`] finds nothing.
pub fn route_error<R>(m: RouteMatch<'_, R>, method: Method, path: &str) -> Response {
    match m {
        RouteMatch::Found(..) => unreachable!("route_error called on a match"),
        RouteMatch::MethodNotAllowed(allowed) => {
            let names: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            ApiError::new(
                405,
                format!(
                    "method {} is not allowed on {path}: use {}",
                    method.as_str(),
                    names.join(", ")
                ),
            )
            .with_header("Allow", names.join(", "))
            .into()
        }
        RouteMatch::NotFound => ApiError::not_found(format!(
            "no such endpoint: {} {path}; GET / lists the endpoints",
            method.as_str()
        ))
        .into(),
    }
}

/// Percent-decodes one path segment; rejects invalid UTF-8 and malformed escapes.
pub fn percent_decode(segment: &str) -> Result<String, ApiError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("malformed percent-escape in {segment:?}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request(format!("{segment:?} is not UTF-8 once decoded")))
}

/// `GET /health`, the same on every service.
pub fn health(service: &dyn Service) -> Response {
    Response::ok(json!({
        "status": "healthy",
        "service": service.name(),
        "timestamp": crate::time::now_rfc3339(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &[(Method, &str, u8)] = &[
        (Method::Get, "/", 0),
        (Method::Get, "/health", 1),
        (Method::Post, "/models/{}/start", 2),
        (Method::Get, "/models/{}", 3),
    ];

    #[test]
    fn routes_match_exact_paths_and_captures() {
        assert_eq!(
            route(ROUTES, Method::Get, "/"),
            RouteMatch::Found(0, vec![])
        );
        assert_eq!(
            route(ROUTES, Method::Get, "/health/"),
            RouteMatch::Found(1, vec![])
        );
        assert_eq!(
            route(ROUTES, Method::Post, "/models/llama/start"),
            RouteMatch::Found(2, vec!["llama"])
        );
        assert_eq!(
            route(ROUTES, Method::Head, "/models/x"),
            RouteMatch::Found(3, vec!["x"])
        );
    }

    #[test]
    fn unknown_paths_are_not_found_and_wrong_methods_not_allowed() {
        assert_eq!(route(ROUTES, Method::Get, "/nope"), RouteMatch::NotFound);
        assert_eq!(
            route(ROUTES, Method::Get, "/models//start"),
            RouteMatch::NotFound
        );
        assert_eq!(
            route(ROUTES, Method::Get, "/models/a/b/start"),
            RouteMatch::NotFound
        );
        assert_eq!(
            route(ROUTES, Method::Delete, "/health"),
            RouteMatch::MethodNotAllowed(vec![Method::Get])
        );
        let r = route_error(
            route(ROUTES, Method::Put, "/health"),
            Method::Put,
            "/health",
        );
        assert_eq!(r.status, 405);
        assert_eq!(r.body["status"], "error");
        assert_eq!(r.headers, vec![("Allow", "GET".to_string())]);
        let r = route_error(route(ROUTES, Method::Get, "/x"), Method::Get, "/x");
        assert_eq!(r.status, 404);
        assert!(r.body["message"].as_str().unwrap().contains("/x"));
    }

    #[test]
    fn reads_are_open_and_every_change_needs_the_token() {
        let auth = auth::Auth::from_token("0123456789abcdef0123").unwrap();
        let routes: &[(Method, &str, u8)] = &[
            (Method::Get, "/x", 0),
            (Method::Post, "/x", 1),
            (Method::Delete, "/x/{}", 2),
        ];
        assert_eq!(
            route_authorized(routes, &Request::new(Method::Get, "/x"), &auth)
                .unwrap()
                .0,
            0
        );
        assert_eq!(
            route_authorized(routes, &Request::new(Method::Post, "/x"), &auth)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            route_authorized(routes, &Request::new(Method::Delete, "/x/1"), &auth)
                .unwrap_err()
                .status,
            401
        );
        let with = Request::new(Method::Post, "/x")
            .with_header("Authorization", "Bearer 0123456789abcdef0123");
        assert_eq!(route_authorized(routes, &with, &auth).unwrap().0, 1);
        // A head alone gets its checks, and a pass, never the action.
        let mut head = with.clone();
        head.checks_only = true;
        assert_eq!(
            route_authorized(routes, &head, &auth).unwrap_err().status,
            CHECKS_PASSED
        );
        let mut head = Request::new(Method::Post, "/x");
        head.checks_only = true;
        assert_eq!(
            route_authorized(routes, &head, &auth).unwrap_err().status,
            401
        );
        // Unknown routes and methods are 404/405 before auth is asked.
        assert_eq!(
            route_authorized(routes, &Request::new(Method::Post, "/nope"), &auth)
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(
            route_authorized(routes, &Request::new(Method::Put, "/x"), &auth)
                .unwrap_err()
                .status,
            405
        );
    }

    #[test]
    fn json_bodies_must_be_objects() {
        let req = |b: &str| Request::new(Method::Post, "/").with_body(b);
        let example = r#"{"n": 5}"#;
        assert!(req("").json_object(example).unwrap().is_empty());
        assert_eq!(req(r#"{"n": 3}"#).json_object(example).unwrap()["n"], 3);
        for bad in ["{", "[1]", "3", "\"x\"", "null", "{\"a\":}"] {
            let e = req(bad).json_object(example).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
        }
        let e = req("[1]").json_object(example).unwrap_err();
        assert!(e.message.ends_with(example), "{}", e.message);
    }

    #[test]
    fn only_permission_refusals_take_the_services_hint() {
        let denied = ApiError {
            denied: true,
            ..ApiError::new(502, "Access denied")
        };
        let hinted = denied.with_denied_hint("check the rule");
        assert_eq!(hinted.message, "Access denied: check the rule");
        assert!(!hinted.denied);
        let other = ApiError::new(502, "unit failed").with_denied_hint("check the rule");
        assert_eq!(other.message, "unit failed");
    }

    #[test]
    fn errors_render_as_json_with_extras() {
        let r: Response = ApiError::new(409, "busy")
            .with_extra("existing", json!({"id": 1}))
            .into();
        assert_eq!(r.status, 409);
        assert_eq!(
            r.body,
            json!({"status": "error", "message": "busy", "existing": {"id": 1}})
        );
    }

    #[test]
    fn systemd_failures_show_clients_no_path() {
        use crate::systemd::SystemdError;
        let unreachable = SystemdError::Failed(
            "cannot reach the system bus: I/O error: connecting to unix:path=/run/dbus/system_bus_socket: No such file or directory".into(),
        );
        let e = ApiError::from(unreachable);
        assert_eq!(e.status, 502);
        assert!(
            e.message.starts_with("cannot reach systemd"),
            "{}",
            e.message
        );
        assert!(!e.message.contains('/'), "{}", e.message);
        let failed = SystemdError::Failed(
            "Unit file /etc/systemd/system/x.service is masked (see \"/usr/lib/systemd\").".into(),
        );
        let e = ApiError::from(failed);
        assert_eq!(
            e.message,
            "systemd: Unit file <path> is masked (see \"<path>\")."
        );
        // What is not a path stays: the reason must stay useful.
        assert_eq!(
            without_paths("I/O error on x.service, 1/2 done, a / b"),
            "I/O error on x.service, 1/2 done, a / b"
        );
        let denied = ApiError::from(SystemdError::Denied("Access denied".into()));
        assert!(denied.denied);
        assert_eq!(denied.message, "permission denied by polkit: Access denied");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b").unwrap(), "a b");
        assert_eq!(percent_decode("%2e%2E%2fx").unwrap(), "../x");
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%e").is_err());
        assert!(percent_decode("%ff").is_err());
    }
}
