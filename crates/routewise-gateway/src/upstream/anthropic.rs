//! The Anthropic provider: speaks the Messages API (`POST {base_url}/messages` with
//! `x-api-key` and `anthropic-version`) and translates both ways, so clients keep the
//! OpenAI chat-completions format.
//!
//! Request (OpenAI -> Anthropic, [`to_messages_body`]):
//! * `system` / `developer` messages become the top-level `system` text;
//! * `user` / `assistant` contents become content blocks (text, images from `image_url`:
//!   data URLs as base64 sources, others as URL sources); assistant `tool_calls` become
//!   `tool_use` blocks (arguments parsed from their JSON string); `tool` messages become
//!   `tool_result` blocks in a user turn; consecutive turns of one role are merged;
//! * `max_tokens` (required by Anthropic) is the request's `max_tokens` /
//!   `max_completion_tokens`, else the model's configured `max_tokens`;
//! * `stop` becomes `stop_sequences`; `temperature` (capped at 1, Anthropic's range),
//!   `top_p` and `stream` pass through; `user` becomes `metadata.user_id`;
//! * `tools` (functions) become `{name, description, input_schema}`; `tool_choice`
//!   `auto` / `required` / `none` / a named function become `auto` / `any` / `none` /
//!   `tool`; `parallel_tool_calls: false` sets `disable_parallel_tool_use`;
//! * fields Anthropic has no equivalent for (`n`, `logprobs`, `seed`, penalties,
//!   `response_format`, ...) are not sent.
//!
//! Response (Anthropic -> OpenAI, [`to_chat_completion`]): text blocks join into
//! `message.content`, `tool_use` blocks become `tool_calls` (input serialised back to a
//! JSON string), `stop_reason` maps to `finish_reason` (`end_turn` / `stop_sequence` /
//! `pause_turn` -> `stop`, `max_tokens` -> `length`, `tool_use` -> `tool_calls`, `refusal`
//! -> `content_filter`), usage maps to `prompt_tokens` (input plus cache reads and
//! writes) / `completion_tokens` / `total_tokens`. An error answer becomes OpenAI's error
//! shape with the same status and the redacted message ([`super::client_error_body`]);
//! 529 `overloaded_error`, 429, 401, 403 and 404 fall back ([`super::post_json`]). The
//! model's key is scrubbed from the bytes received before they are translated.
//!
//! Streaming ([`StreamTranslator`]): `message_start` opens the stream (role chunk),
//! `content_block_start` of a tool opens a tool call, `content_block_delta` carries text
//! or tool-argument JSON, `message_delta` carries the finish reason and output usage,
//! `message_stop` ends it (a usage chunk when the client asked for
//! `stream_options.include_usage`, then `[DONE]`); `ping` is dropped; an `error` event
//! before any output is a failed attempt (falls back), after it an error in the stream.
//! Spec: Anthropic's "Messages" and "Streaming Messages" API references.

use std::collections::{HashMap, VecDeque};

use axum::http::{HeaderName, HeaderValue};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use super::client::{Endpoint, HttpClient};
use super::redact::Redactor;
use super::{
    body_stream, client_error_body, post_json, read_body, unix_now, Answer, AttemptInfo,
    AttemptOutcome, Call, Failure, Provider, ProviderKind, UpstreamStream,
};
use crate::request::ChatRequest;

/// `anthropic-version` sent when the config names none.
pub const DEFAULT_VERSION: &str = "2023-06-01";
/// `max_tokens` sent when neither the request nor the model's config gives one.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// One Anthropic upstream.
#[derive(Debug, Clone)]
pub struct Anthropic {
    client: HttpClient,
    url: Endpoint,
    headers: Vec<(HeaderName, HeaderValue)>,
    max_tokens: u64,
    redactor: Redactor,
}

impl Anthropic {
    /// `url`: the messages endpoint; `auth`: the `x-api-key` header; `version`: the
    /// `anthropic-version` header; `max_tokens`: the default output cap; `redactor`
    /// scrubs the key from answers.
    pub fn new(
        client: HttpClient,
        url: Endpoint,
        auth: Option<(HeaderName, HeaderValue)>,
        version: HeaderValue,
        max_tokens: u64,
        redactor: Redactor,
    ) -> Self {
        let mut headers = vec![(HeaderName::from_static("anthropic-version"), version)];
        headers.extend(auth);
        Anthropic {
            client,
            url,
            headers,
            max_tokens,
            redactor,
        }
    }
}

#[async_trait::async_trait]
impl Provider for Anthropic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    async fn call(&self, call: Call<'_>, info: &mut AttemptInfo) -> Result<Answer, Failure> {
        let req = call.request;
        let body = to_messages_body(req, call.upstream_model, self.max_tokens)
            .map_err(|e| Failure::new(AttemptOutcome::Body, e))?;
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| Failure::new(AttemptOutcome::Body, format!("cannot encode body: {e}")))?;
        let deadline = tokio::time::Instant::now() + call.timeout;
        let resp = post_json(&self.client, &self.url, &self.headers, &call, bytes, info).await?;
        let status = resp.status();
        let json_type = Some(HeaderValue::from_static("application/json"));
        if !status.is_success() {
            let body = read_body(resp, deadline, call.timeout).await?;
            return Ok(Answer::Full {
                status,
                content_type: json_type,
                body: client_error_body(status, &body, call.model, &self.redactor),
            });
        }
        if !req.stream {
            let body = self
                .redactor
                .bytes(read_body(resp, deadline, call.timeout).await?);
            let v: Value = serde_json::from_slice(&body).map_err(|e| {
                Failure::new(
                    AttemptOutcome::Body,
                    format!("invalid Anthropic response: {e}"),
                )
            })?;
            let out = to_chat_completion(&v, call.id).map_err(|e| {
                Failure::new(
                    AttemptOutcome::Body,
                    format!("invalid Anthropic response: {e}"),
                )
            })?;
            return Ok(Answer::Full {
                status,
                content_type: json_type,
                body: Bytes::from(out.to_string()),
            });
        }
        let upstream = body_stream(resp);
        let mut stream = Box::pin(translate_stream(
            self.redactor.stream(Box::pin(upstream)),
            StreamTranslator::new(
                call.id,
                call.upstream_model,
                req.include_usage || req.strip_usage,
                self.redactor.clone(),
            ),
        ));
        // The first translated chunk, or a failure before any output (fall back).
        let first = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(Failure::new(
                    AttemptOutcome::Timeout,
                    format!("no stream data within {} ms", call.timeout.as_millis()),
                ))
            }
            Ok(None) => {
                return Err(Failure::new(
                    AttemptOutcome::Body,
                    "the stream ended before any data",
                ))
            }
            Ok(Some(Err(StreamFailure::Upstream(f)))) => return Err(f),
            Ok(Some(Err(StreamFailure::Broken(e)))) => {
                return Err(Failure::new(AttemptOutcome::Body, e))
            }
            Ok(Some(Ok(b))) => b,
        };
        Ok(Answer::Stream {
            status,
            content_type: Some(HeaderValue::from_static("text/event-stream")),
            first,
            rest: Box::pin(stream.map(|r| {
                r.map_err(|e| match e {
                    StreamFailure::Upstream(f) => f.detail,
                    StreamFailure::Broken(e) => e,
                })
            })),
        })
    }
}

/// Text of an OpenAI message content: a string, or the text parts of an array.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("text").and_then(Value::as_str),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Anthropic content blocks of an OpenAI user/assistant content.
fn content_blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) if !s.is_empty() => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(json!({"type": "text", "text": s})),
                Value::Object(o) => match o.get("type").and_then(Value::as_str) {
                    Some("image_url") => {
                        let url = o
                            .get("image_url")
                            .and_then(|i| i.get("url").or(Some(i)))
                            .and_then(Value::as_str)?;
                        Some(image_block(url))
                    }
                    _ => o
                        .get("text")
                        .and_then(Value::as_str)
                        .map(|t| json!({"type": "text", "text": t})),
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// An image block from an OpenAI image URL (`data:` URLs become base64 sources).
fn image_block(url: &str) -> Value {
    // Only a base64 data URL is a base64 source; anything else is passed as a URL.
    let base64 = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
        .and_then(|(meta, data)| Some((meta.strip_suffix(";base64")?, data)));
    match base64 {
        Some((media_type, data)) => {
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        None => json!({"type": "image", "source": {"type": "url", "url": url}}),
    }
}

/// Appends `blocks` as a `role` turn, merged into the previous turn of the same role.
fn push_turn(messages: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut() {
        if last["role"] == role {
            if let Some(c) = last["content"].as_array_mut() {
                c.extend(blocks);
                return;
            }
        }
    }
    messages.push(json!({"role": role, "content": blocks}));
}

/// The Messages API body for a chat request (see the module docs for the mapping).
pub fn to_messages_body(
    req: &ChatRequest,
    upstream_model: &str,
    default_max_tokens: u64,
) -> Result<Value, String> {
    let rest = req.rest();
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let empty = Vec::new();
    let msgs = rest
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        match role {
            "system" | "developer" => {
                let t = content_text(m.get("content"));
                if !t.is_empty() {
                    system.push(t);
                }
            }
            "assistant" => {
                let mut blocks = content_blocks(m.get("content"));
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for c in calls {
                        let f = &c["function"];
                        let args = f.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                        let input: Value = if args.trim().is_empty() {
                            json!({})
                        } else {
                            serde_json::from_str(args).map_err(|e| {
                                format!("messages[{i}].tool_calls: arguments are not JSON: {e}")
                            })?
                        };
                        blocks.push(json!({
                            "type": "tool_use",
                            "id": c.get("id").cloned().unwrap_or(Value::Null),
                            "name": f.get("name").cloned().unwrap_or(Value::Null),
                            "input": input,
                        }));
                    }
                }
                push_turn(&mut messages, "assistant", blocks);
            }
            "tool" | "function" => {
                let id = m.get("tool_call_id").cloned().unwrap_or(Value::Null);
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": id,
                    "content": content_text(m.get("content")),
                });
                push_turn(&mut messages, "user", vec![block]);
            }
            _ => push_turn(&mut messages, "user", content_blocks(m.get("content"))),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert(
        "max_tokens".into(),
        json!(req.max_tokens.unwrap_or(default_max_tokens)),
    );
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages));
    if req.stream {
        body.insert("stream".into(), json!(true));
    }
    if let Some(t) = rest.get("temperature").and_then(Value::as_f64) {
        body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = rest.get("top_p").filter(|v| v.is_number()) {
        body.insert("top_p".into(), p.clone());
    }
    match rest.get("stop") {
        Some(Value::String(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            body.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(u) = rest.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": u}));
    }
    if let Some(tools) = rest.get("tools").and_then(Value::as_array) {
        let out: Vec<Value> = tools
            .iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                let mut tool = Map::new();
                tool.insert("name".into(), f.get("name")?.clone());
                if let Some(d) = f.get("description") {
                    tool.insert("description".into(), d.clone());
                }
                tool.insert(
                    "input_schema".into(),
                    f.get("parameters")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                );
                Some(Value::Object(tool))
            })
            .collect();
        if !out.is_empty() {
            body.insert("tools".into(), Value::Array(out));
        }
    }
    let mut choice = match rest.get("tool_choice") {
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(Value::String(s)) if s == "auto" => Some(json!({"type": "auto"})),
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .map(|n| json!({"type": "tool", "name": n})),
        _ => None,
    };
    if rest.get("parallel_tool_calls") == Some(&Value::Bool(false)) && body.contains_key("tools") {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        c["disable_parallel_tool_use"] = json!(true);
    }
    if let Some(c) = choice {
        body.insert("tool_choice".into(), c);
    }
    Ok(Value::Object(body))
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> Option<&'static str> {
    Some(match stop_reason? {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    })
}

/// OpenAI usage from Anthropic usage (cache reads and writes count as prompt tokens).
fn usage_json(input: u64, output: u64) -> Value {
    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output})
}

fn input_tokens(usage: &Value) -> u64 {
    [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .filter_map(|k| usage.get(*k).and_then(Value::as_u64))
    .sum()
}

/// A `chat.completion` body from a Messages API response.
pub fn to_chat_completion(msg: &Value, id: &str) -> Result<Value, String> {
    let blocks = msg
        .get("content")
        .and_then(Value::as_array)
        .ok_or("no `content` array")?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => tool_calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) }});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let usage = msg.get("usage").cloned().unwrap_or(Value::Null);
    let output = usage
        .get("output_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Ok(json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": msg.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(msg.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage_json(input_tokens(&usage), output),
    }))
}

/// Why a translated stream stopped early.
#[derive(Debug)]
pub enum StreamFailure {
    /// An `error` event (overloaded, rate limited, ...): a failed attempt if no output was
    /// sent yet.
    Upstream(Failure),
    /// The byte stream broke or held invalid events.
    Broken(String),
}

/// Translates Anthropic SSE bytes into OpenAI `chat.completion.chunk` events.
#[derive(Debug)]
pub struct StreamTranslator {
    buf: Vec<u8>,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Content block index -> tool call index.
    tools: HashMap<u64, usize>,
    input_tokens: u64,
    output_tokens: u64,
    finished: bool,
    redactor: Redactor,
}

impl StreamTranslator {
    /// `redactor` cleans the message of an in-stream `error` event (it may reach the
    /// client).
    pub fn new(id: &str, model: &str, include_usage: bool, redactor: Redactor) -> Self {
        StreamTranslator {
            redactor,
            buf: Vec::new(),
            id: format!("chatcmpl-{id}"),
            model: model.to_string(),
            created: unix_now(),
            include_usage,
            tools: HashMap::new(),
            input_tokens: 0,
            output_tokens: 0,
            finished: false,
        }
    }

    /// Whether `message_stop` was seen (`[DONE]` sent).
    pub fn finished(&self) -> bool {
        self.finished
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let v = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        Bytes::from(format!("data: {v}\n\n"))
    }

    /// Feeds upstream bytes; returns the OpenAI events they complete.
    pub fn push(&mut self, bytes: &[u8], out: &mut VecDeque<Bytes>) -> Result<(), StreamFailure> {
        self.buf.extend_from_slice(bytes);
        while let Some(end) = find_event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end.0 + end.1).collect();
            let data: String = String::from_utf8_lossy(&event[..end.0])
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&data)
                .map_err(|e| StreamFailure::Broken(format!("invalid Anthropic event: {e}")))?;
            self.event(&v, out)?;
        }
        Ok(())
    }

    fn event(&mut self, v: &Value, out: &mut VecDeque<Bytes>) -> Result<(), StreamFailure> {
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let m = &v["message"];
                if let Some(model) = m.get("model").and_then(Value::as_str) {
                    self.model = model.to_string();
                }
                self.input_tokens = input_tokens(&m["usage"]);
                self.output_tokens = m["usage"]["output_tokens"].as_u64().unwrap_or(0);
                out.push_back(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            Some("content_block_start") => {
                let b = &v["content_block"];
                if b["type"] == "tool_use" {
                    let index = v["index"].as_u64().unwrap_or(0);
                    let k = self.tools.len();
                    self.tools.insert(index, k);
                    out.push_back(self.chunk(
                        json!({"tool_calls": [{"index": k, "id": b["id"], "type": "function",
                                               "function": {"name": b["name"], "arguments": ""}}]}),
                        None,
                    ));
                }
            }
            Some("content_block_delta") => {
                let d = &v["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => {
                        out.push_back(self.chunk(json!({"content": d["text"]}), None))
                    }
                    Some("input_json_delta") => {
                        let index = v["index"].as_u64().unwrap_or(0);
                        let k = self.tools.get(&index).copied().unwrap_or(0);
                        out.push_back(self.chunk(
                            json!({"tool_calls": [{"index": k, "function": {"arguments": d["partial_json"]}}]}),
                            None,
                        ));
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(n) = v["usage"]["output_tokens"].as_u64() {
                    self.output_tokens = n;
                }
                let finish = finish_reason(v["delta"]["stop_reason"].as_str());
                if finish.is_some() {
                    out.push_back(self.chunk(json!({}), finish));
                }
            }
            Some("message_stop") => {
                if self.include_usage {
                    let u = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [],
                        "usage": usage_json(self.input_tokens, self.output_tokens),
                    });
                    out.push_back(Bytes::from(format!("data: {u}\n\n")));
                }
                out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                self.finished = true;
            }
            Some("error") => {
                let kind = v["error"]["type"]
                    .as_str()
                    .filter(|k| super::is_identifier(k))
                    .unwrap_or("api_error");
                let message = v["error"]["message"].as_str().unwrap_or("upstream error");
                let message: String = message.chars().take(super::MAX_ERROR_MESSAGE).collect();
                let message = self.redactor.message(&message);
                let outcome = match kind {
                    "rate_limit_error" => AttemptOutcome::Http429,
                    "overloaded_error" | "api_error" => AttemptOutcome::Http5xx,
                    _ => AttemptOutcome::Body,
                };
                return Err(StreamFailure::Upstream(Failure::new(
                    outcome,
                    format!("{kind}: {message}"),
                )));
            }
            _ => {} // ping, content_block_stop, unknown future events
        }
        Ok(())
    }
}

/// The end of the first complete SSE event in `buf`: (its length, the separator's).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The translated stream of OpenAI events over an upstream byte stream.
pub fn translate_stream(
    upstream: UpstreamStream,
    translator: StreamTranslator,
) -> impl futures_util::Stream<Item = Result<Bytes, StreamFailure>> + Send {
    let state = (upstream, translator, VecDeque::<Bytes>::new(), false);
    futures_util::stream::unfold(state, |(mut up, mut tr, mut pending, done)| async move {
        loop {
            if let Some(b) = pending.pop_front() {
                return Some((Ok(b), (up, tr, pending, done)));
            }
            if done || tr.finished() {
                return None;
            }
            match up.next().await {
                Some(Ok(bytes)) => {
                    if let Err(e) = tr.push(&bytes, &mut pending) {
                        return Some((Err(e), (up, tr, pending, true)));
                    }
                }
                Some(Err(e)) => {
                    return Some((Err(StreamFailure::Broken(e)), (up, tr, pending, true)))
                }
                None => {
                    return Some((
                        Err(StreamFailure::Broken(
                            "the Anthropic stream ended without message_stop".into(),
                        )),
                        (up, tr, pending, true),
                    ))
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};

    fn req(v: Value) -> ChatRequest {
        crate::request::parse(&bytes::Bytes::from(v.to_string()), &HeaderMap::new(), true).unwrap()
    }

    #[test]
    fn request_translation_covers_system_tools_stop_and_tool_results() {
        let r = req(json!({
            "model": "auto",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "user", "content": "Thanks"}
            ],
            "stop": "END", "temperature": 1.5, "user": "u1", "max_completion_tokens": 99,
            "tools": [{"type": "function", "function": {"name": "weather", "description": "d",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "parallel_tool_calls": false, "n": 1, "seed": 4
        }));
        let b = to_messages_body(&r, "claude-x", 4096).unwrap();
        assert_eq!(b["model"], "claude-x");
        assert_eq!(b["max_tokens"], 99);
        assert_eq!(b["system"], "Be brief.");
        assert_eq!(b["stop_sequences"], json!(["END"]));
        assert_eq!(b["temperature"], 1.0);
        assert_eq!(b["metadata"]["user_id"], "u1");
        assert_eq!(
            b["tools"][0]["input_schema"]["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(
            b["tool_choice"],
            json!({"type": "tool", "name": "weather", "disable_parallel_tool_use": true})
        );
        assert!(b.get("n").is_none() && b.get("seed").is_none());
        let m = b["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[0]["content"][1]["source"]["type"], "base64");
        assert_eq!(m[0]["content"][1]["source"]["media_type"], "image/png");
        assert_eq!(m[1]["content"][0]["type"], "tool_use");
        assert_eq!(m[1]["content"][0]["input"]["city"], "Paris");
        // The tool result and the next user text merge into one user turn.
        assert_eq!(m[2]["content"][0]["type"], "tool_result");
        assert_eq!(m[2]["content"][0]["tool_use_id"], "call_1");
        assert_eq!(m[2]["content"][1]["text"], "Thanks");
        let no_max = req(
            json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                                "tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f"}}]}),
        );
        let b = to_messages_body(&no_max, "m", 512).unwrap();
        assert_eq!(b["max_tokens"], 512);
        assert_eq!(b["tool_choice"], json!({"type": "any"}));
        assert_eq!(b["tools"][0]["input_schema"]["type"], "object");
        let bad = req(
            json!({"model": "auto", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}),
        );
        assert!(to_messages_body(&bad, "m", 1)
            .unwrap_err()
            .contains("not JSON"));
    }

    #[test]
    fn response_translation_maps_text_tools_usage_and_stop_reasons() {
        let msg = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Calling."},
                        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 7}});
        let v = to_chat_completion(&msg, "abc").unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-abc");
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls");
        assert_eq!(c["message"]["content"], "Calling.");
        assert_eq!(c["message"]["tool_calls"][0]["function"]["name"], "weather");
        let args: Value = serde_json::from_str(
            c["message"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(args["city"], "Paris");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 15, "completion_tokens": 7, "total_tokens": 22})
        );
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("refusal", "content_filter"),
        ] {
            assert_eq!(finish_reason(Some(stop)), Some(finish));
        }
        let e = client_error_body(
            StatusCode::BAD_REQUEST,
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#,
            "claude",
            &Redactor::default(),
        );
        let e: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert_eq!(
            e["error"]["message"],
            "model `claude` answered HTTP 400: bad"
        );
    }

    fn sse(events: &[Value]) -> String {
        events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
            .collect()
    }

    fn data_of(chunks: &VecDeque<Bytes>) -> Vec<Value> {
        chunks
            .iter()
            .map(|b| {
                std::str::from_utf8(b)
                    .unwrap()
                    .trim()
                    .trim_start_matches("data: ")
                    .to_string()
            })
            .filter(|s| s != "[DONE]")
            .map(|s| serde_json::from_str(&s).unwrap())
            .collect()
    }

    #[test]
    fn stream_translation_emits_openai_chunks_even_across_split_bytes() {
        let text = sse(&[
            json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "content": [],
                   "usage": {"input_tokens": 12, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ]);
        let mut t = StreamTranslator::new("id1", "up", true, Redactor::default());
        let mut out = VecDeque::new();
        // Byte-by-byte: events split anywhere must still translate.
        for b in text.as_bytes().chunks(7) {
            t.push(b, &mut out).unwrap();
        }
        assert!(t.finished());
        assert_eq!(out.back().unwrap().as_ref(), b"data: [DONE]\n\n");
        let v = data_of(&out);
        assert_eq!(v[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(v[0]["model"], "claude-x");
        let text: String = v
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello");
        let calls: Vec<&Value> = v
            .iter()
            .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
            .collect();
        assert_eq!(calls[0][0]["id"], "toolu_1");
        let args: String = calls
            .iter()
            .filter_map(|c| c[0]["function"]["arguments"].as_str())
            .collect();
        assert_eq!(args, "{\"a\":1}");
        let finish = v
            .iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str());
        assert_eq!(finish, Some("tool_calls"));
        let usage = &v.last().unwrap()["usage"];
        assert_eq!(usage["prompt_tokens"], 12);
        assert_eq!(usage["completion_tokens"], 9);
    }

    #[test]
    fn an_error_event_is_an_upstream_failure_by_kind() {
        let mut t = StreamTranslator::new("id", "m", false, Redactor::default());
        let mut out = VecDeque::new();
        let e = t
            .push(
                sse(&[json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})])
                    .as_bytes(),
                &mut out,
            )
            .unwrap_err();
        match e {
            StreamFailure::Upstream(f) => assert_eq!(f.outcome, AttemptOutcome::Http5xx),
            other => panic!("{other:?}"),
        }
        assert!(out.is_empty());
        let mut t = StreamTranslator::new("id", "m", false, Redactor::default());
        assert!(matches!(
            t.push(b"data: {not json\n\n", &mut out),
            Err(StreamFailure::Broken(_))
        ));
    }

    #[test]
    fn only_a_base64_data_url_becomes_a_base64_source() {
        let b = image_block("data:image/png;base64,AAAA");
        assert_eq!(b["source"]["type"], "base64");
        assert_eq!(b["source"]["media_type"], "image/png");
        // Found by fuzzing: a data URL without `;base64` was sent as base64 data.
        let u = image_block("data:image/png;charset=x,AAAA");
        assert_eq!(u["source"]["type"], "url");
    }
}
