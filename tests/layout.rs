//! The codebase keeps its layout (docs/architecture.md, "Layout"): the gateway's folders import
//! only from the folders below them, no two modules import each other (directly or round a
//! cycle), and no source file grows much over 500 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The gateway's top-level modules, lowest first: each may import only from those before it.
const LAYERS: [&str; 9] = ["buffers", "ids", "upstream", "config", "metrics", "engine", "maintenance", "s3", "server"];

/// Lines a source file may hold: 500, and some slack for a file that is whole as it is.
const MAX_LINES: usize = 550;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("target") && !path.ends_with("node_modules") {
                rust_files(&path, found);
            }
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

/// The module path of a file under gateway/src (`engine::ingest::model`); `None` for the crate
/// roots and the command's own modules (the command line, the allocator), which sit above
/// every layer.
fn module_of(relative: &Path) -> Option<String> {
    let text = relative.to_str()?.strip_suffix(".rs")?;
    if text == "lib" || text == "main" || text == "allocator" || text.starts_with("cli") {
        return None;
    }
    Some(text.trim_end_matches("/mod").replace('/', "::"))
}

/// The modules of the crate a file names through `crate::` paths, outside comments.
fn imports(source: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        for (at, _) in code.match_indices("crate::") {
            let path: String = code[at + "crate::".len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            let segments: Vec<&str> = path.split("::").filter(|segment| !segment.is_empty()).collect();
            // The longest prefix of the path that is a module of the crate.
            if let Some(module) = (1..=segments.len()).rev().map(|len| segments[..len].join("::")).find(|candidate| modules.contains(candidate)) {
                found.insert(module);
            }
        }
    }
    found
}

fn gateway_imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = workspace().join("gateway/src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let named: Vec<(String, PathBuf)> = files.into_iter().filter_map(|file| Some((module_of(file.strip_prefix(&root).ok()?)?, file))).collect();
    let modules: BTreeSet<String> = named.iter().map(|(module, _)| module.clone()).collect();
    named
        .into_iter()
        .map(|(module, file)| {
            let mut used = imports(&std::fs::read_to_string(&file).unwrap(), &modules);
            // A module may name itself and what is inside it.
            used.retain(|other| other != &module && !other.starts_with(&format!("{module}::")));
            (module, used)
        })
        .collect()
}

#[test]
fn folders_import_only_from_the_folders_below_them() {
    let layer = |module: &str| LAYERS.iter().position(|top| module.split("::").next() == Some(*top));
    let mut wrong = Vec::new();
    for (module, used) in gateway_imports() {
        let own = layer(&module).unwrap_or_else(|| panic!("module {module} is in no layer of LAYERS"));
        for other in used {
            let theirs = layer(&other).unwrap_or_else(|| panic!("module {other} is in no layer of LAYERS"));
            if theirs > own {
                wrong.push(format!("{module} imports {other}, a layer above it"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn no_modules_import_each_other() {
    let graph = gateway_imports();
    // Depth-first search for a path back to the start, from every module.
    for start in graph.keys() {
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((module, path)) = stack.pop() {
            for next in graph.get(&module).into_iter().flatten() {
                // Importing a parent module (for what it declares) is not a cycle with its child.
                if module.starts_with(&format!("{next}::")) {
                    continue;
                }
                assert!(next != start, "module cycle: {} -> {start}", path.join(" -> "));
                if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
}

#[test]
fn no_source_file_is_much_over_500_lines() {
    let mut files = Vec::new();
    for dir in ["codec/src", "index/src", "gateway/src", "tests"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    assert!(files.len() > 50, "the walk found the sources");
    let long: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let lines = std::fs::read_to_string(file).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} has {lines} lines", file.display()))
        })
        .collect();
    assert!(long.is_empty(), "{long:#?}");
}
