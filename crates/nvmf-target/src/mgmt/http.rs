//! A minimal HTTP/1.1 server side for the RPC TCP listener and `/metrics`:
//! one request per connection, bounded header and body sizes. Pure code: the
//! listener feeds the bytes received so far to [`parse_request`] and writes
//! what [`response`] returns.

use std::fmt;

/// Largest request head (request line plus headers).
pub const HEAD_BYTES_MAX: usize = 16 * 1024;

/// A parsed request.
pub struct Request {
    pub method: String,
    pub path: String,
    /// `Authorization: Bearer` token, if any.
    pub bearer: Option<String>,
    pub body: Vec<u8>,
}

/// Never prints the token.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// Why a request cannot be served.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Malformed head: answered with 400.
    Bad(&'static str),
    /// Body larger than allowed: answered with 413.
    TooLarge,
}

/// Parse the request at the start of `buf` (everything received so far):
/// `Ok(None)` while it is incomplete. An error is decided as soon as the head
/// is complete (or too large), without waiting for the body.
pub fn parse_request(buf: &[u8], body_max: usize) -> Result<Option<Request>, ReadError> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > HEAD_BYTES_MAX {
            return Err(ReadError::Bad("request head too large"));
        }
        return Ok(None);
    };
    if head_end > HEAD_BYTES_MAX {
        return Err(ReadError::Bad("request head too large"));
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| ReadError::Bad("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().ok_or(ReadError::Bad("bad request line"))?.to_string();
    let mut content_length = 0usize;
    let mut bearer = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { return Err(ReadError::Bad("bad header line")) };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse().map_err(|_| ReadError::Bad("bad Content-Length"))?;
        } else if k.eq_ignore_ascii_case("authorization") {
            bearer = v.strip_prefix("Bearer ").map(|t| t.trim().to_string());
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::Bad("Transfer-Encoding is not supported: send Content-Length"));
        }
    }
    if content_length > body_max {
        return Err(ReadError::TooLarge);
    }
    let body = &buf[head_end + 4..];
    if body.len() < content_length {
        return Ok(None);
    }
    Ok(Some(Request { method, path, bearer, body: body[..content_length].to_vec() }))
}

/// A complete response that asks the client to close; `head_only` (for
/// `HEAD`) leaves the body out but keeps its Content-Length.
pub fn response(status: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// Constant-time comparison for tokens (the time depends on the lengths only).
pub fn token_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Fuzz entry point: the parser on arbitrary bytes, whole and as every
/// prefix a connection could have received so far. It must never panic, and
/// a prefix of a complete request never parses as a different request.
pub fn fuzz_parse_request(data: &[u8]) {
    let body_max = 1024;
    let whole = parse_request(data, body_max);
    for cut in [0, 1, 7, data.len() / 2, data.len().saturating_sub(1)] {
        let cut = cut.min(data.len());
        if let Ok(Some(r)) = parse_request(&data[..cut], body_max) {
            // Complete on a prefix: the whole buffer parses to the same request.
            let w = whole.as_ref().ok().and_then(|w| w.as_ref()).expect("a complete prefix stays complete");
            assert_eq!((&r.method, &r.path, &r.body), (&w.method, &w.path, &w.body));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let raw = b"POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\nContent-Length: 5\r\n\r\nhello";
        for n in 0..raw.len() {
            assert!(parse_request(&raw[..n], 100).unwrap().is_none(), "complete after {n} bytes");
        }
        let r = parse_request(raw, 100).unwrap().unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str(), r.bearer.as_deref()), ("POST", "/rpc", Some("abc")));
        assert_eq!(r.body, b"hello");
        let shown = format!("{r:?}");
        assert!(!shown.contains("abc") && shown.contains("redacted"), "{shown}");
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 500\r\n\r\n";
        assert_eq!(parse_request(raw, 100).unwrap_err(), ReadError::TooLarge);
        let raw = b"GET /metrics HTTP/1.1\r\nbad\r\n\r\n";
        assert!(matches!(parse_request(raw, 100), Err(ReadError::Bad(_))));
        let raw = b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse_request(raw, 100), Err(ReadError::Bad(_))));
        let long = vec![b'a'; HEAD_BYTES_MAX + 1];
        assert!(matches!(parse_request(&long, 100), Err(ReadError::Bad(_))));
        assert!(token_eq("abc", "abc") && !token_eq("abc", "abd") && !token_eq("abc", "ab"));
    }

    #[test]
    fn responses() {
        let get = response(200, "text/plain", b"hi\n", false);
        assert_eq!(
            get,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhi\n"
        );
        let head = response(200, "text/plain", b"hi\n", true);
        assert_eq!(head, get[..get.len() - 3]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_request(&buf, 64);
            let mut with_head = b"POST / HTTP/1.1\r\n".to_vec();
            with_head.extend_from_slice(&buf);
            let _ = parse_request(&with_head, 64);
        }
    }
}
