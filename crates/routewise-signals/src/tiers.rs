//! The zero-data router (`router: {mode: rules}`): what an operator routes with on day
//! one, before any outcome data exists. Each model has a configured `quality_tier` (a
//! positive integer, higher is better) and prices; there is no learned prediction.
//!
//! * A request that a route matched goes to the route's pool, cheapest first
//!   ([`cheapest_first`]): the route's description (or other condition) picked the
//!   models that are good enough, price orders them.
//! * A request no route matched is ranked by the configured policy over the tier scores
//!   ([`tier_scores`]: tier / highest tier): with `lambda: 0`, the best tier first and the
//!   cheaper of equal tiers first; a larger lambda trades tiers against the expected cost.

/// Each model's tier as a score in (0, 1]: `tier / max tier`; a model without a tier
/// counts as tier 1.
pub fn tier_scores(tiers: &[Option<u32>]) -> Vec<f64> {
    let max = tiers
        .iter()
        .map(|t| t.unwrap_or(1))
        .max()
        .unwrap_or(1)
        .max(1);
    tiers
        .iter()
        .map(|t| f64::from(t.unwrap_or(1)) / f64::from(max))
        .collect()
}

/// `candidates` ordered by `costs` ascending (stable: equal costs keep their order).
pub fn cheapest_first(candidates: &mut [usize], costs: &[f64]) {
    candidates.sort_by(|&a, &b| {
        let (x, y) = (
            costs.get(a).copied().unwrap_or(f64::INFINITY),
            costs.get(b).copied().unwrap_or(f64::INFINITY),
        );
        x.total_cmp(&y)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_scale_by_the_top_tier() {
        assert_eq!(
            tier_scores(&[Some(1), Some(3), None]),
            [1.0 / 3.0, 1.0, 1.0 / 3.0]
        );
        assert_eq!(tier_scores(&[None, None]), [1.0, 1.0]);
    }

    #[test]
    fn cheapest_first_is_stable() {
        let mut c = vec![0, 1, 2, 3];
        cheapest_first(&mut c, &[3.0, 1.0, 1.0, 0.5]);
        assert_eq!(c, [3, 1, 2, 0]);
    }
}
