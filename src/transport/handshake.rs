//! A connection's first request read straight from the socket, so that a plain WebSocket
//! upgrade — what nearly every connection to the relay is — is answered without actix-http's
//! h1 dispatcher: no request decoder (it clears a 3 KiB header index twice a request), no
//! `Request` and header map, no response encoder, and no date-service task that its upgrade
//! path starts for every connection it hands over.
//!
//! [`parse`] recognises only the plain case, and the caller hands everything else — another
//! route, a malformed or unusual head (a body, `Expect`, HTTP/1.0, odd characters in the
//! query, repeated handshake headers), a failed handshake check — to the HTTP layer with
//! the bytes read so far replayed, where it is answered exactly as before. A head it does
//! take is one the HTTP layer would have decoded the same way and passed to the upgrade
//! handler with the same method, path and header values.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::prelude::{Engine as _, BASE64_STANDARD};

use crate::ids::Endpoint;

/// The longest head the HTTP layer reads before refusing it (actix-http's
/// `MAX_BUFFER_SIZE`): a head still partial at this size is handed over as it is.
pub const MAX_HEAD_BYTES: usize = 131_072;
/// The most headers a head may have (actix-http's limit: a head with more is refused
/// there; with fewer, a head still arriving is never taken for one with too many).
const MAX_HEADERS: usize = 96;
/// The longest request target the HTTP layer takes (the `http` crate's `Uri` limit); a
/// longer one goes there, to be refused as it would be.
const MAX_TARGET_BYTES: usize = 65_534;

/// What the bytes read so far hold.
#[derive(Debug)]
pub enum Head<'b> {
    /// Not all of the head yet.
    Partial,
    /// Something for the HTTP layer (see the module's documentation).
    Other,
    /// A WebSocket upgrade to one of the relay's endpoints.
    Upgrade(Upgrade<'b>),
}

/// A plain WebSocket upgrade request.
#[derive(Debug)]
pub struct Upgrade<'b> {
    /// The head's length: what follows it was sent after the upgrade (frames).
    pub len: usize,
    /// Which endpoint it asks for.
    pub endpoint: Endpoint,
    /// `Sec-WebSocket-Key`, checked (24 characters of base64 for 16 bytes).
    pub key: &'b [u8],
    /// `Origin`, if sent (at most one).
    pub origin: Option<&'b [u8]>,
    /// The values of the forwarding header asked for, joined with commas as
    /// [`crate::proxy::ClientAddr::of_parts`] joins them ("unknown" for one that is not
    /// visible ASCII); empty if none was sent or none was asked for.
    pub forwarded: String,
}

/// Parses the start of a connection. `forwarded` names a header whose values to collect
/// (the forwarding header, when the peer is a trusted proxy).
pub fn parse<'b>(buf: &'b [u8], forwarded: Option<&str>) -> Head<'b> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'b>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    if req.method != Some("GET") || req.version != Some(1) || len > MAX_HEAD_BYTES {
        return Head::Other;
    }
    let target = req.path.unwrap_or_default();
    if target.len() > MAX_TARGET_BYTES {
        return Head::Other;
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let Some(endpoint) = Endpoint::from_route(path) else {
        return Head::Other;
    };
    if query.is_some_and(|query| !query.bytes().all(plain_query_byte)) {
        return Head::Other;
    }
    let (mut hosts, mut upgrades, mut connections, mut versions) = (0, 0, 0, 0);
    let (mut key, mut origin, mut origins) = (None, None, 0);
    let mut joined = String::new();
    for header in req.headers.iter() {
        let (name, value) = (header.name, header.value);
        if forwarded.is_some_and(|wanted| name.eq_ignore_ascii_case(wanted)) {
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(header_str(value).unwrap_or("unknown"));
        }
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrades += 1;
            let websocket = header_str(value)
                .is_some_and(|value| value.trim().eq_ignore_ascii_case("websocket"));
            if !websocket {
                return Head::Other;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            connections += 1;
            if !connection_upgrade(value) {
                return Head::Other;
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            versions += 1;
            if value != b"13" {
                return Head::Other;
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.replace(value).is_some() || !valid_key(value) {
                return Head::Other;
            }
        } else if name.eq_ignore_ascii_case("origin") {
            origins += 1;
            origin = Some(value);
        } else if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
        {
            return Head::Other;
        }
    }
    let once = hosts == 1 && upgrades == 1 && connections == 1 && versions == 1;
    match key {
        Some(key) if once && origins <= 1 => Head::Upgrade(Upgrade {
            len,
            endpoint,
            key,
            origin,
            forwarded: joined,
        }),
        _ => Head::Other,
    }
}

/// A header value as `HeaderValue::to_str` gives it: only if every byte is visible ASCII
/// or a tab.
pub fn header_str(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Whether a `Connection` value asks for an upgrade and not for a close (as actix-http
/// reads it).
fn connection_upgrade(value: &[u8]) -> bool {
    let Some(value) = header_str(value) else {
        return false;
    };
    let mut upgrade = false;
    for option in value.split(',').map(str::trim) {
        if option.eq_ignore_ascii_case("close") {
            return false;
        }
        upgrade |= option.eq_ignore_ascii_case("upgrade");
    }
    upgrade
}

/// RFC 6455 §4.2.1: the key is 16 bytes in base64 (checked as actix-http checks it).
fn valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 16];
    key.len() == 24 && BASE64_STANDARD.decode_slice(key, &mut decoded) == Ok(16)
}

/// Characters a query may hold for the head to be taken here (any URI parser takes them).
fn plain_query_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@/?".contains(&b)
}

/// Length of an HTTP date ("Sun, 06 Nov 1994 08:49:37 GMT").
const DATE_LEN: usize = 29;

thread_local! {
    /// The date last written, and the second it was for.
    static DATE: Cell<(u64, [u8; DATE_LEN])> = const { Cell::new((u64::MAX, [0; DATE_LEN])) };
}

/// Now as an HTTP date, formatted at most once a second per thread.
fn http_date() -> [u8; DATE_LEN] {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with(|date| {
        let (cached, bytes) = date.get();
        if cached == second {
            return bytes;
        }
        let mut bytes = [b' '; DATE_LEN];
        let formatted = httpdate::fmt_http_date(now);
        let n = formatted.len().min(DATE_LEN);
        bytes[..n].copy_from_slice(&formatted.as_bytes()[..n]);
        date.set((second, bytes));
        bytes
    })
}

/// The most a [`switching_protocols`] answer takes.
pub const SWITCHING_MAX: usize = 192;

/// Writes the 101 that accepts `key` into `out`, as actix-http wrote it, and returns its
/// length.
pub fn switching_protocols(key: &[u8], out: &mut [u8; SWITCHING_MAX]) -> usize {
    let accept = actix_http::ws::hash_key(key);
    let date = http_date();
    let parts: [&[u8]; 5] = [
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: ",
        &accept,
        b"\r\ndate: ",
        &date,
        b"\r\n\r\n",
    ];
    let mut len = 0;
    for part in parts {
        out[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    len
}

/// The 408 the HTTP layer answers a head that has not all arrived in time, as it writes it.
pub fn request_timeout() -> Vec<u8> {
    let mut answer =
        b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\ndate: "
            .to_vec();
    answer.extend_from_slice(&http_date());
    answer.extend_from_slice(b"\r\n\r\n");
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(path: &str, headers: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn a_plain_upgrade_is_taken_with_what_follows_it_left_for_the_socket() {
        let mut bytes = request("/mac", "Origin: https://app.example\r\n");
        let head_len = bytes.len();
        bytes.extend_from_slice(b"\x81\x85");
        let Head::Upgrade(upgrade) = parse(&bytes, None) else {
            panic!("not taken");
        };
        assert_eq!(upgrade.len, head_len);
        assert_eq!(upgrade.endpoint, Endpoint::Mac);
        assert_eq!(upgrade.key, KEY.as_bytes());
        assert_eq!(upgrade.origin, Some(&b"https://app.example"[..]));
        assert!(matches!(parse(&bytes[..head_len - 3], None), Head::Partial));
    }

    #[test]
    fn anything_unusual_is_left_to_the_http_layer() {
        let other = |bytes: Vec<u8>| matches!(parse(&bytes, None), Head::Other);
        assert!(other(request("/health", "")));
        assert!(other(request("/mac/", "")));
        assert!(other(request("/mac?a=<b>", "")));
        assert!(other(request("/mac", "Content-Length: 0\r\n")));
        assert!(other(request("/mac", "Host: again\r\n")));
        assert!(other(request("/mac", "Origin: a\r\nOrigin: b\r\n")));
        assert!(other(request("/mac", "Connection: close\r\n")));
        assert!(other(request(
            "/mac",
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
        )));
        let bytes = String::from_utf8(request("/mac", "")).unwrap();
        assert!(other(
            bytes.replace("Version: 13", "Version: 12").into_bytes()
        ));
        assert!(other(
            bytes.replace("Upgrade\r\n", "keep-alive\r\n").into_bytes()
        ));
        assert!(other(
            bytes.replace(KEY, "dGhlIHNhbXBsZSBub25jZQ").into_bytes()
        ));
        assert!(other(bytes.replace("HTTP/1.1", "HTTP/1.0").into_bytes()));
        assert!(other(bytes.replace("GET", "POST").into_bytes()));
        assert!(other(b"\x16\x03\x01 not http at all\r\n\r\n".to_vec()));
        let keep_alive = bytes
            .replace("/mac", "/browser?v=2")
            .replace("Upgrade\r\n", "keep-alive, Upgrade\r\n");
        assert!(matches!(
            parse(keep_alive.as_bytes(), None),
            Head::Upgrade(_)
        ));
    }

    #[test]
    fn forwarding_headers_are_joined_as_the_http_layer_joins_them() {
        let bytes = request(
            "/browser",
            "X-Forwarded-For: 192.0.2.1\r\nx-forwarded-for: 10.0.0.2\r\n",
        );
        let Head::Upgrade(upgrade) = parse(&bytes, Some("x-forwarded-for")) else {
            panic!("not taken");
        };
        assert_eq!(upgrade.forwarded, "192.0.2.1,10.0.0.2");
        let Head::Upgrade(upgrade) = parse(&bytes, None) else {
            panic!("not taken");
        };
        assert_eq!(upgrade.forwarded, "");
    }

    #[test]
    fn the_101_is_written_as_actix_http_wrote_it() {
        let mut out = [0; SWITCHING_MAX];
        let len = switching_protocols(KEY.as_bytes(), &mut out);
        let text = std::str::from_utf8(&out[..len]).unwrap();
        assert!(text.starts_with(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\ndate: "
        ));
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        assert_eq!(len, text.len());
    }
}
