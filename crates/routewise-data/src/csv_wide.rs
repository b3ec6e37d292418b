//! RouterBench's wide CSV: one row per prompt, a column group per model.
//!
//! Columns: `sample_id, prompt, eval_name, <model>, <model>|model_response,
//! <model>|total_cost, ..., oracle_model_to_route_to`. A model is any column `X` for
//! which a column `X|total_cost` exists; `X` holds its score, `X|total_cost` its cost in
//! USD and the optional `X|model_response` its answer. Other columns are ignored, except
//! an optional `split` column (`train`/`test`), used like the JSONL field.
//!
//! * `prompt` may be a Python-style list of turns (`['turn one', "turn two"]`, as
//!   RouterBench writes multi-turn prompts with `str(list)`): the string literals are
//!   parsed (both quote styles, backslash escapes `\\ \' \" \n \t \r \xHH \uHHHH
//!   \UHHHHHHHH`) and the turns joined with a blank line. Anything that does not parse
//!   as such a list is taken verbatim.
//! * A model whose score and cost cells are both empty is missing on that prompt (normal:
//!   routers and metrics skip it). One empty and one filled is an error.
//! * Scores and costs are validated like the JSONL loader's (`score` in `[0, 1]`, cost
//!   finite and `>= 0`); a prompt needs at least 2 models; `sample_id` must be unique.
//! * Tokens: input = prompt chars / 4; output = response chars / 4, or, where a model
//!   has no response text, the median of the other models' estimates on that prompt.
//! * Split: the `split` column if present, else the documented hash split of
//!   `sample_id` ([`crate::split`]).
//!
//! Every error names `file:line` (the line where the CSV record starts; the header is
//! line 1) and the field (`<model>.score`, `<model>.cost_usd`, a column name).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::jsonl::{check_outcome, dataset_name, fill_missing_output, unknown_output_warning};
use crate::split::{hash_split, DEFAULT_SPLIT_SEED};
use crate::{estimate_tokens, Answer, DataError, Dataset, Outcome, Record, Split};

struct ModelCols {
    name: String,
    score: usize,
    cost: usize,
    response: Option<usize>,
}

/// Reads and validates a RouterBench wide CSV file.
pub fn load(path: &Path) -> Result<Dataset, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(std::io::BufReader::new(file), path)
}

/// Parses a RouterBench wide CSV from any reader; `path` is only used in messages.
pub fn parse(reader: impl Read, path: &Path) -> Result<Dataset, DataError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(reader);
    let csv_err = |e: csv::Error| {
        let line = e
            .position()
            .map(|p| p.line() as usize)
            .unwrap_or_else(|| match e.kind() {
                csv::ErrorKind::UnequalLengths { pos, .. } => {
                    pos.as_ref().map_or(0, |p| p.line() as usize)
                }
                _ => 0,
            });
        DataError::invalid(path, line, "<record>", format!("malformed CSV: {e}"))
    };
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => return Err(csv_err(e)),
    };
    if headers.is_empty() || (headers.len() == 1 && headers.get(0) == Some("")) {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let id_col = col("sample_id")
        .ok_or_else(|| DataError::invalid(path, 1, "sample_id", "missing column"))?;
    let prompt_col =
        col("prompt").ok_or_else(|| DataError::invalid(path, 1, "prompt", "missing column"))?;
    let task_col = col("eval_name");
    let split_col = col("split");
    let mut models: Vec<ModelCols> = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let h = h.trim();
        if let Some(name) = h.strip_suffix("|total_cost") {
            let score = col(name).ok_or_else(|| {
                DataError::invalid(
                    path,
                    1,
                    name,
                    format!("column `{h}` has no score column `{name}`"),
                )
            })?;
            models.push(ModelCols {
                name: name.to_string(),
                score,
                cost: i,
                response: col(&format!("{name}|model_response")),
            });
        }
    }
    // Models in the order of their score columns.
    models.sort_by_key(|m| m.score);
    if models.len() < 2 {
        return Err(DataError::invalid(
            path,
            1,
            "<header>",
            format!(
                "need at least 2 models (`<model>|total_cost` columns), found {}",
                models.len()
            ),
        ));
    }

    let mut records = Vec::new();
    let (mut total_outcomes, mut unknown_output) = (0usize, 0usize);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut row = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut row) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_err(e)),
        }
        let line = row.position().map_or(0, |p| p.line() as usize);
        let cell = |i: usize| row.get(i).unwrap_or("").trim();
        let id = cell(id_col).to_string();
        if id.is_empty() {
            return Err(DataError::invalid(path, line, "sample_id", "empty"));
        }
        if let Some(first) = seen.insert(id.clone(), line) {
            return Err(DataError::invalid(
                path,
                line,
                "sample_id",
                format!("duplicate sample_id `{id}` (first on line {first})"),
            ));
        }
        let prompt = parse_prompt(row.get(prompt_col).unwrap_or(""));
        let input_tokens = estimate_tokens(&prompt);
        let split = match split_col.map(cell) {
            Some("train") => Split::Train,
            Some("test") => Split::Test,
            Some("") | None => hash_split(&id, DEFAULT_SPLIT_SEED),
            Some(other) => {
                return Err(DataError::invalid(
                    path,
                    line,
                    "split",
                    format!("`{other}` is neither `train` nor `test`"),
                ))
            }
        };
        let mut outcomes: Vec<Option<Outcome>> = vec![None; models.len()];
        let mut missing_out = Vec::new();
        for (k, m) in models.iter().enumerate() {
            let (s, c) = (cell(m.score), cell(m.cost));
            if s.is_empty() && c.is_empty() {
                continue;
            }
            let number = |v: &str, field: &str| -> Result<f64, DataError> {
                if v.is_empty() {
                    return Err(DataError::invalid(
                        path,
                        line,
                        format!("{}.{field}", m.name),
                        "empty while the model's other cell is filled",
                    ));
                }
                parse_number(v).ok_or_else(|| {
                    DataError::invalid(
                        path,
                        line,
                        format!("{}.{field}", m.name),
                        format!("`{v}` is not a number"),
                    )
                })
            };
            let score = number(s, "score")?;
            let cost = number(c, "cost_usd")?;
            check_outcome(path, line, &m.name, score, cost)?;
            let response = m.response.map(cell).unwrap_or("");
            let output_tokens = if response.is_empty() {
                missing_out.push(k);
                0
            } else {
                estimate_tokens(response)
            };
            outcomes[k] = Some(Outcome {
                score,
                cost_usd: cost,
                input_tokens,
                output_tokens,
                answer: Answer::Absent,
            });
        }
        let present = outcomes.iter().flatten().count();
        if present < 2 {
            return Err(DataError::invalid(
                path,
                line,
                "models",
                format!("a prompt needs at least 2 models, found {present}"),
            ));
        }
        total_outcomes += outcomes.iter().flatten().count();
        unknown_output += fill_missing_output(&mut outcomes, &missing_out, |o| o.as_mut());
        records.push(Record {
            id,
            task: task_col.map(cell).unwrap_or("").to_string(),
            prompt,
            split,
            reference: None,
            outcomes,
        });
    }
    if records.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Dataset {
        name: dataset_name(path),
        models: models.into_iter().map(|m| m.name).collect(),
        records,
        answers: Vec::new(),
        warnings: unknown_output_warning(path, unknown_output, total_outcomes)
            .into_iter()
            .collect(),
    })
}

/// Numbers as RouterBench writes them; `True`/`False` (pandas booleans) count as 1/0.
fn parse_number(v: &str) -> Option<f64> {
    match v {
        "True" | "true" => Some(1.0),
        "False" | "false" => Some(0.0),
        _ => v.parse::<f64>().ok(),
    }
}

/// The prompt text: a Python list of string literals becomes its turns joined with a
/// blank line; anything else is returned unchanged.
pub fn parse_prompt(raw: &str) -> String {
    let t = raw.trim();
    if t.starts_with('[') && t.ends_with(']') {
        if let Some(turns) = parse_py_str_list(t) {
            if !turns.is_empty() {
                return turns.join("\n\n");
            }
        }
    }
    raw.to_string()
}

/// Parses `['a', "b", ...]` (Python `repr` of a list of str); `None` if it is not one.
fn parse_py_str_list(s: &str) -> Option<Vec<String>> {
    let mut it = s.chars().peekable();
    if it.next() != Some('[') {
        return None;
    }
    let mut out = Vec::new();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        match it.next()? {
            ']' => break,
            q @ ('\'' | '"') => {
                let mut cur = String::new();
                loop {
                    match it.next()? {
                        c if c == q => break,
                        '\\' => match it.next()? {
                            'n' => cur.push('\n'),
                            't' => cur.push('\t'),
                            'r' => cur.push('\r'),
                            '0' => cur.push('\0'),
                            'x' => cur.push(hex_char(&mut it, 2)?),
                            'u' => cur.push(hex_char(&mut it, 4)?),
                            'U' => cur.push(hex_char(&mut it, 8)?),
                            '\n' => {}
                            c @ ('\\' | '\'' | '"') => cur.push(c),
                            // Python keeps unknown escapes verbatim.
                            c => {
                                cur.push('\\');
                                cur.push(c);
                            }
                        },
                        c => cur.push(c),
                    }
                }
                out.push(cur);
                while it.peek().is_some_and(|c| c.is_whitespace()) {
                    it.next();
                }
                match it.next()? {
                    ',' => {}
                    ']' => break,
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
    // Nothing may follow the closing bracket.
    if it.any(|c| !c.is_whitespace()) {
        return None;
    }
    Some(out)
}

fn hex_char(it: &mut impl Iterator<Item = char>, n: usize) -> Option<char> {
    let mut v = 0u32;
    for _ in 0..n {
        v = v * 16 + it.next()?.to_digit(16)?;
    }
    char::from_u32(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_list_prompts_are_parsed_with_escapes() {
        assert_eq!(
            parse_prompt("['turn one', 'turn two']"),
            "turn one\n\nturn two"
        );
        assert_eq!(
            parse_prompt(r#"["it's", 'say \'hi\' \\ now\n', "\"q\""]"#),
            "it's\n\nsay 'hi' \\ now\n\n\n\"q\""
        );
        assert_eq!(parse_prompt(r"['caf\xe9 \u00e9']"), "café é");
        // Not a list of string literals: verbatim.
        assert_eq!(parse_prompt("[1, 2, 3]"), "[1, 2, 3]");
        assert_eq!(parse_prompt("['a'] and ['b']"), "['a'] and ['b']");
        assert_eq!(parse_prompt("['unterminated]"), "['unterminated]");
        assert_eq!(parse_prompt("plain text"), "plain text");
    }
}
