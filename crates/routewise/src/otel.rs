//! OTLP trace export for `routewise serve` (the `otel` cargo feature, off by default:
//! `cargo build --release --features otel`).
//!
//! Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set; the
//! exporter speaks OTLP over HTTP/protobuf and reads the standard `OTEL_EXPORTER_OTLP_*`
//! variables (headers, timeout, compression). What is exported: the gateway's spans
//! (`request`, its stages and one `attempt` per upstream call, see
//! `routewise_gateway::otel`), under the service name `routewise` (or
//! `OTEL_SERVICE_NAME`); log events are not. Spans are batched and sent by the SDK's
//! background thread through the gateway's own HTTP client (reqwest, run on the server's
//! runtime), and flushed when the server stops.

use std::fmt;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{SpanExporter, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::Layer;

/// Flushes and stops the exporter when dropped.
pub struct OtelGuard(SdkTracerProvider);

impl Drop for OtelGuard {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Whether export is configured (an OTLP endpoint is set).
pub fn enabled() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// The tracing layer exporting routewise's spans, and the guard that flushes them.
pub fn layer<S>(
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<(Box<dyn Layer<S> + Send + Sync>, OtelGuard)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    let client = RuntimeClient {
        client: reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10))
            .build()?,
        runtime,
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .build()?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "routewise".to_string());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("routewise");
    let only_our_spans = tracing_subscriber::filter::filter_fn(|m| {
        m.is_span() && m.target().starts_with("routewise") && *m.level() <= tracing::Level::DEBUG
    });
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(only_our_spans);
    Ok((Box::new(layer), OtelGuard(provider)))
}

/// The exporter's HTTP client: reqwest on the server's tokio runtime (the SDK's batch
/// thread is not a runtime thread, so each request is spawned there and awaited).
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RuntimeClient")
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let resp = client.execute(request).await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
        let (status, body) = sent.await??;
        let mut out = Response::new(body);
        *out.status_mut() = status;
        Ok(out)
    }
}
