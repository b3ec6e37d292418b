//! Online learning from live feedback: a contextual-bandit router warm-started from an
//! offline router, with durable local state (redb) or state shared across replicas
//! (Redis).
//!
//! Method. Each model is an arm of a disjoint linear contextual bandit over a small dense
//! context (a seeded random projection of the prompt features, [`project`]). The reward
//! of serving a prompt is `score - lambda * cost_usd`; the bandit learns the *residual*
//! of that reward over the offline router's prediction (its predicted score minus lambda
//! times the catalog's expected cost), so a fresh deployment decides exactly as the
//! offline router and only departs from it as evidence accumulates ([`bandit`]):
//! LinUCB (Li et al., WWW 2010) or linear Thompson sampling (Agrawal & Goyal, ICML 2013),
//! with a forgetting factor for drift and optimistic priors plus forced exploration for
//! newly configured models.
//!
//! Related routers this follows: BaRP (Wang et al., 2025, "Learning to Route LLMs from
//! Bandit Feedback: One Policy, Many Trade-offs", arXiv:2510.07429) trains under the
//! same partial feedback with a score-minus-cost reward; GreenServ (Ziller et al., 2026,
//! arXiv:2601.17551) routes with LinUCB online and adds new models without retraining;
//! PILOT (arXiv:2508.21141, "Adaptive LLM Routing under Budget Constraints") extends
//! LinUCB with a prior learned offline, the warm start used here.
//!
//! Modules: [`config`] (YAML), [`linalg`], [`bandit`], [`project`] (pure, no I/O);
//! [`feedback`] (protocol and typed errors); [`router`] ([`OnlineRouter`], the
//! `routewise_router::Decide` implementation used per request); [`store`] (the
//! [`StateStore`] trait: redb / Redis); [`service`] ([`FeedbackService`], async). The
//! offline replay evaluation of this router lives in `routewise-eval` (`online`).

pub mod bandit;
pub mod budget;
pub mod config;
pub mod feedback;
pub mod keys;
pub mod linalg;
pub mod project;
pub mod router;
pub mod service;
pub mod store;

pub use bandit::{ArmStats, BanditError, LinearBandit};
pub use config::{Algorithm, Backend, BanditConfig, ConfigIssue, StateConfig};
pub use feedback::{
    DecisionRecord, FeedbackAck, FeedbackEntry, FeedbackError, FeedbackRequest, ReplayContext,
    ScoreValue, Thumbs, ValidFeedback,
};
pub use project::Projector;
pub use router::{Choice, OnlineError, OnlineRouter};
pub use service::FeedbackService;
pub use store::keys::KeyStore;
pub use store::local::LocalStore;
pub use store::redis::RedisStore;
pub use store::state_store::{FeedbackParams, StateStore, StoreError};
