//! The forwarding-header walk (`X-Forwarded-For`, `Forwarded`): any header never panics,
//! an untrusted peer is always the client, and no hop is believed that stands left of an
//! invalid hop or of an untrusted one — checked against a reference walk written here.

use std::net::IpAddr;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use hermit_relay::config::ForwardedHeader;
use hermit_relay::proxy::ClientAddr;
use ipnet::IpNet;
use proptest::prelude::*;

/// The proxies the properties trust.
fn trusted() -> Vec<IpNet> {
    ["10.0.0.0/8", "127.0.0.1/32", "2001:db8:aa::/48"]
        .iter()
        .map(|net| net.parse().unwrap())
        .collect()
}

fn is_trusted(ip: IpAddr) -> bool {
    trusted().iter().any(|net| net.contains(&canonical(ip)))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses inside and outside the trusted networks, IPv4-mapped ones included.
fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::from([10, a, b, c])),
        Just(IpAddr::from([127, 0, 0, 1])),
        any::<u128>().prop_map(|n| IpAddr::from(std::net::Ipv6Addr::from(n))),
        any::<u64>().prop_map(|low| IpAddr::from(std::net::Ipv6Addr::from(
            (0x2001_0db8_00aa_u128 << 80) | u128::from(low)
        ))),
        any::<[u8; 4]>().prop_map(|v4| IpAddr::from(std::net::Ipv4Addr::from(v4).to_ipv6_mapped())),
    ]
}

/// One hop as a proxy (or a client) writes it: an address in one of its spellings, or
/// something that is not an address.
#[derive(Debug, Clone)]
enum Hop {
    Addr(IpAddr, u8, u16),
    Junk(&'static str),
}

fn hop() -> impl Strategy<Value = Hop> {
    prop_oneof![
        5 => (address(), 0u8..4, any::<u16>()).prop_map(|(ip, form, port)| Hop::Addr(ip, form, port)),
        1 => prop::sample::select(vec![
            "unknown", "_hidden", "", "garbage", "1.2.3", "999.1.1.1", "[::1", "for", "\"\"",
            "1.2.3.4:x", "[::1]x", "[::1]:99999", "10.0.0.1:", "::ffff:10.0.0.1:x",
        ]).prop_map(Hop::Junk),
    ]
}

/// The hop as text of the configured header.
fn spell(hop: &Hop, header: ForwardedHeader) -> String {
    let text = match hop {
        Hop::Addr(ip, form, port) => match (ip, form) {
            (IpAddr::V4(v4), 1) => format!("{v4}:{port}"),
            (IpAddr::V6(v6), 1) => format!("[{v6}]:{port}"),
            (IpAddr::V6(v6), 2) => format!("\"[{v6}]\""),
            (ip, 3) => format!("\"{ip}\""),
            (ip, _) => ip.to_string(),
        },
        Hop::Junk(junk) => (*junk).to_owned(),
    };
    match header {
        ForwardedHeader::XForwardedFor => format!(" {text}"),
        ForwardedHeader::Forwarded => format!("for={text};proto=https"),
    }
}

/// The rule, written plainly: from the right, past trusted addresses; stop at the first
/// untrusted address (the client) or at junk (then the last trusted hop is the client).
fn reference(peer: IpAddr, hops: &[Hop]) -> IpAddr {
    let mut client = canonical(peer);
    if !is_trusted(client) || hops.is_empty() {
        return client;
    }
    for hop in hops.iter().rev() {
        match hop {
            Hop::Junk(_) => return client,
            Hop::Addr(ip, ..) => {
                client = canonical(*ip);
                if !is_trusted(client) {
                    return client;
                }
            }
        }
    }
    client
}

fn header_kind() -> impl Strategy<Value = ForwardedHeader> {
    prop_oneof![
        Just(ForwardedHeader::XForwardedFor),
        Just(ForwardedHeader::Forwarded)
    ]
}

proptest! {
    #[test]
    fn any_header_text_never_panics_and_an_untrusted_peer_is_the_client(
        peer in address(), text in any::<String>(), kind in header_kind(),
    ) {
        let resolver = ClientAddr::new(trusted(), kind);
        let client = resolver.resolve(peer, &text);
        if !is_trusted(peer) {
            prop_assert_eq!(client, canonical(peer));
        }
    }

    #[test]
    fn the_walk_believes_no_hop_left_of_an_invalid_or_untrusted_one(
        peer in address(), hops in prop::collection::vec(hop(), 0..8), kind in header_kind(),
    ) {
        let text: Vec<String> = hops.iter().map(|hop| spell(hop, kind)).collect();
        let text = text.join(",");
        let resolver = ClientAddr::new(trusted(), kind);
        // An all-empty header is no header at all.
        let expected = match text.trim().is_empty() {
            true => canonical(peer),
            false => reference(peer, &hops),
        };
        prop_assert_eq!(resolver.resolve(peer, &text), expected, "{}", text);
    }

    #[test]
    fn header_bytes_from_the_socket_never_panic(
        peer in address(),
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..4),
        kind in header_kind(),
    ) {
        let mut headers = HeaderMap::new();
        let name = match kind {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        for value in values {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.append(HeaderName::from_static(name), value);
            }
        }
        let resolver = ClientAddr::new(trusted(), kind);
        let client = resolver.of_parts(Some((peer, 443).into()), &headers);
        if !is_trusted(peer) {
            prop_assert_eq!(client, canonical(peer));
        }
    }
}
