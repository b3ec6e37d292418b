//! Selection policies: predictions (score, cost per model) -> a ranking of models.
//!
//! * `Lambda`: CARROT (Somerstep et al., 2025): maximise `score - lambda * cost_usd`;
//!   `lambda = 0` is quality first (ties go to the cheaper model).
//! * `Budget`: the best predicted score among models whose predicted cost fits the
//!   per-request budget; models over budget follow, cheapest first.
//! * `Threshold`: RouteLLM (Ong et al., 2024): for a strong/weak pair, the strong model
//!   when its predicted win `score[strong] - score[weak]` exceeds the threshold.
//!
//! The ranking holds every model, so the gateway can fall back down it.
//!
//! A policy is parsed in one place, here, whatever it comes from: YAML config and request
//! bodies use serde (`{lambda: 0.5}` or `{budget_usd: 0.002}`, amounts finite and >= 0,
//! exactly one of the two; an unknown key is an error located at that key), headers and
//! command-line flags use [`FromStr`] (`lambda=0.5`, `budget_usd=0.002`), and a policy
//! serialises back to the same map. `Threshold` (model indices) is built in code only.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How predictions become a choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    Lambda(f64),
    BudgetUsd(f64),
    Threshold {
        strong: usize,
        weak: usize,
        threshold: f64,
    },
}

/// Why a policy is invalid: `field` is the offending key (`lambda`, `budget_usd`), empty
/// when the policy as a whole is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

impl PolicyError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        PolicyError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// The policy keys accepted in config and requests.
pub const POLICY_KEYS: [&str; 2] = ["lambda", "budget_usd"];

fn check_amount(field: &str, x: f64) -> Result<f64, PolicyError> {
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err(PolicyError::new(
            field,
            format!("must be a finite number >= 0, found {x}"),
        ))
    }
}

impl Policy {
    /// CARROT's rule with cost weight `lambda` (finite, >= 0).
    pub fn lambda(lambda: f64) -> Result<Policy, PolicyError> {
        check_amount("lambda", lambda).map(Policy::Lambda)
    }

    /// The best model within `budget` USD per request (finite, >= 0).
    pub fn budget_usd(budget: f64) -> Result<Policy, PolicyError> {
        check_amount("budget_usd", budget).map(Policy::BudgetUsd)
    }

    /// The policy named by `key` (`lambda` or `budget_usd`) with `value`.
    pub fn from_key(key: &str, value: f64) -> Result<Policy, PolicyError> {
        match key {
            "lambda" => Policy::lambda(value),
            "budget_usd" => Policy::budget_usd(value),
            other => Err(PolicyError::new(
                other,
                format!("unknown policy `{other}` (known: lambda, budget_usd)"),
            )),
        }
    }

    /// The cost weight this policy puts on USD: its lambda, 0 for a budget (cost is a
    /// constraint there, not a trade-off) and for the strong/weak threshold.
    pub fn cost_weight(&self) -> f64 {
        match *self {
            Policy::Lambda(l) => l,
            Policy::BudgetUsd(_) | Policy::Threshold { .. } => 0.0,
        }
    }

    /// Orders all models by preference under this policy (best first).
    pub fn rank(&self, scores: &[f64], costs: &[f64]) -> Vec<usize> {
        let mut idx = Vec::with_capacity(scores.len());
        self.rank_into(scores, costs, &mut idx);
        idx
    }

    /// Like [`Policy::rank`], reusing `idx`'s allocation.
    pub fn rank_into(&self, scores: &[f64], costs: &[f64], idx: &mut Vec<usize>) {
        idx.clear();
        idx.extend(0..scores.len());
        match *self {
            Policy::Lambda(lambda) => {
                let util = |i: usize| scores[i] - lambda * costs[i];
                idx.sort_by(|&a, &b| {
                    util(b)
                        .total_cmp(&util(a))
                        .then(costs[a].total_cmp(&costs[b]))
                        .then(a.cmp(&b))
                });
            }
            Policy::BudgetUsd(budget) => {
                idx.sort_by(|&a, &b| {
                    let (fa, fb) = (costs[a] <= budget, costs[b] <= budget);
                    fb.cmp(&fa).then_with(|| {
                        if fa {
                            scores[b]
                                .total_cmp(&scores[a])
                                .then(costs[a].total_cmp(&costs[b]))
                        } else {
                            costs[a].total_cmp(&costs[b])
                        }
                    })
                });
            }
            Policy::Threshold {
                strong,
                weak,
                threshold,
            } => {
                let first = if scores[strong] - scores[weak] > threshold {
                    strong
                } else {
                    weak
                };
                let second = if first == strong { weak } else { strong };
                idx.retain(|&i| i != first && i != second);
                idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
                // strong == weak: rank that model once (the ranking is a permutation).
                if second != first {
                    idx.insert(0, second);
                }
                idx.insert(0, first);
            }
        }
    }
}

/// RouteLLM calibration (Ong et al., 2024): the threshold that sends `strong_share` of
/// the given prompts to the strong model under [`Policy::Threshold`] (strong when
/// `win > threshold`), where `wins[i]` is the predicted `score[strong] - score[weak]` of
/// prompt `i`. With `k = round(strong_share * n)`, the threshold is the midpoint between
/// the `k`-th and `(k+1)`-th largest wins, so exactly `k` prompts route strong unless
/// wins tie at the boundary; share 0 gives the largest win (nobody strictly above it) and
/// share 1 gives one below the smallest. `None` for no prompts, a non-finite win, or a
/// share outside `[0, 1]`.
pub fn calibrate_threshold(wins: &[f64], strong_share: f64) -> Option<f64> {
    if wins.is_empty()
        || !(0.0..=1.0).contains(&strong_share)
        || wins.iter().any(|w| !w.is_finite())
    {
        return None;
    }
    let mut sorted = wins.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a)); // descending
    let n = sorted.len();
    let k = ((strong_share * n as f64).round() as usize).min(n);
    Some(match k {
        0 => sorted[0],
        k if k == n => sorted[n - 1] - 1.0,
        k => 0.5 * (sorted[k - 1] + sorted[k]),
    })
}

/// `lambda=0.5` or `budget_usd=0.002` (headers, flags, environment overrides).
impl FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s.split_once('=').ok_or_else(|| {
            PolicyError::new(
                "",
                format!("`{s}` is not a policy like `lambda=0.5` or `budget_usd=0.002`"),
            )
        })?;
        let key = key.trim();
        if !POLICY_KEYS.contains(&key) {
            return Policy::from_key(key, 0.0);
        }
        let x = value
            .trim()
            .parse::<f64>()
            .map_err(|_| PolicyError::new(key, format!("`{}` is not a number", value.trim())))?;
        Policy::from_key(key, x)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Policy::Lambda(l) => write!(f, "lambda={l}"),
            Policy::BudgetUsd(b) => write!(f, "budget_usd={b}"),
            Policy::Threshold {
                strong,
                weak,
                threshold,
            } => write!(f, "threshold={threshold} (strong {strong}, weak {weak})"),
        }
    }
}

/// `{"lambda": x}`, `{"budget_usd": x}` or `{"threshold": t, "strong": i, "weak": j}`.
impl Serialize for Policy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Policy::Lambda(l) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("lambda", &l)?;
                m.end()
            }
            Policy::BudgetUsd(b) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("budget_usd", &b)?;
                m.end()
            }
            Policy::Threshold {
                strong,
                weak,
                threshold,
            } => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("threshold", &threshold)?;
                m.serialize_entry("strong", &strong)?;
                m.serialize_entry("weak", &weak)?;
                m.end()
            }
        }
    }
}

/// An amount read and checked in place, so an error points at its key.
struct Amount(f64);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let x = f64::deserialize(d)?;
        check_amount("", x)
            .map(Amount)
            .map_err(|e| de::Error::custom(e.message))
    }
}

/// Fails at an unknown key (so the error's path names it).
struct UnknownKey<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for UnknownKey<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, _d: D) -> Result<(), D::Error> {
        Err(de::Error::custom(format!(
            "unknown policy key `{}` (known: lambda, budget_usd)",
            self.0
        )))
    }
}

struct PolicyVisitor;

impl<'de> Visitor<'de> for PolicyVisitor {
    type Value = Policy;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"a policy like {"lambda": 0.5} or {"budget_usd": 0.002}"#)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Policy, E> {
        s.parse().map_err(|e: PolicyError| E::custom(e.message))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Policy, A::Error> {
        let (mut lambda, mut budget) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "lambda" => lambda = map.next_value::<Option<Amount>>()?,
                "budget_usd" => budget = map.next_value::<Option<Amount>>()?,
                other => map.next_value_seed(UnknownKey(other))?,
            }
        }
        match (lambda, budget) {
            (Some(Amount(l)), None) => Ok(Policy::Lambda(l)),
            (None, Some(Amount(b))) => Ok(Policy::BudgetUsd(b)),
            _ => Err(de::Error::custom(
                "needs exactly one of `lambda` and `budget_usd`",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Policy, D::Error> {
        d.deserialize_any(PolicyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_from_json_strings_and_rejects_bad_policies_naming_the_key() {
        let p: Policy = serde_json::from_str(r#"{"lambda": 0.5}"#).unwrap();
        assert_eq!(p, Policy::Lambda(0.5));
        let p: Policy = serde_json::from_str(r#"{"budget_usd": 0.002, "lambda": null}"#).unwrap();
        assert_eq!(p, Policy::BudgetUsd(0.002));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"budget_usd":0.002}"#
        );
        assert_eq!("lambda=2".parse::<Policy>().unwrap(), Policy::Lambda(2.0));
        assert_eq!(
            serde_json::from_str::<Policy>(r#""budget_usd=1""#).unwrap(),
            Policy::BudgetUsd(1.0)
        );
        let path_of = |json: &str| {
            let mut de = serde_json::Deserializer::from_str(json);
            let e = serde_path_to_error::deserialize::<_, Policy>(&mut de).unwrap_err();
            (e.path().to_string(), e.into_inner().to_string())
        };
        let (path, msg) = path_of(r#"{"lambda": -1}"#);
        assert_eq!(path, "lambda");
        assert!(msg.contains("finite number >= 0"), "{msg}");
        assert_eq!(path_of(r#"{"speed": 1}"#).0, "speed");
        assert_eq!(path_of(r#"{"lambda": "x"}"#).0, "lambda");
        let (path, msg) = path_of(r#"{"lambda": 1, "budget_usd": 2}"#);
        assert_eq!(path, ".");
        assert!(msg.contains("exactly one"), "{msg}");
        assert!(path_of("{}").1.contains("exactly one"));
        assert_eq!("lambda=-1".parse::<Policy>().unwrap_err().field, "lambda");
        assert_eq!("speed=1".parse::<Policy>().unwrap_err().field, "speed");
        assert!("0.5".parse::<Policy>().is_err());
        assert!(Policy::lambda(f64::NAN).is_err() && Policy::budget_usd(f64::INFINITY).is_err());
    }

    #[test]
    fn lambda_zero_is_quality_first_and_ties_go_cheaper() {
        let r = Policy::Lambda(0.0).rank(&[0.5, 0.9, 0.9], &[0.1, 0.3, 0.2]);
        assert_eq!(r, vec![2, 1, 0]);
    }

    #[test]
    fn lambda_trades_quality_for_cost() {
        // utilities at lambda 10: 0.5-0.1=0.4, 0.9-3=-2.1
        let r = Policy::Lambda(10.0).rank(&[0.5, 0.9], &[0.01, 0.3]);
        assert_eq!(r[0], 0);
    }

    #[test]
    fn budget_picks_best_affordable_then_cheapest_over_budget() {
        let r = Policy::BudgetUsd(0.2).rank(&[0.5, 0.9, 0.7, 0.95], &[0.1, 0.3, 0.2, 0.5]);
        assert_eq!(r, vec![2, 0, 1, 3]);
    }

    #[test]
    fn threshold_routes_strong_when_win_exceeds() {
        let p = Policy::Threshold {
            strong: 0,
            weak: 1,
            threshold: 0.1,
        };
        assert_eq!(p.rank(&[0.9, 0.7], &[1.0, 0.1])[0], 0);
        assert_eq!(p.rank(&[0.75, 0.7], &[1.0, 0.1])[0], 1);
    }

    #[test]
    fn calibrated_threshold_sends_the_target_share_strong() {
        let wins: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0 - 0.3).collect();
        for share in [0.0, 0.1, 0.3, 0.55, 1.0] {
            let t = calibrate_threshold(&wins, share).unwrap();
            let p = Policy::Threshold {
                strong: 0,
                weak: 1,
                threshold: t,
            };
            let strong = wins
                .iter()
                .filter(|&&w| p.rank(&[w, 0.0], &[1.0, 0.1])[0] == 0)
                .count();
            assert_eq!(
                strong,
                (share * 100.0_f64).round() as usize,
                "share {share}"
            );
        }
        assert!(calibrate_threshold(&[], 0.3).is_none());
        assert!(calibrate_threshold(&[0.1], 1.5).is_none());
        assert!(calibrate_threshold(&[f64::NAN], 0.5).is_none());
    }
}
