//! Which models can be compared as single models, and on which prompts.
//!
//! A model missing on a prompt is left out of that prompt only, so a model evaluated on
//! half the prompts has a mean over a different, easier or harder, half. Comparing such
//! means picks the wrong "best single model". The rule used everywhere a single model is
//! ranked (the `best-single` baseline on train, the best single model and the AIQ cost
//! range on test):
//!
//! 1. a model is **comparable** when it covers at least [`MIN_COVERAGE`] (95%) of the
//!    prompts: a model missing 1 of 2,368 prompts stays in, a model with half the prompts
//!    is out;
//! 2. comparable models are measured on the **common prompts**, those where every
//!    comparable model has an outcome;
//! 3. when no model reaches 95% (sparse data), the best-covered models (within 95% of the
//!    highest coverage) are comparable instead; when the common prompts are fewer than
//!    half of all prompts, each comparable model is measured on its own prompts. Both
//!    fallbacks are flagged ([`Coverage::fallback`]).
//!
//! Evaluations that replay a whole policy (conversation affinity, budget pacing,
//! onboarding, the dispatch simulator, off-policy validation) need every model's outcome
//! on each prompt they use, because the policy may pick any model. On sparse data few
//! prompts are complete; [`replay_pool`] says which models to leave out of such an
//! evaluation so that most prompts are.
//!
//! Pure computation over a row-major `n_prompts x n_models` matrix with `NaN` for missing.

/// Share of the prompts a model must cover to be compared with the others.
pub const MIN_COVERAGE: f64 = 0.95;

/// Smallest share of all prompts the common prompts may be before the fallback to each
/// model's own prompts.
pub const MIN_COMMON_SHARE: f64 = 0.5;

/// How the models cover the prompts (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Coverage {
    /// Prompts each model has an outcome on.
    pub counts: Vec<usize>,
    /// Share of the prompts each model covers.
    pub shares: Vec<f64>,
    /// Whether each model is compared as a single model.
    pub comparable: Vec<bool>,
    /// Per prompt: whether it counts for the comparable models' means. All comparable
    /// models have an outcome there, except under the own-prompts fallback, where every
    /// prompt counts and each model averages over the prompts it has.
    pub common: Vec<bool>,
    /// Number of prompts with `common` set.
    pub n_common: usize,
    /// Why a fallback rule was used, if one was.
    pub fallback: Option<String>,
}

impl Coverage {
    /// Applies the rule to `values` (`n_models` columns, `NaN` = missing).
    pub fn of(values: &[f64], n_models: usize) -> Coverage {
        let n_prompts = values.len().checked_div(n_models).unwrap_or(0);
        let present = |i: usize, m: usize| !values[i * n_models + m].is_nan();
        let counts: Vec<usize> = (0..n_models)
            .map(|m| (0..n_prompts).filter(|&i| present(i, m)).count())
            .collect();
        let shares: Vec<f64> = counts
            .iter()
            .map(|&c| c as f64 / n_prompts.max(1) as f64)
            .collect();
        let best = shares.iter().copied().fold(0.0, f64::max);
        let mut fallback = None;
        let threshold = if best >= MIN_COVERAGE {
            MIN_COVERAGE
        } else {
            fallback = Some(format!(
                "no model covers {:.0}% of the prompts (best {:.1}%): the models within 95% of \
                 the best coverage are compared",
                MIN_COVERAGE * 100.0,
                best * 100.0
            ));
            best * MIN_COVERAGE
        };
        let comparable: Vec<bool> = shares.iter().map(|&s| s > 0.0 && s >= threshold).collect();
        let mut common: Vec<bool> = (0..n_prompts)
            .map(|i| (0..n_models).all(|m| !comparable[m] || present(i, m)))
            .collect();
        let mut n_common = common.iter().filter(|&&c| c).count();
        if n_prompts > 0 && (n_common as f64) < MIN_COMMON_SHARE * n_prompts as f64 {
            fallback = Some(format!(
                "the comparable models share only {n_common} of {n_prompts} prompts: each is \
                 measured on its own prompts"
            ));
            common = vec![true; n_prompts];
            n_common = n_prompts;
        }
        Coverage {
            counts,
            shares,
            comparable,
            common,
            n_common,
            fallback,
        }
    }
}

impl Coverage {
    /// The same models compared, over the common prompts only (all of which then count):
    /// the coverage of a matrix already restricted to `common`.
    pub fn restricted_to_common(&self) -> Coverage {
        Coverage {
            counts: self.counts.clone(),
            shares: self.shares.clone(),
            comparable: self.comparable.clone(),
            common: vec![true; self.n_common],
            n_common: self.n_common,
            fallback: self.fallback.clone(),
        }
    }
}

/// What [`replay_pool`] chose.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayPool {
    /// Per model: whether the replay keeps it.
    pub keep: Vec<bool>,
    /// Prompts with every model's outcome, and with every kept model's.
    pub complete_before: usize,
    pub complete_after: usize,
}

/// The models to keep in an evaluation that replays whole policies: all of them
/// when at least [`MIN_COMMON_SHARE`] of the prompts have every model's outcome; else,
/// one at a time, the model whose removal completes the most prompts is left out (ties:
/// the one the incomplete prompts lack most, a prompt that `k` kept models lack counting
/// `1/k` for each; then the one covering fewer prompts; then the later one), until that
/// share is reached or `min_models` remain (at least 2: one model left to route to is no
/// routing). Removals that complete no prompt at all are undone: every model is kept.
pub fn replay_pool(values: &[f64], n_models: usize, min_models: usize) -> ReplayPool {
    let n_prompts = values.len().checked_div(n_models).unwrap_or(0);
    let present = |i: usize, m: usize| !values[i * n_models + m].is_nan();
    let coverage: Vec<usize> = (0..n_models)
        .map(|m| (0..n_prompts).filter(|&i| present(i, m)).count())
        .collect();
    let mut keep = vec![true; n_models];
    // Per prompt: how many kept models miss it (complete when 0).
    let mut missing: Vec<usize> = (0..n_prompts)
        .map(|i| (0..n_models).filter(|&m| !present(i, m)).count())
        .collect();
    let complete = |missing: &[usize]| missing.iter().filter(|&&k| k == 0).count();
    let before = complete(&missing);
    let mut kept = n_models;
    while (complete(&missing) as f64) < MIN_COMMON_SHARE * n_prompts as f64
        && kept > min_models.max(2)
    {
        // Per model: the prompts that leaving it out would complete (those it alone
        // misses), and its share of the incomplete prompts.
        let mut gain = vec![0usize; n_models];
        let mut share = vec![0f64; n_models];
        for i in (0..n_prompts).filter(|&i| missing[i] > 0) {
            for m in (0..n_models).filter(|&m| keep[m] && !present(i, m)) {
                share[m] += 1.0 / missing[i] as f64;
                if missing[i] == 1 {
                    gain[m] += 1;
                }
            }
        }
        let Some(out) = (0..n_models).filter(|&m| keep[m]).max_by(|&a, &b| {
            gain[a]
                .cmp(&gain[b])
                .then(share[a].total_cmp(&share[b]))
                .then(coverage[b].cmp(&coverage[a]))
                .then(a.cmp(&b))
        }) else {
            break;
        };
        keep[out] = false;
        kept -= 1;
        for (i, k) in missing.iter_mut().enumerate() {
            if !present(i, out) {
                *k -= 1;
            }
        }
    }
    let after = complete(&missing);
    ReplayPool {
        keep: if after == before {
            vec![true; n_models]
        } else {
            keep
        },
        complete_before: before,
        complete_after: after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: f64 = f64::NAN;

    #[test]
    fn half_covered_model_is_not_comparable_and_means_use_common_prompts() {
        // 4 prompts x 3 models; model 2 covers half, model 1 misses prompt 3.
        let v = [
            1.0, 1.0, 1.0, //
            0.0, 1.0, N, //
            1.0, 0.0, 1.0, //
            1.0, N, N,
        ];
        let c = Coverage::of(&v, 3);
        assert_eq!(c.counts, [4, 3, 2]);
        // 3/4 < 95%: with threshold 95% only model 0 qualifies (100%).
        assert_eq!(c.comparable, [true, false, false]);
        assert_eq!(c.n_common, 4);
        assert!(c.fallback.is_none());
    }

    #[test]
    fn one_missing_prompt_in_many_stays_comparable() {
        let n = 2368;
        let mut v = vec![0.5; n * 2];
        v[7 * 2 + 1] = N; // model 1 misses one prompt
        let c = Coverage::of(&v, 2);
        assert_eq!(c.comparable, [true, true]);
        assert_eq!(c.n_common, n - 1);
        assert!(!c.common[7]);
    }

    #[test]
    fn sparse_data_falls_back_and_says_so() {
        // Every model covers 2 of 4 prompts, on disjoint halves.
        let v = [
            1.0, N, //
            1.0, N, //
            N, 0.0, //
            N, 0.0,
        ];
        let c = Coverage::of(&v, 2);
        assert_eq!(c.comparable, [true, true]);
        assert_eq!(c.n_common, 4, "own-prompts fallback");
        assert!(c.fallback.unwrap().contains("own prompts"));
    }

    #[test]
    fn a_replay_keeps_every_model_when_most_prompts_are_complete() {
        // Model 2 misses 1 of 3 prompts: 2 of 3 complete, above half.
        let v = [
            1.0, 0.0, 1.0, //
            0.0, 1.0, N, //
            1.0, 1.0, 0.0,
        ];
        assert_eq!(replay_pool(&v, 3, 2).keep, [true, true, true]);
    }

    #[test]
    fn a_replay_leaves_out_the_models_that_keep_prompts_incomplete() {
        // Model 1 was run on the first half only, model 3 misses one prompt: leaving out
        // model 1 completes 3 of 4 (model 3's gap stays), which is enough.
        let v = [
            1.0, 1.0, 0.0, 1.0, //
            0.0, 1.0, 1.0, N, //
            1.0, N, 1.0, 1.0, //
            0.0, N, 0.0, 1.0,
        ];
        assert_eq!(replay_pool(&v, 4, 2).keep, [true, false, true, true]);
        // The floor holds: with 4 models to keep, nothing is left out.
        assert_eq!(replay_pool(&v, 4, 4).keep, [true; 4]);
    }

    #[test]
    fn a_replay_leaves_out_the_models_most_prompts_lack_when_no_single_one_completes_any() {
        // Models A, B, X, Y, Z, W, V over 10 prompts: prompts 0-3 lack X, Y and Z, prompts
        // 4-6 lack W and V, prompts 7-9 are complete. No single removal completes a
        // prompt; W and V are lacked most (3 x 1/2 each against 4 x 1/3), and after V,
        // W completes prompts 4-6: 6 of 10.
        let row = |lack: &[usize]| -> Vec<f64> {
            (0..7)
                .map(|m| if lack.contains(&m) { N } else { 1.0 })
                .collect()
        };
        let v: Vec<f64> = (0..10)
            .flat_map(|i| match i {
                0..=3 => row(&[2, 3, 4]),
                4..=6 => row(&[5, 6]),
                _ => row(&[]),
            })
            .collect();
        assert_eq!(
            replay_pool(&v, 7, 2).keep,
            [true, true, true, true, true, false, false]
        );
    }

    #[test]
    fn a_replay_keeps_every_model_when_leaving_some_out_completes_nothing() {
        // Each prompt has one model only: no removal above the floor completes any.
        let sparse = [
            1.0, N, N, //
            N, 1.0, N, //
            N, N, 1.0, //
            N, N, 1.0,
        ];
        assert_eq!(replay_pool(&sparse, 3, 0).keep, [true, true, true]);
    }
}
