//! The layout's rules, checked on the source text (no dependency needed):
//!
//! - every top-level module of `src/` has a layer, and imports point only to lower layers
//!   (`crate::x` paths anywhere in code, not only `use` lines);
//! - the pure layer uses no runtime or I/O crate;
//! - no import circle between files anywhere in `src/` (re-exports followed to the defining file);
//! - `lib.rs` declares every module and its map (the crate doc) names every one;
//! - `mod.rs` files only declare and re-export.
//!
//! The layers are those of `README.md` § Layout; change both together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → layer. An import must point to a strictly lower layer.
const LAYERS: &[(&str, u32)] = &[
    // L0: pure helpers, no runtime
    ("alloc", 0),
    ("crypto", 0),
    ("text", 0),
    ("telemetry", 1),
    ("xml", 1),
    // L0: the vocabulary and the decisions on it
    ("domain", 2),
    ("policy", 3),
    // L1
    ("config", 4),
    // L2: HTTP clients of the platforms
    ("platform", 5),
    // L3: peers that never import each other
    ("store", 6),
    ("broker", 6),
    // L4
    ("engine", 7),
    // L5
    ("http", 8),
    ("ops", 8),
    // L6
    ("app", 9),
    // L7: tools, then the command line on top of everything
    ("tools", 10),
    ("cli", 11),
];

/// Modules that must stay free of the runtime, the database, the broker and HTTP.
const PURE: &[&str] = &["alloc", "crypto", "text", "xml", "domain", "policy"];
const IMPURE_CRATES: &[&str] = &[
    "tokio::",
    "sqlx::",
    "lapin::",
    "reqwest::",
    "axum::",
    "hyper::",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.map(|e| e.path()).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The file's code with comments and string literals blanked (so doc links and messages that
/// mention `crate::x` are not imports), and `#[cfg(test)]` modules kept (tests obey the layers
/// too).
fn code_of(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            // raw string r"…" / r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"')
                || (i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
            {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"'
                    && b[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == b'#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // a char literal such as '"'
            out.push_str("' '");
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            let mut j = i + 2;
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            out.push_str("' '");
            i = j + 1;
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The module path of a file: `src/engine/lane/run.rs` → `["engine", "lane", "run"]`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs").to_owned();
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem);
    }
    parts
}

struct Tree {
    /// module path → file
    files: BTreeMap<Vec<String>, PathBuf>,
    /// file → code (comments and strings blanked)
    code: BTreeMap<PathBuf, String>,
}

impl Tree {
    fn load() -> Self {
        let mut list = Vec::new();
        rust_files(&src(), &mut list);
        let mut files = BTreeMap::new();
        let mut code = BTreeMap::new();
        for f in list {
            let text =
                std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name != "main.rs" && name != "lib.rs" {
                files.insert(module_path(&f), f.clone());
            }
            code.insert(f, code_of(&text));
        }
        Self { files, code }
    }

    /// The file that defines the item at `path` (a module path plus item names): the longest
    /// prefix that is a file, then through that file's re-exports to the child defining it.
    fn resolve(&self, path: &[String]) -> Option<PathBuf> {
        for n in (1..=path.len()).rev() {
            if let Some(f) = self.files.get(&path[..n]) {
                let rest = &path[n..];
                if let Some(name) = rest.first()
                    && let Some(child) = self.reexported_from(&path[..n], name)
                {
                    return Some(child);
                }
                return Some(f.clone());
            }
        }
        None
    }

    /// Where a name re-exported by a module (`pub use child::Name` / `pub use child::*`) is
    /// defined.
    fn reexported_from(&self, module: &[String], name: &str) -> Option<PathBuf> {
        let file = self.files.get(module)?;
        let code = &self.code[file];
        for line in code.lines() {
            let l = line.trim();
            let Some(rest) = l.strip_prefix("pub use ") else {
                continue;
            };
            let rest = rest.trim_end_matches(';');
            let segs: Vec<&str> = rest.split("::").collect();
            if segs.len() < 2 || segs[0] == "crate" || segs[0] == "super" {
                continue;
            }
            let last = segs[segs.len() - 1];
            let names_it = last == name
                || last == "*"
                || (last.starts_with('{')
                    && last
                        .trim_matches(['{', '}'])
                        .split(',')
                        .any(|s| s.trim() == name));
            if !names_it {
                continue;
            }
            let mut child = module.to_vec();
            child.extend(segs[..segs.len() - 1].iter().map(|s| s.to_string()));
            if let Some(f) = self.files.get(&child)
                && (last != "*" || defines(&self.code[f], name))
            {
                return Some(f.clone());
            }
        }
        None
    }
}

fn defines(code: &str, name: &str) -> bool {
    [
        "fn ", "struct ", "enum ", "trait ", "const ", "static ", "type ", "mod ",
    ]
    .iter()
    .any(|kw| {
        code.match_indices(&format!("{kw}{name}")).any(|(i, m)| {
            let after = code[i + m.len()..].chars().next().unwrap_or(' ');
            !(after.is_alphanumeric() || after == '_')
        })
    })
}

/// Every `crate::a::b::…` and `super::…` path in a file's code, as absolute module paths.
fn paths_in(code: &str, here: &[String], is_mod_file: bool) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // `use` groups: expand `crate::a::{b, c::d}` one level deep
    let flat = code.replace(['\n', '\r'], " ");
    for start in ["crate::", "super::"] {
        for (i, _) in flat.match_indices(start) {
            if i > 0 {
                let prev = flat.as_bytes()[i - 1];
                if prev.is_ascii_alphanumeric() || prev == b'_' || prev == b':' {
                    continue;
                }
            }
            let mut base: Vec<String> = if start == "crate::" {
                Vec::new()
            } else {
                // a file's own module is `here`; `super` of a mod.rs/lib.rs is its parent
                let mut b = here.to_vec();
                if !is_mod_file || !b.is_empty() {
                    b.pop();
                }
                b
            };
            let rest = &flat[i + start.len()..];
            let mut segs = Vec::new();
            let mut j = 0;
            let rb = rest.as_bytes();
            loop {
                let s = j;
                while j < rb.len() && (rb[j].is_ascii_alphanumeric() || rb[j] == b'_') {
                    j += 1;
                }
                if j == s {
                    break;
                }
                segs.push(rest[s..j].to_owned());
                if rest[j..].starts_with("::") {
                    j += 2;
                } else {
                    break;
                }
            }
            while segs.first().is_some_and(|s| s == "super") {
                segs.remove(0);
                base.pop();
            }
            base.extend(segs);
            if rest[j..].starts_with('{') {
                let end = rest[j..].find('}').map(|e| j + e).unwrap_or(rest.len());
                for item in rest[j + 1..end].split(',') {
                    let item = item.trim().split(" as ").next().unwrap_or("").trim();
                    if item.is_empty() || item == "self" {
                        out.push(base.clone());
                        continue;
                    }
                    let mut p = base.clone();
                    p.extend(
                        item.split("::")
                            .map(|s| s.trim().to_owned())
                            .filter(|s| !s.is_empty() && s != "{"),
                    );
                    out.push(p);
                }
            } else {
                out.push(base);
            }
        }
    }
    out
}

fn layer_of(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn top(file: &Path) -> String {
    module_path(file).first().cloned().unwrap_or_default()
}

fn rel(p: &Path) -> String {
    p.strip_prefix(src()).unwrap_or(p).display().to_string()
}

#[test]
fn every_module_has_a_layer_and_imports_point_down() {
    let tree = Tree::load();
    let mut wrong = Vec::new();
    for (file, code) in &tree.code {
        let name = rel(file);
        if name == "lib.rs" || name == "main.rs" {
            continue;
        }
        let from = top(file);
        let Some(from_layer) = layer_of(&from) else {
            wrong.push(format!("{name}: module `{from}` has no layer in LAYERS"));
            continue;
        };
        let here = module_path(file);
        let is_mod = file.ends_with("mod.rs");
        for p in paths_in(code, &here, is_mod) {
            let Some(to) = p.first() else { continue };
            if *to == from {
                continue;
            }
            match layer_of(to) {
                Some(l) if l < from_layer => {}
                Some(l) => wrong.push(format!(
                    "{name}: imports crate::{} (layer {l}) from layer {from_layer}",
                    p.join("::")
                )),
                None => wrong.push(format!(
                    "{name}: imports crate::{}, a module with no layer",
                    p.join("::")
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "layer violations:\n{}", wrong.join("\n"));
}

#[test]
fn the_pure_layer_uses_no_runtime_database_broker_or_http() {
    let tree = Tree::load();
    let mut wrong = Vec::new();
    for (file, code) in &tree.code {
        if !PURE.contains(&top(file).as_str()) {
            continue;
        }
        for c in IMPURE_CRATES {
            for (i, _) in code.match_indices(c) {
                let prev = if i == 0 { b' ' } else { code.as_bytes()[i - 1] };
                if !(prev.is_ascii_alphanumeric() || prev == b'_' || prev == b':') {
                    wrong.push(format!("{}: uses {c}", rel(file)));
                    break;
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_import_circle_between_files() {
    let tree = Tree::load();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (file, code) in &tree.code {
        let here = module_path(file);
        let is_mod =
            file.ends_with("mod.rs") || file.ends_with("lib.rs") || file.ends_with("main.rs");
        for p in paths_in(code, &here, is_mod) {
            if let Some(to) = tree.resolve(&p)
                && &to != file
            {
                edges.entry(file.clone()).or_default().insert(to);
            }
        }
    }
    // depth-first search for a back edge
    fn visit(
        n: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        state: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
        found: &mut Vec<String>,
    ) {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                0 => visit(m, edges, state, stack, found),
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c: Vec<String> = stack[at..].iter().map(|p| rel(p)).collect();
                    c.push(rel(m));
                    found.push(c.join(" -> "));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
    }
    let mut state = BTreeMap::new();
    let mut found = Vec::new();
    for n in tree.code.keys() {
        if !state.contains_key(n) {
            visit(n, &edges, &mut state, &mut Vec::new(), &mut found);
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn lib_declares_every_module_and_its_map_names_each() {
    let lib =
        std::fs::read_to_string(src().join("lib.rs")).unwrap_or_else(|e| panic!("lib.rs: {e}"));
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")
                .map(|m| m.trim_end_matches(';').trim().to_owned())
        })
        .collect();
    let mut on_disk = BTreeSet::new();
    for e in std::fs::read_dir(src()).unwrap_or_else(|e| panic!("{e}")) {
        let p = e.unwrap_or_else(|e| panic!("{e}")).path();
        let n = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if p.is_dir() || (p.extension().is_some_and(|x| x == "rs") && n != "lib" && n != "main") {
            on_disk.insert(n);
        }
    }
    assert_eq!(
        declared, on_disk,
        "lib.rs must declare exactly the modules in src/"
    );
    let map: String = lib
        .lines()
        .filter(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let missing: Vec<_> = declared
        .iter()
        .filter(|m| !map.contains(&format!("[`{m}`]")))
        .collect();
    assert!(
        missing.is_empty(),
        "lib.rs's map (crate doc) leaves out: {missing:?}"
    );
    let layered: BTreeSet<String> = LAYERS.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(
        declared, layered,
        "every module needs a layer in LAYERS, and only those"
    );
}

#[test]
fn mod_files_only_declare_and_reexport() {
    let tree = Tree::load();
    let mut wrong = Vec::new();
    for (file, code) in &tree.code {
        if !file.ends_with("mod.rs") {
            continue;
        }
        let mut depth = 0i32;
        for line in code.lines() {
            let l = line.trim();
            if depth == 0
                && !(l.is_empty()
                    || l.starts_with("#[")
                    || l.starts_with("#![")
                    || l.starts_with("mod ")
                    || l.starts_with("pub mod ")
                    || l.starts_with("pub(crate) mod ")
                    || l.starts_with("use ")
                    || l.starts_with("pub use ")
                    || l.starts_with("pub(crate) use ")
                    || l == "}")
            {
                wrong.push(format!("{}: `{l}`", rel(file)));
                break;
            }
            depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
        }
    }
    assert!(
        wrong.is_empty(),
        "mod.rs files with code in them:\n{}",
        wrong.join("\n")
    );
}

/// The checker itself: it must see the kinds of import it is there to catch.
#[test]
fn the_checker_sees_imports_in_every_form() {
    let here = vec!["engine".to_owned(), "lane".to_owned(), "run".to_owned()];
    let code = code_of(
        "use crate::store::{Store, Claim};\n\
         fn f() { crate::broker::bulk_queue(\"x\"); let s = \"crate::cli::main\"; }\n\
         // crate::app::Worker\n\
         use super::ctx::LaneCtx;\n",
    );
    let paths: Vec<String> = paths_in(&code, &here, false)
        .iter()
        .map(|p| p.join("::"))
        .collect();
    assert!(paths.contains(&"store::Store".to_owned()), "{paths:?}");
    assert!(paths.contains(&"store::Claim".to_owned()), "{paths:?}");
    assert!(
        paths.contains(&"broker::bulk_queue".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"engine::lane::ctx::LaneCtx".to_owned()),
        "{paths:?}"
    );
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("cli") || p.starts_with("app")),
        "{paths:?}"
    );
}
