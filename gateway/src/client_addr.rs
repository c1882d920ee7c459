//! Who a request comes from, by address: the connection's peer, or, when that peer is
//! one of `limits.trusted_proxies`, the client it names in `X-Forwarded-For`.
//!
//! Each proxy appends the address it received the request from, so the list reads
//! left to right from the original client to the last proxy. Only entries added by
//! trusted proxies can be believed: walking from the right, every trusted address is
//! skipped, and the first untrusted one is the client. Anything left of it may have
//! been written by the client itself and is ignored. An entry that is not an address
//! ends the walk at the last address known good.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The configured trusted proxies.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trust proxies at these networks.
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request that came from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().expect("header"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn believes_only_what_trusted_proxies_added() {
        let trusted = TrustedProxies::new(vec![
            "10.0.0.0/8".parse().expect("net"),
            "::1/128".parse().expect("net"),
        ]);
        let proxy = ip("10.1.2.3");
        // Not from a trusted proxy: the header is the client's own claim.
        assert_eq!(
            trusted.client(ip("192.0.2.7"), &headers(&["198.51.100.1"])),
            ip("192.0.2.7")
        );
        // From a trusted proxy: its entry names the client.
        assert_eq!(
            trusted.client(proxy, &headers(&["198.51.100.1"])),
            ip("198.51.100.1")
        );
        // A client that forges entries to its left changes nothing.
        assert_eq!(
            trusted.client(proxy, &headers(&["203.0.113.9, 198.51.100.1"])),
            ip("198.51.100.1")
        );
        // Chains of trusted proxies, over several headers, are walked through.
        assert_eq!(
            trusted.client(proxy, &headers(&["198.51.100.1, 10.9.9.9", "::1"])),
            ip("198.51.100.1")
        );
        // No header, or garbage: the nearest address known good.
        assert_eq!(trusted.client(proxy, &headers(&[])), proxy);
        assert_eq!(
            trusted.client(proxy, &headers(&["nonsense, 10.9.9.9"])),
            ip("10.9.9.9")
        );
        assert_eq!(
            TrustedProxies::default().client(proxy, &headers(&["198.51.100.1"])),
            proxy
        );
    }
}
