//! HTTP/1.1 heads on the upstream side: the request head written straight
//! from the prepared request, and the response head parsed (httparse) into
//! the status, fields and body framing (RFC 9112 section 6.3).
//!
//! Plain functions over byte buffers, so every framing rule is unit-tested
//! without a socket; the rules follow hyper's client (which this replaces
//! for bodiless requests) wherever RFC 9112 leaves a choice.

use super::H1Error;
use bytes::{BufMut, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use std::mem::MaybeUninit;

/// Most fields a response head may carry (hyper's default too).
pub const MAX_HEADERS: usize = 100;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: no body: HEAD, 204, 304, or declared 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the backend closes the connection.
    Close,
}

/// A parsed final response head.
#[derive(Debug)]
pub struct Parsed {
    /// Status, version and fields, with the reason phrase as hyper keeps
    /// it (an extension, only when it is not the canonical one): the
    /// response the body is then put into.
    pub head: http::Response<()>,
    pub framing: Framing,
    /// The connection may carry another request once the body is read.
    pub keep_alive: bool,
}

/// What one parse of the buffer gave.
#[derive(Debug)]
pub enum Head {
    /// A final response; its bytes were taken from the buffer.
    Final(Parsed),
    /// An informational (1xx) response, taken from the buffer and skipped.
    Informational,
}

/// Append the request head: `METHOD target HTTP/1.1`, the fields as they
/// are (already prepared for the backend), then `extra` fields (names in
/// lower case, values valid), and the blank line. The request is
/// bodiless, so `Transfer-Encoding` is left out (as hyper does for a body
/// that has ended).
pub fn encode_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    extra: &[Option<(&str, &[u8])>],
    dst: &mut BytesMut,
) {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    dst.reserve(32 + target.len() + headers.len() * 32);
    dst.put_slice(method.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(target.as_bytes());
    dst.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == TRANSFER_ENCODING {
            continue;
        }
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    for (name, value) in extra.iter().flatten() {
        dst.put_slice(name.as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value);
        dst.put_slice(b"\r\n");
    }
    dst.put_slice(b"\r\n");
}

/// Parse a response head from the start of `buf`: `Ok(None)` when more
/// bytes are needed. On success the head's bytes are split off `buf` (the
/// field values share them, no copy); what follows is the body.
pub fn parse_response(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, H1Error> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(H1Error::Parse(e)),
    };
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Status(code))?;
    let version = if res.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let reason = res
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
    // Field positions in the buffer, so the values can share its bytes.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let n = res.headers.len();
    for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
        // Within the head, which is under `MAX_HEAD`: u32 is plenty.
        let name = (h.name.as_ptr() as usize - base) as u32;
        let value = (h.value.as_ptr() as usize - base) as u32;
        *span = (
            name,
            name + h.name.len() as u32,
            value,
            value + h.value.len() as u32,
        );
    }
    let head = buf.split_to(len).freeze();
    if status.is_informational() {
        if code == 101 {
            return Err(H1Error::UnaskedUpgrade);
        }
        return Ok(Some(Head::Informational));
    }
    let mut headers = HeaderMap::with_capacity(n);
    let mut keep_alive = version == Version::HTTP_11;
    let mut closing = false;
    let mut fields = Framed::default();
    for &(ns, ne, vs, ve) in &spans[..n] {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| H1Error::FieldName)?;
        let value = shared_value(head.slice(vs..ve));
        if name == TRANSFER_ENCODING {
            fields.transfer_encoding = true;
        } else if name == CONTENT_LENGTH {
            fields.content_length = true;
        } else if name == CONNECTION {
            // Once any Connection line asks to close, a later keep-alive
            // does not undo it; HTTP/1.0 keeps alive only when asked to.
            if closing || has_token(&value, "close") {
                closing = true;
                keep_alive = false;
            } else if !keep_alive {
                keep_alive = has_token(&value, "keep-alive");
            }
        }
        headers.append(name, value);
    }
    let framing = framing(
        status,
        method,
        version,
        fields,
        &mut headers,
        &mut keep_alive,
    )?;
    let mut head = http::Response::new(());
    *head.status_mut() = status;
    *head.version_mut() = version;
    *head.headers_mut() = headers;
    if let Some(reason) = reason {
        head.extensions_mut().insert(reason);
    }
    Ok(Some(Head::Final(Parsed {
        head,
        framing,
        keep_alive,
    })))
}

/// The body's framing (RFC 9112 section 6.3): none for HEAD, 204 and 304;
/// chunked when it is the last transfer coding; a length when every
/// `Content-Length` agrees; otherwise until close. A `Content-Length` next
/// to a `Transfer-Encoding` is dropped and the connection not reused (the
/// two framings disagree: request smuggling's favourite ground).
fn framing(
    status: StatusCode,
    method: &Method,
    version: Version,
    fields: Framed,
    headers: &mut HeaderMap,
    keep_alive: &mut bool,
) -> Result<Framing, H1Error> {
    if status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD
    {
        return Ok(Framing::Length(0));
    }
    let last_coding = match fields.transfer_encoding {
        true => headers.get_all(TRANSFER_ENCODING).iter().next_back(),
        false => None,
    };
    if let Some(last) = last_coding {
        if version == Version::HTTP_10 {
            return Err(H1Error::Framing(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        let chunked = last.to_str().is_ok_and(|s| {
            s.rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
        });
        if headers.remove(CONTENT_LENGTH).is_some() {
            *keep_alive = false;
        }
        return Ok(if chunked {
            Framing::Chunked
        } else {
            *keep_alive = false;
            Framing::Close
        });
    }
    if !fields.content_length {
        *keep_alive = false;
        return Ok(Framing::Close);
    }
    let mut length: Option<u64> = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        let s = v.to_str().map_err(|_| H1Error::ContentLength)?;
        for part in s.split(',') {
            let n = digits(part.trim()).ok_or(H1Error::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => Framing::Length(n),
        None => {
            *keep_alive = false;
            Framing::Close
        }
    })
}

/// Which framing fields the head carries, noted while its fields are
/// read, so that a head without them is not searched for them again.
#[derive(Debug, Default, Clone, Copy)]
struct Framed {
    transfer_encoding: bool,
    content_length: bool,
}

/// A field value sharing the head's bytes, without checking them again.
#[allow(unsafe_code)]
fn shared_value(bytes: bytes::Bytes) -> HeaderValue {
    // SAFETY: httparse accepted these bytes as a field value: each is a
    // horizontal tab, 0x20..=0x7E or 0x80..=0xFF (its HEADER_VALUE_MAP),
    // exactly what `HeaderValue` allows (tab, or >= 32 and not 127);
    // obsolete line folding is refused by the parser's default config.
    // hyper builds its response fields the same way.
    unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) }
}

/// A decimal length of at most 18 digits (no sign, no spaces inside).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether a comma-separated field value lists `token` (case-insensitive).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    let v = value.as_bytes();
    if v.eq_ignore_ascii_case(token.as_bytes()) {
        return true;
    }
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, method: Method) -> Result<Option<Head>, H1Error> {
        let mut buf = BytesMut::from(text);
        parse_response(&mut buf, &method)
    }

    fn fin(text: &str) -> Parsed {
        match parse(text, Method::GET) {
            Ok(Some(Head::Final(p))) => p,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn the_request_head_is_written_as_prepared_without_transfer_encoding() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a:1"));
        h.append("cookie", HeaderValue::from_static("x=1"));
        h.append("cookie", HeaderValue::from_static("y=2"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let mut dst = BytesMut::new();
        let uri: Uri = "/p?q=1".parse().unwrap();
        let extra = [Some(("x-forwarded-for", &b"10.0.0.1"[..])), None];
        encode_request(&Method::GET, &uri, &h, &extra, &mut dst);
        assert_eq!(
            &dst[..],
            &b"GET /p?q=1 HTTP/1.1\r\nhost: a:1\r\ncookie: x=1\r\ncookie: y=2\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"[..]
        );
        let mut dst = BytesMut::new();
        let abs: Uri = "http://h/".parse().unwrap();
        encode_request(&Method::HEAD, &abs, &HeaderMap::new(), &[], &mut dst);
        assert_eq!(&dst[..], b"HEAD / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_head_in_pieces_needs_more_then_leaves_the_body_in_the_buffer() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Len");
        assert!(parse_response(&mut buf, &Method::GET).unwrap().is_none());
        buf.extend_from_slice(b"gth: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello");
        let Some(Head::Final(p)) = parse_response(&mut buf, &Method::GET).unwrap() else {
            panic!()
        };
        assert_eq!(p.framing, Framing::Length(5));
        assert!(p.keep_alive);
        assert!(p
            .head
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .is_none());
        let xa: Vec<_> = p.head.headers().get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            fin("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").framing,
            Framing::Chunked
        );
        let te_only = fin("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(
            (te_only.framing, te_only.keep_alive),
            (Framing::Close, false)
        );
        let both =
            fin("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(both.framing, Framing::Chunked);
        assert!(!both.keep_alive && !both.head.headers().contains_key(CONTENT_LENGTH));
        let none = fin("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((none.framing, none.keep_alive), (Framing::Close, false));
        let same = fin("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7, 7\r\n\r\n");
        assert_eq!(same.framing, Framing::Length(7));
        for code in ["204 No Content", "304 Not Modified"] {
            let p = fin(&format!("HTTP/1.1 {code}\r\nContent-Length: 9\r\n\r\n"));
            assert_eq!((p.framing, p.keep_alive), (Framing::Length(0), true));
        }
        let Ok(Some(Head::Final(h))) = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::HEAD,
        ) else {
            panic!()
        };
        assert_eq!(h.framing, Framing::Length(0));
    }

    #[test]
    fn bad_lengths_and_heads_are_errors() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "FTP/1.1 200 OK\r\n\r\n",
        ] {
            assert!(parse(text, Method::GET).is_err(), "{text:?}");
        }
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        assert!(parse(&many, Method::GET).is_err());
    }

    #[test]
    fn only_bytes_a_field_value_may_hold_reach_the_map() {
        for bad in [&b"a\x01b"[..], b"a\x7fb", b"a\x00b", b"a\rb"] {
            let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: "[..]);
            buf.extend_from_slice(bad);
            buf.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
            assert!(parse_response(&mut buf, &Method::GET).is_err(), "{bad:?}");
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: caf\xc3\xa9\t!\r\n\r\n"[..]);
        let Ok(Some(Head::Final(p))) = parse_response(&mut buf, &Method::GET) else {
            panic!()
        };
        assert_eq!(p.head.headers()["x"].as_bytes(), b"caf\xc3\xa9\t!");
        assert_eq!(
            p.head.headers()["x"],
            HeaderValue::from_bytes(b"caf\xc3\xa9\t!").unwrap()
        );
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(!fin("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(
            fin("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        assert!(
            !fin("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").keep_alive
        );
        assert!(!fin(
            "HTTP/1.1 200 OK\r\nConnection: foo, Close\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        )
        .keep_alive);
    }

    #[test]
    fn informational_heads_are_skipped_and_odd_reasons_kept() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(matches!(
            parse_response(&mut buf, &Method::GET),
            Ok(Some(Head::Informational))
        ));
        let Ok(Some(Head::Final(p))) = parse_response(&mut buf, &Method::GET) else {
            panic!()
        };
        let reason = p.head.extensions().get::<hyper::ext::ReasonPhrase>();
        assert_eq!(reason.map(|r| r.as_bytes()), Some(&b"Fine"[..]));
        assert!(buf.is_empty());
    }
}
