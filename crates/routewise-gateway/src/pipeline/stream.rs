//! Stage 5 for streams: the upstream's chunks are piped to the client one by one. Once
//! the first chunk is sent there is no fallback: an upstream error or a stall longer than
//! `request_timeout_ms` ends the stream with an SSE error event
//! (`data: {"error": {...}}`). A client that goes away drops the body, which drops the
//! upstream response and closes its connection. How the stream ended ([`End`]) goes to the
//! decision log; a failed end counts against the model's breaker; a complete one is
//! recorded for feedback. Usage (for the realised cost) is read from the chunks when the
//! client asked for it (`stream_options.include_usage`), or when the gateway did, for an
//! API key's spend (`strip_usage`). Under `pii: {restore: true}`, or to strip that usage,
//! the bytes pass through [`super::restore::SseRestore`] on their way out.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::error::error_json;
use crate::models::ModelId;
use crate::pipeline::cascade;
use crate::pipeline::context::RequestContext;
use crate::pipeline::decision_log::{self, End};
use crate::pipeline::record;
use crate::pipeline::restore::SseRestore;
use crate::state::ShutdownPhase;
use crate::upstream::UpstreamStream;
use tokio::sync::watch;

/// The response body piping `first` then `rest` from model `m`.
pub fn pipe(ctx: RequestContext, m: ModelId, first: Bytes, rest: UpstreamStream) -> Response {
    let gw = &*ctx.state;
    let st = StreamState {
        first: Some(first),
        rest,
        shutdown: gw.shutdown.subscribe(),
        idle: Duration::from_millis(gw.config.limits.request_timeout_ms),
        scan_usage: ctx.request.include_usage || ctx.request.strip_usage,
        usage: None,
        // A streamed answer the response cache will store: its bytes, bounded.
        capture: ctx
            .cache
            .as_ref()
            .filter(|p| p.stores() && ctx.routed.reason != super::route::Reason::Cached)
            .map(|_| Vec::new()),
        restore: {
            let restore = ctx
                .signals
                .as_ref()
                .and_then(|s| s.restore.as_ref())
                .filter(|r| !r.is_empty());
            (restore.is_some() || ctx.request.strip_usage).then(|| {
                SseRestore::new(
                    restore.cloned().unwrap_or_default(),
                    ctx.request.strip_usage,
                )
            })
        },
        model: m,
        ctx: Some(ctx),
        done: false,
    };
    Response::new(Body::from_stream(futures_util::stream::unfold(
        st, next_chunk,
    )))
}

/// The state of a piped stream; logs the decision when it ends or is dropped.
struct StreamState {
    first: Option<Bytes>,
    rest: UpstreamStream,
    shutdown: watch::Receiver<ShutdownPhase>,
    idle: Duration,
    scan_usage: bool,
    usage: Option<(u64, u64)>,
    /// The stream's bytes so far, while the response cache may store them (dropped past
    /// [`super::cache::MAX_STORED_BYTES`]).
    capture: Option<Vec<u8>>,
    /// Puts redacted values back, when the request was redacted with `restore: true`.
    restore: Option<SseRestore>,
    model: ModelId,
    ctx: Option<RequestContext>,
    done: bool,
}

impl StreamState {
    fn seen(&mut self, b: &Bytes) {
        if let Some(c) = &mut self.capture {
            if c.len() + b.len() > super::cache::MAX_STORED_BYTES {
                self.capture = None;
            } else {
                c.extend_from_slice(b);
            }
        }
        if self.scan_usage {
            if let Some(u) = scan_stream_usage(b) {
                self.usage = Some(u);
            }
        }
    }

    /// The bytes to send for `b`, as the client is to see them (empty while a restored
    /// stream holds them back).
    fn outgoing(&mut self, b: Bytes) -> Bytes {
        match &mut self.restore {
            Some(r) => Bytes::from(r.feed(&b)),
            None => b,
        }
    }

    /// The last bytes to send: what a restored stream still holds, then `end`.
    fn last(&mut self, end: &[u8]) -> Bytes {
        let mut out = self
            .restore
            .as_mut()
            .map(SseRestore::finish)
            .unwrap_or_default();
        out.extend_from_slice(end);
        Bytes::from(out)
    }

    fn finish(&mut self, end: End) {
        let Some(mut ctx) = self.ctx.take() else {
            return;
        };
        let gw = &*ctx.state;
        let cost = if ctx.routed.reason == super::route::Reason::Cached {
            Some(0.0) // replayed from the response cache: no model was called
        } else if cascade::answered_by_tier(&ctx, self.model) {
            None // a replayed tier answer: counted with the tier calls
        } else {
            self.usage
                .map(|(p, c)| gw.upstreams.get(self.model).cost(p, c))
        };
        if let Some(c) = cost {
            gw.metrics.cost(self.model.index(), c);
        }
        if let Some(h) = ctx.hold.take() {
            h.settle(cost);
        }
        let cost = cascade::total_cost(&ctx, cost);
        if end.upstream_failed() {
            // A replayed answer (no call of its own, no slot): the model alone.
            gw.record_failure(self.model, ctx.slot.as_ref().map(|s| s.deployment));
        }
        if let (End::Complete, Some(slot)) = (end, &ctx.slot) {
            slot.complete(self.usage.map(|(_, c)| c));
        }
        // The deployment's slot frees now, not when the client is done with the body.
        ctx.slot = None;
        let usage = self
            .usage
            .filter(|_| ctx.routed.reason != super::route::Reason::Cached);
        decision_log::emit(&ctx, Some(self.model), 200, cost, usage, end);
        if end == End::Complete {
            super::affinity::answered(&ctx, self.model);
            record::record_in_background(&ctx, self.model, cost);
            if let (Some(sse), Some(mut probe)) = (self.capture.take(), ctx.cache.clone()) {
                if let Some(body) = super::cache::assemble_stream(&sse) {
                    super::cache::store(
                        &ctx.state,
                        &mut probe,
                        super::cache::Cached {
                            model: self.model,
                            content_type: Some(axum::http::HeaderValue::from_static(
                                "application/json",
                            )),
                            body: Bytes::from(body),
                        },
                    );
                }
            }
        }
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        self.finish(End::ClientDisconnected);
    }
}

/// An SSE event carrying an OpenAI-shaped error.
fn error_event(message: &str) -> Bytes {
    let v = error_json(
        message,
        "upstream_error",
        None,
        Some("upstream_stream_error"),
    );
    Bytes::from(format!("data: {v}\n\n"))
}

async fn next_chunk(mut st: StreamState) -> Option<(Result<Bytes, Infallible>, StreamState)> {
    loop {
        if st.done {
            return None;
        }
        if let Some(b) = st.first.take() {
            st.seen(&b);
            let b = st.outgoing(b);
            if b.is_empty() {
                continue;
            }
            return Some((Ok(b), st));
        }
        let next = tokio::select! {
            n = tokio::time::timeout(st.idle, st.rest.next()) => Some(n),
            _ = st.shutdown.wait_for(|p| *p == ShutdownPhase::Aborting) => None,
        };
        let Some(next) = next else {
            st.done = true;
            st.finish(End::Shutdown);
            let b = st.last(&error_event("the gateway is shutting down"));
            return Some((Ok(b), st));
        };
        return match next {
            Ok(Some(Ok(b))) => {
                st.seen(&b);
                let b = st.outgoing(b);
                if b.is_empty() {
                    continue;
                }
                Some((Ok(b), st))
            }
            Ok(None) => {
                st.done = true;
                st.finish(End::Complete);
                let b = st.last(b"");
                if b.is_empty() {
                    return None;
                }
                Some((Ok(b), st))
            }
            Ok(Some(Err(e))) => {
                st.done = true;
                st.finish(End::StreamError);
                let b = st.last(&error_event(&format!("the upstream stream broke: {e}")));
                Some((Ok(b), st))
            }
            Err(_) => {
                st.done = true;
                st.finish(End::StreamTimeout);
                let msg = format!("the upstream stream stalled for {} ms", st.idle.as_millis());
                let b = st.last(&error_event(&msg));
                Some((Ok(b), st))
            }
        };
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// `(prompt_tokens, completion_tokens)` of an OpenAI body's `usage`.
pub fn parse_usage(json: &[u8]) -> Option<(u64, u64)> {
    let u = serde_json::from_slice::<UsageOnly>(json).ok()?.usage?;
    Some((
        u.prompt_tokens.unwrap_or(0),
        u.completion_tokens.unwrap_or(0),
    ))
}

/// Finds a `usage` object in SSE data lines of `chunk`.
fn scan_stream_usage(chunk: &[u8]) -> Option<(u64, u64)> {
    const NEEDLE: &[u8] = b"\"usage\"";
    if !chunk.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
        return None;
    }
    chunk
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .filter_map(|data| parse_usage(data.trim_ascii()))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_usage_in_sse_chunks() {
        let chunk = b"data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
        assert_eq!(scan_stream_usage(chunk), Some((3, 4)));
        assert_eq!(scan_stream_usage(b"data: {\"choices\":[]}\n\n"), None);
        assert_eq!(
            parse_usage(br#"{"id":"x","usage":{"prompt_tokens":1}}"#),
            Some((1, 0))
        );
    }

    #[test]
    fn error_event_is_sse_with_openai_error_shape() {
        let e = error_event("boom");
        let s = std::str::from_utf8(&e).unwrap_or("");
        assert!(s.starts_with("data: {") && s.ends_with("}\n\n"));
        let v: serde_json::Value = serde_json::from_str(&s[6..]).unwrap_or_default();
        assert_eq!(v["error"]["message"], "boom");
        assert_eq!(v["error"]["type"], "upstream_error");
    }
}
