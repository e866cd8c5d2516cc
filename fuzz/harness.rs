//! Invariant checks shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`)
//! and the bounded smoke run of the test suite (`tests/fuzz_smoke.rs`), so
//! both check the same things.
//!
//! Each function takes arbitrary bytes, drives one parser that reads
//! untrusted input, and panics only when an invariant breaks: a parser
//! panic, a result that contradicts the input, or a round trip that does
//! not come back. The first bytes steer the run (separator, split points,
//! signing, which optional file is present); the rest is the input.

use bytes::BytesMut;
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use std::path::Path;
use stickgate::backend::ajp::codec::{self, CodecError};
use stickgate::import::{self, ImportError, InputFile};
use stickgate::proxy::websocket::frames::{self, Chunk, Parser, Violation};
use stickgate::routing::session::{self, SessionId, Source, MAX_SESSION_LEN};
use stickgate::store::multicast::auth::{self, Key, Reject, ReplayGuard, TAG_LEN};
use stickgate::store::multicast::wire::{self, Body, HEADER_LEN, MAGIC, WIRE_VERSION};

/// The first byte of `data` (0 when empty) and the rest.
fn steer(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&b, rest)) => (b, rest),
        None => (0, &[]),
    }
}

// ---------------------------------------------------------------- session

/// Route separators a configuration may set (1 to 4 bytes, no whitespace,
/// `;` or `=`), including ones that can never occur in a valid id.
const SEPARATORS: [&str; 8] = [".", "-", ":", "~", "..", "!#", "\u{e9}", ".x"];

/// Which routes the "configured backends" know: an arbitrary rule the
/// fuzzer can satisfy or not.
fn known_route(route: &str) -> bool {
    route.starts_with('t')
}

/// Session id parsing on a cookie header scan and a path parameter.
///
/// Input: steering byte (bits 0-2 separator, bit 3 path parameter named
/// like the cookie, bit 4 no path parameter), then `\n`-separated cookie
/// name, request path, and up to 8 `Cookie` header values.
///
/// Checks: `SessionId::parse` accepts exactly the valid values and a
/// parsed id's base + separator + route is its value; `path_parameter`
/// returns the value right after `;name=`; `replace_path_parameter`
/// changes only that value; `find` follows the documented precedence;
/// redaction never returns the id.
pub fn session_id(data: &[u8]) {
    let (flags, rest) = steer(data);
    let sep = SEPARATORS[usize::from(flags & 7)];
    let mut parts = rest.split(|&b| b == b'\n');
    let cookie = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let param = if flags & 8 != 0 {
        cookie.clone()
    } else {
        "jsessionid".to_owned()
    };
    let mut headers = HeaderMap::new();
    for h in parts.take(8) {
        if let Ok(v) = HeaderValue::from_bytes(h) {
            headers.append(COOKIE, v);
        }
    }
    for raw in [cookie.as_str(), path.as_str()] {
        check_parse(raw, sep, Source::Cookie);
    }
    check_path_parameter(&path, &param);
    check_path_parameter(&path, &cookie);
    for v in session::cookie_values(&headers, &cookie) {
        assert_eq!(v, v.trim(), "cookie values are trimmed");
        assert!(!v.contains(';'), "cookie value {v:?} spans a ';'");
    }
    let path_param = (flags & 16 == 0).then_some(param.as_str());
    check_find(&headers, &path, &cookie, path_param, sep);
}

/// `SessionId::parse` against a model of its rule; returns the parse.
fn check_parse<'a>(raw: &'a str, sep: &str, source: Source) -> Option<SessionId<'a>> {
    let unquoted = raw
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(raw);
    let parsed = SessionId::parse(raw, sep, source);
    let acceptable = !unquoted.is_empty()
        && unquoted.len() <= MAX_SESSION_LEN
        && unquoted.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\' | b'?' | b'#' | b'/')
        })
        && !unquoted.starts_with(sep);
    assert_eq!(parsed.is_some(), acceptable, "parse({raw:?}, {sep:?})");
    let s = parsed?;
    assert_eq!(s.value, unquoted);
    assert_eq!(s.source, source);
    assert!(!s.base.is_empty() && !s.base.contains(sep), "{s:?}");
    assert!(s.route.is_none_or(|r| !r.is_empty()), "{s:?}");
    let rebuilt = match s.route {
        Some(r) => format!("{}{sep}{r}", s.base),
        None if s.value.len() > s.base.len() => format!("{}{sep}", s.base),
        None => s.base.to_owned(),
    };
    assert_eq!(rebuilt, s.value, "base + separator + route");
    check_redact(s.value);
    Some(s)
}

/// Redaction has a fixed shape and never gives the id back.
fn check_redact(id: &str) {
    let r = session::redact(id);
    assert_ne!(r, id, "redaction returned the id");
    assert_eq!(r.len(), 12, "{r:?}");
    assert!(r.starts_with("sid#") && r[4..].bytes().all(|b| b.is_ascii_hexdigit()));
}

/// Byte offset of `part` inside `whole`; panics when it is not a sub-slice.
fn offset_in(whole: &str, part: &str) -> usize {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    assert!(
        start <= whole.len() && start + part.len() <= whole.len(),
        "{part:?} is not borrowed from {whole:?}"
    );
    start
}

/// `path_parameter` and `replace_path_parameter` on one path.
fn check_path_parameter(path: &str, name: &str) {
    let Some(v) = session::path_parameter(path, name) else {
        let replaced = session::replace_path_parameter(path, name, |_| String::new());
        assert_eq!(replaced, None, "replaced a parameter that is not there");
        return;
    };
    let start = offset_in(path, v);
    let end = start + v.len();
    let cut = path.find(['?', '#']).unwrap_or(path.len());
    assert!(end <= cut, "value {v:?} reaches into the query of {path:?}");
    assert!(!v.contains([';', '/']), "value {v:?} spans a delimiter");
    let before = &path.as_bytes()[..start];
    let n = name.len();
    assert!(
        before.len() > n + 1
            && before[before.len() - 1] == b'='
            && before[before.len() - 1 - n..before.len() - 1].eq_ignore_ascii_case(name.as_bytes())
            && before[before.len() - 2 - n] == b';',
        "{v:?} does not follow ;{name}= in {path:?}"
    );
    assert!(matches!(
        path.as_bytes().get(end),
        None | Some(b';' | b'/' | b'?' | b'#')
    ));
    const MARK: &str = "R3PL4CED";
    let replaced = session::replace_path_parameter(path, name, |old| {
        assert_eq!(old, v);
        MARK.to_owned()
    })
    .expect("a found parameter is replaced");
    assert_eq!(
        replaced,
        format!("{}{MARK}{}", &path[..start], &path[end..])
    );
    assert_eq!(session::path_parameter(&replaced, name), Some(MARK));
    let _ = session::replace_path_parameter(path, name, session::redact);
}

/// `find` against the precedence in `routing::session`'s docs: the first
/// cookie with a known route, else the path parameter with a known route,
/// else the first well-formed cookie, else the path parameter.
fn check_find(headers: &HeaderMap, path: &str, cookie: &str, param: Option<&str>, sep: &str) {
    let cookies: Vec<SessionId<'_>> = session::cookie_values(headers, cookie)
        .filter_map(|raw| check_parse(raw, sep, Source::Cookie))
        .collect();
    let in_path = param
        .and_then(|p| session::path_parameter(path, p))
        .and_then(|raw| check_parse(raw, sep, Source::PathParameter));
    let known = |s: &&SessionId<'_>| s.route.is_some_and(known_route);
    let want = cookies
        .iter()
        .find(known)
        .or(in_path.as_ref().filter(known))
        .or(cookies.first())
        .or(in_path.as_ref())
        .copied();
    let got = session::find(headers, path, cookie, param, sep, known_route);
    assert_eq!(got, want, "find on {path:?} with cookie {cookie:?}");
}

// ---------------------------------------------------------- websocket

/// What following a whole stream gave.
#[derive(Debug, PartialEq, Eq)]
struct Followed {
    /// Bytes passed on (pass-through chunks and held Pongs, in order).
    out: Vec<u8>,
    /// Unmasked payloads of the Pongs held.
    pongs: Vec<Vec<u8>>,
    /// The violation that ended the stream, if one did.
    error: Option<Violation>,
    /// `(at_boundary, in_message, closed)` at the end, when no violation.
    state: Option<(bool, bool, bool)>,
}

/// Feed `stream` to a fresh [`Parser`] in pieces of the given sizes (used
/// in turn, cycling), checking every step's promises.
fn follow(stream: &[u8], pieces: &[usize]) -> Followed {
    let mut p = Parser::new();
    let mut f = Followed {
        out: Vec::new(),
        pongs: Vec::new(),
        error: None,
        state: None,
    };
    let mut at = 0;
    for &size in pieces.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let part = &stream[at..(at + size.max(1)).min(stream.len())];
        at += part.len();
        let mut off = 0;
        while off < part.len() {
            let input = &part[off..];
            match p.step(input) {
                Err(v) => {
                    f.error = Some(v);
                    return f;
                }
                Ok((used, chunk)) => {
                    assert!(used > 0 && used <= input.len(), "step used {used}");
                    match chunk {
                        Some(Chunk::Bytes(b)) => f.out.extend_from_slice(b),
                        Some(Chunk::Pong { raw, payload }) => {
                            check_pong(raw, payload);
                            f.out.extend_from_slice(raw);
                            f.pongs.push(payload.to_vec());
                        }
                        None => {}
                    }
                    off += used;
                }
            }
        }
        assert!(stream.starts_with(&f.out), "output is not the input");
    }
    f.state = Some((p.at_boundary(), p.in_message(), p.closed()));
    f
}

/// A held Pong is one complete frame and its payload is the unmasked body.
fn check_pong(raw: &[u8], payload: &[u8]) {
    let h = frames::parse_header(raw)
        .expect("a held pong has a valid header")
        .expect("a held pong has its whole header");
    assert_eq!(h.opcode, frames::OP_PONG);
    assert!(h.fin && payload.len() <= frames::MAX_CONTROL_PAYLOAD);
    assert_eq!(raw.len(), h.header_len + payload.len());
    assert_eq!(h.len, payload.len() as u64);
    let mut body = raw[h.header_len..].to_vec();
    if let Some(k) = h.mask {
        frames::apply_mask(&mut body, k);
    }
    assert_eq!(body, payload);
}

/// The WebSocket frame follower on a byte stream cut at arbitrary points.
///
/// Input: steering byte (low 3 bits: how many piece sizes follow), the
/// piece sizes (each byte + 1), then the stream.
///
/// Checks: whatever the split, the outcome (bytes passed on, Pongs held,
/// violation, final state) is the one of the unsplit stream; a stream
/// without a violation passes through byte-identical; every step makes
/// progress; the control-frame encoders parse back.
pub fn ws_frames(data: &[u8]) {
    let (flags, rest) = steer(data);
    let (cuts, stream) = rest.split_at(usize::from(flags & 7).min(rest.len()));
    let pieces: Vec<usize> = cuts.iter().map(|&c| usize::from(c) + 1).collect();
    let whole = follow(stream, &[stream.len()]);
    if let Some((boundary, _, _)) = whole.state {
        let held = stream.len() - whole.out.len();
        assert!(
            held <= frames::MAX_HEADER + frames::MAX_CONTROL_PAYLOAD,
            "held {held}"
        );
        if boundary {
            assert_eq!(
                held, 0,
                "a stream ending between frames passes through unchanged"
            );
        }
    }
    if !pieces.is_empty() {
        assert_eq!(follow(stream, &pieces), whole, "split at {pieces:?}");
    }
    assert_eq!(follow(stream, &[1]), whole, "byte by byte");
    let mask = (flags & 8 != 0).then(|| {
        let mut k = [0u8; 4];
        for (d, s) in k.iter_mut().zip(stream) {
            *d = *s;
        }
        k
    });
    check_control_frames(&stream[..stream.len().min(130)], mask);
}

/// `control_frame`, `ping` and `close` build frames the parser follows.
fn check_control_frames(payload: &[u8], mask: Option<[u8; 4]>) {
    let cut = &payload[..payload.len().min(frames::MAX_CONTROL_PAYLOAD)];
    for op in [frames::OP_PING, frames::OP_PONG, frames::OP_CLOSE] {
        let f = frames::control_frame(op, payload, mask);
        let h = frames::parse_header(&f).unwrap().unwrap();
        assert_eq!((h.opcode, h.fin, h.mask), (op, true, mask));
        assert_eq!(h.len, cut.len() as u64);
        let got = follow(&f, &[f.len()]);
        assert_eq!((got.out.as_slice(), got.error), (f.as_slice(), None));
        let want_pongs = if op == frames::OP_PONG {
            vec![cut.to_vec()]
        } else {
            Vec::new()
        };
        assert_eq!(got.pongs, want_pongs);
        assert_eq!(got.state, Some((true, false, op == frames::OP_CLOSE)));
    }
    assert_eq!(
        frames::ping(payload, mask),
        frames::control_frame(frames::OP_PING, payload, mask)
    );
    let code = u16::from_be_bytes([
        payload.first().copied().unwrap_or(3),
        payload.get(1).copied().unwrap_or(0xE9),
    ]);
    assert_eq!(
        frames::close(code, mask),
        frames::control_frame(frames::OP_CLOSE, &code.to_be_bytes(), mask)
    );
}

// ---------------------------------------------------------- multicast

/// The shared secret of the fuzzed cluster.
const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef";

/// A fixed "now" for freshness checks (2026-01-01T00:00:00Z).
const NOW_MS: u64 = 1_767_225_600_000;

/// The multicast store's datagram/frame decoder and its authentication.
///
/// Input: steering byte (bit 0: sign the rest as a peer holding the key
/// would, i.e. treat it as kind, node, timestamp, nonce and payload, and
/// add magic, version and a valid tag; bit 1: TCP frame size limit instead
/// of the datagram one; the high bits pick a bit to flip), then the message.
///
/// Checks: without the key nothing is accepted except a message that was
/// already sealed; a signed message is never `Unauthenticated`; whatever
/// opens re-seals to the same bytes, holds only sendable records, and
/// fails to open after any one-bit change; freshness and replay checks
/// agree with their rules.
pub fn multicast_datagram(data: &[u8]) {
    let key = Key::new(SECRET).expect("any key length is accepted");
    let (flags, rest) = steer(data);
    let signed = flags & 1 != 0;
    let max = if flags & 2 == 0 {
        wire::MAX_DATAGRAM
    } else {
        wire::MAX_FRAME
    };
    let msg = if signed {
        let mut m = Vec::with_capacity(5 + rest.len() + TAG_LEN);
        m.extend_from_slice(&MAGIC);
        m.push(WIRE_VERSION);
        m.extend_from_slice(rest);
        let tag = key.tag(&m);
        m.extend_from_slice(&tag);
        m
    } else {
        rest.to_vec()
    };
    let (h, body) = match wire::open(&key, &msg, max) {
        Ok(opened) => opened,
        Err(Reject::Unauthenticated) => {
            assert!(!signed, "a correctly signed message was unauthenticated");
            return;
        }
        Err(Reject::Malformed) => return,
        Err(other) => panic!("open decides only malformed/unauthenticated, got {other:?}"),
    };
    assert!(msg.len() <= max && msg.len() >= HEADER_LEN + TAG_LEN);
    assert_eq!(h.kind, body.kind());
    check_body(&body, msg.len());
    let again = wire::seal(&key, h.node, h.ts_ms, h.nonce, &body);
    assert_eq!(again, msg, "re-sealing {body:?} changed the bytes");
    let i = usize::from(flags >> 2) * msg.len() / 64;
    let mut tampered = msg.clone();
    tampered[i] ^= 1 << (msg.len() % 8);
    assert!(
        wire::open(&key, &tampered, max).is_err(),
        "flipped byte {i} still opens"
    );
    let other = Key::new(b"another-secret-0123456789").expect("key");
    assert_eq!(wire::open(&other, &msg, max), Err(Reject::Unauthenticated));
    check_freshness_and_replay(h.node, h.ts_ms, h.nonce);
}

/// An opened body holds only what `seal` may send, and its encoded size
/// adds up to the message length.
fn check_body(body: &Body, len: usize) {
    let payload = len - HEADER_LEN - TAG_LEN;
    match body {
        Body::Records(rs) | Body::SyncRecords { records: rs, .. } => {
            assert!(rs.iter().all(wire::Record::fits), "{rs:?}");
            let fixed = if matches!(body, Body::Records(_)) {
                2
            } else {
                14
            };
            let sum: usize = rs.iter().map(wire::Record::encoded_len).sum();
            assert_eq!(fixed + sum, payload);
        }
        Body::States(ss) | Body::SyncStates { states: ss, .. } => {
            assert!(ss.iter().all(wire::StateRecord::fits), "{ss:?}");
            let fixed = if matches!(body, Body::States(_)) {
                2
            } else {
                10
            };
            let sum: usize = ss.iter().map(wire::StateRecord::encoded_len).sum();
            assert_eq!(fixed + sum, payload);
        }
        Body::Heartbeat { listen, .. } => {
            let ip = if listen.is_ipv4() { 4 } else { 16 };
            assert_eq!(payload, 1 + ip + 2 + 8);
        }
        Body::SyncRequest => assert_eq!(payload, 0),
        Body::SyncEnd { .. } => assert_eq!(payload, 16),
    }
}

/// `check_fresh` matches its window; a guard refuses the same message twice.
fn check_freshness_and_replay(node: u64, ts_ms: u64, nonce: u64) {
    let fresh = auth::check_fresh(ts_ms, NOW_MS);
    let want = if u128::from(ts_ms) + u128::from(auth::MAX_SKEW_MS) < u128::from(NOW_MS) {
        Err(Reject::Stale)
    } else if u128::from(ts_ms) > u128::from(NOW_MS) + u128::from(auth::MAX_SKEW_MS) {
        Err(Reject::Future)
    } else {
        Ok(())
    };
    assert_eq!(fresh, want, "freshness of ts {ts_ms}");
    let mut guard = ReplayGuard::default();
    if guard.check(node, ts_ms, nonce, NOW_MS).is_ok() {
        assert_eq!(
            guard.check(node, ts_ms, nonce, NOW_MS),
            Err(Reject::Replayed)
        );
    } else {
        assert_eq!(ts_ms, 0, "a new guard refuses only timestamp 0");
    }
}

// ------------------------------------------------------------- import

/// `stickgate import modjk` on arbitrary mod_jk files.
///
/// Input: steering byte (bit 0: a `uriworkermap.properties` is given;
/// bit 1: `--worker` is given), then NUL-separated workers text,
/// uriworkermap text and worker name (decoded leniently, as the command
/// reads files).
///
/// Checks: an import either gives TOML that loads as a stickgate
/// configuration, with one-line notes, or a typed error whose message is
/// one line; never `ImportError::Generated` (a configuration the importer
/// wrote but stickgate refuses).
pub fn modjk_import(data: &[u8]) {
    let (flags, rest) = steer(data);
    let mut parts = rest.splitn(3, |&b| b == 0);
    let workers = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let uwm = parts.next().map(String::from_utf8_lossy);
    let worker = parts.next().map(String::from_utf8_lossy);
    let uwm = uwm.as_deref().filter(|_| flags & 1 != 0);
    let worker = worker.as_deref().filter(|_| flags & 2 != 0);
    let result = import::modjk_from_str(
        InputFile {
            path: Path::new("workers.properties"),
            text: &workers,
        },
        uwm.map(|text| InputFile {
            path: Path::new("uriworkermap.properties"),
            text,
        }),
        worker,
    );
    match result {
        Ok(imported) => {
            if let Err(e) = stickgate::config::from_str(&imported.toml, Path::new("imported.toml"))
            {
                panic!("imported TOML does not load: {e}\n{}", imported.toml);
            }
            for n in &imported.notes {
                let line = n.to_string();
                assert!(!line.contains('\n'), "note {line:?} spans lines");
            }
        }
        Err(ImportError::Generated { problem }) => {
            panic!("importer wrote a configuration stickgate refuses: {problem}\nworkers: {workers:?}\nuriworkermap: {uwm:?}\nworker: {worker:?}")
        }
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "error {line:?} spans lines");
        }
    }
}

// ---------------------------------------------------------------- AJP

/// AJP replies from a backend (`codec::decode_reply`): the steering byte
/// picks `max_packet_size` (the smallest legal one, or a tiny one that
/// makes most packets too large). Decoding never panics; a whole packet
/// consumes exactly its header and declared length, an incomplete one
/// nothing; bytes not starting with `AB` are a magic error; and feeding
/// the same bytes in two pieces decodes the same first reply.
pub fn ajp_reply(data: &[u8]) {
    let (steer_byte, input) = steer(data);
    let max = if steer_byte % 4 == 0 {
        16
    } else {
        codec::DEFAULT_MAX_PACKET
    };
    let mut buf = BytesMut::from(input);
    let first = codec::decode_reply(&mut buf, max);
    match &first {
        Ok(Some(_)) => {
            let len = u16::from_be_bytes([input[2], input[3]]) as usize;
            assert_eq!(buf.len(), input.len() - 4 - len, "consumed one packet");
        }
        Ok(None) => assert_eq!(buf.len(), input.len(), "nothing consumed"),
        Err(CodecError::BadMagic(m)) => {
            assert_eq!(*m, u16::from_be_bytes([input[0], input[1]]));
            assert_ne!(&input[..2], b"AB");
        }
        Err(_) => {}
    }
    if input.len() >= 2 && &input[..2] != b"AB" {
        assert!(matches!(first, Err(CodecError::BadMagic(_))), "{first:?}");
    }
    // In two pieces: no reply before the packet is whole, then the same.
    let cut = steer_byte as usize % (input.len() + 1);
    let mut piece = BytesMut::from(&input[..cut]);
    let early = codec::decode_reply(&mut piece, max);
    if let (Ok(Some(a)), Ok(Some(b))) = (&early, &first) {
        assert_eq!(a, b);
    }
    if early.is_ok() && !matches!(early, Ok(Some(_))) {
        piece.extend_from_slice(&input[cut..]);
        let later = codec::decode_reply(&mut piece, max);
        assert_eq!(
            later.as_ref().ok().map(|r| r.is_some()),
            first.as_ref().ok().map(|r| r.is_some())
        );
        if let (Ok(Some(a)), Ok(Some(b))) = (&later, &first) {
            assert_eq!(a, b);
        }
    }
    // Whatever follows one packet decodes (or fails) without panicking.
    while let Ok(Some(_)) = codec::decode_reply(&mut buf, max) {}
}
