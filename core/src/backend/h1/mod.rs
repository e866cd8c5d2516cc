//! The in-task HTTP/1.1 exchange for bodiless requests to plain-TCP
//! backends: the request's own task writes the head, reads and parses the
//! response head, and its response body reads the rest from the socket.
//!
//! hyper's client runs every pooled connection as a task of its own, fed
//! through a channel and answering through a oneshot: about a third of
//! the instructions of a sticky request here (measured with callgrind),
//! for a GET that is one write and one read. This exchange does the same
//! work inline. hyper's client still carries everything else (request
//! bodies, TLS and HTTP/2 backends, WebSocket upgrades), and both keep the
//! same framing rules (see [`head`]).
//!
//! A connection is owned by exactly one party at a time: the pool while
//! idle, the attempt while it waits for a head, then the response body
//! until the body's end, when it goes back to the pool if the backend
//! allows keep-alive and nothing is left unread.

pub mod body;
pub mod chunked;
pub mod head;

use bytes::BytesMut;
use http::{HeaderMap, Method, Uri};
use std::future::poll_fn;
use std::future::Future;
use std::io;
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use body::H1Body;

/// Largest response head accepted (as for hyper's connections, see
/// `pool_conn::MAX_READ_BUF`).
pub const MAX_HEAD: usize = super::pool_conn::MAX_READ_BUF;

/// First read size of an exchange: most heads and small bodies fit in
/// one read of it.
const READ_BUF: usize = 8 * 1024;

/// Largest read: a large body is read in growing pieces up to this (as
/// hyper's connections do, see `pool_conn::MAX_READ_BUF`).
const MAX_READ: usize = super::pool_conn::MAX_READ_BUF;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the backend closed the connection before a complete response head")]
    Closed,
    #[error("the backend closed the connection mid-body")]
    Incomplete,
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed response head: {0}")]
    Parse(httparse::Error),
    #[error("invalid status code {0}")]
    Status(u16),
    #[error("invalid field name in the response")]
    FieldName,
    #[error("invalid field value in the response")]
    FieldValue,
    #[error("invalid or conflicting Content-Length in the response")]
    ContentLength,
    #[error("invalid response framing: {0}")]
    Framing(&'static str),
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedUpgrade,
}

impl H1Error {
    /// The backend sent a response this balancer refuses (a fault of the
    /// answer, not a sign the node is gone), as opposed to a connection
    /// that failed or closed.
    pub fn is_parse(&self) -> bool {
        !matches!(self, H1Error::Io(_) | H1Error::Closed | H1Error::Incomplete)
    }
}

/// An open HTTP/1.1 connection to a backend, with its read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The next read's size: doubled after every read that filled it.
    read_size: usize,
    /// Taken from the pool (the backend may have closed it meanwhile)
    /// rather than fresh.
    pub reused: bool,
}

impl Conn {
    /// A fresh connection on a connected socket.
    pub fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: BytesMut::new(),
            read_size: READ_BUF,
            reused: false,
        }
    }

    /// Whether an idle connection is still open and silent, as far as
    /// the socket's last known readiness tells (no system call unless it
    /// became readable: then one read tells a close or stray bytes, which
    /// make it useless, from a stale readiness).
    pub fn idle_and_open(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Give back the read buffer's memory (an idle connection parked by
    /// the pool); the next exchange allocates a new one.
    pub fn release_buffer(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Whether the read buffer's memory is given back.
    pub fn is_released(&self) -> bool {
        self.buf.capacity() == 0
    }

    /// Read more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        // tokio's own read (not `try_read_buf`): a read that leaves room in
        // the buffer drained the socket, and it forgets the readiness then,
        // so neither the next wait for a head nor the next checkout
        // (`idle_and_open`) pays a read that only says EAGAIN.
        let read = std::pin::pin!(self.stream.read_buf(&mut self.buf));
        let n = std::task::ready!(read.poll(cx))?;
        if n == room && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }
}

/// A failed exchange: the error, and whether the connection was a reused
/// one (a close or reset there may just be a stale keep-alive connection).
#[derive(Debug)]
pub struct Failed {
    pub error: H1Error,
    pub reused: bool,
}

/// Send a bodiless request (its fields, then `extra` ones, see
/// [`head::encode_request`]) and wait for its final response head; the
/// response body streams from the connection (see [`H1Body`]).
pub async fn exchange(
    mut conn: Conn,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    extra: &[Option<(&str, &[u8])>],
) -> Result<http::Response<H1Body>, Failed> {
    let reused = conn.reused;
    let fail = |error| Failed { error, reused };
    conn.buf.clear();
    conn.read_size = READ_BUF;
    head::encode_request(method, uri, headers, extra, &mut conn.buf);
    conn.stream
        .write_all(&conn.buf)
        .await
        .map_err(|e| fail(e.into()))?;
    conn.buf.clear();
    let parsed = loop {
        match head::parse_response(&mut conn.buf, method) {
            Ok(Some(head::Head::Final(p))) => break p,
            Ok(Some(head::Head::Informational)) => continue,
            Ok(None) if conn.buf.len() >= MAX_HEAD => return Err(fail(H1Error::HeadTooLarge)),
            Ok(None) => {}
            Err(e) => return Err(fail(e)),
        }
        match poll_fn(|cx| conn.poll_fill(cx)).await {
            Ok(0) => return Err(fail(H1Error::Closed)),
            Ok(_) => {}
            Err(e) => return Err(fail(e.into())),
        }
    };
    let head::Parsed {
        head,
        framing,
        keep_alive,
    } = parsed;
    Ok(head.map(|()| H1Body::new(conn, framing, keep_alive)))
}
