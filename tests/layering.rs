//! The module map in src/lib.rs is true: every `crate::…` path in the library's code (not its
//! unit tests, not the binary's `src/main.rs` and `src/cli/`) points to a module of the same
//! layer or an earlier one. The layers are read from lib.rs's own documentation, so the map
//! and this check cannot drift apart.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers of lib.rs's module map: the lines `//! N. [`a`], [`b`]: …`, as module -> N.
fn layers(lib_rs: &str) -> BTreeMap<String, usize> {
    let mut map = BTreeMap::new();
    for line in lib_rs.lines() {
        let Some(rest) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((n, list)) = rest.split_once(". ") else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else { continue };
        let names = list.split_once(':').map_or(list, |(names, _)| names);
        for name in names.split(',') {
            let name = name.trim().trim_start_matches("[`").trim_end_matches("`]");
            assert!(
                map.insert(name.to_owned(), n).is_none(),
                "{name} is in two layers of lib.rs's module map"
            );
        }
    }
    map
}

/// The `pub mod` declarations of lib.rs.
fn top_modules(lib_rs: &str) -> Vec<String> {
    lib_rs
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_owned())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a library file belongs to (`src/market/renter/rent.rs` -> `market`),
/// or `None` for files that are not library modules (lib.rs, the binary's files).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" | "cli" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_owned()),
    }
}

/// The code lines of a file with their numbers: line comments dropped, and everything from the
/// unit tests (`#[cfg(test)]` followed by `mod tests`) on left out.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .get(i + 1)
                .is_some_and(|n| n.trim_start().contains("mod tests"))
        {
            break;
        }
        let code = match t.find("//") {
            Some(at) => &t[..at],
            None => t,
        };
        if !code.trim().is_empty() {
            out.push((i + 1, code.to_owned()));
        }
    }
    out
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules a piece of code names through `crate::`: `crate::a::…` gives `a`,
/// `crate::{a::x, b}` gives `a` and `b` (the group may span lines, so this works on the joined
/// text of the file, with the line each path starts on).
fn crate_edges(lines: &[(usize, String)]) -> Vec<(usize, String)> {
    let mut joined = String::new();
    let mut line_at = Vec::new();
    for (n, l) in lines {
        for _ in 0..=l.len() {
            line_at.push(*n);
        }
        joined.push_str(l);
        joined.push('\n');
    }
    let mut edges = Vec::new();
    let mut from = 0;
    while let Some(at) = joined[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        // `$crate::` in macros and identifiers ending in "crate" are not paths of this crate.
        let before = joined[..start].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &joined[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 1 => {
                        item_start = false;
                        let name = ident_at(&group[i..]);
                        if !name.is_empty() && name != "self" {
                            edges.push((line_at[from + 1 + i], name));
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                edges.push((line_at[start], name));
            }
        }
    }
    edges
}

#[test]
fn every_crate_path_points_to_the_same_or_an_earlier_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib_rs = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let layers = layers(&lib_rs);
    let modules = top_modules(&lib_rs);
    assert!(!modules.is_empty(), "no `pub mod` in src/lib.rs");
    for m in &modules {
        assert!(
            layers.contains_key(m),
            "module {m} is missing from lib.rs's module map"
        );
    }
    for m in layers.keys() {
        assert!(
            modules.contains(m),
            "lib.rs's module map names {m}, which is not a module"
        );
    }

    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let Some(module) = module_of(rel) else {
            continue;
        };
        let own = layers[&module];
        let text = std::fs::read_to_string(file).unwrap();
        for (line, target) in crate_edges(&code_lines(&text)) {
            checked += 1;
            let Some(&theirs) = layers.get(&target) else {
                bad.push(format!(
                    "src/{}:{line}: {module} -> {target}: not a module of lib.rs",
                    rel.display()
                ));
                continue;
            };
            if theirs > own {
                bad.push(format!(
                    "src/{}:{line}: {module} (layer {own}) -> {target} (layer {theirs})",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        checked > 0,
        "no crate:: paths found; is the scanner broken?"
    );
    assert!(
        bad.is_empty(),
        "{} edge(s) point up the layers of src/lib.rs:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn the_scanner_sees_groups_and_skips_comments_and_unit_tests() {
    let code = "use crate::a::X;\n// crate::hidden\nuse crate::{\n    b::Y,\n    c,\n};\n\
                fn f() { crate::d::g(); $crate::e::h(); }\n#[cfg(test)]\nmod tests {\n    \
                use crate::z;\n}\n";
    let edges = crate_edges(&code_lines(code));
    let names: Vec<(usize, &str)> = edges.iter().map(|(l, n)| (*l, n.as_str())).collect();
    assert_eq!(names, vec![(1, "a"), (4, "b"), (5, "c"), (7, "d")]);

    let lib = "//! 1. [`x`], [`y`]: base.\n//!    - [`x`]: no layer here.\n//! 2. [`z`]: top.\n";
    let l = layers(lib);
    assert_eq!(l.len(), 3);
    assert_eq!((l["x"], l["y"], l["z"]), (1, 1, 2));
}
