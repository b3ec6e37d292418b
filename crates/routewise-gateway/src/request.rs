//! Parsing a chat-completions body once: the fields routewise needs are checked and taken
//! out, everything else stays in a JSON map that is forwarded untouched.
//!
//! Checked: `model` (string), `messages` (non-empty array of objects with a string `role`
//! and a `content` that is a string, an array of parts, or null), `stream` (bool),
//! `max_tokens` / `max_completion_tokens` (positive integers), `n` (1 to [`MAX_N`]) and the routewise
//! preference (`{"routewise": {"lambda": x}}` or `{"routewise": {"budget_usd": x}}`, or
//! the `x-routewise-lambda` / `x-routewise-budget-usd` headers), parsed by
//! `routewise_router::Policy` like the config's, and the cascade switch
//! (`{"routewise": {"cascade": false}}`, or `true`, or `{"min_agree": 1, "extractor":
//! "number", "min_confidence": 0.9}` to override the configured cascade), and the cache switch (`{"routewise":
//! {"cache": false}}`), the latency and energy weights (`{"routewise": {"mu": x, "nu":
//! y}}`, or the `x-routewise-mu` / `x-routewise-nu` headers, the body's winning: finite
//! numbers >= 0), and the
//! latency objective (`x-routewise-slo-ms`, a positive number of milliseconds). The `routewise` key is stripped before
//! forwarding. Every problem is a 400 naming the offending parameter.
//!
//! Forwarding: when routewise changes nothing but `model` (no `routewise` key, no key
//! given twice), the upstream gets the client's own bytes with the routed model spliced
//! over the `model` value, found in the same parsing pass. Nothing is re-encoded, so
//! numbers keep their exact spelling (an integer beyond 64 bits, `1.10`), key order and
//! spacing stay the client's, and a long conversation is copied, not serialised
//! again (`cargo bench -p routewise-gateway --bench body`). Otherwise the fields are
//! encoded from the parsed map.
//!
//! Prompt size is estimated as chars / 4 of the message text (the rule the data uses).

use std::fmt;
use std::ops::Range;

use axum::http::HeaderMap;
use bytes::Bytes;
use routewise_router::extract::Extractor;
use routewise_router::Policy;
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The most completions (`n`) one request may ask for (OpenAI's own limit).
pub const MAX_N: u64 = 128;

/// Header giving a per-request lambda.
pub const LAMBDA_HEADER: &str = "x-routewise-lambda";
/// Header giving a per-request budget in USD.
pub const BUDGET_HEADER: &str = "x-routewise-budget-usd";
/// Header giving the request's latency objective in milliseconds: deployments expected to
/// take longer to the first token are passed over.
pub const SLO_HEADER: &str = "x-routewise-slo-ms";
/// Header giving the request's utility per second of expected latency.
pub const MU_HEADER: &str = "x-routewise-mu";
/// Header giving the request's utility per watt-hour of expected energy.
pub const NU_HEADER: &str = "x-routewise-nu";

/// A validated chat-completions request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The requested model (`auto`, `routewise`, or a configured name).
    pub model: String,
    pub stream: bool,
    /// Whether the client asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Whether the gateway asked the upstream for usage the client did not ask for (to
    /// settle a key's spend), to be removed from what the client gets.
    pub strip_usage: bool,
    /// The per-request preference, if any.
    pub preference: Option<Policy>,
    /// What the request says about the configured cascade.
    pub cascade: CascadeChoice,
    /// False when the request opts out of the response cache (`"routewise": {"cache":
    /// false}`).
    pub cache: bool,
    /// Estimated prompt tokens (chars / 4 of message text).
    pub prompt_tokens: u64,
    /// `max_tokens` or `max_completion_tokens`, if given.
    pub max_tokens: Option<u64>,
    /// The time-to-first-token objective (`x-routewise-slo-ms`), if given.
    pub slo_ms: Option<u64>,
    /// Utility per second of expected latency (`routewise.mu` or `x-routewise-mu`).
    pub mu: Option<f64>,
    /// Utility per watt-hour of expected energy (`routewise.nu` or `x-routewise-nu`).
    pub nu: Option<f64>,
    /// The body's size as received: a bound on its input tokens (a token spans at least
    /// one byte), images and tool definitions included.
    pub body_bytes: u64,
    /// The message text the router sees (contents joined by newlines).
    pub prompt: String,
    /// Every other field, forwarded as is (messages included). Changing it goes through
    /// [`ChatRequest::rest_mut`], which makes forwarding encode the map.
    rest: Map<String, Value>,
    /// The client's bytes, while they may be forwarded with only `model` spliced.
    original: Option<Original>,
}

/// The client's body and the byte range of its top-level `model` value (the JSON string
/// token, quotes included).
#[derive(Debug, Clone)]
struct Original {
    bytes: Bytes,
    model: Range<usize>,
}

impl ChatRequest {
    /// Tokens the request needs in a model's context window.
    pub fn needed_tokens(&self) -> u64 {
        self.prompt_tokens
            .saturating_add(self.max_tokens.unwrap_or(0))
    }

    /// Whether the request asks the router to choose.
    pub fn is_auto(&self) -> bool {
        is_auto(&self.model)
    }

    /// Every field but `model` and `routewise`, as parsed.
    pub fn rest(&self) -> &Map<String, Value> {
        &self.rest
    }

    /// The fields, to change what is forwarded; the body is then encoded from them.
    pub fn rest_mut(&mut self) -> &mut Map<String, Value> {
        self.original = None;
        &mut self.rest
    }

    /// A non-streaming copy (for calls whose answer is read whole: cascade tiers, shadow
    /// executions).
    pub fn non_streaming(&self) -> ChatRequest {
        let mut r = self.clone();
        r.stream = false;
        r.include_usage = false;
        r.strip_usage = false;
        r.rest_mut().remove("stream");
        r.rest_mut().remove("stream_options");
        r
    }

    /// Whether the client asked for token log-probabilities (`"logprobs": true`).
    pub fn asks_logprobs(&self) -> bool {
        self.rest.get("logprobs").and_then(Value::as_bool) == Some(true)
    }

    /// A copy that asks the upstream for token log-probabilities (a cascade tier read for
    /// its confidence).
    pub fn with_logprobs(mut self) -> ChatRequest {
        if !self.asks_logprobs() {
            self.rest_mut().insert("logprobs".into(), Value::Bool(true));
        }
        self
    }

    /// Whether the upstream body is the client's bytes with `model` spliced (else it is
    /// encoded from the parsed fields).
    pub fn forwards_original_bytes(&self) -> bool {
        self.original.is_some()
    }

    /// The body sent upstream: the client's fields with `model` replaced.
    pub fn upstream_body(&self, upstream_model: &str) -> Result<Vec<u8>, serde_json::Error> {
        if let Some(o) = &self.original {
            let (head, tail) = (&o.bytes[..o.model.start], &o.bytes[o.model.end..]);
            let mut out = Vec::with_capacity(o.bytes.len() + upstream_model.len() + 8);
            out.extend_from_slice(head);
            serde_json::to_writer(&mut out, upstream_model)?;
            out.extend_from_slice(tail);
            return Ok(out);
        }
        #[derive(Serialize)]
        struct Outgoing<'a> {
            model: &'a str,
            #[serde(flatten)]
            rest: &'a Map<String, Value>,
        }
        serde_json::to_vec(&Outgoing {
            model: upstream_model,
            rest: &self.rest,
        })
    }
}

/// What a request says about the cascade (`"routewise": {"cascade": ...}`).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum CascadeChoice {
    /// Nothing: the configured cascade, if any.
    #[default]
    Config,
    /// `false`: no cascade for this request.
    Off,
    /// `true` or an object: the configured cascade, with these overrides.
    With {
        min_agree: Option<usize>,
        extractor: Option<Extractor>,
        min_confidence: Option<f64>,
    },
}

/// `auto` and `routewise` ask the router to choose.
pub fn is_auto(model: &str) -> bool {
    model == "auto" || model == "routewise"
}

/// Parses and validates a chat body. `require_model` is false for `/v1/route`, where a
/// missing model means `auto`.
pub fn parse(
    body: &Bytes,
    headers: &HeaderMap,
    require_model: bool,
) -> Result<ChatRequest, ApiError> {
    let top = TopLevel::parse(body)?;
    let mut rest = top.fields;
    let model_span = match top.model {
        Some(ModelToken::Once(span)) if !top.duplicate_key => Some(span),
        _ => None,
    };
    let model = match rest.remove("model") {
        Some(Value::String(s)) if !s.is_empty() => s,
        None | Some(Value::Null) if !require_model => "auto".to_string(),
        None => {
            return Err(ApiError::bad_request(
                "missing required parameter: `model`",
                Some("model"),
            ))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "`model` must be a non-empty string",
                Some("model"),
            ))
        }
    };
    let (prompt, prompt_chars) = messages_text(rest.get("messages"))?;
    let stream = match rest.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad_request(
                "`stream` must be a boolean",
                Some("stream"),
            ))
        }
    };
    let include_usage = match rest.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "`stream_options.include_usage` must be a boolean",
                    Some("stream_options.include_usage"),
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::bad_request(
                "`stream_options` must be an object",
                Some("stream_options"),
            ))
        }
    };
    let mut max_tokens = None;
    for key in ["max_tokens", "max_completion_tokens"] {
        match rest.get(key) {
            None | Some(Value::Null) => {}
            // At least 1, as OpenAI requires (Anthropic refuses 0 too).
            Some(v) => match v.as_u64().filter(|&n| n >= 1) {
                Some(n) => max_tokens = Some(max_tokens.map_or(n, |m: u64| m.max(n))),
                None => {
                    return Err(ApiError::bad_request(
                        format!("`{key}` must be a positive integer"),
                        Some(key),
                    ))
                }
            },
        }
    }
    // `n` completions: an integer in [1, MAX_N], as OpenAI takes (budgets reserve for each).
    match rest.get("n") {
        None | Some(Value::Null) => {}
        Some(v) => {
            if !v.as_u64().is_some_and(|n| (1..=MAX_N).contains(&n)) {
                return Err(ApiError::bad_request(
                    format!("`n` must be an integer from 1 to {MAX_N}"),
                    Some("n"),
                ));
            }
        }
    }
    let stripped = rest.contains_key("routewise");
    let mut routewise = rest.remove("routewise");
    // `"routewise": {"cache": false}`: neither read nor fill the response cache. An object
    // left empty by taking `cache` out says nothing more (`{}` itself stays an error).
    let mut cache = true;
    let (mut mu, mut nu) = (
        weight_header(headers, MU_HEADER)?,
        weight_header(headers, NU_HEADER)?,
    );
    if let Some(Value::Object(o)) = &mut routewise {
        let before = o.len();
        for (key, slot) in [("mu", &mut mu), ("nu", &mut nu)] {
            if let Some(v) = o.remove(key) {
                *slot = Some(weight(&v).ok_or_else(|| {
                    ApiError::bad_request(
                        format!("`routewise.{key}` must be a finite number >= 0"),
                        Some(&format!("routewise.{key}")),
                    )
                })?);
            }
        }
        if o.is_empty() && o.len() < before {
            routewise = None;
        }
    }
    if let Some(Value::Object(o)) = &mut routewise {
        if let Some(v) = o.remove("cache") {
            match v {
                Value::Null => {}
                Value::Bool(b) => cache = b,
                _ => {
                    return Err(ApiError::bad_request(
                        "`routewise.cache` must be a boolean",
                        Some("routewise.cache"),
                    ))
                }
            }
            if o.is_empty() {
                routewise = None;
            }
        }
    }
    let (preference, cascade) = match routewise {
        None | Some(Value::Null) => (header_preference(headers)?, CascadeChoice::Config),
        Some(Value::Object(mut o)) if o.contains_key("cascade") => {
            let cascade = cascade_choice(o.remove("cascade").unwrap_or(Value::Null))?;
            let preference = if o.is_empty() {
                header_preference(headers)?
            } else {
                Some(body_preference(&Value::Object(o))?)
            };
            (preference, cascade)
        }
        Some(v) => (Some(body_preference(&v)?), CascadeChoice::Config),
    };
    Ok(ChatRequest {
        model,
        stream,
        include_usage,
        strip_usage: false,
        preference,
        cascade,
        cache,
        prompt_tokens: (prompt_chars as u64).div_ceil(4).max(1),
        max_tokens,
        body_bytes: body.len() as u64,
        slo_ms: slo_header(headers)?,
        mu,
        nu,
        prompt,
        rest,
        original: match model_span {
            Some(model) if !stripped => Some(Original {
                bytes: body.clone(),
                model,
            }),
            _ => None,
        },
    })
}

/// Where the top-level `model` sits in the body.
enum ModelToken {
    /// Given once, as a string: the token's byte range.
    Once(Range<usize>),
    /// Given more than once, or not a string: the body is encoded, not spliced.
    Other,
}

/// The body's top-level object, parsed in one pass: every field as a JSON value, and the
/// byte range of the `model` value.
struct TopLevel {
    fields: Map<String, Value>,
    model: Option<ModelToken>,
    /// A key given twice: routewise reads the last copy, an upstream may read the first
    /// or refuse the body, so such a body is encoded (one copy of each key), not spliced.
    duplicate_key: bool,
}

impl TopLevel {
    fn parse(body: &[u8]) -> Result<TopLevel, ApiError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let top = de
            .deserialize_any(TopVisitor { body })
            .and_then(|top| de.end().map(|()| top));
        match top {
            Ok(Some(top)) => Ok(top),
            Ok(None) => Err(ApiError::bad_request(
                "the body must be a JSON object",
                None,
            )),
            Err(e) => Err(ApiError::bad_request(
                format!("the body is not valid JSON: {e}"),
                None,
            )),
        }
    }
}

/// Builds a [`TopLevel`] from an object, or `None` from any other JSON value.
struct TopVisitor<'b> {
    body: &'b [u8],
}

impl TopVisitor<'_> {
    /// Where `token`, a slice the parser borrowed from the body, sits in the body
    /// (checked against the body's bytes).
    fn span_of(&self, token: &str) -> Option<Range<usize>> {
        let start = (token.as_ptr() as usize).checked_sub(self.body.as_ptr() as usize)?;
        let span = start..start.checked_add(token.len())?;
        (self.body.get(span.clone()) == Some(token.as_bytes())).then_some(span)
    }
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = Option<TopLevel>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Map::new();
        let mut model = None;
        let mut duplicate_key = false;
        while let Some(key) = map.next_key::<String>()? {
            let value = if key == "model" {
                let raw: &'de RawValue = map.next_value()?;
                let value: Value =
                    serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
                model = Some(match (&model, &value, self.span_of(raw.get())) {
                    (None, Value::String(_), Some(span)) => ModelToken::Once(span),
                    _ => ModelToken::Other,
                });
                value
            } else {
                map.next_value()?
            };
            duplicate_key |= fields.insert(key, value).is_some();
        }
        Ok(Some(TopLevel {
            fields,
            model,
            duplicate_key,
        }))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Checks `messages` and returns the text the router sees and its length in chars.
fn messages_text(messages: Option<&Value>) -> Result<(String, usize), ApiError> {
    let msgs = match messages {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "missing required parameter: `messages`",
                Some("messages"),
            ))
        }
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(ApiError::bad_request(
                "`messages` must be an array of message objects",
                Some("messages"),
            ))
        }
    };
    if msgs.is_empty() {
        return Err(ApiError::bad_request(
            "`messages` must contain at least one message",
            Some("messages"),
        ));
    }
    let mut text = String::new();
    let mut chars = 0usize;
    for (i, m) in msgs.iter().enumerate() {
        let Value::Object(obj) = m else {
            return Err(ApiError::bad_request(
                format!("`messages[{i}]` must be an object"),
                Some(&format!("messages[{i}]")),
            ));
        };
        match obj.get("role") {
            Some(Value::String(_)) => {}
            _ => {
                return Err(ApiError::bad_request(
                    format!("`messages[{i}].role` must be a string"),
                    Some(&format!("messages[{i}].role")),
                ))
            }
        }
        let mut push = |s: &str| {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(s);
            chars += s.chars().count();
        };
        match obj.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => push(s),
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    match part {
                        Value::Object(p) => {
                            let at = format!("messages[{i}].content[{j}]");
                            match (p.get("type"), p.get("text")) {
                                (Some(Value::String(k)), Some(Value::String(t))) if k == "text" => {
                                    push(t)
                                }
                                (Some(Value::String(k)), _) if k == "text" => {
                                    return Err(ApiError::bad_request(
                                        format!("`{at}.text` must be a string"),
                                        Some(&format!("{at}.text")),
                                    ))
                                }
                                // Other part types (images, audio, files) are the
                                // upstream's to check.
                                (Some(Value::String(_)), _) => {}
                                _ => {
                                    return Err(ApiError::bad_request(
                                        format!(
                                            "`{at}.type` must be a string naming the part's type"
                                        ),
                                        Some(&format!("{at}.type")),
                                    ))
                                }
                            }
                        }
                        Value::String(s) => push(s),
                        _ => {
                            return Err(ApiError::bad_request(
                                format!(
                                    "`messages[{i}].content[{j}]` must be a content part object"
                                ),
                                Some(&format!("messages[{i}].content[{j}]")),
                            ))
                        }
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    format!("`messages[{i}].content` must be a string, an array of parts or null"),
                    Some(&format!("messages[{i}].content")),
                ))
            }
        }
    }
    Ok((text, chars))
}

/// The body's `routewise` object as a [`Policy`] (parsed by `routewise_router::policy`);
/// errors name the offending key (`routewise.lambda`).
fn body_preference(v: &Value) -> Result<Policy, ApiError> {
    serde_path_to_error::deserialize::<_, Policy>(v).map_err(|e| {
        let at = e.path().to_string();
        let param = if at.is_empty() || at == "." {
            "routewise".to_string()
        } else {
            format!("routewise.{at}")
        };
        ApiError::bad_request(format!("`{param}`: {}", e.into_inner()), Some(&param))
    })
}

/// `routewise.cascade`: a bool or `{min_agree, extractor}`.
fn cascade_choice(v: Value) -> Result<CascadeChoice, ApiError> {
    let bad = |at: &str, msg: &str| {
        let param = format!("routewise.cascade{at}");
        ApiError::bad_request(format!("`{param}`: {msg}"), Some(&param))
    };
    match v {
        Value::Bool(false) => Ok(CascadeChoice::Off),
        Value::Bool(true) => Ok(CascadeChoice::With {
            min_agree: None,
            extractor: None,
            min_confidence: None,
        }),
        Value::Object(o) => {
            let mut min_agree = None;
            let mut extractor = None;
            let mut min_confidence = None;
            for (k, v) in o {
                match k.as_str() {
                    "min_agree" => match v.as_u64() {
                        Some(n) if n >= 1 => min_agree = Some(n as usize),
                        _ => return Err(bad(".min_agree", "must be a positive integer")),
                    },
                    "extractor" => match v.as_str().map(str::parse::<Extractor>) {
                        Some(Ok(e)) => extractor = Some(e),
                        Some(Err(e)) => return Err(bad(".extractor", &e)),
                        None => return Err(bad(".extractor", "must be a string")),
                    },
                    "min_confidence" => match v.as_f64() {
                        Some(c) => match routewise_router::cascade::check_min_confidence(c) {
                            Ok(()) => min_confidence = Some(c),
                            Err(e) => return Err(bad(".min_confidence", e)),
                        },
                        None => return Err(bad(".min_confidence", "must be a number")),
                    },
                    other => {
                        return Err(bad(
                            &format!(".{other}"),
                            "unknown field, expected min_agree, extractor or min_confidence",
                        ))
                    }
                }
            }
            Ok(CascadeChoice::With {
                min_agree,
                extractor,
                min_confidence,
            })
        }
        _ => Err(bad(
            "",
            "must be true, false or {\"min_agree\": n, \"extractor\": \"choice\"}",
        )),
    }
}

/// A latency or energy weight: a finite number >= 0.
fn weight(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite() && *x >= 0.0)
}

/// `x-routewise-mu` / `x-routewise-nu`: a weight.
fn weight_header(headers: &HeaderMap, name: &str) -> Result<Option<f64>, ApiError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    match v.to_str().ok().and_then(|t| t.trim().parse::<f64>().ok()) {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
        _ => Err(ApiError::bad_request(
            format!("header `{name}`: must be a finite number >= 0"),
            Some(name),
        )),
    }
}

/// `x-routewise-slo-ms`: a positive whole number of milliseconds.
fn slo_header(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(SLO_HEADER) else {
        return Ok(None);
    };
    match v.to_str().ok().and_then(|t| t.trim().parse::<u64>().ok()) {
        Some(ms) if ms > 0 => Ok(Some(ms)),
        _ => Err(ApiError::bad_request(
            format!("header `{SLO_HEADER}`: must be a positive whole number of milliseconds"),
            Some(SLO_HEADER),
        )),
    }
}

/// The preference headers as a [`Policy`] (each header value is the policy's amount).
fn header_preference(headers: &HeaderMap) -> Result<Option<Policy>, ApiError> {
    let get = |name: &str, key: &str| -> Result<Option<Policy>, ApiError> {
        let Some(v) = headers.get(name) else {
            return Ok(None);
        };
        let text = v.to_str().unwrap_or("");
        format!("{key}={text}")
            .parse::<Policy>()
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("header `{name}`: {e}"), Some(name)))
    };
    match (
        get(LAMBDA_HEADER, "lambda")?,
        get(BUDGET_HEADER, "budget_usd")?,
    ) {
        (None, None) => Ok(None),
        (Some(p), None) | (None, Some(p)) => Ok(Some(p)),
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            format!("give either `{LAMBDA_HEADER}` or `{BUDGET_HEADER}`, not both"),
            Some(LAMBDA_HEADER),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn p(v: Value) -> Result<ChatRequest, ApiError> {
        parse(&Bytes::from(v.to_string()), &HeaderMap::new(), true)
    }

    fn param(e: ApiError) -> String {
        e.body()["error"]["param"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn latency_and_energy_weights_and_the_slo_come_from_the_body_or_the_headers() {
        let m = json!([{"role": "user", "content": "hi"}]);
        let r = p(
            json!({"model": "auto", "messages": m, "routewise": {"mu": 0.5, "nu": 2, "lambda": 1}}),
        )
        .unwrap();
        assert_eq!((r.mu, r.nu), (Some(0.5), Some(2.0)));
        assert_eq!(r.preference, Some(Policy::Lambda(1.0)));
        // Weights alone: no policy, and the key is gone from what is forwarded.
        let r = p(json!({"model": "auto", "messages": m, "routewise": {"mu": 1}})).unwrap();
        assert_eq!((r.mu, r.preference), (Some(1.0), None));
        assert!(!r.rest().contains_key("routewise"));
        let mut h = HeaderMap::new();
        h.insert(MU_HEADER, HeaderValue::from_static("0.25"));
        h.insert(SLO_HEADER, HeaderValue::from_static("800"));
        let body = Bytes::from(json!({"model": "auto", "messages": m}).to_string());
        let r = parse(&body, &h, true).unwrap();
        assert_eq!((r.mu, r.nu, r.slo_ms), (Some(0.25), None, Some(800)));
        for (name, bad) in [(MU_HEADER, "-1"), (NU_HEADER, "inf"), (SLO_HEADER, "0")] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(bad));
            assert_eq!(param(parse(&body, &h, true).unwrap_err()), name);
        }
        assert_eq!(
            param(p(json!({"model": "a", "messages": m, "routewise": {"mu": -1}})).unwrap_err()),
            "routewise.mu"
        );
    }

    #[test]
    fn the_cascade_switch_is_parsed_beside_the_policy() {
        let m = json!([{"role": "user", "content": "hi"}]);
        let off =
            p(json!({"model": "auto", "messages": m, "routewise": {"cascade": false}})).unwrap();
        assert_eq!(off.cascade, CascadeChoice::Off);
        assert_eq!(off.preference, None);
        let with = p(json!({"model": "auto", "messages": m,
                            "routewise": {"cascade": {"min_agree": 1, "extractor": "number",
                                                      "min_confidence": 0.9}, "lambda": 2}}))
        .unwrap();
        assert_eq!(
            with.cascade,
            CascadeChoice::With {
                min_agree: Some(1),
                extractor: Some(Extractor::Number),
                min_confidence: Some(0.9),
            }
        );
        assert_eq!(with.preference, Some(Policy::Lambda(2.0)));
        assert!(with.rest().get("routewise").is_none());
        let none = p(json!({"model": "auto", "messages": m})).unwrap();
        assert_eq!(none.cascade, CascadeChoice::Config);
        for (bad, at) in [
            (json!({"cascade": 3}), "routewise.cascade"),
            (
                json!({"cascade": {"min_agree": 0}}),
                "routewise.cascade.min_agree",
            ),
            (
                json!({"cascade": {"extractor": "regex"}}),
                "routewise.cascade.extractor",
            ),
            (json!({"cascade": {"k": 1}}), "routewise.cascade.k"),
            (
                json!({"cascade": {"min_confidence": 0}}),
                "routewise.cascade.min_confidence",
            ),
            (
                json!({"cascade": {"min_confidence": "high"}}),
                "routewise.cascade.min_confidence",
            ),
        ] {
            let e = p(json!({"model": "auto", "messages": m, "routewise": bad})).unwrap_err();
            assert_eq!(param(e), at);
        }
    }

    #[test]
    fn parses_and_strips_routewise_keeping_unknown_fields() {
        let r = p(
            json!({"model": "auto", "messages": [{"role": "user", "content": "abcdefgh"}],
                         "stream": true, "routewise": {"lambda": 0.2}, "temperature": 0.1,
                         "tools": [{"type": "function"}], "max_tokens": 10}),
        )
        .unwrap();
        assert!(r.is_auto() && r.stream);
        assert_eq!(r.preference, Some(Policy::Lambda(0.2)));
        assert_eq!(r.prompt_tokens, 2);
        assert_eq!(r.needed_tokens(), 12);
        let out: Value = serde_json::from_slice(&r.upstream_body("up-1").unwrap()).unwrap();
        assert_eq!(out["model"], "up-1");
        assert!(out.get("routewise").is_none());
        assert_eq!(out["temperature"], 0.1);
        assert_eq!(out["tools"][0]["type"], "function");
        assert_eq!(out["stream"], true);
    }

    #[test]
    fn content_parts_and_headers() {
        let mut h = HeaderMap::new();
        h.insert(BUDGET_HEADER, HeaderValue::from_static("0.001"));
        let body = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]}]});
        let r = parse(&Bytes::from(body.to_string()), &h, true).unwrap();
        assert_eq!(r.prompt, "hi");
        assert_eq!(r.preference, Some(Policy::BudgetUsd(0.001)));
        h.insert(LAMBDA_HEADER, HeaderValue::from_static("1"));
        assert!(parse(&Bytes::from(body.to_string()), &h, true).is_err());
    }

    #[test]
    fn every_bad_input_names_its_parameter() {
        let m = json!([{"role": "user", "content": "x"}]);
        assert!(parse(&Bytes::from_static(b"{not json"), &HeaderMap::new(), true).is_err());
        assert!(parse(&Bytes::from_static(b"[1]"), &HeaderMap::new(), true).is_err());
        assert_eq!(param(p(json!({"messages": m})).unwrap_err()), "model");
        assert_eq!(
            param(p(json!({"model": 3, "messages": m})).unwrap_err()),
            "model"
        );
        assert_eq!(param(p(json!({"model": "a"})).unwrap_err()), "messages");
        assert_eq!(
            param(p(json!({"model": "a", "messages": []})).unwrap_err()),
            "messages"
        );
        assert_eq!(
            param(p(json!({"model": "a", "messages": "hi"})).unwrap_err()),
            "messages"
        );
        assert_eq!(
            param(p(json!({"model": "a", "messages": [1]})).unwrap_err()),
            "messages[0]"
        );
        assert_eq!(
            param(p(json!({"model": "a", "messages": [{"content": "x"}]})).unwrap_err()),
            "messages[0].role"
        );
        assert_eq!(
            param(
                p(json!({"model": "a", "messages": [{"role": "user", "content": 5}]})).unwrap_err()
            ),
            "messages[0].content"
        );
        let part = |v: Value| json!({"model": "a", "messages": [{"role": "user", "content": [v]}]});
        assert_eq!(
            param(p(part(json!({"type": "text", "text": 5}))).unwrap_err()),
            "messages[0].content[0].text"
        );
        assert_eq!(
            param(p(part(json!({"type": "text"}))).unwrap_err()),
            "messages[0].content[0].text"
        );
        assert_eq!(
            param(p(part(json!({"text": "hi"}))).unwrap_err()),
            "messages[0].content[0].type"
        );
        assert!(p(part(json!({"type": "input_audio", "input_audio": {}}))).is_ok());
        assert_eq!(
            param(p(json!({"model": "a", "messages": m, "stream": "yes"})).unwrap_err()),
            "stream"
        );
        assert_eq!(
            param(p(json!({"model": "a", "messages": m, "max_tokens": -1})).unwrap_err()),
            "max_tokens"
        );
        assert_eq!(
            param(
                p(json!({"model": "a", "messages": m, "routewise": {"lambda": -1}})).unwrap_err()
            ),
            "routewise.lambda"
        );
        assert_eq!(
            param(p(json!({"model": "a", "messages": m, "routewise": {"speed": 1}})).unwrap_err()),
            "routewise.speed"
        );
        assert_eq!(
            param(p(json!({"model": "a", "messages": m, "routewise": {}})).unwrap_err()),
            "routewise"
        );
        let r = parse(
            &Bytes::from(json!({"messages": m}).to_string()),
            &HeaderMap::new(),
            false,
        )
        .unwrap();
        assert!(r.is_auto());
    }

    #[test]
    fn the_cache_switch_is_read_beside_the_preference() {
        let m = json!([{"role": "user", "content": "hi"}]);
        let r = p(json!({"model": "a", "messages": m, "routewise": {"cache": false}})).unwrap();
        assert!(!r.cache && r.preference.is_none());
        let r = p(json!({"model": "a", "messages": m, "routewise": {"cache": true, "lambda": 2}}))
            .unwrap();
        assert!(r.cache);
        assert_eq!(r.preference, Some(Policy::Lambda(2.0)));
        assert!(p(json!({"model": "a", "messages": m})).unwrap().cache);
        let e = p(json!({"model": "a", "messages": m, "routewise": {"cache": "no"}})).unwrap_err();
        assert_eq!(param(e), "routewise.cache");
    }

    #[test]
    fn regression_a_text_part_whose_text_is_a_number_is_refused() {
        let body = json!({"model": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]});
        let e = p(body).unwrap_err();
        assert_eq!(e.status().as_u16(), 400);
        assert_eq!(param(e), "messages[0].content[0].text");
    }

    /// Regression: `n` of -1, 0, "5" or 1.5 was forwarded as given, and 1,000,000 was
    /// refused as a spent budget; it is now a 400 naming `n` unless an integer 1..=128.
    #[test]
    fn regression_n_must_be_a_small_positive_integer() {
        let m = json!([{"role": "user", "content": "hi"}]);
        for n in [
            json!(-1),
            json!(0),
            json!("5"),
            json!(1.5),
            json!(1_000_000),
            json!(129),
        ] {
            let e = p(json!({"model": "a", "messages": m, "n": n})).unwrap_err();
            assert_eq!(param(e), "n", "{n}");
        }
        for n in [json!(1), json!(128), Value::Null] {
            assert!(
                p(json!({"model": "a", "messages": m, "n": n})).is_ok(),
                "{n}"
            );
        }
    }

    #[test]
    fn regression_max_tokens_zero_is_refused() {
        // Found by fuzzing: 0 passed through, and the Anthropic provider sent max_tokens 0.
        let m = json!([{"role": "user", "content": "x"}]);
        for key in ["max_tokens", "max_completion_tokens"] {
            let e = p(json!({"model": "a", "messages": m, key: 0})).unwrap_err();
            assert_eq!(param(e), key);
        }
    }

    fn raw(body: &str) -> ChatRequest {
        parse(&Bytes::from(body.to_string()), &HeaderMap::new(), true).unwrap()
    }

    #[test]
    fn the_original_bytes_are_forwarded_with_only_the_model_spliced() {
        // Spelling serde_json would change: a 70-bit integer, `1.10`, key order, spaces.
        let body = r#"{ "seed": 1180591620717411303424, "temperature": 1.10,
            "messages": [{"role": "user", "content": "hi"}], "model" : "auto", "n": 1 }"#;
        let r = raw(body);
        assert!(r.forwards_original_bytes());
        let out = String::from_utf8(r.upstream_body("gpt-4o-mini").unwrap()).unwrap();
        assert_eq!(out, body.replace(r#""auto""#, r#""gpt-4o-mini""#));
        // The upstream name is written as a JSON string, escapes included.
        let out = r.upstream_body("a\"b\\c").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "a\"b\\c");
    }

    #[test]
    fn the_body_is_encoded_when_routewise_changes_more_than_the_model() {
        let m = r#""messages": [{"role": "user", "content": "hi"}]"#;
        // The `routewise` key is stripped.
        let r = raw(&format!(
            r#"{{"model": "auto", {m}, "routewise": {{"lambda": 1}}}}"#
        ));
        assert!(!r.forwards_original_bytes());
        let v: Value = serde_json::from_slice(&r.upstream_body("x").unwrap()).unwrap();
        assert!(v.get("routewise").is_none());
        assert_eq!(v["model"], "x");
        // `model` twice: the last one counts, as for serde_json, and one is sent.
        let r = raw(&format!(r#"{{"model": "a", {m}, "model": "auto"}}"#));
        assert!(r.is_auto() && !r.forwards_original_bytes());
        let out = String::from_utf8(r.upstream_body("x").unwrap()).unwrap();
        assert_eq!(out.matches("\"model\"").count(), 1);
        // Any key twice (routewise reads the last `messages`; an upstream might read the
        // first): encoded, one copy.
        let r = raw(&format!(
            r#"{{"model": "auto", {m}, "max_tokens": 5, "max_tokens": 9}}"#
        ));
        assert!(!r.forwards_original_bytes());
        assert_eq!(r.max_tokens, Some(9));
        let out = String::from_utf8(r.upstream_body("x").unwrap()).unwrap();
        assert_eq!(out.matches("max_tokens").count(), 1);
        assert!(out.contains("\"max_tokens\":9"), "{out}");
        // A changed field.
        let mut r = raw(&format!(r#"{{"model": "auto", {m}, "stream": true}}"#));
        assert!(r.forwards_original_bytes());
        r.rest_mut().remove("stream");
        assert!(!r.forwards_original_bytes());
        let v: Value = serde_json::from_slice(&r.upstream_body("x").unwrap()).unwrap();
        assert!(v.get("stream").is_none());
        // An escaped key is still the model key.
        let r = raw(&format!(r#"{{"mod\u0065l": "auto", {m}}}"#));
        assert!(r.is_auto() && r.forwards_original_bytes());
        let v: Value = serde_json::from_slice(&r.upstream_body("x").unwrap()).unwrap();
        assert_eq!(v["model"], "x");
    }

    #[test]
    fn bodies_that_are_not_one_json_object_are_refused() {
        for bad in [
            &b"[1]"[..],
            b"\"s\"",
            b"3",
            b"null",
            b"{} {}",
            b"{\"model\": \"a\"} x",
        ] {
            let e = parse(&Bytes::copy_from_slice(bad), &HeaderMap::new(), true).unwrap_err();
            assert_eq!(e.status().as_u16(), 400, "{}", String::from_utf8_lossy(bad));
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-z\"\\\\é ]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Splicing the model into the client's bytes sends the same JSON as encoding
        /// the parsed fields, whatever the other fields and the spacing.
        #[test]
        fn splicing_sends_the_same_json_as_encoding(
            extra in proptest::collection::btree_map("[a-z_]{1,6}", json_value(), 0..5),
            model in "[a-zA-Z0-9\"\\\\/.: -]{1,12}",
            pretty in proptest::bool::ANY,
        ) {
            let mut obj: Map<String, Value> = extra.into_iter().collect();
            // Keys routewise checks (their random values may be invalid).
            for key in ["routewise", "n", "stream"] {
                obj.remove(key);
            }
            obj.insert("model".into(), Value::from("auto"));
            obj.insert("messages".into(), json!([{"role": "user", "content": "q"}]));
            let text = if pretty {
                serde_json::to_string_pretty(&obj).unwrap()
            } else {
                serde_json::to_string(&obj).unwrap()
            };
            let r = raw(&text);
            proptest::prop_assert!(r.forwards_original_bytes());
            let spliced: Value = serde_json::from_slice(&r.upstream_body(&model).unwrap()).unwrap();
            let mut encoded = r.clone();
            encoded.rest_mut();
            let encoded: Value =
                serde_json::from_slice(&encoded.upstream_body(&model).unwrap()).unwrap();
            proptest::prop_assert_eq!(&spliced, &encoded);
            proptest::prop_assert_eq!(&spliced["model"], &Value::from(model));
        }
    }
}
