//! The single models on the test split, compared fairly when some are missing on some
//! prompts: the coverage rule of [`routewise_data::coverage`] decides which models are
//! comparable and on which common prompts their quality and cost are measured. The best
//! single model (the reference for cost ratios) is the comparable model with the highest
//! quality there, the cheaper one on a tie.

use routewise_data::coverage::Coverage;

use crate::{Outcomes, Point};

/// One model alone on the test split.
#[derive(Debug, Clone, PartialEq)]
pub struct SingleModel {
    /// The model's index.
    pub model: usize,
    /// Quality and cost: on the common prompts for a comparable model, on its own
    /// prompts otherwise.
    pub point: Point,
    /// Quality and cost over every prompt the model has.
    pub own: Point,
    /// Share of the test prompts the model has an outcome on.
    pub coverage: f64,
    /// Test prompts the model has an outcome on.
    pub n_prompts: usize,
    /// Whether it takes part in the single-model comparison.
    pub comparable: bool,
}

/// Every single model and the best one.
#[derive(Debug, Clone)]
pub struct Singles {
    pub coverage: Coverage,
    /// Models with at least one test outcome, in model order.
    pub models: Vec<SingleModel>,
    /// Index into `models` of the best comparable model.
    pub best: Option<usize>,
}

impl Singles {
    /// Measures every model on `outcomes` under the coverage rule.
    pub fn of(outcomes: &Outcomes) -> Singles {
        let coverage = Coverage::of(outcomes.scores(), outcomes.n_models());
        let points = comparable_points(outcomes, &coverage, None);
        let models: Vec<SingleModel> = (0..outcomes.n_models())
            .filter_map(|m| {
                let own = outcomes.single(m)?;
                Some(SingleModel {
                    model: m,
                    point: points[m].unwrap_or(own),
                    own,
                    coverage: coverage.shares[m],
                    n_prompts: coverage.counts[m],
                    comparable: coverage.comparable[m] && points[m].is_some(),
                })
            })
            .collect();
        let best = models
            .iter()
            .enumerate()
            .filter(|(_, s)| s.comparable)
            .max_by(|(_, a), (_, b)| {
                a.point
                    .quality
                    .total_cmp(&b.point.quality)
                    .then(b.point.cost.total_cmp(&a.point.cost))
            })
            .map(|(i, _)| i);
        Singles {
            coverage,
            models,
            best,
        }
    }

    /// The best comparable model.
    pub fn best(&self) -> Option<&SingleModel> {
        self.best.map(|i| &self.models[i])
    }

    /// The comparable models' points.
    pub fn comparable(&self) -> impl Iterator<Item = &SingleModel> {
        self.models.iter().filter(|s| s.comparable)
    }

    /// Coverage warnings, naming models with `names` (indexed by model): the fallback
    /// rule when used, and the most accurate model (over its own prompts) when it misses
    /// test prompts.
    pub fn warnings(&self, names: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(why) = &self.coverage.fallback {
            out.push(format!("single-model comparison: {why}"));
        }
        let top = self
            .models
            .iter()
            .max_by(|a, b| a.own.quality.total_cmp(&b.own.quality));
        if let Some(top) = top.filter(|t| t.coverage < 1.0) {
            let name = names.get(top.model).map_or("?", String::as_str);
            let n_test = self.coverage.common.len();
            let head = format!(
                "`{name}` has the highest mean test score ({:.4} over the {} prompts it has) but \
                 covers only {} of {n_test} test prompts ({:.2}%)",
                top.own.quality,
                top.n_prompts,
                top.n_prompts,
                top.coverage * 100.0
            );
            out.push(if top.comparable {
                format!(
                    "{head}; models are compared on the {} prompts that every model covering \
                     >= 95% has",
                    self.coverage.n_common
                )
            } else {
                format!(
                    "{head}; it is left out of the single-model comparison (best single, cost \
                     range), which needs >= 95% coverage"
                )
            });
        }
        out
    }
}

/// Quality and cost of each comparable model on the common prompts, with prompt `i`
/// counted `weights[i]` times when given (a bootstrap resample); `None` for a model that
/// is not comparable or has no weighted prompt.
pub fn comparable_points(
    outcomes: &Outcomes,
    coverage: &Coverage,
    weights: Option<&[u32]>,
) -> Vec<Option<Point>> {
    (0..outcomes.n_models())
        .map(|m| {
            if !coverage.comparable[m] {
                return None;
            }
            let (mut q, mut c, mut n) = (0.0, 0.0, 0.0);
            for i in (0..outcomes.len()).filter(|&i| coverage.common[i]) {
                let w = weights.map_or(1.0, |w| f64::from(w[i]));
                if w == 0.0 {
                    continue;
                }
                if let Some((s, cost)) = outcomes.get(i, m) {
                    q += w * s;
                    c += w * cost;
                    n += w;
                }
            }
            (n > 0.0).then(|| Point {
                quality: q / n,
                cost: c / n,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: f64 = f64::NAN;

    /// Regression (lab-correctness issue, defect 1): a model with scores on half the test
    /// prompts was the best single because its mean came from those prompts alone.
    #[test]
    fn half_covered_model_is_never_the_best_single() {
        // 4 prompts x 2 models: model 1 is perfect on the 2 prompts it has.
        let o = Outcomes::new(
            2,
            vec![1.0, 1.0, 0.0, 1.0, 1.0, N, 0.0, N],
            vec![0.1, 1.0, 0.1, 1.0, 0.1, N, 0.1, N],
        )
        .unwrap();
        let s = Singles::of(&o);
        assert_eq!(s.best().unwrap().model, 0);
        let m1 = &s.models[1];
        assert!(!m1.comparable && m1.coverage == 0.5 && m1.n_prompts == 2);
        let w = s.warnings(&["a".into(), "b".into()]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("`b`") && w[0].contains("left out"), "{w:?}");
    }

    /// Regression (defect 1): a model missing 1 of 2,368 prompts stays eligible, and every
    /// comparable model is measured on the same prompts.
    #[test]
    fn one_missing_prompt_keeps_a_model_eligible_on_common_prompts() {
        let n = 2368;
        let (mut scores, mut costs) = (Vec::new(), Vec::new());
        for i in 0..n {
            // model 0: right on even prompts; model 1: always right, missing prompt 0.
            scores.extend([f64::from(u8::from(i % 2 == 0)), 1.0]);
            costs.extend([0.1, 1.0]);
        }
        scores[1] = N;
        costs[1] = N;
        let o = Outcomes::new(2, scores, costs).unwrap();
        let s = Singles::of(&o);
        let best = s.best().unwrap();
        assert_eq!(best.model, 1);
        assert_eq!(s.coverage.n_common, n - 1);
        // Model 0 on the common prompts (1..n): 1183 of 2367 even.
        assert!((s.models[0].point.quality - 1183.0 / 2367.0).abs() < 1e-12);
        assert!((s.models[0].own.quality - 0.5).abs() < 1e-12);
        let w = s.warnings(&["a".into(), "b".into()]);
        assert!(w[0].contains("compared on the 2367 prompts"), "{w:?}");
        assert!(w[0].contains("(99.96%)"), "{w:?}");
    }

    #[test]
    fn weighted_points_follow_the_weights() {
        let o = Outcomes::new(2, vec![1.0, 0.0, 0.0, 1.0], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let cov = Coverage::of(o.scores(), 2);
        let p = comparable_points(&o, &cov, Some(&[3, 1]));
        let a = p[0].unwrap();
        assert!((a.quality - 0.75).abs() < 1e-12 && (a.cost - 1.5).abs() < 1e-12);
    }
}
