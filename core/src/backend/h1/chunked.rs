//! The chunked transfer coding (RFC 9112 section 7.1), decoded from a read
//! buffer: chunk data comes out as shares of the buffer (no copy), chunk
//! extensions are skipped, trailer fields come out as one map.
//!
//! Every line is bounded, so a backend cannot make the balancer buffer
//! without limit: a size line (with its extensions) of at most
//! [`MAX_LINE`], trailers of at most [`MAX_TRAILERS`] in all.

use super::H1Error;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Longest chunk-size line, extensions included.
pub const MAX_LINE: usize = 4096;
/// Largest trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Where the decoder is in the coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(u64),
    /// After a chunk's data, expecting its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines, then the blank line.
    Trailers,
    /// The coding ended.
    Done,
}

/// One step of decoding.
#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    /// The trailer fields (only when there were some).
    Trailers(HeaderMap),
    /// The body ended (after its trailers, if any).
    End,
}

/// A chunked body's decoding state.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Boxed: rare, and the decoder lives in every chunked body.
    trailers: Option<Box<HeaderMap>>,
    trailer_bytes: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Size,
            trailers: None,
            trailer_bytes: 0,
        }
    }
}

impl Decoder {
    /// The coding ended: the connection holds nothing more of this body.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from the start of `buf`; `Ok(None)` when more bytes are
    /// needed. Consumed bytes leave `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, H1Error> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = take_line(buf, MAX_LINE)? else {
                        return Ok(None);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let data = buf.split_to(n).freeze();
                    self.state = match left - n as u64 {
                        0 => State::DataEnd,
                        more => State::Data(more),
                    };
                    return Ok(Some(Decoded::Data(data)));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Chunked("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let room = MAX_TRAILERS - self.trailer_bytes;
                    let Some(line) = take_line(buf, room)? else {
                        return Ok(None);
                    };
                    self.trailer_bytes += line.len() + 2;
                    if line.is_empty() {
                        self.state = State::Done;
                        if let Some(t) = self.trailers.take() {
                            return Ok(Some(Decoded::Trailers(*t)));
                        }
                        return Ok(Some(Decoded::End));
                    }
                    let (name, value) = trailer(&line)?;
                    self.trailers
                        .get_or_insert_with(Box::default)
                        .append(name, value);
                }
                State::Done => return Ok(Some(Decoded::End)),
            }
        }
    }
}

/// The next CRLF-terminated line (without the CRLF), or `None` when it is
/// not all there yet; longer than `max` is an error.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, H1Error> {
    let Some(lf) = memchr::memchr(b'\n', &buf[..buf.len().min(max + 2)]) else {
        if buf.len() >= max + 2 {
            return Err(H1Error::Chunked("chunk line or trailers too long"));
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(H1Error::Chunked("line not ended by CRLF"));
    }
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf - 1);
    Ok(Some(line))
}

/// The size of a chunk-size line: hexadecimal digits, then optional
/// whitespace and `;extensions`, which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(H1Error::Chunked("invalid chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(H1Error::Chunked("invalid chunk size"));
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        // At most 15 hex digits: no overflow.
        size = size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
    }
    Ok(size)
}

/// One trailer line as a field.
fn trailer(line: &[u8]) -> Result<(HeaderName, HeaderValue), H1Error> {
    let colon = memchr::memchr(b':', line).ok_or(H1Error::Chunked("trailer without colon"))?;
    let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| H1Error::FieldName)?;
    let value =
        HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).map_err(|_| H1Error::FieldValue)?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` fed in pieces of `step` bytes: the data, the
    /// trailers, and whether it ended.
    fn run(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, bool), H1Error> {
        let mut d = Decoder::default();
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Some(Decoded::Data(b)) => data.extend_from_slice(&b),
                Some(Decoded::Trailers(t)) => trailers = Some(t),
                Some(Decoded::End) => return Ok((data, trailers, true)),
                None if fed >= input.len() => return Ok((data, trailers, false)),
                None => {
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunks_extensions_and_trailers_in_any_pieces() {
        let input =
            b"5;ext=1\r\nhello\r\n6 ; a=\"b\"\r\n world\r\n0\r\nX-Sum: abc\r\nX-B:  2 \r\n\r\n";
        for step in [1, 2, 3, 7, input.len()] {
            let (data, trailers, ended) = run(input, step).unwrap();
            assert_eq!(data, b"hello world", "step {step}");
            assert!(ended);
            let t = trailers.unwrap();
            assert_eq!(t["x-sum"], "abc");
            assert_eq!(t["x-b"], "2");
        }
        let (data, trailers, ended) = run(b"A\r\n0123456789\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!((data.len(), trailers.is_none(), ended), (10, true, true));
    }

    #[test]
    fn a_cut_coding_does_not_end() {
        let (data, _, ended) = run(b"5\r\nhel", 2).unwrap();
        assert_eq!((&data[..], ended), (&b"hel"[..], false));
        let (_, _, ended) = run(b"0\r\n", 1).unwrap();
        assert!(!ended);
    }

    #[test]
    fn malformed_codings_are_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"-5\r\nhello\r\n",
            b"1000000000000000\r\n",
            b"5 x\r\nhello\r\n",
            b"0\r\nno colon\r\n\r\n",
        ] {
            assert!(run(bad, 3).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b'1'; MAX_LINE + 10];
        assert!(run(&long, 512).is_err());
        let mut huge = b"0\r\n".to_vec();
        for _ in 0..2000 {
            huge.extend_from_slice(b"x-long-trailer: 0123456789\r\n");
        }
        assert!(run(&huge, 1000).is_err());
    }
}
