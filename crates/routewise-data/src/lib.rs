//! Routing datasets: what a router learns from.
//!
//! A [`Dataset`] is a list of prompts ([`Record`]s); each prompt carries the outcome
//! ([`Outcome`]: score in `[0, 1]`, cost in USD, token counts) of every model that was
//! evaluated on it. Models are interned: `Dataset::models` names them and each record's
//! `outcomes` vector is indexed by model position, `None` where that model has no result
//! for that prompt (a missing model is normal; routers and metrics skip it).
//!
//! Two optional fields support grading without a judge and answer-checking cascades: each
//! outcome's [`Answer`] (the model's extracted final answer, interned in
//! [`Dataset::answers`]) and each record's `reference` (the gold answer). A reader that
//! needs them checks for them; none is ever guessed.
//!
//! Loaders live in [`jsonl`] (canonical routing JSONL, see `../shared/data/README.md`) and
//! [`csv_wide`] (RouterBench's wide CSV). Both validate everything before returning, so a
//! dataset is never half-loaded; every error names `file:line` and the field. What a
//! loader tolerates but a user should know (unknown top-level keys) is collected in
//! [`Dataset::warnings`], once per file.

pub mod coverage;
pub mod csv_wide;
mod error;
pub mod jsonl;
pub mod probes;
pub mod split;

use std::path::Path;

pub use error::DataError;
pub use split::Split;

/// Index of an answer string in [`Dataset::answers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnswerId(pub u32);

/// A model's extracted final answer on one prompt (the optional `answer` field).
///
/// Three states, because the data distinguishes them: the field is absent (the task is
/// not closed-form, or the source records no answers), `null` (the model answered but no
/// final answer could be read from its output), or an answer string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Answer {
    /// No `answer` field.
    #[default]
    Absent,
    /// `"answer": null`: nothing could be read from the model's output.
    Unreadable,
    /// An answer, interned in [`Dataset::answers`]: equal ids are equal answers.
    Given(AnswerId),
}

/// One model's result on one prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Quality in `[0, 1]` (1 = correct).
    pub score: f64,
    /// What this answer cost, in USD (finite, >= 0).
    pub cost_usd: f64,
    /// Prompt tokens (estimate when the source gives none).
    pub input_tokens: u32,
    /// Completion tokens (estimate when the source gives none).
    pub output_tokens: u32,
    /// The model's extracted final answer, when the data records it.
    pub answer: Answer,
}

/// One prompt and the outcomes of the models evaluated on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub task: String,
    pub prompt: String,
    pub split: Split,
    /// The gold answer (the optional `reference` field), normalised like the answers.
    pub reference: Option<String>,
    /// Indexed like [`Dataset::models`]; `None` where the model was not evaluated.
    pub outcomes: Vec<Option<Outcome>>,
}

impl Record {
    /// Input tokens of this prompt: the largest count any model reported, else chars / 4.
    pub fn input_tokens(&self) -> u32 {
        self.outcomes
            .iter()
            .flatten()
            .map(|o| o.input_tokens)
            .max()
            .unwrap_or_else(|| estimate_tokens(&self.prompt))
    }

    /// Whether some model's `answer` field is recorded (a value or `null`): the prompt's
    /// task is closed-form, so answers can be compared (cascades check them).
    pub fn has_answers(&self) -> bool {
        self.outcomes
            .iter()
            .flatten()
            .any(|o| o.answer != Answer::Absent)
    }
}

/// Token estimate used across routewise where no tokenizer count exists: chars / 4,
/// at least 1 (the same rule the shared data uses).
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count() as u64;
    (chars.div_ceil(4)).clamp(1, u32::MAX as u64) as u32
}

/// A validated routing dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Display name (the file name it came from).
    pub name: String,
    /// Model names, in first-seen order.
    pub models: Vec<String>,
    pub records: Vec<Record>,
    /// Every distinct answer string, indexed by [`AnswerId`].
    pub answers: Vec<String>,
    /// What the loader tolerated but reports (e.g. unknown top-level keys), one line each.
    pub warnings: Vec<String>,
}

impl Dataset {
    /// Loads a dataset, choosing the parser by extension: `.csv` is RouterBench's wide
    /// CSV, anything else canonical JSONL.
    pub fn load(path: &Path) -> Result<Dataset, DataError> {
        let is_csv = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if is_csv {
            csv_wide::load(path)
        } else {
            jsonl::load(path)
        }
    }

    /// The text of an answer; `None` for an absent or unreadable one.
    pub fn answer_text(&self, answer: Answer) -> Option<&str> {
        match answer {
            Answer::Given(AnswerId(i)) => self.answers.get(i as usize).map(String::as_str),
            Answer::Absent | Answer::Unreadable => None,
        }
    }

    /// Whether `outcome`'s answer matches `record`'s reference: `None` when the record has
    /// no reference or the outcome no `answer` field (an unreadable answer is wrong).
    pub fn answer_matches_reference(&self, record: &Record, outcome: &Outcome) -> Option<bool> {
        let reference = record.reference.as_deref()?;
        match outcome.answer {
            Answer::Absent => None,
            Answer::Unreadable => Some(false),
            given => Some(self.answer_text(given) == Some(reference)),
        }
    }

    pub fn train(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| r.split == Split::Train)
    }

    pub fn test(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| r.split == Split::Test)
    }

    /// Keeps the models marked `true` (indexed like [`Dataset::models`]), with their
    /// outcomes; prompts left with no outcome are dropped.
    pub fn keep_models(&mut self, keep: &[bool]) {
        fn retain_marked<T>(v: &mut Vec<T>, keep: &[bool]) {
            let mut marks = keep.iter();
            v.retain(|_| marks.next().copied().unwrap_or(true));
        }
        retain_marked(&mut self.models, keep);
        for r in &mut self.records {
            retain_marked(&mut r.outcomes, keep);
        }
        self.records
            .retain(|r| r.outcomes.iter().any(Option::is_some));
    }

    /// Keeps only the first `n` records of each split (for quick tests and demos).
    pub fn truncate_per_split(&mut self, n: usize) {
        let (mut train, mut test) = (0usize, 0usize);
        self.records.retain(|r| {
            let c = match r.split {
                Split::Train => &mut train,
                Split::Test => &mut test,
            };
            *c += 1;
            *c <= n
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeping_models_drops_their_outcomes_and_prompts_left_empty() {
        let text = r#"{"id": "a", "task": "t", "prompt": "p", "split": "train", "models": {"x": {"score": 1, "cost_usd": 0.1}, "y": {"score": 0, "cost_usd": 0.2}, "z": {"score": 1, "cost_usd": 0.3}}}
{"id": "b", "task": "t", "prompt": "q", "split": "test", "models": {"y": {"score": 1, "cost_usd": 0.2}}}
"#;
        let mut d = crate::jsonl::parse(text.as_bytes(), std::path::Path::new("t.jsonl")).unwrap();
        assert_eq!(d.models, ["x", "y", "z"]);
        d.keep_models(&[true, false, true]);
        assert_eq!(d.models, ["x", "z"]);
        assert_eq!(d.records.len(), 1, "prompt b had only y");
        let scores: Vec<f64> = d.records[0]
            .outcomes
            .iter()
            .flatten()
            .map(|o| o.score)
            .collect();
        assert_eq!(scores, [1.0, 1.0]);
        assert_eq!(d.records[0].outcomes.len(), 2);
    }
}
