//! Test fixtures shared by the crate's unit tests.

use routewise_data::{Outcome, Record, Split};

/// Prompt `i` of task `t` (id `p{i}`, text `prompt {i}`, no reference) in `split`, with
/// `outcomes` indexed like the models.
pub(crate) fn record(i: usize, split: Split, outcomes: Vec<Option<Outcome>>) -> Record {
    Record {
        id: format!("p{i}"),
        task: "t".into(),
        prompt: format!("prompt {i}"),
        split,
        reference: None,
        outcomes,
    }
}
