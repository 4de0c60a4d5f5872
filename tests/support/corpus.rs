//! Where the model corpus is, for tests and benches alike (included with `#[path]` by the
//! benches, which cannot share the tests' modules otherwise).

use std::path::{Path, PathBuf};

/// The model corpus: `TG_CORPUS`, else `shared/corpus` beside the workspace, else
/// `/work/shared/corpus` (where CI machines keep it). Found by its README.
pub fn corpus_dir() -> PathBuf {
    let candidates = [
        std::env::var_os("TG_CORPUS").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus")),
        Some(PathBuf::from("/work/shared/corpus")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|dir| dir.join("README.md").exists())
        .expect("the model corpus: set TG_CORPUS to the shared/corpus directory")
}
