//! routewise's gateway: an OpenAI-compatible routing proxy.
//!
//! Clients send `POST /v1/chat/completions` with `model: "auto"`; the gateway asks the
//! router ([`routewise_router::Engine`]) for a ranking of models, calls the best one,
//! falls back down the ranking on upstream failures, and says what it did
//! (`x-routewise-model`, `x-routewise-decision-id`, a log line, Prometheus metrics).
//!
//! * [`config`]: YAML config, validated, with environment overrides;
//! * [`state`]: config + engine + per-model runtime; [`load`]: building it from a file or the demo;
//! * [`routes`]: the route table ([`app`]); [`handlers`]: thin HTTP handlers;
//! * [`proxy`]: the pipeline (routing, attempts, streaming); [`request`]: body parsing;
//! * [`fallback`], [`cooldown`]: which models to try; circuit breakers;
//! * [`metrics`], [`error`]: Prometheus metrics; the OpenAI-shaped error type;
//! * [`replay`], [`demo`]: the built-in demo provider and the embedded default;
//! * [`online`]: the bandit router and `POST /v1/feedback` (config `bandit:` / `state:`).

pub mod config;
pub mod cooldown;
pub mod demo;
pub mod error;
pub mod fallback;
pub mod handlers;
pub mod load;
pub mod metrics;
pub mod online;
pub mod proxy;
pub mod replay;
pub mod request;
pub mod routes;
pub mod server;
pub mod state;

pub use config::{Config, ConfigError};
pub use error::ApiError;
pub use load::LoadError;
pub use routes::app;
pub use server::serve;
pub use state::{AppState, StateError};
