//! The feedback protocol: what the gateway keeps per decision ([`DecisionRecord`]), the
//! body of `POST /v1/feedback` ([`FeedbackRequest`]), its validation, the logged entry
//! ([`FeedbackEntry`]) and the typed errors with their HTTP status ([`FeedbackError`]).
//! No I/O.

use serde::{Deserialize, Serialize};

/// What the gateway keeps from one routing decision, for `decision_ttl_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// The bandit context (reduced features, see [`crate::project`]).
    pub x: Vec<f64>,
    /// The prior (offline router) reward of the chosen model:
    /// predicted score minus lambda times expected cost.
    pub prior_reward: f64,
    /// The reward's cost weight: the lambda of the policy that made the decision (0 under
    /// a budget). Absent in records written by versions before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
    /// Realised cost in USD, as measured by the gateway.
    pub cost_usd: f64,
    /// Realised latency in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// Unix time of the decision, in milliseconds.
    pub created_ms: u64,
    /// A cascaded decision's verdict (`accepted`: a tier answer; `escalated`), so that
    /// feedback tells how accepted answers fare (absent when no cascade ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade: Option<String>,
    /// What off-policy evaluation needs to re-score the decision with another router
    /// (absent in records written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayContext>,
}

/// A decision's context for off-policy evaluation (`routewise replay`): kept with the
/// decision and copied into its feedback log entry, so that `routewise logs export` can
/// rebuild decision and feedback lines from the state store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayContext {
    /// The router's choice (the answering model is [`DecisionRecord::model`]).
    pub chosen: String,
    /// Probability of that choice under the deciding policy; `None` where it was not
    /// computed on the request path (Thompson sampling).
    pub propensity: Option<f64>,
    pub explored: bool,
    /// The deciding policy, as `routewise_router::Policy` serialises it.
    pub policy: String,
    /// The prompt text the router saw, when the gateway logs prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub prompt_tokens: u64,
}

/// A score given as a number in `[0, 1]` or as a thumbs-up/down boolean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScoreValue {
    Bool(bool),
    Number(f64),
}

/// `"up"` / `"down"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Thumbs {
    Up,
    Down,
}

/// Body of `POST /v1/feedback`:
/// `{"decision_id": "...", "score": 0.0..1.0 | true | false, "thumbs": "up" | "down",
///   "cost_usd": x, "latency_ms": x}`; exactly one of `score` / `thumbs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    pub decision_id: String,
    #[serde(default)]
    pub score: Option<ScoreValue>,
    #[serde(default)]
    pub thumbs: Option<Thumbs>,
    /// Overrides the cost the gateway measured.
    #[serde(default)]
    pub cost_usd: Option<f64>,
    /// Overrides the latency the gateway measured.
    #[serde(default)]
    pub latency_ms: Option<f64>,
}

/// A validated feedback request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidFeedback {
    pub decision_id: String,
    pub score: f64,
    pub cost_usd: Option<f64>,
    pub latency_ms: Option<f64>,
}

impl FeedbackRequest {
    /// Checks the request on its own (the decision is checked by the store).
    pub fn validate(&self) -> Result<ValidFeedback, FeedbackError> {
        if self.decision_id.is_empty() || self.decision_id.len() > 256 {
            return Err(FeedbackError::BadRequest(
                "decision_id must be 1..=256 characters".into(),
            ));
        }
        let score = match (self.score, self.thumbs) {
            (Some(_), Some(_)) => {
                return Err(FeedbackError::BadRequest(
                    "give either score or thumbs, not both".into(),
                ))
            }
            (None, None) => {
                return Err(FeedbackError::BadRequest(
                    "missing score (0..1, true/false) or thumbs (up/down)".into(),
                ))
            }
            (Some(ScoreValue::Bool(b)), None) => f64::from(u8::from(b)),
            (Some(ScoreValue::Number(s)), None) => s,
            (None, Some(Thumbs::Up)) => 1.0,
            (None, Some(Thumbs::Down)) => 0.0,
        };
        if !(0.0..=1.0).contains(&score) {
            return Err(FeedbackError::ScoreOutOfRange(score));
        }
        if let Some(c) = self.cost_usd {
            if !(c.is_finite() && c >= 0.0) {
                return Err(FeedbackError::BadRequest(format!(
                    "cost_usd must be finite and >= 0, got {c}"
                )));
            }
        }
        if let Some(l) = self.latency_ms {
            if !(l.is_finite() && l >= 0.0) {
                return Err(FeedbackError::BadRequest(format!(
                    "latency_ms must be finite and >= 0, got {l}"
                )));
            }
        }
        Ok(ValidFeedback {
            decision_id: self.decision_id.clone(),
            score,
            cost_usd: self.cost_usd,
            latency_ms: self.latency_ms,
        })
    }
}

/// One line of the feedback log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackEntry {
    pub decision_id: String,
    pub model: String,
    pub score: f64,
    /// Cost used for the reward (override, else the gateway's measurement).
    pub cost_usd: f64,
    pub latency_ms: Option<f64>,
    /// `score - lambda * cost_usd`.
    pub reward: f64,
    /// `reward - prior_reward`: what the bandit learns.
    pub residual: f64,
    pub received_ms: u64,
    /// The decision's context for off-policy evaluation, when it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayContext>,
    /// The decision's cascade verdict, when a cascade ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade: Option<String>,
}

impl FeedbackEntry {
    /// Joins a validated feedback with its decision. The reward's cost weight is the one
    /// recorded with the decision; `fallback_lambda` serves records that predate it.
    pub fn new(
        fb: &ValidFeedback,
        dec: &DecisionRecord,
        fallback_lambda: f64,
        now_ms: u64,
    ) -> Self {
        let lambda = dec.lambda.unwrap_or(fallback_lambda);
        let cost = fb.cost_usd.unwrap_or(dec.cost_usd);
        let residual = residual(fb.score - lambda * cost, dec.prior_reward);
        // An overflowing reward (a huge lambda times a huge cost) is recorded at the bound.
        let reward = fb.score - lambda * cost;
        let reward = if reward.is_finite() {
            reward
        } else {
            dec.prior_reward + residual
        };
        FeedbackEntry {
            decision_id: fb.decision_id.clone(),
            model: dec.model.clone(),
            score: fb.score,
            cost_usd: cost,
            latency_ms: fb.latency_ms.or(dec.latency_ms),
            reward,
            residual,
            received_ms: now_ms,
            replay: dec.replay.clone(),
            cascade: dec.cascade.clone(),
        }
    }
}

/// What the bandit learns from a reward: `reward - prior_reward`, bounded. Its score part
/// lies in [-1, 1]; its cost part, `lambda * (expected - realised cost)`, stays within four
/// times `1 + |prior_reward|` (a bound on `lambda * expected cost`) while the realised cost
/// is within five times the expected. A reward far outside that (a cost override or a
/// per-request lambda off by orders of magnitude) is clipped there, so that one feedback
/// cannot swamp a model's statistics.
pub fn residual(reward: f64, prior_reward: f64) -> f64 {
    let bound = 5.0 + 4.0 * prior_reward.abs();
    let r = reward - prior_reward;
    if r.is_nan() {
        0.0
    } else {
        r.clamp(-bound, bound)
    }
}

/// What the service answers to an accepted feedback (HTTP 200 body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackAck {
    pub decision_id: String,
    pub model: String,
    pub reward: f64,
    /// Feedbacks applied to this model so far.
    pub model_feedback_count: u64,
    /// The decision's cascade verdict (`accepted` / `escalated`), when a cascade ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade: Option<String>,
}

/// Why a feedback was refused. [`FeedbackError::status`] is the HTTP status to answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum FeedbackError {
    #[error("invalid feedback: {0}")]
    BadRequest(String),
    #[error("score must be in [0, 1], got {0}")]
    ScoreOutOfRange(f64),
    #[error(
        "unknown decision id `{0}`: never issued, expired and purged, or a decision no model \
         answered (a cache hit, a blocked request), which takes no feedback"
    )]
    UnknownDecision(String),
    #[error("decision `{0}` is older than the feedback window")]
    Expired(String),
    #[error("feedback for decision `{0}` was already recorded")]
    Duplicate(String),
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("state store error: {0}")]
    Store(String),
}

impl FeedbackError {
    /// 400 malformed, 422 out-of-range score, 404 unknown, 410 expired, 409 duplicate,
    /// 503 store unavailable (not acknowledged: the client may retry), 500 store error.
    pub fn status(&self) -> u16 {
        match self {
            FeedbackError::BadRequest(_) => 400,
            FeedbackError::ScoreOutOfRange(_) => 422,
            FeedbackError::UnknownDecision(_) => 404,
            FeedbackError::Expired(_) => 410,
            FeedbackError::Duplicate(_) => 409,
            FeedbackError::Unavailable(_) => 503,
            FeedbackError::Store(_) => 500,
        }
    }

    /// Stable machine-readable code for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            FeedbackError::BadRequest(_) => "invalid_request",
            FeedbackError::ScoreOutOfRange(_) => "score_out_of_range",
            FeedbackError::UnknownDecision(_) => "unknown_decision",
            FeedbackError::Expired(_) => "decision_expired",
            FeedbackError::Duplicate(_) => "duplicate_feedback",
            FeedbackError::Unavailable(_) => "state_unavailable",
            FeedbackError::Store(_) => "state_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<ValidFeedback, FeedbackError> {
        serde_json::from_str::<FeedbackRequest>(json)
            .unwrap()
            .validate()
    }

    #[test]
    fn scores_thumbs_and_errors() {
        assert_eq!(
            req(r#"{"decision_id":"a","score":0.25}"#).unwrap().score,
            0.25
        );
        assert_eq!(
            req(r#"{"decision_id":"a","score":true}"#).unwrap().score,
            1.0
        );
        assert_eq!(
            req(r#"{"decision_id":"a","score":false}"#).unwrap().score,
            0.0
        );
        assert_eq!(
            req(r#"{"decision_id":"a","thumbs":"up"}"#).unwrap().score,
            1.0
        );
        assert_eq!(
            req(r#"{"decision_id":"a","thumbs":"down"}"#).unwrap().score,
            0.0
        );
        let e = req(r#"{"decision_id":"a","score":1.5}"#).unwrap_err();
        assert_eq!((e.status(), e.code()), (422, "score_out_of_range"));
        assert_eq!(req(r#"{"decision_id":"a"}"#).unwrap_err().status(), 400);
        assert_eq!(
            req(r#"{"decision_id":"a","score":1,"cost_usd":-1}"#)
                .unwrap_err()
                .status(),
            400
        );
        assert!(
            serde_json::from_str::<FeedbackRequest>(r#"{"decision_id":"a","scor":1}"#).is_err()
        );
    }

    #[test]
    fn entry_reward_and_residual() {
        let dec = DecisionRecord {
            id: "d".into(),
            model: "m".into(),
            x: vec![1.0],
            prior_reward: 0.5,
            lambda: None,
            cost_usd: 0.01,
            latency_ms: Some(10.0),
            created_ms: 0,
            cascade: None,
            replay: None,
        };
        let fb = req(r#"{"decision_id":"d","score":1,"cost_usd":0.02}"#).unwrap();
        let e = FeedbackEntry::new(&fb, &dec, 10.0, 5);
        assert!((e.reward - 0.8).abs() < 1e-12);
        assert!((e.residual - 0.3).abs() < 1e-12);
        assert_eq!(e.latency_ms, Some(10.0));
    }

    /// Regression: one feedback with `cost_usd: 1e300` (or a decision made at a lambda of
    /// 1e300) gave a reward of -1e302, which the bandit learnt: the model's predicted
    /// score went to -5e300 and stayed there.
    #[test]
    fn an_absurd_cost_moves_the_bandit_by_a_bounded_amount() {
        let dec = |lambda: f64| DecisionRecord {
            id: "d".into(),
            model: "m".into(),
            x: vec![1.0],
            prior_reward: 0.5,
            lambda: Some(lambda),
            cost_usd: 0.001,
            latency_ms: None,
            created_ms: 0,
            cascade: None,
            replay: None,
        };
        let huge_cost = req(r#"{"decision_id":"d","score":1,"cost_usd":1e300}"#).unwrap();
        let e = FeedbackEntry::new(&huge_cost, &dec(100.0), 0.0, 5);
        assert_eq!(e.residual, -(5.0 + 4.0 * 0.5));
        assert!(e.reward < -1e301, "the reward is recorded as computed");
        // Overflow (a huge lambda times a huge cost): finite, at the bound.
        let e = FeedbackEntry::new(&huge_cost, &dec(1e300), 0.0, 5);
        assert_eq!(e.residual, -7.0);
        assert!(e.reward.is_finite() && (e.reward - (0.5 - 7.0)).abs() < 1e-12);
        // An honest feedback is untouched: 1 - 100 * 0.001 - 0.5.
        let honest = req(r#"{"decision_id":"d","score":1}"#).unwrap();
        let e = FeedbackEntry::new(&honest, &dec(100.0), 0.0, 5);
        assert!((e.residual - 0.4).abs() < 1e-12, "{}", e.residual);
        assert_eq!(residual(f64::NAN, 0.5), 0.0);
    }
}
