//! Epsilon-greedy exploration around any decider, so that its logged decisions can be
//! used to evaluate other policies off-line.
//!
//! A deterministic router never tries the models it does not rank first, so its logs say
//! nothing about what another policy would have earned where the two disagree, and
//! inverse-propensity estimators have no support there. [`Exploring`] wraps a
//! [`Decide`]: with probability `epsilon` the choice is replaced by a model drawn
//! uniformly from the pool (moved to the front of the ranking; the rest keeps the
//! router's order as the fallback order), and the decision records the probability of
//! the model it chose: `1 - epsilon + epsilon / K` for the router's own choice,
//! `epsilon / K` for any other. The pool is the catalog, or under a budget policy the `K`
//! models whose predicted cost fits the budget (exploration never spends past a client's
//! budget; with none fitting, nothing is explored) (Sutton & Barto, "Reinforcement Learning", 2nd ed., 2018,
//! sec. 2.2; for the logging side of off-policy evaluation, Li et al., "Unbiased Offline
//! Evaluation of Contextual-bandit-based News Article Recommendation Algorithms", WSDM
//! 2011).
//!
//! The cost is bounded and known: on an `epsilon` share of requests the router's choice is
//! replaced by a uniformly drawn model, so the expected loss per request is at most
//! `epsilon` times the gap between the router's choice and the average model (in score and
//! in cost). With `epsilon = 0.02` that is 2% of traffic answered by a random model.
//!
//! Propensities are exact when the wrapped decider is deterministic (its own propensity
//! is 1). Over a stochastic one (the bandit's forced exploration, Thompson sampling) the
//! router's probability of the chosen model is needed: known for its own choice, it is
//! combined at once; otherwise the propensity is left unknown (`None`) with the mixing
//! weights in [`Decision::mix`], for the decision log's writer to combine with its
//! estimate.
//!
//! No I/O; randomness comes from the calling thread's generator.

use std::sync::Arc;

use rand::Rng;

use crate::decide::{Decide, Decision, DecisionReason, RouteRequest};
use crate::{Catalog, Policy};

/// A decider with epsilon-greedy exploration (see the module docs).
#[derive(Debug)]
pub struct Exploring {
    inner: Arc<dyn Decide>,
    epsilon: f64,
}

impl Exploring {
    /// Wraps `inner`; `epsilon` is clamped to `[0, 1]`.
    pub fn new(inner: Arc<dyn Decide>, epsilon: f64) -> Exploring {
        let epsilon = if epsilon.is_finite() {
            epsilon.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Exploring { inner, epsilon }
    }

    /// The exploration rate.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// Applies exploration to `d` with the draws `(u, slot)`: `u` uniform in `[0, 1)`
    /// decides whether to explore, `slot` picks the model among the ranking's entries.
    fn apply(&self, mut d: Decision, u: f64, slot: usize) -> Decision {
        let pool = self.pool(&d);
        let k = pool.len();
        if k == 0 || self.epsilon == 0.0 {
            return d;
        }
        let top = d.chosen;
        let share = self.epsilon / k as f64;
        let pick = if u < self.epsilon {
            pool[slot % k]
        } else {
            top
        };
        let add = if pool.contains(&pick) { share } else { 0.0 };
        let keep = 1.0 - self.epsilon;
        // The router chose `pick` with probability `p` (1 for its own choice when it is
        // deterministic, 0 for another model then).
        let inner = match d.propensity {
            Some(p) if pick == top => Some(p),
            Some(p) if p >= 1.0 => Some(0.0),
            _ => None,
        };
        d.propensity = inner.map(|p| keep * p + add);
        d.mix = d.propensity.is_none().then_some((keep, add));
        if pick != top {
            d.ranking.retain(|&m| m != pick);
            d.ranking.insert(0, pick);
            d.chosen = pick;
            d.explored = true;
            d.reason = DecisionReason::Explored;
        }
        d
    }
}

impl Exploring {
    /// The models exploration draws from: the ranking, or under a budget policy those
    /// whose predicted cost fits it (in ranking order).
    fn pool(&self, d: &Decision) -> Vec<usize> {
        match d.policy {
            Policy::BudgetUsd(b) => d
                .ranking
                .iter()
                .copied()
                .filter(|&m| d.costs.get(m).is_some_and(|&c| c <= b))
                .collect(),
            _ => d.ranking.clone(),
        }
    }
}

impl Decide for Exploring {
    fn decide(&self, req: &RouteRequest<'_>) -> Decision {
        let d = self.inner.decide(req);
        if self.epsilon == 0.0 {
            return d;
        }
        let mut rng = rand::thread_rng();
        let (u, slot) = (rng.gen::<f64>(), rng.gen::<u32>() as usize);
        self.apply(d, u, slot)
    }

    fn catalog(&self) -> &Catalog {
        self.inner.catalog()
    }

    fn describe(&self) -> String {
        format!(
            "{} (epsilon {} exploration)",
            self.inner.describe(),
            self.epsilon
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelInfo;

    #[derive(Debug)]
    struct Fixed(Catalog, Option<f64>);

    impl Decide for Fixed {
        fn decide(&self, req: &RouteRequest<'_>) -> Decision {
            let mut d = Decision::new(
                vec![2, 0, 1, 3],
                vec![0.5; 4],
                vec![0.1; 4],
                req.policy,
                DecisionReason::Predicted,
                None,
            );
            d.propensity = self.1;
            d
        }
        fn catalog(&self) -> &Catalog {
            &self.0
        }
        fn describe(&self) -> String {
            "fixed".into()
        }
    }

    fn catalog() -> Catalog {
        Catalog {
            models: ["a", "b", "c", "d"]
                .iter()
                .map(|n| ModelInfo::flat(n, 1.0))
                .collect(),
        }
    }

    fn ex(eps: f64, inner_p: Option<f64>) -> Exploring {
        Exploring::new(Arc::new(Fixed(catalog(), inner_p)), eps)
    }

    fn decision(e: &Exploring) -> Decision {
        e.inner.decide(&RouteRequest {
            prompt: "p",
            input_tokens: 1,
            policy: Policy::Lambda(0.0),
        })
    }

    #[test]
    fn propensities_are_those_of_epsilon_greedy() {
        let e = ex(0.2, Some(1.0));
        // Not exploring: the router's choice, with 1 - eps + eps / K.
        let d = e.apply(decision(&e), 0.5, 3);
        assert_eq!((d.chosen, d.explored), (2, false));
        assert!((d.propensity.unwrap() - 0.85).abs() < 1e-12);
        // Exploring onto another model: it goes first, the rest keeps its order.
        let d = e.apply(decision(&e), 0.1, 3);
        assert_eq!(d.chosen, 3);
        assert_eq!(d.ranking, vec![3, 2, 0, 1]);
        assert!(d.explored && d.reason == DecisionReason::Explored);
        assert!((d.propensity.unwrap() - 0.05).abs() < 1e-12);
        // Exploring onto the router's own choice: not an exploration.
        let d = e.apply(decision(&e), 0.1, 0);
        assert_eq!((d.chosen, d.explored), (2, false));
        assert!((d.propensity.unwrap() - 0.85).abs() < 1e-12);
    }

    #[test]
    fn a_stochastic_inner_rule_leaves_explored_propensities_to_combine_later() {
        let e = ex(0.2, Some(0.9));
        let d = e.apply(decision(&e), 0.5, 0);
        assert!((d.propensity.unwrap() - (0.8 * 0.9 + 0.05)).abs() < 1e-12);
        assert_eq!(d.mix, None);
        let d = e.apply(decision(&e), 0.1, 1);
        assert_eq!(d.propensity, None);
        assert_eq!(d.mix, Some((0.8, 0.05)));
        let e = ex(0.2, None);
        let d = e.apply(decision(&e), 0.5, 0);
        assert_eq!((d.propensity, d.mix), (None, Some((0.8, 0.05))));
    }

    #[test]
    fn under_a_budget_only_affordable_models_are_explored() {
        let e = ex(0.5, Some(1.0));
        let mut d = decision(&e);
        d.policy = Policy::BudgetUsd(0.1);
        d.costs = vec![0.05, 0.5, 0.08, 0.9]; // affordable: 0 and 2 (ranking 2, 0, 1, 3)
        for slot in 0..8 {
            let out = e.apply(d.clone(), 0.1, slot);
            assert!(out.chosen == 0 || out.chosen == 2, "{slot}: {}", out.chosen);
            let want = if out.chosen == 2 { 0.5 + 0.25 } else { 0.25 };
            assert!((out.propensity.unwrap() - want).abs() < 1e-12);
        }
        // Nothing fits: no exploration.
        d.costs = vec![1.0; 4];
        let out = e.apply(d.clone(), 0.1, 3);
        assert_eq!(
            (out.chosen, out.propensity, out.explored),
            (2, Some(1.0), false)
        );
    }

    #[test]
    fn the_empirical_choice_frequencies_match_the_propensities() {
        let e = ex(0.3, Some(1.0));
        let req = RouteRequest {
            prompt: "p",
            input_tokens: 1,
            policy: Policy::Lambda(0.0),
        };
        let n = 40_000;
        let mut counts = [0usize; 4];
        let mut logged = [0.0f64; 4];
        for _ in 0..n {
            let d = e.decide(&req);
            counts[d.chosen] += 1;
            logged[d.chosen] = d.propensity.unwrap();
        }
        for m in 0..4 {
            let freq = counts[m] as f64 / n as f64;
            assert!(
                (freq - logged[m]).abs() < 0.01,
                "model {m}: {freq} vs {}",
                logged[m]
            );
        }
        assert_eq!(ex(0.0, Some(1.0)).decide(&req).propensity, Some(1.0));
        assert!(
            (Exploring::new(Arc::new(Fixed(catalog(), None)), 7.0).epsilon() - 1.0).abs() < 1e-12
        );
    }
}
