//! RouteLLM's strong/weak metrics (Ong et al., 2024, "RouteLLM: Learning to Route LLMs
//! with Preference Data", section 5 and `routellm/evals/evaluate.py`).
//!
//! A router gives each prompt a predicted strong-model win; sending the prompts with the
//! highest wins to the strong model (a threshold sweep) traces quality against the share
//! of calls to the strong model. With `Q_w`, `Q_s` the weak and strong models' qualities:
//!
//! * PGR (performance gap recovered) of a point = `(Q - Q_w) / (Q_s - Q_w)`.
//! * APGR = the area under PGR as a function of the strong-call share over `[0, 1]`
//!   (trapezoids; the sweep always includes share 0 and share 1).
//! * CPT(x) = the smallest strong-call share at which PGR reaches `x` (linear
//!   interpolation between sweep points; first crossing), reported in percent.
//!
//! Every distinct threshold is a sweep point: prompts are sorted by predicted win and
//! prompts with equal wins move together (a threshold cannot split them). Only prompts
//! on which both models have an outcome count.

use serde::{Deserialize, Serialize};

use crate::Outcomes;

/// APGR and CPT of one router on one strong/weak pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairwiseMetrics {
    pub apgr: f64,
    /// Percent of calls to the strong model needed for 50% PGR (`None`: never reached).
    pub cpt50: Option<f64>,
    /// Percent of calls to the strong model needed for 80% PGR.
    pub cpt80: Option<f64>,
}

/// `(strong_share, pgr)` points of the threshold sweep; `None` when the two models have
/// equal quality (PGR undefined) or no prompt has both outcomes.
pub fn pgr_curve(
    outcomes: &Outcomes,
    wins: &[f64],
    strong: usize,
    weak: usize,
) -> Option<Vec<(f64, f64)>> {
    let mut rows: Vec<(f64, f64, f64)> = (0..outcomes.len().min(wins.len()))
        .filter_map(|i| {
            let (s, _) = outcomes.get(i, strong)?;
            let (w, _) = outcomes.get(i, weak)?;
            Some((wins[i], s, w))
        })
        .collect();
    let n = rows.len();
    if n == 0 {
        return None;
    }
    let q_w = rows.iter().map(|r| r.2).sum::<f64>() / n as f64;
    let q_s = rows.iter().map(|r| r.1).sum::<f64>() / n as f64;
    let gap = q_s - q_w;
    if gap.abs() < 1e-12 {
        return None;
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut sum = q_w * n as f64;
    let mut curve = vec![(0.0, 0.0)];
    let mut k = 0;
    while k < n {
        let mut j = k;
        while j < n && rows[j].0 == rows[k].0 {
            sum += rows[j].1 - rows[j].2;
            j += 1;
        }
        k = j;
        curve.push((k as f64 / n as f64, (sum / n as f64 - q_w) / gap));
    }
    Some(curve)
}

/// APGR and CPT(50%)/CPT(80%) of the sweep (see the module docs).
pub fn pairwise_metrics(
    outcomes: &Outcomes,
    wins: &[f64],
    strong: usize,
    weak: usize,
) -> Option<PairwiseMetrics> {
    let curve = pgr_curve(outcomes, wins, strong, weak)?;
    let apgr = curve
        .windows(2)
        .map(|w| 0.5 * (w[0].1 + w[1].1) * (w[1].0 - w[0].0))
        .sum();
    Some(PairwiseMetrics {
        apgr,
        cpt50: cpt(&curve, 0.5),
        cpt80: cpt(&curve, 0.8),
    })
}

/// Smallest share (percent) at which the PGR curve reaches `x`.
fn cpt(curve: &[(f64, f64)], x: f64) -> Option<f64> {
    let first = curve.first()?;
    if first.1 >= x {
        return Some(first.0 * 100.0);
    }
    curve.windows(2).find(|w| w[1].1 >= x).map(|w| {
        let t = (x - w[0].1) / (w[1].1 - w[0].1);
        (w[0].0 + t * (w[1].0 - w[0].0)) * 100.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// 4 prompts, model 0 strong, model 1 weak.
    /// strong scores 1,1,1,0; weak scores 0,1,0,0  -> Q_s = 0.75, Q_w = 0.25, gap 0.5.
    fn toy() -> Outcomes {
        Outcomes::new(
            2,
            vec![1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
            vec![1.0, 0.1, 1.0, 0.1, 1.0, 0.1, 1.0, 0.1],
        )
        .unwrap()
    }

    #[test]
    fn perfect_router_apgr_by_hand() {
        // Wins order: prompt 0 (0.9), prompt 2 (0.8), prompt 1 (0.1), prompt 3 (0.0).
        // Shares 0, .25, .5, .75, 1 -> quality .25, .5, .75, .75, .75 -> PGR 0, .5, 1, 1, 1.
        // APGR = .25*(0+.5)/2 + .25*(.5+1)/2 + .25*1 + .25*1 = .0625 + .1875 + .5 = .75.
        let m = pairwise_metrics(&toy(), &[0.9, 0.1, 0.8, 0.0], 0, 1).unwrap();
        assert!(close(m.apgr, 0.75));
        assert!(close(m.cpt50.unwrap(), 25.0));
        // PGR 0.8 between share .25 (0.5) and .5 (1.0): t = 0.6 -> 0.4 -> 40%.
        assert!(close(m.cpt80.unwrap(), 40.0));
    }

    #[test]
    fn worst_router_and_ties() {
        // Reversed order: prompt 3, prompt 1 first (no gain), then 2, 0.
        // PGR 0, 0, 0, .5, 1 at shares 0..1 -> APGR = .25*.25 + .25*.75 = .25.
        let m = pairwise_metrics(&toy(), &[0.0, 0.8, 0.1, 0.9], 0, 1).unwrap();
        assert!(close(m.apgr, 0.25));
        assert!(close(m.cpt50.unwrap(), 75.0));
        // All wins tied: one jump from share 0 to 1 -> APGR 0.5 (random routing).
        let c = pgr_curve(&toy(), &[0.3; 4], 0, 1).unwrap();
        assert_eq!(c.len(), 2);
        let m = pairwise_metrics(&toy(), &[0.3; 4], 0, 1).unwrap();
        assert!(close(m.apgr, 0.5));
    }

    #[test]
    fn equal_models_have_no_pgr() {
        let o = Outcomes::new(2, vec![1.0, 1.0, 0.0, 0.0], vec![1.0, 0.1, 1.0, 0.1]).unwrap();
        assert!(pairwise_metrics(&o, &[0.1, 0.2], 0, 1).is_none());
    }
}
