//! Cascades in the lab (issue 13): what a cascade ([`routewise_router::cascade`]) realises
//! on held-out prompts when every model it calls is charged its real cost and the response
//! it returns is scored by its real outcome. Agreement uses the data's extracted answers
//! (`models.<m>.answer`); a prompt none of whose models has an `answer` (free-form tasks
//! such as mbpp) is routed plainly, and the report counts those prompts.
//!
//! Protocol (nothing is tuned on test):
//! 1. The router (`knn` unless told otherwise) is cross-fitted on `train` ([`FOLDS`]
//!    folds): every train prompt gets a prediction from a router that never saw it, so
//!    the acceptor learns from predictions like the ones it will see on test.
//! 2. On those train predictions, each family chooses its operating points: every tier
//!    (chains of 0-3 of the cheap candidate models ([`candidates`]), where the empty chain
//!    is plain routing; agreement tiers of 2-3 of them), each chain with its acceptor
//!    fitted there, is swept over the family's rules and a coarse lambda grid, and the
//!    (tier, rule, lambda) configurations on the frontier of all those train points are
//!    kept ([`choose`]). Where some prompts have no answers, their plain routing gets its
//!    own lambda from the same grid ([`lambda_pairs`]): an operator serves closed-form
//!    and free-form traffic on separate routes, each with its policy.
//! 3. The router refitted on all of `train` predicts `test`; each kept configuration is
//!    run once on `test`, and the frontier of those points is summarised like a router's
//!    (AIQ, max quality, cost ratios). Nothing is swept on test.
//!
//! Pure: records and predictions in, numbers out.

use routewise_data::{Answer, Record};
use routewise_router::cascade::{
    features, plurality, Acceptor, AnswerKey, Call, Cascade, CascadeRule, Example,
};
use routewise_router::{Policy, RouterConfigs, RouterKind, TrainSet};
use serde::Serialize;

use crate::metrics::nondecreasing_hull;
use crate::{aiq, EvalError, Point};

/// Cross-fitting folds of the train split.
pub const FOLDS: usize = 5;

/// Longest chain and largest agreement tier searched.
pub const MAX_TIER: usize = 3;

/// Candidate tier models searched (see [`candidates`]).
pub const MAX_CANDIDATES: usize = 6;

/// A tier model costs at most this share of the best model's mean cost.
pub const CHEAP_SHARE: f64 = 0.5;

/// Acceptance thresholds of the chain sweep; above 1: never accept (always escalate).
pub const THRESHOLDS: [f64; 21] = [
    0.0, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.825, 0.85, 0.875, 0.9, 0.925, 0.95,
    0.96, 0.97, 0.98, 0.99, 1.01,
];

/// Step discounts of the chain sweep (see `CascadeRule::Chain`).
pub const STEP_DISCOUNTS: [f64; 3] = [0.0, 0.15, 0.3];

/// Margins of the gain rule's sweep (see `CascadeRule::Gain`).
pub const GAIN_MARGINS: [f64; 10] = [-0.2, -0.1, -0.05, 0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3];

/// Outcomes, answers and router predictions of a set of prompts (row-major, prompts x
/// models).
#[derive(Debug, Clone)]
pub struct CascadeInputs {
    pub n_models: usize,
    /// Real scores; `NaN` where the model has no outcome.
    scores: Vec<f64>,
    /// Real costs; `NaN` where the model has no outcome.
    costs: Vec<f64>,
    answers: Vec<Option<AnswerKey>>,
    /// Whether any model's answer to the prompt is recorded (closed-form task).
    has_answers: Vec<bool>,
    pred: Vec<f64>,
    pred_cost: Vec<f64>,
}

impl CascadeInputs {
    /// `pred` and `pred_cost`: the router's predicted scores and the catalog's expected
    /// costs, `records.len() x n_models`.
    pub fn new(
        records: &[&Record],
        n_models: usize,
        pred: Vec<f64>,
        pred_cost: Vec<f64>,
    ) -> Result<CascadeInputs, EvalError> {
        let n = records.len();
        if pred.len() != n * n_models || pred_cost.len() != n * n_models {
            return Err(EvalError::Shape(format!(
                "cascade predictions {} / {} for {n} prompts x {n_models} models",
                pred.len(),
                pred_cost.len()
            )));
        }
        let mut scores = vec![f64::NAN; n * n_models];
        let mut costs = vec![f64::NAN; n * n_models];
        let mut answers = vec![None; n * n_models];
        let mut has_answers = vec![false; n];
        for (i, r) in records.iter().enumerate() {
            has_answers[i] = r.has_answers();
            for (m, o) in r.outcomes.iter().take(n_models).enumerate() {
                let Some(o) = o else { continue };
                scores[i * n_models + m] = o.score;
                costs[i * n_models + m] = o.cost_usd;
                if let Answer::Given(id) = o.answer {
                    answers[i * n_models + m] = Some(id.0 as AnswerKey);
                }
            }
        }
        Ok(CascadeInputs {
            n_models,
            scores,
            costs,
            answers,
            has_answers,
            pred,
            pred_cost,
        })
    }

    pub fn len(&self) -> usize {
        self.has_answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.has_answers.is_empty()
    }

    /// Prompts routed plainly because no model's answer is recorded.
    pub fn prompts_without_answers(&self) -> usize {
        self.has_answers.iter().filter(|h| !**h).count()
    }

    /// The real (score, cost) of model `m` on prompt `i`, if it has one.
    pub(crate) fn outcome(&self, i: usize, m: usize) -> Option<(f64, f64)> {
        let k = i * self.n_models + m;
        let s = self.scores[k];
        (!s.is_nan()).then(|| (s, self.costs[k]))
    }

    fn pred_row(&self, i: usize) -> (&[f64], &[f64]) {
        let r = i * self.n_models..(i + 1) * self.n_models;
        (&self.pred[r.clone()], &self.pred_cost[r])
    }

    /// Per model: mean real score, mean real cost (over the prompts it has) and coverage.
    pub fn model_means(&self) -> Vec<(f64, f64, f64)> {
        let n = self.len().max(1) as f64;
        (0..self.n_models)
            .map(|m| {
                let (mut s, mut c, mut k) = (0.0, 0.0, 0usize);
                for i in 0..self.len() {
                    if let Some((si, ci)) = self.outcome(i, m) {
                        s += si;
                        c += ci;
                        k += 1;
                    }
                }
                let kk = k.max(1) as f64;
                (s / kk, c / kk, k as f64 / n)
            })
            .collect()
    }

    /// The router's choice under lambda on prompt `i`: the first model of the ranking
    /// that has an outcome (the gateway's fallback order).
    fn escalation_target(&self, i: usize, lambda: f64, idx: &mut Vec<usize>) -> Option<usize> {
        let (s, c) = self.pred_row(i);
        Policy::Lambda(lambda).rank_into(s, c, idx);
        idx.iter().copied().find(|&m| self.outcome(i, m).is_some())
    }

    /// Escalation targets for every prompt at each lambda (`lambdas.len() x len`).
    pub fn escalation_targets(&self, lambdas: &[f64]) -> Result<Vec<Vec<usize>>, EvalError> {
        let mut idx = Vec::with_capacity(self.n_models);
        lambdas
            .iter()
            .map(|&l| {
                (0..self.len())
                    .map(|i| {
                        self.escalation_target(i, l, &mut idx)
                            .ok_or(EvalError::NoOutcome(i))
                    })
                    .collect()
            })
            .collect()
    }
}

/// What a prompt's tier does, whatever the threshold and lambda.
#[derive(Debug, Clone, Default)]
pub struct TierRun {
    calls: Vec<Call>,
    /// Cost paid after each call.
    cum_cost: Vec<f64>,
    /// Chain: the acceptor's probability after each call.
    accept_prob: Vec<f64>,
    /// Chain: the acceptor's probability that escalating would be right, after each call.
    escalate_prob: Vec<f64>,
    /// Real score of the response the cascade would return after each call.
    pick_score: Vec<f64>,
    /// Votes for the plurality answer after every call.
    votes: usize,
}

impl TierRun {
    /// The call after which a chain under `rule` accepts; `penalty(k)`: lambda times what
    /// escalating would still cost after call `k` (0 once the target was called).
    pub fn accepted_after(
        &self,
        rule: &CascadeRule,
        penalty: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        (0..self.accept_prob.len())
            .find(|&k| rule.accepts(k, self.accept_prob[k], self.escalate_prob[k], penalty(k)))
    }
}

/// Runs `tier` on prompt `i` (models without an outcome are skipped, as a failed call
/// would be), with the chain's acceptor when given.
pub fn tier_run(
    d: &CascadeInputs,
    i: usize,
    tier: &[usize],
    acceptor: Option<&Acceptor>,
) -> TierRun {
    let mut run = TierRun::default();
    if !d.has_answers[i] {
        return run;
    }
    let (pred, _) = d.pred_row(i);
    let best = pred.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut paid = 0.0;
    for &m in tier {
        let Some((_, c)) = d.outcome(i, m) else {
            continue;
        };
        run.calls.push(Call {
            model: m,
            answer: d.answers[i * d.n_models + m],
            predicted: pred[m],
        });
        paid += c;
        run.cum_cost.push(paid);
        let (x, v) = features(&run.calls, best);
        let step = run.calls.len() - 1;
        run.accept_prob
            .push(acceptor.map_or(0.0, |a| a.prob(step, &x)));
        run.escalate_prob
            .push(acceptor.map_or(1.0, |a| a.prob_escalate(step, &x)));
        let picked = run.calls[v.pick].model;
        run.pick_score
            .push(d.outcome(i, picked).map_or(0.0, |(s, _)| s));
    }
    if !run.calls.is_empty() {
        run.votes = plurality(&run.calls).votes;
    }
    run
}

/// The real (score, cost) of prompt `i` under `rule` after its tier run, escalating to
/// `target` (the router's choice at `lambda`).
pub fn realise_prompt(
    d: &CascadeInputs,
    i: usize,
    run: &TierRun,
    rule: &CascadeRule,
    target: usize,
    lambda: f64,
) -> (f64, f64) {
    let escalate = |paid: f64| {
        let (s, c) = d.outcome(i, target).unwrap_or((0.0, 0.0));
        let called = run.calls.iter().any(|x| x.model == target);
        (s, if called { paid } else { paid + c })
    };
    if !d.has_answers[i] || run.calls.is_empty() {
        return escalate(0.0);
    }
    let paid = run.cum_cost.last().copied().unwrap_or(0.0);
    match rule {
        CascadeRule::Chain { .. } | CascadeRule::Gain { .. } => {
            // Escalating to a model already called costs nothing more.
            let penalty = lambda * d.pred_cost[i * d.n_models + target];
            let called_at = run.calls.iter().position(|c| c.model == target);
            match run.accepted_after(rule, |k| match called_at {
                Some(t) if t <= k => 0.0,
                _ => penalty,
            }) {
                Some(k) => (run.pick_score[k], run.cum_cost[k]),
                None => escalate(paid),
            }
        }
        CascadeRule::Agreement { min_agree } => {
            if run.votes >= (*min_agree).max(1) {
                (run.pick_score.last().copied().unwrap_or(0.0), paid)
            } else {
                escalate(paid)
            }
        }
    }
}

/// The acceptor's training examples for `tier` on `d`: after each call of each prompt
/// with answers, the features, the real score of the response it would return and that
/// of escalating quality first (lambda 0).
pub fn acceptor_examples(d: &CascadeInputs, tier: &[usize]) -> Vec<Example> {
    let mut out = Vec::new();
    let mut idx = Vec::with_capacity(d.n_models);
    for i in 0..d.len() {
        if !d.has_answers[i] {
            continue;
        }
        // What escalating quality-first would have scored.
        let y_escalate = d
            .escalation_target(i, 0.0, &mut idx)
            .and_then(|t| d.outcome(i, t))
            .map_or(0.0, |(s, _)| s);
        let (pred, _) = d.pred_row(i);
        let best = pred.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut calls = Vec::with_capacity(tier.len());
        for &m in tier {
            if d.outcome(i, m).is_none() {
                continue;
            }
            calls.push(Call {
                model: m,
                answer: d.answers[i * d.n_models + m],
                predicted: pred[m],
            });
            let (x, v) = features(&calls, best);
            let y = d.outcome(i, calls[v.pick].model).map_or(0.0, |(s, _)| s);
            out.push(Example {
                step: calls.len() - 1,
                x,
                y,
                y_escalate,
            });
        }
    }
    out
}

/// One point of a cascade's sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepPoint {
    pub rule: CascadeRule,
    /// The escalation's lambda (prompts with answers).
    pub lambda: f64,
    /// The lambda of plain routing (prompts without answers).
    pub lambda_plain: f64,
    pub quality: f64,
    pub cost: f64,
}

/// The rules a family sweeps.
pub fn rule_grid(family: Family, tier_len: usize) -> Vec<CascadeRule> {
    match family {
        Family::Chain => STEP_DISCOUNTS
            .iter()
            .flat_map(|&step_discount| {
                THRESHOLDS.iter().map(move |&threshold| CascadeRule::Chain {
                    threshold,
                    step_discount,
                })
            })
            .chain(
                GAIN_MARGINS
                    .iter()
                    .map(|&margin| CascadeRule::Gain { margin }),
            )
            .collect(),
        Family::Agreement => (1..=tier_len.max(1))
            .map(|min_agree| CascadeRule::Agreement { min_agree })
            .collect(),
    }
}

/// Pairs `(escalation, plain)` of indices into a lambda grid of `n`: every pair when
/// `independent` (a cascade's closed-form prompts and its plainly routed ones may run at
/// different lambdas, as an operator's routes may), else each lambda with itself.
pub fn lambda_pairs(n: usize, independent: bool) -> Vec<(usize, usize)> {
    if independent {
        (0..n).flat_map(|e| (0..n).map(move |p| (e, p))).collect()
    } else {
        (0..n).map(|l| (l, l)).collect()
    }
}

/// Mean real quality and cost of every (rule, lambda pair) on `d`: the prompts with
/// answers run the cascade and escalate to `targets[e]` (lambda `lambdas[e]`); those
/// without are routed plainly to `targets[p]`, for each `(e, p)` of `pairs`.
pub fn sweep(
    d: &CascadeInputs,
    cascade: &Cascade,
    rules: &[CascadeRule],
    lambdas: &[f64],
    targets: &[Vec<usize>],
    pairs: &[(usize, usize)],
) -> Vec<SweepPoint> {
    let (answered, plain): (Vec<usize>, Vec<usize>) = (0..d.len()).partition(|&i| d.has_answers[i]);
    let runs: Vec<TierRun> = answered
        .iter()
        .map(|&i| tier_run(d, i, &cascade.tier, cascade.acceptor.as_ref()))
        .collect();
    // Plain routing's totals per lambda: the same whatever the rule.
    let plain_sums: Vec<(f64, f64)> = targets
        .iter()
        .map(|t| {
            plain.iter().fold((0.0, 0.0), |(q, c), &i| {
                let (s, k) = d.outcome(i, t[i]).unwrap_or((0.0, 0.0));
                (q + s, c + k)
            })
        })
        .collect();
    let n = d.len().max(1) as f64;
    let mut out = Vec::with_capacity(rules.len() * pairs.len());
    for rule in rules {
        // The cascade's totals per escalation lambda, computed once.
        let mut answered_sums: Vec<Option<(f64, f64)>> = vec![None; lambdas.len()];
        for &(e, p) in pairs {
            let (q, c) = *answered_sums[e].get_or_insert_with(|| {
                answered
                    .iter()
                    .zip(&runs)
                    .fold((0.0, 0.0), |(q, c), (&i, run)| {
                        let (s, k) = realise_prompt(d, i, run, rule, targets[e][i], lambdas[e]);
                        (q + s, c + k)
                    })
            });
            let (pq, pc) = plain_sums[p];
            out.push(SweepPoint {
                rule: rule.clone(),
                lambda: lambdas[e],
                lambda_plain: lambdas[p],
                quality: (q + pq) / n,
                cost: (c + pc) / n,
            });
        }
    }
    out
}

/// The two cascade families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Chain,
    Agreement,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Chain => "cascade-chain",
            Family::Agreement => "cascade-agreement",
        }
    }

    /// The fewest tier models the family needs: a chain calls one before escalating, an
    /// agreement tier compares two.
    pub fn min_tier(self) -> usize {
        match self {
            Family::Chain => 1,
            Family::Agreement => 2,
        }
    }

    /// Why the family is missing from a report: too few [`candidates`] for its tier.
    pub fn missing_warning(self) -> String {
        format!(
            "--cascades: {} needs at least {} tier model(s) among the candidates (the {} most \
             accurate models whose mean cost is at most {} of the best model's), and this \
             pool has fewer; it is not reported",
            self.name(),
            self.min_tier(),
            MAX_CANDIDATES,
            CHEAP_SHARE
        )
    }
}

/// The models a tier is drawn from: the [`MAX_CANDIDATES`] most accurate of those whose
/// mean cost is at most [`CHEAP_SHARE`] of the best comparable model's; cheapest first.
/// Dominated models stay in: a tier model is worth its second opinion, not only its own
/// accuracy.
pub fn candidates(d: &CascadeInputs) -> Vec<usize> {
    let means = d.model_means();
    let comparable = |m: usize| means[m].2 >= routewise_data::coverage::MIN_COVERAGE;
    let Some(best) = (0..d.n_models)
        .filter(|&m| comparable(m))
        .max_by(|&a, &b| means[a].0.total_cmp(&means[b].0))
    else {
        return Vec::new();
    };
    let cap = means[best].1 * CHEAP_SHARE;
    let mut cheap: Vec<usize> = (0..d.n_models)
        .filter(|&m| m != best && means[m].2 > 0.0 && means[m].1 <= cap)
        .collect();
    cheap.sort_by(|&a, &b| means[b].0.total_cmp(&means[a].0));
    cheap.truncate(MAX_CANDIDATES);
    cheap.sort_by(|&a, &b| means[a].1.total_cmp(&means[b].1).then(a.cmp(&b)));
    cheap
}

/// Every tier of `min_len..=max_len` candidates (subsets, in the candidates' order).
pub fn tiers(cands: &[usize], min_len: usize, max_len: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let n = cands.len();
    for mask in 1u32..(1u32 << n) {
        let len = mask.count_ones() as usize;
        if len < min_len || len > max_len {
            continue;
        }
        out.push(
            (0..n)
                .filter(|b| mask & (1 << b) != 0)
                .map(|b| cands[b])
                .collect(),
        );
    }
    out
}

/// One operating point chosen on train: a tier (with its acceptor), a rule, the
/// escalation's lambda and the lambda of the prompts routed plainly.
#[derive(Debug, Clone)]
pub struct Config {
    pub cascade: Cascade,
    pub lambda: f64,
    /// The lambda of plain routing (prompts without answers).
    pub lambda_plain: f64,
    /// Its mean quality and cost on the train predictions.
    pub train: (f64, f64),
}

/// A family's operating points: the configurations on the frontier of every tier's
/// sweep on the train predictions.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub family: Family,
    pub configs: Vec<Config>,
    /// AIQ of that frontier on train.
    pub train_aiq: f64,
}

/// The AIQ range of `d`: cheapest and dearest comparable model's mean cost.
pub fn cost_range(d: &CascadeInputs) -> (f64, f64) {
    let means = d.model_means();
    let costs = means
        .iter()
        .filter(|m| m.2 >= routewise_data::coverage::MIN_COVERAGE)
        .map(|m| m.1);
    costs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| {
        (lo.min(c), hi.max(c))
    })
}

/// Builds the cascade of `family` on `tier`, fitting a chain's acceptor on `d`.
pub fn build(d: &CascadeInputs, family: Family, tier: Vec<usize>) -> Cascade {
    match family {
        Family::Chain => {
            let acceptor = Acceptor::fit(&acceptor_examples(d, &tier), tier.len());
            Cascade {
                tier,
                rule: CascadeRule::Chain {
                    threshold: 1.01,
                    step_discount: 0.0,
                },
                acceptor: Some(acceptor),
            }
        }
        Family::Agreement => {
            let n = tier.len();
            Cascade {
                tier,
                rule: CascadeRule::Agreement { min_agree: n },
                acceptor: None,
            }
        }
    }
}

/// Chooses each family's operating points on `train` (out-of-fold predictions): every
/// candidate tier is swept over the family's rules and `lambdas` (pairs of an escalation
/// and a plain-routing lambda when some prompts have no answers, [`lambda_pairs`]), and
/// the (tier, rule, lambdas) configurations on the non-decreasing hull of all those
/// points are kept.
/// A family with no candidate tier ([`Family::min_tier`]) is left out: its only
/// configuration would be plain routing, which is the router's own report.
pub fn choose(train: &CascadeInputs, lambdas: &[f64]) -> Result<Vec<Chosen>, EvalError> {
    let cands = candidates(train);
    let targets = train.escalation_targets(lambdas)?;
    // Closed-form and free-form prompts may run at their own lambdas (one route each).
    let pairs = lambda_pairs(lambdas.len(), train.prompts_without_answers() > 0);
    let (c_min, c_max) = cost_range(train);
    let mut out = Vec::new();
    for family in [Family::Chain, Family::Agreement] {
        // Every swept point: its tier's cascade (index into `bases`), rule and lambda.
        let mut bases: Vec<Cascade> = Vec::new();
        let mut all: Vec<(usize, SweepPoint)> = Vec::new();
        let mut all_tiers = tiers(&cands, family.min_tier(), MAX_TIER);
        if all_tiers.is_empty() {
            continue;
        }
        if family == Family::Chain {
            // No tier: plain routing, so the chain's frontier can fall back to the
            // router's where no tier pays.
            all_tiers.insert(0, Vec::new());
        }
        for tier in all_tiers {
            let base = build(train, family, tier);
            let mut rules = rule_grid(family, base.tier.len());
            if base.tier.is_empty() {
                rules.truncate(1);
            }
            let pts = sweep(train, &base, &rules, lambdas, &targets, &pairs);
            all.extend(pts.into_iter().map(|p| (bases.len(), p)));
            bases.push(base);
        }
        if all.is_empty() {
            continue;
        }
        let pts: Vec<(f64, f64)> = all.iter().map(|(_, p)| (p.cost, p.quality)).collect();
        let hull = nondecreasing_hull(&pts);
        let mut configs: Vec<Config> = Vec::new();
        for &(cost, quality) in &hull.vertices {
            if let Some((b, p)) = all
                .iter()
                .find(|(_, p)| p.cost == cost && p.quality == quality)
            {
                let mut cascade = bases[*b].clone();
                cascade.rule = p.rule.clone();
                configs.push(Config {
                    cascade,
                    lambda: p.lambda,
                    lambda_plain: p.lambda_plain,
                    train: (p.quality, p.cost),
                });
            }
        }
        out.push(Chosen {
            family,
            configs,
            train_aiq: aiq(&pts, c_min, c_max),
        });
    }
    Ok(out)
}

/// Out-of-fold predictions of a `kind` router on every row of `train` ([`FOLDS`] folds,
/// assigned round-robin): `train.len() x n_models`.
pub fn cross_fit(
    kind: RouterKind,
    train: &TrainSet,
    catalog: &routewise_router::Catalog,
    cfg: &RouterConfigs,
) -> Result<Vec<f64>, EvalError> {
    let (n, nm) = (train.len(), train.n_models);
    let mut pred = vec![0.0; n * nm];
    let folds = FOLDS.min(n.max(1));
    if folds < 2 {
        return Err(EvalError::Split(
            "cascades need at least 2 train prompts to cross-fit".into(),
        ));
    }
    for f in 0..folds {
        let fit_rows: Vec<usize> = (0..n).filter(|i| i % folds != f).collect();
        let router = routewise_router::fit_router(kind, &train.subset(&fit_rows), catalog, cfg)?;
        for i in (0..n).filter(|i| i % folds == f) {
            routewise_router::Router::predict_scores(
                &router,
                train.row(i),
                &mut pred[i * nm..(i + 1) * nm],
            );
        }
    }
    Ok(pred)
}

/// One operating point of a cascade family, on train (where it was chosen) and test.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigRow {
    pub tier: Vec<String>,
    pub rule: CascadeRule,
    pub lambda: f64,
    pub lambda_plain: f64,
    pub train_quality: f64,
    pub train_cost: f64,
    pub quality: f64,
    pub cost: f64,
}

/// One cascade family's results on test (the issue's `cascades` entries, plus extra keys).
#[derive(Debug, Clone, Serialize)]
pub struct CascadeRow {
    pub name: String,
    pub family: Family,
    /// The tier of the family's highest-quality operating point, in call order.
    pub tier: Vec<String>,
    /// The router whose predictions feed the acceptor and the escalation.
    pub router: String,
    /// The prompt featurizer of that router (chosen on train among those tried).
    pub featurizer: String,
    pub aiq: f64,
    pub max_quality: f64,
    pub quality_at_best_single_cost: f64,
    /// Lowest frontier cost reaching the best single model's quality / its cost.
    pub cost_ratio_at_best_single_quality: Option<f64>,
    /// The same for 95% of the best single model's quality.
    #[serde(rename = "cost_ratio_at_95pct_best_single_quality")]
    pub cost_ratio_at_95pct: Option<f64>,
    /// AIQ on the train split's out-of-fold predictions (where the points were chosen).
    pub train_aiq: f64,
    /// Test prompts routed plainly (no model's answer recorded).
    pub prompts_without_answers: usize,
    /// The test frontier: `[cost, quality]` of the points on the non-decreasing hull.
    pub curve: Vec<[f64; 2]>,
    /// The operating points chosen on train, with their test outcome.
    pub configs: Vec<ConfigRow>,
}

/// Evaluates the operating points of `chosen` on `test` and summarises their frontier
/// against the best single model.
pub fn summarise(
    test: &CascadeInputs,
    chosen: &Chosen,
    models: &[String],
    router: &str,
    best_single: Point,
    (c_min, c_max): (f64, f64),
) -> Result<CascadeRow, EvalError> {
    let names = |t: &[usize]| -> Vec<String> {
        t.iter()
            .map(|&m| models.get(m).cloned().unwrap_or_default())
            .collect()
    };
    let mut configs = Vec::with_capacity(chosen.configs.len());
    for c in &chosen.configs {
        let lambdas = [c.lambda, c.lambda_plain];
        let targets = test.escalation_targets(&lambdas)?;
        let p = sweep(
            test,
            &c.cascade,
            std::slice::from_ref(&c.cascade.rule),
            &lambdas,
            &targets,
            &[(0, 1)],
        );
        let (quality, cost) = p.first().map_or((0.0, 0.0), |p| (p.quality, p.cost));
        configs.push(ConfigRow {
            tier: names(&c.cascade.tier),
            rule: c.cascade.rule.clone(),
            lambda: c.lambda,
            lambda_plain: c.lambda_plain,
            train_quality: c.train.0,
            train_cost: c.train.1,
            quality,
            cost,
        });
    }
    let pts: Vec<(f64, f64)> = configs.iter().map(|c| (c.cost, c.quality)).collect();
    let hull = nondecreasing_hull(&pts);
    let ratio = |q: f64| {
        hull.min_cost_reaching(q)
            .filter(|_| best_single.cost > 0.0)
            .map(|c| c / best_single.cost)
    };
    let top = chosen
        .configs
        .iter()
        .max_by(|a, b| a.train.0.total_cmp(&b.train.0))
        .map(|c| names(&c.cascade.tier))
        .unwrap_or_default();
    Ok(CascadeRow {
        name: chosen.family.name().to_string(),
        family: chosen.family,
        tier: top,
        router: router.to_string(),
        featurizer: String::new(),
        aiq: aiq(&pts, c_min, c_max),
        max_quality: pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
        quality_at_best_single_cost: hull.value_at(best_single.cost),
        cost_ratio_at_best_single_quality: ratio(best_single.quality),
        cost_ratio_at_95pct: ratio(0.95 * best_single.quality),
        train_aiq: chosen.train_aiq,
        prompts_without_answers: test.prompts_without_answers(),
        curve: hull.vertices.iter().map(|&(c, q)| [c, q]).collect(),
        configs,
    })
}

/// Lambdas of the train-side tier search: 0 and every `k`-th of the grid (at most 16).
fn coarse(lambdas: &[f64]) -> Vec<f64> {
    let step = lambdas.len().div_ceil(15).max(1);
    let mut out: Vec<f64> = lambdas.iter().copied().step_by(step).collect();
    if !out.contains(&0.0) {
        out.push(0.0);
    }
    out
}

/// One featurization of the prompts a cascade's router may use: the prepared train set
/// (features, catalog), the test prompts' features, and the router's test predictions
/// when the caller already has them (the router is among those evaluated).
pub struct Featurized<'a> {
    pub prepared: &'a routewise_router::Prepared,
    pub test_feats: &'a [f32],
    pub test_pred: Option<Vec<f64>>,
}

/// `eval --cascades`: for each featurization, cross-fits a `kind` router on `train` and
/// chooses each family's operating points there ([`choose`]); each family then keeps the
/// featurization whose train frontier has the higher AIQ (a choice made on train only),
/// and its chosen cascades are evaluated on `test` with the router fitted on all of
/// `train`. `test_costs` are the test prompts' expected costs; `cost_range` the AIQ
/// range.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_cascades(
    featurized: Vec<Featurized<'_>>,
    train: &[&Record],
    test: &[&Record],
    test_costs: &[f64],
    kind: RouterKind,
    cfg: &RouterConfigs,
    lambdas: &[f64],
    best_single: Point,
    cost_range: (f64, f64),
    models: &[String],
) -> Result<Vec<CascadeRow>, EvalError> {
    let nm = models.len();
    // Per featurization: its families' choices on train, and its test inputs.
    let mut candidates: Vec<(String, Vec<Chosen>, CascadeInputs)> = Vec::new();
    for f in featurized {
        let prepared = f.prepared;
        let oof = cross_fit(kind, &prepared.train_set, &prepared.catalog, cfg)?;
        let train_costs = crate::fitted::expected_costs(&prepared.catalog, train);
        let train_in = CascadeInputs::new(train, nm, oof, train_costs)?;
        let chosen = choose(&train_in, &coarse(lambdas))?;
        let pred = match f.test_pred {
            Some(p) => p,
            None => {
                let router = prepared.fit(kind, cfg)?;
                let dim = prepared.train_set.dim;
                let mut pred = vec![0.0; test.len() * nm];
                for (i, row) in pred.chunks_exact_mut(nm).enumerate() {
                    routewise_router::Router::predict_scores_keyed(
                        &router,
                        &f.test_feats[i * dim..(i + 1) * dim],
                        &test[i].id,
                        row,
                    );
                }
                pred
            }
        };
        let test_in = CascadeInputs::new(test, nm, pred, test_costs.to_vec())?;
        candidates.push((prepared.featurizer.name().to_string(), chosen, test_in));
    }
    let mut rows = Vec::new();
    for family in [Family::Chain, Family::Agreement] {
        // The featurization whose train frontier is best for this family (the first on
        // ties: the caller's own comes first).
        let mut best: Option<(&str, &Chosen, &CascadeInputs)> = None;
        for (name, chosen, test_in) in &candidates {
            if let Some(c) = chosen.iter().find(|c| c.family == family) {
                if best.is_none_or(|b| c.train_aiq > b.1.train_aiq) {
                    best = Some((name, c, test_in));
                }
            }
        }
        if let Some((featurizer, chosen, test_in)) = best {
            let mut row = summarise(
                test_in,
                chosen,
                models,
                &kind.to_string(),
                best_single,
                cost_range,
            )?;
            row.featurizer = featurizer.to_string();
            rows.push(row);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use routewise_data::{Outcome, Split};
    use routewise_router::cascade::{Context, Next};

    /// A prompt's outcomes: (score, cost, answer) per model.
    fn record(id: usize, outs: &[(f64, f64, Answer)]) -> Record {
        let outcomes = outs
            .iter()
            .map(|&(score, cost_usd, answer)| {
                Some(Outcome {
                    score,
                    cost_usd,
                    input_tokens: 10,
                    output_tokens: 1,
                    answer,
                })
            })
            .collect();
        crate::testing::record(id, Split::Test, outcomes)
    }

    fn given(a: u32) -> Answer {
        Answer::Given(routewise_data::AnswerId(a))
    }

    /// Three models: cheap a (0.01), cheap b (0.02), strong c (1.0, always right).
    fn inputs(recs: &[Record], pred: &[[f64; 3]]) -> CascadeInputs {
        let refs: Vec<&Record> = recs.iter().collect();
        let p: Vec<f64> = pred.iter().flatten().copied().collect();
        let c: Vec<f64> = pred.iter().flat_map(|_| [0.01, 0.02, 1.0]).collect();
        CascadeInputs::new(&refs, 3, p, c).unwrap()
    }

    /// Three prompts, predictions `[0.5, 0.6, 0.9]` on each: a and b agree on the right
    /// answer; a is wrong and disagrees with b; no answers recorded (plain routing).
    fn agree_disagree_plain() -> CascadeInputs {
        let recs = [
            record(
                0,
                &[
                    (1.0, 0.01, given(1)),
                    (1.0, 0.02, given(1)),
                    (1.0, 1.0, given(1)),
                ],
            ),
            record(
                1,
                &[
                    (0.0, 0.01, given(2)),
                    (1.0, 0.02, given(1)),
                    (1.0, 1.0, given(1)),
                ],
            ),
            record(
                2,
                &[
                    (0.0, 0.01, Answer::Absent),
                    (0.0, 0.02, Answer::Absent),
                    (1.0, 1.0, Answer::Absent),
                ],
            ),
        ];
        inputs(&recs, &[[0.5, 0.6, 0.9]; 3])
    }

    #[test]
    fn agreement_accepts_when_the_cheap_models_agree_and_pays_for_escalation_otherwise() {
        let d = agree_disagree_plain();
        assert_eq!(d.prompts_without_answers(), 1);
        let c = Cascade {
            tier: vec![0, 1],
            rule: CascadeRule::Agreement { min_agree: 2 },
            acceptor: None,
        };
        let targets = d.escalation_targets(&[0.0]).unwrap();
        let pts = sweep(
            &d,
            &c,
            std::slice::from_ref(&c.rule),
            &[0.0],
            &targets,
            &[(0, 0)],
        );
        // scores 1, 1, 1; costs 0.03, 1.03, 1.0
        assert!((pts[0].quality - 1.0).abs() < 1e-12);
        assert!(
            (pts[0].cost - (0.03 + 1.03 + 1.0) / 3.0).abs() < 1e-12,
            "{pts:?}"
        );
    }

    #[test]
    fn prompts_without_answers_are_routed_at_their_own_lambda() {
        let d = agree_disagree_plain();
        let c = Cascade {
            tier: vec![0, 1],
            rule: CascadeRule::Agreement { min_agree: 2 },
            acceptor: None,
        };
        // lambda 0 picks c; lambda 20 picks a (0.5 - 0.2 against b's 0.6 - 0.4).
        let lambdas = [0.0, 20.0];
        let targets = d.escalation_targets(&lambdas).unwrap();
        assert_eq!(lambda_pairs(2, false), vec![(0, 0), (1, 1)]);
        let pairs = lambda_pairs(2, true);
        assert_eq!(pairs, vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
        let pts = sweep(
            &d,
            &c,
            std::slice::from_ref(&c.rule),
            &lambdas,
            &targets,
            &pairs,
        );
        assert_eq!(pts.len(), 4);
        let at = |e: f64, p: f64| {
            pts.iter()
                .find(|x| x.lambda == e && x.lambda_plain == p)
                .unwrap()
        };
        // Escalating quality first, routing the free-form prompt cheaply: prompt 1 goes
        // to c, prompt 2 to a.
        let p = at(0.0, 20.0);
        assert!((p.quality - 2.0 / 3.0).abs() < 1e-12, "{p:?}");
        assert!((p.cost - (0.03 + 1.03 + 0.01) / 3.0).abs() < 1e-12, "{p:?}");
        // The other way round: prompt 1 takes a's answer already paid for, prompt 2 c.
        let p = at(20.0, 0.0);
        assert!((p.quality - 2.0 / 3.0).abs() < 1e-12, "{p:?}");
        assert!((p.cost - (0.03 + 0.03 + 1.0) / 3.0).abs() < 1e-12, "{p:?}");
        // Same lambda on both: what a single-lambda sweep gives.
        let single = sweep(
            &d,
            &c,
            std::slice::from_ref(&c.rule),
            &lambdas,
            &targets,
            &[(1, 1)],
        );
        assert_eq!(&single[0], at(20.0, 20.0));
    }

    #[test]
    fn escalation_reuses_an_answer_already_paid_for() {
        let recs = [record(
            0,
            &[
                (0.0, 0.01, given(2)),
                (1.0, 0.02, given(1)),
                (1.0, 1.0, given(1)),
            ],
        )];
        // The router prefers b even at lambda 0: escalation returns b's answer, no new call.
        let d = inputs(&recs, &[[0.5, 0.95, 0.9]]);
        let c = Cascade {
            tier: vec![0, 1],
            rule: CascadeRule::Agreement { min_agree: 2 },
            acceptor: None,
        };
        let run = tier_run(&d, 0, &c.tier, None);
        assert_eq!(realise_prompt(&d, 0, &run, &c.rule, 1, 0.0), (1.0, 0.03));
    }

    /// The sweep's shortcut (tier run computed once) decides exactly as the step-by-step
    /// rule the gateway would run ([`Cascade::next`]).
    #[test]
    fn the_simulation_agrees_with_the_step_by_step_rule() {
        let mut recs = Vec::new();
        let mut preds = Vec::new();
        let mut x = 12345u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1000) as f64 / 1000.0
        };
        for i in 0..300 {
            let ans = |r: f64| {
                if r < 0.1 {
                    Answer::Unreadable
                } else {
                    given((r * 3.0) as u32)
                }
            };
            let (ra, rb) = (rnd(), rnd());
            let (sa, sb) = (
                f64::from(u8::from((0.1..0.34).contains(&ra))),
                f64::from(u8::from((0.1..0.34).contains(&rb))),
            );
            recs.push(record(
                i,
                &[
                    (sa, 0.01, ans(ra)),
                    (sb, 0.02, ans(rb)),
                    (1.0, 1.0, given(0)),
                ],
            ));
            preds.push([rnd(), rnd(), rnd()]);
        }
        let d = inputs(&recs, &preds);
        let tier = vec![0, 1];
        let base = build(&d, Family::Chain, tier.clone());
        let rules = [
            CascadeRule::Chain {
                threshold: 0.0,
                step_discount: 0.0,
            },
            CascadeRule::Chain {
                threshold: 0.3,
                step_discount: 0.0,
            },
            CascadeRule::Chain {
                threshold: 0.5,
                step_discount: 0.2,
            },
            CascadeRule::Chain {
                threshold: 0.7,
                step_discount: 0.3,
            },
            CascadeRule::Chain {
                threshold: 1.01,
                step_discount: 0.0,
            },
            CascadeRule::Gain { margin: 0.0 },
            CascadeRule::Gain { margin: 0.1 },
        ];
        for rule in rules {
            for lambda in [0.0, 0.5] {
                let mut c = base.clone();
                c.rule = rule.clone();
                for i in 0..d.len() {
                    let target = d.escalation_target(i, lambda, &mut Vec::new()).unwrap();
                    let run = tier_run(&d, i, &tier, c.acceptor.as_ref());
                    let fast = realise_prompt(&d, i, &run, &c.rule, target, lambda);
                    // Step by step.
                    let (pred, _) = d.pred_row(i);
                    let best = pred.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let (mut calls, mut attempted, mut paid) = (Vec::new(), 0, 0.0);
                    let slow = loop {
                        let called = calls.iter().any(|x: &Call| x.model == target);
                        let cx = Context {
                            best_predicted: best,
                            escalation_penalty: if called {
                                0.0
                            } else {
                                lambda * d.pred_cost[i * 3 + target]
                            },
                        };
                        match c.next(&calls, attempted, cx) {
                            Next::Call(m) => {
                                attempted += 1;
                                let (_, cost) = d.outcome(i, m).unwrap();
                                paid += cost;
                                calls.push(Call {
                                    model: m,
                                    answer: d.answers[i * 3 + m],
                                    predicted: pred[m],
                                });
                            }
                            Next::Accept(k) => {
                                break (d.outcome(i, calls[k].model).unwrap().0, paid)
                            }
                            Next::Escalate => {
                                let (s, cost) = d.outcome(i, target).unwrap();
                                let called = calls.iter().any(|x: &Call| x.model == target);
                                break (s, if called { paid } else { paid + cost });
                            }
                        }
                    };
                    assert_eq!(fast, slow, "prompt {i} rule {rule:?} lambda {lambda}");
                }
            }
        }
    }

    #[test]
    fn candidates_are_the_most_accurate_cheap_models_in_cost_order() {
        // Models: 0 cheap 0.5, 1 cheap but worse and dearer than 0 (kept: a second
        // opinion), 2 cheap 0.7, 3 at 0.6x the best's cost (too dear), 4 best (cost 1.0).
        let recs: Vec<Record> = (0..10)
            .map(|i| {
                let r = |p: f64| f64::from(u8::from((i as f64) < p * 10.0));
                record(
                    i,
                    &[
                        (r(0.5), 0.01, given(0)),
                        (r(0.4), 0.02, given(0)),
                        (r(0.7), 0.1, given(0)),
                        (r(0.8), 0.6, given(0)),
                        (r(0.9), 1.0, given(0)),
                    ],
                )
            })
            .collect();
        let refs: Vec<&Record> = recs.iter().collect();
        let d = CascadeInputs::new(&refs, 5, vec![0.5; 50], vec![0.1; 50]).unwrap();
        assert_eq!(candidates(&d), vec![0, 1, 2]);
        assert_eq!(tiers(&[0, 2], 1, 3), vec![vec![0], vec![2], vec![0, 2]]);
    }
}
