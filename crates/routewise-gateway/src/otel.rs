//! OpenTelemetry glue for the request spans (the `otel` cargo feature; the exporter
//! itself is installed by the binary, `routewise serve`).
//!
//! The pipeline opens a `request` span per chat request and an `attempt` span per
//! upstream attempt (stage spans in between), at `debug` level so that they cost nothing
//! unless a subscriber wants them. With the feature on and an OTLP exporter installed,
//! [`link`] makes the request span a child of the client's `traceparent` and the ids
//! routewise logs and forwards ([`crate::trace::TraceContext`]) become the exported
//! span's; [`span_id`] gives an attempt span's id for the `traceparent` sent upstream.
//! Without the feature both are no-ops and the ids are generated.

use crate::trace::TraceContext;

/// Parents `span` on the client's trace context and adopts the span's ids in `trace`.
#[cfg(feature = "otel")]
pub fn link(span: &tracing::Span, trace: &mut TraceContext) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = trace.parent_id {
        let remote = SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent),
            TraceFlags::new(trace.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        trace.trace_id = sc.trace_id().to_bytes();
        trace.span_id = sc.span_id().to_bytes();
    }
}

/// Without the `otel` feature: nothing to link.
#[cfg(not(feature = "otel"))]
pub fn link(_span: &tracing::Span, _trace: &mut TraceContext) {}

/// The exported span id of `span`, if it is exported.
#[cfg(feature = "otel")]
pub fn span_id(span: &tracing::Span) -> Option<[u8; 8]> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.span_id().to_bytes())
}

/// Without the `otel` feature: spans are not exported.
#[cfg(not(feature = "otel"))]
pub fn span_id(_span: &tracing::Span) -> Option<[u8; 8]> {
    None
}
