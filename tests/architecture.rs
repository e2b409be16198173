//! The shape of `src/`, checked: no import circle between files, products that never
//! import each other, and leaf modules that stay leaves.
//!
//! Every path a file names — in `use` trees and inline (`crate::x::Y`, `super::Z`) — is
//! traced to the file that defines the module it lands in. Those edges must form no cycle.
//! `mod` declarations are not imports and add no edge. Unit-test files (`*_tests.rs`, and
//! inline `mod tests`) count as part of the module they test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`crate::relay::socket`) → its file, for every file under `src/`.
fn modules() -> BTreeMap<String, PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let mut segments: Vec<String> = relative
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if segments == ["lib"] || segments == ["main"] {
                segments.clear();
            }
            // `foo_tests.rs` is `foo::tests`: part of `foo` for this check.
            if let Some(last) = segments.last_mut() {
                if let Some(stem) = last.strip_suffix("_tests") {
                    *last = stem.to_owned();
                }
            }
            let name = std::iter::once("crate".to_owned())
                .chain(segments)
                .collect::<Vec<_>>()
                .join("::");
            if path.ends_with("main.rs") {
                continue; // the binary imports the library; it is not part of it
            }
            found
                .entry(name)
                .and_modify(|files: &mut PathBuf| {
                    if !path.to_string_lossy().ends_with("_tests.rs") {
                        *files = path.clone();
                    }
                })
                .or_insert(path);
        }
    }
    found
}

/// The file's text without comments and string literals (paths in prose are not imports).
fn code_of(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |end| end + 2);
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].chars().take_while(|c| *c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            i += body
                + rest[body..]
                    .find(&close)
                    .map_or(rest.len() - body, |end| end + close.len());
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() && rest.as_bytes()[j] != b'"' {
                j += if rest.as_bytes()[j] == b'\\' { 2 } else { 1 };
            }
            i += j + 1;
            out.push_str("\"\"");
        } else if rest.starts_with("'\"'") {
            i += 3;
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Expands one `use` tree (`a::{b, c::{d as e}, self}`) into full paths.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = split_path(&tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let base: Vec<String> = prefix.iter().cloned().chain(head).collect();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&base, &inner[start..], out);
    } else {
        let tree = tree.split(" as ").next().unwrap();
        let mut path: Vec<String> = prefix.to_vec();
        for segment in split_path(tree) {
            if segment != "self" && segment != "*" {
                path.push(segment);
            }
        }
        out.push(path);
    }
}

fn split_path(text: &str) -> Vec<String> {
    text.split("::")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Splits out inline modules (`mod tests { … }`): their `super` is the file's module, one
/// level up from where they sit. Returns the file's own code (`None`) and each inline
/// module's code with its name.
fn inline_modules(code: &str) -> Vec<(Option<String>, String)> {
    let mut parts = Vec::new();
    let mut outer = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("mod ") {
        let after = &rest[at + 4..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let tail = after[name.len()..].trim_start();
        let word_start = rest[..at]
            .chars()
            .last()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_');
        if word_start && !name.is_empty() && tail.starts_with('{') {
            let open = at + 4 + name.len() + (after[name.len()..].len() - tail.len());
            let mut depth = 0;
            let mut end = rest.len();
            for (i, c) in rest[open..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = open + i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            outer.push_str(&rest[..at]);
            parts.push((Some(name), rest[open + 1..end - 1].to_owned()));
            rest = &rest[end..];
        } else {
            outer.push_str(&rest[..at + 4]);
            rest = after;
        }
    }
    outer.push_str(rest);
    parts.push((None, outer));
    parts
}

/// Every path a file's code names that may point into the crate.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        if before.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
            if let Some(end) = after.find(';') {
                expand(&[], &after[..end], &mut paths);
            }
        }
        rest = after;
    }
    // Inline paths: `crate::…`, `super::…`, `self::…`.
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let word_start = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if word_start {
            let tail: String = chars[i..chars.len().min(i + 7)].iter().collect();
            if tail.starts_with("crate::")
                || tail.starts_with("super::")
                || tail.starts_with("self::")
            {
                let mut j = i;
                while j < chars.len()
                    && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == ':')
                {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                paths.push(split_path(&text));
                i = j;
                continue;
            }
        }
        i += 1;
    }
    paths
}

/// Resolves a path named in module `module` to the module (file) it lands in.
fn resolve(module: &str, path: &[String], known: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut here: Vec<String> = split_path(module);
    // `foo::tests` was folded into `foo`; a test file's `super` is `foo` itself.
    let mut absolute: Vec<String> = match path.first()?.as_str() {
        "crate" => path.to_vec(),
        "super" | "self" => {
            let mut rest = path;
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "super" => {
                        here.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
            here.iter().chain(rest).cloned().collect()
        }
        // A path starting at a child module (`use account::agent::X;` in `relay.rs`).
        first if known.contains_key(&format!("{module}::{first}")) => {
            here.iter().chain(path).cloned().collect()
        }
        _ => return None,
    };
    while !absolute.is_empty() {
        let name = absolute.join("::");
        if known.contains_key(&name) {
            return Some(name);
        }
        absolute.pop();
    }
    None
}

/// Import edges between modules (files).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let known = modules();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for module in known.keys() {
        edges.entry(module.clone()).or_default();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for path in walk(&root) {
        let Some((module, _)) = known.iter().find(|(_, file)| {
            **file == path
                || (path.to_string_lossy().ends_with("_tests.rs") && is_test_of(&path, file))
        }) else {
            continue;
        };
        // A test file's own position is one level below the module it tests.
        let position = if path.to_string_lossy().ends_with("_tests.rs") {
            format!("{module}::tests")
        } else {
            module.clone()
        };
        let code = code_of(&std::fs::read_to_string(&path).unwrap());
        for (inner, code) in inline_modules(&code) {
            let position = match inner {
                Some(name) => format!("{position}::{name}"),
                None => position.clone(),
            };
            for named in paths_in(&code) {
                if let Some(target) = resolve(&position, &named, &known) {
                    if &target != module && target != "crate" {
                        edges.get_mut(module).unwrap().insert(target);
                    }
                }
            }
        }
    }
    edges
}

fn is_test_of(test: &Path, file: &Path) -> bool {
    let stem = test.to_string_lossy().replace("_tests.rs", ".rs");
    Path::new(&stem) == file
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("main.rs") {
            files.push(path);
        }
    }
    files
}

/// One cycle through `start`, if there is one.
fn cycle_from(start: &str, edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((node, trail)) = stack.pop() {
        for next in &edges[&node] {
            if next == start {
                return Some(trail.iter().cloned().chain([start.to_owned()]).collect());
            }
            if seen.insert(next.clone()) {
                let mut longer = trail.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn src_has_no_import_circle() {
    let edges = graph();
    assert!(
        edges.len() > 30,
        "the scan found too few modules: {edges:?}"
    );
    let cycles: Vec<String> = edges
        .keys()
        .filter_map(|module| cycle_from(module, &edges))
        .map(|cycle| cycle.join(" → "))
        .collect();
    assert!(cycles.is_empty(), "import circles:\n{}", cycles.join("\n"));
}

#[test]
fn the_scan_sees_real_imports() {
    // A check that finds nothing proves nothing: known edges must be found.
    let edges = graph();
    let has = |from: &str, to: &str| edges[from].contains(to);
    assert!(has("crate::relay::pairing::socket", "crate::relay::socket"));
    assert!(has("crate::relay::account::agent", "crate::relay::account"));
    assert!(has("crate::relay", "crate::relay::account::agent"));
    assert!(has("crate::metrics", "crate::ids"));
}

#[test]
fn the_products_never_import_each_other() {
    let edges = graph();
    for (from, targets) in &edges {
        for to in targets {
            let crosses = (from.starts_with("crate::relay::pairing")
                && to.starts_with("crate::relay::account"))
                || (from.starts_with("crate::relay::account")
                    && to.starts_with("crate::relay::pairing"));
            assert!(!crosses, "{from} imports {to}");
        }
    }
}

#[test]
fn leaf_modules_stay_leaves() {
    let edges = graph();
    assert!(
        edges["crate::ids"].is_empty(),
        "ids must depend on nothing in the crate: {:?}",
        edges["crate::ids"]
    );
    assert!(
        edges["crate::workers"].is_empty(),
        "workers must depend on nothing in the crate: {:?}",
        edges["crate::workers"]
    );
    for leaf in [
        "crate::metrics",
        "crate::limits",
        "crate::connections",
        "crate::transport",
    ] {
        for to in &edges[leaf] {
            assert!(!to.starts_with("crate::relay"), "{leaf} imports {to}");
        }
    }
}
