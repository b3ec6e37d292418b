//! The request context: one chat request as it goes through the pipeline's stages
//! (what was asked, what was decided, what was tried). Stages read and extend it; the
//! stream and the decision log keep it until the answer ends. A context dropped before
//! its decision was logged (the client went away while an upstream was answering) logs it
//! then, as `client_disconnected` with status 499 (`shutdown`, 503, when the shutdown
//! grace period cut it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::http::{HeaderName, HeaderValue};

use crate::models::ModelId;
use crate::pipeline::decision_log::{self, End};
use crate::pipeline::route::Routed;
use crate::request::ChatRequest;
use crate::state::{AppState, ShutdownPhase};
use crate::trace::TraceContext;
use crate::upstream::AttemptOutcome;

/// The status logged and counted for a request whose client went away (nginx's code).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;
/// The status logged and counted for a request cut by the end of the shutdown grace.
pub const SHUTDOWN_STATUS: u16 = 503;

/// One chat request on its way through the stages.
#[derive(Debug)]
pub struct RequestContext {
    pub state: AppState,
    /// The decision id (`x-routewise-decision-id`).
    pub id: String,
    pub started: Instant,
    pub request: ChatRequest,
    /// What the route stage decided.
    pub routed: Routed,
    /// Every upstream attempt so far.
    pub attempts: Vec<AttemptRecord>,
    /// The request id and trace context.
    pub trace: TraceContext,
    /// The last attempt's rate-limit headers (passed on for direct requests).
    pub rate_limit: Vec<(HeaderName, HeaderValue)>,
    /// Whether the decision log line was written.
    pub logged: AtomicBool,
    /// What the cascade stage did, when it ran.
    pub cascade: Option<crate::pipeline::cascade::CascadeTrace>,
    /// What the rules and the PII guard found (stage 2), when configured.
    pub signals: Option<Box<crate::pipeline::rules::SignalTrace>>,
    /// The response cache's keys for this request, when the cache is on.
    pub cache: Option<Box<crate::pipeline::cache::Probe>>,
    /// The caller's key (`auth: {mode: keys}`).
    pub caller: Option<std::sync::Arc<crate::pipeline::auth::Caller>>,
    /// The answering call's budget reservation, settled when the answer is complete.
    pub hold: Option<crate::pipeline::budget::Hold>,
    /// Whether the key's rate limits took this request (its first reservation did).
    pub rate_taken: bool,
    /// Candidates passed over without a call, and why (`quota`: every deployment's
    /// configured quota is used up; `budget`: the key could not afford it; `capacity`:
    /// every deployment is at its `max_concurrency`; `slo`: none meets the request's SLO;
    /// `cooldown`: its breaker half-opened for another request while this one waited).
    pub skipped: Vec<(ModelId, &'static str)>,
    /// The conversation and the affinity verdict (`affinity:` in the config).
    pub affinity: Option<crate::pipeline::affinity::Trace>,
    /// The answering call's slot at its deployment, held until the answer ends.
    pub slot: Option<crate::models::Slot>,
    /// What balanced dispatch did (`dispatch.balance`), when the request was batched.
    pub balanced: Option<crate::pipeline::balance::Verdict>,
}

impl RequestContext {
    /// A context for a request that stage 1-3 (or the cache) settled, before any attempt.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: AppState,
        id: String,
        started: Instant,
        request: ChatRequest,
        routed: Routed,
        trace: TraceContext,
        signals: Option<Box<crate::pipeline::rules::SignalTrace>>,
        cache: Option<Box<crate::pipeline::cache::Probe>>,
        caller: Option<std::sync::Arc<crate::pipeline::auth::Caller>>,
    ) -> RequestContext {
        RequestContext {
            state,
            id,
            started,
            request,
            routed,
            attempts: Vec::new(),
            trace,
            rate_limit: Vec::new(),
            logged: AtomicBool::new(false),
            cascade: None,
            signals,
            cache,
            caller,
            hold: None,
            rate_taken: false,
            skipped: Vec::new(),
            affinity: None,
            slot: None,
            balanced: None,
        }
    }

    /// Marks the decision as logged; false if it already was.
    pub fn mark_logged(&self) -> bool {
        !self.logged.swap(true, Ordering::AcqRel)
    }
}

impl Drop for RequestContext {
    fn drop(&mut self) {
        if *self.logged.get_mut() {
            return;
        }
        // Dropped unanswered: the client went away, or the shutdown grace period ended.
        let (status, end) = if *self.state.shutdown.borrow() == ShutdownPhase::Aborting {
            (SHUTDOWN_STATUS, End::Shutdown)
        } else {
            (CLIENT_CLOSED_REQUEST, End::ClientDisconnected)
        };
        // Tier calls already made are billed: their cost is the request's.
        let cost = crate::pipeline::cascade::total_cost(self, None);
        decision_log::emit(self, None, status, cost, None, end);
        self.state.metrics.request("chat", "-", status);
    }
}

/// One attempt, for the decision log.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub model: ModelId,
    /// The deployment's index in the model's list.
    pub deployment: usize,
    pub outcome: AttemptOutcome,
    pub detail: String,
    /// The upstream's own request id, when it sent one.
    pub upstream_request_id: Option<String>,
}
