//! JSON on the data path, without a round trip through serde.
//!
//! A `data` message's payload is opaque to the relay. serde would decode it (unescaping)
//! and encode it again (escaping, ~9 instructions a byte) only to write out the very bytes
//! that came in. Here a payload whose escapes are exactly the ones serde_json (and a
//! browser's `JSON.stringify`) would write is kept as JSON text ([`JsonStr`]) and copied
//! into the outgoing frame as is: byte-for-byte what the re-encoding would have produced.
//! Anything unusual — another escape spelling, an unknown field, a duplicate, odd
//! whitespace inside values — falls back to serde, which gives the same result, slower.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// The content of a JSON string (between the quotes), valid and canonically escaped: it is
/// exactly what `serde_json` writes for the string it denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonStr<'a>(&'a str);

impl<'a> JsonStr<'a> {
    /// The JSON text, without quotes.
    pub fn as_json(&self) -> &'a str {
        self.0
    }

    /// The string it denotes: borrowed when there is nothing to unescape.
    pub fn value(&self) -> Cow<'a, str> {
        if !self.0.contains('\\') {
            return Cow::Borrowed(self.0);
        }
        let quoted = format!("\"{}\"", self.0);
        // unwrap: a JsonStr is valid JSON string content by construction.
        Cow::Owned(serde_json::from_str(&quoted).unwrap())
    }
}

/// A string field on the data path: JSON text to forward as is, or a decoded value (what
/// serde produced on the fallback path) to encode on the way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text<'a> {
    /// Canonical JSON text, copied into the outgoing frame unchanged.
    Json(JsonStr<'a>),
    /// A decoded value.
    Value(Cow<'a, str>),
}

impl<'a> Text<'a> {
    /// The string it denotes.
    pub fn value(&self) -> Cow<'_, str> {
        match self {
            Self::Json(json) => json.value(),
            Self::Value(value) => Cow::Borrowed(value),
        }
    }

    /// Its length as JSON text (what it adds to a frame, quotes excluded).
    pub fn json_len(&self) -> usize {
        match self {
            Self::Json(json) => json.0.len(),
            Self::Value(value) => escaped_len(value),
        }
    }

    /// Appends it as JSON text (without quotes).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Self::Json(json) => out.extend_from_slice(json.0.as_bytes()),
            Self::Value(value) => escape_into(value, out),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text::Value(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text::Value(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text::Value(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(TextVisitor)
    }
}

/// The short escapes serde_json writes, by the byte they stand for.
fn short_escape(byte: u8) -> Option<u8> {
    Some(match byte {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => return None,
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// How long `value` is once escaped as serde_json escapes.
fn escaped_len(value: &str) -> usize {
    value
        .bytes()
        .map(|b| match b {
            _ if short_escape(b).is_some() => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// Appends `value` escaped exactly as serde_json escapes it.
fn escape_into(value: &str, out: &mut Vec<u8>) {
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match short_escape(b) {
            Some(c) => out.extend_from_slice(&[b'\\', c]),
            None => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Index of the first byte that ends a plain run inside a JSON string: `"`, `\` or a
/// control character. Eight bytes at a time (a word-wide test), then byte by byte.
fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut i = 0;
    while i + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i..i + 8]);
        let w = u64::from_le_bytes(word);
        // Bytes below 0x20 (high bit clear in the source), and bytes equal to `"` or `\`.
        let below = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        let special =
            has_zero(w ^ (ONES * u64::from(b'"'))) | has_zero(w ^ (ONES * u64::from(b'\\')));
        if below | special != 0 {
            break;
        }
        i += 8;
    }
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x20 || b == b'"' || b == b'\\' {
            return i;
        }
        i += 1;
    }
    i
}

/// Scans a JSON string starting right after its opening quote. Returns the content and the
/// index just past the closing quote, or `None` if it is invalid or not canonically escaped
/// (the caller then lets serde decide).
fn scan_string(text: &str, start: usize) -> Option<(JsonStr<'_>, usize)> {
    let bytes = text.as_bytes();
    let mut i = start;
    loop {
        i += plain_run(&bytes[i..]);
        match *bytes.get(i)? {
            b'"' => return Some((JsonStr(&text[start..i]), i + 1)),
            b'\\' => {
                let escaped = *bytes.get(i + 1)?;
                match escaped {
                    b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' => {
                        // Canonical only for a control character with no short escape,
                        // written `\u00xx` in lower-case hex.
                        let hex = bytes.get(i + 2..i + 6)?;
                        let canonical = hex[0] == b'0'
                            && hex[1] == b'0'
                            && (hex[2] == b'0' || hex[2] == b'1')
                            && (hex[3].is_ascii_digit() || (b'a'..=b'f').contains(&hex[3]));
                        if !canonical {
                            return None;
                        }
                        let value = (hex[2] - b'0') * 16
                            + if hex[3].is_ascii_digit() {
                                hex[3] - b'0'
                            } else {
                                hex[3] - b'a' + 10
                            };
                        if short_escape(value).is_some() {
                            return None;
                        }
                        i += 6;
                    }
                    _ => return None,
                }
            }
            // A raw control character: invalid JSON; serde reports it.
            _ => return None,
        }
    }
}

/// A field value on the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A string, canonically escaped.
    Str(JsonStr<'a>),
    /// A non-negative integer that fits `u64`.
    Uint(u64),
    /// `true` or `false`.
    Bool(bool),
}

/// The fields of a flat JSON object, in order; at most [`MAX_FIELDS`].
#[derive(Debug, Default)]
pub struct Fields<'a> {
    fields: [Option<(&'a str, Value<'a>)>; MAX_FIELDS],
}

/// Most fields a message on the data path has (`type`, an id, a payload, `seq`).
pub const MAX_FIELDS: usize = 4;

impl<'a> Fields<'a> {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.fields
            .iter()
            .flatten()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    /// The string value of `key`.
    pub fn str(&self, key: &str) -> Option<JsonStr<'a>> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Whether every field's key is one of `allowed`.
    pub fn only(&self, allowed: &[&str]) -> bool {
        self.fields
            .iter()
            .flatten()
            .all(|(k, _)| allowed.contains(k))
    }
}

/// Reads a flat JSON object of at most [`MAX_FIELDS`] string, unsigned-integer and boolean
/// fields with plain keys and no duplicates. `None` for anything else — the caller hands
/// such text to serde, which accepts or refuses it as it always has.
pub fn flat_object(text: &str) -> Option<Fields<'_>> {
    let bytes = text.as_bytes();
    let skip_ws = |mut i: usize| {
        while matches!(bytes.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            i += 1;
        }
        i
    };
    let end_at = |i: usize| skip_ws(i + 1) == bytes.len();
    let mut fields = Fields::default();
    let mut i = skip_ws(0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(i + 1);
    if bytes.get(i) == Some(&b'}') {
        return end_at(i).then_some(fields);
    }
    for slot in 0..MAX_FIELDS {
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        let (key, after) = scan_string(text, i + 1)?;
        let key = key.as_json();
        if key.contains('\\') || fields.get(key).is_some() {
            return None;
        }
        i = skip_ws(after);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        let (value, after) = scan_value(text, skip_ws(i + 1))?;
        fields.fields[slot] = Some((key, value));
        i = skip_ws(after);
        match bytes.get(i)? {
            b',' => i = skip_ws(i + 1),
            b'}' => return end_at(i).then_some(fields),
            _ => return None,
        }
    }
    None
}

/// Reads one string, unsigned integer or boolean value at `i`; returns it and the index
/// after it.
fn scan_value(text: &str, i: usize) -> Option<(Value<'_>, usize)> {
    let bytes = text.as_bytes();
    Some(match *bytes.get(i)? {
        b'"' => {
            let (s, after) = scan_string(text, i + 1)?;
            (Value::Str(s), after)
        }
        b'0'..=b'9' => {
            let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
            let leading_zero = digits > 1 && bytes[i] == b'0';
            let fraction = matches!(bytes.get(i + digits), Some(b'.' | b'e' | b'E'));
            if leading_zero || fraction {
                return None;
            }
            (Value::Uint(text[i..i + digits].parse().ok()?), i + digits)
        }
        b't' if text[i..].starts_with("true") => (Value::Bool(true), i + 4),
        b'f' if text[i..].starts_with("false") => (Value::Bool(false), i + 5),
        _ => return None,
    })
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
