//! The data-path JSON scanner agrees with serde_json, byte for byte.

use super::*;

/// Strings with every kind of character the scanner must get right.
fn samples() -> Vec<String> {
    let mut samples: Vec<String> = [
        "",
        "plain",
        "quote \" and backslash \\ and slash /",
        "\u{1b}[31mred\u{1b}[0m\r\n",
        "tab\tbell\u{7}nul\u{0}del\u{7f}",
        "\u{8}\u{c}\u{1f}",
        "unicode: héllo ✓ 日本語 🦀",
        "eight by!",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Pseudo-random strings over a small alphabet heavy in special characters, at lengths
    // around the scanner's 8-byte words.
    let alphabet: Vec<char> = "ab\"\\/\n\t\u{0}\u{1f}\u{7f}é✓🦀 ".chars().collect();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for len in 0..40 {
        for _ in 0..20 {
            let s: String = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            samples.push(s);
        }
    }
    samples
}

#[test]
fn what_serde_writes_is_scanned_back_unchanged() {
    for s in samples() {
        let quoted = serde_json::to_string(&s).unwrap();
        let (json, end) = scan_string(&quoted, 1).unwrap_or_else(|| panic!("{quoted}"));
        assert_eq!(end, quoted.len());
        assert_eq!(json.as_json(), &quoted[1..quoted.len() - 1]);
        assert_eq!(json.value(), s);
    }
}

#[test]
fn values_are_escaped_exactly_as_serde_escapes_them() {
    for s in samples() {
        let quoted = serde_json::to_string(&s).unwrap();
        let text = Text::Value(Cow::Borrowed(&s));
        let mut out = Vec::new();
        text.write_json(&mut out);
        assert_eq!(out, &quoted.as_bytes()[1..quoted.len() - 1], "{s:?}");
        assert_eq!(text.json_len(), out.len());
    }
}

#[test]
fn other_spellings_of_a_string_fall_back_to_serde() {
    // Valid JSON, but not how serde writes it: forwarding these bytes would change them.
    for content in [
        r#"\u0041"#,
        r#"\/"#,
        r#"\u001B"#,
        r#"\u000a"#,
        r#"\ud83e\udd80"#,
    ] {
        let quoted = format!("\"{content}\"");
        assert!(scan_string(&quoted, 1).is_none(), "{content}");
        assert!(serde_json::from_str::<String>(&quoted).is_ok());
    }
    // Invalid JSON strings are left to serde to refuse.
    for quoted in ["\"raw\nnewline\"", "\"unterminated", "\"bad \\x escape\""] {
        assert!(scan_string(quoted, 1).is_none(), "{quoted:?}");
    }
}

#[test]
fn flat_objects_are_read_in_order_and_anything_else_is_left_to_serde() {
    let fields = flat_object(r#" { "type" : "data", "payload":"x\ty", "seq": 12 } "#).unwrap();
    assert_eq!(fields.str("type").unwrap().as_json(), "data");
    assert_eq!(fields.str("payload").unwrap().value(), "x\ty");
    assert_eq!(fields.get("seq"), Some(Value::Uint(12)));
    assert!(fields.only(&["type", "payload", "seq"]));
    assert!(!fields.only(&["type", "payload"]));
    assert!(flat_object("{}").is_some());
    for other in [
        r#"{"type":"data","type":"data"}"#,
        r#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#,
        r#"{"type":"data"} trailing"#,
        r#"{"n":-1}"#,
        r#"{"n":1.5}"#,
        r#"{"n":01}"#,
        r#"{"nested":{}}"#,
        r#"{"list":[]}"#,
        r#"{"nothing":null}"#,
        r#"{"k\u0041":1}"#,
        r#"{"type":"data",}"#,
        r#"["type"]"#,
        "",
    ] {
        assert!(flat_object(other).is_none(), "{other}");
    }
}
