//! Helpers shared by the CLI integration tests.
#![cfg(test)]

use std::path::{Path, PathBuf};

/// `../shared/data/routerbench-3k.jsonl`, or `None` (with the reason printed) when the
/// shared data is not checked out beside the repository.
pub fn data_file() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/routerbench-3k.jsonl");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} is absent (the shared data is not checked out here)",
            p.display()
        );
        None
    }
}
