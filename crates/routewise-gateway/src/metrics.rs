//! Prometheus metrics of one gateway, in its own registry (so tests can run many
//! gateways in one process), rendered as Prometheus text at `GET /metrics`.
//!
//! Per-model handles are created once per configuration and indexed by model position,
//! so the hot path increments atomics without hashing or allocating, except for the
//! `requests_total{model,status}` family whose label set is built per request.
//!
//! A hot reload ([`crate::reload`]) keeps the registry: [`Metrics::for_models`] makes the
//! new configuration's handles from the same families, so counters carry on across
//! reloads (a model kept by name keeps its series).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

pub use crate::upstream::AttemptOutcome;

use crate::limits::Refused;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    model: String,
    deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    model: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PiiLabels {
    kind: &'static str,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabel {
    store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    model: String,
    status: u32,
}

/// Handles of one model's metrics.
#[derive(Debug, Clone)]
struct ModelMetrics {
    attempts: Vec<Counter>,
    fallbacks: Counter,
    latency: Histogram,
    cost: Counter<f64, AtomicU64>,
    energy: Counter<f64, AtomicU64>,
    cooldown: Gauge,
    cooldowns_opened: Counter,
}

/// All metrics of a gateway: the registry shared by every configuration a reload
/// installs, and this configuration's per-model handles.
#[derive(Debug, Clone)]
pub struct Metrics {
    f: Arc<Families>,
    models: Vec<ModelMetrics>,
}

/// The registry and every metric family in it.
#[derive(Debug)]
struct Families {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    fallbacks: Family<ModelLabel, Counter>,
    latency: Family<ModelLabel, Histogram>,
    cost: Family<ModelLabel, Counter<f64, AtomicU64>>,
    energy: Family<ModelLabel, Counter<f64, AtomicU64>>,
    cooldown: Family<ModelLabel, Gauge>,
    cooldowns_opened: Family<ModelLabel, Counter>,
    config_reloads: Family<ResultLabel, Counter>,
    config_reload_failures: Counter,
    decision_latency: Histogram,
    in_flight: Gauge,
    decision_log_dropped: Counter,
    shadow_dropped: Counter,
    feedback: Family<ResultLabel, Counter>,
    decisions_recorded: Family<ResultLabel, Counter>,
    state_available: Family<StoreLabel, Gauge>,
    connections_refused: Family<ReasonLabel, Counter>,
    connections_cut: Family<ReasonLabel, Counter>,
    shed: Family<ReasonLabel, Counter>,
    protocol_errors: Family<StatusLabel, Counter>,
    cascades: Family<VerdictLabel, Counter>,
    cascade_feedback: Family<VerdictLabel, Counter>,
    cascade_feedback_score: Family<VerdictLabel, Counter<f64, AtomicU64>>,
    routes: Family<RouteLabel, Counter>,
    cache: Family<ResultLabel, Counter>,
    pii: Family<PiiLabels, Counter>,
    auth_failures: Family<ReasonLabel, Counter>,
    affinity: Family<VerdictLabel, Counter>,
    key_spend: KeySpend,
    deployment_in_flight: Family<DeploymentLabels, Gauge>,
    deployment_ttft: Family<DeploymentLabels, Gauge<f64, AtomicU64>>,
    deployment_ms_per_token: Family<DeploymentLabels, Gauge<f64, AtomicU64>>,
    deployment_errors: Family<DeploymentLabels, Gauge<f64, AtomicU64>>,
    model_full: Family<ModelLabel, Counter>,
    at_capacity: Counter,
    balanced: Family<VerdictLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabel {
    key: String,
}

/// Spend per virtual key (its name), USD: `routewise_key_spend_usd_total{key}`.
#[derive(Clone, Debug, Default)]
pub struct KeySpend(Family<KeyLabel, Counter<f64, AtomicU64>>);

impl KeySpend {
    pub fn add(&self, key: &str, usd: f64) {
        if usd.is_finite() && usd > 0.0 {
            self.0
                .get_or_create(&KeyLabel {
                    key: key.to_string(),
                })
                .inc_by(usd);
        }
    }
}

impl Metrics {
    /// Registers every metric for `models` (names in gateway order).
    pub fn new(models: &[String]) -> Metrics {
        let mut registry = Registry::with_prefix("routewise");
        let r = &mut registry;
        let requests = reg(
            r,
            "requests",
            "Requests answered, by endpoint, answering model and HTTP status",
            Family::<RequestLabels, Counter>::default(),
        );
        let attempts = reg(
            r,
            "upstream_attempts",
            "Upstream attempts by model and outcome",
            Family::<AttemptLabels, Counter>::default(),
        );
        let fallbacks = reg(
            r,
            "fallbacks",
            "Times a failed model was fallen back from",
            Family::<ModelLabel, Counter>::default(),
        );
        let latency = reg(
            r,
            "upstream_latency_seconds",
            "Time from sending an upstream request to its response headers",
            Family::<ModelLabel, Histogram>::new_with_constructor(latency_histogram),
        );
        let decision_latency = reg(
            r,
            "routing_decision_seconds",
            "Time to parse a request and make the routing decision",
            Histogram::new(exponential_buckets(1e-6, 2.0, 20)),
        );
        let cost = reg(
            r,
            "realised_cost_usd",
            "Cost of answered requests from the upstream usage and configured prices",
            Family::<ModelLabel, Counter<f64, AtomicU64>>::default(),
        );
        let energy = reg(
            r,
            "energy_wh",
            "Energy of answered requests from the upstream usage and models[].energy_wh_per_mtok, watt-hours",
            Family::<ModelLabel, Counter<f64, AtomicU64>>::default(),
        );
        let cooldown = reg(
            r,
            "model_cooldown",
            "1 while a model is cooled down (skipped), else 0",
            Family::<ModelLabel, Gauge>::default(),
        );
        let opened = reg(
            r,
            "cooldowns_opened",
            "Times a model entered cooldown",
            Family::<ModelLabel, Counter>::default(),
        );
        let in_flight = reg(
            r,
            "in_flight_requests",
            "Chat requests being served",
            Gauge::default(),
        );
        let decision_log_dropped = reg(
            r,
            "decision_log_dropped",
            "Decision log lines dropped because the writer's queue was full",
            Counter::default(),
        );
        let shadow_dropped = reg(
            r,
            "shadow_dropped",
            "Shadow router jobs (decisions, feedback) dropped because the shadow queue was full",
            Counter::default(),
        );
        let feedback = reg(
            r,
            "feedback",
            "POST /v1/feedback answers by result (ok or the error code)",
            Family::<ResultLabel, Counter>::default(),
        );
        let decisions_recorded = reg(
            r,
            "online_decisions_recorded",
            "Routed decisions kept in the online state for feedback (ok / error)",
            Family::<ResultLabel, Counter>::default(),
        );
        let state_available = reg(
            r,
            "state_available",
            "1 while the online state store (local / redis) answers, else 0",
            Family::<StoreLabel, Gauge>::default(),
        );
        let connections_refused = reg(
            r,
            "connections_refused",
            "Connections accepted and closed at once, by cap (total / per_ip)",
            Family::<ReasonLabel, Counter>::default(),
        );
        let connections_cut = reg(
            r,
            "connections_cut",
            "Accepted connections closed by a deadline (header_timeout / idle_timeout / write_stall / drain)",
            Family::<ReasonLabel, Counter>::default(),
        );
        let shed = reg(
            r,
            "requests_shed",
            "Requests refused by load shedding, by cap (total: 503 / per_ip: 429)",
            Family::<ReasonLabel, Counter>::default(),
        );
        let protocol_errors = reg(
            r,
            "protocol_errors",
            "Unparsable request heads answered (400 / 414 / 431) before reaching a handler",
            Family::<StatusLabel, Counter>::default(),
        );
        let cascades = reg(
            r,
            "cascades",
            "Cascaded requests by verdict (accepted: a tier answer / escalated)",
            Family::<VerdictLabel, Counter>::default(),
        );
        let cascade_feedback = reg(
            r,
            "cascade_feedback",
            "Feedback received on cascaded decisions, by the decision's verdict",
            Family::<VerdictLabel, Counter>::default(),
        );
        let cascade_feedback_score = reg(
            r,
            "cascade_feedback_score",
            "Sum of the feedback scores on cascaded decisions, by verdict (over \
             routewise_cascade_feedback_total: the mean score of accepted and escalated answers)",
            Family::<VerdictLabel, Counter<f64, AtomicU64>>::default(),
        );
        let routes = reg(
            r,
            "route_matched",
            "Requests a `routes:` rule applied to, by route",
            Family::<RouteLabel, Counter>::default(),
        );
        let pii = reg(
            r,
            "pii_detected",
            "Requests in which the PII guard found a kind of personal data, by kind and action",
            Family::<PiiLabels, Counter>::default(),
        );
        let cache = reg(
            r,
            "cache_lookups",
            "Response cache lookups by result (hit-exact / hit-semantic / miss / bypass)",
            Family::<ResultLabel, Counter>::default(),
        );
        let auth_failures = reg(
            r,
            "auth_failures",
            "Requests refused by `auth: {mode: keys}`, by reason (missing / invalid / revoked / expired / forbidden_model / store_unavailable)",
            Family::<ReasonLabel, Counter>::default(),
        );
        let affinity = reg(
            r,
            "affinity",
            "Conversation turns whose previous model was not the router's choice, by verdict (stayed on it / switched to the choice)",
            Family::<VerdictLabel, Counter>::default(),
        );
        let key_spend = KeySpend(reg(
            r,
            "key_spend_usd",
            "Spend settled on each virtual key's budget (by key name), USD",
            Family::<KeyLabel, Counter<f64, AtomicU64>>::default(),
        ));
        let deployment_in_flight = reg(
            r,
            "deployment_in_flight",
            "Calls in flight at each deployment of a model",
            Family::<DeploymentLabels, Gauge>::default(),
        );
        let deployment_ttft = reg(
            r,
            "deployment_ttft_seconds",
            "Moving average of each deployment's time to first token (streamed answers)",
            Family::<DeploymentLabels, Gauge<f64, AtomicU64>>::default(),
        );
        let deployment_ms_per_token = reg(
            r,
            "deployment_seconds_per_output_token",
            "Moving average of each deployment's time per output token",
            Family::<DeploymentLabels, Gauge<f64, AtomicU64>>::default(),
        );
        let deployment_errors = reg(
            r,
            "deployment_error_rate",
            "Moving average of each deployment's failed calls (0 to 1)",
            Family::<DeploymentLabels, Gauge<f64, AtomicU64>>::default(),
        );
        let model_full = reg(
            r,
            "model_at_capacity",
            "Times a request passed a model over because every deployment was at max_concurrency",
            Family::<ModelLabel, Counter>::default(),
        );
        let balanced = reg(
            r,
            "balanced",
            "Requests assigned by balanced dispatch, by verdict (kept: first choice, moved: another candidate, held: placed in a full model's queue, unplaced: no place)",
            Family::<VerdictLabel, Counter>::default(),
        );
        let at_capacity = reg(
            r,
            "requests_at_capacity",
            "Requests refused with 503 at_capacity after waiting dispatch.queue_ms for a slot",
            Counter::default(),
        );
        let config_reloads = reg(
            r,
            "config_reloads",
            "Configuration reloads (SIGHUP, POST /admin/reload, file watch) by result (ok / failed)",
            Family::<ResultLabel, Counter>::default(),
        );
        let failures = reg(
            r,
            "config_reload_failures",
            "Configuration reloads refused (the old configuration kept serving)",
            Counter::default(),
        );
        let f = Arc::new(Families {
            registry,
            requests,
            attempts,
            fallbacks,
            latency,
            cost,
            energy,
            cooldown,
            cooldowns_opened: opened,
            config_reloads,
            config_reload_failures: failures,
            decision_latency,
            in_flight,
            decision_log_dropped,
            shadow_dropped,
            feedback,
            decisions_recorded,
            state_available,
            connections_refused,
            connections_cut,
            shed,
            protocol_errors,
            cascades,
            cascade_feedback,
            cascade_feedback_score,
            routes,
            cache,
            pii,
            deployment_in_flight,
            deployment_ttft,
            deployment_ms_per_token,
            deployment_errors,
            model_full,
            at_capacity,
            balanced,
            auth_failures,
            affinity,
            key_spend,
        });
        Metrics {
            f,
            models: Vec::new(),
        }
        .for_models(models)
    }

    /// The same registry with handles for `models` (names in gateway order): what a
    /// reloaded configuration counts with.
    pub fn for_models(&self, models: &[String]) -> Metrics {
        let f = &self.f;
        let models = models
            .iter()
            .map(|m| {
                let l = ModelLabel { model: m.clone() };
                ModelMetrics {
                    attempts: AttemptOutcome::ALL
                        .iter()
                        .map(|o| {
                            f.attempts
                                .get_or_create(&AttemptLabels {
                                    model: m.clone(),
                                    outcome: o.name(),
                                })
                                .clone()
                        })
                        .collect(),
                    fallbacks: f.fallbacks.get_or_create(&l).clone(),
                    latency: f.latency.get_or_create(&l).clone(),
                    cost: f.cost.get_or_create(&l).clone(),
                    energy: f.energy.get_or_create(&l).clone(),
                    cooldown: f.cooldown.get_or_create(&l).clone(),
                    cooldowns_opened: f.cooldowns_opened.get_or_create(&l).clone(),
                }
            })
            .collect();
        Metrics {
            f: Arc::clone(f),
            models,
        }
    }

    /// Counts a reload: installed, or refused (the old configuration kept).
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.f
            .config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
        if !ok {
            self.f.config_reload_failures.inc();
        }
    }

    /// The per-key spend counters (cheap to clone; held by budget reservations).
    pub fn key_spend(&self) -> KeySpend {
        self.f.key_spend.clone()
    }

    /// Counts a conversation turn by its affinity verdict (`stayed` / `switched`).
    pub fn affinity(&self, verdict: &'static str) {
        self.f
            .affinity
            .get_or_create(&VerdictLabel { verdict })
            .inc();
    }

    /// Counts a request refused by the auth stage.
    pub fn auth_failure(&self, reason: &'static str) {
        self.f
            .auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a cascaded request by `verdict` (`accepted` / `escalated`).
    /// Counts a response cache lookup.
    pub fn cache_lookup(&self, result: &'static str) {
        self.f.cache.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a request a route applied to.
    pub fn route_matched(&self, route: &str) {
        self.f
            .routes
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .inc();
    }

    /// Counts a request with personal data of `kind`, and what was done.
    pub fn pii_detected(&self, kind: &'static str, action: &'static str) {
        self.f.pii.get_or_create(&PiiLabels { kind, action }).inc();
    }

    pub fn cascade(&self, verdict: &'static str) {
        self.f
            .cascades
            .get_or_create(&VerdictLabel { verdict })
            .inc();
    }

    /// Counts a feedback `score` on a cascaded decision whose verdict was `verdict`
    /// (`accepted` / `escalated`; anything else is not counted).
    pub fn cascade_feedback(&self, verdict: &str, score: f64) {
        let verdict = match verdict {
            "accepted" => "accepted",
            "escalated" => "escalated",
            _ => return,
        };
        let label = VerdictLabel { verdict };
        self.f.cascade_feedback.get_or_create(&label).inc();
        self.f
            .cascade_feedback_score
            .get_or_create(&label)
            .inc_by(score);
    }

    /// Counts an unparsable request head answered with `status`.
    pub fn protocol_error(&self, status: u16) {
        self.f
            .protocol_errors
            .get_or_create(&StatusLabel {
                status: status.into(),
            })
            .inc();
    }

    /// Counts a connection closed at accept.
    pub fn connection_refused(&self, why: Refused) {
        self.f
            .connections_refused
            .get_or_create(&ReasonLabel {
                reason: refused_name(why),
            })
            .inc();
    }

    /// Counts a connection closed by one of its deadlines.
    pub fn connection_cut(&self, why: crate::server::conn::Cut) {
        self.f
            .connections_cut
            .get_or_create(&ReasonLabel { reason: why.name() })
            .inc();
    }

    /// Counts a request refused by load shedding.
    pub fn shed(&self, why: Refused) {
        self.f
            .shed
            .get_or_create(&ReasonLabel {
                reason: refused_name(why),
            })
            .inc();
    }

    /// Counts a feedback answer: `ok` or the error code.
    pub fn feedback(&self, result: &'static str) {
        self.f.feedback.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a decision kept (or not) for feedback.
    pub fn decision_recorded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.f
            .decisions_recorded
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Sets the state-store availability gauge.
    pub fn state_available(&self, store: &'static str, available: bool) {
        self.f
            .state_available
            .get_or_create(&StoreLabel { store })
            .set(i64::from(available));
    }

    /// Counts an answered request.
    pub fn request(&self, endpoint: &'static str, model: &str, status: u16) {
        self.f
            .requests
            .get_or_create(&RequestLabels {
                endpoint,
                model: model.to_string(),
                status: u32::from(status),
            })
            .inc();
    }

    pub fn attempt(&self, model: usize, outcome: AttemptOutcome) {
        if let Some(m) = self.models.get(model) {
            m.attempts[outcome.index()].inc();
        }
    }

    pub fn fallback(&self, from_model: usize) {
        if let Some(m) = self.models.get(from_model) {
            m.fallbacks.inc();
        }
    }

    pub fn upstream_latency(&self, model: usize, seconds: f64) {
        if let Some(m) = self.models.get(model) {
            m.latency.observe(seconds);
        }
    }

    pub fn decision_latency(&self, seconds: f64) {
        self.f.decision_latency.observe(seconds);
    }

    pub fn cost(&self, model: usize, usd: f64) {
        if let Some(m) = self.models.get(model) {
            if usd.is_finite() && usd > 0.0 {
                m.cost.inc_by(usd);
            }
        }
    }

    pub fn energy(&self, model: usize, wh: f64) {
        if let Some(m) = self.models.get(model) {
            if wh.is_finite() && wh > 0.0 {
                m.energy.inc_by(wh);
            }
        }
    }

    /// Sets the cooldown gauge; `open` also counts a cooldown start.
    pub fn cooldown(&self, model: usize, open: bool) {
        if let Some(m) = self.models.get(model) {
            m.cooldown.set(i64::from(open));
            if open {
                m.cooldowns_opened.inc();
            }
        }
    }

    /// Sets the cooldown gauge without counting a cooldown start (a reload's carried
    /// breakers).
    pub fn set_cooldown(&self, model: usize, open: bool) {
        if let Some(m) = self.models.get(model) {
            m.cooldown.set(i64::from(open));
        }
    }

    /// Zeroes the cooldown gauges of models no longer served.
    pub fn clear_cooldowns(&self, models: &[String]) {
        for m in models {
            self.f
                .cooldown
                .get_or_create(&ModelLabel { model: m.clone() })
                .set(0);
        }
    }

    /// Counts a model passed over because its deployments were full.
    pub fn model_full(&self, model: &str) {
        self.f
            .model_full
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .inc();
    }

    /// Stops exporting the gauges of a deployment no longer served (a reload).
    pub fn forget_deployment(&self, model: &str, deployment: &str) {
        let l = DeploymentLabels {
            model: model.to_string(),
            deployment: deployment.to_string(),
        };
        self.f.deployment_in_flight.remove(&l);
        self.f.deployment_ttft.remove(&l);
        self.f.deployment_ms_per_token.remove(&l);
        self.f.deployment_errors.remove(&l);
    }

    /// Counts a request's balanced-dispatch verdict.
    pub fn balanced(&self, verdict: &'static str) {
        self.f
            .balanced
            .get_or_create(&VerdictLabel { verdict })
            .inc();
    }

    /// Counts a request refused because every candidate stayed full.
    pub fn at_capacity(&self) {
        self.f.at_capacity.inc();
    }

    /// Sets the gauges of deployment `deployment` of `model` (read at scrape time, `now_ms`
    /// on the gateway's clock).
    pub fn deployment(
        &self,
        model: &str,
        deployment: &str,
        load: &crate::pipeline::attempts::deploy::Load,
        now_ms: u64,
    ) {
        let l = DeploymentLabels {
            model: model.to_string(),
            deployment: deployment.to_string(),
        };
        self.f
            .deployment_in_flight
            .get_or_create(&l)
            .set(i64::from(load.in_flight()));
        if let Some(t) = load.ttft_ms() {
            self.f.deployment_ttft.get_or_create(&l).set(t / 1000.0);
        }
        if let Some(t) = load.ms_per_token() {
            self.f
                .deployment_ms_per_token
                .get_or_create(&l)
                .set(t / 1000.0);
        }
        self.f
            .deployment_errors
            .get_or_create(&l)
            .set(load.error_rate(now_ms));
    }

    pub fn in_flight(&self) -> &Gauge {
        &self.f.in_flight
    }

    /// Decision log lines dropped (a handle for the log's queue).
    pub fn decision_log_dropped(&self) -> Counter {
        self.f.decision_log_dropped.clone()
    }

    /// Shadow jobs dropped (a handle for the shadows' queue).
    pub fn shadow_dropped(&self) -> Counter {
        self.f.shadow_dropped.clone()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.f.registry);
        out
    }
}

fn refused_name(why: Refused) -> &'static str {
    match why {
        Refused::Total => "total",
        Refused::PerIp => "per_ip",
    }
}

/// Registers a clone of `metric` under `name` and returns the handle.
fn reg<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-4, 2.0, 18))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::new(&["a".to_string(), "b".to_string()]);
        m.request("chat", "a", 200);
        m.attempt(1, AttemptOutcome::Http5xx);
        m.fallback(1);
        m.cost(0, 0.5);
        m.cooldown(1, true);
        m.feedback("duplicate_feedback");
        m.state_available("redis", false);
        let t = m.render();
        assert!(t.contains(r#"routewise_feedback_total{result="duplicate_feedback"} 1"#));
        assert!(t.contains(r#"routewise_state_available{store="redis"} 0"#));
        assert!(
            t.contains(r#"routewise_requests_total{endpoint="chat",model="a",status="200"} 1"#),
            "{t}"
        );
        assert!(t.contains(r#"routewise_upstream_attempts_total{model="b",outcome="http_5xx"} 1"#));
        assert!(t.contains(r#"routewise_fallbacks_total{model="b"} 1"#));
        assert!(t.contains(r#"routewise_realised_cost_usd_total{model="a"} 0.5"#));
        assert!(t.contains(r#"routewise_model_cooldown{model="b"} 1"#));
        assert!(t.contains("routewise_routing_decision_seconds_bucket"));
    }
}
