//! The library's shape: its modules import one another without a circle. Every `crate::`,
//! `super::` and `self::` path of a source file (in `use` trees or inline) is an arrow from that
//! file's module to the module the path names; a module declaring or re-exporting its own
//! children is containment, not an arrow. Test modules (`#[cfg(test)] mod …`) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → [a, b]; `src/lib.rs` → [].
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code without comments, string and char literals, and test modules.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x' or '\n'); a lifetime ('a) has no closing quote after one char.
            let end = text[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            i = end;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Every path a `use` tree names: `a::{b, c::{d, e}}` → a::b, a::c::d, a::c::e.
fn expand_use(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            let path = tree.split(" as ").next().unwrap().trim();
            out.push(format!("{prefix}{path}"));
        }
        Some(open) => {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap()];
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand_use(&inner[start..j], &format!("{prefix}{head}"), out);
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            if !inner[start..].trim().is_empty() {
                expand_use(&inner[start..], &format!("{prefix}{head}"), out);
            }
        }
    }
}

/// The paths a file's code names, as written.
fn paths_in(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut rest = code;
    // `use` declarations, whole trees.
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().next_back();
        let end = rest[i..].find(';').map_or(rest.len(), |e| i + e);
        if before.is_none_or(|c| !ident(c)) {
            expand_use(&rest[i + 4..end], "", &mut paths);
        }
        rest = &rest[end.min(rest.len())..];
        if rest.is_empty() {
            break;
        }
        rest = &rest[1..];
    }
    // Paths written inline (`crate::ops::is_cpu_f32(…)`).
    for anchor in ["crate::", "super::", "self::"] {
        for (i, _) in code.match_indices(anchor) {
            if code[..i]
                .chars()
                .next_back()
                .is_some_and(|c| ident(c) || c == ':')
            {
                continue;
            }
            let len = code[i..]
                .find(|c: char| !(ident(c) || c == ':'))
                .unwrap_or(code.len() - i);
            paths.push(code[i..i + len].trim_end_matches(':').to_string());
        }
    }
    paths
}

/// The module a path names from inside `from`: its longest prefix that is a module.
fn resolve(path: &str, from: &Module, modules: &BTreeSet<Module>) -> Option<Module> {
    let mut parts = path.split("::").filter(|s| !s.is_empty());
    let mut at: Module = match parts.next()? {
        "crate" => Vec::new(),
        "self" => from.clone(),
        "super" => from[..from.len().checked_sub(1)?].to_vec(),
        // A child module named without `self::`: `pub use child::Item`.
        first => {
            let mut child = from.clone();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            child
        }
    };
    for part in parts {
        if part == "super" {
            at.pop();
            continue;
        }
        let mut next = at.clone();
        next.push(part.to_string());
        if !modules.contains(&next) {
            break;
        }
        at = next;
    }
    Some(at)
}

/// Strongly connected components of more than one module (Tarjan).
fn circles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn arrows(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    source_files(src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(src, f)).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in &files {
        let from = module_of(src, file);
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let targets = edges.entry(from.clone()).or_default();
        for path in paths_in(&code) {
            if let Some(to) = resolve(&path, &from, &modules) {
                // Itself, or a child it declares or re-exports: containment.
                if !to.starts_with(&from) {
                    targets.insert(to);
                }
            }
        }
    }
    edges
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn the_library_has_no_import_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = arrows(&src);
    let found = circles(&edges);
    let mut report = String::new();
    for c in &found {
        report += &format!("circle of {} modules:\n", c.len());
        for m in c {
            for to in edges[m].iter().filter(|t| c.contains(t)) {
                report += &format!("  {} -> {}\n", name(m), name(to));
            }
        }
    }
    assert!(found.is_empty(), "import circles in the library:\n{report}");
}

#[test]
fn the_circle_finder_sees_circles() {
    // The check itself: a circle through a sibling and an inline path is found, a module
    // re-exporting its child is not one.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    let write = |f: &str, text: &str| std::fs::write(src.join(f), text).unwrap();
    write("lib.rs", "pub mod a;\npub mod b;\npub use a::X;\n");
    write(
        "a/mod.rs",
        "pub mod c;\npub use c::X;\nuse super::b::{Y, z::{W}};\n",
    );
    write(
        "a/c.rs",
        "// use crate::b::Y;\npub struct X;\nfn f() { crate::a::g() }\n",
    );
    write(
        "b.rs",
        "pub struct Y;\nfn g() { let _ = \"crate::a::c\"; crate::a::c::X; }\n",
    );
    let edges = arrows(src);
    let found = circles(&edges);
    let names: Vec<Vec<String>> = found.iter().map(|c| c.iter().map(name).collect()).collect();
    assert_eq!(names, [["a", "a::c", "b"]], "{edges:?}");
    // Without the arrow back from b, no circle is left.
    write(
        "b.rs",
        "pub struct Y;\nfn g() { let _ = \"crate::a::c\"; }\n",
    );
    assert!(circles(&arrows(src)).is_empty());
}
