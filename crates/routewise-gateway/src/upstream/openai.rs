//! The OpenAI-compatible provider: POST the client's body (with `model` replaced) to
//! `{base_url}/chat/completions` with `Authorization: Bearer KEY`, and pass the answer
//! through unchanged. Works with OpenAI, vLLM, Ollama, LiteLLM and anything else that
//! speaks the chat-completions protocol.

use axum::http::{HeaderName, HeaderValue};
use futures_util::StreamExt;

use super::{
    describe, first_chunk, post_json, read_body, Answer, AttemptOutcome, Call, Failure, Provider,
    ProviderKind, Timing,
};

/// One OpenAI-compatible upstream.
#[derive(Debug, Clone)]
pub struct OpenAi {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: Option<(HeaderName, HeaderValue)>,
}

impl OpenAi {
    /// `url` is the full chat endpoint; `auth` the key header, if any.
    pub fn new(
        client: reqwest::Client,
        url: reqwest::Url,
        auth: Option<(HeaderName, HeaderValue)>,
    ) -> Self {
        OpenAi { client, url, auth }
    }
}

#[async_trait::async_trait]
impl Provider for OpenAi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAi
    }

    async fn call(&self, call: Call<'_>, timing: &mut Timing) -> Result<Answer, Failure> {
        let req = call.request;
        let body = req
            .upstream_body(call.upstream_model)
            .map_err(|e| Failure::new(AttemptOutcome::Body, format!("cannot encode body: {e}")))?;
        let deadline = tokio::time::Instant::now() + call.timeout;
        let headers: &[(HeaderName, HeaderValue)] = self.auth.as_slice();
        let resp = post_json(&self.client, &self.url, headers, body, call.timeout, timing).await?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .cloned();
        if !(req.stream && status.is_success()) {
            let body = read_body(resp, deadline, call.timeout).await?;
            return Ok(Answer::Full {
                status,
                content_type,
                body,
            });
        }
        let mut stream = resp.bytes_stream().map(|r| r.map_err(|e| describe(&e)));
        let first = first_chunk(&mut stream, deadline, call.timeout).await?;
        Ok(Answer::Stream {
            status,
            content_type,
            first,
            rest: Box::pin(stream),
        })
    }
}
