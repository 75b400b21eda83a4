//! The address a redirected connection was sent to.
//!
//! iptables' `REDIRECT` rewrites a captured connection's destination to
//! meshd's capture port; the kernel keeps the original one, which
//! `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (`SOL_IPV6`,
//! `IP6T_SO_ORIGINAL_DST` for IPv6) returns (spec §7.3). socket2 wraps both
//! calls, so no unsafe code is needed here.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination of `stream`: the address its client connected
/// to before a NAT redirect, else (no redirect, or not Linux) the address
/// it was accepted on.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let sock = SockRef::from(stream);
    let original = match local {
        SocketAddr::V4(_) => sock.original_dst(),
        SocketAddr::V6(_) => sock.original_dst_ipv6(),
    };
    Ok(original.ok().and_then(|addr| addr.as_socket()).map_or(local, unmap))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::net::TcpListener;

    /// Without a NAT redirect the original destination is the address the
    /// connection was accepted on.
    #[tokio::test]
    async fn without_redirect_it_is_the_local_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        assert_eq!(original_dst(&server).expect("original dst"), addr);
    }

    #[test]
    fn mapped_addresses_are_unmapped() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(unmap(mapped), "10.0.0.1:80".parse::<SocketAddr>().unwrap());
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(unmap(v6), v6);
    }
}
