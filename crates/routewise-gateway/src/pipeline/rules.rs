//! Stage 2, before routing: the `routes:` rules ([`routewise_signals::rules`]) and the
//! PII guard ([`routewise_signals::pii`]).
//!
//! 1. The request's signals (last user message, every message's text, tokens, tools,
//!    images, JSON output, `user`, `x-routewise-tags`, the headers conditions read) are
//!    read from the parsed body, borrowing it, and the routes are evaluated in order.
//!    A `block` answers 400 / 403 `blocked_by_route` here.
//!    An API key's models (`auth: {mode: keys}`) narrow the pool like a route's, and its
//!    team and tags are signals (`team:`, `tag:`).
//! 2. The PII detectors scan the text of every message. Found kinds are recorded (never
//!    the matched text) and the action (the matched route's `pii:`, else `pii.action`)
//!    applies: `block` answers 400 `pii_blocked` naming the kinds; `redact` replaces each
//!    finding in the forwarded messages and in the text the router sees by a placeholder
//!    (`[EMAIL_1]`), and with `restore: true` the placeholders in the answer, full or
//!    streamed ([`super::restore`]), are replaced back; `restrict` leaves only the models marked `private: true`; `tag`
//!    records.
//!
//! The route stage then ranks within the pool the rules leave ([`super::route`]); the
//! cascade and shadow executions, which call other models, stand down for a restricted
//! pool so that nothing reaches a model the rules excluded.

use std::borrow::Cow;

use axum::http::HeaderMap;
use routewise_signals::rules::Matched;
use routewise_signals::{KindSet, Outcome, PiiAction, Redactions, Signals};
use serde_json::Value;

use crate::error::ApiError;
use crate::pipeline::auth::Caller;
use crate::request::{CascadeChoice, ChatRequest};
use crate::state::Gateway;

/// Header a client tags requests with for `tag:` conditions: `team=search,env=prod`.
pub const TAGS_HEADER: &str = "x-routewise-tags";

/// What stage 2 found and decided, kept with the request for the later stages, the
/// response headers and the decision log.
#[derive(Debug, Clone, Default)]
pub struct SignalTrace {
    /// The rules' outcome (pool, forced model, policy, cascade, tags, matched routes).
    pub outcome: Outcome,
    /// The kinds of personal data found (empty when none, or the guard is off).
    pub pii: KindSet,
    /// The action taken on them.
    pub pii_action: Option<PiiAction>,
    /// The placeholders put in the request, when they are to be restored in the answer.
    pub restore: Option<Redactions>,
    /// The last user message's embedding, when the rules computed it (the semantic cache
    /// reuses it).
    pub last_user_embedding: Option<Vec<f32>>,
}

impl SignalTrace {
    /// The matched routes' names joined by commas (`x-routewise-route`, the decision log).
    pub fn route_names(&self, gw: &Gateway) -> Option<String> {
        let rules = gw.rules.as_ref()?;
        if self.outcome.matched.is_empty() {
            return None;
        }
        let names: Vec<&str> = self
            .outcome
            .matched
            .iter()
            .map(|m| rules.routes()[m.route].name.as_str())
            .collect();
        Some(names.join(","))
    }

    /// `[{name, why}]` for `/v1/route`.
    pub fn matched_json(&self, gw: &Gateway) -> Vec<Value> {
        let Some(rules) = gw.rules.as_ref() else {
            return Vec::new();
        };
        self.outcome
            .matched
            .iter()
            .map(|Matched { route, why }| {
                serde_json::json!({"name": rules.routes()[*route].name, "why": why})
            })
            .collect()
    }
}

/// Narrows the pool `allow` (catalog order; `None`: every model) to the models `mask`
/// keeps; the narrowed pool.
fn narrow<'a>(allow: &'a mut Option<Vec<bool>>, mask: &[bool]) -> &'a [bool] {
    let allow = allow.get_or_insert_with(|| vec![true; mask.len()]);
    for (a, m) in allow.iter_mut().zip(mask) {
        *a &= *m;
    }
    allow
}

/// Runs stage 2 on a parsed request; `None` when neither rules nor the PII guard is
/// configured. `redact` is false for `/v1/route`, which forwards nothing.
pub fn run(
    gw: &Gateway,
    req: &mut ChatRequest,
    headers: &HeaderMap,
    caller: Option<&Caller>,
    redact: bool,
) -> Result<Option<SignalTrace>, ApiError> {
    let (rules, pii) = (gw.rules.as_ref(), gw.config.pii.as_ref());
    let key_allow = caller.and_then(|c| c.allow.as_deref());
    if rules.is_none() && pii.is_none() && key_allow.is_none() {
        return Ok(None);
    }
    let mut trace = SignalTrace::default();
    if let Some(rules) = rules {
        let last_user = last_user_text(req.rest().get("messages"));
        let tags_value = headers
            .get(TAGS_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let key_tags = caller.map(|c| c.tags.as_slice()).unwrap_or_default();
        let tags: Vec<(&str, &str)> = parse_tags(tags_value)
            .chain(key_tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        let read: Vec<(&str, &str)> = rules
            .header_names()
            .iter()
            .filter_map(|n| Some((n.as_str(), headers.get(n)?.to_str().ok()?)))
            .collect();
        trace.last_user_embedding = if rules.needs_embedding() {
            rules.embed(&last_user)
        } else {
            None
        };
        let rest = req.rest();
        let signals = Signals {
            last_user: &last_user,
            all_text: &req.prompt,
            tokens: req.prompt_tokens,
            tools: non_empty(rest.get("tools")) || non_empty(rest.get("functions")),
            images: has_images(rest.get("messages")),
            json: wants_json(rest.get("response_format")),
            user: rest.get("user").and_then(Value::as_str),
            team: caller.and_then(|c| c.team.as_deref()),
            tags: &tags,
            headers: &read,
            last_user_embedding: trace.last_user_embedding.as_deref(),
        };
        trace.outcome = rules.evaluate(&signals);
        for m in &trace.outcome.matched {
            gw.metrics.route_matched(&rules.routes()[m.route].name);
        }
        if let Some(b) = &trace.outcome.block {
            let route = trace.route_names(gw);
            return Err(ApiError::Blocked {
                code: "blocked_by_route",
                status: b.status,
                message: b.message.clone(),
                route: route.and_then(|r| r.rsplit(',').next().map(str::to_string)),
            });
        }
        match trace.outcome.cascade {
            Some(false) => req.cascade = CascadeChoice::Off,
            Some(true) if req.cascade == CascadeChoice::Config => {
                req.cascade = CascadeChoice::With {
                    min_agree: None,
                    extractor: None,
                    min_confidence: None,
                }
            }
            _ => {}
        }
    }
    // The key's models narrow what the routes left.
    if let Some(a) = key_allow {
        narrow(&mut trace.outcome.allow, a);
    }
    if let Some(pii) = pii {
        let found = pii.detector.kinds_in(&req.prompt);
        if !found.is_empty() {
            let action = trace.outcome.pii.unwrap_or(pii.action);
            trace.pii = found;
            trace.pii_action = Some(action);
            for k in found.iter() {
                gw.metrics.pii_detected(k.name(), action.name());
            }
            match action {
                PiiAction::Block => {
                    return Err(ApiError::Blocked {
                        code: "pii_blocked",
                        status: 400,
                        message: format!(
                            "the request contains personal data or secrets ({}); the gateway's PII policy blocks it",
                            found.names()
                        ),
                        route: None,
                    })
                }
                PiiAction::Redact if redact => {
                    let mut r = Redactions::default();
                    redact_request(req, &pii.detector, &mut r);
                    // It was the embedding of the text before redaction.
                    trace.last_user_embedding = None;
                    if pii.restore {
                        trace.restore = Some(r);
                    }
                }
                PiiAction::Redact | PiiAction::Tag => {}
                PiiAction::Restrict => {
                    let allow = narrow(&mut trace.outcome.allow, &gw.private);
                    if !allow.iter().any(|&a| a) {
                        return Err(ApiError::Blocked {
                            code: "pii_blocked",
                            status: 403,
                            message: format!(
                                "the request contains personal data or secrets ({}), which may only go to private models, and the matched route allows none",
                                found.names()
                            ),
                            route: None,
                        });
                    }
                }
            }
        }
    }
    Ok(Some(trace))
}

/// Replaces every finding in the messages' text (forwarded) and in the router's text.
fn redact_request(
    req: &mut ChatRequest,
    detector: &routewise_signals::Detector,
    r: &mut Redactions,
) {
    let mut redact_str = |s: &mut String| {
        let f = detector.scan(s);
        if !f.is_empty() {
            *s = r.redact(s, &f);
        }
    };
    if let Some(Value::Array(msgs)) = req.rest_mut().get_mut("messages") {
        for m in msgs.iter_mut() {
            match m.get_mut("content") {
                Some(Value::String(s)) => redact_str(s),
                Some(Value::Array(parts)) => {
                    for p in parts.iter_mut() {
                        match p {
                            // A bare string part (the router reads it as text too).
                            Value::String(s) => redact_str(s),
                            _ => {
                                if let Some(Value::String(s)) = p.get_mut("text") {
                                    redact_str(s);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut prompt = std::mem::take(&mut req.prompt);
    redact_str(&mut prompt);
    req.prompt = prompt;
}

/// The text of the last `user` message (its string content, or its text parts and bare
/// string parts joined).
pub fn last_user_text(messages: Option<&Value>) -> Cow<'_, str> {
    let Some(Value::Array(msgs)) = messages else {
        return Cow::Borrowed("");
    };
    let Some(m) = msgs
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return Cow::Borrowed("");
    };
    match m.get("content") {
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(Value::Array(parts)) => Cow::Owned(
            parts
                .iter()
                .filter_map(|p| match p {
                    Value::String(s) => Some(s.as_str()),
                    _ => p.get("text").and_then(Value::as_str),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => Cow::Borrowed(""),
    }
}

fn non_empty(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        _ => false,
    }
}

/// Whether a message has an image part (`image_url`, `input_image` or `image`).
fn has_images(messages: Option<&Value>) -> bool {
    let Some(Value::Array(msgs)) = messages else {
        return false;
    };
    msgs.iter().any(|m| match m.get("content") {
        Some(Value::Array(parts)) => parts.iter().any(|p| {
            matches!(
                p.get("type").and_then(Value::as_str),
                Some("image_url" | "input_image" | "image")
            )
        }),
        _ => false,
    })
}

/// Whether `response_format` asks for JSON (`json_object` or `json_schema`).
fn wants_json(format: Option<&Value>) -> bool {
    matches!(
        format.and_then(|f| f.get("type")).and_then(Value::as_str),
        Some("json_object" | "json_schema")
    )
}

/// `team=search, env=prod, beta` as (key, value) pairs (value empty for a bare key).
pub fn parse_tags(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (t, ""),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_with_spaces_and_bare_keys() {
        let t: Vec<_> = parse_tags(" team=search ,env = prod,beta,,").collect();
        assert_eq!(t, [("team", "search"), ("env", "prod"), ("beta", "")]);
    }

    #[test]
    fn request_shapes() {
        let msgs = serde_json::json!([
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]}
        ]);
        assert_eq!(last_user_text(Some(&msgs)), "look");
        assert!(has_images(Some(&msgs)));
        assert!(wants_json(Some(
            &serde_json::json!({"type": "json_schema"})
        )));
        assert!(!wants_json(Some(&serde_json::json!({"type": "text"}))));
        assert!(non_empty(Some(&serde_json::json!([{"type": "function"}]))));
        assert!(!non_empty(Some(&serde_json::json!([]))));
    }
}
