//! The listening socket.

use std::net::SocketAddr;

use anyhow::{Context, Result, anyhow};
use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel completes and queues before ncps accepts them (capped by
/// `net.core.somaxconn`). The standard library's 128 overflows when a fleet of Nix clients,
/// each opening up to 25 connections, starts at once: every dropped SYN costs its client a 1 s
/// retransmission. Go servers (the Go ncps) use `somaxconn` itself; nginx uses 511.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on one address with our backlog (and `SO_REUSEADDR`, as the standard one has).
fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds `host:port`; the Go form `:port` listens on every interface (IPv6 and IPv4 where the
/// system allows, IPv4 otherwise).
pub async fn bind(addr: &str) -> Result<TcpListener> {
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .with_context(|| format!("invalid --server-addr {addr:?}"))?;
        return listen_on(SocketAddr::from(([0u16; 8], port)))
            .or_else(|_| listen_on(SocketAddr::from(([0, 0, 0, 0], port))))
            .with_context(|| format!("cannot listen on {addr}"));
    }
    let mut last_error = None;
    for candidate in tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve --server-addr {addr:?}"))?
    {
        match listen_on(candidate) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.map_or_else(|| anyhow!("{addr} resolves to no address"), |e| anyhow!(e)))
        .with_context(|| format!("cannot listen on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A burst of connections larger than the standard library's backlog of 128 all complete
    /// while the server is not accepting (busy, or just starting).
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_backlog() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..400).map(|_| {
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        });
        let results = futures::future::join_all(connects).await;
        let connected = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        // The kernel caps every backlog at net.core.somaxconn (4096 by default since Linux 5.4).
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(4096);
        assert_eq!(connected, 400.min(cap + 1));
        drop(listener);
    }

    #[tokio::test]
    async fn go_style_port_and_bad_addresses() {
        let any = bind(":0").await.unwrap();
        assert!(any.local_addr().unwrap().ip().is_unspecified());
        assert!(bind(":notaport").await.is_err());
        assert!(bind("256.0.0.1:80").await.is_err());
    }
}
