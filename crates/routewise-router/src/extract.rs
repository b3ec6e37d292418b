//! Answer extractors: the final answer of a model's free-text response, normalised so
//! that two models' answers (or an answer and a reference) compare with `==`. Shared by
//! cascades (agreement of tier answers, issue 13) and by grading a pool against reference
//! answers without a judge (issue 12).
//!
//! * `choice`: a multiple-choice letter (A-J). An "answer is (B)" / "Answer: C" phrase
//!   wins; else a label at the very start (`A`, `A)`, `(C)`, `A.`, `A:`, `**B**`), where
//!   an `A` followed by a lower-case word is the article, not a label. The rules of the
//!   shared data's `answer` field (its README), so live answers match recorded ones.
//! * `number`: the last number in the text (sign, thousands separators and a decimal
//!   part allowed), written canonically (`1,200.50` -> `1200.5`).
//! * `json:FIELD`: the field of the JSON object the response is (or the first `{...}`
//!   in it), as a string (`"x"` -> `x`, `3` -> `3`).
//! * `exact`: the whole text, trimmed, lower-cased, inner whitespace collapsed and a
//!   trailing period dropped.
//! * `semantic` or `semantic:T`: for free text. The answer is the whole text with its
//!   whitespace collapsed (case kept), and two answers agree when they mean the same, not
//!   when they are equal: the cosine of their embeddings is at least `T` (default
//!   [`DEFAULT_SEMANTIC_THRESHOLD`]) and they pass the semantic cache's guards (the same
//!   numbers and negations, each one's names among the other's words). The comparison is
//!   `routewise_signals::agreement`; this module only reads and names it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How to read a response's final answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Extractor {
    Choice,
    Number,
    Json(String),
    Exact,
    /// Free text compared by meaning, at a cosine threshold in thousandths (`Eq` holds).
    Semantic(u16),
}

/// The cosine at or above which `semantic` counts two answers as agreeing, chosen on the
/// training part of STS-B (BENCHMARKS.md, "Semantic agreement of free-text answers").
pub const DEFAULT_SEMANTIC_THRESHOLD: f32 = 0.9;

impl FromStr for Extractor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "choice" => Ok(Extractor::Choice),
            "number" => Ok(Extractor::Number),
            "exact" => Ok(Extractor::Exact),
            "semantic" => Ok(Extractor::Semantic(thousandths(DEFAULT_SEMANTIC_THRESHOLD))),
            t => {
                if let Some(f) = t.strip_prefix("json:").filter(|f| !f.is_empty()) {
                    return Ok(Extractor::Json(f.to_string()));
                }
                if let Some(v) = t.strip_prefix("semantic:") {
                    return match v.trim().parse::<f32>() {
                        // (Below 0.0005 it would round to a threshold of 0.)
                        Ok(c) if c <= 1.0 && thousandths(c) > 0 => {
                            Ok(Extractor::Semantic(thousandths(c)))
                        }
                        _ => Err(format!(
                            "`{t}`: the semantic threshold must be a cosine in (0, 1], such as \
                             `semantic:0.9`"
                        )),
                    };
                }
                Err(format!(
                    "unknown answer extractor `{t}` (known: choice, number, exact, json:FIELD, \
                     semantic[:T])"
                ))
            }
        }
    }
}

impl TryFrom<String> for Extractor {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Extractor> for String {
    fn from(e: Extractor) -> String {
        e.to_string()
    }
}

impl fmt::Display for Extractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Extractor::Choice => f.write_str("choice"),
            Extractor::Number => f.write_str("number"),
            Extractor::Exact => f.write_str("exact"),
            Extractor::Json(field) => write!(f, "json:{field}"),
            Extractor::Semantic(t) => write!(f, "semantic:{}", f32::from(*t) / 1000.0),
        }
    }
}

impl Extractor {
    /// The normalised answer in `text`, or `None` when none can be read.
    pub fn extract(&self, text: &str) -> Option<String> {
        match self {
            Extractor::Choice => choice(text).map(String::from),
            Extractor::Number => last_number(text),
            Extractor::Json(field) => json_field(text, field),
            Extractor::Exact => {
                let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
                let t = t.trim_end_matches('.').to_lowercase();
                (!t.is_empty()).then_some(t)
            }
            // The case stays: the guards read capitalised names.
            Extractor::Semantic(_) => {
                let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
                (!t.is_empty()).then_some(t)
            }
        }
    }

    /// The cosine threshold of `semantic`; `None` for the extractors whose answers agree
    /// only when equal.
    pub fn semantic_threshold(&self) -> Option<f32> {
        match self {
            Extractor::Semantic(t) => Some(f32::from(*t) / 1000.0),
            _ => None,
        }
    }
}

/// A cosine in (0, 1] in thousandths, rounded.
fn thousandths(c: f32) -> u16 {
    (c.clamp(0.0, 1.0) * 1000.0).round() as u16
}

const LETTERS: &str = "ABCDEFGHIJ";

fn letter(c: char) -> Option<&'static str> {
    LETTERS.find(c).map(|i| &LETTERS[i..i + 1])
}

/// The option letter of a multiple-choice response.
fn choice(text: &str) -> Option<&'static str> {
    // 1. "answer is (B)", "Answer: C", "answer is **D**".
    for key in ["answer is", "answer:"] {
        if let Some(at) = rfind_ascii_ci(text, key) {
            let rest = &text[at + key.len()..];
            let rest = rest.trim_start_matches(|c: char| c.is_whitespace() || "(*[:".contains(c));
            let mut chars = rest.chars();
            if let Some(c) = chars.next().and_then(letter) {
                let next = chars.next();
                if next.is_none_or(|n| !n.is_alphanumeric()) {
                    return Some(c);
                }
            }
        }
    }
    // 2. A label at the very start.
    let t = text.trim_start().trim_start_matches(['(', '*', '[']);
    let mut chars = t.chars();
    let c = letter(chars.next()?)?;
    match chars.next() {
        None => Some(c),
        Some(n) if ")].:*,".contains(n) => Some(c),
        Some(' ') | Some('\n') => {
            // "A chart ..." is the article; "A (..." / "A\n" / "A - ..." are labels.
            let word = chars.next();
            match word {
                Some(w) if w.is_lowercase() => None,
                _ => Some(c),
            }
        }
        _ => None,
    }
}

/// The byte offset of the last occurrence of the ASCII `key` in `text`, ignoring ASCII
/// case (searched in `text` itself: a lower-cased copy can differ in byte length).
fn rfind_ascii_ci(text: &str, key: &str) -> Option<usize> {
    let (t, k) = (text.as_bytes(), key.as_bytes());
    (0..=t.len().checked_sub(k.len())?)
        .rev()
        .find(|&i| t[i..i + k.len()].eq_ignore_ascii_case(k))
}

/// The last number of `text`, canonical.
fn last_number(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut end = b.len();
    while end > 0 && !b[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut start = end;
    while start > 0 {
        let c = b[start - 1];
        let sep_ok = |i: usize| i >= 2 && b[i - 2].is_ascii_digit();
        if c.is_ascii_digit() || ((c == b',' || c == b'.') && sep_ok(start) && start < end) {
            start -= 1;
        } else {
            break;
        }
    }
    // ".5": a decimal point with no integer part.
    if start > 0 && b[start - 1] == b'.' && (start < 2 || !b[start - 2].is_ascii_digit()) {
        start -= 1;
    }
    let neg = start > 0 && b[start - 1] == b'-';
    let raw: String = text[start..end].chars().filter(|&c| c != ',').collect();
    let v: f64 = raw.parse().ok()?;
    let v = if neg { -v } else { v };
    Some(if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    })
}

/// `field` of the JSON object in `text`.
fn json_field(text: &str, field: &str) -> Option<String> {
    let parsed: serde_json::Value = serde_json::from_str(text.trim()).ok().or_else(|| {
        let (a, b) = (text.find('{')?, text.rfind('}')?);
        (a < b).then(|| serde_json::from_str(&text[a..=b]).ok())?
    })?;
    match parsed.get(field)? {
        serde_json::Value::String(s) => Some(s.trim().to_string()),
        serde_json::Value::Null => None,
        v => Some(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_reads_phrases_and_leading_labels() {
        let e = Extractor::Choice;
        for (text, want) in [
            ("The answer is (B).", Some("B")),
            ("Let me think... so the answer is **D**", Some("D")),
            ("Answer: C", Some("C")),
            ("A", Some("A")),
            ("(C) because ...", Some("C")),
            ("B) the second", Some("B")),
            ("**J**", Some("J")),
            ("D.", Some("D")),
            ("A chart shows that", None),
            ("I don't know", None),
            ("", None),
            ("The answer is Paris", None),
        ] {
            assert_eq!(e.extract(text).as_deref(), want, "{text:?}");
        }
    }

    /// Regression (review of the profile change): the phrase was found in a lower-cased
    /// copy and sliced out of the original, whose byte offsets differ after a character
    /// whose lower case is longer (`İ`): a panic, or the wrong letter.
    #[test]
    fn regression_choice_slices_the_text_it_searched() {
        let e = Extractor::Choice;
        assert_eq!(e.extract("İanswer:é").as_deref(), None);
        assert_eq!(e.extract("İİİ The answer is (C)").as_deref(), Some("C"));
        assert_eq!(e.extract("ANSWER: d").as_deref(), None);
        assert_eq!(e.extract("FINAL ANSWER IS B").as_deref(), Some("B"));
    }

    #[test]
    fn number_reads_the_last_number_canonically() {
        let e = Extractor::Number;
        for (text, want) in [
            ("So 3 + 4 = 7", Some("7")),
            ("The total is 1,200.50 dollars.", Some("1200.5")),
            ("It drops to -12.", Some("-12")),
            ("#### 42.0", Some("42")),
            ("no digits", None),
            ("about .5 of it", Some("0.5")),
            ("-.25", Some("-0.25")),
        ] {
            assert_eq!(e.extract(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn json_and_exact() {
        let j: Extractor = "json:label".parse().unwrap();
        assert_eq!(
            j.extract(r#"{"label": "spam", "p": 0.9}"#).as_deref(),
            Some("spam")
        );
        assert_eq!(j.extract(r#"Sure: {"label": 3}"#).as_deref(), Some("3"));
        assert_eq!(j.extract("not json").as_deref(), None);
        let x = Extractor::Exact;
        assert_eq!(
            x.extract("  Paris\n is the  capital. ").as_deref(),
            Some("paris is the capital")
        );
        assert_eq!(x.extract("   ").as_deref(), None);
    }

    #[test]
    fn extractors_parse_and_print_round_trip() {
        for s in ["choice", "number", "exact", "json:answer", "semantic:0.9"] {
            let e: Extractor = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
        }
        assert!("json:".parse::<Extractor>().is_err());
        assert!("regex"
            .parse::<Extractor>()
            .unwrap_err()
            .contains("known: choice"));
    }

    #[test]
    fn semantic_takes_a_cosine_threshold_and_keeps_the_text_and_its_case() {
        let default: Extractor = "semantic".parse().unwrap();
        assert_eq!(
            default.semantic_threshold(),
            Some(DEFAULT_SEMANTIC_THRESHOLD)
        );
        let e: Extractor = " semantic:0.92 ".parse().unwrap();
        assert_eq!(e, Extractor::Semantic(920));
        assert_eq!(e.semantic_threshold(), Some(0.92));
        assert_eq!(Extractor::Exact.semantic_threshold(), None);
        for bad in [
            "semantic:0",
            "semantic:0.0004",
            "semantic:NaN",
            "semantic:1.5",
            "semantic:x",
            "semantic:",
            "semantic:-0.5",
        ] {
            let err = bad.parse::<Extractor>().unwrap_err();
            assert!(err.contains("cosine in (0, 1]"), "{bad}: {err}");
        }
        assert_eq!(
            e.extract("  The capital of\n France is  Paris. ")
                .as_deref(),
            Some("The capital of France is Paris.")
        );
        assert_eq!(e.extract(" \n "), None);
    }
}
