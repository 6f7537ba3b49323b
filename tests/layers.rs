//! The crate's top-level modules form layers: no module reaches, through `crate::...` paths,
//! back to one that reaches it (a cycle is how a leaf starts to depend on the whole proxy).
//! Reads the sources; test code (`#[cfg(test)]` onwards) is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
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
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if top == "main" || top == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            let deps = edges.entry(top.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    edges
}

/// A path from `from` back to `to`, if there is one.
fn path(
    edges: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if from == to {
        return Some(vec![to.to_string()]);
    }
    if !seen.insert(from.to_string()) {
        return None;
    }
    for next in edges.get(from).into_iter().flatten() {
        if let Some(mut rest) = path(edges, next, to, seen) {
            rest.insert(0, from.to_string());
            return Some(rest);
        }
    }
    None
}

#[test]
fn the_modules_form_layers_without_cycles() {
    let edges = graph();
    assert!(edges.len() > 10, "read the sources: {edges:?}");
    let mut cycles = Vec::new();
    for (module, deps) in &edges {
        for dep in deps {
            if let Some(back) = path(&edges, dep, module, &mut BTreeSet::new()) {
                cycles.push(format!("{module} -> {}", back.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn the_leaves_depend_on_nothing_of_the_proxy() {
    let edges = graph();
    for leaf in ["auth", "policy", "tls", "live", "deadline", "budget"] {
        let deps = edges.get(leaf).cloned().unwrap_or_default();
        assert!(deps.is_empty(), "{leaf} depends on {deps:?}");
    }
}

/// The floor under the sessions: wire framing knows no policy (the memcached parser asks
/// through a trait the session implements), and the error types import no protocol.
#[test]
fn framing_and_errors_sit_at_the_bottom() {
    let edges = graph();
    for (module, allowed) in [("protocol", &["error"][..]), ("error", &["budget"][..])] {
        let deps = edges.get(module).cloned().unwrap_or_default();
        let extra: Vec<_> = deps
            .iter()
            .filter(|d| !allowed.contains(&d.as_str()))
            .collect();
        assert!(extra.is_empty(), "{module} depends on {extra:?}");
    }
}
