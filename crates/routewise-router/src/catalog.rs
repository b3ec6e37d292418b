//! Model catalog: what each model costs.
//!
//! Expected cost of a prompt for model `m` =
//! `input_tokens * input_per_mtok / 1e6 + mean_output_tokens[m] * output_per_mtok / 1e6`.
//! Prices are fitted from the training outcomes (least squares of the observed cost on
//! input and output tokens, non-negative, falling back to one blended per-token price when
//! the two cannot be separated) and can be overridden by configured list prices.
//! We predict cost this way, not from neighbours' observed costs, because the gateway
//! knows real prices and the prompt's real length, and the estimate is then exact up to
//! the output length.

use serde::{Deserialize, Serialize};

/// One model's prices and typical output length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// USD per million prompt tokens.
    pub input_per_mtok: f64,
    /// USD per million completion tokens.
    pub output_per_mtok: f64,
    /// Mean completion tokens observed in training.
    pub mean_output_tokens: f64,
}

impl ModelInfo {
    /// Expected USD cost of a prompt of `input_tokens` tokens.
    pub fn expected_cost(&self, input_tokens: u32) -> f64 {
        (f64::from(input_tokens) * self.input_per_mtok
            + self.mean_output_tokens * self.output_per_mtok)
            / 1e6
    }
}

/// All models a router knows, in router order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub models: Vec<ModelInfo>,
}

impl Catalog {
    pub fn len(&self) -> usize {
        self.models.len()
    }
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
    pub fn index(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name == name)
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(|m| m.name.as_str())
    }
    /// Writes every model's expected cost for a prompt of `input_tokens` into `out`.
    pub fn expected_costs(&self, input_tokens: u32, out: &mut [f64]) {
        for (o, m) in out.iter_mut().zip(&self.models) {
            *o = m.expected_cost(input_tokens);
        }
    }
}
