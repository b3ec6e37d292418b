//! Signals in front of the learned router (issue: signals and rules).
//!
//! * [`rules`] — the ordered `routes:` list: conditions on the request (keywords, regexes,
//!   token counts, tools / images / JSON, user, team, tags, headers, language, route
//!   descriptions) and actions (restrict the pool, force a model, set the policy, tag,
//!   block), compiled once and evaluated per request with the reason each route matched.
//! * [`describe`] — route descriptions and prompts embedded with the built-in static
//!   model; cosine similarity; the few-shot centroid.
//! * [`pii`] — detectors for personal data and secrets, redaction with placeholders and
//!   their restoring in answers.
//! * [`agreement`] — semantic agreement of free-text answers (cascades): embedding cosine
//!   and the cache's guards.
//! * [`cache`] — the response cache's index: exact and semantic (LSH) lookups, guards
//!   against wrong semantic hits, TTL and LRU bounds.
//! * [`tiers`] — the zero-data router's ordering: configured quality tiers and prices, no
//!   outcome data.
//!
//! Everything here is pure (no I/O, no async): the gateway builds [`rules::Signals`] from
//! a request, calls in, and applies what comes back.

pub mod agreement;
pub mod cache;
pub mod describe;
pub mod pii;
pub mod rules;
pub mod tiers;

pub use describe::Embedder;
pub use pii::{Detector, Finding, KindSet, PiiAction, PiiKind, Redactions, StreamRestore};
pub use rules::{ModelFacts, Outcome, RawRoute, RuleSet, Signals};

/// A configuration problem: the field path (under the section that was compiled) and
/// what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}
