//! `routewise replay --log`: a candidate router evaluated on the gateway's own decision
//! log, with the estimators of [`crate::ope`].
//!
//! Input: the gateway's JSON log (`routewise serve --log-format json`), whose
//! `routewise::decision` lines carry each routed decision's chosen model, propensity,
//! policy, realised cost and (with `log.decisions.prompt: true`) prompt, and whose
//! `routewise::feedback` lines carry the score a client reported for a decision. Lines of
//! other targets are skipped, so the whole log can be given as it is.
//!
//! A decision is used when the router chose (`reason: routed`), the chosen model answered
//! (a fallback's outcome is not the choice's), and a feedback score exists; the others are
//! counted by cause. A used decision with no propensity, no prompt, or a model the
//! candidate does not know is refused with the line's number: estimates from a log that
//! cannot support them are not given.
//!
//! The candidate is either a router artifact, which re-routes each logged prompt (under
//! `--policy`, else the decision's own policy), or a shadow router of the gateway
//! (`--shadow NAME`), whose `routewise::shadow` lines already hold its choice and its
//! predicted score and cost for its choice and for the live one: no artifact and no prompt
//! needed. Either way the candidate's predicted score and cost are DR's direct model, and
//! the outcome's variance floor is `s (1 - s)` of its predicted score. Reward =
//! `score - lambda * cost_usd`, with `lambda` from `--lambda`, else that of the policy the
//! candidate decided under (a shadow's logs its own).
//! Decisions a shadow has no line for (dropped from its queue) or whose live model it does
//! not know are counted and left out.
//!
//! Parsing is a pure function of the text ([`parse_log`]); [`replay_log`] does the rest.
//! [`entry_lines`] writes a state store's feedback log entry as the same two lines.

use std::collections::HashMap;

use routewise_router::{Engine, Policy};
use serde::Serialize;
use serde_json::Value;

use crate::ope::{bounded_outcome_var, estimate_all, Estimate, Estimates, Sample, MIN_ESS};
use crate::EvalError;

/// The two log lines (`routewise::decision`, `routewise::feedback`) that a feedback log
/// entry stands for, in the gateway's JSON log shape, so that [`parse_log`] reads an
/// export (`routewise logs export`) like a log; `None` for an entry without a replay
/// context (written before it was kept).
pub fn entry_lines(e: &routewise_online::FeedbackEntry) -> Option<[Value; 2]> {
    let r = e.replay.as_ref()?;
    let decision = serde_json::json!({
        "target": "routewise::decision",
        "fields": {
            "message": "decision",
            "decision_id": e.decision_id,
            "reason": "routed",
            "chosen": r.chosen,
            "model": e.model,
            "policy": r.policy,
            "propensity": r.propensity,
            "explored": r.explored,
            "prompt": r.prompt,
            "prompt_tokens": r.prompt_tokens,
            "realised_cost_usd": e.cost_usd,
        }
    });
    let feedback = serde_json::json!({
        "target": "routewise::feedback",
        "fields": {
            "message": "feedback",
            "decision_id": e.decision_id,
            "model": e.model,
            "score": e.score,
            "received_ms": e.received_ms,
        }
    });
    Some([decision, feedback])
}

/// One routed decision read from the log, joined with its feedback.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedDecision {
    /// 1-based line of the decision in the log.
    pub line: usize,
    pub decision_id: String,
    pub chosen: String,
    pub answered: String,
    pub policy: Policy,
    pub propensity: Option<f64>,
    pub explored: bool,
    pub prompt: Option<String>,
    pub prompt_tokens: u32,
    /// The realised cost (upstream usage x prices), overridden by the feedback's.
    pub cost_usd: Option<f64>,
    /// The feedback score, if any.
    pub score: Option<f64>,
}

/// A shadow router's logged decision (`routewise::shadow` line).
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowDecision {
    pub chosen: String,
    /// The shadow's policy (its reward's lambda).
    pub policy: Option<Policy>,
    pub score: f64,
    pub cost: f64,
    /// Its predictions for the live choice (absent when it does not know that model).
    pub live_score: Option<f64>,
    pub live_cost: Option<f64>,
}

/// Shadow name -> decision id -> its decision.
pub type ShadowLines = HashMap<String, HashMap<String, ShadowDecision>>;

/// What the log held.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LogCounts {
    /// `routewise::decision` lines.
    pub decision_lines: usize,
    /// Of those, requests that named their model (no routing decision).
    pub direct: usize,
    /// Routed decisions answered by a fallback, not the choice.
    pub answered_by_fallback: usize,
    /// Routed decisions without feedback.
    pub without_feedback: usize,
    /// `routewise::feedback` lines.
    pub feedback_lines: usize,
    /// Feedback for a decision not in the log.
    pub orphan_feedback: usize,
    /// `routewise::shadow` lines.
    pub shadow_lines: usize,
    /// Used decisions the evaluated shadow has no usable line for (`--shadow`).
    pub without_shadow_decision: usize,
}

fn bad(file: &str, line: usize, msg: impl std::fmt::Display) -> EvalError {
    EvalError::Config(format!("{file}:{line}: {msg}"))
}

/// The event's fields: tracing's JSON puts them under `fields`.
fn fields(v: &Value) -> &Value {
    v.get("fields").unwrap_or(v)
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Reads the routed decisions of a JSON log and joins their feedback (`file` names the
/// log in errors). Decisions without feedback or answered by a fallback are counted and
/// left out.
pub fn parse_log(
    file: &str,
    log: &str,
) -> Result<(Vec<LoggedDecision>, LogCounts, ShadowLines), EvalError> {
    let mut counts = LogCounts::default();
    let mut shadows: ShadowLines = HashMap::new();
    let mut decisions: Vec<LoggedDecision> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut feedback: Vec<(usize, String, f64, Option<f64>)> = Vec::new();
    for (i, raw) in log.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if !raw.starts_with('{') {
            continue;
        }
        let v: Value =
            serde_json::from_str(raw).map_err(|e| bad(file, line, format!("not JSON: {e}")))?;
        let f = fields(&v);
        match text(&v, "target") {
            Some("routewise::decision") => {
                counts.decision_lines += 1;
                if text(f, "reason") != Some("routed") {
                    counts.direct += 1;
                    continue;
                }
                let need = |key: &str| {
                    text(f, key)
                        .ok_or_else(|| bad(file, line, format!("the decision has no `{key}`")))
                };
                let id = need("decision_id")?.to_string();
                let chosen = need("chosen")?.to_string();
                let answered = need("model")?.to_string();
                let policy: Policy = serde_json::from_str(need("policy")?)
                    .map_err(|e| bad(file, line, format!("`policy`: {e}")))?;
                let d = LoggedDecision {
                    line,
                    decision_id: id.clone(),
                    chosen,
                    answered,
                    policy,
                    propensity: num(f, "propensity"),
                    explored: f.get("explored").and_then(Value::as_bool).unwrap_or(false),
                    prompt: text(f, "prompt").map(str::to_string),
                    prompt_tokens: num(f, "prompt_tokens")
                        .map_or(0, |t| t.clamp(0.0, f64::from(u32::MAX)) as u32),
                    cost_usd: num(f, "realised_cost_usd"),
                    score: None,
                };
                by_id.insert(id, decisions.len());
                decisions.push(d);
            }
            Some("routewise::shadow") => {
                counts.shadow_lines += 1;
                let need = |key: &str| {
                    text(f, key)
                        .ok_or_else(|| bad(file, line, format!("the shadow line has no `{key}`")))
                };
                let (name, id, chosen) = (need("shadow")?, need("decision_id")?, need("chosen")?);
                let score = num(f, "predicted_score")
                    .ok_or_else(|| bad(file, line, "the shadow line has no `predicted_score`"))?;
                let cost = num(f, "predicted_cost_usd").ok_or_else(|| {
                    bad(file, line, "the shadow line has no `predicted_cost_usd`")
                })?;
                shadows.entry(name.to_string()).or_default().insert(
                    id.to_string(),
                    ShadowDecision {
                        chosen: chosen.to_string(),
                        policy: text(f, "policy").and_then(|p| serde_json::from_str(p).ok()),
                        score,
                        cost,
                        live_score: num(f, "live_predicted_score"),
                        live_cost: num(f, "live_predicted_cost_usd"),
                    },
                );
            }
            Some("routewise::feedback") => {
                counts.feedback_lines += 1;
                let id = text(f, "decision_id")
                    .ok_or_else(|| bad(file, line, "the feedback has no `decision_id`"))?;
                let score = num(f, "score")
                    .ok_or_else(|| bad(file, line, "the feedback has no `score`"))?;
                feedback.push((line, id.to_string(), score, num(f, "cost_usd")));
            }
            _ => {}
        }
    }
    for (_, id, score, cost) in feedback {
        match by_id.get(&id) {
            Some(&k) => {
                decisions[k].score = Some(score);
                if cost.is_some() {
                    decisions[k].cost_usd = cost;
                }
            }
            None => counts.orphan_feedback += 1,
        }
    }
    let mut used = Vec::with_capacity(decisions.len());
    for d in decisions {
        if d.answered != d.chosen {
            counts.answered_by_fallback += 1;
        } else if d.score.is_none() {
            counts.without_feedback += 1;
        } else {
            used.push(d);
        }
    }
    Ok((used, counts, shadows))
}

/// One estimator's estimates of the candidate.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayEstimate {
    /// Mean reward.
    pub reward: f64,
    pub ci: [f64; 2],
    pub quality: Estimate,
    pub cost: Estimate,
}

/// The three estimators.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayEstimates {
    pub ips: ReplayEstimate,
    pub snips: ReplayEstimate,
    pub dr: ReplayEstimate,
}

/// The `replay --log` report.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// Decisions used.
    pub n: usize,
    /// Kish's effective sample size of the candidate's weights.
    pub ess: f64,
    /// Below [`MIN_ESS`]: the estimates are not precise.
    pub low_ess: bool,
    pub estimates: ReplayEstimates,
    /// Share of used decisions where the candidate picks the logged model.
    pub agreement: f64,
    /// The logged policy's own mean reward, quality and cost on the used decisions.
    pub logged: LoggedMeans,
    pub counts: LogCounts,
    /// Explored decisions among those used.
    pub explored: usize,
    pub warnings: Vec<String>,
    pub resamples: usize,
    pub seed: u64,
}

/// The logger's realised means.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedMeans {
    pub reward: f64,
    pub quality: f64,
    pub cost: f64,
}

/// Whose decisions are evaluated.
#[derive(Debug, Clone, Copy)]
pub enum Candidate<'a> {
    /// A router artifact re-routing the logged prompts.
    Router(&'a Engine),
    /// A shadow router's logged decisions (by decision id).
    Shadow(&'a HashMap<String, ShadowDecision>),
}

/// The candidate's view of one logged decision: its pick, and its predicted score and
/// cost for its pick and for the logged model.
struct View {
    /// The policy the candidate decided under (its reward's lambda).
    policy: Policy,
    pick: String,
    s_pick: f64,
    c_pick: f64,
    s_logged: f64,
    c_logged: f64,
}

/// What to replay with.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The candidate's policy; `None`: each decision's own.
    pub policy: Option<Policy>,
    /// The reward's cost weight; `None`: the policy's lambda (0 under a budget).
    pub lambda: Option<f64>,
    pub resamples: usize,
    pub seed: u64,
}

/// Estimates `candidate` on the decisions of [`parse_log`] (`file` names the log in
/// errors).
pub fn replay_log(
    file: &str,
    decisions: &[LoggedDecision],
    mut counts: LogCounts,
    candidate: Candidate<'_>,
    opts: &ReplayOptions,
) -> Result<ReplayReport, EvalError> {
    if decisions.is_empty() {
        return Err(EvalError::Config(format!(
            "{file}: no routed decision with feedback to evaluate on ({} decision lines: {} direct, {} answered by a fallback, {} without feedback)",
            counts.decision_lines, counts.direct, counts.answered_by_fallback, counts.without_feedback
        )));
    }
    let index: HashMap<&str, usize> = match candidate {
        Candidate::Router(engine) => engine
            .catalog
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), i))
            .collect(),
        Candidate::Shadow(_) => HashMap::new(),
    };
    // The candidate's view of decision `d` (whose propensity is `p`), or `None` for a
    // shadow with no usable line for it.
    let view = |d: &LoggedDecision, policy: Policy| -> Result<Option<View>, EvalError> {
        match candidate {
            Candidate::Router(engine) => {
                let prompt = d.prompt.as_deref().ok_or_else(|| {
                    bad(file, d.line, "the decision has no prompt: set `log.decisions.prompt: true` in the gateway's config to log it")
                })?;
                let a = *index.get(d.chosen.as_str()).ok_or_else(|| {
                    bad(file, d.line, format!("model `{}` is not in the candidate router's catalog (a log from another model pool?)", d.chosen))
                })?;
                let dec = engine.decide(prompt, d.prompt_tokens, policy);
                Ok(Some(View {
                    policy,
                    pick: engine.catalog.models[dec.chosen].name.clone(),
                    s_pick: dec.scores[dec.chosen],
                    c_pick: dec.costs[dec.chosen],
                    s_logged: dec.scores[a],
                    c_logged: dec.costs[a],
                }))
            }
            Candidate::Shadow(lines) => Ok(lines.get(&d.decision_id).and_then(|s| {
                Some(View {
                    policy: s.policy.unwrap_or(policy),
                    pick: s.chosen.clone(),
                    s_pick: s.score,
                    c_pick: s.cost,
                    s_logged: s.live_score?,
                    c_logged: s.live_cost?,
                })
            })),
        }
    };
    // Row-major n x 3: reward, quality, cost.
    let mut samples = Vec::with_capacity(decisions.len() * 3);
    let (mut agree, mut explored) = (0usize, 0usize);
    let (mut r_sum, mut q_sum, mut c_sum) = (0.0, 0.0, 0.0);
    let mut picked_unlogged: HashMap<String, usize> = HashMap::new();
    let logged_models: std::collections::HashSet<&str> =
        decisions.iter().map(|d| d.chosen.as_str()).collect();
    let mut all_certain = true;
    let mut n = 0usize;
    // The logged models, numbered for the variance floor's pooling.
    let mut groups: HashMap<String, u32> = HashMap::new();
    for d in decisions {
        let p = d.propensity.filter(|p| *p > 0.0 && *p <= 1.0).ok_or_else(|| {
            bad(file, d.line, "the decision has no propensity, so it cannot be reweighted (a state store export of a Thompson-sampling decision: replay it from the gateway's log, whose line carries the estimate)")
        })?;
        let policy = opts.policy.unwrap_or(d.policy);
        let Some(v) = view(d, policy)? else {
            counts.without_shadow_decision += 1;
            continue;
        };
        n += 1;
        all_certain &= p >= 1.0;
        let lambda = opts.lambda.unwrap_or_else(|| v.policy.cost_weight());
        let score = d.score.unwrap_or(0.0);
        let cost = d.cost_usd.unwrap_or(v.c_logged);
        let reward = score - lambda * cost;
        r_sum += reward;
        q_sum += score;
        c_sum += cost;
        let agrees = v.pick == d.chosen;
        agree += usize::from(agrees);
        explored += usize::from(d.explored);
        if !logged_models.contains(v.pick.as_str()) {
            *picked_unlogged.entry(v.pick.clone()).or_default() += 1;
        }
        let w = if agrees { 1.0 / p } else { 0.0 };
        let var = bounded_outcome_var(v.s_logged);
        let next = groups.len() as u32;
        let group = *groups.entry(d.chosen.clone()).or_insert(next);
        samples.push(Sample {
            weight: w,
            outcome: reward,
            direct: v.s_pick - lambda * v.c_pick,
            direct_logged: v.s_logged - lambda * v.c_logged,
            outcome_var: var,
            group,
        });
        samples.push(Sample {
            weight: w,
            outcome: score,
            direct: v.s_pick,
            direct_logged: v.s_logged,
            outcome_var: var,
            group,
        });
        samples.push(Sample {
            weight: w,
            outcome: cost,
            direct: v.c_pick,
            direct_logged: v.c_logged,
            outcome_var: 0.0,
            group,
        });
    }
    if n == 0 {
        return Err(EvalError::Config(format!(
            "{file}: the shadow has no usable line for any of the {} decisions with feedback (its name is `--shadow`; {} shadow lines in the log)",
            decisions.len(),
            counts.shadow_lines
        )));
    }
    let est = estimate_all(&samples, 3, opts.resamples, opts.seed);
    let agreement = agree as f64 / n as f64;
    let mut warnings = Vec::new();
    if all_certain && agreement < 1.0 {
        warnings.push(format!(
            "the log has no exploration (every propensity is 1): where the candidate disagrees with the logged choice ({:.1}% of decisions) nothing was observed, so the estimates only cover the agreeing decisions; set `router.exploration.epsilon` on the gateway",
            100.0 * (1.0 - agreement)
        ));
    }
    let mut unlogged: Vec<(String, usize)> = picked_unlogged.into_iter().collect();
    unlogged.sort();
    for (m, count) in unlogged {
        warnings.push(format!(
            "the candidate picks `{m}` on {count} decisions, a model the log never chose: no support there"
        ));
    }
    if counts.without_shadow_decision > 0 {
        warnings.push(format!(
            "{} decisions with feedback have no usable line of the shadow (dropped from its queue, or a live model it does not know) and were left out",
            counts.without_shadow_decision
        ));
    }
    let ess = est[0].ess;
    if ess < MIN_ESS {
        warnings.push(format!(
            "effective sample size {ess:.1} is below {MIN_ESS}: the estimates are imprecise whatever their intervals say"
        ));
    }
    let one = |pick: fn(&Estimates) -> Estimate| {
        let r = pick(&est[0]);
        ReplayEstimate {
            reward: r.value,
            ci: r.ci,
            quality: pick(&est[1]),
            cost: pick(&est[2]),
        }
    };
    let nf = n as f64;
    Ok(ReplayReport {
        n,
        ess,
        low_ess: ess < MIN_ESS,
        estimates: ReplayEstimates {
            ips: one(|e| e.ips),
            snips: one(|e| e.snips),
            dr: one(|e| e.dr),
        },
        agreement,
        logged: LoggedMeans {
            reward: r_sum / nf,
            quality: q_sum / nf,
            cost: c_sum / nf,
        },
        counts,
        explored,
        warnings,
        resamples: opts.resamples,
        seed: opts.seed,
    })
}

/// The human-readable summary printed by `replay --log`.
pub fn write_replay_table(out: &mut impl std::io::Write, r: &ReplayReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{} decisions used ({} explored), agreement with the logged choices {:.3}, effective sample size {:.1}{}",
        r.n,
        r.explored,
        r.agreement,
        r.ess,
        if r.low_ess { " (LOW: imprecise)" } else { "" }
    )?;
    writeln!(
        out,
        "logged policy: reward {:.4}, quality {:.4}, cost ${:.6}",
        r.logged.reward, r.logged.quality, r.logged.cost
    )?;
    writeln!(
        out,
        "{:<6} {:>24} {:>24} {:>30}",
        "est.", "reward [95% CI]", "quality [95% CI]", "cost USD [95% CI]"
    )?;
    for (name, e) in [
        ("ips", &r.estimates.ips),
        ("snips", &r.estimates.snips),
        ("dr", &r.estimates.dr),
    ] {
        writeln!(
            out,
            "{name:<6} {:>8.4} [{:.4}, {:.4}] {:>8.4} [{:.4}, {:.4}] {:>10.6} [{:.6}, {:.6}]",
            e.reward,
            e.ci[0],
            e.ci[1],
            e.quality.value,
            e.quality.ci[0],
            e.quality.ci[1],
            e.cost.value,
            e.cost.ci[0],
            e.cost.ci[1]
        )?;
    }
    for w in &r.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}
