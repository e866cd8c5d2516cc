//! One takeover connection: frames of [`wire`] over a Unix stream socket,
//! and listening sockets passed as SCM_RIGHTS, each read and write bounded
//! in time so a stuck peer cannot hold either process.

use super::wire::{Frame, HEAD};
use super::TakeoverError;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// Longest wait for one frame or descriptor while the two processes talk.
pub const STEP: Duration = Duration::from_secs(10);

/// The byte that carries a descriptor.
const FD_BYTE: u8 = b'F';

/// A framed takeover connection.
pub struct Conn {
    stream: UnixStream,
}

impl Conn {
    /// Wrap a connected stream.
    pub fn new(stream: UnixStream) -> Self {
        Conn { stream }
    }

    /// The peer's user id, from the kernel (SO_PEERCRED).
    pub fn peer_uid(&self) -> std::io::Result<(u32, Option<i32>)> {
        let c = self.stream.peer_cred()?;
        Ok((c.uid(), c.pid()))
    }

    /// Send one frame within [`STEP`].
    pub async fn send(&mut self, f: &Frame) -> Result<(), TakeoverError> {
        let bytes = f.encode();
        bounded(STEP, "sending", self.stream.write_all(&bytes)).await
    }

    /// Receive one frame, waiting at most `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Result<Frame, TakeoverError> {
        let mut head = [0u8; HEAD];
        bounded(
            limit,
            "waiting for the peer",
            self.stream.read_exact(&mut head),
        )
        .await?;
        let (tag, len) = Frame::head(head)?;
        let mut payload = vec![0u8; len];
        bounded(
            STEP,
            "reading a frame",
            self.stream.read_exact(&mut payload),
        )
        .await?;
        Ok(Frame::decode(tag, &payload)?)
    }

    /// Receive one frame within [`STEP`].
    pub async fn recv(&mut self) -> Result<Frame, TakeoverError> {
        self.recv_within(STEP).await
    }

    /// Pass one descriptor (the same kernel object; the sender keeps its
    /// own) as a one-byte message with SCM_RIGHTS.
    pub async fn send_fd(&mut self, fd: impl AsFd) -> Result<(), TakeoverError> {
        let fds = [fd.as_fd()];
        let write = self.stream.async_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
            control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
            let iov = [IoSlice::new(&[FD_BYTE])];
            rustix::net::sendmsg(
                &self.stream,
                &iov,
                &mut control,
                rustix::net::SendFlags::empty(),
            )
            .map_err(std::io::Error::from)
        });
        match bounded(STEP, "passing a socket", write).await? {
            1 => Ok(()),
            _ => Err(TakeoverError::Protocol(
                "a passed socket was not sent".into(),
            )),
        }
    }

    /// Receive one descriptor sent by [`Conn::send_fd`].
    pub async fn recv_fd(&mut self) -> Result<OwnedFd, TakeoverError> {
        let read = self.stream.async_io(Interest::READABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
            let mut byte = [0u8; 1];
            let mut iov = [IoSliceMut::new(&mut byte)];
            let msg = rustix::net::recvmsg(
                &self.stream,
                &mut iov,
                &mut control,
                rustix::net::RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let mut fds: Vec<OwnedFd> = Vec::new();
            for m in control.drain() {
                if let rustix::net::RecvAncillaryMessage::ScmRights(list) = m {
                    fds.extend(list);
                }
            }
            Ok((msg.bytes, byte[0], fds))
        });
        let (n, byte, mut fds) = bounded(STEP, "receiving a socket", read).await?;
        if n != 1 || byte != FD_BYTE || fds.len() != 1 {
            return Err(TakeoverError::Protocol(format!(
                "expected one passed socket, got {} byte(s) and {} descriptor(s)",
                n,
                fds.len()
            )));
        }
        Ok(fds.remove(0))
    }
}

/// "expected X, got Y" (a refusal carries the old process's reason).
pub fn unexpected(got: &Frame, want: &'static str) -> TakeoverError {
    match got {
        Frame::Refused(why) => TakeoverError::Refused(why.clone()),
        other => TakeoverError::Protocol(format!("expected {want}, got {}", other.name())),
    }
}

/// `io` within `limit`; a timeout names `doing`.
async fn bounded<T>(
    limit: Duration,
    doing: &'static str,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, TakeoverError> {
    match tokio::time::timeout(limit, io).await {
        Ok(r) => r.map_err(TakeoverError::Io),
        Err(_) => Err(TakeoverError::Timeout(doing, limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_and_a_listening_socket_cross_a_unix_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Conn::new(a), Conn::new(b));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let f = Frame::Listener {
            kind: super::super::wire::Kind::Plain,
            addr,
        };
        a.send(&f).await.unwrap();
        a.send_fd(&l).await.unwrap();
        a.send(&Frame::Go).await.unwrap();
        assert_eq!(b.recv().await.unwrap(), f);
        let got = std::net::TcpListener::from(b.recv_fd().await.unwrap());
        assert_eq!(got.local_addr().unwrap(), addr, "the same socket");
        assert_eq!(b.recv().await.unwrap(), Frame::Go);
        // A frame where a descriptor was expected is refused, not misread.
        a.send(&Frame::Go).await.unwrap();
        assert!(matches!(b.recv_fd().await, Err(TakeoverError::Protocol(_))));
        let (uid, _) = a.peer_uid().unwrap();
        assert_eq!(uid, rustix::process::getuid().as_raw());
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused_without_reading_on() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut a = a;
        let mut b = Conn::new(b);
        a.write_all(&[4, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
        let e = b.recv().await.unwrap_err();
        assert!(matches!(e, TakeoverError::Wire(_)), "{e}");
    }
}
