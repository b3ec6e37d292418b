//! Property tests of the bandit math: statistics and estimates stay finite under any
//! bounded stream of updates (with or without forgetting), the Sherman-Morrison inverse
//! stays equal to a fresh inverse, and selection probabilities are a distribution over
//! the available arms.
#![cfg(test)]

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use routewise_online::bandit::Arm;
use routewise_online::{Algorithm, BanditConfig, LinearBandit};

const D: usize = 4; // context dim (3 projected + bias)

fn cfg(alg: Algorithm, gamma: f64, lambda0: f64, alpha: f64, rate: f64) -> BanditConfig {
    BanditConfig {
        algorithm: alg,
        dim: D - 1,
        forgetting: gamma,
        prior_strength: lambda0,
        alpha,
        forced_exploration_rate: rate,
        forced_exploration_pulls: 3,
        ..BanditConfig::default()
    }
}

fn ctx() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(-1.0f64..1.0, D - 1).prop_map(|mut v| {
        v.insert(0, 1.0);
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn statistics_stay_finite_and_inverse_consistent(
        updates in prop::collection::vec((0usize..3, ctx(), -2.0f64..2.0), 1..200),
        gamma in prop_oneof![Just(1.0f64), 0.5f64..1.0],
        lambda0 in 0.01f64..10.0,
        alg in prop_oneof![Just(Algorithm::Linucb), Just(Algorithm::Thompson)],
    ) {
        let c = cfg(alg, gamma, lambda0, 0.5, 0.0);
        let mut b = LinearBandit::new(&c, vec![false, false, true]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (m, x, y) in &updates {
            b.update(*m, x, *y);
            let mut est = [0.0; 3];
            b.estimates(x, &mut rng, &mut est);
            prop_assert!(est.iter().all(|v| v.is_finite()), "{est:?}");
        }
        for m in 0..3 {
            let arm = b.arm(m);
            prop_assert!(arm.stats().is_finite());
            prop_assert!(arm.theta().iter().all(|v| v.is_finite()));
            let fresh = Arm::from_stats(arm.stats().clone()).unwrap();
            for (p, q) in arm.theta().iter().zip(fresh.theta()) {
                prop_assert!((p - q).abs() <= 1e-6 * (1.0 + q.abs()), "{p} vs {q}");
            }
            // Confidence width never exceeds the prior's.
            let x = &updates[0].1;
            let prior_w = (x.iter().map(|v| v * v).sum::<f64>() / lambda0).sqrt();
            prop_assert!(arm.width(x) <= prior_w * (1.0 + 1e-9) + 1e-12);
        }
    }

    #[test]
    fn selection_probabilities_sum_to_one(
        updates in prop::collection::vec((0usize..4, ctx(), -1.0f64..1.0), 0..30),
        x in ctx(),
        prior in prop::collection::vec(-1.0f64..1.0, 4),
        avail in prop::collection::vec(any::<bool>(), 4),
        rate in 0.0f64..1.0,
        alg in prop_oneof![Just(Algorithm::Linucb), Just(Algorithm::Thompson)],
        seed in any::<u64>(),
    ) {
        prop_assume!(avail.iter().any(|&a| a));
        let c = cfg(alg, 0.99, 1.0, 0.3, rate);
        let mut b = LinearBandit::new(&c, vec![false, true, false, true]);
        for (m, ux, y) in &updates {
            b.update(*m, ux, *y);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let p = b.selection_probabilities(&x, &prior, &avail, 50, &mut rng);
        let sum: f64 = p.iter().sum();
        prop_assert!((sum - 1.0).abs() < 1e-9, "{p:?}");
        for (pi, a) in p.iter().zip(&avail) {
            prop_assert!((0.0..=1.0 + 1e-12).contains(pi));
            if !a { prop_assert_eq!(*pi, 0.0); }
        }
        // The chosen arm is always available.
        let m = b.choose(&x, &prior, &avail, &mut rng).unwrap();
        prop_assert!(avail[m]);
    }
}
