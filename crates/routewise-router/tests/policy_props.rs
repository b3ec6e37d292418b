//! Property: every policy's ranking is a permutation of all models.
#![cfg(test)]

use proptest::prelude::*;
use routewise_router::Policy;

fn policy(n: usize) -> impl Strategy<Value = Policy> {
    prop_oneof![
        (0.0f64..1e4).prop_map(Policy::Lambda),
        (0.0f64..1.0).prop_map(Policy::BudgetUsd),
        (0..n, 0..n, -1.0f64..1.0).prop_map(|(strong, weak, threshold)| Policy::Threshold {
            strong,
            weak,
            threshold
        }),
    ]
}

proptest! {
    #[test]
    fn ranking_is_a_permutation_of_all_models(
        (scores, costs, p) in (2usize..12).prop_flat_map(|n| (
            proptest::collection::vec(0.0f64..1.0, n),
            proptest::collection::vec(0.0f64..0.1, n),
            policy(n),
        ))
    ) {
        let r = p.rank(&scores, &costs);
        let mut sorted = r.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..scores.len()).collect::<Vec<_>>(), "{:?}", r);
    }
}
