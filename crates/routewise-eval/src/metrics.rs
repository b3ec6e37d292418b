//! Cost-quality metrics of a router's curve.
//!
//! * Non-decreasing convex hull (RouterBench, Hu et al. 2024, `evaluation/AIQ.py`): the
//!   upper concave envelope of the router's (cost, quality) points, cut after its highest
//!   point so that it never decreases. Any point on it is reachable by mixing two
//!   operating points at random per request.
//! * AIQ ("average improvement in quality", RouterBench) with a fixed cost range: the hull
//!   is extended flat to the right of its last point and counts zero to the left of its
//!   first point; it is integrated over `[c_min, c_max]` (the cheapest and the most
//!   expensive single model's mean cost) and divided by `c_max - c_min`. With
//!   `c_min == c_max` the AIQ is the hull's value there.
//! * Per-router summary ([`router_metrics`]): max quality and its cheapest cost over the
//!   measured points; the hull's quality at the best single model's cost; the lowest hull
//!   cost reaching the best single model's quality over that model's cost (and the same
//!   ratio over measured points only, without mixing).

use serde::{Deserialize, Serialize};

use crate::{CurvePoint, Point};

/// Slack when comparing qualities computed by different summation orders.
const EPS: f64 = 1e-12;

/// A non-decreasing, concave, piecewise-linear frontier: `(cost, quality)` vertices
/// sorted by strictly increasing cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Hull {
    pub vertices: Vec<(f64, f64)>,
}

/// The non-decreasing convex hull of `(cost, quality)` points (non-finite points are
/// ignored).
pub fn nondecreasing_hull(points: &[(f64, f64)]) -> Hull {
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(c, q)| c.is_finite() && q.is_finite())
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    pts.dedup_by(|b, a| a.0 == b.0); // keeps the highest quality per cost
    let mut hull: Vec<(f64, f64)> = Vec::with_capacity(pts.len());
    for p in pts {
        while hull.len() >= 2 {
            let (o, a) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            let cross = (a.0 - o.0) * (p.1 - o.1) - (a.1 - o.1) * (p.0 - o.0);
            if cross >= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    // Concave, so it rises up to its first maximum and falls after it: cut there.
    if let Some(top) = hull
        .iter()
        .enumerate()
        .fold(None::<(usize, f64)>, |best, (i, v)| match best {
            Some((_, q)) if q >= v.1 => best,
            _ => Some((i, v.1)),
        })
        .map(|(i, _)| i)
    {
        hull.truncate(top + 1);
    }
    Hull { vertices: hull }
}

impl Hull {
    /// The frontier's quality at cost `c`: zero left of the first vertex, linear between
    /// vertices, flat right of the last.
    pub fn value_at(&self, c: f64) -> f64 {
        let v = &self.vertices;
        match (v.first(), v.last()) {
            (Some(first), Some(last)) => {
                if c < first.0 {
                    0.0
                } else if c >= last.0 {
                    last.1
                } else {
                    let j = v.partition_point(|p| p.0 <= c);
                    let (a, b) = (v[j - 1], v[j]);
                    a.1 + (b.1 - a.1) * (c - a.0) / (b.0 - a.0)
                }
            }
            _ => 0.0,
        }
    }

    /// Exact integral of [`Hull::value_at`] over `[a, b]`.
    pub fn integral(&self, a: f64, b: f64) -> f64 {
        let v = &self.vertices;
        let Some(last) = v.last() else {
            return 0.0;
        };
        if b <= a {
            return 0.0;
        }
        let on = |s: &[(f64, f64)], c: f64| {
            s[0].1 + (s[1].1 - s[0].1) * (c - s[0].0) / (s[1].0 - s[0].0)
        };
        // Left of the first vertex counts zero; trapezoids on the segments clipped to [a, b].
        let mut area = 0.0;
        for w in v.windows(2) {
            let (lo, hi) = (w[0].0.max(a), w[1].0.min(b));
            if hi > lo {
                area += 0.5 * (on(w, lo) + on(w, hi)) * (hi - lo);
            }
        }
        // Flat extension right of the last vertex.
        let lo = last.0.max(a);
        if b > lo {
            area += last.1 * (b - lo);
        }
        area
    }

    /// The lowest cost at which the frontier reaches quality `q`; `None` if it never does.
    pub fn min_cost_reaching(&self, q: f64) -> Option<f64> {
        let v = &self.vertices;
        let first = v.first()?;
        if first.1 >= q - EPS {
            return Some(first.0);
        }
        for w in v.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b.1 >= q - EPS {
                if b.1 - a.1 <= 0.0 {
                    return Some(b.0);
                }
                let t = ((q - a.1) / (b.1 - a.1)).clamp(0.0, 1.0);
                return Some(a.0 + t * (b.0 - a.0));
            }
        }
        None
    }
}

/// AIQ of the points `(cost, quality)` over `[c_min, c_max]` (see the module docs).
pub fn aiq(points: &[(f64, f64)], c_min: f64, c_max: f64) -> f64 {
    let hull = nondecreasing_hull(points);
    if c_max > c_min {
        hull.integral(c_min, c_max) / (c_max - c_min)
    } else {
        hull.value_at(c_min)
    }
}

/// A router's summary numbers (the issue's `--json` fields).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RouterMetrics {
    pub aiq: f64,
    pub max_quality: f64,
    pub cost_at_max_quality: f64,
    pub quality_at_best_single_cost: f64,
    /// Lowest hull cost reaching the best single model's quality / that model's cost.
    pub cost_ratio_at_best_single_quality: Option<f64>,
    /// The same over measured curve points only (no mixing of operating points).
    pub cost_ratio_at_best_single_quality_measured: Option<f64>,
}

/// Summarises a router's curve against the best single model and the cost range.
pub fn router_metrics(
    curve: &[CurvePoint],
    best_single: Point,
    c_min: f64,
    c_max: f64,
) -> RouterMetrics {
    let pts: Vec<(f64, f64)> = curve.iter().map(|p| (p.cost, p.quality)).collect();
    let hull = nondecreasing_hull(&pts);
    let max_quality = curve
        .iter()
        .map(|p| p.quality)
        .fold(f64::NEG_INFINITY, f64::max);
    let cost_at_max_quality = curve
        .iter()
        .filter(|p| p.quality >= max_quality)
        .map(|p| p.cost)
        .fold(f64::INFINITY, f64::min);
    let ratio = |c: f64| {
        if best_single.cost > 0.0 {
            c / best_single.cost
        } else {
            f64::INFINITY
        }
    };
    let measured = curve
        .iter()
        .filter(|p| p.quality >= best_single.quality - EPS)
        .map(|p| p.cost)
        .fold(None::<f64>, |m, c| Some(m.map_or(c, |m| m.min(c))));
    RouterMetrics {
        aiq: aiq(&pts, c_min, c_max),
        max_quality,
        cost_at_max_quality,
        quality_at_best_single_cost: hull.value_at(best_single.cost),
        cost_ratio_at_best_single_quality: hull.min_cost_reaching(best_single.quality).map(ratio),
        cost_ratio_at_best_single_quality_measured: measured.map(ratio),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn hull_drops_interior_and_decreasing_points() {
        // (2, 0.5) lies under the chord (1,0.4)-(3,0.8) (0.6 there); (5, 0.7) is after the max.
        let h = nondecreasing_hull(&[(1.0, 0.4), (2.0, 0.5), (3.0, 0.8), (5.0, 0.7), (4.0, 0.8)]);
        assert_eq!(h.vertices, vec![(1.0, 0.4), (3.0, 0.8)]);
    }

    #[test]
    fn aiq_of_three_point_frontier_by_hand() {
        // Frontier (1, 0.2), (2, 0.6), (4, 0.8); range [0, 5].
        // [0,1): 0;  [1,2]: (0.2+0.6)/2 = 0.4;  [2,4]: (0.6+0.8)/2*2 = 1.4;  [4,5]: 0.8.
        // area = 2.6, AIQ = 2.6 / 5 = 0.52.
        let pts = [(1.0, 0.2), (2.0, 0.6), (4.0, 0.8)];
        assert!(close(aiq(&pts, 0.0, 5.0), 0.52));
        // Range [1.5, 3]: value 0.4 at 1.5, 0.6 at 2, 0.7 at 3.
        // (0.4+0.6)/2*0.5 + (0.6+0.7)/2*1 = 0.25 + 0.65 = 0.9; / 1.5 = 0.6.
        assert!(close(aiq(&pts, 1.5, 3.0), 0.6));
    }

    #[test]
    fn hull_queries() {
        let h = nondecreasing_hull(&[(1.0, 0.2), (2.0, 0.6), (4.0, 0.8)]);
        assert!(close(h.value_at(0.5), 0.0));
        assert!(close(h.value_at(3.0), 0.7));
        assert!(close(h.value_at(9.0), 0.8));
        assert!(close(h.min_cost_reaching(0.7).unwrap(), 3.0));
        assert!(close(h.min_cost_reaching(0.1).unwrap(), 1.0));
        assert!(h.min_cost_reaching(0.81).is_none());
    }

    #[test]
    fn router_metrics_by_hand() {
        let curve: Vec<CurvePoint> = [
            (0.0, 4.0, 0.8),
            (1.0, 2.0, 0.6),
            (2.0, 1.0, 0.2),
            (3.0, 5.0, 0.8),
        ]
        .iter()
        .map(|&(lambda, cost, quality)| CurvePoint {
            lambda,
            quality,
            cost,
        })
        .collect();
        let best = Point {
            quality: 0.7,
            cost: 4.0,
        };
        let m = router_metrics(&curve, best, 0.0, 5.0);
        assert!(close(m.aiq, 0.52));
        assert!(close(m.max_quality, 0.8));
        assert!(close(m.cost_at_max_quality, 4.0));
        assert!(close(m.quality_at_best_single_cost, 0.8));
        assert!(close(m.cost_ratio_at_best_single_quality.unwrap(), 0.75));
        assert!(close(
            m.cost_ratio_at_best_single_quality_measured.unwrap(),
            1.0
        ));
        let unreachable = router_metrics(
            &curve,
            Point {
                quality: 0.9,
                cost: 4.0,
            },
            0.0,
            5.0,
        );
        assert!(unreachable.cost_ratio_at_best_single_quality.is_none());
        assert!(unreachable
            .cost_ratio_at_best_single_quality_measured
            .is_none());
    }

    fn points() -> impl Strategy<Value = Vec<(f64, f64)>> {
        prop::collection::vec((0.0f64..10.0, 0.0f64..1.0), 1..30)
    }

    proptest! {
        #[test]
        fn aiq_within_quality_bounds(pts in points(), c_max in 10.0f64..20.0) {
            let qmax = pts.iter().map(|p| p.1).fold(0.0, f64::max);
            let a = aiq(&pts, 10.0, c_max);
            // All points lie at or left of c_min = 10: the hull is flat at the max there.
            prop_assert!((a - qmax).abs() < 1e-9);
            // With a range starting left of every point, AIQ is in [0, qmax].
            let b = aiq(&pts, 0.0, c_max);
            prop_assert!(b >= -1e-12 && b <= qmax + 1e-12);
        }

        #[test]
        fn aiq_at_least_min_quality_when_cheapest_point_starts_the_range(pts in points(), extra in 0.1f64..10.0) {
            let c0 = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
            let qmin = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let qmax = pts.iter().map(|p| p.1).fold(0.0, f64::max);
            let a = aiq(&pts, c0, c0 + extra);
            prop_assert!(a >= qmin - 1e-9 && a <= qmax + 1e-9, "{} not in [{}, {}]", a, qmin, qmax);
        }

        #[test]
        fn hull_is_nondecreasing_concave_and_dominates(pts in points()) {
            let h = nondecreasing_hull(&pts);
            let v = &h.vertices;
            prop_assert!(v.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1 + 1e-12));
            for w in v.windows(3) {
                let s1 = (w[1].1 - w[0].1) / (w[1].0 - w[0].0);
                let s2 = (w[2].1 - w[1].1) / (w[2].0 - w[1].0);
                prop_assert!(s2 <= s1 + 1e-9);
            }
            let first = v[0].0;
            for &(c, q) in &pts {
                if c >= first {
                    prop_assert!(h.value_at(c) >= q - 1e-9);
                }
            }
        }

        #[test]
        fn adding_a_point_never_lowers_aiq(pts in points(), p in (0.0f64..10.0, 0.0f64..1.0)) {
            let before = aiq(&pts, 0.0, 10.0);
            let mut more = pts.clone();
            more.push(p);
            prop_assert!(aiq(&more, 0.0, 10.0) >= before - 1e-9);
        }
    }
}
