//! The takeover protocol's frames: pure encoding and decoding, no IO.
//!
//! Every frame is `[tag: u8][length: u32 big-endian][payload]`, the
//! payload at most [`MAX_FRAME`] bytes, so a reader never allocates more
//! than that for one frame whatever the peer sends. Strings are a `u16`
//! length and UTF-8 bytes, each kind with its own ceiling. The first frame
//! of the new process is [`Frame::Hello`] with [`MAGIC`] and [`VERSION`];
//! the old process refuses any other version with [`Frame::Refused`], so
//! a future format change is an error message, never a misread table.

use crate::admin_state::AdminState;
use std::net::SocketAddr;

/// Protocol version; bumped on any change of a frame's layout.
pub const VERSION: u16 = 1;
/// First bytes of [`Frame::Hello`]: a stray client is refused at once.
pub const MAGIC: &[u8; 8] = b"SGTAKEOV";
/// Largest payload of one frame (session tables travel in many frames).
pub const MAX_FRAME: usize = 1 << 20;
/// A [`Frame::Sessions`] is closed once its payload passes this size.
pub const BATCH_BYTES: usize = 256 * 1024;
/// Longest session id carried (longer ones are not real Tomcat ids).
pub const MAX_ID: usize = 1024;
/// Longest route, listener address or refusal reason carried.
pub const MAX_NAME: usize = 512;
/// Length of a frame head (tag and payload length).
pub const HEAD: usize = 5;

/// Which listener a handed-over socket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `server.listen` socket.
    Plain = 0,
    /// A `server.tls_listen` socket.
    Tls = 1,
    /// The `admin.listen` socket.
    Admin = 2,
}

impl Kind {
    fn from_code(c: u8) -> Result<Kind, WireError> {
        match c {
            0 => Ok(Kind::Plain),
            1 => Ok(Kind::Tls),
            2 => Ok(Kind::Admin),
            _ => Err(WireError::Bad("listener kind")),
        }
    }
}

/// One session of the memory store, as handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The base session id (a credential: never logged).
    pub id: String,
    /// The backend it is bound to.
    pub route: String,
    /// Milliseconds since its last request: the copy expires when the
    /// original would have.
    pub idle_ms: u64,
    /// A binding a backend confirmed (false: the unconfirmed tier).
    pub confirmed: bool,
}

/// A backend's administrative state, as an operator last set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The backend.
    pub route: String,
    /// What the operator set.
    pub state: AdminState,
    /// Unix milliseconds of the operator's action (newest wins).
    pub at_ms: u64,
}

/// Everything the two processes say to each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// New -> old: the first frame; `pid` is for the old one's log.
    Hello { version: u16, pid: u32 },
    /// Old -> new: takeover refused (version, busy); the reason is logged.
    Refused(String),
    /// Old -> new: one listening socket; its descriptor follows as one byte
    /// carrying SCM_RIGHTS. `addr` is the address as configured.
    Listener { kind: Kind, addr: SocketAddr },
    /// Old -> new: a batch of sessions (snapshot or delta).
    Sessions(Vec<Session>),
    /// Old -> new: backend states set by operators.
    States(Vec<State>),
    /// Old -> new: the snapshot is complete.
    Snapshot,
    /// New -> old: ready; stop accepting.
    Go,
    /// Old -> new: accepting stopped and the sessions learned since the
    /// snapshot were sent; the new process may accept now.
    Stopped,
    /// Old -> new: drained; the last delta was sent, the old one exits.
    Done,
}

/// A frame that cannot be read; the takeover is abandoned with this.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is larger than the {MAX_FRAME} allowed")]
    TooLarge(usize),
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    #[error("frame ends inside its {0}")]
    Truncated(&'static str),
    #[error("frame has {0} bytes after its end")]
    Trailing(usize),
    #[error("bad {0} in frame")]
    Bad(&'static str),
    #[error("{0} longer than allowed")]
    TooLong(&'static str),
    #[error("not a stickgate takeover peer (bad magic)")]
    Magic,
}

const T_HELLO: u8 = 1;
const T_REFUSED: u8 = 2;
const T_LISTENER: u8 = 3;
const T_SESSIONS: u8 = 4;
const T_STATES: u8 = 5;
const T_SNAPSHOT: u8 = 6;
const T_GO: u8 = 7;
const T_STOPPED: u8 = 8;
const T_DONE: u8 = 9;

impl Frame {
    /// The frame as bytes on the wire, head included. A string over its
    /// ceiling is cut (reasons) or its record skipped by the caller.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        let tag = match self {
            Frame::Hello { version, pid } => {
                p.extend_from_slice(MAGIC);
                p.extend_from_slice(&version.to_be_bytes());
                p.extend_from_slice(&pid.to_be_bytes());
                T_HELLO
            }
            Frame::Refused(why) => {
                put_str(&mut p, cut(why, MAX_NAME));
                T_REFUSED
            }
            Frame::Listener { kind, addr } => {
                p.push(*kind as u8);
                put_str(&mut p, &addr.to_string());
                T_LISTENER
            }
            Frame::Sessions(list) => {
                p.extend_from_slice(&(list.len() as u32).to_be_bytes());
                for s in list {
                    put_session(&mut p, s);
                }
                T_SESSIONS
            }
            Frame::States(list) => {
                p.extend_from_slice(&(list.len() as u32).to_be_bytes());
                for s in list {
                    put_str(&mut p, cut(&s.route, MAX_NAME));
                    p.push(s.state as u8);
                    p.extend_from_slice(&s.at_ms.to_be_bytes());
                }
                T_STATES
            }
            Frame::Snapshot => T_SNAPSHOT,
            Frame::Go => T_GO,
            Frame::Stopped => T_STOPPED,
            Frame::Done => T_DONE,
        };
        let mut out = Vec::with_capacity(HEAD + p.len());
        out.push(tag);
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(&p);
        out
    }

    /// Read a frame head: the tag and the payload length to read next,
    /// refused before anything is allocated when it is too large.
    pub fn head(h: [u8; HEAD]) -> Result<(u8, usize), WireError> {
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        if len > MAX_FRAME {
            return Err(WireError::TooLarge(len));
        }
        Ok((h[0], len))
    }

    /// The frame with tag `tag` and this payload.
    pub fn decode(tag: u8, payload: &[u8]) -> Result<Frame, WireError> {
        let mut r = Reader(payload);
        let f = match tag {
            T_HELLO => {
                if r.take(MAGIC.len(), "magic")? != MAGIC {
                    return Err(WireError::Magic);
                }
                Frame::Hello {
                    version: r.u16("version")?,
                    pid: r.u32("pid")?,
                }
            }
            T_REFUSED => Frame::Refused(r.str(MAX_NAME, "reason")?),
            T_LISTENER => {
                let kind = Kind::from_code(r.u8("listener kind")?)?;
                let addr = r.str(MAX_NAME, "address")?;
                let addr = addr.parse().map_err(|_| WireError::Bad("address"))?;
                Frame::Listener { kind, addr }
            }
            T_SESSIONS => Frame::Sessions(r.list(|r| r.session())?),
            T_STATES => Frame::States(r.list(|r| r.state())?),
            T_SNAPSHOT => Frame::Snapshot,
            T_GO => Frame::Go,
            T_STOPPED => Frame::Stopped,
            T_DONE => Frame::Done,
            t => return Err(WireError::UnknownTag(t)),
        };
        if !r.0.is_empty() {
            return Err(WireError::Trailing(r.0.len()));
        }
        Ok(f)
    }

    /// The frame's name, for "expected X, got Y" errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Refused(_) => "refusal",
            Frame::Listener { .. } => "listener",
            Frame::Sessions(_) => "sessions",
            Frame::States(_) => "states",
            Frame::Snapshot => "end of snapshot",
            Frame::Go => "go",
            Frame::Stopped => "stopped",
            Frame::Done => "done",
        }
    }
}

/// Whether a session can travel: ids and routes within their ceilings
/// (the store never holds longer ones; this keeps a frame decodable).
pub fn fits(id: &str, route: &str) -> bool {
    id.len() <= MAX_ID && route.len() <= MAX_NAME
}

/// Sessions cut into [`Frame::Sessions`] of about [`BATCH_BYTES`] each,
/// so a table of any size travels in frames a reader can take.
#[derive(Default)]
pub struct Batches {
    current: Vec<Session>,
    bytes: usize,
    done: Vec<Frame>,
}

impl Batches {
    /// Add one session (skipped unless it [`fits`]).
    pub fn push(&mut self, s: Session) {
        if !fits(&s.id, &s.route) {
            return;
        }
        self.bytes += 13 + s.id.len() + s.route.len();
        self.current.push(s);
        if self.bytes >= BATCH_BYTES {
            self.done
                .push(Frame::Sessions(std::mem::take(&mut self.current)));
            self.bytes = 0;
        }
    }

    /// Every frame, the last partial one included.
    pub fn finish(mut self) -> Vec<Frame> {
        if !self.current.is_empty() {
            self.done.push(Frame::Sessions(self.current));
        }
        self.done
    }
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_str(p: &mut Vec<u8>, s: &str) {
    p.extend_from_slice(&(s.len() as u16).to_be_bytes());
    p.extend_from_slice(s.as_bytes());
}

fn put_session(p: &mut Vec<u8>, s: &Session) {
    p.push(u8::from(s.confirmed));
    p.extend_from_slice(&s.idle_ms.to_be_bytes());
    put_str(p, &s.id);
    put_str(p, &s.route);
}

/// A cursor over a payload; every read is checked against its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(a))
    }

    fn str(&mut self, max: usize, what: &'static str) -> Result<String, WireError> {
        let n = self.u16(what)? as usize;
        if n > max {
            return Err(WireError::TooLong(what));
        }
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::Bad(what))
    }

    /// A count, then that many records; the count cannot promise more
    /// records than the payload has bytes (no allocation on its word).
    fn list<T>(
        &mut self,
        mut one: impl FnMut(&mut Self) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let n = self.u32("count")? as usize;
        let mut out = Vec::with_capacity(n.min(self.0.len()));
        for _ in 0..n {
            out.push(one(self)?);
        }
        Ok(out)
    }

    fn session(&mut self) -> Result<Session, WireError> {
        let confirmed = match self.u8("session tier")? {
            0 => false,
            1 => true,
            _ => return Err(WireError::Bad("session tier")),
        };
        Ok(Session {
            confirmed,
            idle_ms: self.u64("session age")?,
            id: self.str(MAX_ID, "session id")?,
            route: self.str(MAX_NAME, "route")?,
        })
    }

    fn state(&mut self) -> Result<State, WireError> {
        let route = self.str(MAX_NAME, "route")?;
        let state = AdminState::from_code(self.u8("state")?).ok_or(WireError::Bad("state"))?;
        Ok(State {
            route,
            state,
            at_ms: self.u64("state time")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let bytes = f.encode();
        let (tag, len) = Frame::head(bytes[..HEAD].try_into().unwrap()).unwrap();
        assert_eq!(len, bytes.len() - HEAD);
        assert_eq!(Frame::decode(tag, &bytes[HEAD..]).unwrap(), f);
    }

    fn session(i: usize) -> Session {
        Session {
            id: format!("ID{i:040}"),
            route: "tomcat1".into(),
            idle_ms: i as u64,
            confirmed: i.is_multiple_of(2),
        }
    }

    #[test]
    fn every_frame_survives_the_wire() {
        roundtrip(Frame::Hello {
            version: VERSION,
            pid: 42,
        });
        roundtrip(Frame::Refused("busy".into()));
        roundtrip(Frame::Listener {
            kind: Kind::Tls,
            addr: "[::1]:8443".parse().unwrap(),
        });
        roundtrip(Frame::Sessions((0..50).map(session).collect()));
        roundtrip(Frame::States(vec![State {
            route: "n2".into(),
            state: AdminState::Draining,
            at_ms: 1_700_000_000_000,
        }]));
        for f in [Frame::Snapshot, Frame::Go, Frame::Stopped, Frame::Done] {
            roundtrip(f);
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_them() {
        let mut h = [T_SESSIONS, 0, 0, 0, 0];
        h[1..].copy_from_slice(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert!(matches!(Frame::head(h), Err(WireError::TooLarge(_))));
        h[1..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Frame::head(h), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn malformed_payloads_are_errors_never_panics() {
        let good = Frame::Sessions((0..3).map(session).collect()).encode();
        // Every truncation of a good frame, and every single-byte change.
        for cut in 0..good.len() - HEAD {
            assert!(
                Frame::decode(T_SESSIONS, &good[HEAD..HEAD + cut]).is_err(),
                "cut {cut}"
            );
        }
        for i in HEAD..good.len() {
            let mut b = good.clone();
            b[i] = b[i].wrapping_add(0x81);
            let _ = Frame::decode(T_SESSIONS, &b[HEAD..]);
        }
        // A count promising four billion records allocates nothing for it.
        let huge = [0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            Frame::decode(T_SESSIONS, &huge),
            Err(WireError::Truncated(_))
        ));
        assert!(matches!(
            Frame::decode(99, &[]),
            Err(WireError::UnknownTag(99))
        ));
        assert!(matches!(
            Frame::decode(T_GO, &[1]),
            Err(WireError::Trailing(1))
        ));
        let mut hello = Frame::Hello { version: 1, pid: 1 }.encode();
        hello[HEAD] = b'X';
        assert!(matches!(
            Frame::decode(T_HELLO, &hello[HEAD..]),
            Err(WireError::Magic)
        ));
        let bad_state = [0, 0, 0, 1, 0, 1, b'a', 9, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            Frame::decode(T_STATES, &bad_state),
            Err(WireError::Bad("state"))
        ));
        let bad_kind = [7, 0, 0];
        assert!(matches!(
            Frame::decode(T_LISTENER, &bad_kind),
            Err(WireError::Bad(_))
        ));
    }

    #[test]
    fn batches_stay_under_the_frame_limit_and_skip_what_cannot_travel() {
        let mut b = Batches::default();
        for i in 0..20_000 {
            b.push(session(i));
        }
        b.push(Session {
            id: "x".repeat(MAX_ID + 1),
            ..session(0)
        });
        let frames = b.finish();
        assert!(frames.len() > 1, "a big table is cut into batches");
        let mut n = 0;
        for f in &frames {
            let bytes = f.encode();
            assert!(bytes.len() - HEAD <= MAX_FRAME);
            let Frame::Sessions(list) = f else { panic!() };
            n += list.len();
        }
        assert_eq!(n, 20_000, "the oversized id is skipped, nothing else");
        assert_eq!(cut("héllo", 2), "h");
    }
}
