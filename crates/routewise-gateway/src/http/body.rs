//! Response bodies that carry something until they end: an admission permit, a
//! connection's "request finished" mark. A streamed answer holds it until its last chunk
//! (or until the client goes away and the body is dropped).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;

/// A response body that holds a guard until it is finished or dropped.
struct Guarded<G> {
    inner: Body,
    _guard: G,
}

impl<G: Unpin + Send + 'static> HttpBody for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps `resp`'s body so that `guard` lives until the body ends.
pub fn hold_until_body_ends<G: Unpin + Send + 'static>(resp: Response, guard: G) -> Response {
    resp.map(|b| {
        Body::new(Guarded {
            inner: b,
            _guard: guard,
        })
    })
}
