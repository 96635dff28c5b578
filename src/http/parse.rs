//! Finds and parses an HTTP/1.x request head within fixed bounds, without I/O: the server feeds it
//! bytes, [`HeadScan`] looks at each byte once to find the end and enforce the bounds, and
//! `httparse` parses the complete head.

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

fn request_line_too_long() -> ApiError {
    too_large(format!(
        "the request line is longer than {MAX_REQUEST_LINE} bytes: send a shorter URL"
    ))
}

fn headers_too_large() -> ApiError {
    too_large(format!(
        "the request headers are larger than {MAX_HEADER_BYTES} bytes: send fewer or shorter headers"
    ))
}

fn too_many_headers() -> ApiError {
    too_large(format!(
        "the request has more than {MAX_HEADER_LINES} header lines: send fewer headers"
    ))
}

/// Where the search for the end of a head stands: each byte is looked at once, however the head
/// arrives, and a bound is judged on what any continuation would give, so that the answer is the
/// same whether the bytes come whole or split anywhere (a read ending just after a CR included).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadScan {
    /// Next byte to look at.
    pos: usize,
    /// Start of the line being read.
    line_start: usize,
    /// Start of the request line, past the tolerated leading empty lines.
    head_start: usize,
    /// End of the request line (its line break included), once seen.
    headers_start: Option<usize>,
    header_lines: usize,
    leading_empty: usize,
}

impl HeadScan {
    /// Looks at the bytes of `buf` past those seen before (`buf` only grows between calls).
    /// `Ok(Some(len))`: the head is complete and takes `buf[..len]`; `Ok(None)`: read more.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ApiError> {
        while let Some(nl) = buf[self.pos..].iter().position(|&c| c == b'\n') {
            let end = self.pos + nl + 1;
            self.pos = end;
            let line = trim_cr(&buf[self.line_start..end - 1]);
            self.line_start = end;
            match self.headers_start {
                None if line.is_empty() && self.leading_empty < MAX_LEADING_EMPTY => {
                    self.leading_empty += 1;
                    self.head_start = end;
                }
                None if line.len() > MAX_REQUEST_LINE => return Err(request_line_too_long()),
                None => self.headers_start = Some(end),
                Some(_) if line.is_empty() => return Ok(Some(end)),
                Some(headers_start) => {
                    if end - headers_start > MAX_HEADER_BYTES {
                        return Err(headers_too_large());
                    }
                    self.header_lines += 1;
                    if self.header_lines > MAX_HEADER_LINES {
                        return Err(too_many_headers());
                    }
                }
            }
        }
        self.pos = buf.len();
        // The line so far, less a CR that may be the start of its line break.
        let partial = trim_cr(&buf[self.line_start..]);
        match self.headers_start {
            None if partial.len() > MAX_REQUEST_LINE => Err(request_line_too_long()),
            // A header line still open ends with at least its LF.
            Some(h) if !partial.is_empty() && self.pos + 1 - h > MAX_HEADER_BYTES => {
                Err(headers_too_large())
            }
            _ => Ok(None),
        }
    }
}

/// `Ok(None)`: the head is not complete yet and within bounds, read more. `Err`: the response to
/// send before closing (431 past a bound, 400 for a malformed head, 505 for another version).
/// Lines end with CRLF or a bare LF. A server reading in pieces keeps one [`HeadScan`] and calls
/// [`parse_scanned`]; this is the same for a buffer at hand.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ApiError> {
    let mut scan = HeadScan::default();
    match scan.scan(buf)? {
        Some(len) => parse_scanned(&buf[..len], &scan).map(Some),
        None => Ok(None),
    }
}

/// Parses the complete head `head` (all of it, as [`HeadScan::scan`] found it in `scan`).
pub fn parse_scanned(head: &[u8], scan: &HeadScan) -> Result<Head, ApiError> {
    let bad_line = || {
        ApiError::bad_request(
            "malformed request line: send \"METHOD /path HTTP/1.1\" (one space between each)",
        )
    };
    let request_line =
        trim_cr(&head[scan.head_start..scan.headers_start.unwrap_or(head.len()) - 1]);
    // httparse knows only 1.0 and 1.1; another HTTP version is 505, not a malformed line.
    let mut parts = request_line.split(|&c| c == b' ');
    if let (Some(_), Some(_), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
        && version.starts_with(b"HTTP/")
        && version != b"HTTP/1.0"
        && version != b"HTTP/1.1"
    {
        return Err(ApiError::new(
            505,
            "only HTTP/1.0 and HTTP/1.1 are served: send the request as HTTP/1.1",
        ));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADER_LINES];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(&head[scan.head_start..]) {
        Ok(httparse::Status::Complete(_)) => {}
        // The scan found the blank line, so httparse sees the whole head.
        Ok(httparse::Status::Partial) => return Err(bad_line()),
        Err(httparse::Error::TooManyHeaders) => return Err(too_many_headers()),
        Err(
            httparse::Error::HeaderName | httparse::Error::HeaderValue | httparse::Error::NewLine,
        ) if scan.header_lines > 0 => return Err(bad_header()),
        Err(_) => return Err(bad_line()),
    }
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(bad_line());
    };
    // httparse takes bytes past ASCII in the target; no route has them, and they are not logged.
    if target.bytes().any(|c| c.is_ascii_control() || c > 0x7e) {
        return Err(bad_line());
    }
    let headers = parsed
        .headers
        .iter()
        .map(|h| {
            let value = std::str::from_utf8(h.value).map_err(|_| {
                ApiError::bad_request(format!(
                    "the value of header {:?} is not UTF-8: send it as ASCII",
                    h.name
                ))
            })?;
            Ok((
                h.name.to_ascii_lowercase(),
                value.trim_matches([' ', '\t']).to_string(),
            ))
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        http11: version == 1,
        headers,
        len: head.len(),
    })
}

fn bad_header() -> ApiError {
    ApiError::bad_request(
        "malformed header line: send each header as \"Name: value\" on one line, with a token as the name and no NUL, CR or LF in the value",
    )
}

fn trim_cr(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
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

    /// Feeds `buf` to one scan in pieces cut at `cuts`, as a server reading it would.
    fn in_pieces(buf: &[u8], cuts: &[usize]) -> Result<Option<Head>, ApiError> {
        let mut scan = HeadScan::default();
        for &cut in cuts.iter().chain([&buf.len()]) {
            if let Some(len) = scan.scan(&buf[..cut])? {
                return parse_scanned(&buf[..len], &scan).map(Some);
            }
        }
        Ok(None)
    }

    /// The answer (a head's length, "more", or a status) for `buf` whole.
    fn outcome(r: Result<Option<Head>, ApiError>) -> Result<Option<usize>, u16> {
        r.map(|h| h.map(|h| h.len)).map_err(|e| e.status)
    }

    /// Heads at, and one byte past, each bound.
    fn heads_at_the_bounds() -> Vec<Vec<u8>> {
        let line = |target_len: usize| {
            // "GET " + target + " HTTP/1.1" is the request line.
            let mut l = b"GET /".to_vec();
            l.resize(4 + target_len, b'a');
            l.extend_from_slice(b" HTTP/1.1\r\n");
            l
        };
        let exact_line = line(MAX_REQUEST_LINE - 13);
        assert_eq!(exact_line.len(), MAX_REQUEST_LINE + 2);
        let headers = |total: usize| {
            // One header line "X: aaa...\r\n" of `total` bytes.
            let mut h = b"X: ".to_vec();
            h.resize(total - 2, b'a');
            h.extend_from_slice(b"\r\n");
            h
        };
        let mut out = Vec::new();
        for (l, h) in [
            (MAX_REQUEST_LINE - 13, 20),
            (MAX_REQUEST_LINE - 12, 20),
            (10, MAX_HEADER_BYTES),
            (10, MAX_HEADER_BYTES + 1),
        ] {
            let mut head = line(l);
            head.extend(headers(h));
            head.extend_from_slice(b"\r\n");
            out.push(head);
        }
        out
    }

    #[test]
    fn a_bound_gives_the_same_answer_however_the_bytes_are_split() {
        let expected = [
            Ok(Some(MAX_REQUEST_LINE + 2 + 22)),
            Err(431),
            Ok(Some(4 + 10 + 11 + MAX_HEADER_BYTES + 2)),
            Err(431),
        ];
        for (head, want) in heads_at_the_bounds().iter().zip(expected) {
            assert_eq!(outcome(parse_head(head)), want);
            // A read ending just after each CR, just before it, and a byte at a time.
            let crs: Vec<usize> = (0..head.len()).filter(|&i| head[i] == b'\r').collect();
            assert_eq!(
                outcome(in_pieces(
                    head,
                    &crs.iter().map(|i| i + 1).collect::<Vec<_>>()
                )),
                want
            );
            assert_eq!(outcome(in_pieces(head, &crs)), want);
            let every: Vec<usize> = (1..head.len()).collect();
            assert_eq!(outcome(in_pieces(head, &every)), want);
        }
        // Small heads split at every point, including bare LFs and leading empty lines.
        for text in [
            "GET /x HTTP/1.1\r\nHost: h\r\n\r\n",
            "\r\n\nPOST / HTTP/1.0\nA: b\n\n",
            "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
        ] {
            let whole = outcome(parse_head(text.as_bytes()));
            for cut in 0..text.len() {
                assert_eq!(
                    outcome(in_pieces(text.as_bytes(), &[cut])),
                    whole,
                    "{text:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn what_httparse_rejects_is_400() {
        for bad in [
            &b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \x01\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET / HTTP/1.1\r\nX\x00Y: a\r\n\r\n",
            b"GET /a\x01b HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\rX: a\r\n\r\n",
            b"GET\t/ HTTP/1.1\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
        ] {
            assert_eq!(status(bad), 400, "{:?}", String::from_utf8_lossy(bad));
        }
        // Bytes past ASCII in a value are kept as they came only if they are UTF-8: any other
        // would have to be widened (three bytes each) to become text.
        let e = parse_head(b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("not UTF-8"), "{}", e.message);
        let h = head("GET / HTTP/1.1\r\nX: caf\u{e9}\t\r\n\r\n");
        assert_eq!(h.header("x"), Some("caf\u{e9}"));
    }
}
