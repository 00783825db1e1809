//! The rooms of `src/` depend on each other one way only.
//!
//! The order is read from the `# Layout` list in `src/lib.rs` (lowest first); a room may refer
//! to rooms listed before it, never after. Inside a room, sibling files must not refer to each
//! other in a cycle. Test code (`#[cfg(test)]` tails and `tests.rs` files) is not counted:
//! tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The rooms in the order `src/lib.rs` lists them.
fn layout() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("read src/lib.rs");
    let mut rooms = Vec::new();
    let mut in_layout = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else { break };
        let doc = doc.trim();
        if doc.starts_with("# ") {
            in_layout = doc == "# Layout";
            continue;
        }
        if in_layout && let Some(rest) = doc.strip_prefix("- [`") {
            let name = rest.split('`').next().expect("room name");
            rooms.push(name.to_owned());
        }
    }
    assert!(rooms.len() >= 10, "the # Layout list of src/lib.rs names every room; found {rooms:?}");
    rooms
}

/// Every `.rs` file of a room (its `name.rs`, or everything under `name/`), without test files.
fn files_of(room: &str) -> Vec<PathBuf> {
    let file = src().join(format!("{room}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut out = Vec::new();
    let mut stack = vec![src().join(room)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
                out.push(path);
            }
        }
    }
    out
}

/// The file's code without its `#[cfg(test)]` tail and without comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Names following `prefix` (`crate::` or `super::`), including each item of a grouped
/// `use prefix{a, b::c}`.
fn references(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn rooms_only_use_rooms_listed_before_them_in_lib_rs() {
    let rooms = layout();
    let rank: BTreeMap<&str, usize> = rooms.iter().enumerate().map(|(i, r)| (r.as_str(), i)).collect();
    let mut violations = Vec::new();
    for room in &rooms {
        for file in files_of(room) {
            for used in references(&code(&file), "crate::") {
                let Some(&used_rank) = rank.get(used.as_str()) else {
                    violations.push(format!("{}: crate::{used} is not a room listed in src/lib.rs", file.display()));
                    continue;
                };
                if used_rank > rank[room.as_str()] {
                    violations.push(format!("{}: {room} uses {used}, which comes after it", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "dependencies must point one way:\n{}", violations.join("\n"));
}

#[test]
fn files_inside_a_room_do_not_refer_to_each_other_in_a_cycle() {
    for room in layout() {
        let dir = src().join(&room);
        if !dir.is_dir() {
            continue;
        }
        // Edges between sibling files directly in the room's directory (`super::x` from `y.rs`).
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("read room") {
            let path = entry.expect("dir entry").path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
            if stem == "mod" || stem == "tests" || path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let siblings = references(&code(&path), "super::");
            edges.entry(stem).or_default().extend(siblings);
        }
        let names: Vec<String> = edges.keys().cloned().collect();
        for start in &names {
            // Depth-first search for a path from `start` back to itself.
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut seen = BTreeSet::new();
            while let Some((at, path)) = stack.pop() {
                for next in edges.get(&at).into_iter().flatten() {
                    if next == start {
                        panic!("cycle inside {room}: {} -> {start}", path.join(" -> "));
                    }
                    if edges.contains_key(next) && seen.insert(next.clone()) {
                        let mut longer = path.clone();
                        longer.push(next.clone());
                        stack.push((next.clone(), longer));
                    }
                }
            }
        }
    }
}

#[test]
fn the_reference_scan_sees_grouped_and_plain_paths() {
    let refs = references(
        "use crate::{config::Config, balance};\nlet x = crate::metrics::Metrics::new();\nfoo_crate::bar",
        "crate::",
    );
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), vec!["balance", "config", "metrics"]);
}
