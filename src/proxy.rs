//! The client's address, seen through trusted reverse proxies only.
//!
//! Forwarding headers can be written by anyone, so they are read only when the socket peer
//! is one of `server.trusted_proxies`, and only the one header the operator names
//! (`server.forwarded_header`): behind a proxy that sets only `Forwarded`, a client's own
//! `X-Forwarded-For` would otherwise be believed. The header is walked from the right —
//! each proxy appends the address it got the request from — past trusted proxies; the
//! first hop that is not one is the client, and everything left of it was written by the
//! client and proves nothing. A hop that is not an address (`unknown`, an obfuscated
//! `_name`, garbage) ends the walk: the proxy that wrote it did not know its client, so the
//! client is taken to be the last trusted hop — that proxy. Skipping such a hop instead
//! would believe whatever the client wrote to its left. (actix's `realip_remote_addr()`
//! believes the headers from anyone.)

use std::net::IpAddr;

use actix_web::HttpRequest;
use ipnet::IpNet;

use crate::config::ForwardedHeader;

/// Resolves client addresses for one set of trusted proxies. Clones share the set, which
/// a configuration reload replaces ([`Self::set`]).
#[derive(Debug, Clone)]
pub struct ClientAddr {
    trusted: std::sync::Arc<arc_swap::ArcSwap<Vec<IpNet>>>,
    header: ForwardedHeader,
}

impl Default for ClientAddr {
    /// Trusts no proxy: the client is always the socket peer.
    fn default() -> Self {
        Self::new(Vec::new(), ForwardedHeader::XForwardedFor)
    }
}

impl ClientAddr {
    /// Believes `header` only from peers inside `trusted`.
    pub fn new(trusted: Vec<IpNet>, header: ForwardedHeader) -> Self {
        Self {
            trusted: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(trusted)),
            header,
        }
    }

    /// Believes `trusted` from now on (a reload changed `server.trusted_proxies`).
    pub fn set(&self, trusted: Vec<IpNet>) {
        self.trusted.store(std::sync::Arc::new(trusted));
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.load().iter().any(|net| net.contains(&ip))
    }

    /// The client address of `req` (falls back to the unspecified address if actix does
    /// not know the peer, which only happens in unit tests).
    pub fn of(&self, req: &HttpRequest) -> IpAddr {
        self.of_parts(req.peer_addr(), req.headers())
    }

    /// The client address of a request known by its socket peer and headers (an upgrade
    /// request, which never becomes an `HttpRequest`).
    pub fn of_parts(
        &self,
        peer: Option<std::net::SocketAddr>,
        headers: &actix_web::http::header::HeaderMap,
    ) -> IpAddr {
        self.of_header(peer, |name| {
            let values: Vec<&str> = headers
                .get_all(name)
                .map(|v| v.to_str().unwrap_or("unknown"))
                .collect();
            values.join(",")
        })
    }

    /// The client address of a request from `peer` whose forwarding header, every
    /// occurrence joined with commas, `joined` gives by name; asked only if `peer` is a
    /// trusted proxy.
    pub fn of_header(
        &self,
        peer: Option<std::net::SocketAddr>,
        joined: impl FnOnce(&'static str) -> String,
    ) -> IpAddr {
        match self.header_from(peer) {
            // The common, direct case reads no header at all.
            None => canonical(peer_ip(peer)),
            Some(name) => self.resolve(peer_ip(peer), &joined(name)),
        }
    }

    /// The forwarding header believed from `peer` (lower case), if `peer` is a trusted proxy.
    pub fn header_from(&self, peer: Option<std::net::SocketAddr>) -> Option<&'static str> {
        self.is_trusted(peer_ip(peer)).then_some(match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        })
    }

    /// The rule itself, on plain values (unit-tested): `header` is the value of the
    /// configured forwarding header, every occurrence joined with commas.
    pub fn resolve(&self, peer: IpAddr, header: &str) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) || header.trim().is_empty() {
            return peer;
        }
        let hops: Vec<Option<IpAddr>> = match self.header {
            ForwardedHeader::XForwardedFor => header.split(',').map(parse_hop).collect(),
            ForwardedHeader::Forwarded => header.split(',').map(forwarded_for).collect(),
        };
        // Walk from the proxy nearest us outwards; the first untrusted hop is the client.
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = hop.map(canonical) else {
                // The proxy that wrote this did not know its client: it is the client.
                return client;
            };
            client = ip;
            if !self.is_trusted(ip) {
                return ip;
            }
        }
        // Every hop is a trusted address: the leftmost is where the request began.
        client
    }
}

/// The `for=` of one `Forwarded` element (`for=192.0.2.60;proto=http`), if an address.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then_some(value)
    })?;
    parse_hop(value)
}

/// Parses one hop: `1.2.3.4`, `1.2.3.4:5678`, `"[2001:db8::1]:443"`, `2001:db8::1`.
/// Anything else — `[::1`, `1.2.3.4:x`, `[::1]:99999` — is not an address, and ends the
/// walk like `unknown` (found by the property tests: these used to be read leniently).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    let port = |port: &str| port.parse::<u16>().is_ok();
    if let Some(rest) = hop.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ends_well = after.is_empty() || after.strip_prefix(':').is_some_and(port);
        return ends_well.then(|| ip.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6))?;
    }
    let (ip, rest) = hop.rsplit_once(':')?;
    port(rest).then(|| ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4))?
}

/// The socket peer's address (the unspecified address if actix does not know it).
fn peer_ip(peer: Option<std::net::SocketAddr>) -> IpAddr {
    peer.map_or(IpAddr::from([0, 0, 0, 0]), |addr| addr.ip())
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

    fn trusted() -> Vec<IpNet> {
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ]
    }

    fn xff() -> ClientAddr {
        ClientAddr::new(trusted(), ForwardedHeader::XForwardedFor)
    }

    fn forwarded() -> ClientAddr {
        ClientAddr::new(trusted(), ForwardedHeader::Forwarded)
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_its_headers_say() {
        assert_eq!(
            xff().resolve(ip("203.0.113.7"), "1.2.3.4"),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded().resolve(ip("203.0.113.7"), "for=5.6.7.8"),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn through_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
        let p = xff();
        // The client forged the first entry; the proxy appended the real address.
        assert_eq!(
            p.resolve(ip("127.0.0.1"), "1.2.3.4, 198.51.100.9"),
            ip("198.51.100.9")
        );
        // Two trusted proxies in a row are skipped.
        assert_eq!(
            p.resolve(ip("127.0.0.1"), "198.51.100.9, 10.1.2.3"),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn the_forwarded_header_is_read_when_the_operator_names_it() {
        let p = forwarded();
        assert_eq!(
            p.resolve(
                ip("10.0.0.5"),
                r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#
            ),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            p.resolve(ip("10.0.0.5"), "for=192.0.2.60:443"),
            ip("192.0.2.60")
        );
    }

    #[test]
    fn the_header_the_operator_did_not_name_is_ignored() {
        // Behind a proxy that sets only `Forwarded`, the client's own X-Forwarded-For is
        // never seen by `resolve`: `of` reads only the configured header. Here the value of
        // the wrong syntax simply yields no address, so the proxy is the client.
        assert_eq!(
            forwarded().resolve(ip("10.0.0.5"), "1.2.3.4"),
            ip("10.0.0.5")
        );
        assert_eq!(xff().resolve(ip("10.0.0.5"), "for=1.2.3.4"), ip("10.0.0.5"));
    }

    #[test]
    fn a_trusted_peer_without_headers_or_with_garbage_is_itself() {
        let p = xff();
        assert_eq!(p.resolve(ip("10.0.0.5"), ""), ip("10.0.0.5"));
        assert_eq!(
            p.resolve(ip("10.0.0.5"), "unknown, garbage"),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn a_hop_that_is_not_an_address_ends_the_walk_and_nothing_left_of_it_is_believed() {
        let p = xff();
        // The client wrote 1.2.3.4; the proxy did not know its client and wrote `unknown`.
        assert_eq!(
            p.resolve(ip("10.0.0.5"), "1.2.3.4, unknown"),
            ip("10.0.0.5")
        );
        // Past a trusted hop, the last trusted hop is the answer.
        assert_eq!(
            p.resolve(ip("127.0.0.1"), "1.2.3.4, garbage, 10.9.9.9"),
            ip("10.9.9.9")
        );
        let p = forwarded();
        assert_eq!(
            p.resolve(ip("10.0.0.5"), "for=1.2.3.4, for=unknown"),
            ip("10.0.0.5")
        );
        assert_eq!(
            p.resolve(ip("10.0.0.5"), "for=1.2.3.4, for=_hidden"),
            ip("10.0.0.5")
        );
        // An element without `for` says nothing about the client either.
        assert_eq!(
            p.resolve(ip("10.0.0.5"), "for=1.2.3.4, proto=https"),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn a_malformed_hop_is_not_an_address() {
        for hop in [
            "1.2.3.4:x",
            "[::1",
            "[::1]x",
            "[::1]:99999",
            "10.0.0.1:",
            "::ffff:1.2.3.4:x",
        ] {
            assert_eq!(parse_hop(hop), None, "{hop}");
        }
        for (hop, ip) in [
            ("1.2.3.4:80", "1.2.3.4"),
            ("[::1]:443", "::1"),
            ("\"[::1]\"", "::1"),
        ] {
            assert_eq!(parse_hop(hop), Some(ip.parse().unwrap()), "{hop}");
        }
    }

    #[test]
    fn when_every_hop_is_trusted_the_leftmost_is_the_client() {
        assert_eq!(
            xff().resolve(ip("127.0.0.1"), "10.1.1.1, 10.2.2.2"),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn mapped_ipv6_peers_match_ipv4_networks() {
        assert_eq!(
            xff().resolve(ip("::ffff:127.0.0.1"), "198.51.100.9"),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn with_no_trusted_proxies_headers_are_ignored() {
        let p = ClientAddr::default();
        assert_eq!(p.resolve(ip("127.0.0.1"), "1.2.3.4"), ip("127.0.0.1"));
    }
}
