//! The AJP client side: pooled connections to one backend, CPing/CPong,
//! and one request exchange that streams both ways.
//!
//! An exchange runs in its own task that owns the connection: it writes
//! the Forward Request, answers GET BODY CHUNK with the client's body (a
//! chunk at a time, so a slow Tomcat slows the client down), hands the
//! head over, then the body through a small bounded channel (a slow
//! client slows Tomcat down; nothing is buffered beyond a few packets).
//! At END RESPONSE with reuse the connection goes back to the pool. A
//! dropped response body or a timed-out head aborts the task, and with
//! it the connection.

use super::codec::{self, CodecError, ForwardRequest, Reply};
use super::AjpOptions;
use crate::backend::upstream_body::UpstreamBody;
use crate::backend::PoolSettings;
use crate::config::{BackendConfig, Keepalive};
use crate::lock::lock;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Why an AJP exchange or check failed.
#[derive(Debug, thiserror::Error)]
pub enum AjpError {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("address {0} did not resolve")]
    Resolve(String),
    /// CPing sent, no CPong in time: the container accepts connections
    /// but its workers do not answer (hung, stopped, overloaded).
    #[error("no CPong within {0:?}: the container does not answer CPing")]
    PingTimeout(Duration),
    #[error("AJP connection failed: {0}")]
    Io(std::io::Error),
    #[error("the backend closed the AJP connection")]
    Closed,
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A well-formed packet at the wrong moment.
    #[error("unexpected {0} from the backend")]
    Unexpected(&'static str),
    /// The request head does not fit one AJP packet.
    #[error("request head does not fit an AJP packet: {0}")]
    HeadTooLarge(CodecError),
    /// Tomcat answers a request with a wrong or missing secret (and only
    /// such an answer, in practice) with a 403 and a connection it will
    /// not reuse; the backend's config, not the request, is at fault.
    #[error("the container refused the request (403, connection not reusable): wrong or missing ajp_secret?")]
    SecretRefused,
    /// AJP has no protocol upgrade.
    #[error("WebSocket upgrades cannot travel over AJP")]
    Upgrade,
    /// The client's request body failed while Tomcat waited for it.
    #[error("client request body could not be read: {0}")]
    ClientBody(hyper::Error),
}

/// An open AJP connection with its read buffer.
pub struct Connection {
    stream: TcpStream,
    buf: BytesMut,
    max_packet: usize,
    /// Taken from the pool rather than fresh.
    pub reused: bool,
}

impl Connection {
    /// Read the next packet from the container.
    pub async fn read_reply(&mut self) -> Result<Reply, AjpError> {
        loop {
            if let Some(r) = codec::decode_reply(&mut self.buf, self.max_packet)? {
                return Ok(r);
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(self.max_packet);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(AjpError::Io)?;
            if n == 0 {
                return Err(AjpError::Closed);
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), AjpError> {
        self.stream.write_all(bytes).await.map_err(AjpError::Io)
    }

    /// CPing, and wait up to `timeout` for the CPong.
    pub async fn cping(&mut self, timeout: Duration) -> Result<(), AjpError> {
        let exchange = async {
            self.write(&codec::CPING_PACKET).await?;
            match self.read_reply().await? {
                Reply::CPong => Ok(()),
                _ => Err(AjpError::Unexpected("packet instead of CPong")),
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| AjpError::PingTimeout(timeout))?
    }

    /// Whether a pooled connection is still open and silent: the peer
    /// closing it (or sending stray bytes) makes it useless.
    fn idle_and_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

struct IdleConn {
    conn: Connection,
    since: Instant,
}

struct Inner {
    host: Arc<str>,
    port: u16,
    route: Arc<str>,
    opts: AjpOptions,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    keepalive: Keepalive,
    idle: Mutex<Vec<IdleConn>>,
}

/// Per-backend pool of idle AJP connections.
pub struct AjpPool {
    inner: Arc<Inner>,
}

impl AjpPool {
    /// An empty pool for one `ajp://` backend.
    pub fn new(cfg: &BackendConfig, opts: AjpOptions, settings: &PoolSettings) -> Self {
        AjpPool {
            inner: Arc::new(Inner {
                host: cfg.host.clone(),
                port: cfg.port,
                route: cfg.route.clone(),
                opts,
                connect_timeout: settings.connect_timeout,
                idle_timeout: settings.idle_timeout,
                max_idle: settings.max_idle,
                keepalive: settings.keepalive.clone(),
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The backend's AJP settings.
    pub fn options(&self) -> &AjpOptions {
        &self.inner.opts
    }

    /// A connection ready for a request: a pooled one that is still open
    /// (and answered a CPing if it sat idle past `ping_after_idle`, with
    /// `prepost`), else a fresh one (that answered a CPing, with
    /// `connect`). Every error here means nothing was sent.
    pub async fn checkout(&self) -> Result<Connection, AjpError> {
        let opts = &self.inner.opts;
        while let Some(IdleConn { mut conn, since }) = self.inner.take_idle() {
            if !conn.idle_and_open() {
                continue;
            }
            if opts.ping.prepost && since.elapsed() >= opts.ping_after_idle {
                match conn.cping(opts.ping_timeout).await {
                    Ok(()) => {}
                    // A silent container: trying every pooled connection
                    // would wait ping_timeout for each. Nothing was sent.
                    Err(e @ AjpError::PingTimeout(_)) => return Err(e),
                    Err(e) => {
                        tracing::debug!(backend = &*self.inner.route, error = %e, "pooled AJP connection failed its CPing");
                        continue;
                    }
                }
            }
            conn.reused = true;
            return Ok(conn);
        }
        let mut conn = self.connect().await?;
        if opts.ping.connect {
            conn.cping(opts.ping_timeout).await?;
        }
        Ok(conn)
    }

    /// A fresh connection, bypassing the pool.
    pub async fn connect(&self) -> Result<Connection, AjpError> {
        let t = self.inner.connect_timeout;
        let stream = tokio::time::timeout(t, self.inner.dial())
            .await
            .map_err(|_| AjpError::ConnectTimeout(t))??;
        Ok(Connection {
            stream,
            buf: BytesMut::with_capacity(self.inner.opts.max_packet_size),
            max_packet: self.inner.opts.max_packet_size,
            reused: false,
        })
    }

    /// The health check of an AJP backend: with `interval` in
    /// `ping_mode`, a CPing on a fresh connection; else a GET of `path`
    /// over AJP, whose status the caller judges.
    pub async fn check(&self, path: &str) -> Result<Option<StatusCode>, AjpError> {
        let mut conn = self.connect().await?;
        if self.inner.opts.ping.interval {
            conn.cping(self.inner.opts.ping_timeout).await?;
            return Ok(None);
        }
        let req = Request::get(path)
            .header(HOST, format!("{}:{}", self.inner.host, self.inner.port))
            .header(http::header::USER_AGENT, "stickgate-health")
            .body(UpstreamBody::Empty)
            .map_err(|_| AjpError::Unexpected("health check path"))?;
        let me = crate::client_info::ClientInfo::new(SocketAddr::from(([127, 0, 0, 1], 0)), false);
        let head = self.encode(&req, &me)?;
        let resp = self.send(conn, head, req.into_body(), false).await?;
        Ok(Some(resp.status()))
    }

    /// The Forward Request for `req` (already fitted for this backend),
    /// from a client at `peer`, `https` when it came over TLS.
    pub fn encode(
        &self,
        req: &Request<UpstreamBody>,
        client: &crate::client_info::ClientInfo,
    ) -> Result<BytesMut, AjpError> {
        let (peer, https) = (client.peer, client.https);
        let ssl = client.tls.map(|t| codec::SslInfo {
            cipher: Some(t.suite_name().to_owned()),
            key_size: t.key_bits(),
            protocol: Some(t.version_name().to_owned()),
            ..Default::default()
        });
        let opts = &self.inner.opts;
        let default_port = if https { 443 } else { 80 };
        let (server_name, server_port) = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .map(|a| (a.host().to_owned(), a.port_u16().unwrap_or(default_port)))
            .unwrap_or_else(|| (self.inner.host.to_string(), default_port));
        let remote = peer.ip().to_string();
        let protocol = match req.version() {
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let fr = ForwardRequest {
            method: req.method(),
            protocol,
            path: req.uri().path(),
            query: req.uri().query(),
            remote_addr: &remote,
            remote_port: Some(peer.port()).filter(|p| *p != 0),
            server_name: &server_name,
            server_port,
            is_ssl: https,
            ssl: ssl.as_ref(),
            headers: req.headers(),
            jvm_route: Some(&self.inner.route),
            secret: opts.secret.as_deref(),
        };
        let mut out = BytesMut::with_capacity(1024);
        codec::encode_forward_request(&fr, opts.max_packet_size, &mut out)
            .map_err(AjpError::HeadTooLarge)?;
        Ok(out)
    }

    /// Send one request over `conn` and wait for its head; the body then
    /// streams from the returned response. `first_chunk`: the request
    /// declares a positive Content-Length, so the first body packet goes
    /// unasked (Tomcat waits for it).
    pub async fn send(
        &self,
        conn: Connection,
        head: BytesMut,
        body: UpstreamBody,
        first_chunk: bool,
    ) -> Result<Response<AjpBody>, AjpError> {
        let (head_tx, head_rx) = oneshot::channel();
        let (data_tx, data_rx) = mpsc::channel(4);
        let task = Task {
            conn,
            pool: self.inner.clone(),
            body: BodySource {
                body,
                leftover: Bytes::new(),
                ended: false,
            },
            head_tx: Some(head_tx),
            data_tx,
            held: None,
        };
        let guard = AbortOnDrop(tokio::spawn(task.run(head, first_chunk)).abort_handle());
        let (status, headers) = head_rx.await.map_err(|_| AjpError::Closed)??;
        let mut r = Response::new(AjpBody {
            rx: data_rx,
            _task: guard,
            ended: false,
        });
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        Ok(r)
    }

    /// Drop every idle connection (the backend was marked down).
    pub fn clear(&self) {
        lock(&self.inner.idle).clear();
    }

    /// Number of idle connections, for the status API and tests.
    pub fn idle_count(&self) -> usize {
        lock(&self.inner.idle).len()
    }
}

impl Inner {
    fn take_idle(&self) -> Option<IdleConn> {
        let mut idle = lock(&self.idle);
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.idle_timeout {
                return Some(c);
            }
        }
        None
    }

    fn checkin(&self, conn: Connection) {
        if !conn.buf.is_empty() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(IdleConn {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn dial(&self) -> Result<TcpStream, AjpError> {
        let target = format!("{}:{}", self.host, self.port);
        let addrs = tokio::net::lookup_host((&*self.host, self.port))
            .await
            .map_err(|_| AjpError::Resolve(target.clone()))?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    if let Some(ka) = &self.keepalive {
                        let _ = socket2::SockRef::from(&s).set_tcp_keepalive(ka);
                    }
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or(AjpError::Resolve(target), AjpError::Connect))
    }
}

/// The request body, handed out in AJP-sized pieces.
struct BodySource {
    body: UpstreamBody,
    leftover: Bytes,
    ended: bool,
}

impl BodySource {
    /// Up to `want` bytes; empty once the body has ended.
    async fn next(&mut self, want: usize) -> Result<Bytes, AjpError> {
        while self.leftover.is_empty() && !self.ended {
            match self.body.frame().await {
                None => self.ended = true,
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.leftover = d;
                    }
                }
                Some(Err(e)) => return Err(AjpError::ClientBody(e)),
            }
        }
        let n = want.min(self.leftover.len());
        Ok(self.leftover.split_to(n))
    }
}

type Head = (StatusCode, HeaderMap);

/// One exchange on one connection (see the module docs).
struct Task {
    conn: Connection,
    pool: Arc<Inner>,
    body: BodySource,
    head_tx: Option<oneshot::Sender<Result<Head, AjpError>>>,
    data_tx: mpsc::Sender<Result<Bytes, AjpError>>,
    /// A 403 kept back until END RESPONSE says whether it is Tomcat
    /// refusing the secret (see [`AjpError::SecretRefused`]).
    held: Option<Held>,
}

/// A response kept back: its head and the body read so far.
struct Held {
    head: Head,
    body: Vec<Bytes>,
    size: usize,
}

/// The most body a held 403 keeps before it is released as a normal
/// answer (Tomcat's refusal page is under 1 KiB).
const HOLD_LIMIT: usize = 16 * 1024;

impl Task {
    async fn run(mut self, head: BytesMut, first_chunk: bool) {
        match self.exchange(head, first_chunk).await {
            Ok(true) => self.pool.checkin(self.conn),
            Ok(false) => {}
            Err(e) => match self.head_tx.take() {
                Some(tx) => {
                    let _ = tx.send(Err(e));
                }
                None => {
                    let _ = self.data_tx.send(Err(e)).await;
                }
            },
        }
    }

    /// Drive the exchange to END RESPONSE; `Ok(true)` when the connection
    /// may carry another request.
    async fn exchange(&mut self, head: BytesMut, first_chunk: bool) -> Result<bool, AjpError> {
        self.conn.write(&head).await?;
        if first_chunk {
            self.send_body(u16::MAX).await?;
        }
        loop {
            match self.conn.read_reply().await? {
                Reply::GetBody(n) => self.send_body(n).await?,
                Reply::Headers { status, headers } => {
                    if self.head_tx.is_none() || self.held.is_some() {
                        return Err(AjpError::Unexpected("second SEND_HEADERS"));
                    }
                    let held = Held {
                        head: (status, headers),
                        body: Vec::new(),
                        size: 0,
                    };
                    self.held = Some(held);
                    if status != StatusCode::FORBIDDEN && !self.release().await {
                        return Ok(false);
                    }
                }
                Reply::Body(data) => {
                    if let Some(h) = &mut self.held {
                        h.size += data.len();
                        h.body.push(data);
                        if h.size > HOLD_LIMIT && !self.release().await {
                            return Ok(false);
                        }
                        continue;
                    }
                    if self.head_tx.is_some() {
                        return Err(AjpError::Unexpected("SEND_BODY_CHUNK before SEND_HEADERS"));
                    }
                    if !data.is_empty() && self.data_tx.send(Ok(data)).await.is_err() {
                        return Ok(false);
                    }
                }
                Reply::End { reuse } => {
                    if self.held.is_some() && !reuse {
                        return Err(AjpError::SecretRefused);
                    }
                    if self.held.is_some() && !self.release().await {
                        return Ok(false);
                    }
                    if self.head_tx.is_some() {
                        return Err(AjpError::Unexpected("END_RESPONSE before SEND_HEADERS"));
                    }
                    return Ok(reuse);
                }
                Reply::CPong => return Err(AjpError::Unexpected("CPong during a request")),
            }
        }
    }

    /// Hand the held response on: its head, then the body read so far;
    /// false when the client is gone.
    async fn release(&mut self) -> bool {
        let Some(held) = self.held.take() else {
            return true;
        };
        let Some(tx) = self.head_tx.take() else {
            return false;
        };
        if tx.send(Ok(held.head)).is_err() {
            return false;
        }
        for data in held.body.into_iter().filter(|d| !d.is_empty()) {
            if self.data_tx.send(Ok(data)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// One body packet of at most `want` bytes (and the packet limit);
    /// the empty packet once the body has ended.
    async fn send_body(&mut self, want: u16) -> Result<(), AjpError> {
        let limit = codec::max_body_chunk(self.conn.max_packet);
        let data = self.body.next((want as usize).min(limit)).await?;
        if data.is_empty() {
            return self.conn.write(&codec::END_OF_BODY).await;
        }
        let mut packet = BytesMut::with_capacity(6 + data.len());
        packet.extend_from_slice(&codec::body_chunk_head(data.len()));
        packet.extend_from_slice(&data);
        self.conn.write(&packet).await
    }
}

/// Whether a request head declares a positive Content-Length (then the
/// first body packet is sent with the head, as Tomcat expects).
pub fn declares_body(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// Aborts the exchange task when the response (or the wait for its head)
/// is dropped: the connection is mid-response and must not be reused.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response body streamed from an AJP connection.
pub struct AjpBody {
    rx: mpsc::Receiver<Result<Bytes, AjpError>>,
    _task: AbortOnDrop,
    ended: bool,
}

impl Body for AjpBody {
    type Data = Bytes;
    type Error = AjpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AjpError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(r)) => Poll::Ready(Some(r.map(Frame::data))),
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
