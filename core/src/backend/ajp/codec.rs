//! AJP/1.3 packets, pure (no I/O): what mod_jk sends to Tomcat and what
//! Tomcat answers, as described in the AJPv13 protocol reference.
//!
//! Every packet has a 4-byte header: a magic (`0x1234` toward the
//! container, `AB` back from it) and a 16-bit payload length. The whole
//! packet, header included, is at most `max_packet_size` bytes (8192 by
//! default, like mod_jk and Tomcat's `packetSize`), and both directions
//! enforce it: an oversized request head is refused before anything is
//! sent, an oversized reply ends the connection.
//!
//! [`decode_reply`] reads untrusted bytes from a backend: it never panics,
//! never allocates more than one packet, and says exactly what was wrong.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

pub use crate::config::ajp::{DEFAULT_MAX_PACKET, LIMIT_MAX_PACKET};
/// Packet header: magic and payload length.
const HEADER: usize = 4;
/// Toward the container: `0x12 0x34`.
const MAGIC_TO_CONTAINER: [u8; 2] = [0x12, 0x34];
/// From the container: `A B`.
const MAGIC_FROM_CONTAINER: u16 = 0x4142;

const FORWARD_REQUEST: u8 = 2;
const CPING: u8 = 10;
const SEND_BODY_CHUNK: u8 = 3;
const SEND_HEADERS: u8 = 4;
const END_RESPONSE: u8 = 5;
const GET_BODY_CHUNK: u8 = 6;
const CPONG_REPLY: u8 = 9;

/// Method code of a method outside the table: the name travels in the
/// `stored_method` attribute.
const METHOD_STORED: u8 = 0xFF;

const ATTR_QUERY_STRING: u8 = 0x05;
const ATTR_JVM_ROUTE: u8 = 0x06;
const ATTR_SSL_CERT: u8 = 0x07;
const ATTR_SSL_CIPHER: u8 = 0x08;
const ATTR_SSL_SESSION: u8 = 0x09;
const ATTR_REQ_ATTRIBUTE: u8 = 0x0A;
const ATTR_SSL_KEY_SIZE: u8 = 0x0B;
const ATTR_SECRET: u8 = 0x0C;
const ATTR_STORED_METHOD: u8 = 0x0D;
const ATTR_ARE_DONE: u8 = 0xFF;

/// Request attribute Tomcat reads the client's port from (AJP13 has no
/// field for it).
pub const REMOTE_PORT_ATTRIBUTE: &str = "AJP_REMOTE_PORT";
/// Request attribute carrying the client's TLS protocol version.
pub const SSL_PROTOCOL_ATTRIBUTE: &str = "AJP_SSL_PROTOCOL";

/// Why a packet could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A packet (header included) larger than `max_packet_size`.
    #[error("AJP packet of {size} bytes exceeds max_packet_size {max}")]
    TooLarge { size: usize, max: usize },
    /// The backend's packet did not start with `AB`: not an AJP
    /// connector, or the stream lost its framing.
    #[error("wrong AJP magic {0:#06x} from the backend (expected 0x4142, \"AB\")")]
    BadMagic(u16),
    /// A field ran past the end of its packet.
    #[error("truncated AJP packet: {0}")]
    Truncated(&'static str),
    /// A message type no AJP/1.3 container sends.
    #[error("unknown AJP message type {0}")]
    UnknownType(u8),
    /// A packet whose fields do not make sense.
    #[error("malformed AJP packet: {0}")]
    Malformed(&'static str),
    /// A request field does not fit an AJP string (at most 65534 bytes).
    #[error("a request field is longer than an AJP string can be")]
    StringTooLong,
}

/// The client's TLS details, sent as AJP SSL attributes (Tomcat exposes
/// them as the `jakarta.servlet.request.*` attributes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslInfo {
    pub cipher: Option<String>,
    pub session: Option<String>,
    pub key_size: Option<u16>,
    /// The client certificate, PEM.
    pub cert: Option<String>,
    /// e.g. `TLSv1.3`.
    pub protocol: Option<String>,
}

/// The request head as one Forward Request packet carries it.
#[derive(Debug, Clone)]
pub struct ForwardRequest<'a> {
    pub method: &'a Method,
    /// `HTTP/1.1`.
    pub protocol: &'a str,
    /// The path, still percent-encoded (Tomcat decodes it).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub remote_addr: &'a str,
    pub remote_port: Option<u16>,
    pub server_name: &'a str,
    pub server_port: u16,
    /// The client came over TLS.
    pub is_ssl: bool,
    pub ssl: Option<&'a SslInfo>,
    pub headers: &'a HeaderMap,
    /// The route of the node the request goes to (mod_jk sends it too).
    pub jvm_route: Option<&'a str>,
    /// Tomcat's connector `secret`.
    pub secret: Option<&'a str>,
}

fn method_code(m: &Method) -> u8 {
    const TABLE: [&str; 27] = [
        "OPTIONS",
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "TRACE",
        "PROPFIND",
        "PROPPATCH",
        "MKCOL",
        "COPY",
        "MOVE",
        "LOCK",
        "UNLOCK",
        "ACL",
        "REPORT",
        "VERSION-CONTROL",
        "CHECKIN",
        "CHECKOUT",
        "UNCHECKOUT",
        "SEARCH",
        "MKWORKSPACE",
        "UPDATE",
        "LABEL",
        "MERGE",
        "BASELINE-CONTROL",
        "MKACTIVITY",
    ];
    TABLE
        .iter()
        .position(|t| *t == m.as_str())
        .map_or(METHOD_STORED, |i| i as u8 + 1)
}

/// Request header names with a one-number code (`0xA0xx`).
fn request_header_code(name: &HeaderName) -> Option<u16> {
    const TABLE: [&str; 14] = [
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "authorization",
        "connection",
        "content-type",
        "content-length",
        "cookie",
        "cookie2",
        "host",
        "pragma",
        "referer",
        "user-agent",
    ];
    let n = name.as_str();
    TABLE
        .iter()
        .position(|t| *t == n)
        .map(|i| 0xA001 + i as u16)
}

/// Response header names behind the codes `0xA001..=0xA00B`.
const RESPONSE_HEADERS: [&str; 11] = [
    "content-type",
    "content-language",
    "content-length",
    "date",
    "last-modified",
    "location",
    "set-cookie",
    "set-cookie2",
    "servlet-engine",
    "status",
    "www-authenticate",
];

fn put_string(out: &mut BytesMut, s: &[u8]) -> Result<(), CodecError> {
    if s.len() >= 0xFFFF {
        return Err(CodecError::StringTooLong);
    }
    out.put_u16(s.len() as u16);
    out.put_slice(s);
    out.put_u8(0);
    Ok(())
}

/// Append one Forward Request packet to `out`. Fails without touching
/// the connection when the head does not fit `max_packet`.
pub fn encode_forward_request(
    req: &ForwardRequest<'_>,
    max_packet: usize,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    let start = out.len();
    out.put_slice(&MAGIC_TO_CONTAINER);
    out.put_u16(0);
    out.put_u8(FORWARD_REQUEST);
    let code = method_code(req.method);
    out.put_u8(code);
    put_string(out, req.protocol.as_bytes())?;
    put_string(out, req.path.as_bytes())?;
    put_string(out, req.remote_addr.as_bytes())?;
    put_string(out, req.remote_addr.as_bytes())?;
    put_string(out, req.server_name.as_bytes())?;
    out.put_u16(req.server_port);
    out.put_u8(req.is_ssl as u8);
    let count = req.headers.len();
    if count > 0xFFFF {
        return Err(CodecError::Malformed("more than 65535 request headers"));
    }
    out.put_u16(count as u16);
    for (name, value) in req.headers {
        match request_header_code(name) {
            Some(c) => out.put_u16(c),
            None => put_string(out, name.as_str().as_bytes())?,
        }
        put_string(out, value.as_bytes())?;
    }
    encode_attributes(req, code, out)?;
    let size = out.len() - start;
    if size > max_packet {
        out.truncate(start);
        return Err(CodecError::TooLarge {
            size,
            max: max_packet,
        });
    }
    let len = (size - HEADER) as u16;
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn encode_attributes(
    req: &ForwardRequest<'_>,
    method: u8,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    let mut attr = |code: u8, v: &str| -> Result<(), CodecError> {
        out.put_u8(code);
        put_string(out, v.as_bytes())
    };
    if let Some(q) = req.query.filter(|q| !q.is_empty()) {
        attr(ATTR_QUERY_STRING, q)?;
    }
    if let Some(r) = req.jvm_route {
        attr(ATTR_JVM_ROUTE, r)?;
    }
    if let Some(s) = req.secret {
        attr(ATTR_SECRET, s)?;
    }
    if method == METHOD_STORED {
        attr(ATTR_STORED_METHOD, req.method.as_str())?;
    }
    if let Some(ssl) = req.ssl.filter(|_| req.is_ssl) {
        if let Some(c) = &ssl.cert {
            attr(ATTR_SSL_CERT, c)?;
        }
        if let Some(c) = &ssl.cipher {
            attr(ATTR_SSL_CIPHER, c)?;
        }
        if let Some(s) = &ssl.session {
            attr(ATTR_SSL_SESSION, s)?;
        }
        if let Some(p) = &ssl.protocol {
            request_attribute(out, SSL_PROTOCOL_ATTRIBUTE, p)?;
        }
        if let Some(k) = ssl.key_size {
            out.put_u8(ATTR_SSL_KEY_SIZE);
            out.put_u16(k);
        }
    }
    if let Some(p) = req.remote_port {
        request_attribute(out, REMOTE_PORT_ATTRIBUTE, &p.to_string())?;
    }
    out.put_u8(ATTR_ARE_DONE);
    Ok(())
}

fn request_attribute(out: &mut BytesMut, name: &str, value: &str) -> Result<(), CodecError> {
    out.put_u8(ATTR_REQ_ATTRIBUTE);
    put_string(out, name.as_bytes())?;
    put_string(out, value.as_bytes())
}

/// The most request body bytes one body packet carries.
pub fn max_body_chunk(max_packet: usize) -> usize {
    max_packet - HEADER - 2
}

/// The 6-byte head of a request body packet carrying `len` bytes (the
/// data follows it on the wire). `len` is at most [`max_body_chunk`].
pub fn body_chunk_head(len: usize) -> [u8; 6] {
    let len = len.min(0xFFFF - 2) as u16;
    let total = len + 2;
    let [t0, t1] = total.to_be_bytes();
    let [l0, l1] = len.to_be_bytes();
    [MAGIC_TO_CONTAINER[0], MAGIC_TO_CONTAINER[1], t0, t1, l0, l1]
}

/// The empty body packet: the request body has ended.
pub const END_OF_BODY: [u8; 4] = [0x12, 0x34, 0, 0];

/// A CPing: "are you there?", answered by a CPong when the container's
/// worker threads are alive.
pub const CPING_PACKET: [u8; 5] = [0x12, 0x34, 0, 1, CPING];

/// A decoded packet from the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// SEND_HEADERS: the response head.
    Headers {
        status: StatusCode,
        headers: HeaderMap,
    },
    /// SEND_BODY_CHUNK: response body bytes (empty: a flush).
    Body(Bytes),
    /// END_RESPONSE: whether the connection may carry another request.
    End { reuse: bool },
    /// GET_BODY_CHUNK: send up to this many more request body bytes.
    GetBody(u16),
    /// CPONG_REPLY.
    CPong,
}

/// Read one packet from the front of `buf`: `Ok(None)` while it is
/// incomplete (read more), the reply once whole (its bytes consumed), or
/// why the stream is unusable (the connection must be dropped).
pub fn decode_reply(buf: &mut BytesMut, max_packet: usize) -> Result<Option<Reply>, CodecError> {
    if buf.len() >= 2 {
        let magic = u16::from_be_bytes([buf[0], buf[1]]);
        if magic != MAGIC_FROM_CONTAINER {
            return Err(CodecError::BadMagic(magic));
        }
    }
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if len + HEADER > max_packet {
        return Err(CodecError::TooLarge {
            size: len + HEADER,
            max: max_packet,
        });
    }
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    buf.advance(HEADER);
    let payload = buf.split_to(len).freeze();
    parse_payload(payload).map(Some)
}

fn parse_payload(mut p: Bytes) -> Result<Reply, CodecError> {
    let kind = get_u8(&mut p, "message type")?;
    match kind {
        SEND_HEADERS => parse_headers(&mut p),
        SEND_BODY_CHUNK => {
            let n = get_u16(&mut p, "body chunk length")? as usize;
            if p.len() < n {
                return Err(CodecError::Truncated("body chunk data"));
            }
            Ok(Reply::Body(p.split_to(n)))
        }
        END_RESPONSE => Ok(Reply::End {
            reuse: get_u8(&mut p, "reuse flag").unwrap_or(0) == 1,
        }),
        GET_BODY_CHUNK => Ok(Reply::GetBody(get_u16(&mut p, "requested length")?)),
        CPONG_REPLY => Ok(Reply::CPong),
        other => Err(CodecError::UnknownType(other)),
    }
}

fn parse_headers(p: &mut Bytes) -> Result<Reply, CodecError> {
    let code = get_u16(p, "status")?;
    let status =
        StatusCode::from_u16(code).map_err(|_| CodecError::Malformed("status out of range"))?;
    get_string(p, "status message")?;
    let count = get_u16(p, "header count")?;
    let mut headers = HeaderMap::with_capacity((count as usize).min(64));
    for _ in 0..count {
        let name = header_name(p)?;
        let value = get_string(p, "header value")?.unwrap_or_default();
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| CodecError::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(Reply::Headers { status, headers })
}

fn header_name(p: &mut Bytes) -> Result<HeaderName, CodecError> {
    if p.len() < 2 {
        return Err(CodecError::Truncated("header name"));
    }
    let n = u16::from_be_bytes([p[0], p[1]]);
    if n & 0xFF00 == 0xA000 {
        p.advance(2);
        let i = (n & 0xFF) as usize;
        let name = i
            .checked_sub(1)
            .and_then(|i| RESPONSE_HEADERS.get(i))
            .ok_or(CodecError::Malformed("unknown response header code"))?;
        return Ok(HeaderName::from_static(name));
    }
    let raw = get_string(p, "header name")?.ok_or(CodecError::Malformed("null header name"))?;
    HeaderName::from_bytes(&raw).map_err(|_| CodecError::Malformed("invalid header name"))
}

fn get_u8(p: &mut Bytes, what: &'static str) -> Result<u8, CodecError> {
    if p.is_empty() {
        return Err(CodecError::Truncated(what));
    }
    Ok(p.get_u8())
}

fn get_u16(p: &mut Bytes, what: &'static str) -> Result<u16, CodecError> {
    if p.len() < 2 {
        return Err(CodecError::Truncated(what));
    }
    Ok(p.get_u16())
}

/// An AJP string: length, bytes, a NUL; length `0xFFFF` is a null string.
fn get_string(p: &mut Bytes, what: &'static str) -> Result<Option<Bytes>, CodecError> {
    let n = get_u16(p, what)?;
    if n == 0xFFFF {
        return Ok(None);
    }
    let n = n as usize;
    if p.len() < n + 1 {
        return Err(CodecError::Truncated(what));
    }
    let s = p.split_to(n);
    p.advance(1);
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_packet(payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_slice(b"AB");
        b.put_u16(payload.len() as u16);
        b.put_slice(payload);
        b
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn sample<'a>(method: &'a Method, headers: &'a HeaderMap) -> ForwardRequest<'a> {
        ForwardRequest {
            method,
            protocol: "HTTP/1.1",
            path: "/app/count",
            query: Some("a=1"),
            remote_addr: "10.0.0.7",
            remote_port: Some(51234),
            server_name: "shop.example",
            server_port: 443,
            is_ssl: false,
            ssl: None,
            headers,
            jvm_route: Some("t1"),
            secret: Some("s3cret"),
        }
    }

    /// A reader of the container side, enough to check what we encode.
    struct Reader<'a>(&'a [u8]);

    impl Reader<'_> {
        fn u8(&mut self) -> u8 {
            let v = self.0[0];
            self.0 = &self.0[1..];
            v
        }
        fn u16(&mut self) -> u16 {
            let v = u16::from_be_bytes([self.0[0], self.0[1]]);
            self.0 = &self.0[2..];
            v
        }
        fn string(&mut self) -> String {
            let n = self.u16() as usize;
            let s = String::from_utf8(self.0[..n].to_vec()).unwrap();
            assert_eq!(self.0[n], 0, "NUL after {s:?}");
            self.0 = &self.0[n + 1..];
            s
        }
    }

    #[test]
    fn forward_request_has_the_fields_tomcat_reads_in_order() {
        let mut h = HeaderMap::new();
        h.insert("host", "shop.example".parse().unwrap());
        h.insert("x-trace", "abc".parse().unwrap());
        let mut out = BytesMut::new();
        let m = Method::GET;
        encode_forward_request(&sample(&m, &h), DEFAULT_MAX_PACKET, &mut out).unwrap();
        assert_eq!(&out[..2], &[0x12, 0x34]);
        let len = u16::from_be_bytes([out[2], out[3]]) as usize;
        assert_eq!(len + 4, out.len());
        let mut r = Reader(&out[4..]);
        assert_eq!(r.u8(), FORWARD_REQUEST);
        assert_eq!(r.u8(), 2, "GET");
        assert_eq!(r.string(), "HTTP/1.1");
        assert_eq!(r.string(), "/app/count");
        assert_eq!(r.string(), "10.0.0.7");
        assert_eq!(r.string(), "10.0.0.7");
        assert_eq!(r.string(), "shop.example");
        assert_eq!(r.u16(), 443);
        assert_eq!(r.u8(), 0, "is_ssl");
        assert_eq!(r.u16(), 2);
        assert_eq!(r.u16(), 0xA00B, "host has a code");
        assert_eq!(r.string(), "shop.example");
        assert_eq!(r.string(), "x-trace");
        assert_eq!(r.string(), "abc");
        assert_eq!(r.u8(), ATTR_QUERY_STRING);
        assert_eq!(r.string(), "a=1");
        assert_eq!(r.u8(), ATTR_JVM_ROUTE);
        assert_eq!(r.string(), "t1");
        assert_eq!(r.u8(), ATTR_SECRET);
        assert_eq!(r.string(), "s3cret");
        assert_eq!(r.u8(), ATTR_REQ_ATTRIBUTE);
        assert_eq!(r.string(), REMOTE_PORT_ATTRIBUTE);
        assert_eq!(r.string(), "51234");
        assert_eq!(r.u8(), ATTR_ARE_DONE);
        assert!(r.0.is_empty());
    }

    #[test]
    fn methods_outside_the_table_travel_as_stored_method() {
        assert_eq!(method_code(&Method::OPTIONS), 1);
        assert_eq!(method_code(&Method::POST), 4);
        assert_eq!(method_code(&"MKACTIVITY".parse().unwrap()), 27);
        let m: Method = "PURGE".parse().unwrap();
        assert_eq!(method_code(&m), METHOD_STORED);
        let h = HeaderMap::new();
        let mut req = sample(&m, &h);
        req.query = None;
        req.jvm_route = None;
        req.secret = None;
        req.remote_port = None;
        let mut out = BytesMut::new();
        encode_forward_request(&req, DEFAULT_MAX_PACKET, &mut out).unwrap();
        let tail = &out[out.len() - 10..];
        assert_eq!(tail[0], ATTR_STORED_METHOD);
        assert_eq!(&tail[3..8], b"PURGE");
        assert_eq!(tail[9], ATTR_ARE_DONE);
    }

    #[test]
    fn ssl_attributes_only_for_a_tls_client() {
        let h = HeaderMap::new();
        let ssl = SslInfo {
            cipher: Some("TLS_AES_128_GCM_SHA256".into()),
            session: Some("abcd".into()),
            key_size: Some(128),
            cert: None,
            protocol: Some("TLSv1.3".into()),
        };
        let m = Method::GET;
        let mut req = sample(&m, &h);
        req.ssl = Some(&ssl);
        let mut plain = BytesMut::new();
        encode_forward_request(&req, DEFAULT_MAX_PACKET, &mut plain).unwrap();
        req.is_ssl = true;
        let mut tls = BytesMut::new();
        encode_forward_request(&req, DEFAULT_MAX_PACKET, &mut tls).unwrap();
        let has = |b: &[u8], s: &str| b.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(!has(&plain, "TLS_AES_128_GCM_SHA256"));
        assert!(has(&tls, "TLS_AES_128_GCM_SHA256"));
        assert!(has(&tls, SSL_PROTOCOL_ATTRIBUTE));
        assert!(tls.windows(3).any(|w| w == [ATTR_SSL_KEY_SIZE, 0, 128]));
    }

    #[test]
    fn an_oversized_head_is_refused_and_nothing_is_left_behind() {
        let mut h = HeaderMap::new();
        h.insert("x-big", "a".repeat(9000).parse().unwrap());
        let m = Method::GET;
        let mut out = BytesMut::from(&b"keep"[..]);
        let err = encode_forward_request(&sample(&m, &h), DEFAULT_MAX_PACKET, &mut out);
        assert!(
            matches!(err, Err(CodecError::TooLarge { max: 8192, .. })),
            "{err:?}"
        );
        assert_eq!(&out[..], b"keep");
        let mut out = BytesMut::new();
        encode_forward_request(&sample(&m, &h), 16384, &mut out).unwrap();
    }

    #[test]
    fn body_chunk_heads_and_limits() {
        assert_eq!(max_body_chunk(8192), 8186);
        assert_eq!(body_chunk_head(8186), [0x12, 0x34, 0x1F, 0xFC, 0x1F, 0xFA]);
        assert_eq!(body_chunk_head(0), [0x12, 0x34, 0, 2, 0, 0]);
    }

    #[test]
    fn decodes_headers_with_codes_and_names() {
        let mut p = vec![SEND_HEADERS, 0, 200];
        string(&mut p, "OK");
        p.extend_from_slice(&3u16.to_be_bytes());
        p.extend_from_slice(&0xA001u16.to_be_bytes());
        string(&mut p, "text/plain");
        p.extend_from_slice(&0xA007u16.to_be_bytes());
        string(&mut p, "JSESSIONID=abc.t1; Path=/");
        string(&mut p, "X-Node");
        string(&mut p, "t1");
        let mut b = reply_packet(&p);
        let r = decode_reply(&mut b, DEFAULT_MAX_PACKET).unwrap().unwrap();
        let Reply::Headers { status, headers } = r else {
            panic!("{r:?}")
        };
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers["set-cookie"], "JSESSIONID=abc.t1; Path=/");
        assert_eq!(headers["x-node"], "t1");
        assert!(b.is_empty());
    }

    #[test]
    fn decodes_body_end_get_body_and_cpong() {
        let mut b = reply_packet(&[SEND_BODY_CHUNK, 0, 3, b'a', b'b', b'c', 0]);
        b.extend_from_slice(&reply_packet(&[GET_BODY_CHUNK, 0x1F, 0xFA]));
        b.extend_from_slice(&reply_packet(&[END_RESPONSE, 1]));
        b.extend_from_slice(&reply_packet(&[CPONG_REPLY]));
        b.extend_from_slice(&reply_packet(&[END_RESPONSE, 0]));
        let mut next = || decode_reply(&mut b, DEFAULT_MAX_PACKET).unwrap().unwrap();
        assert_eq!(next(), Reply::Body(Bytes::from_static(b"abc")));
        assert_eq!(next(), Reply::GetBody(8186));
        assert_eq!(next(), Reply::End { reuse: true });
        assert_eq!(next(), Reply::CPong);
        assert_eq!(next(), Reply::End { reuse: false });
    }

    #[test]
    fn partial_packets_wait_for_more_bytes() {
        let whole = reply_packet(&[SEND_BODY_CHUNK, 0, 3, b'a', b'b', b'c', 0]);
        for cut in 0..whole.len() {
            let mut b = BytesMut::from(&whole[..cut]);
            assert_eq!(decode_reply(&mut b, DEFAULT_MAX_PACKET), Ok(None), "{cut}");
            assert_eq!(b.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn wrong_magic_and_oversized_packets_are_errors() {
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        assert_eq!(
            decode_reply(&mut b, DEFAULT_MAX_PACKET),
            Err(CodecError::BadMagic(0x4854))
        );
        let mut b = BytesMut::from(&[b'A', b'B', 0x20, 0x00][..]);
        assert_eq!(
            decode_reply(&mut b, DEFAULT_MAX_PACKET),
            Err(CodecError::TooLarge {
                size: 0x2004,
                max: 8192
            })
        );
        let mut b = reply_packet(&[42]);
        assert_eq!(
            decode_reply(&mut b, DEFAULT_MAX_PACKET),
            Err(CodecError::UnknownType(42))
        );
        let mut b = reply_packet(&[SEND_BODY_CHUNK, 0, 9, b'a']);
        assert_eq!(
            decode_reply(&mut b, DEFAULT_MAX_PACKET),
            Err(CodecError::Truncated("body chunk data"))
        );
    }

    /// Fuzz-style: random, truncated and bit-flipped packets never panic,
    /// and a decode either waits, errs, or consumes a whole packet.
    #[test]
    fn random_and_mutated_packets_never_panic() {
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        let mut p = vec![SEND_HEADERS, 1, 0x93];
        string(&mut p, "Forbidden");
        p.extend_from_slice(&2u16.to_be_bytes());
        p.extend_from_slice(&0xA003u16.to_be_bytes());
        string(&mut p, "0");
        string(&mut p, "X");
        string(&mut p, "y");
        seeds.push(reply_packet(&p).to_vec());
        seeds.push(reply_packet(&[SEND_BODY_CHUNK, 0, 2, 1, 2, 0]).to_vec());
        seeds.push(reply_packet(&[END_RESPONSE, 1]).to_vec());
        seeds.push(reply_packet(&[GET_BODY_CHUNK, 0, 5]).to_vec());
        for round in 0..20_000u32 {
            let mut bytes = seeds[round as usize % seeds.len()].clone();
            match round % 4 {
                0 => {
                    let n = rand::random_range(0..64);
                    bytes = (0..n).map(|_| rand::random()).collect();
                    if n >= 2 && round % 8 == 0 {
                        bytes[0] = b'A';
                        bytes[1] = b'B';
                    }
                }
                1 => {
                    let cut = rand::random_range(0..=bytes.len());
                    bytes.truncate(cut);
                }
                _ => {
                    for _ in 0..rand::random_range(1..4) {
                        let i = rand::random_range(0..bytes.len());
                        bytes[i] ^= 1 << rand::random_range(0..8);
                    }
                }
            }
            let mut b = BytesMut::from(&bytes[..]);
            let before = b.len();
            let max = if round % 3 == 0 {
                16
            } else {
                DEFAULT_MAX_PACKET
            };
            if let Ok(Some(_)) = decode_reply(&mut b, max) {
                assert!(b.len() < before);
            }
        }
    }
}
