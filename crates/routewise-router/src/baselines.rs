//! Reference routers that ignore the prompt: the yardsticks every learned router must
//! beat. `best-single` and `cheapest` are what their names say under every policy: each
//! has a fixed ranking ([`crate::Router::fixed_ranking`]), so a lambda sweep gives one
//! operating point, never a mix of models.
//!
//! * `best-single`: the model with the highest mean training score, measured under the
//!   coverage rule of [`routewise_data::coverage`] (models covering >= 95% of the training
//!   prompts, on the prompts they all share), so a model evaluated on half the prompts is
//!   never "best" for its easier half. The fallback order is the other models by the
//!   same means; models under the coverage bar come last.
//! * `cheapest`: the model with the lowest expected cost on a typical (mean-length)
//!   training prompt; the rest follow by expected cost.
//! * `random`: per-prompt uniform random scores in `[0, 1)`, drawn from a SplitMix64
//!   stream seeded by a hash of the prompt's key (its id in `eval`, its text in the
//!   gateway, so the choice does not change with the featurizer) and the configured
//!   seed. The same prompt always gets the same model (reproducible evaluation and stable
//!   gateway behaviour), while different prompts are spread uniformly.

use routewise_data::coverage::Coverage;

use crate::{Catalog, TrainSet};

/// The `best-single` ranking scores: each comparable model's mean training score over
/// the common prompts (see the module docs); a model under the coverage bar gets its own
/// mean minus 1 (it ranks after every comparable model), one never observed gets -1.
pub fn mean_scores(train: &TrainSet) -> Vec<f64> {
    let cov = Coverage::of(&train.scores, train.n_models);
    (0..train.n_models)
        .map(|m| {
            let rows = (0..train.len()).filter(|&i| !cov.comparable[m] || cov.common[i]);
            let (sum, n) = rows
                .filter_map(|i| train.score(i, m))
                .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
            let mean = if n > 0 { sum / n as f64 } else { 0.0 };
            if cov.comparable[m] && n > 0 {
                mean
            } else {
                mean - 1.0
            }
        })
        .collect()
}

/// Models ordered by `scores`, highest first (ties: lower index first).
pub fn ranking(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// Score step between consecutive cost ranks in the `cheapest` baseline.
pub const CHEAPEST_EPSILON: f64 = 1e-9;

/// Scores of the `cheapest` baseline: `0.5 - CHEAPEST_EPSILON * rank`, where rank 0 is
/// the model with the lowest expected cost at the training set's mean input length (its
/// [`ranking`] is the cost order).
pub fn cheapest(catalog: &Catalog, train: &TrainSet) -> Vec<f64> {
    let n = catalog.len();
    let mean_in = if train.is_empty() {
        0.0
    } else {
        train
            .input_tokens
            .iter()
            .map(|&t| f64::from(t))
            .sum::<f64>()
            / train.len() as f64
    };
    let tokens = mean_in.round().clamp(0.0, f64::from(u32::MAX)) as u32;
    let mut costs = vec![0.0; n];
    catalog.expected_costs(tokens, &mut costs);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| costs[a].total_cmp(&costs[b]).then(a.cmp(&b)));
    let mut scores = vec![0.0; n];
    for (rank, &m) in order.iter().enumerate() {
        scores[m] = 0.5 - CHEAPEST_EPSILON * rank as f64;
    }
    scores
}

/// Writes the `random` baseline's scores for the prompt identified by `key`.
pub fn random_scores(key: &[u8], seed: u64, out: &mut [f64]) {
    let mut h = seed ^ 0x2545_f491_4f6c_dd1d;
    for &b in key {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    let mut state = splitmix64(h ^ key.len() as u64);
    for o in out.iter_mut() {
        state = splitmix64(state);
        // 53 random mantissa bits -> uniform in [0, 1).
        *o = (state >> 11) as f64 / (1u64 << 53) as f64;
    }
}

/// A prompt key from its features, for callers that have no id or text.
pub fn feature_bytes(features: &[f32]) -> Vec<u8> {
    features.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// SplitMix64's output function: a well-mixed 64-bit value from `x` (seeded draws).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelInfo;

    fn train(n_models: usize, scores: &[f64]) -> TrainSet {
        let n = scores.len() / n_models;
        TrainSet {
            features: vec![0.0; n],
            dim: 1,
            scores: scores.to_vec(),
            costs: vec![0.0; scores.len()],
            input_tokens: vec![100; n],
            n_models,
        }
    }

    #[test]
    fn mean_scores_rank_half_covered_and_unseen_models_last() {
        // 2 prompts: model 1 covers one of them (perfectly), model 2 none.
        let t = train(3, &[1.0, f64::NAN, f64::NAN, 0.0, 1.0, f64::NAN]);
        assert_eq!(mean_scores(&t), vec![0.5, 0.0, -1.0]);
        assert_eq!(ranking(&mean_scores(&t)), vec![0, 1, 2]);
    }

    #[test]
    fn cheapest_ranks_lowest_expected_cost_first_under_every_policy() {
        let model = |name: &str, p: f64| ModelInfo {
            name: name.into(),
            input_per_mtok: p,
            output_per_mtok: p,
            mean_output_tokens: 10.0,
        };
        let catalog = Catalog {
            models: vec![model("a", 3.0), model("b", 1.0), model("c", 2.0)],
        };
        let t = train(3, &[1.0, 0.0, 0.5]);
        let s = cheapest(&catalog, &t);
        let mut costs = vec![0.0; 3];
        catalog.expected_costs(100, &mut costs);
        for p in [
            crate::Policy::Lambda(0.0),
            crate::Policy::Lambda(5.0),
            crate::Policy::BudgetUsd(1.0),
            crate::Policy::BudgetUsd(0.0),
        ] {
            assert_eq!(p.rank(&s, &costs), vec![1, 2, 0], "{p:?}");
        }
        assert_eq!(ranking(&s), vec![1, 2, 0]);
    }

    #[test]
    fn random_is_deterministic_per_prompt_and_uniformish() {
        let mut a = vec![0.0; 4];
        let mut b = vec![0.0; 4];
        random_scores(b"prompt-1", 7, &mut a);
        random_scores(b"prompt-1", 7, &mut b);
        assert_eq!(a, b);
        random_scores(b"prompt-2", 7, &mut b);
        assert_ne!(a, b);
        let mut wins = [0usize; 4];
        let mut out = vec![0.0; 4];
        for i in 0..4000 {
            random_scores(format!("p{i}").as_bytes(), 1, &mut out);
            assert!(out.iter().all(|x| (0.0..1.0).contains(x)));
            let best = (0..4).max_by(|&x, &y| out[x].total_cmp(&out[y])).unwrap();
            wins[best] += 1;
        }
        assert!(wins.iter().all(|&w| (800..1200).contains(&w)), "{wins:?}");
    }
}
