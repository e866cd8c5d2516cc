//! Session ids as the local tables keep them.
//!
//! Tomcat's ids (and the demo node's) are 32 hex digits of one case. Kept
//! as a `Box<str>` each costs a 48-byte heap block on top of the table
//! slot; packed two digits per byte they fit inline in the slot, which is
//! a third of a tracked session's memory at a million sessions (README
//! "Sizing"). Every other id is kept as text, unchanged: ids are compared
//! byte for byte, so `ab12` and `AB12` stay two sessions.

use hashbrown::Equivalent;
use std::hash::{Hash, Hasher};

/// Longest id packed inline: 32 digits, the length of Tomcat's default
/// (16 random bytes).
const MAX_DIGITS: usize = 32;

/// A byte value repeated in each byte of a word.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of each byte of a word.
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Eight hex digits read at once ([`HexId::parse`]): four packed bytes
/// and, per byte, whether it was an upper- or lower-case letter.
struct Eight {
    /// First digit in the high nibble of the lowest byte.
    packed: u32,
    /// High bit set in the bytes that are upper-case letters.
    upper: u64,
    /// High bit set in the bytes that are lower-case letters.
    lower: u64,
}

impl Eight {
    /// `x` holds eight ASCII bytes, the first in its lowest byte; `None`
    /// unless every one is a hex digit.
    fn parse(x: u64) -> Option<Eight> {
        if x & HIGH != 0 {
            return None;
        }
        // For bytes below 0x80, adding 0x80 - n sets a byte's high bit
        // exactly when it is at least n, and never carries into the next.
        let at_least = |v: u64, n: u8| v.wrapping_add(u64::from(0x80 - n) * ONES) & HIGH;
        let digit = at_least(x, b'0') & !at_least(x, b'9' + 1);
        let folded = x | (0x20 * ONES);
        let letter = at_least(folded, b'a') & !at_least(folded, b'f' + 1);
        if digit | letter != HIGH {
            return None;
        }
        // A digit's value is its low nibble; a letter's, its low nibble
        // (1 to 6) plus 9.
        let v = (x & (0x0f * ONES)) + (letter >> 7) * 9;
        // Two digits to a byte, the first in the high nibble, in every
        // other byte; then those four bytes side by side.
        let lanes = ((v & 0x000f_000f_000f_000f) << 4) | ((v >> 8) & 0x000f_000f_000f_000f);
        let packed = (lanes & 0xff)
            | ((lanes >> 8) & 0xff00)
            | ((lanes >> 16) & 0x00ff_0000)
            | ((lanes >> 24) & 0xff00_0000);
        // Bit 5 (0x20) is what makes a letter lower case; moved to bit 7.
        let small = (x & (0x20 * ONES)) << 2;
        Some(Eight {
            packed: packed as u32,
            upper: letter & !small,
            lower: letter & small,
        })
    }
}

/// Up to 32 hex digits of one case, two per byte.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexId {
    packed: [u8; MAX_DIGITS / 2],
    digits: u8,
    /// Letters (if any) are lower case.
    lower: bool,
}

impl HexId {
    /// The packed form of `id`, if it has one: 1 to 32 hex digits whose
    /// letters all have the same case. A string has at most one form, so
    /// a table never holds the same id twice.
    fn parse(id: &str) -> Option<HexId> {
        let b = id.as_bytes();
        if b.is_empty() || b.len() > MAX_DIGITS {
            return None;
        }
        // Eight digits per step, as one word (this runs on every sticky
        // request). The id is padded with '0': a digit of no case, which
        // packs to the zero nibbles the format keeps past the last digit.
        let mut text = [b'0'; MAX_DIGITS];
        text[..b.len()].copy_from_slice(b);
        let mut packed = [0u8; MAX_DIGITS / 2];
        let (mut upper, mut lower) = (0, 0);
        for (out, word) in packed.chunks_exact_mut(4).zip(text.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            let eight = Eight::parse(u64::from_le_bytes(w))?;
            out.copy_from_slice(&eight.packed.to_le_bytes());
            upper |= eight.upper;
            lower |= eight.lower;
        }
        if upper != 0 && lower != 0 {
            return None;
        }
        Some(HexId {
            packed,
            digits: b.len() as u8,
            lower: lower != 0,
        })
    }

    /// The id's text, written into `buf`.
    fn write<'b>(&self, buf: &'b mut [u8; MAX_DIGITS]) -> &'b str {
        let alphabet: &[u8; 16] = if self.lower {
            b"0123456789abcdef"
        } else {
            b"0123456789ABCDEF"
        };
        let n = self.digits as usize;
        for (i, out) in buf[..n].iter_mut().enumerate() {
            let d = (self.packed[i / 2] >> (4 * (1 - i % 2))) & 0xf;
            *out = alphabet[d as usize];
        }
        // Only ASCII digits and letters were written.
        std::str::from_utf8(&buf[..n]).unwrap_or_default()
    }
}

/// A session id as a table key: packed when it can be, text otherwise.
#[derive(Clone, PartialEq, Eq)]
pub enum SessionKey {
    Hex(HexId),
    Text(Box<str>),
}

/// A borrowed id to look a key up with, without allocating: the same
/// classification as [`SessionKey::new`], so equal ids hash equally.
#[derive(Clone, Copy)]
pub enum KeyRef<'a> {
    Hex(HexId),
    Text(&'a str),
}

impl<'a> KeyRef<'a> {
    /// The lookup form of `id`.
    pub fn new(id: &'a str) -> Self {
        match HexId::parse(id) {
            Some(h) => KeyRef::Hex(h),
            None => KeyRef::Text(id),
        }
    }

    /// The owned key, for an insert.
    pub fn to_key(self) -> SessionKey {
        match self {
            KeyRef::Hex(h) => SessionKey::Hex(h),
            KeyRef::Text(t) => SessionKey::Text(t.into()),
        }
    }
}

impl SessionKey {
    /// The key of `id`.
    pub fn new(id: &str) -> Self {
        KeyRef::new(id).to_key()
    }

    /// Call `f` with the id's text (packed ids are written out on the
    /// stack, no allocation).
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            SessionKey::Hex(h) => f(h.write(&mut [0u8; MAX_DIGITS])),
            SessionKey::Text(t) => f(t),
        }
    }
}

/// The owned key hashes exactly as its borrowed form (packed ids end
/// their bytes with 1 or 2, text ends with 0, so the two never meet).
impl Hash for SessionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            SessionKey::Hex(h) => KeyRef::Hex(*h).hash(state),
            SessionKey::Text(t) => KeyRef::Text(t).hash(state),
        }
    }
}

/// One `write` per key: a keyed hasher (SipHash) pays per call, and the
/// derived field-by-field hash of a packed id took ~870 instructions.
impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            KeyRef::Hex(h) => {
                let mut b = [0u8; MAX_DIGITS / 2 + 2];
                b[..MAX_DIGITS / 2].copy_from_slice(&h.packed);
                b[MAX_DIGITS / 2] = h.digits;
                b[MAX_DIGITS / 2 + 1] = if h.lower { 2 } else { 1 };
                state.write(&b);
            }
            KeyRef::Text(t) => {
                state.write(t.as_bytes());
                state.write_u8(0);
            }
        }
    }
}

impl Equivalent<SessionKey> for KeyRef<'_> {
    fn equivalent(&self, key: &SessionKey) -> bool {
        match (self, key) {
            (KeyRef::Hex(a), SessionKey::Hex(b)) => a == b,
            (KeyRef::Text(a), SessionKey::Text(b)) => *a == &**b,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn round_trip(id: &str) -> String {
        SessionKey::new(id).with_str(|s| s.to_string())
    }

    #[test]
    fn tomcat_ids_are_packed_and_come_back_unchanged() {
        for id in [
            "6B941D9A646C9BD5B01F3A1C2D3E4F50",
            "6b941d9a646c9bd5",
            "0123456789",
            "F",
            "ABC",
        ] {
            assert!(matches!(SessionKey::new(id), SessionKey::Hex(_)), "{id}");
            assert_eq!(round_trip(id), id);
        }
    }

    /// Digit values, `NOT_HEX` for every other byte.
    const NOT_HEX: u8 = 0xff;
    static DIGIT: [u8; 256] = {
        let mut t = [NOT_HEX; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };

    /// The digit-by-digit form `HexId::parse` had before it went eight
    /// digits at a time.
    fn parse_by_digit(id: &str) -> Option<HexId> {
        let b = id.as_bytes();
        if b.is_empty() || b.len() > MAX_DIGITS {
            return None;
        }
        let (mut upper, mut lower) = (false, false);
        let mut packed = [0u8; MAX_DIGITS / 2];
        for (i, &c) in b.iter().enumerate() {
            let d = DIGIT[c as usize];
            if d == NOT_HEX {
                return None;
            }
            upper |= c.is_ascii_uppercase();
            lower |= c.is_ascii_lowercase();
            packed[i / 2] |= d << (4 * (1 - i % 2));
        }
        (!(upper && lower)).then_some(HexId {
            packed,
            digits: b.len() as u8,
            lower,
        })
    }

    #[test]
    fn packing_eight_digits_at_a_time_agrees_with_digit_by_digit() {
        let mut ids: Vec<Vec<u8>> = Vec::new();
        // Every byte at every place of a full-length id, in both cases
        // (a word is read eight bytes at a time: each lane is tried).
        for base in [
            b"0123456789abcdef0123456789abcdef",
            b"0123456789ABCDEF0123456789ABCDEF",
        ] {
            for at in 0..MAX_DIGITS {
                for c in 0..=255u8 {
                    let mut id = base.to_vec();
                    id[at] = c;
                    ids.push(id);
                }
            }
        }
        // A non-ASCII character inside an id short enough to pack.
        ids.push("0123456789abcdef0123456789abcé".as_bytes().to_vec());
        // Every byte alone, in the middle of an id and at an odd end.
        for c in 0..=255u8 {
            ids.push(vec![c]);
            ids.push([b"ab".as_slice(), &[c], b"cd"].concat());
            ids.push([b"AB12".as_slice(), &[c]].concat());
        }
        // Pseudo-random ids of every length up to 33, from a mix of
        // digits, both cases and a few other bytes.
        let alphabet = b"0123456789abcdefABCDEFgG.-x \x7f";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..=33 {
            for _ in 0..200 {
                ids.push(
                    (0..n)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let pick = if x.is_multiple_of(4) { x } else { x % 16 };
                            alphabet[(pick % alphabet.len() as u64) as usize]
                        })
                        .collect(),
                );
            }
        }
        for id in ids {
            let Ok(id) = std::str::from_utf8(&id) else {
                continue;
            };
            assert!(HexId::parse(id) == parse_by_digit(id), "{id:?}");
        }
    }

    #[test]
    fn other_ids_stay_text() {
        for id in [
            "",
            "node01abc",
            "6B941d9a",
            "6B941D9A646C9BD5B01F3A1C2D3E4F501",
            "abc-def",
            "ÄB",
        ] {
            assert!(matches!(SessionKey::new(id), SessionKey::Text(_)), "{id}");
            assert_eq!(round_trip(id), id);
        }
    }

    #[test]
    fn case_and_length_keep_ids_apart() {
        let keys = ["ab12", "AB12", "0ab12", "ab120", "AB1", "ab12x"].map(SessionKey::new);
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                assert_eq!(i == j, a == b, "{i} {j}");
            }
        }
    }

    #[test]
    fn borrowed_and_owned_keys_agree() {
        let s = std::hash::RandomState::new();
        let mut map: hashbrown::HashMap<SessionKey, u32, _> = hashbrown::HashMap::with_hasher(s);
        for (n, id) in ["6B941D9A646C9BD5", "abc", "x.y", "ABC"].iter().enumerate() {
            map.insert(SessionKey::new(id), n as u32);
        }
        assert_eq!(map.get(&KeyRef::new("6B941D9A646C9BD5")), Some(&0));
        assert_eq!(map.get(&KeyRef::new("abc")), Some(&1));
        assert_eq!(map.get(&KeyRef::new("x.y")), Some(&2));
        assert_eq!(map.get(&KeyRef::new("ABC")), Some(&3));
        assert_eq!(map.get(&KeyRef::new("aBc")), None);
        let h = map.hasher();
        assert_eq!(
            h.hash_one(SessionKey::new("x.y")),
            h.hash_one(KeyRef::new("x.y"))
        );
    }

    #[test]
    fn a_key_fits_in_three_words() {
        assert_eq!(std::mem::size_of::<SessionKey>(), 24);
    }
}
