//! The shared routing data loads: the first ~200 lines of routerbench-3k.jsonl.
#![cfg(test)]

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

/// Regression (lab-correctness issue): the shared files gained `answer` and `reference`,
/// which the loader refused ("unknown field `answer`"). Both whole files must load, keep
/// the fields, and agree with the data README's check `score == (answer == reference)`.
#[test]
fn shared_files_load_with_answers_and_references() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    for (file, models, min_agree) in [
        ("routerbench-3k.jsonl", 11, 0.999),
        ("mmlu-pro-12k.jsonl", 29, 0.999),
    ] {
        let path = dir.join(file);
        if !path.exists() {
            println!("SKIPPED: {} is absent", path.display());
            continue;
        }
        let d = routewise_data::Dataset::load(&path).unwrap();
        assert_eq!(d.models.len(), models, "{file}");
        assert!(d.warnings.is_empty(), "{file}: {:?}", d.warnings);
        let with_ref = d.records.iter().filter(|r| r.reference.is_some()).count();
        assert!(
            with_ref > d.records.len() / 2,
            "{file}: {with_ref} references"
        );
        let (mut graded, mut agree) = (0usize, 0usize);
        for r in &d.records {
            for o in r.outcomes.iter().flatten() {
                if let Some(ok) = d.answer_matches_reference(r, o) {
                    graded += 1;
                    agree += usize::from(ok == (o.score == 1.0));
                }
            }
        }
        let share = agree as f64 / graded as f64;
        assert!(
            graded > 10_000 && share >= min_agree,
            "{file}: {agree}/{graded}"
        );
    }
}
