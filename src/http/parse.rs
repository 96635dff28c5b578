//! Parses an HTTP/1.x request head within fixed bounds, without I/O: the server feeds it bytes.

use super::{ApiError, MAX_BODY_BYTES};

/// Longest request line (method, target, version) we accept.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Most bytes of header lines (after the request line) we accept.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header lines we accept.
pub const MAX_HEADER_LINES: usize = 100;
/// Most bytes a complete head can take: a buffer holding more without one is refused (431).
pub const MAX_HEAD_BYTES: usize = MAX_REQUEST_LINE + MAX_HEADER_BYTES + 16;
/// Empty lines tolerated before a request line (some clients send a CRLF after a body).
const MAX_LEADING_EMPTY: usize = 4;

/// A request head: request line and headers, header names lower-cased.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// `true` for HTTP/1.1, `false` for HTTP/1.0.
    pub http11: bool,
    pub headers: Vec<(String, String)>,
    /// Bytes of the buffer the head took, the blank line included.
    pub len: usize,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a `Connection:` header lists `token` (case-insensitive).
    fn connection_has(&self, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the connection may serve another request after this one: HTTP/1.1 unless the
    /// client says `close`. An upgrade request is answered as a plain request (we upgrade to
    /// nothing) and its connection then closed.
    pub fn keep_alive(&self) -> bool {
        self.http11 && !self.connection_has("close") && !self.connection_has("upgrade")
    }

    /// The body's length from `Content-Length`; no header is no body. Bodies without a declared
    /// length (`Transfer-Encoding`) are refused with 411, lengths over [`MAX_BODY_BYTES`] with 413.
    pub fn body_length(&self) -> Result<usize, ApiError> {
        if self.header("transfer-encoding").is_some() {
            return Err(ApiError::new(
                411,
                "a request body must have a Content-Length (Transfer-Encoding is not accepted): send the body with its length",
            ));
        }
        let mut length = None;
        for (_, v) in self.headers.iter().filter(|(n, _)| n == "content-length") {
            let n: u64 = v
                .trim()
                .parse()
                .ok()
                .filter(|_| v.trim().bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("Content-Length {v:?} is not a number of bytes"))
                })?;
            if length.is_some_and(|l| l != n) {
                return Err(ApiError::bad_request(
                    "the request has two different Content-Length headers: send one",
                ));
            }
            length = Some(n);
        }
        match length {
            Some(n) if n > MAX_BODY_BYTES as u64 => Err(ApiError::new(
                413,
                format!(
                    "the request body is larger than {MAX_BODY_BYTES} bytes: send a smaller JSON object"
                ),
            )),
            Some(n) => Ok(n as usize),
            None => Ok(0),
        }
    }
}

fn too_large(what: String) -> ApiError {
    ApiError::new(431, what)
}

/// `Ok(None)`: the head is not complete yet and within bounds, read more. `Err`: the response to
/// send before closing (431 past a bound, 400 for a malformed head, 505 for another version).
/// Lines end with CRLF or a bare LF.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ApiError> {
    let mut start = 0;
    for _ in 0..MAX_LEADING_EMPTY {
        if buf[start..].starts_with(b"\r\n") {
            start += 2;
        } else if buf[start..].starts_with(b"\n") {
            start += 1;
        }
    }
    let Some(nl) = find_nl(&buf[start..]) else {
        if buf.len() - start > MAX_REQUEST_LINE {
            return Err(too_large(format!(
                "the request line is longer than {MAX_REQUEST_LINE} bytes: send a shorter URL"
            )));
        }
        return Ok(None);
    };
    let line = trim_cr(&buf[start..start + nl]);
    if line.len() > MAX_REQUEST_LINE {
        return Err(too_large(format!(
            "the request line is longer than {MAX_REQUEST_LINE} bytes: send a shorter URL"
        )));
    }
    let headers_start = start + nl + 1;
    let mut headers = Vec::new();
    let mut pos = headers_start;
    let end = loop {
        let header_bytes = pos - headers_start;
        let Some(nl) = find_nl(&buf[pos..]) else {
            if buf.len() - headers_start > MAX_HEADER_BYTES {
                return Err(headers_too_large());
            }
            return Ok(None);
        };
        let raw = trim_cr(&buf[pos..pos + nl]);
        pos += nl + 1;
        if raw.is_empty() {
            break pos;
        }
        if header_bytes + nl + 1 > MAX_HEADER_BYTES {
            return Err(headers_too_large());
        }
        if headers.len() == MAX_HEADER_LINES {
            return Err(too_large(format!(
                "the request has more than {MAX_HEADER_LINES} header lines: send fewer headers"
            )));
        }
        headers.push(raw);
    };
    let (method, target, http11) = request_line(line)?;
    let headers = headers
        .into_iter()
        .map(header_line)
        .collect::<Result<_, _>>()?;
    Ok(Some(Head {
        method,
        target,
        http11,
        headers,
        len: end,
    }))
}

fn headers_too_large() -> ApiError {
    too_large(format!(
        "the request headers are larger than {MAX_HEADER_BYTES} bytes: send fewer or shorter headers"
    ))
}

fn find_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

fn trim_cr(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

fn request_line(line: &[u8]) -> Result<(String, String, bool), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "malformed request line: send \"METHOD /path HTTP/1.1\" (one space between each)",
        )
    };
    let mut parts = line.split(|&c| c == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !is_token(method)
        || target.is_empty()
        || target.iter().any(|c| c.is_ascii_control() || *c > 0x7e)
    {
        return Err(bad());
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        v if v.starts_with(b"HTTP/") => {
            return Err(ApiError::new(
                505,
                "only HTTP/1.0 and HTTP/1.1 are served: send the request as HTTP/1.1",
            ));
        }
        _ => return Err(bad()),
    };
    // Both are ASCII: checked above.
    Ok((
        String::from_utf8_lossy(method).into_owned(),
        String::from_utf8_lossy(target).into_owned(),
        http11,
    ))
}

fn header_line(raw: &[u8]) -> Result<(String, String), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("malformed header line: {why}"));
    if raw[0] == b' ' || raw[0] == b'\t' {
        return Err(bad(
            "folded header lines are not accepted, send each on one line",
        ));
    }
    let colon = raw
        .iter()
        .position(|&c| c == b':')
        .ok_or_else(|| bad("a header needs \"Name: value\""))?;
    let name = &raw[..colon];
    if !is_token(name) {
        return Err(bad("the header name is not a token"));
    }
    let value = String::from_utf8_lossy(&raw[colon + 1..])
        .trim_matches([' ', '\t'])
        .to_string();
    Ok((String::from_utf8_lossy(name).to_ascii_lowercase(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Head {
        parse_head(s.as_bytes()).unwrap().unwrap()
    }

    fn status(b: &[u8]) -> u16 {
        parse_head(b).unwrap_err().status
    }

    #[test]
    fn parses_a_head_and_says_how_long_it_is() {
        let text = "POST /x?a=1 HTTP/1.1\r\nHost: h\r\nAuthorization:  Bearer t \r\n\r\n{}";
        let h = head(text);
        assert_eq!(h.method, "POST");
        assert_eq!(h.target, "/x?a=1");
        assert!(h.http11);
        assert_eq!(h.header("authorization"), Some("Bearer t"));
        assert_eq!(&text[h.len..], "{}");
        // Bare LF, a leading empty line, HTTP/1.0.
        let h = head("\r\nGET / HTTP/1.0\nX: y\n\n");
        assert!(!h.http11);
        assert_eq!(h.headers, vec![("x".to_string(), "y".to_string())]);
    }

    #[test]
    fn an_incomplete_head_within_bounds_asks_for_more() {
        for part in [
            "",
            "GET",
            "GET / HTTP/1.1\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n",
        ] {
            assert_eq!(parse_head(part.as_bytes()).unwrap(), None, "{part:?}");
        }
    }

    #[test]
    fn a_long_request_line_is_431_even_before_its_end() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_REQUEST_LINE + 1, b'a');
        assert_eq!(status(&line), 431);
        line.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(status(&line), 431);
        // At the bound it is fine.
        let mut ok = b"GET /".to_vec();
        ok.resize(MAX_REQUEST_LINE - 9, b'a');
        ok.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert!(parse_head(&ok).unwrap().is_some());
    }

    #[test]
    fn headers_are_bounded_in_bytes_and_lines() {
        // One endless header line: refused once past the bound, without its end.
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(16 + MAX_HEADER_BYTES + 1, b'a');
        assert_eq!(status(&big), 431);
        // Many short lines adding up past the bound.
        let mut many = String::from("GET / HTTP/1.1\r\n");
        while many.len() < MAX_HEADER_BYTES + 100 {
            many.push_str(&format!("X: {}\r\n", "b".repeat(1000)));
        }
        many.push_str("\r\n");
        assert_eq!(status(many.as_bytes()), 431);
        // 100 lines pass, 101 do not.
        let lines = |n: usize| {
            let mut s = String::from("GET / HTTP/1.1\r\n");
            for i in 0..n {
                s.push_str(&format!("X-{i}: v\r\n"));
            }
            s + "\r\n"
        };
        assert_eq!(
            head(&lines(MAX_HEADER_LINES)).headers.len(),
            MAX_HEADER_LINES
        );
        assert_eq!(status(lines(MAX_HEADER_LINES + 1).as_bytes()), 431);
        // An incomplete head never grows past MAX_HEAD_BYTES unrefused.
        let mut slow = b"GET / HTTP/1.1\r\n".to_vec();
        while slow.len() <= MAX_HEAD_BYTES {
            slow.extend_from_slice(b"Y: z\r\n");
        }
        assert!(parse_head(&slow).is_err());
    }

    #[test]
    fn malformed_heads_are_400_and_other_versions_505() {
        for bad in [
            "GET  / HTTP/1.1\r\n\r\n",
            "GET /\r\n\r\n",
            "GET / HTTP/1.1 x\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET / FTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
        ] {
            assert_eq!(status(bad.as_bytes()), 400, "{bad:?}");
        }
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 505);
    }

    #[test]
    fn body_length_and_connection_reuse() {
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n").body_length().unwrap(), 0);
        let h = head("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(h.body_length().unwrap(), 12);
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(head(&big).body_length().unwrap_err().status, 413);
        let huge = "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(head(huge).body_length().unwrap_err().status, 400);
        for bad in ["-1", "1e3", "+5", ""] {
            let h = head(&format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n"));
            assert_eq!(h.body_length().unwrap_err().status, 400, "{bad:?}");
        }
        let two = "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(head(two).body_length().unwrap_err().status, 400);
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(head(chunked).body_length().unwrap_err().status, 411);

        assert!(head("GET / HTTP/1.1\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        // An upgrade has no body and ends the connection after its answer.
        let up =
            head("GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(!up.keep_alive());
        assert_eq!(up.body_length().unwrap(), 0);
    }
}
