//! The crate's modules form layers: no module reaches, through `crate::...` or `super::...`
//! paths, back to one that reaches it (a cycle is how a leaf starts to depend on the whole
//! proxy). Checked between top-level modules, between second-level ones (`session::redis`,
//! `upstream::cluster`, ...), and between sibling files of one folder. Reads the sources;
//! test code (`#[cfg(test)]` items) is left out, and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `src/`, with its module path (`session/redis/follow.rs` is
/// `["session", "redis", "follow"]`; a `mod.rs` is its folder's module).
fn sources() -> Vec<(Vec<String>, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut stack: Vec<PathBuf> = vec![src.clone()];
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
            let rel = path.strip_prefix(&src).unwrap();
            let mut module: Vec<String> = rel
                .components()
                .map(|c| {
                    c.as_os_str()
                        .to_string_lossy()
                        .trim_end_matches(".rs")
                        .to_string()
                })
                .collect();
            if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            if matches!(module.as_slice(), [m] if m == "main" || m == "lib") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            files.push((module, strip_test_code(&text)));
        }
    }
    files
}

/// The source without its `#[cfg(test)]` items (a `mod tests { ... }`, a test-only `use` or
/// function), skipping strings, characters and comments when matching braces.
fn strip_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        // Only an attribute that starts its line (not one quoted in a comment or string).
        let line_start = rest[..at].rfind('\n').map_or(0, |n| n + 1);
        if !rest[line_start..at].trim().is_empty() {
            let past = at + "#[cfg(test)]".len();
            out.push_str(&rest[..past]);
            rest = &rest[past..];
            continue;
        }
        out.push_str(&rest[..at]);
        let item = &rest[at + "#[cfg(test)]".len()..];
        rest = &item[item_end(item.as_bytes())..];
    }
    out.push_str(rest);
    out
}

/// Where the item at the start of `b` ends: after its `;`, or after the `}` that closes its
/// first `{`.
fn item_end(b: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#')) && raw_string_start(b, i) => {
                // A raw string: r"..." or r#"..."#, any number of #.
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) == Some(&b'"') {
                    let close: Vec<u8> = std::iter::once(b'"')
                        .chain(std::iter::repeat_n(b'#', hashes))
                        .collect();
                    let from = i + 2 + hashes;
                    let len = b[from..]
                        .windows(close.len())
                        .position(|w| w == close.as_slice())
                        .unwrap_or(b.len() - from);
                    i = from + len + close.len() - 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            // A character literal ('x', '\n', '\''), not a lifetime ('a).
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                // Past the escaped character, which may itself be a quote ('\'').
                i += 3;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') => i += 2,
            b';' if depth == 0 => return i + 1,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// Whether the `r` at `i` starts a raw string (`r"`, `r#"`, `br"`), not ends an identifier.
fn raw_string_start(b: &[u8], i: usize) -> bool {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    match i {
        0 => true,
        _ if b[i - 1] == b'b' => i == 1 || !ident(b[i - 2]),
        _ => !ident(b[i - 1]),
    }
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Every path a file names from `crate::` or `super::`, as module paths from the crate root:
/// `crate::a::b::C` gives `[a, b, C]`; `crate::{a::x, b}` gives `[a, x]` and `[b]`.
fn paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    // `super` is the module one up (of a file, its folder's; of a mod.rs, the folder's parent).
    let up = module[..module.len().saturating_sub(1)].to_vec();
    for (root, base) in [("crate::", Vec::new()), ("super::", up)] {
        for (i, _) in code.match_indices(root) {
            if code[..i].ends_with(':') || code[..i].ends_with("super::") && root == "super::" {
                continue;
            }
            let after = &code[i + root.len()..];
            let mut prefixes = vec![(base.clone(), after)];
            while let Some((mut path, text)) = prefixes.pop() {
                if let Some(group) = text.strip_prefix('{') {
                    // Split the group at its top-level commas.
                    let mut depth = 0;
                    let mut start = 0;
                    for (j, c) in group.char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => {
                                prefixes.push((path.clone(), group[start..j].trim_start()));
                                break;
                            }
                            '}' => depth -= 1,
                            ',' if depth == 0 => {
                                prefixes.push((path.clone(), group[start..j].trim_start()));
                                start = j + 1;
                            }
                            _ => {}
                        }
                    }
                    continue;
                }
                let mut text = text;
                loop {
                    let name = ident(text);
                    if name.is_empty() || name == "self" || name == "super" {
                        break;
                    }
                    text = &text[name.len()..];
                    path.push(name);
                    match text.strip_prefix("::") {
                        Some(more) if more.starts_with('{') => {
                            prefixes.push((path.clone(), more));
                            path.clear();
                            break;
                        }
                        Some(more) => text = more,
                        None => break,
                    }
                }
                if !path.is_empty() && path.len() > base.len() {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// A module's `pub use` re-exports, so that a path through one counts as a path to where the
/// item lives: `session::Context` is `session::redis::Context` when `session/mod.rs` says
/// `pub use redis::{.., Context, ..}`.
fn reexports() -> BTreeMap<Vec<String>, Vec<String>> {
    let mut map = BTreeMap::new();
    for (module, code) in sources() {
        for (i, _) in code.match_indices("pub use ") {
            let rest = &code[i + "pub use ".len()..];
            let Some(end) = rest.find(';') else {
                continue;
            };
            let text = rest[..end].trim();
            let full = match text.strip_prefix("crate::") {
                Some(_) => text.to_string(),
                None => {
                    let local = text.strip_prefix("self::").unwrap_or(text);
                    let mut root = vec!["crate".to_string()];
                    root.extend(module.iter().cloned());
                    format!("{}::{local}", root.join("::"))
                }
            };
            for target in paths(&module, &full) {
                let mut alias = module.clone();
                alias.push(target.last().unwrap().clone());
                if alias != target {
                    map.insert(alias, target);
                }
            }
        }
    }
    map
}

/// `path` with any re-exported prefix replaced by where it points.
fn resolve(path: Vec<String>, reexports: &BTreeMap<Vec<String>, Vec<String>>) -> Vec<String> {
    let mut path = path;
    for _ in 0..4 {
        let Some(n) = (1..=path.len())
            .rev()
            .find(|&n| reexports.contains_key(&path[..n]))
        else {
            break;
        };
        let mut to = reexports[&path[..n]].clone();
        to.extend(path[n..].iter().cloned());
        path = to;
    }
    path
}

/// The module graph at `depth` components (1: top-level modules, 2: `session::redis`, ...):
/// an edge for every path a file names outside its own module at that depth.
fn graph(depth: usize) -> Graph {
    let modules: BTreeSet<Vec<String>> = sources().into_iter().map(|(m, _)| m).collect();
    let reexports = reexports();
    let mut edges = Graph::new();
    for (module, code) in sources() {
        if module.len() < depth {
            continue;
        }
        let from = module[..depth].join("::");
        let deps = edges.entry(from.clone()).or_default();
        for path in paths(&module, &code) {
            let path = resolve(path, &reexports);
            // The longest prefix of the path that is a module, cut to `depth`.
            let known = (1..=path.len())
                .rev()
                .find(|&n| modules.contains(&path[..n]))
                .unwrap_or(0);
            if known < depth {
                continue;
            }
            let to = path[..depth].join("::");
            if to != from {
                deps.insert(to);
            }
        }
    }
    edges
}

/// Edges between sibling files of one folder (`super::sibling::...`), by folder.
fn sibling_graphs() -> BTreeMap<String, Graph> {
    let all: Vec<(Vec<String>, String)> = sources();
    let modules: BTreeSet<Vec<String>> = all.iter().map(|(m, _)| m.clone()).collect();
    let mut folders: BTreeMap<String, Graph> = BTreeMap::new();
    for (module, code) in &all {
        // A file that is not a folder's mod.rs.
        if modules
            .iter()
            .any(|m| m.len() > module.len() && m.starts_with(module))
        {
            continue;
        }
        let Some((name, parent)) = module.split_last() else {
            continue;
        };
        let folder = parent.join("::");
        let graph = folders.entry(folder).or_default();
        let deps = graph.entry(name.clone()).or_default();
        for (i, _) in code.match_indices("super::") {
            let sibling = ident(&code[i + "super::".len()..]);
            let mut path = parent.to_vec();
            path.push(sibling.clone());
            if sibling != *name && modules.contains(&path) {
                deps.insert(sibling);
            }
        }
        // A file that takes its parent's names whole (`use super::*`) may use a sibling's
        // items by their bare names (the parent brings them in with `use sibling::*`): an edge
        // to every sibling whose items it names.
        if code.contains("use super::*") {
            for (other, _) in all.iter().filter(|(m, _)| m.len() == module.len()) {
                let Some((other_name, other_parent)) = other.split_last() else {
                    continue;
                };
                if other_parent != parent || other_name == name {
                    continue;
                }
                let other_code = &all.iter().find(|(m, _)| m == other).unwrap().1;
                if defined_items(other_code)
                    .iter()
                    .any(|(item, is_fn)| names_item(code, item, *is_fn))
                {
                    deps.insert(other_name.clone());
                }
            }
        }
    }
    folders
}

/// The items a file defines for its parent and siblings (`pub` or `pub(super)` fn, struct,
/// enum, const, static, type or trait): (name, whether it is a function).
fn defined_items(code: &str) -> BTreeSet<(String, bool)> {
    let mut items = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        let Some(rest) = line
            .strip_prefix("pub(super) ")
            .or_else(|| line.strip_prefix("pub(crate) "))
            .or_else(|| line.strip_prefix("pub "))
        else {
            continue;
        };
        let rest = rest.strip_prefix("async ").unwrap_or(rest);
        for kind in [
            "fn ", "struct ", "enum ", "const ", "static ", "type ", "trait ",
        ] {
            if let Some(after) = rest.strip_prefix(kind) {
                let name = ident(after);
                if !name.is_empty() {
                    items.insert((name, kind == "fn "));
                }
            }
        }
    }
    items
}

/// Whether `code` uses the item `word` by its bare name: the whole identifier, not a field,
/// method or path (`.word`, `Type::word`), and for a function, called (`word(`).
fn names_item(code: &str, word: &str, is_fn: bool) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices(word).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let rest = &code[i + word.len()..];
        let after = rest.chars().next();
        !before.is_some_and(|c| is_ident(c) || c == '.')
            && !code[..i].ends_with("fn ")
            && !code[..i].ends_with("::")
            && !after.is_some_and(is_ident)
            && (!is_fn || rest.starts_with('(') || rest.starts_with("::<"))
    })
}

/// A path from `from` back to `to`, if there is one.
fn path(graph: &Graph, from: &str, to: &str, seen: &mut BTreeSet<String>) -> Option<Vec<String>> {
    if from == to {
        return Some(vec![to.to_string()]);
    }
    if !seen.insert(from.to_string()) {
        return None;
    }
    for next in graph.get(from).into_iter().flatten() {
        if let Some(mut rest) = path(graph, next, to, seen) {
            rest.insert(0, from.to_string());
            return Some(rest);
        }
    }
    None
}

fn cycles(graph: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for (module, deps) in graph {
        for dep in deps {
            if let Some(back) = path(graph, dep, module, &mut BTreeSet::new()) {
                found.push(format!("{module} -> {}", back.join(" -> ")));
            }
        }
    }
    found
}

#[test]
fn the_modules_form_layers_without_cycles() {
    for depth in [1, 2] {
        let edges = graph(depth);
        assert!(edges.len() > 10, "read the sources: {edges:?}");
        let cycles = cycles(&edges);
        assert!(
            cycles.is_empty(),
            "import cycles at depth {depth}: {cycles:#?}"
        );
    }
    for (folder, graph) in sibling_graphs() {
        let cycles = cycles(&graph);
        assert!(
            cycles.is_empty(),
            "cycles between the files of {folder}: {cycles:#?}"
        );
    }
}

#[test]
fn the_leaves_depend_on_nothing_of_the_proxy() {
    let edges = graph(1);
    for leaf in ["auth", "policy", "tls", "live", "deadline", "budget"] {
        let deps = edges.get(leaf).cloned().unwrap_or_default();
        assert!(deps.is_empty(), "{leaf} depends on {deps:?}");
    }
}

/// The floor under the sessions: wire framing knows no policy (the memcached parser asks
/// through a trait the session implements), and the error types import no protocol.
#[test]
fn framing_and_errors_sit_at_the_bottom() {
    let edges = graph(1);
    for (module, allowed) in [("protocol", &["error"][..]), ("error", &["budget"][..])] {
        let deps = edges.get(module).cloned().unwrap_or_default();
        let extra: Vec<_> = deps
            .iter()
            .filter(|d| !allowed.contains(&d.as_str()))
            .collect();
        assert!(extra.is_empty(), "{module} depends on {extra:?}");
    }
}

/// Only the configuration's loader uses its builder: what runs reads the typed model.
#[test]
fn nothing_outside_the_configuration_reaches_into_its_builder() {
    for (module, code) in sources() {
        if module.first().is_some_and(|m| m == "config") {
            continue;
        }
        assert!(
            !code.contains("config::build"),
            "{} uses the configuration's builder",
            module.join("::")
        );
    }
}

/// The checker's own reading: test items are cut whole, and grouped imports are read.
#[test]
fn the_reader_cuts_test_items_and_reads_groups() {
    let code = "use crate::a::X;\n#[cfg(test)]\nmod tests {\n    fn f() { let s = \"}\"; let c = '}'; }\n    use crate::b;\n}\nfn g() { crate::c::y(); }\n#[cfg(test)]\nuse crate::d;\nuse crate::{e::{F, G}, h};\n";
    let stripped = strip_test_code(code);
    // Quotes, escapes and raw byte strings inside a test item do not end it early; an
    // attribute quoted in a comment cuts nothing.
    let tricky = "#[cfg(test)]\nmod t {\n    const Q: char = '\\'';\n    const B: &[u8] = br\"}\\\";\n    fn f<'a>(x: &'a str) -> &'a str { x }\n    use crate::gone;\n}\n/// see #[cfg(test)] below\nfn kept() { crate::session::x(); }\n";
    let cut = strip_test_code(tricky);
    assert!(
        cut.contains("crate::session::x") && !cut.contains("crate::gone"),
        "{cut}"
    );
    assert!(
        !stripped.contains("crate::b") && !stripped.contains("crate::d"),
        "{stripped}"
    );
    assert!(stripped.contains("crate::c::y"), "{stripped}");
    let found = paths(&["z".to_string()], &stripped);
    let firsts: BTreeSet<&str> = found.iter().map(|p| p[0].as_str()).collect();
    assert_eq!(
        firsts,
        ["a", "c", "e", "h"].into_iter().collect(),
        "{found:?}"
    );
}
