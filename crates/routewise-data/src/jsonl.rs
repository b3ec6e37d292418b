//! Canonical routing JSONL (`../shared/data/README.md`): one prompt per line with
//! `id`, `prompt`, optional `task`, `split` and `reference`, and a `models` map of
//! `{score, cost_usd, input_tokens?, output_tokens?, answer?}`.
//!
//! Missing token counts are estimated as chars / 4 (input) and the median of the other
//! models' outputs on the same prompt (output), the same rule the shared data uses; an
//! output length no model of the prompt gives counts as 0, and the file's warnings say
//! how many. Blank lines and a UTF-8 byte order mark opening the file are skipped. Every
//! other problem is an error naming `file:line` and field.
//!
//! Forward compatibility is deliberate and asymmetric:
//! * an unknown **top-level** key (a field a newer writer added to the prompt) is ignored,
//!   and reported once per file in [`Dataset::warnings`] with the line it first appears on;
//! * an unknown key **inside an outcome** is an error: outcomes are what routers learn
//!   from, and a misspelt `scroe` silently read as "no score" would corrupt a fit.
//!
//! `answer` and `reference` must be strings or `null` (an empty string is refused: write
//! `null`). Answers are interned in [`Dataset::answers`].

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use crate::split::{hash_split, DEFAULT_SPLIT_SEED};
use crate::{estimate_tokens, Answer, AnswerId, DataError, Dataset, Outcome, Record, Split};

/// The top-level keys routewise reads (named in the unknown-key warning).
const KNOWN_KEYS: &str = "id, task, prompt, split, reference, models";

#[derive(Deserialize)]
struct RawRecord {
    id: String,
    #[serde(default)]
    task: Option<String>,
    prompt: String,
    #[serde(default)]
    split: Option<Split>,
    #[serde(default)]
    reference: Option<String>,
    models: serde_json::Map<String, serde_json::Value>,
    /// Keys this version does not read (reported once per file).
    #[serde(flatten)]
    unknown: BTreeMap<String, IgnoredAny>,
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
    /// Absent (`None`), `null` (`Some(None)`) or a string.
    #[serde(default, deserialize_with = "present")]
    answer: Option<Option<String>>,
}

/// Tells a present `null` (`Some(None)`) from an absent field (`None`, via `default`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Answer strings, interned in first-seen order.
#[derive(Default)]
struct Interner {
    texts: Vec<String>,
    ids: HashMap<String, AnswerId>,
}

impl Interner {
    fn intern(&mut self, text: String) -> AnswerId {
        if let Some(&id) = self.ids.get(&text) {
            return id;
        }
        let id = AnswerId(self.texts.len() as u32);
        self.texts.push(text.clone());
        self.ids.insert(text, id);
        id
    }
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
    let (mut total_outcomes, mut unknown_output) = (0usize, 0usize);
    let mut seen_ids: HashMap<String, usize> = HashMap::new();
    let mut answers = Interner::default();
    // Unknown top-level key -> the line it first appeared on.
    let mut unknown_keys: BTreeMap<String, usize> = BTreeMap::new();

    for (i, line) in reader.lines().enumerate() {
        let lineno = i + 1;
        let line = line.map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // A UTF-8 byte order mark (editors on Windows write one) opens the first line.
        let line = if i == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(&line)
        } else {
            &line
        };
        if line.trim().is_empty() {
            continue;
        }
        let mut de = serde_json::Deserializer::from_str(line);
        let raw: RawRecord = from_json(&mut de)
            .and_then(|raw| de.end().map(|()| raw).map_err(|e| (String::new(), e)))
            .map_err(|(field, e)| {
                let field = if field.is_empty() {
                    "<record>".to_string()
                } else {
                    field
                };
                DataError::invalid(path, lineno, field, format!("malformed record: {e}"))
            })?;
        for key in raw.unknown.into_keys() {
            unknown_keys.entry(key).or_insert(lineno);
        }
        check_answer_text(path, lineno, "reference", raw.reference.as_deref())?;
        if let Some(first) = seen_ids.insert(raw.id.clone(), lineno) {
            return Err(DataError::invalid(
                path,
                lineno,
                "id",
                format!("duplicate id `{}` (first on line {first})", raw.id),
            ));
        }
        // One model is enough on a line: a profile of a single new model on probe
        // prompts (`routewise profile --models new`, then `routewise onboard`).
        if raw.models.is_empty() {
            return Err(DataError::invalid(
                path,
                lineno,
                "models",
                "a prompt needs at least 1 model, found none",
            ));
        }
        let mut outs = Vec::with_capacity(raw.models.len());
        let mut missing_out = Vec::new();
        for (name, value) in raw.models {
            let field = format!("models.{name}");
            let ro: RawOutcome = from_json(value).map_err(|(sub, e)| {
                let at = if sub.is_empty() {
                    field.clone()
                } else {
                    format!("{field}.{sub}")
                };
                DataError::invalid(path, lineno, at, format!("malformed outcome: {e}"))
            })?;
            check_outcome(path, lineno, &field, ro.score, ro.cost_usd)?;
            let answer = match ro.answer {
                None => Answer::Absent,
                Some(None) => Answer::Unreadable,
                Some(Some(text)) => {
                    check_answer_text(path, lineno, &format!("{field}.answer"), Some(&text))?;
                    Answer::Given(answers.intern(text))
                }
            };
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
                    answer,
                },
            ));
        }
        total_outcomes += outs.len();
        unknown_output += fill_missing_output(&mut outs, &missing_out, |(_, o)| Some(o));
        let split = raw
            .split
            .unwrap_or_else(|| hash_split(&raw.id, DEFAULT_SPLIT_SEED));
        rows.push((
            Record {
                id: raw.id,
                task: raw.task.unwrap_or_default(),
                prompt: raw.prompt,
                split,
                reference: raw.reference,
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
    let mut warnings = Vec::new();
    if !unknown_keys.is_empty() {
        let keys: Vec<String> = unknown_keys
            .iter()
            .map(|(k, line)| format!("`{k}` (first on line {line})"))
            .collect();
        warnings.push(format!(
            "{}: ignored unknown top-level key(s) {}; this version reads {KNOWN_KEYS}",
            path.display(),
            keys.join(", ")
        ));
    }
    warnings.extend(unknown_output_warning(path, unknown_output, total_outcomes));
    Ok(Dataset {
        name: dataset_name(path),
        models,
        records,
        answers: answers.texts,
        warnings,
    })
}

/// Deserialises `input`, returning the failing field's dotted path (empty at the root)
/// with the error.
fn from_json<'de, T: Deserialize<'de>>(
    input: impl Deserializer<'de, Error = serde_json::Error>,
) -> Result<T, (String, serde_json::Error)> {
    serde_path_to_error::deserialize(input).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        let field = if at.is_empty() || at == "." {
            json_field(&inner)
        } else {
            at
        };
        (field, inner)
    })
}

/// An `answer` or `reference` string must not be empty (the data writes `null` for none).
fn check_answer_text(
    path: &Path,
    line: usize,
    field: &str,
    text: Option<&str>,
) -> Result<(), DataError> {
    match text {
        Some(t) if t.trim().is_empty() => Err(DataError::invalid(
            path,
            line,
            field,
            "empty string (write null when there is no answer)",
        )),
        _ => Ok(()),
    }
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
/// over the prompt's other outcomes (0 when there are none). Returns how many were left at
/// 0 that way (the prompt had no outcome with a length). Shared by both loaders.
pub(crate) fn fill_missing_output<T>(
    items: &mut [T],
    missing: &[usize],
    outcome: impl Fn(&mut T) -> Option<&mut Outcome>,
) -> usize {
    if missing.is_empty() {
        return 0;
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
    if known.is_empty() {
        missing.len()
    } else {
        0
    }
}

/// The warning for outcomes whose output length is unknown (see [`fill_missing_output`]).
pub(crate) fn unknown_output_warning(path: &Path, unknown: usize, total: usize) -> Option<String> {
    (unknown > 0).then(|| {
        format!(
            "{}: {unknown} of {total} outcomes have no output length (`output_tokens`, or a \
             response in a CSV), and no other model's on their prompt to borrow: it counts as \
             0, which fitted prices, expected costs and `simulate`'s service times then rest on",
            path.display()
        )
    })
}

fn json_field(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    // serde reports "missing field `x`" / "unknown field `x`": surface `x` as the field.
    if let Some(start) = msg.find('`') {
        if let Some(len) = msg[start + 1..].find('`') {
            return msg[start + 1..start + 1 + len].to_string();
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
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
    fn keeps_answers_and_references_telling_absent_from_null() {
        let d = parse_str(concat!(
            r#"{"id":"a","prompt":"q1","reference":"B","models":{"m1":{"score":1,"cost_usd":0.1,"answer":"B"},"m2":{"score":0,"cost_usd":0.01,"answer":null},"m3":{"score":0,"cost_usd":0.01}}}"#,
            "\n",
            r#"{"id":"b","prompt":"q2","reference":null,"models":{"m1":{"score":0,"cost_usd":0.1,"answer":"C"},"m2":{"score":1,"cost_usd":0.01,"answer":"B"}}}"#,
        ))
        .unwrap();
        let (a, b) = (&d.records[0], &d.records[1]);
        assert_eq!(a.reference.as_deref(), Some("B"));
        assert_eq!(b.reference, None);
        let ans = |r: &Record, m: usize| r.outcomes[m].unwrap().answer;
        // Equal strings share one id; null and absent stay distinct.
        assert_eq!(ans(a, 0), ans(b, 1));
        assert_ne!(ans(a, 0), ans(b, 0));
        assert_eq!(ans(a, 1), Answer::Unreadable);
        assert_eq!(ans(a, 2), Answer::Absent);
        assert_eq!(d.answer_text(ans(b, 0)), Some("C"));
        assert_eq!(d.answers, ["B", "C"]);
        let matches = |r: &Record, m: usize| d.answer_matches_reference(r, &r.outcomes[m].unwrap());
        assert_eq!(matches(a, 0), Some(true));
        assert_eq!(matches(a, 1), Some(false), "unreadable counts as wrong");
        assert_eq!(matches(a, 2), None, "no answer field: cannot grade");
        assert_eq!(matches(b, 0), None, "no reference: cannot grade");
        // (No outcome here has a length: the one warning says so.)
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(d.warnings[0].contains("no output length"));
        // A prompt records answers when any model's field is there, even `null` alone.
        assert!(a.has_answers() && b.has_answers());
        let c = parse_str(concat!(
            r#"{"id":"c","prompt":"q3","models":{"m1":{"score":1,"cost_usd":0.1},"m2":{"score":0,"cost_usd":0.01,"answer":null}}}"#,
            "\n",
            r#"{"id":"d","prompt":"q4","models":{"m1":{"score":1,"cost_usd":0.1},"m2":{"score":0,"cost_usd":0.01}}}"#,
        ))
        .unwrap();
        assert!(c.records[0].has_answers());
        assert!(!c.records[1].has_answers());
    }

    #[test]
    fn rejects_bad_answer_and_reference_values_naming_the_field() {
        let bad = |line: &str| parse_str(line).unwrap_err().to_string();
        let e = bad(
            r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":1,"answer":5},"m2":{"score":0,"cost_usd":0}}}"#,
        );
        assert!(e.starts_with("t.jsonl:1: field `models.m1.answer`"), "{e}");
        let e = bad(
            r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":1,"answer":["A"]},"m2":{"score":0,"cost_usd":0}}}"#,
        );
        assert!(e.contains("`models.m1.answer`"), "{e}");
        let e = bad(
            r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":1,"answer":""},"m2":{"score":0,"cost_usd":0}}}"#,
        );
        assert!(e.contains("`models.m1.answer`: empty string"), "{e}");
        let e = bad(
            r#"{"id":"a","prompt":"x","reference":true,"models":{"m1":{"score":1,"cost_usd":1},"m2":{"score":0,"cost_usd":0}}}"#,
        );
        assert!(e.starts_with("t.jsonl:1: field `reference`"), "{e}");
        let e = bad(
            r#"{"id":"a","prompt":"x","reference":" ","models":{"m1":{"score":1,"cost_usd":1},"m2":{"score":0,"cost_usd":0}}}"#,
        );
        assert!(e.contains("`reference`: empty string"), "{e}");
    }

    /// Regression: a file opening with a UTF-8 byte order mark was refused as "malformed
    /// record: expected value at line 1 column 1" (the CSV loader already took it).
    #[test]
    fn a_byte_order_mark_opens_the_file() {
        let d = parse_str(concat!(
            "\u{feff}",
            r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":1,"output_tokens":3}}}"#,
        ))
        .unwrap();
        assert_eq!(d.records[0].id, "a");
        // Anywhere else it is still an error.
        let e = parse_str(concat!(
            r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":1,"output_tokens":3}}}"#,
            "\n\u{feff}",
            r#"{"id":"b","prompt":"x","models":{"m1":{"score":1,"cost_usd":1,"output_tokens":3}}}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains(":2:"), "{e}");
    }

    /// Regression: with no `output_tokens` anywhere, every output length was read as 0
    /// without a word (`simulate` then served gpt-4 at 25 req/s instead of 5).
    #[test]
    fn output_lengths_no_model_records_are_named() {
        // Borrowed from another model of the prompt: no warning.
        let d = parse_str(
            r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":1,"output_tokens":8},"m2":{"score":0,"cost_usd":0}}}"#,
        )
        .unwrap();
        assert_eq!(d.records[0].outcomes[1].unwrap().output_tokens, 8);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        // None on the second prompt: its two outcomes count as 0, and the warning says so.
        let d = parse_str(concat!(
            r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":1,"output_tokens":8},"m2":{"score":0,"cost_usd":0}}}"#,
            "\n",
            r#"{"id":"b","prompt":"y","models":{"m1":{"score":1,"cost_usd":1},"m2":{"score":0,"cost_usd":0}}}"#,
        ))
        .unwrap();
        assert_eq!(d.records[1].outcomes[0].unwrap().output_tokens, 0);
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(d.warnings[0].contains("2 of 4 outcomes have no output length"));
    }

    #[test]
    fn unknown_top_level_keys_warn_once_per_file_but_unknown_outcome_keys_fail() {
        let d = parse_str(concat!(
            r#"{"id":"a","prompt":"x","source":"s1","models":{"m1":{"score":1,"cost_usd":1},"m2":{"score":0,"cost_usd":0}}}"#,
            "\n",
            r#"{"id":"b","prompt":"y","source":"s2","meta":{"k":1},"models":{"m1":{"score":1,"cost_usd":1},"m2":{"score":0,"cost_usd":0}}}"#,
        ))
        .unwrap();
        assert_eq!(d.records.len(), 2);
        assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
        assert!(d.warnings[1].contains("4 of 4 outcomes have no output length"));
        let w = &d.warnings[0];
        assert!(w.contains("`meta` (first on line 2)"), "{w}");
        assert!(w.contains("`source` (first on line 1)"), "{w}");
        let e = parse_str(
            r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":1,"scroe":1},"m2":{"score":0,"cost_usd":0}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("models.m1") && e.contains("unknown field `scroe`"),
            "{e}"
        );
    }

    #[test]
    fn trailing_garbage_after_a_record_is_refused() {
        let e = parse_str(
            r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":1},"m2":{"score":0,"cost_usd":0}}} x"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("t.jsonl:1:"), "{e}");
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
    fn rejects_negative_cost_no_model_malformed_and_empty_and_keeps_a_single_model() {
        let neg = parse_str(
            r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":-1},"m2":{"score":0,"cost_usd":0}}}"#,
        );
        assert!(neg.unwrap_err().to_string().contains("models.m1.cost_usd"));
        let none = parse_str(r#"{"id":"a","prompt":"x","models":{}}"#);
        assert!(none.unwrap_err().to_string().contains("at least 1 model"));
        let one = parse_str(r#"{"id":"a","prompt":"x","models":{"m1":{"score":1,"cost_usd":1}}}"#);
        assert_eq!(one.unwrap().models, vec!["m1".to_string()]);
        let bad = parse_str("{not json");
        assert!(bad.unwrap_err().to_string().starts_with("t.jsonl:1:"));
        let missing = parse_str(r#"{"id":"a","models":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("field `prompt`"), "{missing}");
        assert!(matches!(parse_str("\n\n"), Err(DataError::Empty { .. })));
    }
}
