//! The spend guard of keys with a budget ([`routewise_online::budget`]), around every
//! upstream call a request makes: the attempts (fallbacks included, [`super::attempts`])
//! and the cascade's tier calls ([`super::cascade`]).
//!
//! Every key's spend is tracked this way, so `GET /v1/usage` and
//! `routewise_key_spend_usd_total{key}` cover keys without a cap too (their account is
//! monthly and never refuses). Settling is done off the response path.
//!
//! Before a call, [`reserve`] holds the call's worst case on the key's account: the
//! prompt's estimated tokens at the model's input price plus `max_tokens` (or
//! `auth.reserve_output_tokens` when the request sets none) at its output price. A call
//! that does not fit is not made: the attempts go on to the next candidate (a cheaper
//! model may fit), and when none fits the request gets 429 `budget_exceeded`. After the
//! call, the [`Hold`] settles to the cost read from the answer's usage (the reservation
//! when the answer has none), or is released when the call failed. A hold dropped unsettled
//! (the client went away mid-call) charges its reservation, since the upstream may bill
//! the call anyway. A key store that cannot be reached refuses the call (503): a budget
//! fails closed.
//!
//! The key's rate limits (`rpm`, `tpm`) are taken by the request's first reservation, in
//! the same store operation (one Redis round trip for both): over them, the request gets
//! 429 `rate_limited` with `Retry-After`, whatever the model.

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
        if let Err(e) = self
            .store
            .settle(&self.scope(), self.id, self.amount, cost)
            .await
        {
            tracing::warn!(key = %self.name, error = %e, "a budget reservation could not be settled; it expires on its own");
        }
        if let Some(c) = cost {
            self.spend.add(&self.name, c);
        }
    }
}

impl Hold {
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

/// Holds the worst case of calling `m` for `req` on the caller's account (capped or not);
/// `None` without a caller (`auth: {mode: open}`). `first`: the request's first call,
/// which also takes the request from the key's rate limits (in the same store operation).
pub async fn reserve(
    gw: &Gateway,
    caller: Option<&Caller>,
    m: ModelId,
    req: &ChatRequest,
    first: bool,
) -> Result<Option<Hold>, Refused> {
    let Some(c) = caller else {
        return Ok(None);
    };
    // A key without a cap is still tracked (its spend in `/v1/usage` and `/metrics`).
    let (budget, period) = c.budget.unwrap_or((UNCAPPED, Period::Month));
    let Some(ks) = gw.keys.get() else {
        return Err(Refused::Unavailable("the key store is not attached".into()));
    };
    let out = req
        .max_tokens
        .unwrap_or(gw.config.auth.reserve_output_tokens);
    let amount = gw.upstreams.get(m).cost(req.prompt_tokens, out);
    let rate = (first && (c.rpm.is_some() || c.tpm.is_some())).then_some(Rate {
        rpm: c.rpm,
        tpm: c.tpm,
        tokens: req.prompt_tokens.saturating_add(out),
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
    };
    match r
        .store
        .reserve(&r.scope(), r.id, amount, rate.as_ref())
        .await
    {
        Ok(Ok(())) => Ok(Some(Hold(Some(r)))),
        Ok(Err(Refusal::Budget(e))) => {
            gw.metrics.auth_failure("budget_exceeded");
            Err(Refused::Exceeded(e))
        }
        Ok(Err(Refusal::Rate(e))) => {
            gw.metrics.auth_failure(e.limit);
            Err(Refused::Rate(e))
        }
        Err(e) => {
            tracing::warn!(error = %e, "the budget store could not be reached");
            gw.metrics.auth_failure("store_unavailable");
            Err(Refused::Unavailable(e.to_string()))
        }
    }
}
