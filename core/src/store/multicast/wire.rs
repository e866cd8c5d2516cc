//! The message format shared by datagrams and TCP frames.
//!
//! ```text
//! offset 0     4     5     6         14        22       30         30+n
//!        magic ver   kind  node id   ts (ms)   nonce    payload    HMAC-SHA256 (32)
//! ```
//!
//! All integers are big-endian. The tag covers header and payload, and is
//! checked (in constant time) before the payload is even parsed. A record
//! inside a `Records`/`SyncRecords` payload is
//!
//! ```text
//! flags u8 (bit 0: tombstone) | version u64 | idle_ms u32 | id_len u16 | id | [route_len u8 | route]
//! ```
//!
//! and an operator's backend state change inside a `States`/`SyncStates`
//! payload (after a u16 count) is
//!
//! ```text
//! route_len u8 | route | state u8 (AdminState: 0 active .. 3 stopped) | at_ms u64
//! ```
//!
//! The state kinds were added without a version bump: a peer that does not
//! know them drops them as malformed, and a full-state transfer sends them
//! after `SyncEnd`, where such a peer has stopped reading.
//!
//! Session ids are credentials: the tag protects their integrity, not their
//! secrecy (see [`super::auth`]).

use super::auth::{Key, Reject, TAG_LEN};
use crate::admin_state::AdminState;
use crate::store::StateChange;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// First bytes of every message, so stray traffic is dropped early.
pub const MAGIC: [u8; 4] = *b"SGMC";
/// Format version; a peer speaking another one is dropped as malformed.
pub const WIRE_VERSION: u8 = 1;
/// Bytes before the payload: magic, version, kind, node, ts, nonce.
pub const HEADER_LEN: usize = 30;
/// Largest datagram sent or accepted (fits a 1500-byte Ethernet MTU with
/// room for IP/UDP headers and tunnels).
pub const MAX_DATAGRAM: usize = 1400;
/// Largest TCP frame sent or accepted (full-state transfer).
pub const MAX_FRAME: usize = 64 * 1024;
/// Longest session id replicated (Tomcat ids are 32 hex characters).
pub const MAX_ID: usize = 256;
/// Longest route name replicated.
pub const MAX_ROUTE: usize = 255;

const TOMBSTONE: u8 = 1;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Heartbeat = 1,
    Records = 2,
    SyncRequest = 3,
    SyncRecords = 4,
    SyncEnd = 5,
    States = 6,
    SyncStates = 7,
}

impl MessageKind {
    fn from_u8(b: u8) -> Option<MessageKind> {
        Some(match b {
            1 => MessageKind::Heartbeat,
            2 => MessageKind::Records,
            3 => MessageKind::SyncRequest,
            4 => MessageKind::SyncRecords,
            5 => MessageKind::SyncEnd,
            6 => MessageKind::States,
            7 => MessageKind::SyncStates,
            _ => return None,
        })
    }
}

/// The authenticated header of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: MessageKind,
    /// Sender's random per-process node id.
    pub node: u64,
    /// Sender's wall clock, Unix milliseconds.
    pub ts_ms: u64,
    /// Random per message; with `node`, detects replays.
    pub nonce: u64,
}

/// One session's replicated state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: Box<str>,
    /// `None` is a tombstone: the session was forgotten.
    pub route: Option<Arc<str>>,
    pub version: u64,
    /// How long the session had been idle when this was sent.
    pub idle_ms: u32,
}

impl Record {
    /// Bytes this record takes in a payload.
    pub fn encoded_len(&self) -> usize {
        1 + 8 + 4 + 2 + self.id.len() + self.route.as_ref().map_or(0, |r| 1 + r.len())
    }

    /// Whether it can be sent at all (ids and routes have length limits).
    pub fn fits(&self) -> bool {
        !self.id.is_empty()
            && self.id.len() <= MAX_ID
            && self
                .route
                .as_ref()
                .is_none_or(|r| !r.is_empty() && r.len() <= MAX_ROUTE)
    }
}

/// An operator's state change for one backend, as replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRecord {
    pub route: Arc<str>,
    pub change: StateChange,
}

impl StateRecord {
    /// Bytes this entry takes in a payload.
    pub fn encoded_len(&self) -> usize {
        1 + self.route.len() + 1 + 8
    }

    /// Whether it can be sent at all (route names have a length limit).
    pub fn fits(&self) -> bool {
        !self.route.is_empty() && self.route.len() <= MAX_ROUTE
    }
}

/// A decoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// "I am alive": where to reach me and how many records I hold.
    Heartbeat { listen: SocketAddr, records: u64 },
    /// Replicated changes and refreshes.
    Records(Vec<Record>),
    /// "Send me your full state" (the header nonce names the request).
    SyncRequest,
    /// Part `seq` (from 0) of the answer to request `request`.
    SyncRecords {
        request: u64,
        seq: u32,
        records: Vec<Record>,
    },
    /// End of the answer: `total` records were sent.
    SyncEnd { request: u64, total: u64 },
    /// Operators' backend state changes (sent when made, and repeated).
    States(Vec<StateRecord>),
    /// After `SyncEnd`: the state changes the answering peer knows.
    SyncStates {
        request: u64,
        states: Vec<StateRecord>,
    },
}

impl Body {
    /// The header kind this body is sent under.
    pub fn kind(&self) -> MessageKind {
        match self {
            Body::Heartbeat { .. } => MessageKind::Heartbeat,
            Body::Records(_) => MessageKind::Records,
            Body::SyncRequest => MessageKind::SyncRequest,
            Body::SyncRecords { .. } => MessageKind::SyncRecords,
            Body::SyncEnd { .. } => MessageKind::SyncEnd,
            Body::States(_) => MessageKind::States,
            Body::SyncStates { .. } => MessageKind::SyncStates,
        }
    }
}

/// Room for records in a `Records` datagram.
pub const DATAGRAM_RECORD_BUDGET: usize = MAX_DATAGRAM - HEADER_LEN - TAG_LEN - 2;
/// Room for records in a `SyncRecords` frame.
pub const FRAME_RECORD_BUDGET: usize = MAX_FRAME - HEADER_LEN - TAG_LEN - 8 - 4 - 2;
/// Room for state changes in a `States` datagram.
pub const DATAGRAM_STATE_BUDGET: usize = MAX_DATAGRAM - HEADER_LEN - TAG_LEN - 2;
/// Room for state changes in a `SyncStates` frame.
pub const FRAME_STATE_BUDGET: usize = MAX_FRAME - HEADER_LEN - TAG_LEN - 8 - 2;

/// Encode and sign a message.
pub fn seal(key: &Key, node: u64, ts_ms: u64, nonce: u64, body: &Body) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.push(WIRE_VERSION);
    out.push(body.kind() as u8);
    out.extend_from_slice(&node.to_be_bytes());
    out.extend_from_slice(&ts_ms.to_be_bytes());
    out.extend_from_slice(&nonce.to_be_bytes());
    match body {
        Body::Heartbeat { listen, records } => {
            match listen.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&listen.port().to_be_bytes());
            out.extend_from_slice(&records.to_be_bytes());
        }
        Body::Records(records) => put_records(&mut out, records),
        Body::SyncRequest => {}
        Body::SyncRecords {
            request,
            seq,
            records,
        } => {
            out.extend_from_slice(&request.to_be_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
            put_records(&mut out, records);
        }
        Body::SyncEnd { request, total } => {
            out.extend_from_slice(&request.to_be_bytes());
            out.extend_from_slice(&total.to_be_bytes());
        }
        Body::States(states) => put_states(&mut out, states),
        Body::SyncStates { request, states } => {
            out.extend_from_slice(&request.to_be_bytes());
            put_states(&mut out, states);
        }
    }
    let tag = key.tag(&out);
    out.extend_from_slice(&tag);
    out
}

/// Records that do not [`Record::fits`] must have been filtered out; the
/// count saturates at what a u16 holds (callers batch far below it).
fn put_records(out: &mut Vec<u8>, records: &[Record]) {
    let n = records.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for r in &records[..n] {
        let flags = if r.route.is_none() { TOMBSTONE } else { 0 };
        out.push(flags);
        out.extend_from_slice(&r.version.to_be_bytes());
        out.extend_from_slice(&r.idle_ms.to_be_bytes());
        out.extend_from_slice(&(r.id.len() as u16).to_be_bytes());
        out.extend_from_slice(r.id.as_bytes());
        if let Some(route) = &r.route {
            out.push(route.len() as u8);
            out.extend_from_slice(route.as_bytes());
        }
    }
}

/// State changes that do not [`StateRecord::fits`] must have been filtered
/// out; the count saturates like [`put_records`]'.
fn put_states(out: &mut Vec<u8>, states: &[StateRecord]) {
    let n = states.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for s in &states[..n] {
        out.push(s.route.len() as u8);
        out.extend_from_slice(s.route.as_bytes());
        out.push(s.change.state as u8);
        out.extend_from_slice(&s.change.at_ms.to_be_bytes());
    }
}

/// Check and decode a message of at most `max_len` bytes. The tag is
/// verified before anything past the fixed header is looked at. Freshness
/// and replays are the caller's business ([`super::auth`]).
pub fn open(key: &Key, bytes: &[u8], max_len: usize) -> Result<(Header, Body), Reject> {
    if bytes.len() < HEADER_LEN + TAG_LEN || bytes.len() > max_len {
        return Err(Reject::Malformed);
    }
    if bytes[..4] != MAGIC || bytes[4] != WIRE_VERSION {
        return Err(Reject::Malformed);
    }
    let (signed, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    if !key.verify(signed, tag) {
        return Err(Reject::Unauthenticated);
    }
    let mut r = Reader(&signed[5..]);
    let kind = MessageKind::from_u8(r.u8()?).ok_or(Reject::Malformed)?;
    let header = Header {
        kind,
        node: r.u64()?,
        ts_ms: r.u64()?,
        nonce: r.u64()?,
    };
    let body = match kind {
        MessageKind::Heartbeat => {
            let ip = match r.u8()? {
                4 => {
                    let b: [u8; 4] = r.take(4)?.try_into().map_err(|_| Reject::Malformed)?;
                    IpAddr::V4(Ipv4Addr::from(b))
                }
                6 => {
                    let b: [u8; 16] = r.take(16)?.try_into().map_err(|_| Reject::Malformed)?;
                    IpAddr::V6(Ipv6Addr::from(b))
                }
                _ => return Err(Reject::Malformed),
            };
            let port = r.u16()?;
            Body::Heartbeat {
                listen: SocketAddr::new(ip, port),
                records: r.u64()?,
            }
        }
        MessageKind::Records => Body::Records(get_records(&mut r)?),
        MessageKind::SyncRequest => Body::SyncRequest,
        MessageKind::SyncRecords => Body::SyncRecords {
            request: r.u64()?,
            seq: r.u32()?,
            records: get_records(&mut r)?,
        },
        MessageKind::SyncEnd => Body::SyncEnd {
            request: r.u64()?,
            total: r.u64()?,
        },
        MessageKind::States => Body::States(get_states(&mut r)?),
        MessageKind::SyncStates => Body::SyncStates {
            request: r.u64()?,
            states: get_states(&mut r)?,
        },
    };
    if !r.0.is_empty() {
        return Err(Reject::Malformed);
    }
    Ok((header, body))
}

fn get_records(r: &mut Reader<'_>) -> Result<Vec<Record>, Reject> {
    let n = r.u16()? as usize;
    // Each record takes at least 16 bytes: never preallocate more than
    // the payload can hold.
    let mut out = Vec::with_capacity(n.min(r.0.len() / 16));
    for _ in 0..n {
        let flags = r.u8()?;
        if flags & !TOMBSTONE != 0 {
            return Err(Reject::Malformed);
        }
        let version = r.u64()?;
        let idle_ms = r.u32()?;
        let id_len = r.u16()? as usize;
        if id_len == 0 || id_len > MAX_ID {
            return Err(Reject::Malformed);
        }
        let id = r.text(id_len)?;
        let route = if flags & TOMBSTONE != 0 {
            None
        } else {
            let len = r.u8()? as usize;
            if len == 0 {
                return Err(Reject::Malformed);
            }
            Some(Arc::from(r.text(len)?))
        };
        out.push(Record {
            id: id.into(),
            route,
            version,
            idle_ms,
        });
    }
    Ok(out)
}

fn get_states(r: &mut Reader<'_>) -> Result<Vec<StateRecord>, Reject> {
    let n = r.u16()? as usize;
    // Each entry takes at least 11 bytes.
    let mut out = Vec::with_capacity(n.min(r.0.len() / 11));
    for _ in 0..n {
        let len = r.u8()? as usize;
        if len == 0 {
            return Err(Reject::Malformed);
        }
        let route = Arc::from(r.text(len)?);
        let state = AdminState::from_code(r.u8()?).ok_or(Reject::Malformed)?;
        let at_ms = r.u64()?;
        out.push(StateRecord {
            route,
            change: StateChange { state, at_ms },
        });
    }
    Ok(out)
}

/// Bounds-checked big-endian reader.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Reject> {
        if self.0.len() < n {
            return Err(Reject::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Reject> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Reject> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, Reject> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, Reject> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Reject> {
        self.take(N)?.try_into().map_err(|_| Reject::Malformed)
    }
    fn text(&mut self, n: usize) -> Result<&'a str, Reject> {
        std::str::from_utf8(self.take(n)?).map_err(|_| Reject::Malformed)
    }
}

/// Split records into groups whose encoded size stays within `budget`.
pub fn batches(records: Vec<Record>, budget: usize) -> Vec<Vec<Record>> {
    group_by_size(records, budget, Record::encoded_len)
}

/// Split state changes into groups whose encoded size stays within
/// `budget`.
pub fn state_batches(states: Vec<StateRecord>, budget: usize) -> Vec<Vec<StateRecord>> {
    let states = states.into_iter().filter(StateRecord::fits);
    group_by_size(states, budget, StateRecord::encoded_len)
}

/// Consecutive groups of `items` whose `len`s add up to at most `budget`
/// (an item larger than the budget gets a group of its own).
fn group_by_size<T>(
    items: impl IntoIterator<Item = T>,
    budget: usize,
    len: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for item in items {
        let n = len(&item);
        if !cur.is_empty() && size + n > budget {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += n;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin_state::AdminState;
    use rand::{Rng, RngExt};

    fn st(route: &str, state: AdminState, at_ms: u64) -> StateRecord {
        StateRecord {
            route: route.into(),
            change: StateChange { state, at_ms },
        }
    }

    fn key() -> Key {
        Key::new(b"test-secret-0123456789").unwrap()
    }

    fn rec(id: &str, route: Option<&str>, version: u64, idle_ms: u32) -> Record {
        Record {
            id: id.into(),
            route: route.map(Arc::from),
            version,
            idle_ms,
        }
    }

    fn samples() -> Vec<Body> {
        vec![
            Body::Heartbeat {
                listen: "127.0.0.1:45566".parse().unwrap(),
                records: 42,
            },
            Body::Heartbeat {
                listen: "[fd00::1]:9".parse().unwrap(),
                records: 0,
            },
            Body::Records(vec![
                rec("ABCDEF0123456789", Some("node1"), 3, 0),
                rec("X", None, u64::MAX, u32::MAX),
            ]),
            Body::Records(vec![]),
            Body::SyncRequest,
            Body::SyncRecords {
                request: 9,
                seq: 2,
                records: vec![rec(&"i".repeat(MAX_ID), Some(&"r".repeat(MAX_ROUTE)), 1, 5)],
            },
            Body::SyncEnd {
                request: 9,
                total: 12,
            },
            Body::States(vec![
                st("tomcat1", AdminState::Draining, 1_732_350_000_123),
                st(&"r".repeat(MAX_ROUTE), AdminState::Stopped, u64::MAX),
                st("x", AdminState::Active, 0),
                st("y", AdminState::Disabled, 1),
            ]),
            Body::States(vec![]),
            Body::SyncStates {
                request: 9,
                states: vec![st("tomcat2", AdminState::Stopped, 5)],
            },
        ]
    }

    #[test]
    fn round_trip() {
        let k = key();
        for body in samples() {
            let bytes = seal(&k, 7, 1_700_000_000_000, 99, &body);
            let (h, b) = open(&k, &bytes, MAX_FRAME).expect("opens");
            assert_eq!(
                h,
                Header {
                    kind: body.kind(),
                    node: 7,
                    ts_ms: 1_700_000_000_000,
                    nonce: 99
                }
            );
            assert_eq!(b, body);
        }
    }

    #[test]
    fn encoded_len_matches() {
        let rs = vec![rec("abc", Some("n1"), 1, 2), rec("defg", None, 1, 2)];
        let want: usize = rs.iter().map(Record::encoded_len).sum();
        let bytes = seal(&key(), 1, 1, 1, &Body::Records(rs));
        assert_eq!(bytes.len(), HEADER_LEN + 2 + want + TAG_LEN);
    }

    #[test]
    fn batches_stay_under_the_datagram_size() {
        let rs: Vec<Record> = (0..500)
            .map(|i| rec(&format!("{i:032X}"), Some("node-with-a-long-name"), i, 0))
            .collect();
        let groups = batches(rs, DATAGRAM_RECORD_BUDGET);
        assert!(groups.len() > 1);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 500);
        for g in groups {
            let bytes = seal(&key(), 1, 1, 1, &Body::Records(g));
            assert!(bytes.len() <= MAX_DATAGRAM, "{}", bytes.len());
            assert!(open(&key(), &bytes, MAX_DATAGRAM).is_ok());
        }
    }

    #[test]
    fn wrong_key_and_tampering_are_unauthenticated() {
        let body = Body::Records(vec![rec("S", Some("a"), 1, 0)]);
        let bytes = seal(&key(), 1, 2, 3, &body);
        let other = Key::new(b"another-secret-0123456").unwrap();
        assert_eq!(
            open(&other, &bytes, MAX_DATAGRAM),
            Err(Reject::Unauthenticated)
        );
        // Every single-bit flip past the magic/version is caught by the tag.
        for i in 5..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert_eq!(
                    open(&key(), &b, MAX_DATAGRAM),
                    Err(Reject::Unauthenticated),
                    "byte {i} bit {bit}"
                );
            }
        }
        // Flips in magic/version are malformed.
        for i in 0..5 {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert_eq!(open(&key(), &b, MAX_DATAGRAM), Err(Reject::Malformed));
        }
    }

    #[test]
    fn size_limits() {
        let k = key();
        let bytes = seal(&k, 1, 2, 3, &Body::SyncRequest);
        assert_eq!(open(&k, &bytes, bytes.len() - 1), Err(Reject::Malformed));
        assert_eq!(
            open(&k, &bytes[..HEADER_LEN + TAG_LEN - 1], MAX_FRAME),
            Err(Reject::Malformed)
        );
        assert_eq!(open(&k, &[], MAX_FRAME), Err(Reject::Malformed));
        let big = vec![0u8; MAX_FRAME + 1];
        assert_eq!(open(&k, &big, MAX_FRAME), Err(Reject::Malformed));
    }

    /// Signed but malformed payloads (a peer with the key and a bug) are
    /// refused, never trusted.
    #[test]
    fn signed_garbage_payloads_are_malformed() {
        let k = key();
        let mut rng = rand::rng();
        for kind in 0u8..=7 {
            for len in [0usize, 1, 2, 7, 15, 16, 40, 300] {
                let mut msg = Vec::new();
                msg.extend_from_slice(&MAGIC);
                msg.push(WIRE_VERSION);
                msg.push(kind);
                msg.extend_from_slice(&[0u8; 24]);
                let mut payload = vec![0u8; len];
                rng.fill_bytes(&mut payload);
                msg.extend_from_slice(&payload);
                let tag = k.tag(&msg);
                msg.extend_from_slice(&tag);
                // Must not panic; whatever it returns must be consistent.
                if let Ok((h, body)) = open(&k, &msg, MAX_FRAME) {
                    assert_eq!(h.kind, body.kind());
                }
            }
        }
        // A record count larger than the payload.
        let mut msg = Vec::new();
        msg.extend_from_slice(&MAGIC);
        msg.extend_from_slice(&[WIRE_VERSION, MessageKind::Records as u8]);
        msg.extend_from_slice(&[0u8; 24]);
        msg.extend_from_slice(&u16::MAX.to_be_bytes());
        let tag = k.tag(&msg);
        msg.extend_from_slice(&tag);
        assert_eq!(open(&k, &msg, MAX_FRAME), Err(Reject::Malformed));
    }

    #[test]
    fn state_encoding_and_limits() {
        let k = key();
        let one = st("tomcat1", AdminState::Draining, 7);
        let bytes = seal(&k, 1, 1, 1, &Body::States(vec![one.clone()]));
        assert_eq!(bytes.len(), HEADER_LEN + 2 + one.encoded_len() + TAG_LEN);
        // An unknown state number or an empty route is refused even when
        // signed (a peer with the key and a bug).
        let state_at = HEADER_LEN + 2 + 1 + "tomcat1".len();
        for (at, v) in [(state_at, 4u8), (state_at, 0xFF), (HEADER_LEN + 2, 0)] {
            let mut msg = bytes[..bytes.len() - TAG_LEN].to_vec();
            msg[at] = v;
            if at == HEADER_LEN + 2 {
                // Zero-length route: drop the route bytes too.
                msg.drain(at + 1..at + 1 + "tomcat1".len());
            }
            let tag = k.tag(&msg);
            msg.extend_from_slice(&tag);
            assert_eq!(
                open(&k, &msg, MAX_DATAGRAM),
                Err(Reject::Malformed),
                "{at} {v}"
            );
        }
        // Many routes split into datagrams that fit; unfit ones are left out.
        let mut many: Vec<StateRecord> = (0..300)
            .map(|i| {
                st(
                    &format!("node-with-a-long-name-{i}"),
                    AdminState::Stopped,
                    i,
                )
            })
            .collect();
        many.push(st("", AdminState::Stopped, 1));
        many.push(st(&"r".repeat(MAX_ROUTE + 1), AdminState::Stopped, 1));
        let groups = state_batches(many, DATAGRAM_STATE_BUDGET);
        assert!(groups.len() > 1);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 300);
        for g in groups {
            let bytes = seal(&k, 1, 1, 1, &Body::States(g));
            assert!(bytes.len() <= MAX_DATAGRAM, "{}", bytes.len());
            assert!(open(&k, &bytes, MAX_DATAGRAM).is_ok());
        }
    }

    /// Fuzz-ish: random bytes, truncations, bit flips and oversized input
    /// never panic and are never accepted without the key.
    #[test]
    fn hostile_input_never_panics() {
        let k = key();
        let mut rng = rand::rng();
        let good: Vec<Vec<u8>> = samples().iter().map(|b| seal(&k, 5, 6, 7, b)).collect();
        for _ in 0..20_000 {
            let len = rng.random_range(0..2 * MAX_DATAGRAM);
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            if rng.random_bool(0.5) && b.len() >= 5 {
                b[..4].copy_from_slice(&MAGIC);
                b[4] = WIRE_VERSION;
            }
            assert!(open(&k, &b, MAX_DATAGRAM).is_err());
        }
        for g in &good {
            for cut in 0..g.len() {
                assert!(open(&k, &g[..cut], MAX_FRAME).is_err());
            }
            for _ in 0..500 {
                let mut b = g.clone();
                let flips = rng.random_range(1..4);
                for _ in 0..flips {
                    let i = rng.random_range(0..b.len());
                    b[i] ^= 1 << rng.random_range(0..8);
                }
                if b != *g {
                    assert!(open(&k, &b, MAX_FRAME).is_err());
                }
            }
            let mut long = g.clone();
            long.resize(MAX_FRAME * 2, 0xAA);
            assert!(open(&k, &long, MAX_FRAME).is_err());
        }
    }
}
