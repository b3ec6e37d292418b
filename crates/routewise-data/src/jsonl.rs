//! Canonical routing JSONL (`../shared/data/README.md`): one prompt per line with
//! `id`, `prompt`, optional `task` and `split`, and a `models` map of
//! `{score, cost_usd, input_tokens?, output_tokens?}`.
//!
//! Missing token counts are estimated as chars / 4 (input) and the median of the other
//! models' outputs on the same prompt (output), the same rule the shared data uses.
//! Blank lines are skipped. Every other problem is an error naming `file:line` and field.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

use crate::split::{hash_split, DEFAULT_SPLIT_SEED};
use crate::{estimate_tokens, DataError, Dataset, Outcome, Record, Split};

#[derive(Deserialize)]
struct RawRecord {
    id: String,
    #[serde(default)]
    task: Option<String>,
    prompt: String,
    #[serde(default)]
    split: Option<Split>,
    models: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutcome {
    score: f64,
    cost_usd: f64,
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
}

/// Reads and validates a canonical routing JSONL file.
pub fn load(path: &Path) -> Result<Dataset, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(BufReader::new(file), path)
}

/// Parses canonical JSONL from any reader; `path` is only used in error messages.
pub fn parse(reader: impl BufRead, path: &Path) -> Result<Dataset, DataError> {
    let mut models: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut rows: Vec<(Record, Vec<(usize, Outcome)>)> = Vec::new();
    let mut seen_ids: HashMap<String, usize> = HashMap::new();

    for (i, line) in reader.lines().enumerate() {
        let lineno = i + 1;
        let line = line.map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawRecord = serde_json::from_str(&line).map_err(|e| {
            DataError::invalid(
                path,
                lineno,
                json_field(&e),
                format!("malformed record: {e}"),
            )
        })?;
        if let Some(first) = seen_ids.insert(raw.id.clone(), lineno) {
            return Err(DataError::invalid(
                path,
                lineno,
                "id",
                format!("duplicate id `{}` (first on line {first})", raw.id),
            ));
        }
        if raw.models.len() < 2 {
            return Err(DataError::invalid(
                path,
                lineno,
                "models",
                format!(
                    "a prompt needs at least 2 models, found {}",
                    raw.models.len()
                ),
            ));
        }
        let mut outs = Vec::with_capacity(raw.models.len());
        let mut missing_out = Vec::new();
        for (name, value) in raw.models {
            let field = format!("models.{name}");
            let ro: RawOutcome = serde_json::from_value(value).map_err(|e| {
                DataError::invalid(path, lineno, &field, format!("malformed outcome: {e}"))
            })?;
            check_outcome(path, lineno, &field, ro.score, ro.cost_usd)?;
            let idx = *index.entry(name.clone()).or_insert_with(|| {
                models.push(name.clone());
                models.len() - 1
            });
            let input_tokens = ro
                .input_tokens
                .unwrap_or_else(|| estimate_tokens(&raw.prompt));
            if ro.output_tokens.is_none() {
                missing_out.push(outs.len());
            }
            outs.push((
                idx,
                Outcome {
                    score: ro.score,
                    cost_usd: ro.cost_usd,
                    input_tokens,
                    output_tokens: ro.output_tokens.unwrap_or(0),
                },
            ));
        }
        fill_missing_output(&mut outs, &missing_out, |(_, o)| Some(o));
        let split = raw
            .split
            .unwrap_or_else(|| hash_split(&raw.id, DEFAULT_SPLIT_SEED));
        rows.push((
            Record {
                id: raw.id,
                task: raw.task.unwrap_or_default(),
                prompt: raw.prompt,
                split,
                outcomes: Vec::new(),
            },
            outs,
        ));
    }
    if rows.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let n = models.len();
    let records = rows
        .into_iter()
        .map(|(mut r, outs)| {
            r.outcomes = vec![None; n];
            for (idx, o) in outs {
                r.outcomes[idx] = Some(o);
            }
            r
        })
        .collect();
    Ok(Dataset {
        name: dataset_name(path),
        models,
        records,
    })
}

/// Validates a score and a cost; shared by every loader.
pub(crate) fn check_outcome(
    path: &Path,
    line: usize,
    field: &str,
    score: f64,
    cost: f64,
) -> Result<(), DataError> {
    if !(0.0..=1.0).contains(&score) {
        return Err(DataError::invalid(
            path,
            line,
            format!("{field}.score"),
            format!("score {score} is outside [0, 1]"),
        ));
    }
    if !cost.is_finite() || cost < 0.0 {
        return Err(DataError::invalid(
            path,
            line,
            format!("{field}.cost_usd"),
            format!("cost {cost} must be finite and >= 0"),
        ));
    }
    Ok(())
}

pub(crate) fn dataset_name(path: &Path) -> String {
    path.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Sets the output tokens of the outcomes at `missing` (indices into `items`) to the median
/// over the prompt's other outcomes (0 when there are none). Shared by both loaders.
pub(crate) fn fill_missing_output<T>(
    items: &mut [T],
    missing: &[usize],
    outcome: impl Fn(&mut T) -> Option<&mut Outcome>,
) {
    if missing.is_empty() {
        return;
    }
    let mut known: Vec<u32> = items
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| !missing.contains(i))
        .filter_map(|(_, t)| outcome(t).map(|o| o.output_tokens))
        .collect();
    known.sort_unstable();
    let median = known.get(known.len() / 2).copied().unwrap_or(0);
    for &i in missing {
        if let Some(o) = items.get_mut(i).and_then(&outcome) {
            o.output_tokens = median;
        }
    }
}

fn json_field(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    // serde reports "missing field `x`" / "unknown field `x`": surface `x` as the field.
    if let Some(start) = msg.find('`') {
        if let Some(len) = msg[start + 1..].find('`') {
            return msg[start + 1..start + 1 + len].to_string();
        }
    }
    "<record>".to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse_str(s: &str) -> Result<Dataset, DataError> {
        parse(s.as_bytes(), Path::new("t.jsonl"))
    }

    #[test]
    fn parses_and_interns_models_with_missing_ones() {
        let d = parse_str(concat!(
            r#"{"id":"a","prompt":"hi","split":"train","models":{"m1":{"score":1,"cost_usd":0.1,"input_tokens":3,"output_tokens":5},"m2":{"score":0,"cost_usd":0.01}}}"#,
            "\n\n",
            r#"{"id":"b","prompt":"yo","split":"test","models":{"m2":{"score":0.5,"cost_usd":0.0},"m3":{"score":1,"cost_usd":1}}}"#,
        ))
        .unwrap();
        assert_eq!(d.models, ["m1", "m2", "m3"]);
        assert_eq!(d.records.len(), 2);
        assert!(d.records[1].outcomes[0].is_none());
        assert_eq!(d.records[0].outcomes[1].unwrap().output_tokens, 5);
        assert_eq!(d.records[1].split, Split::Test);
    }

    #[test]
    fn rejects_score_out_of_range_with_line_and_field() {
        let e = parse_str(concat!(
            r#"{"id":"a","prompt":"hi","models":{"m1":{"score":1,"cost_usd":0.1},"m2":{"score":0,"cost_usd":0.1}}}"#,
            "\n",
            r#"{"id":"b","prompt":"hi","models":{"m1":{"score":1.5,"cost_usd":0.1},"m2":{"score":0,"cost_usd":0.1}}}"#,
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "t.jsonl:2: field `models.m1.score`: score 1.5 is outside [0, 1]"
        );
    }

    #[test]
    fn rejects_negative_cost_single_model_malformed_and_empty() {
        let neg = parse_str(
            r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":-1},"m2":{"score":0,"cost_usd":0}}}"#,
        );
        assert!(neg.unwrap_err().to_string().contains("models.m1.cost_usd"));
        let one = parse_str(r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":1}}}"#);
        assert!(one.unwrap_err().to_string().contains("at least 2 models"));
        let bad = parse_str("{not json");
        assert!(bad.unwrap_err().to_string().starts_with("t.jsonl:1:"));
        let missing = parse_str(r#"{"id":"a","models":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("field `prompt`"), "{missing}");
        assert!(matches!(parse_str("\n\n"), Err(DataError::Empty { .. })));
    }
}
