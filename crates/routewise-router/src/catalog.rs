//! Model catalog: what each model costs.
//!
//! Expected cost of a prompt for model `m` =
//! `input_tokens * input_per_mtok / 1e6 + mean_output_tokens[m] * output_per_mtok / 1e6`.
//! Prices are fitted from the training outcomes (least squares of the observed cost on
//! input and output tokens, non-negative, falling back to one blended per-token price when
//! the two cannot be separated) and can be overridden by configured list prices.
//! We predict cost this way, not from neighbours' observed costs, because the gateway
//! knows real prices and the prompt's real length, and the estimate is then exact up to
//! the output length.
//!
//! Price fit ([`Catalog::fit`]): for each model, over the training prompts where it was
//! evaluated, minimise `sum (cost - a * input_tokens - b * output_tokens)^2` subject to
//! `a, b >= 0`. With two unknowns the non-negative least-squares optimum is either the
//! unconstrained solution (when both prices come out non-negative) or the best of the two
//! one-price boundary solutions `(a, 0)` and `(0, b)`; we evaluate those candidates and
//! keep the feasible one with the lowest squared error. When the normal equations are
//! (nearly) singular, e.g. every prompt has the same output length, input and output
//! cannot be separated, and one blended per-token price `p = a = b` is fitted instead.

use routewise_data::Record;
use serde::{Deserialize, Serialize};

/// One model's prices and typical output length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// USD per million prompt tokens.
    pub input_per_mtok: f64,
    /// USD per million completion tokens.
    pub output_per_mtok: f64,
    /// Mean completion tokens observed in training.
    pub mean_output_tokens: f64,
}

impl ModelInfo {
    /// A model with one price for input and output tokens (USD per million) and 100
    /// output tokens on average: tests, benches and hand-made pools.
    pub fn flat(name: &str, usd_per_mtok: f64) -> ModelInfo {
        ModelInfo {
            name: name.to_string(),
            input_per_mtok: usd_per_mtok,
            output_per_mtok: usd_per_mtok,
            mean_output_tokens: 100.0,
        }
    }

    /// Expected USD cost of a prompt of `input_tokens` tokens.
    pub fn expected_cost(&self, input_tokens: u32) -> f64 {
        (f64::from(input_tokens) * self.input_per_mtok
            + self.mean_output_tokens * self.output_per_mtok)
            / 1e6
    }
}

/// All models a router knows, in router order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub models: Vec<ModelInfo>,
}

impl Catalog {
    /// Fits every model's prices and mean output tokens on training records (see the
    /// module docs). `models` names the models in dataset order; each record's
    /// `outcomes` is indexed the same way. A model never observed gets zero prices.
    pub fn fit<'a>(models: &[String], train: impl IntoIterator<Item = &'a Record>) -> Catalog {
        let n = models.len();
        let mut acc = vec![PriceAcc::default(); n];
        for r in train {
            for (m, o) in r.outcomes.iter().take(n).enumerate() {
                if let Some(o) = o {
                    acc[m].add(
                        f64::from(o.input_tokens),
                        f64::from(o.output_tokens),
                        o.cost_usd,
                    );
                }
            }
        }
        Catalog {
            models: models
                .iter()
                .zip(&acc)
                .map(|(name, a)| {
                    let (pin, pout) = a.solve();
                    ModelInfo {
                        name: name.clone(),
                        input_per_mtok: pin * 1e6,
                        output_per_mtok: pout * 1e6,
                        mean_output_tokens: if a.n > 0.0 { a.sy / a.n } else { 0.0 },
                    }
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
    pub fn index(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name == name)
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(|m| m.name.as_str())
    }
    /// Writes every model's expected cost for a prompt of `input_tokens` into `out`.
    pub fn expected_costs(&self, input_tokens: u32, out: &mut [f64]) {
        for (o, m) in out.iter_mut().zip(&self.models) {
            *o = m.expected_cost(input_tokens);
        }
    }
}

/// A model an operator configured to serve: its name and, optionally, list prices
/// (USD per million input and output tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfiguredModel<'a> {
    pub name: &'a str,
    pub price: Option<(f64, f64)>,
}

/// A problem reconciling the configured models with a router's catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileIssue {
    /// The configured entry at fault (its index), or `None` for a router model that no
    /// entry serves.
    pub entry: Option<usize>,
    /// The entry's field at fault (`name`, `price`); empty when `entry` is `None`.
    pub field: &'static str,
    pub message: String,
}

/// The serving catalog: the router's models (configured prices override fitted ones)
/// followed by configured models the router does not know.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    pub catalog: Catalog,
    /// How many of the catalog's models the router knows (the first ones).
    pub n_known: usize,
    /// For each catalog index, the configured entry that serves it.
    pub entry_of: Vec<usize>,
}

impl Catalog {
    /// Matches `configured` models with this (the router's) catalog. Every router model
    /// must be configured, and every configured model must be a router model, except
    /// when `allow_new` (an online router can onboard models it has no data for): then an
    /// unknown model joins with its configured price (required) and the known models'
    /// mean output length. Collects every problem.
    pub fn reconcile(
        &self,
        configured: &[ConfiguredModel<'_>],
        allow_new: bool,
    ) -> Result<Reconciled, Vec<ReconcileIssue>> {
        let n_known = self.len();
        let mean_output_tokens = self
            .models
            .iter()
            .map(|m| m.mean_output_tokens)
            .sum::<f64>()
            / n_known.max(1) as f64;
        let mut catalog = self.clone();
        let mut entry_of = vec![usize::MAX; n_known];
        let mut issues = Vec::new();
        for (i, c) in configured.iter().enumerate() {
            match (self.index(c.name), c.price) {
                (Some(k), price) => {
                    if let Some((input, output)) = price {
                        catalog.models[k].input_per_mtok = input;
                        catalog.models[k].output_per_mtok = output;
                    }
                    entry_of[k] = i;
                }
                (None, Some((input, output))) if allow_new => {
                    catalog.models.push(ModelInfo {
                        name: c.name.to_string(),
                        input_per_mtok: input,
                        output_per_mtok: output,
                        mean_output_tokens,
                    });
                    entry_of.push(i);
                }
                (None, None) if allow_new => issues.push(ReconcileIssue {
                    entry: Some(i),
                    field: "price",
                    message: format!(
                        "`{}` is not a model the router knows: the bandit can onboard it, but \
                         it needs a price",
                        c.name
                    ),
                }),
                (None, _) => issues.push(ReconcileIssue {
                    entry: Some(i),
                    field: "name",
                    message: format!(
                        "`{}` is not a model the router knows (router models: {})",
                        c.name,
                        self.names().collect::<Vec<_>>().join(", ")
                    ),
                }),
            }
        }
        for (k, &e) in entry_of.iter().enumerate().take(n_known) {
            if e == usize::MAX {
                issues.push(ReconcileIssue {
                    entry: None,
                    field: "",
                    message: format!(
                        "the router knows `{}` but no `models` entry serves it",
                        self.models[k].name
                    ),
                });
            }
        }
        if issues.is_empty() {
            Ok(Reconciled {
                catalog,
                n_known,
                entry_of,
            })
        } else {
            Err(issues)
        }
    }
}

/// Sufficient statistics of the two-price least-squares fit (x = input tokens,
/// y = output tokens, c = cost).
#[derive(Debug, Clone, Copy, Default)]
struct PriceAcc {
    n: f64,
    sy: f64,
    sxx: f64,
    syy: f64,
    sxy: f64,
    sxc: f64,
    syc: f64,
    scc: f64,
}

impl PriceAcc {
    fn add(&mut self, x: f64, y: f64, c: f64) {
        self.n += 1.0;
        self.sy += y;
        self.sxx += x * x;
        self.syy += y * y;
        self.sxy += x * y;
        self.sxc += x * c;
        self.syc += y * c;
        self.scc += c * c;
    }

    /// Squared error of prices `(a, b)`.
    fn sse(&self, a: f64, b: f64) -> f64 {
        self.scc - 2.0 * a * self.sxc - 2.0 * b * self.syc
            + a * a * self.sxx
            + 2.0 * a * b * self.sxy
            + b * b * self.syy
    }

    /// Non-negative least-squares prices per token `(input, output)`.
    fn solve(&self) -> (f64, f64) {
        if self.n == 0.0 {
            return (0.0, 0.0);
        }
        let det = self.sxx * self.syy - self.sxy * self.sxy;
        let scale = self.sxx * self.syy;
        if scale <= 0.0 || det <= 1e-9 * scale {
            // Input and output lengths are collinear (or one is always zero): fit one
            // blended per-token price on input + output tokens.
            let szz = self.sxx + 2.0 * self.sxy + self.syy;
            let p = if szz > 0.0 {
                ((self.sxc + self.syc) / szz).max(0.0)
            } else {
                0.0
            };
            return (p, p);
        }
        let mut candidates = Vec::with_capacity(3);
        let a = (self.sxc * self.syy - self.syc * self.sxy) / det;
        let b = (self.syc * self.sxx - self.sxc * self.sxy) / det;
        if a >= 0.0 && b >= 0.0 {
            candidates.push((a, b));
        }
        candidates.push(((self.sxc / self.sxx).max(0.0), 0.0));
        candidates.push((0.0, (self.syc / self.syy).max(0.0)));
        candidates
            .into_iter()
            .min_by(|p, q| self.sse(p.0, p.1).total_cmp(&self.sse(q.0, q.1)))
            .unwrap_or((0.0, 0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use routewise_data::{Outcome, Split};

    fn rec(outs: Vec<Option<(u32, u32, f64)>>) -> Record {
        Record {
            id: "x".into(),
            task: String::new(),
            prompt: "p".into(),
            split: Split::Train,
            reference: None,
            outcomes: outs
                .into_iter()
                .map(|o| {
                    o.map(|(i, out, c)| Outcome {
                        score: 1.0,
                        cost_usd: c,
                        input_tokens: i,
                        output_tokens: out,
                        answer: Default::default(),
                    })
                })
                .collect(),
        }
    }

    fn info(name: &str, price: f64, out: f64) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            input_per_mtok: price,
            output_per_mtok: price,
            mean_output_tokens: out,
        }
    }

    #[test]
    fn reconcile_overrides_prices_onboards_new_models_and_collects_every_issue() {
        let cat = Catalog {
            models: vec![info("a", 1.0, 10.0), info("b", 2.0, 30.0)],
        };
        let cfg = |name, price| ConfiguredModel { name, price };
        let r = cat
            .reconcile(&[cfg("b", Some((5.0, 6.0))), cfg("a", None)], false)
            .unwrap();
        assert_eq!(r.catalog.models[1].input_per_mtok, 5.0);
        assert_eq!(r.catalog.models[0], cat.models[0]);
        assert_eq!((r.n_known, r.entry_of.clone()), (2, vec![1, 0]));
        let r = cat
            .reconcile(
                &[cfg("a", None), cfg("b", None), cfg("new", Some((1.0, 2.0)))],
                true,
            )
            .unwrap();
        assert_eq!(r.catalog.len(), 3);
        assert_eq!(r.catalog.models[2].mean_output_tokens, 20.0);
        assert_eq!(r.entry_of, vec![0, 1, 2]);
        let issues = cat
            .reconcile(&[cfg("a", None), cfg("zz", None)], false)
            .unwrap_err();
        assert_eq!(issues.len(), 2);
        assert_eq!((issues[0].entry, issues[0].field), (Some(1), "name"));
        assert!(issues[1].message.contains("the router knows `b`"));
        let issues = cat
            .reconcile(&[cfg("a", None), cfg("b", None), cfg("zz", None)], true)
            .unwrap_err();
        assert_eq!((issues[0].entry, issues[0].field), (Some(2), "price"));
    }

    #[test]
    fn recovers_exact_prices_and_mean_output() {
        // model 0: $2/Mtok in, $6/Mtok out; model 1 missing on the second prompt.
        let price = |i: u32, o: u32| (f64::from(i) * 2.0 + f64::from(o) * 6.0) / 1e6;
        let recs = [
            rec(vec![Some((100, 10, price(100, 10))), Some((100, 10, 1e-4))]),
            rec(vec![Some((300, 50, price(300, 50))), None]),
            rec(vec![Some((50, 200, price(50, 200))), Some((50, 30, 1e-4))]),
        ];
        let c = Catalog::fit(&["a".into(), "b".into()], recs.iter());
        let a = &c.models[0];
        assert!((a.input_per_mtok - 2.0).abs() < 1e-9, "{a:?}");
        assert!((a.output_per_mtok - 6.0).abs() < 1e-9, "{a:?}");
        assert!((a.mean_output_tokens - 260.0 / 3.0).abs() < 1e-9);
        assert_eq!(c.models[1].mean_output_tokens, 20.0);
        assert!(c.models[1].input_per_mtok >= 0.0 && c.models[1].output_per_mtok >= 0.0);
    }

    #[test]
    fn collinear_tokens_fall_back_to_blended_price_and_never_go_negative() {
        // Output always twice the input: not separable -> blended price 1/Mtok.
        let recs: Vec<Record> = (1..5)
            .map(|k| {
                let (i, o) = (100 * k, 200 * k);
                rec(vec![
                    Some((i, o, f64::from(i + o) / 1e6)),
                    Some((i, o, 0.0)),
                ])
            })
            .collect();
        let c = Catalog::fit(&["a".into(), "b".into()], recs.iter());
        assert!((c.models[0].input_per_mtok - 1.0).abs() < 1e-9);
        assert!((c.models[0].output_per_mtok - 1.0).abs() < 1e-9);
        assert_eq!(c.models[1].input_per_mtok, 0.0);
        // Cost falls with input length: the unconstrained slope would be negative.
        let recs = [
            rec(vec![Some((100, 10, 3e-4)), Some((1, 1, 0.0))]),
            rec(vec![Some((200, 30, 2e-4)), Some((1, 1, 0.0))]),
            rec(vec![Some((300, 20, 1e-4)), Some((1, 1, 0.0))]),
        ];
        let c = Catalog::fit(&["a".into(), "b".into()], recs.iter());
        assert!(c.models[0].input_per_mtok >= 0.0 && c.models[0].output_per_mtok >= 0.0);
        assert!(c.models[0].expected_cost(100) > 0.0);
    }
}
