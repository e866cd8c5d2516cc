//! Sockets: the multicast group socket and the unicast replication
//! endpoint (UDP and TCP on the same address).

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use tokio::net::{TcpListener, UdpSocket};

/// Kernel receive buffer asked for (bursts of records after a failover).
const RECV_BUFFER: usize = 1 << 20;

/// A UDP socket that has joined `group` on `interface`, used both to
/// receive the group's traffic and to send to it.
///
/// Bound to the group port with `SO_REUSEADDR`/`SO_REUSEPORT` so several
/// balancers on one host can share it (each gets a copy of every
/// datagram), with loopback on so they hear each other, and TTL 1 so
/// nothing leaves the LAN. On Linux it is bound to the group address
/// itself, so it does not also receive other groups' or unicast traffic
/// for that port.
pub fn multicast_socket(group: SocketAddr, interface: IpAddr) -> io::Result<UdpSocket> {
    let (SocketAddr::V4(group), IpAddr::V4(iface)) = (group, interface) else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "only IPv4 multicast is supported (use an IPv4 multicast_group/multicast_interface, or static peers)",
        ));
    };
    if !group.ip().is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a multicast address", group.ip()),
        ));
    }
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    s.set_reuse_port(true)?;
    let _ = s.set_recv_buffer_size(RECV_BUFFER);
    let bind_ip = if cfg!(windows) {
        Ipv4Addr::UNSPECIFIED
    } else {
        *group.ip()
    };
    s.bind(&SocketAddrV4::new(bind_ip, group.port()).into())?;
    s.join_multicast_v4(group.ip(), &iface)?;
    s.set_multicast_if_v4(&iface)?;
    s.set_multicast_loop_v4(true)?;
    s.set_multicast_ttl_v4(1)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

fn unicast_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(RECV_BUFFER);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// Bind the replication endpoint: UDP and TCP on the same address. With
/// port 0, picks a port free for both.
pub async fn bind_endpoint(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener, SocketAddr)> {
    let tries = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = unicast_socket(addr)?;
        let local = udp.local_addr()?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp, local)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port")))
}
