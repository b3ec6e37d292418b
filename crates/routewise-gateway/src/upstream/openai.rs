//! The OpenAI-compatible provider: POST the client's body (with `model` replaced) to
//! `{base_url}/chat/completions` with `Authorization: Bearer KEY`, and pass a successful
//! answer through (with the key scrubbed from it, [`super::redact`]); an error answer is
//! rebuilt ([`super::client_error_body`]). Works with OpenAI, vLLM, Ollama, LiteLLM and
//! anything else that speaks the chat-completions protocol.

use axum::http::{HeaderName, HeaderValue};

use super::client::{Endpoint, HttpClient};
use super::redact::Redactor;
use super::{
    body_stream, client_error_body, first_chunk, post_json, read_body, Answer, AttemptInfo,
    AttemptOutcome, Call, Failure, Provider, ProviderKind,
};

/// One OpenAI-compatible upstream.
#[derive(Debug, Clone)]
pub struct OpenAi {
    client: HttpClient,
    url: Endpoint,
    auth: Option<(HeaderName, HeaderValue)>,
    redactor: Redactor,
}

impl OpenAi {
    /// `url` is the full chat endpoint; `auth` the key header, if any; `redactor`
    /// scrubs that key from answers.
    pub fn new(
        client: HttpClient,
        url: Endpoint,
        auth: Option<(HeaderName, HeaderValue)>,
        redactor: Redactor,
    ) -> Self {
        OpenAi {
            client,
            url,
            auth,
            redactor,
        }
    }
}

#[async_trait::async_trait]
impl Provider for OpenAi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAi
    }

    async fn call(&self, call: Call<'_>, info: &mut AttemptInfo) -> Result<Answer, Failure> {
        let req = call.request;
        let body = req
            .upstream_body(call.upstream_model)
            .map_err(|e| Failure::new(AttemptOutcome::Body, format!("cannot encode body: {e}")))?;
        let deadline = tokio::time::Instant::now() + call.timeout;
        let headers: &[(HeaderName, HeaderValue)] = self.auth.as_slice();
        let resp = post_json(&self.client, &self.url, headers, &call, body, info).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = read_body(resp, deadline, call.timeout).await?;
            return Ok(Answer::Full {
                status,
                content_type: Some(HeaderValue::from_static("application/json")),
                body: client_error_body(status, &body, call.model, &self.redactor),
            });
        }
        let content_type = resp
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .cloned();
        if !req.stream {
            let body = read_body(resp, deadline, call.timeout).await?;
            return Ok(Answer::Full {
                status,
                content_type,
                body: self.redactor.bytes(body),
            });
        }
        let mut stream = self.redactor.stream(Box::pin(body_stream(resp)));
        let first = first_chunk(&mut stream, deadline, call.timeout).await?;
        Ok(Answer::Stream {
            status,
            content_type,
            first,
            rest: stream,
        })
    }
}
