//! Limits on open connections: for the whole gateway, and per client address.
//!
//! A connection over either limit is answered with a short 503 (plain HTTP) or closed
//! (TLS, before the handshake) and never reaches the request path, so one client
//! holding many idle or slow connections cannot take the sockets, memory and file
//! descriptors everyone shares. The count is per peer IP address; behind a load
//! balancer every client shares its address, so raise the per-client limit there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_connections` are open.
    Total,
    /// `limits.max_connections_per_client` are open from this address.
    PerClient,
}

impl Refused {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::PerClient => "per_client",
        }
    }
}

/// Open connections, counted against the limits (0: no limit).
#[derive(Debug)]
pub struct ConnectionLimits {
    total_limit: usize,
    per_client_limit: usize,
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// An admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    peer: IpAddr,
}

impl ConnectionLimits {
    /// At most `total` connections, `per_client` from one address (0: no limit).
    pub fn new(total: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            total_limit: total,
            per_client_limit: per_client,
            open: Mutex::new(Counts::default()),
        })
    }

    /// Admit a connection from `peer`, or say why not.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if self.total_limit > 0 && open.total >= self.total_limit {
            return Err(Refused::Total);
        }
        let from_peer = open.per_client.get(&peer).copied().unwrap_or(0);
        if self.per_client_limit > 0 && from_peer >= self.per_client_limit {
            return Err(Refused::PerClient);
        }
        open.total += 1;
        open.per_client.insert(peer, from_peer + 1);
        Ok(Admitted {
            limits: self.clone(),
            peer,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_client.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.peer);
            }
        }
    }
}

/// What a refused plain-HTTP connection is told before it is closed.
pub const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\nConnection: close\r\nContent-Length: 21\r\n\r\ntoo many connections\n";

/// Answer a refused plain-HTTP connection with [`REFUSAL`], then close it cleanly:
/// what the client sent is drained first, since closing with unread input would reset
/// the connection before the client reads the answer. Callers bound it in time.
pub async fn refuse(mut tcp: tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(REFUSAL).await?;
    tcp.shutdown().await?;
    let mut sink = [0u8; 4096];
    while tcp.read(&mut sink).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_and_per_client_limits_with_places_given_back() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let a1 = limits.admit(a).expect("first");
        let _a2 = limits.admit(a).expect("second");
        assert_eq!(limits.admit(a).err(), Some(Refused::PerClient));
        let b1 = limits.admit(b).expect("other client");
        assert_eq!(limits.admit(b).err(), Some(Refused::Total));
        drop(a1);
        let _a3 = limits.admit(a).expect("a place came back");
        drop(b1);
        assert!(limits.admit(b).is_ok());
        let unlimited = ConnectionLimits::new(0, 0);
        let held: Vec<_> = (0..1000)
            .map(|_| unlimited.admit(a).expect("no limit"))
            .collect();
        assert_eq!(held.len(), 1000);
    }
}
