//! How setting values are read: named choices case-insensitively with the valid ones
//! listed on error, `IP:PORT` addresses, networks where a bare IP is one host, and lists
//! that accept a comma-separated string (with or without spaces) as well as an array.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Declares a setting that is one of a few names: read case-insensitively, written in
/// lower case, and an error that lists every valid name.
macro_rules! choice {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value with its name, in documentation order.
            pub const ALL: &'static [(&'static str, Self)] = &[$(($text, Self::$variant)),+];

            /// Its name in the configuration.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                one_of(&text, Self::ALL).map_err(de::Error::custom)
            }
        }
    };
}

choice!(
    /// Who may create an account through `/auth/register`.
    Registration {
        /// Anyone.
        Open = "open",
        /// No one (`403`); the operator adds users with `hermit-relay users add`.
        Closed = "closed",
        /// Addresses in `auth.allowed_emails` only (exact, or `*@domain`).
        Allowlist = "allowlist",
    }
);

choice!(
    /// How log lines are written.
    LogFormat {
        /// For people.
        Text = "text",
        /// One JSON object per line.
        Json = "json",
    }
);

choice!(
    /// Where audit events go.
    AuditTarget {
        /// Into the log, as events with target `audit`.
        Log = "log",
        /// Appended to `audit.file`, one JSON object a line.
        File = "file",
    }
);

choice!(
    /// The forwarding header the relay believes (from trusted proxies only).
    ForwardedHeader {
        /// `X-Forwarded-For: client, proxy1` (nginx's `$proxy_add_x_forwarded_for`).
        XForwardedFor = "x-forwarded-for",
        /// RFC 7239 `Forwarded: for=client, for=proxy1`.
        Forwarded = "forwarded",
    }
);

/// The value of `choices` named `text`, ignoring case and surrounding spaces.
fn one_of<T: Copy>(text: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text.trim()))
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            format!("is {text:?}; use one of {}", names.join(", "))
        })
}

/// `server.bind`: `IP:PORT` only, with an error that shows the form (host names such as
/// `localhost` are not looked up: which address they mean depends on the machine).
pub fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(|_| {
        de::Error::custom(format!(
            "is {text:?}; use the IP:PORT form, e.g. \"127.0.0.1:8080\" (this machine only), \
             \"0.0.0.0:8080\" (every IPv4 interface) or \"[::]:8080\" (IPv6)"
        ))
    })
}

/// A list given as an array or as one comma-separated string; entries are trimmed and
/// empty ones dropped, so `"a, b"` and `"a,b"` are the same list.
pub fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct List;
    impl<'de> Visitor<'de> for List {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings, or one comma-separated string")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<String>, E> {
            Ok(split(text))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                items.extend(split(&item));
            }
            Ok(items)
        }
    }
    deserializer.deserialize_any(List)
}

fn split(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Networks in CIDR form; a bare address is that one host (/32, or /128 for IPv6).
pub fn networks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    list(deserializer)?
        .iter()
        .map(|entry| network(entry).map_err(de::Error::custom))
        .collect()
}

/// One network: `10.0.0.0/8`, or `10.1.2.3` meaning `10.1.2.3/32`.
pub fn network(entry: &str) -> Result<IpNet, String> {
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!(
                "has {entry:?}, which is neither an address (10.0.0.5) nor a network in CIDR \
                 form (10.0.0.0/8, fd00::/8)"
            )
        })
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The URL with its password masked and any query string (where `?password=` may hide)
/// replaced by `?***`.
pub fn redact_url(url: &str) -> String {
    let masked = mask_url_password(url);
    match masked.split_once('?') {
        Some((base, _)) => format!("{base}?***"),
        None => masked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_ignore_case_and_list_the_valid_names() {
        assert_eq!(one_of("JSON", LogFormat::ALL), Ok(LogFormat::Json));
        assert_eq!(
            one_of(" Allowlist ", Registration::ALL),
            Ok(Registration::Allowlist)
        );
        let err = one_of("invite", Registration::ALL).unwrap_err();
        assert!(err.contains(r#""open", "closed", "allowlist""#), "{err}");
    }

    #[test]
    fn a_bare_address_is_one_host() {
        assert_eq!(network("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(network("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert_eq!(network("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(network("10.0.0.0/99").is_err());
        assert!(network("proxy.local").is_err());
    }

    #[test]
    fn list_entries_are_trimmed() {
        assert_eq!(split("a, b ,c,, "), ["a", "b", "c"]);
    }
}
