//! The HTTP client that reaches the upstreams: hyper's pooled HTTP/1.1 client used
//! directly (keep-alive pool per host, `TCP_NODELAY`, a connect timeout, rustls with the
//! webpki roots for `https`). Every other deadline (response headers, body, stream) is the
//! attempt's own ([`super::post_json`], [`super::read_body`]).
//!
//! Why not reqwest: on the request path it re-parses the URL (with IDNA host processing)
//! for its redirect policy and for the response's URL, clones its connector and builds its
//! own header map on every request: about 10% of the gateway's CPU per request in the
//! profile of BENCHMARKS.md (section 5, run I). The endpoint here is parsed once, at
//! configuration ([`Endpoint`]).
//!
//! One pool per connection thread ([`crate::server::Threads::Shards`]): a pooled
//! connection is driven by a task of the runtime that opened it, so a request reusing a
//! connection of another thread's pool would wake that thread twice. Each thread marks
//! itself with [`enter_shard`] and uses its own pool; every other thread shares pool 0.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, Request, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// An upstream's answer: the status and headers, and a body still to be read.
pub type Response = axum::http::Response<hyper::body::Incoming>;

/// A transport error: no answer (connection refused, reset, TLS failure, ...).
pub type Error = hyper_util::client::legacy::Error;

/// A parsed upstream endpoint (`{base_url}/chat/completions`, ...).
#[derive(Debug, Clone)]
pub struct Endpoint(Uri);

impl Endpoint {
    /// The endpoint at `url` (an `http` or `https` URL).
    pub fn new(url: &reqwest::Url) -> Result<Endpoint, String> {
        url.as_str()
            .parse::<Uri>()
            .map(Endpoint)
            .map_err(|e| format!("`{url}` is not a valid request URI: {e}"))
    }
}

type Pool = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// The most connection threads that get a pool of their own (`serve --threads` is capped
/// at it): a pooled connection dies with the runtime that drives it, so threads must not
/// share pools.
pub const MAX_SHARDS: usize = 256;

/// Marks the calling thread as connection thread `shard` (1-based, at most
/// [`MAX_SHARDS`]; 0: not one), whose upstream requests use pool `shard`.
pub fn enter_shard(shard: usize) {
    SHARD.with(|s| s.set(shard));
}

/// The shared upstream client (cheap to clone): one keep-alive pool per connection
/// thread, each built on first use.
#[derive(Debug, Clone)]
pub struct HttpClient {
    pools: Arc<[OnceLock<Pool>]>,
    connect_timeout: Duration,
}

impl HttpClient {
    /// A client whose connections are established within `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> HttpClient {
        // Slots for the shared pool and MAX_SHARDS connection threads; a pool is only
        // built when its thread first uses it.
        HttpClient {
            pools: (0..=MAX_SHARDS).map(|_| OnceLock::new()).collect(),
            connect_timeout,
        }
    }

    fn pool(&self) -> &Pool {
        let i = SHARD.with(Cell::get) % self.pools.len();
        self.pools[i].get_or_init(|| build_pool(self.connect_timeout))
    }

    /// POSTs `body` (JSON) to `endpoint` with `headers`; answers when the response
    /// headers have arrived.
    pub async fn post_json<'h>(
        &self,
        endpoint: &Endpoint,
        headers: impl Iterator<Item = &'h (HeaderName, HeaderValue)>,
        body: Vec<u8>,
    ) -> Result<Response, Error> {
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = endpoint.0.clone();
        let h = req.headers_mut();
        h.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in headers {
            h.insert(name.clone(), value.clone());
        }
        self.pool().request(req).await
    }
}

fn build_pool(connect_timeout: Duration) -> Pool {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(https)
}

/// Describes a transport or body error with its causes (never the URL): `what` names the
/// phase (`connect error`, `body error`, ...).
pub fn describe(what: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = format!("{what}: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_scheme_host_port_and_path() {
        let url = reqwest::Url::parse("https://api.example.com:8443/v1/chat/completions").unwrap();
        let e = Endpoint::new(&url).unwrap();
        assert_eq!(e.0.scheme_str(), Some("https"));
        assert_eq!(e.0.host(), Some("api.example.com"));
        assert_eq!(e.0.port_u16(), Some(8443));
        assert_eq!(e.0.path(), "/v1/chat/completions");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_without_the_url() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = reqwest::Url::parse(&format!("http://127.0.0.1:{port}/v1/x")).unwrap();
        let c = HttpClient::new(Duration::from_secs(1));
        let e = c
            .post_json(&Endpoint::new(&url).unwrap(), [].iter(), b"{}".to_vec())
            .await
            .unwrap_err();
        assert!(e.is_connect(), "{e:?}");
        let d = describe("connect error", &e);
        assert!(d.starts_with("connect error: "), "{d}");
    }
}
