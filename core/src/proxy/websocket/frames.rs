//! Just enough RFC 6455 framing to know where frames start and end.
//!
//! The tunnel never decodes messages: payload bytes go through untouched
//! and unbuffered. The [`Parser`] only follows frame headers so the relay
//! knows when it stands on a frame boundary (where a Ping may be injected
//! or a Close sent), and holds Pong frames (at most 125 payload bytes) whole
//! so the relay can swallow the answers to its own Pings.
//!
//! It is sans-IO and never panics on input: anything that is not a
//! well-formed frame stream is a [`Violation`] and ends the tunnel.

/// Continuation frame opcode.
pub const OP_CONT: u8 = 0x0;
/// Text frame opcode.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 0xA;

/// Largest payload of a control frame (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Longest frame header: 2 bytes, 8 bytes of length, 4 bytes of mask key.
pub const MAX_HEADER: usize = 14;
/// Close code "going away" (RFC 6455 section 7.4.1).
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// A frame stream that no conforming endpoint sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("control frame with {0}-byte payload (at most 125 allowed)")]
    ControlTooLong(u64),
    #[error("fragmented control frame")]
    FragmentedControl,
    #[error("64-bit payload length with the most significant bit set")]
    LengthOverflow,
    #[error("continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    #[error("new data frame inside a fragmented message")]
    InterruptedMessage,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// The three RSV bits (extensions such as permessage-deflate use them;
    /// they are negotiated end to end, so they pass untouched).
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
    /// Bytes the header takes on the wire (2 to 14).
    pub header_len: usize,
}

impl Header {
    /// Control frames: Close, Ping, Pong (and the reserved 0xB-0xF).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// How many header bytes are needed given the first `have` bytes: 2 until
/// the second byte is known, then the full header length.
fn header_len(buf: &[u8]) -> usize {
    if buf.len() < 2 {
        return 2;
    }
    let ext = match buf[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if buf[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// Parse a frame header from the start of `buf`; `Ok(None)` when more bytes
/// are needed. Opcode and control-frame rules are checked as soon as the
/// bytes that carry them are there, so garbage fails fast.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, Violation> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        other => return Err(Violation::ReservedOpcode(other)),
    }
    let control = opcode & 0x8 != 0;
    if control && !fin {
        return Err(Violation::FragmentedControl);
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    let len7 = b1 & 0x7F;
    if control && len7 as usize > MAX_CONTROL_PAYLOAD {
        return Err(Violation::ControlTooLong(len7 as u64));
    }
    let need = header_len(buf);
    if buf.len() < need {
        return Ok(None);
    }
    let (len, at) = match len7 {
        126 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(Violation::LengthOverflow);
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    let mask = (b1 & 0x80 != 0).then(|| [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    Ok(Some(Header {
        fin,
        rsv,
        opcode,
        mask,
        len,
        header_len: need,
    }))
}

/// What the relay does with the next piece of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// Pass these bytes on unchanged.
    Bytes(&'a [u8]),
    /// A complete Pong frame: its wire bytes, and its payload unmasked.
    Pong { raw: &'a [u8], payload: &'a [u8] },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a header in `head`.
    Header,
    /// Passing this many payload bytes through.
    Payload(u64),
    /// Collecting a whole Pong frame in `held`.
    Pong { total: usize, mask: Option<[u8; 4]> },
}

/// Follows frame boundaries of one direction of a WebSocket connection.
#[derive(Debug)]
pub struct Parser {
    state: State,
    head: [u8; MAX_HEADER],
    head_len: usize,
    held: [u8; MAX_HEADER + MAX_CONTROL_PAYLOAD],
    held_len: usize,
    payload: [u8; MAX_CONTROL_PAYLOAD],
    /// Inside a fragmented data message (a data frame without FIN seen).
    in_message: bool,
    /// A Close frame went by: the sender will send nothing more.
    closed: bool,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Parser {
            state: State::Header,
            head: [0; MAX_HEADER],
            head_len: 0,
            held: [0; MAX_HEADER + MAX_CONTROL_PAYLOAD],
            held_len: 0,
            payload: [0; MAX_CONTROL_PAYLOAD],
            in_message: false,
            closed: false,
        }
    }

    /// Between two frames, with nothing held: a frame may be inserted here.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Header && self.head_len == 0
    }

    /// A Close frame passed (its sender must send no more frames).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Inside a fragmented message (control frames may still be inserted).
    pub fn in_message(&self) -> bool {
        self.in_message
    }

    /// Consume a prefix of `input`: returns how many bytes were used and
    /// what to do with them (`None`: they were kept, more are needed).
    /// Call again with the rest until all of `input` is used.
    pub fn step<'a>(
        &'a mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<Chunk<'a>>), Violation> {
        match self.state {
            State::Header => self.step_header(input),
            State::Payload(rem) => {
                let k = usize::try_from(rem).unwrap_or(usize::MAX).min(input.len());
                let left = rem - k as u64;
                self.state = if left == 0 {
                    State::Header
                } else {
                    State::Payload(left)
                };
                let chunk = (k > 0).then(|| Chunk::Bytes(&input[..k]));
                Ok((k, chunk))
            }
            State::Pong { total, mask } => {
                let k = (total - self.held_len).min(input.len());
                self.held[self.held_len..self.held_len + k].copy_from_slice(&input[..k]);
                self.held_len += k;
                if self.held_len < total {
                    return Ok((k, None));
                }
                Ok((k, Some(self.finish_pong(total, mask))))
            }
        }
    }

    fn step_header<'a>(
        &'a mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<Chunk<'a>>), Violation> {
        let mut used = 0;
        let h = loop {
            if let Some(h) = parse_header(&self.head[..self.head_len])? {
                break h;
            }
            let need = header_len(&self.head[..self.head_len]);
            let k = (need - self.head_len).min(input.len() - used);
            if k == 0 {
                return Ok((used, None));
            }
            self.head[self.head_len..self.head_len + k].copy_from_slice(&input[used..used + k]);
            self.head_len += k;
            used += k;
        };
        match h.opcode {
            OP_CONT => {
                if !self.in_message {
                    return Err(Violation::UnexpectedContinuation);
                }
                self.in_message = !h.fin;
            }
            OP_TEXT | OP_BINARY => {
                if self.in_message {
                    return Err(Violation::InterruptedMessage);
                }
                self.in_message = !h.fin;
            }
            OP_CLOSE => self.closed = true,
            _ => {}
        }
        let hl = self.head_len;
        self.head_len = 0;
        if h.opcode == OP_PONG {
            // Control frames are short: hold the whole Pong to read it.
            self.held[..hl].copy_from_slice(&self.head[..hl]);
            self.held_len = hl;
            let total = hl + h.len as usize;
            if h.len == 0 {
                return Ok((used, Some(self.finish_pong(total, h.mask))));
            }
            self.state = State::Pong {
                total,
                mask: h.mask,
            };
            return Ok((used, None));
        }
        self.state = if h.len == 0 {
            State::Header
        } else {
            State::Payload(h.len)
        };
        Ok((used, Some(Chunk::Bytes(&self.head[..hl]))))
    }

    fn finish_pong(&mut self, total: usize, mask: Option<[u8; 4]>) -> Chunk<'_> {
        self.state = State::Header;
        self.held_len = 0;
        let hl = header_len(&self.held[..2]);
        let n = total - hl;
        self.payload[..n].copy_from_slice(&self.held[hl..total]);
        if let Some(m) = mask {
            apply_mask(&mut self.payload[..n], m);
        }
        Chunk::Pong {
            raw: &self.held[..total],
            payload: &self.payload[..n],
        }
    }
}

/// XOR `data` with the 4-byte masking key (RFC 6455 section 5.3).
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// A complete control frame (FIN set). `mask` is required toward a server
/// (client-to-server frames are masked) and must be `None` toward a client.
/// The payload is cut at 125 bytes.
pub fn control_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let mut f = Vec::with_capacity(6 + payload.len());
    f.push(0x80 | (opcode & 0x0F));
    let m = if mask.is_some() { 0x80 } else { 0 };
    f.push(m | payload.len() as u8);
    let start = match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.len()
        }
        None => f.len(),
    };
    f.extend_from_slice(payload);
    if let Some(k) = mask {
        apply_mask(&mut f[start..], k);
    }
    f
}

/// A Ping frame with `payload`.
pub fn ping(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    control_frame(OP_PING, payload, mask)
}

/// A Close frame with status `code` and no reason.
pub fn close(code: u16, mask: Option<[u8; 4]>) -> Vec<u8> {
    control_frame(OP_CLOSE, &code.to_be_bytes(), mask)
}

#[cfg(test)]
/// Encode a frame the way a peer would (any opcode/flags, any length).
pub(super) fn test_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xFFFF => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = f.len() + mask.map_or(0, |_| 4);
    if let Some(k) = mask {
        f.extend_from_slice(&k);
    }
    f.extend_from_slice(payload);
    if let Some(k) = mask {
        apply_mask(&mut f[start..], k);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_frame as frame;

    /// Everything `Parser` does with `input` fed in pieces of `piece`
    /// bytes: bytes passed through, and the Pong payloads it held.
    fn run(input: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<Vec<u8>>), Violation> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        let mut pongs = Vec::new();
        for part in input.chunks(piece.max(1)) {
            let mut off = 0;
            while off < part.len() {
                let (used, chunk) = p.step(&part[off..])?;
                off += used;
                match chunk {
                    Some(Chunk::Bytes(b)) => out.extend_from_slice(b),
                    Some(Chunk::Pong { raw, payload }) => {
                        out.extend_from_slice(raw);
                        pongs.push(payload.to_vec());
                    }
                    None => assert!(used > 0, "no progress"),
                }
            }
        }
        assert!(p.at_boundary(), "stream ended mid-frame");
        Ok((out, pongs))
    }

    #[test]
    fn header_length_forms() {
        for (len, hl) in [(0usize, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let f = frame(true, OP_BINARY, &vec![7u8; len], None);
            let h = parse_header(&f).unwrap().unwrap();
            assert_eq!((h.len, h.header_len, h.mask), (len as u64, hl, None));
            assert!(h.fin);
            // Every strict prefix of the header asks for more.
            for cut in 0..hl {
                assert_eq!(parse_header(&f[..cut]), Ok(None), "len {len} cut {cut}");
            }
        }
        // 64-bit length just under the limit is fine; the top bit is not.
        let mut f = vec![0x82, 127];
        f.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert_eq!(parse_header(&f).unwrap().unwrap().len, u64::MAX >> 1);
        f[2] = 0x80;
        assert_eq!(parse_header(&f), Err(Violation::LengthOverflow));
    }

    #[test]
    fn masked_headers() {
        let key = [1, 2, 3, 4];
        for len in [0usize, 5, 300, 70_000] {
            let f = frame(false, OP_TEXT, &vec![b'a'; len], Some(key));
            let h = parse_header(&f).unwrap().unwrap();
            assert_eq!(h.mask, Some(key));
            assert!(!h.fin);
            assert_eq!(h.len, len as u64);
            assert_eq!(h.header_len, f.len() - len);
        }
    }

    #[test]
    fn rsv_bits_pass() {
        let f = [0xC1, 0x00]; // FIN + RSV1 (permessage-deflate), text, empty
        let h = parse_header(&f).unwrap().unwrap();
        assert_eq!(h.rsv, 0b100);
        assert_eq!(run(&f, 1).unwrap().0, f);
    }

    #[test]
    fn passes_everything_byte_identical_in_any_split() {
        let k = Some([9, 8, 7, 6]);
        let mut s = Vec::new();
        s.extend(frame(true, OP_TEXT, b"hello", k));
        s.extend(frame(false, OP_BINARY, &[1; 200], k)); // fragmented message...
        s.extend(frame(true, OP_PING, b"app-ping", k)); // ...control frame between fragments
        s.extend(frame(false, OP_CONT, &[2; 70_000], k));
        s.extend(frame(true, OP_PONG, b"app-pong", k));
        s.extend(frame(true, OP_CONT, &[], k)); // ...empty final fragment
        s.extend(frame(true, OP_BINARY, &[], None));
        s.extend(frame(true, OP_CLOSE, &1000u16.to_be_bytes(), k));
        for piece in [1, 2, 3, 7, 13, 64, 4096, s.len()] {
            let (out, pongs) = run(&s, piece).unwrap();
            assert_eq!(out, s, "piece {piece}");
            assert_eq!(pongs, vec![b"app-pong".to_vec()]);
        }
    }

    #[test]
    fn large_frame_streams_in_pieces() {
        let mut p = Parser::new();
        let mut f = vec![0x82, 127];
        f.extend_from_slice(&(16u64 << 20).to_be_bytes());
        let (used, c) = p.step(&f).unwrap();
        assert_eq!(used, 10);
        assert_eq!(c, Some(Chunk::Bytes(&f[..])));
        let block = vec![0u8; 1 << 20];
        for _ in 0..16 {
            assert!(!p.at_boundary());
            let (used, c) = p.step(&block).unwrap();
            assert_eq!(used, block.len());
            assert!(matches!(c, Some(Chunk::Bytes(b)) if b.len() == block.len()));
        }
        assert!(p.at_boundary());
    }

    #[test]
    fn boundary_only_between_frames() {
        let f = frame(true, OP_TEXT, b"abc", None);
        let mut p = Parser::new();
        assert!(p.at_boundary());
        let (u, _) = p.step(&f[..1]).unwrap();
        assert_eq!(u, 1);
        assert!(!p.at_boundary(), "half a header is not a boundary");
        let (u, _) = p.step(&f[1..2]).unwrap();
        assert_eq!(u, 1);
        assert!(!p.at_boundary(), "mid payload is not a boundary");
        let (u, _) = p.step(&f[2..4]).unwrap();
        assert_eq!(u, 2);
        assert!(!p.at_boundary());
        p.step(&f[4..]).unwrap();
        assert!(p.at_boundary());
        // Between fragments of a message is a boundary (control frames may
        // be interleaved there), and the parser says it is inside a message.
        p.step(&frame(false, OP_TEXT, b"x", None)).unwrap();
        p.step(b"x").unwrap();
        assert!(p.at_boundary() && p.in_message());
    }

    #[test]
    fn pong_is_held_whole_and_unmasked() {
        let key = [0xAA, 0x55, 0x0F, 0xF0];
        let f = frame(true, OP_PONG, b"stickgate-ping-7", Some(key));
        let mut p = Parser::new();
        let (u, c) = p.step(&f[..5]).unwrap();
        assert_eq!((u, c), (5, None));
        assert!(!p.at_boundary());
        // The rest of the header, then (next call) the payload.
        let (u, c) = p.step(&f[5..]).unwrap();
        assert_eq!((u, c), (1, None));
        assert!(!p.at_boundary(), "a held pong is not a boundary");
        let (u, c) = p.step(&f[6..]).unwrap();
        assert_eq!(u, f.len() - 6);
        assert_eq!(
            c,
            Some(Chunk::Pong {
                raw: &f[..],
                payload: b"stickgate-ping-7"
            })
        );
        assert!(p.at_boundary());
        // Empty pong: complete as soon as its header is.
        let e = frame(true, OP_PONG, b"", None);
        let (_, c) = p.step(&e).unwrap();
        assert_eq!(
            c,
            Some(Chunk::Pong {
                raw: &e[..],
                payload: b""
            })
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(run(&[0x83, 0], 1), Err(Violation::ReservedOpcode(3)));
        assert_eq!(run(&[0x8B, 0], 1), Err(Violation::ReservedOpcode(0xB)));
        assert_eq!(run(&[0x09, 0], 1), Err(Violation::FragmentedControl));
        assert_eq!(
            run(&[0x89, 126, 0, 200], 1),
            Err(Violation::ControlTooLong(126))
        );
        assert_eq!(run(&[0x80, 0], 1), Err(Violation::UnexpectedContinuation));
        let mut s = frame(false, OP_TEXT, b"a", None);
        s.extend(frame(true, OP_BINARY, b"b", None));
        assert_eq!(run(&s, 3), Err(Violation::InterruptedMessage));
        // Pseudo-random garbage in every split never panics.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..2000 {
            let len = (round % 97) + 1;
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mut p = Parser::new();
            let mut off = 0;
            while off < junk.len() {
                match p.step(&junk[off..]) {
                    Ok((used, _)) => {
                        assert!(used > 0 || off == junk.len());
                        off += used;
                    }
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn built_frames_parse_back() {
        let key = [1, 2, 3, 4];
        let f = ping(b"stickgate-ping-1", Some(key));
        let h = parse_header(&f).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.fin, h.mask, h.len),
            (OP_PING, true, Some(key), 16)
        );
        let mut body = f[6..].to_vec();
        apply_mask(&mut body, key);
        assert_eq!(body, b"stickgate-ping-1");
        assert_eq!(close(CLOSE_GOING_AWAY, None), vec![0x88, 2, 0x03, 0xE9]);
    }
}
