//! The client's address, seen through trusted reverse proxies only.
//!
//! `X-Forwarded-For` and `Forwarded` can be written by anyone, so they are read only when
//! the socket peer is one of `server.trusted_proxies`. Then the address is the rightmost
//! hop that is not itself a trusted proxy: everything left of it was written by the client
//! and proves nothing. (actix's `realip_remote_addr()` believes the headers from anyone.)

use std::net::IpAddr;

use actix_web::HttpRequest;
use ipnet::IpNet;

/// Resolves client addresses for one set of trusted proxies. Clones share the set, which
/// a configuration reload replaces ([`Self::set`]).
#[derive(Debug, Clone, Default)]
pub struct ClientAddr {
    trusted: std::sync::Arc<arc_swap::ArcSwap<Vec<IpNet>>>,
}

impl ClientAddr {
    /// Believes forwarding headers only from peers inside `trusted`.
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self {
            trusted: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(trusted)),
        }
    }

    /// Believes `trusted` from now on (a reload changed `server.trusted_proxies`).
    pub fn set(&self, trusted: Vec<IpNet>) {
        self.trusted.store(std::sync::Arc::new(trusted));
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.load().iter().any(|net| net.contains(&ip))
    }

    /// The client address of `req` (falls back to the unspecified address if actix does
    /// not know the peer, which only happens in unit tests).
    pub fn of(&self, req: &HttpRequest) -> IpAddr {
        let peer = req
            .peer_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |addr| addr.ip());
        if !self.is_trusted(peer) {
            // The common, direct case reads no header at all.
            return canonical(peer);
        }
        let joined = |name: &str| {
            req.headers()
                .get_all(name)
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",")
        };
        self.resolve(peer, &joined("x-forwarded-for"), &joined("forwarded"))
    }

    /// The rule itself, on plain values (unit-tested).
    pub fn resolve(&self, peer: IpAddr, forwarded_for: &str, forwarded: &str) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = if !forwarded_for.trim().is_empty() {
            forwarded_for.split(',').filter_map(parse_hop).collect()
        } else {
            forwarded
                .split(',')
                .flat_map(|element| element.split(';'))
                .filter_map(|pair| {
                    let (name, value) = pair.split_once('=')?;
                    name.trim().eq_ignore_ascii_case("for").then_some(value)
                })
                .filter_map(parse_hop)
                .collect()
        };
        // Walk from the proxy nearest us outwards; the first untrusted hop is the client.
        hops.iter()
            .rev()
            .map(|ip| canonical(*ip))
            .find(|ip| !self.is_trusted(*ip))
            .or_else(|| hops.first().copied().map(canonical))
            .unwrap_or(peer)
    }
}

/// Parses one hop: `1.2.3.4`, `1.2.3.4:5678`, `"[2001:db8::1]:443"`, `2001:db8::1`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    hop.rsplit_once(':')?.0.parse().ok()
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) compare as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies() -> ClientAddr {
        ClientAddr::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ])
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_its_headers_say() {
        let p = proxies();
        assert_eq!(
            p.resolve(ip("203.0.113.7"), "1.2.3.4", "for=5.6.7.8"),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn through_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
        let p = proxies();
        // The client forged the first entry; the proxy appended the real address.
        assert_eq!(
            p.resolve(ip("127.0.0.1"), "1.2.3.4, 198.51.100.9", ""),
            ip("198.51.100.9")
        );
        // Two trusted proxies in a row are skipped.
        assert_eq!(
            p.resolve(ip("127.0.0.1"), "198.51.100.9, 10.1.2.3", ""),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn the_forwarded_header_is_read_when_x_forwarded_for_is_absent() {
        let p = proxies();
        assert_eq!(
            p.resolve(
                ip("10.0.0.5"),
                "",
                r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#
            ),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            p.resolve(ip("10.0.0.5"), "", "for=192.0.2.60:443"),
            ip("192.0.2.60")
        );
    }

    #[test]
    fn a_trusted_peer_without_headers_or_with_garbage_is_itself() {
        let p = proxies();
        assert_eq!(p.resolve(ip("10.0.0.5"), "", ""), ip("10.0.0.5"));
        assert_eq!(
            p.resolve(ip("10.0.0.5"), "unknown, garbage", ""),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn mapped_ipv6_peers_match_ipv4_networks() {
        let p = proxies();
        assert_eq!(
            p.resolve(ip("::ffff:127.0.0.1"), "198.51.100.9", ""),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn with_no_trusted_proxies_headers_are_ignored() {
        let p = ClientAddr::default();
        assert_eq!(p.resolve(ip("127.0.0.1"), "1.2.3.4", ""), ip("127.0.0.1"));
    }
}
