//! JSON text as senders really write it: every escape spelling, any whitespace, fields in
//! any order, now and then something invalid — to drive the data path's own scanner and
//! serde down every branch.

use proptest::prelude::*;

/// Strings heavy in what escaping must get right, and anything else now and then.
pub fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[ab\"\\\\/\\n\\t\\r\\x00-\\x1f\\x7fé✓🦀 ]{0,24}",
        1 => any::<String>(),
    ]
}

/// One way to write `text` as a JSON string literal, quotes included: each character
/// canonically (as serde_json writes it), as a `\u` escape (either case, surrogate pairs
/// beyond the BMP), or raw — a raw control character makes the text invalid JSON.
pub fn spelled(text: String) -> impl Strategy<Value = String> {
    let n = text.chars().count();
    prop::collection::vec(
        prop_oneof![12 => Just(0u8), 1 => Just(1), 1 => Just(2), 1 => Just(3)],
        n,
    )
    .prop_map(move |ways| {
        let mut out = String::from("\"");
        for (c, way) in text.chars().zip(ways) {
            match way {
                1 | 2 => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let hex = format!("\\u{unit:04x}");
                        out.push_str(&if way == 2 {
                            hex.to_uppercase().replace("\\U", "\\u")
                        } else {
                            hex
                        });
                    }
                }
                3 => out.push(c),
                _ => out.push_str(&canonical(c)),
            }
        }
        out.push('"');
        out
    })
}

/// `c` as serde_json writes it inside a string.
fn canonical(c: char) -> String {
    match c {
        '"' => "\\\"".into(),
        '\\' => "\\\\".into(),
        '\u{8}' => "\\b".into(),
        '\u{c}' => "\\f".into(),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
        c => c.to_string(),
    }
}

/// A string value, spelled some way.
pub fn string_value() -> impl Strategy<Value = (String, String)> {
    tricky_string().prop_flat_map(|text| (Just(text.clone()), spelled(text)))
}

/// A `seq` as senders write it, right or wrong.
pub fn seq_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => any::<u64>().prop_map(|n| n.to_string()),
        1 => Just("18446744073709551616".to_owned()),
        1 => prop::sample::select(vec!["-1", "1.0", "1e3", "01", "null", "\"5\"", "true", "0"])
            .prop_map(str::to_owned),
    ]
}

/// Whitespace between tokens: none, JSON's own, or (rarely) a character that is not.
pub fn gap() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\n", "\t", "\r\n ", "\u{a0}"])
}

/// A flat object from `fields` (name and value text, in order) with `gaps` between tokens.
pub fn object(fields: &[(String, String)], gaps: &[&str]) -> String {
    let mut gaps = gaps.iter().cycle();
    let mut out = format!("{}{{", gaps.next().unwrap_or(&""));
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let g = [gaps.next(), gaps.next(), gaps.next()].map(|g| *g.unwrap_or(&""));
        out.push_str(&format!("{}\"{name}\"{}:{}{value}", g[0], g[1], g[2]));
    }
    out.push_str(&format!(
        "{}}}{}",
        gaps.next().unwrap_or(&""),
        gaps.next().unwrap_or(&"")
    ));
    out
}

/// A `data` message of an endpoint whose string fields are `names` (the payload last),
/// spelled every way: optional `seq`, sometimes an extra or duplicate field, a different
/// `type`, a missing field or one of the wrong type, fields in any order.
pub fn data_message(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    let strings = prop::collection::vec(string_value(), names.len());
    let twist = prop_oneof![
        8 => Just(0u8), 1 => Just(1), 1 => Just(2), 1 => Just(3), 1 => Just(4), 1 => Just(5)
    ];
    let type_value = prop_oneof![
        8 => Just("\"data\"".to_owned()),
        1 => Just("\"d\\u0061ta\"".to_owned()),
        1 => Just("\"ping\"".to_owned()),
    ];
    (
        strings,
        prop::option::of(seq_value()),
        twist,
        type_value,
        prop::collection::vec(gap(), 12),
        any::<prop::sample::Index>(),
    )
        .prop_map(move |(strings, seq, twist, type_value, gaps, at)| {
            let mut fields = vec![("type".to_owned(), type_value)];
            for (name, (_, spelled)) in names.iter().zip(strings) {
                fields.push(((*name).to_owned(), spelled));
            }
            if let Some(seq) = seq {
                fields.push(("seq".to_owned(), seq));
            }
            match twist {
                1 => fields.push(("extra".to_owned(), "1".to_owned())),
                2 => fields.push(fields[1].clone()),
                3 => drop(fields.remove(1)),
                4 => fields[1].1 = "17".to_owned(),
                5 => {
                    let i = at.index(fields.len());
                    let field = fields.remove(i);
                    fields.insert(0, field);
                }
                _ => {}
            }
            object(&fields, &gaps)
        })
}
