//! Selection policies: predictions (score, cost per model) -> a ranking of models.
//!
//! * `Lambda`: CARROT (Somerstep et al., 2025): maximise `score - lambda * cost_usd`;
//!   `lambda = 0` is quality first (ties go to the cheaper model).
//! * `Budget`: the best predicted score among models whose predicted cost fits the
//!   per-request budget; models over budget follow, cheapest first.
//! * `Threshold`: RouteLLM (Ong et al., 2024): for a strong/weak pair, the strong model
//!   when its predicted win `score[strong] - score[weak]` exceeds the threshold.
//!
//! The ranking holds every model, so the gateway can fall back down it.

use serde::{Deserialize, Serialize};

/// How predictions become a choice.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    Lambda(f64),
    BudgetUsd(f64),
    Threshold {
        strong: usize,
        weak: usize,
        threshold: f64,
    },
}

impl Policy {
    /// Orders all models by preference under this policy (best first).
    pub fn rank(&self, scores: &[f64], costs: &[f64]) -> Vec<usize> {
        let mut idx = Vec::with_capacity(scores.len());
        self.rank_into(scores, costs, &mut idx);
        idx
    }

    /// Like [`Policy::rank`], reusing `idx`'s allocation.
    pub fn rank_into(&self, scores: &[f64], costs: &[f64], idx: &mut Vec<usize>) {
        idx.clear();
        idx.extend(0..scores.len());
        match *self {
            Policy::Lambda(lambda) => {
                let util = |i: usize| scores[i] - lambda * costs[i];
                idx.sort_by(|&a, &b| {
                    util(b)
                        .total_cmp(&util(a))
                        .then(costs[a].total_cmp(&costs[b]))
                        .then(a.cmp(&b))
                });
            }
            Policy::BudgetUsd(budget) => {
                idx.sort_by(|&a, &b| {
                    let (fa, fb) = (costs[a] <= budget, costs[b] <= budget);
                    fb.cmp(&fa).then_with(|| {
                        if fa {
                            scores[b]
                                .total_cmp(&scores[a])
                                .then(costs[a].total_cmp(&costs[b]))
                        } else {
                            costs[a].total_cmp(&costs[b])
                        }
                    })
                });
            }
            Policy::Threshold {
                strong,
                weak,
                threshold,
            } => {
                let first = if scores[strong] - scores[weak] > threshold {
                    strong
                } else {
                    weak
                };
                let second = if first == strong { weak } else { strong };
                idx.retain(|&i| i != first && i != second);
                idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
                // strong == weak: rank that model once (the ranking is a permutation).
                if second != first {
                    idx.insert(0, second);
                }
                idx.insert(0, first);
            }
        }
    }
}

/// RouteLLM calibration (Ong et al., 2024): the threshold that sends `strong_share` of
/// the given prompts to the strong model under [`Policy::Threshold`] (strong when
/// `win > threshold`), where `wins[i]` is the predicted `score[strong] - score[weak]` of
/// prompt `i`. With `k = round(strong_share * n)`, the threshold is the midpoint between
/// the `k`-th and `(k+1)`-th largest wins, so exactly `k` prompts route strong unless
/// wins tie at the boundary; share 0 gives the largest win (nobody strictly above it) and
/// share 1 gives one below the smallest. `None` for no prompts, a non-finite win, or a
/// share outside `[0, 1]`.
pub fn calibrate_threshold(wins: &[f64], strong_share: f64) -> Option<f64> {
    if wins.is_empty()
        || !(0.0..=1.0).contains(&strong_share)
        || wins.iter().any(|w| !w.is_finite())
    {
        return None;
    }
    let mut sorted = wins.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a)); // descending
    let n = sorted.len();
    let k = ((strong_share * n as f64).round() as usize).min(n);
    Some(match k {
        0 => sorted[0],
        k if k == n => sorted[n - 1] - 1.0,
        k => 0.5 * (sorted[k - 1] + sorted[k]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_zero_is_quality_first_and_ties_go_cheaper() {
        let r = Policy::Lambda(0.0).rank(&[0.5, 0.9, 0.9], &[0.1, 0.3, 0.2]);
        assert_eq!(r, vec![2, 1, 0]);
    }

    #[test]
    fn lambda_trades_quality_for_cost() {
        // utilities at lambda 10: 0.5-0.1=0.4, 0.9-3=-2.1
        let r = Policy::Lambda(10.0).rank(&[0.5, 0.9], &[0.01, 0.3]);
        assert_eq!(r[0], 0);
    }

    #[test]
    fn budget_picks_best_affordable_then_cheapest_over_budget() {
        let r = Policy::BudgetUsd(0.2).rank(&[0.5, 0.9, 0.7, 0.95], &[0.1, 0.3, 0.2, 0.5]);
        assert_eq!(r, vec![2, 0, 1, 3]);
    }

    #[test]
    fn threshold_routes_strong_when_win_exceeds() {
        let p = Policy::Threshold {
            strong: 0,
            weak: 1,
            threshold: 0.1,
        };
        assert_eq!(p.rank(&[0.9, 0.7], &[1.0, 0.1])[0], 0);
        assert_eq!(p.rank(&[0.75, 0.7], &[1.0, 0.1])[0], 1);
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn calibrated_threshold_sends_the_target_share_strong() {
        let wins: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0 - 0.3).collect();
        for share in [0.0, 0.1, 0.3, 0.55, 1.0] {
            let t = calibrate_threshold(&wins, share).unwrap();
            let p = Policy::Threshold {
                strong: 0,
                weak: 1,
                threshold: t,
            };
            let strong = wins
                .iter()
                .filter(|&&w| p.rank(&[w, 0.0], &[1.0, 0.1])[0] == 0)
                .count();
            assert_eq!(
                strong,
                (share * 100.0_f64).round() as usize,
                "share {share}"
            );
        }
        assert!(calibrate_threshold(&[], 0.3).is_none());
        assert!(calibrate_threshold(&[0.1], 1.5).is_none());
        assert!(calibrate_threshold(&[f64::NAN], 0.5).is_none());
    }
}
