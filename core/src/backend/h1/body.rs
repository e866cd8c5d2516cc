//! The response body of an in-task HTTP/1.1 exchange, read from its
//! connection as the client takes it: what arrived with the head first,
//! then one read at a time (a slow client slows the backend down; nothing
//! is buffered beyond one read).

use super::chunked::{Decoded, Decoder};
use super::head::Framing;
use super::{Conn, H1Error};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// What is left of the body.
#[derive(Debug)]
enum Left {
    Length(u64),
    Chunked(Decoder),
    Close,
    /// Read to its end.
    Done,
}

/// A backend's response body on its connection.
pub struct H1Body {
    conn: Option<Conn>,
    left: Left,
    keep_alive: bool,
}

impl H1Body {
    /// The body that follows a parsed head on `conn`.
    pub fn new(conn: Conn, framing: Framing, keep_alive: bool) -> Self {
        let left = match framing {
            Framing::Length(0) => Left::Done,
            Framing::Length(n) => Left::Length(n),
            Framing::Chunked => Left::Chunked(Decoder::default()),
            Framing::Close => Left::Close,
        };
        H1Body {
            conn: Some(conn),
            left,
            keep_alive,
        }
    }

    /// The connection, when the body was read to its end and the backend
    /// may take another request on it (keep-alive, nothing unread).
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if !matches!(self.left, Left::Done) || !self.keep_alive {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.conn = None;
        self.left = Left::Done;
        self.keep_alive = false;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.left {
                Left::Done => return Poll::Ready(None),
                Left::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = (conn.buf.len() as u64).min(*left) as usize;
                        let data = conn.buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.left = Left::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Left::Chunked(d) => match d.decode(&mut conn.buf) {
                    Ok(Some(Decoded::Data(b))) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                    Ok(Some(Decoded::Trailers(t))) => {
                        this.left = Left::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Some(Decoded::End)) => {
                        this.left = Left::Done;
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => return this.fail(e),
                },
                Left::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.left, Left::Close) => {
                    this.left = Left::Done;
                    this.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(H1Error::Incomplete),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.left, Left::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Left::Length(n) => SizeHint::with_exact(n),
            Left::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
