//! Serves a [`Service`] with tiny_http on a few worker threads and exits when idle.
//!
//! Under socket activation systemd owns the listening socket: when we exit, connections that
//! arrive later wait in its backlog and start us again, so exiting when idle loses nothing.

use super::{ApiError, MAX_BODY_BYTES, Method, Request, Service};
use crate::{log_err, log_info, log_notice, log_warn, systemd};
use std::io::Read;
use std::net::TcpListener;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Idle period after which a socket-activated service exits when no request came.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable (seconds) that overrides [`DEFAULT_IDLE_TIMEOUT`]; `0` never exits.
pub const IDLE_TIMEOUT_ENV: &str = "HOMELAB_IDLE_TIMEOUT";

#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// `None`: serve until killed.
    pub idle_timeout: Option<Duration>,
    pub workers: usize,
}

impl ServeOptions {
    /// Options from the environment: `HOMELAB_IDLE_TIMEOUT`, and one worker per CPU (at least two).
    pub fn from_env() -> anyhow::Result<ServeOptions> {
        let idle_timeout = parse_idle_timeout(std::env::var(IDLE_TIMEOUT_ENV).ok().as_deref())?;
        let workers = thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8);
        Ok(ServeOptions {
            idle_timeout,
            workers,
        })
    }
}

/// `None` (unset) is the default; `0` means never exit.
pub fn parse_idle_timeout(value: Option<&str>) -> anyhow::Result<Option<Duration>> {
    match value.map(str::trim) {
        None | Some("") => Ok(Some(DEFAULT_IDLE_TIMEOUT)),
        Some(v) => match v.parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(secs) => Ok(Some(Duration::from_secs(secs))),
            Err(_) => anyhow::bail!(
                "{IDLE_TIMEOUT_ENV}={v:?} is not a whole number of seconds: use e.g. {IDLE_TIMEOUT_ENV}=30, or 0 to never exit"
            ),
        },
    }
}

struct Activity {
    last: Mutex<Instant>,
    in_flight: AtomicUsize,
    stopping: AtomicBool,
}

impl Activity {
    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

/// Serves until idle (or forever) and tells systemd it is ready once requests can be answered.
pub fn serve(
    listener: TcpListener,
    service: Arc<dyn Service>,
    opts: &ServeOptions,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    // Before any thread starts, so that all inherit the mask: SIGTERM and SIGINT then reach us
    // only through `signals`, and a stop finishes the requests in flight and flushes the log.
    let mut signals = stop_signals();
    let server = Arc::new(
        tiny_http::Server::from_listener(listener, None)
            .map_err(|e| anyhow::anyhow!("cannot serve on {addr}: {e}"))?,
    );
    let activity = Arc::new(Activity {
        last: Mutex::new(Instant::now()),
        in_flight: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
    });

    let workers: Vec<_> = (0..opts.workers.max(1))
        .map(|i| {
            let (server, service, activity) = (server.clone(), service.clone(), activity.clone());
            thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || worker(&server, &*service, &activity))
        })
        .collect::<Result<_, _>>()?;

    systemd::notify_ready(&format!("serving {} on {addr}", service.name()));
    match opts.idle_timeout {
        Some(idle) => log_info!(
            "{} listening on {addr}, exits after {}s idle",
            service.name(),
            idle.as_secs()
        ),
        None => log_info!("{} listening on {addr}", service.name()),
    }

    let why = loop {
        thread::sleep(crate::log::FLUSH_EVERY);
        crate::log::flush();
        if let Some(sig) = signals
            .as_mut()
            .and_then(|s| s.read_signal().ok().flatten())
        {
            let name = nix::sys::signal::Signal::try_from(sig.ssi_signo as i32)
                .map_or_else(|_| sig.ssi_signo.to_string(), |s| s.to_string());
            break format!("got {name}, exiting");
        }
        if let Some(idle) = opts.idle_timeout
            && activity.idle_for() >= idle
            && activity.in_flight.load(Ordering::SeqCst) == 0
        {
            break format!(
                "idle for {}s, exiting; systemd keeps the socket",
                idle.as_secs()
            );
        }
    };
    systemd::notify_stopping();
    log_info!("{why}");
    activity.stopping.store(true, Ordering::SeqCst);
    // Unblock markers queue behind requests already parsed, so those are answered first.
    for _ in &workers {
        server.unblock();
    }
    for w in workers {
        let _ = w.join();
    }
    // tiny_http's Drop wakes its accept thread by connecting to the listening address; under
    // socket activation that connection would wait in systemd's socket and start us again.
    std::mem::forget(server);
    crate::log::flush();
    Ok(())
}

/// SIGTERM and SIGINT, blocked for this thread (and the threads it starts) and readable without
/// blocking; `None` (the default actions stay) if that fails.
fn stop_signals() -> Option<nix::sys::signalfd::SignalFd> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC);
    match fd {
        Ok(fd) if mask.thread_block().is_ok() => Some(fd),
        Ok(_) | Err(_) => {
            log_warn!(
                "cannot take SIGTERM through a signalfd; a stop may lose the last access lines"
            );
            None
        }
    }
}

fn worker(server: &tiny_http::Server, service: &dyn Service, activity: &Activity) {
    loop {
        match server.recv() {
            Ok(rq) => {
                activity.in_flight.fetch_add(1, Ordering::SeqCst);
                activity.touch();
                respond(rq, service);
                activity.touch();
                activity.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            Err(_) if activity.stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                // accept() errors (EMFILE, ...) arrive here; do not spin on them.
                log_warn!("accepting a connection failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn respond(mut rq: tiny_http::Request, service: &dyn Service) {
    let started = Instant::now();
    let method = Method::parse(rq.method().as_str());
    let (path, query) = match rq.url().split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (rq.url().to_string(), String::new()),
    };
    let response = match read_request(&mut rq, method, path.clone(), query) {
        Ok(req) => catch_unwind(AssertUnwindSafe(|| service.handle(&req))).unwrap_or_else(|_| {
            ApiError::new(
                500,
                "internal error while handling the request; see the service's journal",
            )
            .into()
        }),
        Err(e) => e.into(),
    };
    let status = response.status;
    let mut body = serde_json::to_vec(&response.body).unwrap_or_default();
    body.push(b'\n');
    let mut out = tiny_http::Response::from_data(body).with_status_code(status);
    out.add_header(header("Content-Type", "application/json"));
    for (name, value) in &response.headers {
        out.add_header(header(name, value));
    }
    if let Err(e) = rq.respond(out) {
        log_warn!(
            "{} {} : writing the response failed: {e}",
            method.as_str(),
            printable(&path)
        );
    }
    let micros = started.elapsed().as_micros();
    let line = format!(
        "{} {} {status} {micros}us",
        method.as_str(),
        printable(&path)
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
        _ if matches!(method, Method::Get | Method::Head) => {
            crate::log::access(format_args!("{line}"))
        }
        _ => log_info!("{line}"),
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values are ASCII")
}

/// Reads the body within [`MAX_BODY_BYTES`]; a declared length over it is refused before reading.
fn read_request(
    rq: &mut tiny_http::Request,
    method: Method,
    path: String,
    query: String,
) -> Result<Request, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            format!(
                "the request body is larger than {MAX_BODY_BYTES} bytes: send a smaller JSON object"
            ),
        )
    };
    if rq.body_length().is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let headers = rq
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_ascii_lowercase(),
                h.value.as_str().to_string(),
            )
        })
        .collect();
    let mut body = Vec::new();
    // Chunked bodies have no declared length: read one byte past the limit to tell.
    rq.as_reader()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// A path as it may appear in a log line: control characters escaped, at most 200 characters.
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(200).flat_map(char::escape_debug).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_timeout_parsing() {
        assert_eq!(
            parse_idle_timeout(None).unwrap(),
            Some(DEFAULT_IDLE_TIMEOUT)
        );
        assert_eq!(
            parse_idle_timeout(Some("2")).unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(parse_idle_timeout(Some(" 0 ")).unwrap(), None);
        let e = parse_idle_timeout(Some("2s")).unwrap_err().to_string();
        assert!(e.contains("HOMELAB_IDLE_TIMEOUT"), "{e}");
        assert!(parse_idle_timeout(Some("-1")).is_err());
    }

    #[test]
    fn log_paths_are_escaped_and_bounded() {
        assert_eq!(printable("/a\nb"), "/a\\nb");
        assert_eq!(printable(&"x".repeat(300)).chars().count(), 201);
    }
}
