//! RouterBench wide CSV loader: a hand-written fixture and its error cases.
#![cfg(test)]

use std::path::PathBuf;

use routewise_data::{csv_wide, DataError, Dataset};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn loads_the_fixture_with_models_missing_cells_and_list_prompts() {
    let d = Dataset::load(&fixture("routerbench_small.csv")).unwrap();
    assert_eq!(d.name, "routerbench_small.csv");
    assert_eq!(d.models, ["gpt-4", "mistral-7b", "claude-v2"]);
    assert_eq!(d.records.len(), 3);

    let r0 = &d.records[0];
    assert_eq!(r0.id, "arc.0");
    assert_eq!(r0.task, "arc-challenge");
    assert_eq!(r0.prompt, "What is 2+2?\n\nAnswer with a number.");
    let o = r0.outcomes[1].unwrap();
    assert_eq!((o.score, o.cost_usd), (1.0, 0.00002));
    // "The answer is 4" = 15 chars -> 4 tokens; prompt 34 chars -> 9 tokens.
    assert_eq!(o.output_tokens, 4);
    assert_eq!(o.input_tokens, 9);

    // CSV-escaped double quotes inside a Python string literal, a comma inside a turn,
    // and an all-empty model (claude-v2) = missing.
    let r1 = &d.records[1];
    assert_eq!(r1.prompt, "It's a \"quoted\" turn\n\nsecond, with a comma");
    assert!(r1.outcomes[2].is_none());
    assert_eq!(r1.outcomes.iter().flatten().count(), 2);

    // Multi-line plain prompt; mistral has no response text -> median of the others.
    let r2 = &d.records[2];
    assert_eq!(r2.prompt, "Write a function\nthat adds two numbers.");
    let est = |s: &str| routewise_data::estimate_tokens(s);
    let (g, c) = (
        est("def add(a b): return a+b"),
        est("def add(a; b): return a + b"),
    );
    assert_eq!(r2.outcomes[1].unwrap().output_tokens, g.max(c));
    assert_eq!(r2.outcomes[0].unwrap().score, 0.5);

    // No split column: the documented hash split of sample_id.
    for r in &d.records {
        assert_eq!(
            r.split,
            routewise_data::split::hash_split(&r.id, routewise_data::split::DEFAULT_SPLIT_SEED)
        );
    }
}

fn err(name: &str) -> String {
    csv_wide::load(&fixture(name)).unwrap_err().to_string()
}

#[test]
fn errors_name_file_line_and_field() {
    // The bad record starts on line 3 (its prompt spans lines 3-4).
    assert_eq!(
        err("bad_score.csv"),
        format!(
            "{}:3: field `a.score`: score 1.5 is outside [0, 1]",
            fixture("bad_score.csv").display()
        )
    );
    let e = err("bad_cost.csv");
    assert!(e.contains("bad_cost.csv:2: field `b.cost_usd`"), "{e}");
    let e = err("one_model_row.csv");
    assert!(
        e.contains("one_model_row.csv:3: field `models`") && e.contains("at least 2 models"),
        "{e}"
    );
    let e = err("half_missing.csv");
    assert!(e.contains(":2: field `b.cost_usd`: empty"), "{e}");
    let e = err("not_a_number.csv");
    assert!(
        e.contains(":3: field `a.score`: `abc` is not a number"),
        "{e}"
    );
    let e = err("ragged.csv");
    assert!(e.contains(":3: field `<record>`: malformed CSV"), "{e}");
    let e = err("duplicate_id.csv");
    assert!(e.contains(":3: field `sample_id`: duplicate"), "{e}");
}

#[test]
fn empty_and_header_only_files_are_empty_errors() {
    for f in ["empty.csv", "header_only.csv"] {
        let e = csv_wide::load(&fixture(f)).unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{f}: {e}");
    }
}

#[test]
fn missing_columns_are_errors_on_line_one() {
    let p = std::path::Path::new("t.csv");
    let e = csv_wide::parse(
        "prompt,a,a|total_cost,b,b|total_cost\nx,1,0,1,0\n".as_bytes(),
        p,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, "t.csv:1: field `sample_id`: missing column");
    let e = csv_wide::parse("sample_id,prompt,a,a|total_cost\n1,x,1,0\n".as_bytes(), p)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("t.csv:1:") && e.contains("at least 2 models"),
        "{e}"
    );
    let e = csv_wide::parse(
        "sample_id,prompt,a|total_cost,b,b|total_cost\n1,x,0,1,0\n".as_bytes(),
        p,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no score column `a`"), "{e}");
}

#[test]
fn a_split_column_is_honoured_and_validated() {
    let p = std::path::Path::new("t.csv");
    let d = csv_wide::parse(
        "sample_id,prompt,split,a,a|total_cost,b,b|total_cost\n1,x,test,1,0,0,0\n2,y,train,1,0,0,0\n"
            .as_bytes(),
        p,
    )
    .unwrap();
    assert_eq!(d.records[0].split, routewise_data::Split::Test);
    assert_eq!(d.records[1].split, routewise_data::Split::Train);
    let e = csv_wide::parse(
        "sample_id,prompt,split,a,a|total_cost,b,b|total_cost\n1,x,dev,1,0,0,0\n".as_bytes(),
        p,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("t.csv:2: field `split`"), "{e}");
}
