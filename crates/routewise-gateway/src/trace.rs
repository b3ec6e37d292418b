//! Request ids and W3C trace context: what ties a client's request to routewise's
//! decision log line and to the upstream's own logs.
//!
//! * `x-request-id`: the client's, when it sends one (visible ASCII, at most
//!   [`MAX_REQUEST_ID`] bytes; anything else is replaced), else the decision id.
//! * `traceparent` (W3C Trace Context, level 1: `00-{trace-id}-{parent-id}-{flags}`): the
//!   client's trace id is kept and its span becomes our parent; without a valid header a
//!   new trace starts (sampled). Every upstream attempt gets its own span id, sent
//!   upstream as the `parent-id` together with the client's `tracestate`.
//!
//! Both are forwarded on every upstream attempt, echoed on the response (`traceparent`
//! naming the gateway's span), and written to the decision log together with the
//! upstream's request id (`x-request-id`, or Anthropic's `request-id`). With the `otel`
//! cargo feature the span ids are those of the exported spans ([`crate::otel`]).
//! Spec: <https://www.w3.org/TR/trace-context/>.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// The request id header (client -> routewise -> upstream, echoed back).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C trace context.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C vendor trace state, forwarded as received.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The longest client request id kept.
pub const MAX_REQUEST_ID: usize = 200;

/// A request's ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The client's `x-request-id`, else the decision id.
    pub request_id: String,
    pub trace_id: [u8; 16],
    /// The client's span, when it sent a valid `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    /// The gateway's span for this request.
    pub span_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// Reads the client's ids from `headers`; `decision_id` is the request id when the
    /// client sent none.
    pub fn from_headers(headers: &HeaderMap, decision_id: &str) -> TraceContext {
        let request_id = headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_REQUEST_ID
                    && s.bytes().all(|b| b.is_ascii_graphic())
            })
            .unwrap_or(decision_id)
            .to_string();
        let parent = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let (trace_id, parent_id, flags, tracestate) = match parent {
            Some((t, p, f)) => (t, Some(p), f, headers.get(TRACESTATE).cloned()),
            None => (random_nonzero(), None, 1, None),
        };
        TraceContext {
            request_id,
            trace_id,
            parent_id,
            span_id: new_span_id(),
            flags,
            tracestate,
        }
    }

    /// `traceparent` naming `span` as the parent.
    pub fn traceparent(&self, span: [u8; 8]) -> HeaderValue {
        let mut v = String::with_capacity(55);
        v.push_str("00-");
        push_hex(&mut v, &self.trace_id);
        v.push('-');
        push_hex(&mut v, &span);
        v.push('-');
        push_hex(&mut v, &[self.flags]);
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The headers sent upstream with an attempt whose span is `attempt_span`.
    pub fn upstream_headers(&self, attempt_span: [u8; 8]) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = Vec::with_capacity(3);
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            h.push((REQUEST_ID, v));
        }
        h.push((TRACEPARENT, self.traceparent(attempt_span)));
        if let Some(s) = &self.tracestate {
            h.push((TRACESTATE, s.clone()));
        }
        h
    }

    /// Echoes the ids on a response.
    pub fn echo(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            headers.insert(REQUEST_ID, v);
        }
        headers.insert(TRACEPARENT, self.traceparent(self.span_id));
    }
}

/// A fresh random span id (never all zeros).
pub fn new_span_id() -> [u8; 8] {
    random_nonzero()
}

fn random_nonzero<const N: usize>() -> [u8; N]
where
    rand::distributions::Standard: rand::distributions::Distribution<[u8; N]>,
{
    loop {
        let b: [u8; N] = rand::random();
        if b.iter().any(|&x| x != 0) {
            return b;
        }
    }
}

/// Lower-case hex (a table lookup per nibble: this runs several times per request).
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses a `traceparent` value: `(trace id, parent id, flags)`, or `None` when it is not
/// valid (version `ff`, all-zero ids, wrong lengths, upper-case hex). Future versions
/// are read by their first four fields, as the spec asks.
pub fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let v = v.trim();
    let mut parts = v.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let version: [u8; 1] = unhex(version)?;
    if version[0] == 0xff || (version[0] == 0 && (parts.next().is_some() || v.len() != 55)) {
        return None;
    }
    let trace: [u8; 16] = unhex(trace)?;
    let parent: [u8; 8] = unhex(parent)?;
    let flags: [u8; 1] = unhex(flags)?;
    if trace.iter().all(|&b| b == 0) || parent.iter().all(|&b| b == 0) {
        return None;
    }
    Some((trace, parent, flags[0]))
}

/// The upstream's own request id from its response headers.
pub fn upstream_request_id(headers: &reqwest::header::HeaderMap) -> Option<String> {
    ["x-request-id", "request-id"]
        .iter()
        .find_map(|h| headers.get(*h))
        .and_then(|v| v.to_str().ok())
        .filter(|s| s.len() <= MAX_REQUEST_ID && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_and_an_invalid_one_replaced() {
        let (t, p, f) = parse_traceparent(TP).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A future version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more")
                .is_some()
        );
    }

    #[test]
    fn hex_matches_the_formatter_for_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let want: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), want);
    }

    #[test]
    fn ids_come_from_the_client_or_are_generated() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("client-req-1"));
        h.insert(TRACEPARENT, HeaderValue::from_static(TP));
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        let t = TraceContext::from_headers(&h, "decision");
        assert_eq!(t.request_id, "client-req-1");
        assert_eq!(hex(&t.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let up = t.upstream_headers([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(up[0].1, "client-req-1");
        assert_eq!(
            up[1].1,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert_eq!(up[2].1, "vendor=x");

        let mut bad = HeaderMap::new();
        bad.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        bad.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        bad.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        let g = TraceContext::from_headers(&bad, "decision");
        assert_eq!(g.request_id, "decision");
        assert!(g.parent_id.is_none() && g.tracestate.is_none());
        assert_ne!(g.trace_id, [0; 16]);
        assert!(parse_traceparent(g.traceparent(g.span_id).to_str().unwrap()).is_some());
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        assert_eq!(TraceContext::from_headers(&h, "d").request_id, "d");
    }
}
