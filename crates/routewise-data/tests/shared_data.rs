//! The shared routing data loads: the first ~200 lines of routerbench-3k.jsonl.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

#[test]
fn routerbench_head_has_eleven_models() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/routerbench-3k.jsonl");
    if !path.exists() {
        println!("skipping: {} is absent", path.display());
        return;
    }
    let file = std::fs::File::open(&path).unwrap();
    let head: String = BufReader::new(file)
        .lines()
        .take(200)
        .map(|l| l.unwrap() + "\n")
        .collect();
    let d = routewise_data::jsonl::parse(head.as_bytes(), &path).unwrap();
    assert_eq!(d.records.len(), 200);
    assert_eq!(d.models.len(), 11, "{:?}", d.models);
    assert!(d.models.iter().any(|m| m == "gpt-4-1106-preview"));
    assert!(d
        .records
        .iter()
        .all(|r| r.outcomes.iter().flatten().count() >= 2));
}
