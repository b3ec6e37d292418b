//! Cascades: call cheap models first, accept an answer only when it looks right, and
//! escalate to the router's choice otherwise. Pure decision logic (no I/O, no clock):
//! the lab simulates it on recorded answers (`routewise-eval`'s `cascade` module) and a
//! gateway stage would run the same functions on live answers.
//!
//! Two families (issue 13):
//! * **Confidence chain** (FrugalGPT: Chen, Zaharia & Zou, "FrugalGPT: How to Use Large
//!   Language Models While Reducing Cost and Improving Performance", 2023): the tier's
//!   models are called one at a time, cheapest first. After each call an [`Acceptor`]
//!   estimates the probability that the answer the cascade would return now is right,
//!   from the router's predicted score for the model that gave it and from the agreement
//!   among the answers seen so far (the answer-consistency signal of Yue et al., "Large
//!   Language Model Cascades with Mixture of Thoughts Representations for Cost-efficient
//!   Reasoning", ICLR 2024). The answer is accepted when that probability reaches the
//!   threshold; after the last tier model, the request escalates.
//! * **Agreement tier** (the MoT cascade of Yue et al.): every tier model is called (in
//!   parallel when serving); the plurality answer is accepted when at least `min_agree`
//!   models gave it, else the request escalates.
//!
//! Escalation is the router's ranking under the policy (CARROT's lambda rule); when its
//! choice is a model already called, that answer is used at no further cost.
//!
//! Answers are compared as keys ([`AnswerKey`]): an extracted option letter, number or
//! normalised text, interned by the caller; `None` is an answer that could not be read,
//! which agrees with nothing.

use serde::{Deserialize, Serialize};

use crate::linear::{cholesky, cholesky_solve};

/// An extracted answer, interned: equal keys are equal answers.
pub type AnswerKey = u32;

/// One tier call: which model answered, what it answered, and the router's predicted
/// score for that model on this prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Call {
    pub model: usize,
    pub answer: Option<AnswerKey>,
    pub predicted: f64,
}

/// The answer a cascade would return after some calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plurality {
    /// Index (into the calls) of the call whose response is returned.
    pub pick: usize,
    /// How many calls gave that answer (0 when no answer was readable).
    pub votes: usize,
}

/// The plurality among the readable answers of `calls` (ties: the larger sum of
/// predicted scores, then the earlier answer); the returned response is the one of the
/// group's model with the highest predicted score. With no readable answer, the last
/// call's response (0 votes). `calls` must not be empty.
pub fn plurality(calls: &[Call]) -> Plurality {
    let mut best: Option<(usize, f64, usize)> = None; // (votes, predicted sum, pick)
    for (i, c) in calls.iter().enumerate() {
        let Some(a) = c.answer else { continue };
        if calls[..i].iter().any(|p| p.answer == Some(a)) {
            continue; // this group was counted at its first member
        }
        let (mut votes, mut sum, mut pick) = (0, 0.0, i);
        for (j, o) in calls.iter().enumerate().skip(i) {
            if o.answer == Some(a) {
                votes += 1;
                sum += o.predicted;
                if o.predicted > calls[pick].predicted {
                    pick = j;
                }
            }
        }
        let better = match best {
            None => true,
            Some((v, s, _)) => votes > v || (votes == v && sum > s),
        };
        if better {
            best = Some((votes, sum, pick));
        }
    }
    match best {
        Some((votes, _, pick)) => Plurality { pick, votes },
        None => Plurality {
            pick: calls.len().saturating_sub(1),
            votes: 0,
        },
    }
}

/// Number of acceptor features.
pub const N_FEATURES: usize = 6;

/// The acceptor's inputs after `calls` (see [`features`]).
pub type Features = [f64; N_FEATURES];

/// The acceptor's features after `calls`, and the plurality they describe:
/// `[1, predicted score of the returned response's model, whether >= 2 calls agree,
/// votes / calls, whether the answer is unreadable, best predicted score of any model
/// minus the returned model's]`. `best_predicted` is the router's highest predicted score
/// on the prompt (what escalating could gain).
pub fn features(calls: &[Call], best_predicted: f64) -> (Features, Plurality) {
    let v = plurality(calls);
    let p = calls.get(v.pick).map_or(0.0, |c| c.predicted);
    let n = calls.len().max(1) as f64;
    let x = [
        1.0,
        p,
        f64::from(u8::from(v.votes >= 2)),
        v.votes as f64 / n,
        f64::from(u8::from(v.votes == 0)),
        (best_predicted - p).max(0.0),
    ];
    (x, v)
}

/// One training example of the acceptor: after `step + 1` calls, features `x`, the
/// realised score of the response the cascade would return (`y`) and that of the
/// escalation's answer (`y_escalate`), both in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Example {
    pub step: usize,
    pub x: Features,
    pub y: f64,
    pub y_escalate: f64,
}

/// Two logistic models per chain step, on the same [`features`]: the probability that
/// the response the cascade would return now is right (`weights`), and that the
/// escalation's answer would be (`escalate`): on a prompt where both are likely wrong,
/// escalating buys nothing. Steps past the last fitted one use the last model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Acceptor {
    pub weights: Vec<Features>,
    #[serde(default)]
    pub escalate: Vec<Features>,
}

/// Ridge penalty of the acceptor's logistic fits (on every weight but the intercept).
const ACCEPTOR_L2: f64 = 1.0;

impl Acceptor {
    /// Fits one logistic regression per step (`steps` of them) on `examples` by Newton's
    /// method (soft labels allowed); a step without examples copies the previous one's
    /// weights (or predicts the mean label).
    pub fn fit(examples: &[Example], steps: usize) -> Acceptor {
        let per_step = |label: fn(&Example) -> f64| {
            let mean = if examples.is_empty() {
                0.5
            } else {
                examples.iter().map(label).sum::<f64>() / examples.len() as f64
            };
            let mut weights: Vec<Features> = Vec::with_capacity(steps);
            for s in 0..steps.max(1) {
                let ex: Vec<(Features, f64)> = examples
                    .iter()
                    .filter(|e| e.step == s)
                    .map(|e| (e.x, label(e)))
                    .collect();
                let w = if ex.is_empty() {
                    weights.last().copied().unwrap_or_else(|| {
                        let mut w = [0.0; N_FEATURES];
                        w[0] = logit(mean);
                        w
                    })
                } else {
                    fit_logistic(&ex)
                };
                weights.push(w);
            }
            weights
        };
        Acceptor {
            weights: per_step(|e| e.y),
            escalate: per_step(|e| e.y_escalate),
        }
    }

    /// The estimated probability that the response is right after `step + 1` calls.
    pub fn prob(&self, step: usize, x: &Features) -> f64 {
        predict(&self.weights, step, x)
    }

    /// The estimated probability that the escalation's answer is right, seen after
    /// `step + 1` calls.
    pub fn prob_escalate(&self, step: usize, x: &Features) -> f64 {
        predict(&self.escalate, step, x)
    }
}

fn predict(weights: &[Features], step: usize, x: &Features) -> f64 {
    let Some(w) = weights.get(step).or(weights.last()) else {
        return 0.5;
    };
    sigmoid(w.iter().zip(x).map(|(a, b)| a * b).sum())
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// Newton's method for the ridge-penalised logistic log-loss on `(x, label)` pairs.
fn fit_logistic(ex: &[(Features, f64)]) -> Features {
    const D: usize = N_FEATURES;
    let mut w = [0.0; D];
    let mean = ex.iter().map(|e| e.1).sum::<f64>() / ex.len() as f64;
    w[0] = logit(mean);
    for _ in 0..50 {
        let mut g = [0.0; D];
        let mut h = vec![0.0; D * D];
        for (x, y) in ex {
            let p = sigmoid(w.iter().zip(x).map(|(a, b)| a * b).sum());
            let r = p - y.clamp(0.0, 1.0);
            let v = (p * (1.0 - p)).max(1e-9);
            for i in 0..D {
                g[i] += r * x[i];
                for j in 0..=i {
                    h[i * D + j] += v * x[i] * x[j];
                }
            }
        }
        for i in 1..D {
            g[i] += ACCEPTOR_L2 * w[i];
            h[i * D + i] += ACCEPTOR_L2;
        }
        h[0] += 1e-9;
        let Some(l) = cholesky(&h, D) else { break };
        let step = cholesky_solve(&l, D, g.to_vec());
        // A diverging step keeps the last finite weights.
        let moved = step.iter().fold(0.0f64, |m, si| m.max(si.abs()));
        if !moved.is_finite() {
            break;
        }
        for (wi, si) in w.iter_mut().zip(&step) {
            *wi -= si;
        }
        if moved < 1e-9 {
            break;
        }
    }
    w
}

/// The confidence an upstream's token log-probabilities give a completion: the geometric
/// mean of its tokens' probabilities, `exp(mean logprob)`, in `[0, 1]` (length-normalised
/// sequence likelihood, the usual confidence score of a generated answer; a token the
/// model gave probability 0, logprob `-inf`, makes it 0). `None` when there is no token,
/// or a logprob is NaN or positive (not a log-probability).
pub fn token_confidence(logprobs: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for l in logprobs {
        if l.is_nan() || l > 0.0 {
            return None;
        }
        sum += l;
        n += 1;
    }
    (n > 0).then(|| (sum / n as f64).exp())
}

/// Checks a minimum token confidence (a probability threshold): it must lie in (0, 1].
pub fn check_min_confidence(c: f64) -> Result<(), &'static str> {
    if c > 0.0 && c <= 1.0 {
        Ok(())
    } else {
        Err("must lie in (0, 1]: a probability the answer's tokens reach on average")
    }
}

/// How a cascade accepts an answer before escalating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "kebab-case")]
pub enum CascadeRule {
    /// Call the tier one at a time; accept after call `k` (0-based) when the acceptor's
    /// probability reaches `threshold - step_discount * k` (above 1: never, i.e. always
    /// escalate after the tier). A positive discount accepts more readily later in the
    /// chain, where going on costs more (only the escalation is left).
    Chain {
        threshold: f64,
        #[serde(default)]
        step_discount: f64,
    },
    /// Call the tier one at a time; accept when the answer in hand is predicted nearly as
    /// likely right as the escalation's, net of what escalating costs (CARROT's lambda
    /// rule between the two): `P(right now) + margin >= P(escalation right) -
    /// escalation_penalty`, where the penalty is lambda times the escalation's expected
    /// cost.
    Gain { margin: f64 },
    /// Call the whole tier; accept the plurality answer when at least `min_agree` gave it.
    Agreement { min_agree: usize },
}

/// What the next-step rule needs to know about the prompt besides the calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Context {
    /// The router's highest predicted score on the prompt.
    pub best_predicted: f64,
    /// Lambda times the escalation target's expected cost ([`CascadeRule::Gain`]).
    pub escalation_penalty: f64,
}

impl CascadeRule {
    /// Whether a chain accepts after `step + 1` calls, given the acceptor's two
    /// probabilities `p` (the answer in hand) and `p_escalate`.
    pub fn accepts(&self, step: usize, p: f64, p_escalate: f64, escalation_penalty: f64) -> bool {
        match *self {
            CascadeRule::Chain {
                threshold,
                step_discount,
            } => p >= threshold - step_discount * step as f64,
            CascadeRule::Gain { margin } => p + margin >= p_escalate - escalation_penalty,
            CascadeRule::Agreement { .. } => false,
        }
    }
}

/// What the cascade does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Call this tier model.
    Call(usize),
    /// Return the response of this call (an index into the calls made).
    Accept(usize),
    /// Ask the router's choice.
    Escalate,
}

/// A configured cascade: the tier (cheapest first), the rule and, for a chain, its
/// acceptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cascade {
    /// Tier models (catalog indices), in call order.
    pub tier: Vec<usize>,
    pub rule: CascadeRule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptor: Option<Acceptor>,
}

impl Cascade {
    /// The next step after `calls` (the tier models already asked, in order; a model
    /// that could not be asked is simply absent) out of `attempted` tier positions.
    pub fn next(&self, calls: &[Call], attempted: usize, cx: Context) -> Next {
        match &self.rule {
            rule @ (CascadeRule::Chain { .. } | CascadeRule::Gain { .. }) => {
                if let (Some(acceptor), false) = (&self.acceptor, calls.is_empty()) {
                    let (x, v) = features(calls, cx.best_predicted);
                    let step = calls.len() - 1;
                    let (p, pe) = (acceptor.prob(step, &x), acceptor.prob_escalate(step, &x));
                    if rule.accepts(step, p, pe, cx.escalation_penalty) {
                        return Next::Accept(v.pick);
                    }
                }
                match self.tier.get(attempted) {
                    Some(&m) => Next::Call(m),
                    None => Next::Escalate,
                }
            }
            CascadeRule::Agreement { min_agree } => {
                if let Some(&m) = self.tier.get(attempted) {
                    return Next::Call(m);
                }
                let v = plurality(calls);
                if !calls.is_empty() && v.votes >= (*min_agree).max(1) {
                    Next::Accept(v.pick)
                } else {
                    Next::Escalate
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_confidence_is_the_geometric_mean_probability() {
        let c = token_confidence([0.5f64.ln(), 0.125f64.ln()]).unwrap();
        assert!((c - 0.25).abs() < 1e-12, "{c}");
        assert_eq!(token_confidence([0.0, 0.0]), Some(1.0));
        assert_eq!(token_confidence([0.0, f64::NEG_INFINITY]), Some(0.0));
        assert_eq!(token_confidence(std::iter::empty()), None);
        assert_eq!(token_confidence([-0.1, f64::NAN]), None);
        assert_eq!(token_confidence([-0.1, 0.3]), None, "not a log-probability");
        assert!(check_min_confidence(0.9).is_ok() && check_min_confidence(1.0).is_ok());
        for bad in [0.0, -0.5, 1.01, f64::NAN, f64::INFINITY] {
            assert!(check_min_confidence(bad).is_err(), "{bad}");
        }
    }

    fn call(model: usize, answer: Option<u32>, predicted: f64) -> Call {
        Call {
            model,
            answer,
            predicted,
        }
    }

    #[test]
    fn plurality_counts_votes_and_breaks_ties_by_predicted_score() {
        let calls = [
            call(0, Some(1), 0.4),
            call(1, Some(2), 0.9),
            call(2, Some(1), 0.6),
        ];
        assert_eq!(plurality(&calls), Plurality { pick: 2, votes: 2 });
        // 1 vs 1: the answer whose model is predicted better wins.
        let tie = [call(0, Some(1), 0.4), call(1, Some(2), 0.7)];
        assert_eq!(plurality(&tie), Plurality { pick: 1, votes: 1 });
        // Unreadable answers agree with nothing.
        let none = [call(0, None, 0.9), call(1, None, 0.8)];
        assert_eq!(plurality(&none), Plurality { pick: 1, votes: 0 });
        let mixed = [call(0, None, 0.9), call(1, Some(3), 0.2)];
        assert_eq!(plurality(&mixed), Plurality { pick: 1, votes: 1 });
    }

    #[test]
    fn features_describe_the_returned_response() {
        let calls = [call(0, Some(1), 0.5), call(1, Some(1), 0.7)];
        let (x, v) = features(&calls, 0.9);
        assert_eq!(v.pick, 1);
        assert_eq!(x, [1.0, 0.7, 1.0, 1.0, 0.0, 0.9 - 0.7]);
    }

    #[test]
    fn the_acceptor_learns_that_agreement_means_right() {
        // Step 1 (two calls): agreeing answers are right 80% of the time, disagreeing
        // ones 20%.
        let mut ex = Vec::new();
        for i in 0..1000 {
            let agree = i % 2 == 0;
            let right = if agree { i % 10 != 0 } else { i % 10 < 3 };
            let x = [
                1.0,
                0.5,
                f64::from(u8::from(agree)),
                if agree { 1.0 } else { 0.5 },
                0.0,
                0.2,
            ];
            ex.push(Example {
                step: 1,
                x,
                y: f64::from(u8::from(right)),
                y_escalate: 0.9,
            });
        }
        let a = Acceptor::fit(&ex, 2);
        let p_agree = a.prob(1, &[1.0, 0.5, 1.0, 1.0, 0.0, 0.2]);
        let p_split = a.prob(1, &[1.0, 0.5, 0.0, 0.5, 0.0, 0.2]);
        assert!((p_agree - 0.8).abs() < 0.03, "{p_agree}");
        assert!((p_split - 0.2).abs() < 0.03, "{p_split}");
        // Step 0 had no examples: it predicts the mean label.
        let p0 = a.prob(0, &[1.0, 0.5, 0.0, 1.0, 0.0, 0.2]);
        assert!((p0 - 0.5).abs() < 0.01, "{p0}");
        let pe = a.prob_escalate(1, &[1.0, 0.5, 1.0, 1.0, 0.0, 0.2]);
        assert!((pe - 0.9).abs() < 0.01, "{pe}");
    }

    #[test]
    fn a_chain_calls_in_order_accepts_above_the_threshold_and_escalates_at_the_end() {
        let mut w = [0.0; N_FEATURES];
        w[2] = 10.0; // accept when two agree
        w[0] = -5.0;
        let c = Cascade {
            tier: vec![3, 1],
            rule: CascadeRule::Chain {
                threshold: 0.9,
                step_discount: 0.0,
            },
            acceptor: Some(Acceptor {
                weights: vec![w],
                escalate: vec![[0.0; N_FEATURES]],
            }),
        };
        let cx = Context {
            best_predicted: 0.9,
            escalation_penalty: 0.0,
        };
        assert_eq!(c.next(&[], 0, cx), Next::Call(3));
        let one = [call(3, Some(1), 0.5)];
        assert_eq!(c.next(&one, 1, cx), Next::Call(1));
        let agree = [call(3, Some(1), 0.5), call(1, Some(1), 0.6)];
        assert_eq!(c.next(&agree, 2, cx), Next::Accept(1));
        let split = [call(3, Some(1), 0.5), call(1, Some(2), 0.6)];
        assert_eq!(c.next(&split, 2, cx), Next::Escalate);
        // Model 3 could not be asked: the chain goes on with what it has.
        assert_eq!(c.next(&[], 1, cx), Next::Call(1));
        // The gain rule: the escalation is predicted right half the time (logit 0), the
        // split answer in hand ~0.7% (logit -5): escalate unless escalating costs more
        // than the gap.
        let mut gain = c.clone();
        gain.rule = CascadeRule::Gain { margin: 0.0 };
        assert_eq!(gain.next(&split, 2, cx), Next::Escalate);
        let dear = Context {
            escalation_penalty: 0.6,
            ..cx
        };
        assert_eq!(gain.next(&split, 2, dear), Next::Accept(1));
    }

    #[test]
    fn an_agreement_tier_calls_everyone_then_counts() {
        let c = Cascade {
            tier: vec![0, 1, 2],
            rule: CascadeRule::Agreement { min_agree: 2 },
            acceptor: None,
        };
        let cx = Context {
            best_predicted: 0.9,
            escalation_penalty: 0.0,
        };
        assert_eq!(c.next(&[call(0, Some(1), 0.5)], 1, cx), Next::Call(1));
        let two = [
            call(0, Some(1), 0.5),
            call(1, Some(2), 0.5),
            call(2, Some(1), 0.4),
        ];
        assert_eq!(c.next(&two, 3, cx), Next::Accept(0));
        let none = [
            call(0, Some(1), 0.5),
            call(1, Some(2), 0.5),
            call(2, None, 0.4),
        ];
        assert_eq!(c.next(&none, 3, cx), Next::Escalate);
    }
}
