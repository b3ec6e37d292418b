//! Conversation affinity: keep a multi-turn conversation on the model it used, unless
//! switching is worth the provider prompt cache it throws away.
//!
//! Providers bill a cached prompt prefix at a discount (OpenAI and Gemini about half
//! price or less, Anthropic a tenth). A router that re-decides every turn switches models
//! mid-conversation whenever the prediction for the newest turn moves, and each switch
//! pays the whole history again at the uncached price. The rule here is the one of the
//! issue that asked for it (users of LiteLLM, vLLM Semantic Router and Plano asked for the
//! same): stay, unless
//!
//! ```text
//! gain = utility(choice) - utility(previous model)        (the policy's utility)
//! cost = switch_margin + lambda * prompt tokens * (input price - cached input price)
//! gain > cost
//! ```
//!
//! where the prices are the previous model's (what staying saves) and `lambda` is the
//! policy's price of a dollar in score units (0 under a quality-first policy, where only
//! the margin holds a conversation). Pure logic: the gateway keeps the conversations'
//! models and the lab replays multi-turn traces.

use serde::Serialize;

/// The switch margin when none is configured: a switch must promise 2 points of score.
pub const DEFAULT_SWITCH_MARGIN: f64 = 0.02;

/// What the rule decided for one turn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "affinity", rename_all = "snake_case")]
pub enum Verdict {
    /// The conversation stays on its model.
    Stayed { gain: f64, cost: f64 },
    /// The router's choice was worth the switch.
    Switched { gain: f64, cost: f64 },
}

impl Verdict {
    /// `stayed` or `switched`, for the response header and the metric.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Stayed { .. } => "stayed",
            Verdict::Switched { .. } => "switched",
        }
    }

    /// `stayed: affinity (gain X <= cost Y)` or `switched: gain X > cost Y`, for the
    /// decision log.
    pub fn explain(&self) -> String {
        match self {
            Verdict::Stayed { gain, cost } => {
                format!("stayed: affinity (gain {gain:.4} <= cost {cost:.4})")
            }
            Verdict::Switched { gain, cost } => {
                format!("switched: gain {gain:.4} > cost {cost:.4}")
            }
        }
    }

    pub fn stayed(&self) -> bool {
        matches!(self, Verdict::Stayed { .. })
    }
}

/// The switch rule's inputs for one turn.
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    /// The policy's utility of the router's choice and of the conversation's model.
    pub choice_utility: f64,
    pub previous_utility: f64,
    /// The policy's lambda (score per USD); 0 for a policy without one.
    pub lambda: f64,
    /// The turn's prompt tokens (the history a switch pays again).
    pub prompt_tokens: u64,
    /// The previous model's input price and its cached input price, USD per token.
    pub input_price: f64,
    pub cached_input_price: f64,
}

/// Stay or switch (see the module docs). A non-finite utility of the previous model (it
/// is not a candidate any more) always switches.
pub fn decide(t: &Turn, switch_margin: f64) -> Verdict {
    let saving = (t.input_price - t.cached_input_price).max(0.0) * t.prompt_tokens as f64;
    let lambda = if t.lambda.is_finite() {
        t.lambda.max(0.0)
    } else {
        0.0
    };
    let cost = switch_margin.max(0.0) + lambda * saving;
    let gain = t.choice_utility - t.previous_utility;
    if !t.previous_utility.is_finite() || gain > cost {
        Verdict::Switched {
            gain: if gain.is_finite() {
                gain
            } else {
                f64::INFINITY
            },
            cost,
        }
    } else {
        Verdict::Stayed { gain, cost }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(gain: f64, lambda: f64, tokens: u64) -> Turn {
        Turn {
            choice_utility: 0.5 + gain,
            previous_utility: 0.5,
            lambda,
            prompt_tokens: tokens,
            input_price: 10e-6,
            cached_input_price: 5e-6,
        }
    }

    #[test]
    fn a_small_gain_stays_a_large_one_switches() {
        assert!(decide(&turn(0.01, 0.0, 1000), 0.02).stayed());
        assert!(!decide(&turn(0.03, 0.0, 1000), 0.02).stayed());
    }

    #[test]
    fn a_longer_history_costs_more_to_leave() {
        // lambda 100 per USD: 1,000 tokens save $0.005 = 0.5 score units at stake.
        let short = decide(&turn(0.3, 100.0, 100), 0.0);
        let long = decide(&turn(0.3, 100.0, 1000), 0.0);
        assert!(!short.stayed(), "{short:?}");
        assert!(long.stayed(), "{long:?}");
        assert_eq!(
            long.explain(),
            "stayed: affinity (gain 0.3000 <= cost 0.5000)"
        );
    }

    #[test]
    fn a_model_that_left_the_candidates_is_switched_from() {
        let mut t = turn(0.0, 0.0, 10);
        t.previous_utility = f64::NEG_INFINITY;
        let v = decide(&t, 1.0);
        assert!(!v.stayed());
        assert!(v.explain().starts_with("switched: gain inf"));
    }
}
