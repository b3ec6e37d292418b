//! Helpers shared by the CLI integration tests.
#![cfg(test)]
#![allow(dead_code)] // each test crate uses a subset of the helpers

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `routewise` binary with `args`.
pub fn routewise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_routewise"))
        .args(args)
        .output()
        .expect("run routewise")
}

/// Runs `routewise` and requires success; its stdout and stderr.
pub fn ok_out(args: &[&str]) -> (String, String) {
    let out = routewise(args);
    assert!(
        out.status.success(),
        "routewise {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs `routewise` and requires success; its stdout.
pub fn ok(args: &[&str]) -> String {
    ok_out(args).0
}

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

/// The first 800 prompts of [`data_file`] with `claude-v1` kept on one prompt in five only
/// (sparse data for the labs that replay whole policies), written into `dir`.
pub fn sparse_head(data: &Path, dir: &Path) -> PathBuf {
    let text: String = std::fs::read_to_string(data)
        .unwrap()
        .lines()
        .take(800)
        .enumerate()
        .map(|(i, line)| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            if i % 5 != 0 {
                v["models"].as_object_mut().unwrap().remove("claude-v1");
            }
            v.to_string() + "\n"
        })
        .collect();
    let path = dir.join("sparse.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}
