//! A minimal HTTP/1.1 server side for the RPC TCP listener and `/metrics`:
//! one request per connection, bounded header and body sizes.

use std::io::{self, Read, Write};

/// Largest request head (request line plus headers).
pub const HEAD_BYTES_MAX: usize = 16 * 1024;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// `Authorization: Bearer` token, if any.
    pub bearer: Option<String>,
    pub body: Vec<u8>,
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// Malformed head: answered with 400.
    Bad(&'static str),
    /// Body larger than allowed: answered with 413.
    TooLarge,
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Read one request; `prefix` holds bytes already read from `r`.
pub fn read_request(r: &mut impl Read, prefix: &[u8], body_max: usize) -> Result<Request, ReadError> {
    let mut buf = prefix.to_vec();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Err(ReadError::Bad("request head too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(ReadError::Bad("connection closed inside the request head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
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
    let mut body = buf[head_end + 4..].to_vec();
    if body.len() > content_length {
        body.truncate(content_length);
    }
    let already = body.len();
    body.resize(content_length, 0);
    r.read_exact(&mut body[already..])?;
    Ok(Request { method, path, bearer, body })
}

/// Write a complete response and ask the client to close.
pub fn respond(w: &mut impl Write, status: u16, content_type: &str, body: &[u8]) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    w.write_all(body)?;
    w.flush()
}

/// Constant-time comparison for tokens.
pub fn token_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let raw = b"POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\nContent-Length: 5\r\n\r\nhello";
        let r = read_request(&mut &raw[10..], &raw[..10], 100).unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str(), r.bearer.as_deref()), ("POST", "/rpc", Some("abc")));
        assert_eq!(r.body, b"hello");
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 500\r\n\r\n";
        assert!(matches!(read_request(&mut &raw[..], &[], 100), Err(ReadError::TooLarge)));
        let raw = b"GET /metrics HTTP/1.1\r\nbad\r\n\r\n";
        assert!(matches!(read_request(&mut &raw[..], &[], 100), Err(ReadError::Bad(_))));
        assert!(token_eq("abc", "abc") && !token_eq("abc", "abd") && !token_eq("abc", "ab"));
    }
}
