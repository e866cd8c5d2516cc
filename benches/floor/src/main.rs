//! The floor: the least a sticky hyper 1 proxy can do per request, as the
//! performance issue describes it. One current-thread tokio runtime per
//! core, each with its own SO_REUSEPORT listener and its own pools of
//! upstream HTTP/1.1 connections (nothing shared between cores), mimalloc,
//! routing on the `JSESSIONID` suffix (`.tomcat1` to the first backend,
//! `.tomcat2` to the second, round robin otherwise).
//!
//! It checks nothing, adds no forwarding fields, learns no session, retries
//! nothing and has no timeouts: it is a reference figure, not a balancer.
//!
//!     stickgate-floor LISTEN BACKEND1 BACKEND2    (addresses as ip:port)

use std::alloc::{GlobalAlloc, Layout};
use std::cell::{Cell, RefCell};
use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// mimalloc through its plain entry points, as stickgate's binary uses it.
struct Mi;

/// Blocks from `mi_malloc` are aligned to 16 bytes.
const MI_ALIGN: usize = 16;

// SAFETY: each call forwards to the mimalloc function with the same
// contract; larger alignments go to the aligned variants.
unsafe impl GlobalAlloc for Mi {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.align() <= MI_ALIGN {
            libmimalloc_sys::mi_malloc(l.size()).cast()
        } else {
            libmimalloc_sys::mi_malloc_aligned(l.size(), l.align()).cast()
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        libmimalloc_sys::mi_free(p.cast())
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if l.align() <= MI_ALIGN {
            libmimalloc_sys::mi_realloc(p.cast(), n).cast()
        } else {
            libmimalloc_sys::mi_realloc_aligned(p.cast(), n, l.align()).cast()
        }
    }
}

#[global_allocator]
static GLOBAL: Mi = Mi;

type Failure = Box<dyn Error + Send + Sync>;

thread_local! {
    /// This thread's idle upstream connections, per backend.
    static POOLS: RefCell<[Vec<client::SendRequest<Incoming>>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
    static BACKENDS: Cell<Option<[SocketAddr; 2]>> = const { Cell::new(None) };
    static NEXT: Cell<usize> = const { Cell::new(0) };
}

/// The backend for a request: its session's route, else round robin.
fn route(req: &Request<Incoming>) -> usize {
    const NAME: &[u8] = b"JSESSIONID=";
    for field in req.headers().get_all(hyper::header::COOKIE) {
        let b = field.as_bytes();
        if let Some(i) = b.windows(NAME.len()).position(|w| w == NAME) {
            let rest = &b[i + NAME.len()..];
            let id = &rest[..rest.iter().position(|&c| c == b';').unwrap_or(rest.len())];
            if id.ends_with(b".tomcat1") {
                return 0;
            }
            if id.ends_with(b".tomcat2") {
                return 1;
            }
        }
    }
    NEXT.with(|n| {
        n.set(n.get().wrapping_add(1));
        n.get() & 1
    })
}

/// A connection to backend `i`: an idle pooled one, else a new one.
async fn connection(i: usize) -> Result<client::SendRequest<Incoming>, Failure> {
    while let Some(mut s) = POOLS.with(|p| p.borrow_mut()[i].pop()) {
        if s.is_closed() {
            continue;
        }
        if s.ready().await.is_ok() {
            return Ok(s);
        }
    }
    let addr = BACKENDS.with(|b| b.get()).ok_or("no backends")?[i];
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = client::handshake(TokioIo::new(stream)).await?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Forward one request; the connection goes back to the pool as soon as
/// the response head is in (the body streams on, as in stickgate).
async fn handle(req: Request<Incoming>) -> Result<Response<Incoming>, Failure> {
    let i = route(&req);
    let mut sender = connection(i).await?;
    let response = sender.send_request(req).await?;
    POOLS.with(|p| p.borrow_mut()[i].push(sender));
    Ok(response)
}

/// One core's server: its own listener on the shared port.
async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_port(true)?;
    sock.set_reuse_address(true)?;
    sock.bind(&listen.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(sock.into())?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(async move {
            let _ = server::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

fn main() -> ExitCode {
    let args: Vec<SocketAddr> = match std::env::args().skip(1).map(|a| a.parse()).collect() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stickgate-floor: {e}; usage: stickgate-floor LISTEN BACKEND1 BACKEND2 (ip:port each)");
            return ExitCode::from(2);
        }
    };
    let [listen, b1, b2] = args[..] else {
        eprintln!(
            "stickgate-floor: usage: stickgate-floor LISTEN BACKEND1 BACKEND2 (ip:port each)"
        );
        return ExitCode::from(2);
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<()> {
                BACKENDS.with(|b| b.set(Some([b1, b2])));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                tokio::task::LocalSet::new().block_on(&rt, serve(listen))
            })
        })
        .collect();
    for w in workers {
        if let Ok(Err(e)) = w.join() {
            eprintln!("stickgate-floor: cannot serve on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
