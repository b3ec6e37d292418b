//! One connection's clock: which deadline applies now, so that no client can hold a
//! connection (and its memory) without sending requests.
//!
//! * A new connection must send a complete request head within `header_timeout` (a
//!   connection that sends nothing is closed then too).
//! * Once the first byte of a request head arrives, the whole head must arrive within
//!   `header_timeout` of it (slow-header "slowloris" clients are cut).
//! * While a request is being served there is no connection deadline (the body read has
//!   its own `body_timeout`, the upstream its `request_timeout`), except for a client that
//!   stops reading: a response write that makes no progress for `idle_timeout` closes the
//!   connection (a stalled reader would otherwise hold its request slot forever).
//! * Between keep-alive requests, the connection may stay idle for `idle_timeout`.
//!
//! [`Activity`] is updated by the connection's I/O ([`TrackedIo`]: bytes read) and by the
//! service (request started / response finished); [`Activity::deadline`] is pure given
//! the clock, and a watchdog task closes the connection when it passes.
//!
//! Protocol errors: when a request head cannot be parsed (bad request line, header or
//! `Content-Length`; head or URI too long) hyper answers 400 / 431 / 414 by itself, with
//! an empty body, and closes. hyper has no hook for that answer, so [`TrackedIo`]
//! recognises it (a status line written while a request head is pending and no request
//! is being served) and writes an OpenAI-shaped JSON error with the same status instead
//! ([`protocol_error_response`]); [`Activity::protocol_error`] keeps the status for the
//! metrics.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Why the gateway closed a connection it had accepted (the metric
/// `routewise_connections_cut_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// No complete request head within `header_timeout` (silent or slowloris).
    HeaderTimeout,
    /// Idle between keep-alive requests for `idle_timeout`.
    IdleTimeout,
    /// A response write made no progress for `idle_timeout` (the client stopped reading).
    WriteStall,
    /// Serving nothing while the gateway drains for shutdown.
    Drain,
}

impl Cut {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Cut::HeaderTimeout => "header_timeout",
            Cut::IdleTimeout => "idle_timeout",
            Cut::WriteStall => "write_stall",
            Cut::Drain => "drain",
        }
    }
}

/// The connection timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// What a connection is doing, as the deadlines need it (times: ms on a monotonic clock).
#[derive(Debug)]
pub struct Activity {
    accepted_ms: u64,
    /// Requests being served.
    in_flight: AtomicU32,
    /// When the first byte of the current request head arrived (0: none pending).
    head_started_ms: AtomicU64,
    /// When the connection last became idle (0: never, still fresh).
    idle_since_ms: AtomicU64,
    /// Whether any request was served (a fresh connection is held to the header timeout).
    served: AtomicBool,
    /// The status of hyper's automatic answer to an unparsable request head (0: none).
    protocol_error: AtomicU16,
    /// Responses whose status line is still to be written (requests started minus
    /// status lines written).
    responses_owed: AtomicU32,
    /// Since when a response write has made no progress (0: writes are flowing).
    write_blocked_ms: AtomicU64,
    /// Whether the server drains (a finished request then makes the deadline earlier).
    draining: AtomicBool,
    /// Wakes the watchdog when a deadline moves earlier: a head starts, a write stalls,
    /// or a request finishes while the server drains. (Otherwise the watchdog's timer,
    /// armed for a later or equal deadline, wakes it: no wake-up per request.)
    pub changed: Notify,
}

impl Activity {
    pub fn new(now_ms: u64) -> Activity {
        Activity {
            accepted_ms: now_ms,
            in_flight: AtomicU32::new(0),
            head_started_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            protocol_error: AtomicU16::new(0),
            responses_owed: AtomicU32::new(0),
            write_blocked_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// Bytes arrived at `now_ms`: outside a request they start a request head.
    pub fn bytes_read(&self, now_ms: u64) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self
                .head_started_ms
                .compare_exchange(0, now_ms.max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// Whether a request is being served.
    pub fn serving(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// A request's head was parsed and its handling starts.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.responses_owed.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(0, Ordering::Release);
        self.served.store(true, Ordering::Release);
    }

    /// A response finished (or was dropped) at `now_ms`.
    pub fn request_finished(&self, now_ms: u64) {
        self.idle_since_ms.store(now_ms.max(1), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.draining.load(Ordering::Acquire) {
            self.changed.notify_one();
        }
    }

    /// The server started draining: from now on a finished request wakes the watchdog.
    pub fn drain_started(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether a request head is arriving, no request is being served and no response
    /// is owed (a status line written then is hyper's own answer to a head it could not
    /// parse).
    fn head_pending(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.responses_owed.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Acquire) > 0
    }

    /// A status line owed to a served request was written.
    fn response_head_written(&self) {
        let _ = self
            .responses_owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// A write could not proceed at `now_ms` (the peer is not reading).
    fn write_blocked(&self, now_ms: u64) {
        if self
            .write_blocked_ms
            .compare_exchange(0, now_ms.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// A write made progress.
    fn write_progressed(&self) {
        self.write_blocked_ms.store(0, Ordering::Release);
    }

    /// The status of the protocol error answered on this connection, if any.
    pub fn protocol_error(&self) -> Option<u16> {
        match self.protocol_error.load(Ordering::Acquire) {
            0 => None,
            s => Some(s),
        }
    }

    /// The time (ms) past which the connection is closed, and which deadline that is;
    /// `None` while a request is being served and its response writes flow.
    pub fn deadline(&self, t: Timeouts) -> Option<(u64, Cut)> {
        let idle = t.idle.as_millis() as u64;
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return match self.write_blocked_ms.load(Ordering::Acquire) {
                0 => None,
                since => Some((since.saturating_add(idle), Cut::WriteStall)),
            };
        }
        let header = t.header.as_millis() as u64;
        let fresh = !self.served.load(Ordering::Acquire);
        let head = self.head_started_ms.load(Ordering::Acquire);
        if head > 0 {
            let from_head = head.saturating_add(header);
            // A new connection's first head is due `header` after accept, however late
            // its first byte came.
            let at = if fresh {
                from_head.min(self.accepted_ms.saturating_add(header))
            } else {
                from_head
            };
            return Some((at, Cut::HeaderTimeout));
        }
        if fresh {
            return Some((self.accepted_ms.saturating_add(header), Cut::HeaderTimeout));
        }
        let idle_since = self.idle_since_ms.load(Ordering::Acquire);
        Some((idle_since.saturating_add(idle), Cut::IdleTimeout))
    }
}

/// The answer to an unparsable request head with status `status`: OpenAI's error shape,
/// `Connection: close`.
pub fn protocol_error_response(status: u16) -> Vec<u8> {
    let (reason, message) = match status {
        431 => (
            "Request Header Fields Too Large",
            "the request head is larger than the server accepts",
        ),
        414 => ("URI Too Long", "the request URI is too long"),
        _ => (
            "Bad Request",
            "the request is not valid HTTP/1.1 (request line, a header or Content-Length)",
        ),
    };
    let body =
        crate::error::error_json(message, "invalid_request_error", None, Some("invalid_http"))
            .to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The status of an HTTP/1 status line at the start of `buf` when it is a 4xx.
fn client_error_status(buf: &[u8]) -> Option<u16> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let code = std::str::from_utf8(rest.get(..3)?)
        .ok()?
        .parse::<u16>()
        .ok()?;
    (400..500).contains(&code).then_some(code)
}

/// A socket whose reads are reported to an [`Activity`], and whose protocol-error
/// answers are rewritten (see the module docs).
pub struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    clock: fn() -> u64,
    /// The rewritten answer still to write, from `.1`.
    replacement: Option<(Vec<u8>, usize)>,
    /// Whether hyper's own answer was replaced (what hyper writes after it is dropped).
    replaced: bool,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>, clock: fn() -> u64) -> Self {
        TrackedIo {
            inner,
            activity,
            clock,
            replacement: None,
            replaced: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> TrackedIo<T> {
    /// Writes what remains of the replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, at)) = &mut self.replacement {
            if *at >= bytes.len() {
                self.replacement = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Whether a write starting with `head` is hyper's answer to an unparsable head; if
    /// so the replacement is queued.
    fn intercept(&mut self, head: &[u8]) -> bool {
        if self.replaced {
            return true;
        }
        let Some(status) = client_error_status(head).filter(|_| self.activity.head_pending())
        else {
            return false;
        };
        self.activity
            .protocol_error
            .store(status, Ordering::Release);
        self.replacement = Some((protocol_error_response(status), 0));
        self.replaced = true;
        true
    }

    /// Accounts for a write of the inner socket that started with `head`.
    fn wrote(&self, head: &[u8], r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.activity.write_progressed();
                if head.starts_with(b"HTTP/1.") {
                    self.activity.response_head_written();
                }
            }
            Poll::Pending => self.activity.write_blocked((self.clock)()),
            _ => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read((self.clock)());
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.intercept(buf) {
            // hyper's bytes are taken (and dropped); ours go out on flush.
            return match this.poll_replacement(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(buf, &r);
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let first: &[u8] = bufs.iter().find(|b| !b.is_empty()).map_or(&[], |b| &b[..]);
        if this.replaced || (first.starts_with(b"HTTP/1.") && this.activity.head_pending()) {
            // Rare (a status line while a head is pending): look at it as one buffer.
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if this.intercept(&joined) {
                return match this.poll_replacement(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Ready(Ok(joined.len())),
                };
            }
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(first, &r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_millis(10_000),
        idle: Duration::from_millis(60_000),
    };

    #[test]
    fn a_silent_new_connection_gets_the_header_timeout() {
        let a = Activity::new(1_000);
        assert_eq!(a.deadline(T), Some((11_000, Cut::HeaderTimeout)));
    }

    #[test]
    fn a_slow_head_is_cut_from_its_first_byte_and_bytes_do_not_extend_it() {
        let a = Activity::new(1_000);
        // A keep-alive connection after its first request.
        a.request_started();
        a.request_finished(2_000);
        a.bytes_read(5_000);
        a.bytes_read(9_000);
        assert_eq!(a.deadline(T), Some((15_000, Cut::HeaderTimeout)));
    }

    #[test]
    fn serving_has_no_deadline_then_idle_keep_alive_gets_the_idle_timeout() {
        let a = Activity::new(0);
        a.bytes_read(100);
        a.request_started();
        a.bytes_read(200); // body bytes: not a new head
        assert_eq!(a.deadline(T), None);
        a.request_finished(300);
        assert_eq!(a.deadline(T), Some((60_300, Cut::IdleTimeout)));
        a.bytes_read(40_000); // the next request's head
        assert_eq!(a.deadline(T), Some((50_000, Cut::HeaderTimeout)));
    }

    #[test]
    fn only_a_4xx_status_line_is_a_protocol_error_answer() {
        assert_eq!(
            client_error_status(b"HTTP/1.1 400 Bad Request\r\n"),
            Some(400)
        );
        assert_eq!(
            client_error_status(b"HTTP/1.1 431 Request Header"),
            Some(431)
        );
        assert_eq!(client_error_status(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(client_error_status(b"data: HTTP/1.1 400"), None);
        let r = String::from_utf8(protocol_error_response(400)).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_http");
    }

    #[test]
    fn a_head_is_pending_only_between_requests() {
        let a = Activity::new(0);
        assert!(!a.head_pending());
        a.bytes_read(10);
        assert!(a.head_pending());
        a.request_started();
        assert!(!a.head_pending());
        a.request_finished(20);
        assert!(!a.head_pending());
    }

    #[test]
    fn regression_a_late_first_byte_does_not_extend_a_new_connection() {
        // Review finding: a byte just before the accept deadline restarted the clock.
        let a = Activity::new(1_000);
        a.bytes_read(10_900);
        assert_eq!(a.deadline(T), Some((11_000, Cut::HeaderTimeout)));
    }

    #[test]
    fn a_pipelined_head_does_not_make_a_served_response_look_like_a_protocol_error() {
        let a = Activity::new(0);
        a.bytes_read(1);
        a.request_started();
        a.request_finished(2); // the body is handed over before its bytes are written
        a.bytes_read(3); // the next (pipelined) head arrives
        assert!(
            !a.head_pending(),
            "the status line of the served response is owed"
        );
        a.response_head_written();
        assert!(a.head_pending());
    }

    #[tokio::test]
    async fn regression_a_client_that_stops_reading_is_cut_after_the_idle_timeout() {
        use tokio::io::AsyncWriteExt;
        let (server, _client) = tokio::io::duplex(64);
        let a = Arc::new(Activity::new(0));
        let mut io = TrackedIo::new(server, Arc::clone(&a), || 5_000);
        a.request_started();
        assert_eq!(a.deadline(T), None);
        // The peer never reads: the 64-byte pipe fills and the write stalls.
        let big = vec![b'x'; 1024];
        let r = tokio::time::timeout(Duration::from_millis(50), io.write_all(&big)).await;
        assert!(r.is_err(), "the write must stall");
        assert_eq!(a.deadline(T), Some((65_000, Cut::WriteStall)));
    }

    #[tokio::test]
    async fn a_finished_request_wakes_the_watchdog_only_while_draining() {
        let ready = |a: &Activity| {
            let n = a.changed.notified();
            futures_util::FutureExt::now_or_never(n).is_some()
        };
        let a = Activity::new(0);
        a.request_started();
        a.request_finished(10);
        // the deadline moved later: the watchdog's timer suffices, no wake-up per request
        assert!(!ready(&a));
        a.drain_started();
        a.request_started();
        a.request_finished(20);
        // draining: the deadline moves earlier (the drain's), so the watchdog must look now
        assert!(ready(&a));
    }
}
