//! A follower of HTTP/1.1 request framing on the raw client bytes, to see
//! what hyper's parsed head no longer shows: whether a head carried both
//! `Content-Length` and `Transfer-Encoding` (hyper keeps the chunked one
//! and drops the other; nginx answers such a request 400, and so do we).
//!
//! It walks heads and bodies (Content-Length and chunked) the way hyper
//! does, so the n-th head it reports is the n-th request hyper hands to
//! the service. On anything it cannot follow (an upgrade, CONNECT, a
//! framing hyper would refuse anyway) it stops and reports nothing more:
//! a wrong "conflict" would refuse a good request, a missed one only
//! leaves hyper's safe normalisation in place.

/// Bytes of a line kept for parsing; header names and framing values
/// that matter are far shorter.
const KEEP: usize = 256;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Reading head lines (request line, headers, blank line).
    #[default]
    Head,
    /// Skipping a Content-Length body.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    ChunkEnd,
    /// Reading trailer lines after the last chunk.
    Trailer,
    /// Lost or tunnelled: report nothing more.
    Stopped,
}

/// Per-connection scanner state (see the module docs).
#[derive(Debug, Default)]
pub struct HeadScan {
    step: Step,
    line: Vec<u8>,
    overflow: bool,
    /// Lines of the current head so far (0: expecting the request line).
    lines: usize,
    content_length: Option<u64>,
    transfer_encoding: Option<bool>,
    upgrade: bool,
}

impl HeadScan {
    /// Follow `data`; `on_head(conflict)` runs once per complete head.
    /// Says whether any of `data` belonged to a head (or could: once
    /// stopped, every byte might), so that body bytes still arriving after
    /// an early response do not start the next head's timer.
    pub fn feed(&mut self, data: &[u8], mut on_head: impl FnMut(bool)) -> bool {
        let mut rest = data;
        let mut head = false;
        while !rest.is_empty() {
            head |= matches!(self.step, Step::Head | Step::Stopped);
            rest = match self.step {
                Step::Stopped => return true,
                Step::Body(n) | Step::ChunkData(n) => self.skip(rest, n),
                Step::ChunkEnd => self.chunk_end(rest),
                Step::Head | Step::ChunkSize | Step::Trailer => {
                    let Some(i) = memchr::memchr(b'\n', rest) else {
                        self.keep(rest);
                        return head;
                    };
                    if self.line.is_empty() && !self.overflow {
                        // The whole line is here (the usual case): read in
                        // place, no copy.
                        self.overflow = i > KEEP;
                        self.end_line(&rest[..i.min(KEEP)], &mut on_head);
                    } else {
                        self.keep(&rest[..i]);
                        let line = std::mem::take(&mut self.line);
                        self.end_line(&line, &mut on_head);
                        self.line = line;
                        self.line.clear();
                    }
                    &rest[i + 1..]
                }
            };
        }
        head
    }

    fn skip<'a>(&mut self, data: &'a [u8], n: u64) -> &'a [u8] {
        let take = n.min(data.len() as u64);
        let left = n - take;
        self.step = match (self.step, left) {
            (Step::Body(_), 0) => Step::Head,
            (Step::Body(_), l) => Step::Body(l),
            (_, 0) => Step::ChunkEnd,
            (_, l) => Step::ChunkData(l),
        };
        &data[take as usize..]
    }

    /// The CRLF after chunk data.
    fn chunk_end<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        match data[0] {
            b'\r' => {}
            b'\n' => self.step = Step::ChunkSize,
            _ => self.step = Step::Stopped,
        }
        &data[1..]
    }

    fn keep(&mut self, part: &[u8]) {
        let room = KEEP.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
        self.overflow |= part.len() > room;
    }

    fn end_line(&mut self, line: &[u8], on_head: &mut impl FnMut(bool)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let overflow = std::mem::take(&mut self.overflow);
        match self.step {
            Step::Head => self.head_line(line, overflow, on_head),
            Step::ChunkSize => self.chunk_size(line),
            Step::Trailer if line.is_empty() => self.step = Step::Head,
            _ => {}
        }
    }

    fn head_line(&mut self, line: &[u8], overflow: bool, on_head: &mut impl FnMut(bool)) {
        if self.lines == 0 {
            if line.is_empty() {
                return; // blank lines before a request line are skipped
            }
            self.upgrade = line.starts_with(b"CONNECT ");
            self.lines = 1;
            return;
        }
        if !line.is_empty() {
            self.lines += 1;
            self.header(line, overflow);
            return;
        }
        let conflict = self.content_length.is_some() && self.transfer_encoding.is_some();
        on_head(conflict);
        self.step = match (self.upgrade, self.transfer_encoding, self.content_length) {
            (true, _, _) | (_, Some(false), _) => Step::Stopped,
            (_, Some(true), _) => Step::ChunkSize,
            (_, None, Some(n)) if n > 0 => Step::Body(n),
            _ => Step::Head,
        };
        self.lines = 0;
        self.content_length = None;
        self.transfer_encoding = None;
        self.upgrade = false;
    }

    fn header(&mut self, line: &[u8], overflow: bool) {
        // Only three names matter here: a line whose name starts with
        // another letter is not read further.
        let first = line.iter().find(|b| !b.is_ascii_whitespace());
        if !matches!(first.map(u8::to_ascii_lowercase), Some(b'c' | b't' | b'u')) {
            return;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if overflow && (is("content-length") || is("transfer-encoding")) {
            self.step = Step::Stopped;
            return;
        }
        if is("content-length") {
            match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                Some(n) => self.content_length = Some(n),
                None => self.step = Step::Stopped,
            }
        } else if is("transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            self.transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if is("upgrade") {
            self.upgrade = true;
        }
    }

    fn chunk_size(&mut self, line: &[u8]) {
        let hex = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or(b"")
            .trim_ascii();
        let size = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        self.step = match size {
            Some(0) => Step::Trailer,
            Some(n) => Step::ChunkData(n),
            None => Step::Stopped,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(chunks: &[&[u8]]) -> Vec<bool> {
        let mut s = HeadScan::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |x| out.push(x));
        }
        out
    }

    #[test]
    fn reports_each_head_through_bodies_of_both_framings() {
        let pipelined: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 43\r\n\r\n\
Content-Length: 1\r\nTransfer-Encoding: x\r\n\r\n\
POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n\
POST /c HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /d HTTP/1.1\r\n\r\n";
        assert_eq!(heads(&[pipelined]), [false, false, false, true, false]);
        let bytewise: Vec<&[u8]> = pipelined.chunks(1).collect();
        assert_eq!(heads(&bytewise), [false, false, false, true, false]);
    }

    #[test]
    fn te_before_cl_is_a_conflict_too() {
        let h: &[u8] =
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n";
        assert_eq!(heads(&[h]), [true]);
    }

    #[test]
    fn says_which_bytes_belong_to_a_head() {
        let mut s = HeadScan::default();
        assert!(s.feed(b"POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\nab", |_| {}));
        assert!(!s.feed(b"cd", |_| {}), "body bytes");
        assert!(s.feed(b"efGET", |_| {}), "the next head starts here");
    }

    #[test]
    fn stops_after_an_upgrade() {
        let h: &[u8] = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\
GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(heads(&[h]), [false]);
    }
}
