//! The request context: one chat request as it goes through the pipeline's stages
//! (what was asked, what was decided, what was tried). Stages read and extend it; the
//! stream and the decision log keep it until the answer ends.

use std::time::Instant;

use crate::models::ModelId;
use crate::pipeline::route::Routed;
use crate::request::ChatRequest;
use crate::state::AppState;
use crate::upstream::AttemptOutcome;

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
}

/// One attempt, for the decision log.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub model: ModelId,
    pub outcome: AttemptOutcome,
    pub detail: String,
}
