//! The spend guard of keys with a budget ([`routewise_online::budget`]), around every
//! upstream call a request makes: the attempts (fallbacks included, [`super::attempts`])
//! and the cascade's tier calls ([`super::cascade`]).
//!
//! Every key's spend is tracked this way, so `GET /v1/usage` and
//! `routewise_key_spend_usd_total{key}` cover keys without a cap too (their account is
//! monthly and never refuses). Settling is done off the response path.
//!
//! Before a call, [`reserve`] holds the call's worst case on the key's account
//! ([`worst_case`]): as many input tokens as the body has bytes, and `max_tokens` output
//! tokens per completion, at the model's prices. A capped key's requests without an
//! output cap get one ([`cap_output`], from the auth stage). The bound holds for text;
//! an image given by URL, or tokens a provider adds (a tool-use system prompt), can cost
//! more than its bytes. A call that does not fit is not made: the attempts go on to the
//! next candidate (a cheaper model may fit), and when none fits the request gets 429
//! `budget_exceeded`. After the call, the [`Hold`] settles to the cost read from the
//! answer's usage (streams ask the upstream for it); without usage, [`charge`] decides: a
//! call the upstream may have billed (an answer, a timeout, a body cut short) is charged
//! its reservation, a refused one nothing. A hold dropped unsettled (the client went away
//! mid-call) charges its reservation. A key store that cannot be reached refuses the call
//! (503) for a key with a budget or a rate limit: those fail closed; a key with neither
//! is served and its spend goes untracked.
//!
//! The key's rate limits (`rpm`, `tpm`) are taken by the request's first reservation, in
//! the same store operation (one Redis round trip for both): over them, the request gets
//! 429 `rate_limited` with `Retry-After`, whatever the model.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::HeaderValue;
use routewise_online::budget::{Exceeded, Period, Rate, RateLimited, Refusal};
use routewise_online::service::now_ms;
use routewise_online::store::budget::{BudgetStore, Scope};

use crate::error::ApiError;
use crate::metrics::KeySpend;
use crate::models::ModelId;
use crate::pipeline::auth::Caller;
use crate::request::ChatRequest;
use crate::state::Gateway;

/// The "budget" of a key without a cap (finite, for Redis's Lua).
pub const UNCAPPED: f64 = 1e300;

/// A reservation on a key's account, to settle or release; charged at its amount when
/// dropped open.
#[derive(Debug)]
pub struct Hold(Option<Reservation>);

/// What a hold knows to close itself.
struct Reservation {
    store: Arc<dyn BudgetStore>,
    key: String,
    name: String,
    period: Period,
    budget: f64,
    /// When it was made (its account is that moment's period).
    at_ms: u64,
    id: u64,
    amount: f64,
    spend: KeySpend,
    /// The keys' count of open reservations (decremented when this one closes).
    pending: Arc<AtomicUsize>,
    /// The key's pacer, moved by the settled cost.
    paced: Option<Arc<crate::pipeline::pace::Paced>>,
    /// Whether the call belongs to a request the key's pacer observed.
    routed: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("key", &self.key)
            .field("amount", &self.amount)
            .finish()
    }
}

/// Why a call was not made.
#[derive(Debug)]
pub enum Refused {
    /// The key's budget cannot cover this model (a cheaper one may fit).
    Exceeded(Exceeded),
    /// The key is over its rate: the request is refused, whatever the model.
    Rate(RateLimited),
    Unavailable(String),
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> ApiError {
        match r {
            Refused::Exceeded(e) => ApiError::BudgetExceeded(e.to_string()),
            Refused::Rate(e) if e.never => ApiError::BadRequest {
                message: format!(
                    "the request (prompt plus max_tokens) is larger than the key's {} tokens per minute",
                    e.per_minute
                ),
                param: Some("max_tokens".into()),
                code: Some("request_exceeds_tpm"),
            },
            Refused::Rate(e) => ApiError::RateLimited {
                message: e.to_string(),
                retry_after: HeaderValue::from_str(
                    &e.retry_after_ms.div_ceil(1000).max(1).to_string(),
                )
                .ok(),
            },
            Refused::Unavailable(_) => ApiError::AuthUnavailable,
        }
    }
}

impl Reservation {
    fn scope(&self) -> Scope<'_> {
        Scope {
            key: &self.key,
            period: self.period,
            budget_usd: self.budget,
            now_ms: self.at_ms,
        }
    }

    async fn close(self, cost: Option<f64>) {
        match self
            .store
            .settle(&self.scope(), self.id, self.amount, cost)
            .await
        {
            Ok(()) => {
                if let Some(c) = cost {
                    self.spend.add(&self.name, c);
                    if let Some(p) = &self.paced {
                        p.record(c, self.routed);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(key = %self.name, error = %e, cost = ?cost, "a budget reservation could not be settled: it expires on its own, and this call's cost is not counted");
            }
        }
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hold {
    /// The reserved amount.
    pub fn amount(&self) -> f64 {
        self.0.as_ref().map_or(0.0, |r| r.amount)
    }

    /// Closes the hold at `cost` (`None`: unknown, the reservation is charged), off the
    /// caller's path.
    pub fn settle(mut self, cost: Option<f64>) {
        if let Some(r) = self.0.take() {
            let cost = cost.filter(|c| c.is_finite()).unwrap_or(r.amount);
            spawn_close(r, Some(cost));
        }
    }

    /// Closes the hold with nothing spent (the call failed), off the caller's path.
    pub fn release(mut self) {
        if let Some(r) = self.0.take() {
            spawn_close(r, None);
        }
    }
}

fn spawn_close(r: Reservation, cost: Option<f64>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(r.close(cost));
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            let amount = r.amount;
            spawn_close(r, Some(amount));
        }
    }
}

/// Holds `request` to `default_output` output tokens when it sets no `max_tokens` (written
/// into the forwarded body), so that the upstream cannot pass what is reserved.
pub fn cap_output(request: &mut ChatRequest, default_output: u64) {
    if request.max_tokens.is_none() {
        // OpenAI's current name: the reasoning models refuse `max_tokens`, and upstreams
        // that do not know it ignore it (the Anthropic provider reads the parsed value).
        request
            .rest_mut()
            .insert("max_completion_tokens".into(), default_output.into());
        request.max_tokens = Some(default_output);
    }
}

/// The most a call for `request` can cost under `cost(input tokens, output tokens)`: as
/// many input tokens as the body has bytes (at least the estimated prompt tokens), and
/// `max_tokens` (else `default_output`) output tokens per completion (`n`).
pub fn worst_case(
    request: &ChatRequest,
    default_output: u64,
    cost: impl Fn(u64, u64) -> f64,
) -> f64 {
    let output = request.max_tokens.unwrap_or(default_output);
    let completions = request
        .rest()
        .get("n")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1)
        .max(1);
    let input = request.body_bytes.max(request.prompt_tokens);
    cost(input, output.saturating_mul(completions))
}

/// What a finished call is charged: its usage when reported; else the reservation when
/// the upstream may have billed it (a success without usage, a timeout, a body cut short),
/// and nothing when it refused the call (an error status, no connection).
pub fn charge(
    result: &Result<crate::upstream::Answer, crate::upstream::Failure>,
    usage: Option<f64>,
    reserved: f64,
) -> f64 {
    use crate::upstream::{Answer, AttemptOutcome};
    match (result, usage) {
        (_, Some(c)) => c,
        (Ok(Answer::Full { status, .. }), None) if !status.is_success() => 0.0,
        (Ok(_), None) => reserved,
        (Err(f), None) => match f.outcome {
            AttemptOutcome::Timeout | AttemptOutcome::Body => reserved,
            _ => 0.0,
        },
    }
}

/// The caller's account: its budget and period; a key without a cap is still tracked
/// (its spend in `/v1/usage` and `/metrics`), monthly, against [`UNCAPPED`].
fn account(c: &Caller) -> (f64, Period) {
    c.budget.unwrap_or((UNCAPPED, Period::Month))
}

/// What `GET /v1/usage` reports for the caller's key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyUsage {
    pub key: String,
    pub spend_usd: f64,
    pub reserved_usd: f64,
    pub budget_usd: Option<f64>,
    pub remaining_usd: Option<f64>,
    pub period: &'static str,
    pub period_ends: String,
    /// A paced key's current lambda ([`super::pace`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pace_lambda: Option<f64>,
    /// The routed requests its pacer has seen this period (in this instance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pace_requests: Option<u64>,
}

/// The caller's spend in the current period.
pub async fn usage(gw: &Gateway, c: &Caller) -> Result<KeyUsage, ApiError> {
    let ks = gw.keys.get().ok_or(ApiError::AuthUnavailable)?;
    let (budget, period) = account(c);
    let now = now_ms();
    let scope = Scope {
        key: &c.id,
        period,
        budget_usd: budget,
        now_ms: now,
    };
    let u = ks
        .budgets()
        .usage(&scope)
        .await
        .map_err(|_| ApiError::AuthUnavailable)?;
    let capped = c.budget.is_some();
    let paced = ks.pacers.current(gw, c);
    Ok(KeyUsage {
        key: c.name.clone(),
        spend_usd: u.spent,
        reserved_usd: u.reserved,
        budget_usd: capped.then_some(budget),
        remaining_usd: capped.then(|| (budget - u.spent - u.reserved).max(0.0)),
        period: period.name(),
        period_ends: routewise_online::budget::rfc3339(period.bounds(now).1),
        pace_lambda: paced.as_ref().map(|p| p.lambda()),
        pace_requests: paced.as_ref().map(|p| p.requests()),
    })
}

/// Every live key's spend in its current period (at most `max` keys, revoked and expired
/// ones left out): the dashboard's per-key table.
pub async fn usages(gw: &Gateway, max: usize) -> Result<Vec<KeyUsage>, ApiError> {
    let ks = gw.keys.get().ok_or(ApiError::AuthUnavailable)?;
    let records = ks.list().await.map_err(|_| ApiError::AuthUnavailable)?;
    let now = now_ms();
    let mut out = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.revoked_ms.is_none() && r.expires_ms.is_none_or(|e| e > now))
        .take(max)
    {
        out.push(usage(gw, &crate::pipeline::auth::caller(gw, r)).await?);
    }
    Ok(out)
}

/// Holds the worst case of calling `m` for `req` on the caller's account (capped or not);
/// `None` without a caller (`auth: {mode: open}`). `first`: the request's first call,
/// which also takes the request from the key's rate limits (in the same store operation).
/// `routed`: the call belongs to a routed request (for a paced key's pacer).
pub async fn reserve(
    gw: &Gateway,
    caller: Option<&Caller>,
    m: ModelId,
    req: &ChatRequest,
    first: bool,
    routed: bool,
) -> Result<Option<Hold>, Refused> {
    let Some(c) = caller else {
        return Ok(None);
    };
    let (budget, period) = account(c);
    let Some(ks) = gw.keys.get() else {
        return Err(Refused::Unavailable("the key store is not attached".into()));
    };
    let default_output = gw.config.auth.reserve_output_tokens;
    let up = gw.upstreams.get(m);
    let amount = worst_case(req, default_output, |i, o| up.cost(i, o));
    // Tokens count as providers count them: the prompt plus `max_tokens` (which a capped
    // key always has), as the models' quotas count them too.
    let rate = (first && (c.rpm.is_some() || c.tpm.is_some())).then_some(Rate {
        rpm: c.rpm,
        tpm: c.tpm,
        tokens: req.needed_tokens(),
    });
    let r = Reservation {
        store: ks.budgets(),
        key: c.id.clone(),
        name: c.name.clone(),
        period,
        budget,
        at_ms: now_ms(),
        id: rand::random(),
        amount,
        spend: gw.metrics.key_spend(),
        pending: ks.pending(),
        paced: ks.pacers.current(gw, c),
        routed,
    };
    match r
        .store
        .reserve(&r.scope(), r.id, amount, rate.as_ref())
        .await
    {
        Ok(Ok(())) => {
            r.pending.fetch_add(1, Ordering::AcqRel);
            Ok(Some(Hold(Some(r))))
        }
        Ok(Err(Refusal::Budget(e))) => {
            gw.metrics.auth_failure("budget_exceeded");
            Err(Refused::Exceeded(e))
        }
        Ok(Err(Refusal::Rate(e))) => {
            gw.metrics.auth_failure(e.limit);
            Err(Refused::Rate(e))
        }
        // A key with neither a cap nor a rate limit is only tracked: its calls go on
        // untracked while the store is down.
        Err(e) if c.budget.is_none() && c.rpm.is_none() && c.tpm.is_none() => {
            tracing::warn!(error = %e, key = %c.name, "the budget store could not be reached; this call's spend is not tracked");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(error = %e, "the budget store could not be reached");
            gw.metrics.auth_failure("store_unavailable");
            Err(Refused::Unavailable(e.to_string()))
        }
    }
}
