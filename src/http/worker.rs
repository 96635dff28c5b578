//! The worker threads: each answers complete requests, then gives the connection back to the
//! I/O thread with whatever of the answer the socket did not take at once, so that a client that
//! reads slowly or not at all never holds a worker.

use super::conn::{Conn, Phase};
use super::{ApiError, CHECKS_PASSED, Method, Request, Response, Service};
use crate::{log_err, log_info, log_notice};
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A complete request for a worker, with its connection.
pub struct Job {
    pub conn: Conn,
    pub req: Request,
    pub keep_alive: bool,
}

/// A worker thread: answers complete requests, and gives connections that go on (kept alive, or
/// with an answer still to write) back to the I/O thread.
pub struct Worker {
    pub jobs: Arc<Mutex<Receiver<Job>>>,
    pub back: Sender<Conn>,
    pub wake: UnixStream,
    pub service: Arc<dyn Service>,
    pub activity: Arc<super::timing::Activity>,
    /// Requests handed to a worker and not yet given back: the I/O thread waits for them before
    /// it ends.
    pub in_flight: Arc<AtomicUsize>,
}

impl Worker {
    pub fn run(self) {
        loop {
            let job = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(Job {
                mut conn,
                req,
                keep_alive,
            }) = job
            else {
                return;
            };
            let started = Instant::now();
            let response = handle(&*self.service, &req);
            let bytes = render(&response, req.method == Method::Head, keep_alive);
            log_access(&req, &response, started);
            drop(req);
            conn.request_bytes = 0;
            match conn.send(bytes) {
                Ok(true) if keep_alive => self.give_back(conn),
                Ok(true) => {
                    let _ = conn.stream.shutdown(Shutdown::Write);
                }
                Ok(false) => {
                    conn.phase = Phase::Writing { keep_alive };
                    self.give_back(conn);
                }
                // The client is gone: nothing more to send it.
                Err(_) => {}
            }
            self.activity.touch();
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn give_back(&self, conn: Conn) {
        if self.back.send(conn).is_ok() {
            let _ = (&self.wake).write(&[1]);
        }
    }
}

/// Every routed request goes through here (its head checks in the I/O thread, the whole request
/// in a worker): the one place it is counted, by route pattern and status (`crate::metrics`).
pub fn handle(service: &dyn Service, req: &Request) -> Response {
    let _ = super::take_matched_route();
    let response = catch_unwind(AssertUnwindSafe(|| service.handle(req))).unwrap_or_else(|_| {
        ApiError::new(
            500,
            "internal error while handling the request; see the service's journal",
        )
        .into()
    });
    let route = super::take_matched_route();
    if response.status != CHECKS_PASSED {
        crate::metrics::count_request(req.method.as_str(), route.as_deref(), response.status);
    }
    response
}

fn log_access(req: &Request, response: &Response, started: Instant) {
    let status = response.status;
    let micros = started.elapsed().as_micros();
    let line = format!(
        "{} {} {status} {micros}us",
        req.method.as_str(),
        printable(&req.path)
    );
    match status {
        500.. => log_err!(
            "{line}: {}",
            response.body["message"].as_str().unwrap_or("")
        ),
        400.. => log_notice!(
            "{line}: {}",
            response.body["message"].as_str().unwrap_or("")
        ),
        // Successful reads are the bulk: buffered (see crate::log). Changes are logged at once.
        _ if matches!(req.method, Method::Get | Method::Head) => {
            crate::log::access(format_args!("{line}"))
        }
        _ => log_info!("{line}"),
    }
}

/// The response as bytes: JSON body, its length, and `Connection: close` unless kept alive.
pub fn render(response: &Response, head_only: bool, keep_alive: bool) -> Vec<u8> {
    // A response with a Content-Type of its own (Response::text) is sent as it is.
    let own_type = response.headers.iter().any(|(n, _)| *n == "Content-Type");
    let body = match &response.body {
        serde_json::Value::String(text) if own_type => text.clone().into_bytes(),
        other => {
            let mut body = serde_json::to_vec(other).unwrap_or_default();
            body.push(b'\n');
            body
        }
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n{}Content-Length: {}\r\nDate: {}\r\n",
        response.status,
        reason(response.status),
        if own_type {
            ""
        } else {
            "Content-Type: application/json\r\n"
        },
        body.len(),
        chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT"),
    );
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    for (name, value) in &response.headers {
        // Values are ours, but a line break in one would split the response.
        if !value.contains(['\r', '\n']) {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&body);
    }
    bytes
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// A path as it may appear in a log line: control characters escaped, at most 200 characters.
pub fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(200).flat_map(char::escape_debug).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Response {
        fn with_header_for_test(mut self, name: &'static str, value: &str) -> Response {
            self.headers.push((name, value.to_string()));
            self
        }
    }
    #[test]
    fn responses_say_their_length_and_whether_the_connection_ends() {
        let r = Response::ok(serde_json::json!({"a": 1}))
            .with_header_for_test("Allow", "GET")
            .with_header_for_test("X-Bad", "a\r\nInjected: 1");
        let text = String::from_utf8(render(&r, false, true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 8\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"a\":1}\n"), "{text}");
        assert!(text.contains("Allow: GET\r\n") && !text.contains("Injected"));
        assert!(!text.contains("Connection: close"));
        let head = String::from_utf8(render(&r, true, false)).unwrap();
        assert!(head.contains("Content-Length: 8\r\nDate: "), "{head}");
        assert!(head.contains("Connection: close\r\n") && head.ends_with("\r\n\r\n"));
        let e: Response = ApiError::new(431, "too big").into();
        let text = String::from_utf8(render(&e, false, false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(
            text.contains(r#"{"message":"too big","status":"error"}"#),
            "{text}"
        );
    }
    #[test]
    fn log_paths_are_escaped_and_bounded() {
        assert_eq!(printable("/a\nb"), "/a\\nb");
        assert_eq!(printable(&"x".repeat(300)).chars().count(), 201);
    }
}
