//! routewise's gateway: an OpenAI-compatible routing proxy.
//!
//! Clients send `POST /v1/chat/completions` with `model: "auto"`; the gateway asks the
//! deciding router (one `Arc<dyn routewise_router::Decide>`) for a ranking of models,
//! calls the best one through its provider, falls back down the ranking on upstream
//! failures, and says what it did (`x-routewise-model`, `x-routewise-decision-id`, a log
//! line, Prometheus metrics). Layout (`docs/architecture.md` has the whole picture):
//!
//! * [`http`]: the route table ([`app`]), thin handlers, extractors;
//! * [`pipeline`]: the request's stages in order (parse, route, attempts with fallback and
//!   cooldown, stream, decision log, feedback record);
//! * [`upstream`]: the [`upstream::Provider`] trait and one file per provider (OpenAI,
//!   Anthropic, the demo's replay);
//! * [`request`]: parsing a chat body once; [`error`]: the OpenAI-shaped error type;
//! * [`config`]: YAML config, validated, with environment overrides; [`models`]: the
//!   typed model table; [`state`]: everything a request needs; [`load`]: building it
//!   from a file or the demo ([`demo`]);
//! * [`server`]: the accept loop, connection deadlines and caps ([`limits`]), shutdown;
//!   [`reload`]: the configuration being served and its hot reload;
//! * [`online`]: the bandit router's state store and maintenance task;
//! * [`trace`]: request ids and W3C trace context; [`otel`]: span export glue (the
//!   `otel` cargo feature);
//! * [`metrics`]: Prometheus metrics; [`stats`]: the dashboard's live statistics, served
//!   with the page by [`dashboard`].

pub mod config;
pub mod dashboard;
pub mod demo;
pub mod error;
pub mod http;
pub mod limits;
pub mod load;
pub mod metrics;
pub mod models;
pub mod online;
pub mod otel;
pub mod pipeline;
pub mod profile;
pub mod redis_link;
pub mod reload;
pub mod request;
pub mod server;
pub mod state;
pub mod stats;
pub mod trace;
pub mod upstream;

pub use config::{Config, ConfigError};
pub use error::ApiError;
pub use http::app;
pub use load::LoadError;
pub use reload::Live;
pub use server::serve;
pub use state::{AppState, StateError};
