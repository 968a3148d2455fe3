//! The seam between the gateway and the experts: [`ExpertBackend`] (as TGI's `Backend`).
//!
//! Two implementations ship: [`HttpExpert`], an expert process at a URL speaking the
//! protocol of the `protocol` crate, and [`crate::supervisor::LocalExpert`], a supervised
//! `expert serve` child process (which talks to its child through an [`HttpExpert`]).
//! Tests use a third, in-process one.

use std::time::Duration;

use axum::body::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use protocol::{
    ErrorBody, FinalRecord, GenerateRequest, GenerateResponse, ModelList, ScoreRequest,
    ScoreResponse, TokenEvent,
};

use crate::error::{GatewayError, Result};

/// One event of a generation stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ExpertEvent {
    Token(TokenEvent),
    /// The last event.
    Done(FinalRecord),
}

/// A stream of generation events; an `Err` ends it. Dropping it cancels the generation.
pub type EventStream = BoxStream<'static, Result<ExpertEvent>>;

/// Something that generates text with the experts' models.
pub trait ExpertBackend: Send + Sync + std::fmt::Debug {
    /// A short name for logs and metrics (e.g. the URL).
    fn name(&self) -> String;

    /// Starts a generation; the request's `stream` flag is ignored (always streamed).
    fn generate(&self, request: GenerateRequest) -> BoxFuture<'_, Result<EventStream>>;

    /// Whether the backend answers `GET /health` with 200.
    fn health(&self) -> BoxFuture<'_, bool>;

    /// The models it hosts.
    fn models(&self) -> BoxFuture<'_, Result<Vec<String>>>;

    /// The log-likelihood of continuations under a fusion mode (`POST /v1/score`).
    fn score(&self, request: ScoreRequest) -> BoxFuture<'_, Result<ScoreResponse>> {
        let _ = request;
        let name = self.name();
        Box::pin(async move {
            Err(GatewayError::BadRequest(format!(
                "the expert backend {name} cannot score continuations"
            )))
        })
    }
}

/// An expert's error answer as the gateway's error: its message, a client error as
/// `BadRequest`, anything else as `Upstream` (so the dispatcher tries another backend).
async fn refusal(base: &str, response: reqwest::Response) -> GatewayError {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&text)
        .map(|b| b.error.message)
        .unwrap_or(text);
    if status.is_client_error() {
        GatewayError::BadRequest(format!("the expert refused the request: {message}"))
    } else {
        GatewayError::Upstream(format!("{base} answered {status}: {message}"))
    }
}

/// An expert process reached over HTTP.
#[derive(Debug, Clone)]
pub struct HttpExpert {
    base: String,
    client: reqwest::Client,
}

impl HttpExpert {
    /// `base` is e.g. `http://127.0.0.1:9000` (a trailing slash is dropped).
    pub fn new(base: impl Into<String>) -> Self {
        let base = base.into().trim_end_matches('/').to_string();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Self { base, client }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// POSTs `body` to `path`; an answer that is not a success is the expert's error.
    async fn post(&self, path: &str, body: &impl serde::Serialize) -> Result<reqwest::Response> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .map_err(|e| GatewayError::Upstream(format!("{}: {e}", self.base)))?;
        if !response.status().is_success() {
            return Err(refusal(&self.base, response).await);
        }
        Ok(response)
    }

    /// A streamed request reads the expert's server-sent events as they come; a
    /// non-streamed one gets the expert's single JSON answer (one write on the expert's
    /// side, so no small-write stall between its events) as a token and a final record.
    async fn start(&self, request: GenerateRequest) -> Result<EventStream> {
        let streamed = request.stream;
        let response = self.post("/v1/generate", &request).await?;
        if !streamed {
            let answer: GenerateResponse = response
                .json()
                .await
                .map_err(|e| GatewayError::Upstream(format!("{}: {e}", self.base)))?;
            let events = vec![
                Ok(ExpertEvent::Token(TokenEvent {
                    text: answer.text,
                    weights: None,
                })),
                Ok(ExpertEvent::Done(answer.record)),
            ];
            return Ok(futures_util::stream::iter(events).boxed());
        }
        let base = self.base.clone();
        let bytes = response
            .bytes_stream()
            .map(move |r| r.map_err(|e| GatewayError::Upstream(format!("{base}: {e}"))));
        Ok(sse_events(bytes.boxed(), self.base.clone()))
    }
}

impl ExpertBackend for HttpExpert {
    fn name(&self) -> String {
        self.base.clone()
    }

    fn generate(&self, request: GenerateRequest) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(self.start(request))
    }

    fn health(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            self.client
                .get(format!("{}/health", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
    }

    fn score(&self, request: ScoreRequest) -> BoxFuture<'_, Result<ScoreResponse>> {
        Box::pin(async move {
            self.post("/v1/score", &request)
                .await?
                .json()
                .await
                .map_err(|e| GatewayError::Upstream(format!("{}: {e}", self.base)))
        })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let list: ModelList = self
                .client
                .get(format!("{}/v1/models", self.base))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| GatewayError::Upstream(format!("{}: {e}", self.base)))?
                .json()
                .await
                .map_err(|e| GatewayError::Upstream(format!("{}: {e}", self.base)))?;
            Ok(list.data.into_iter().map(|m| m.id).collect())
        })
    }
}

/// Parses server-sent events (`event: token|done|error`, `data: {json}`) into
/// [`ExpertEvent`]s. A stream that ends before `done` is an error (the expert died).
pub fn sse_events(bytes: BoxStream<'static, Result<Bytes>>, origin: String) -> EventStream {
    struct State {
        bytes: BoxStream<'static, Result<Bytes>>,
        buf: Vec<u8>,
        event: String,
        data: String,
        finished: bool,
        origin: String,
    }
    let state = State {
        bytes,
        buf: Vec::new(),
        event: String::new(),
        data: String::new(),
        finished: false,
        origin,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if s.finished {
            return None;
        }
        loop {
            // Handle every complete line in the buffer.
            while let Some(pos) = s.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = s.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8_lossy(&line).into_owned();
                if line.is_empty() {
                    if s.data.is_empty() && s.event.is_empty() {
                        continue;
                    }
                    let event = std::mem::take(&mut s.event);
                    let data = std::mem::take(&mut s.data);
                    match decode_event(&event, &data, &s.origin) {
                        Ok(Some(ev)) => {
                            if matches!(ev, ExpertEvent::Done(_)) {
                                s.finished = true;
                            }
                            return Some((Ok(ev), s));
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            s.finished = true;
                            return Some((Err(e), s));
                        }
                    }
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !s.data.is_empty() {
                        s.data.push('\n');
                    }
                    s.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                } else if let Some(v) = line.strip_prefix("event:") {
                    s.event = v.trim().to_string();
                }
                // Comments (":") and other fields (id, retry) are ignored.
            }
            match s.bytes.next().await {
                Some(Ok(chunk)) => s.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    s.finished = true;
                    return Some((Err(e), s));
                }
                None => {
                    s.finished = true;
                    return Some((
                        Err(GatewayError::Upstream(format!(
                            "{}: the expert closed the stream before it finished",
                            s.origin
                        ))),
                        s,
                    ));
                }
            }
        }
    })
    .boxed()
}

fn decode_event(event: &str, data: &str, origin: &str) -> Result<Option<ExpertEvent>> {
    let bad = |e: serde_json::Error| {
        GatewayError::Upstream(format!("{origin}: malformed {event:?} event: {e}"))
    };
    match event {
        "token" | "" | "message" => Ok(Some(ExpertEvent::Token(
            serde_json::from_str(data).map_err(bad)?,
        ))),
        "done" => Ok(Some(ExpertEvent::Done(
            serde_json::from_str(data).map_err(bad)?,
        ))),
        "error" => {
            let message = serde_json::from_str::<ErrorBody>(data)
                .map(|b| b.error.message)
                .unwrap_or_else(|_| data.to_string());
            Err(GatewayError::Upstream(format!("{origin}: {message}")))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&str]) -> Vec<std::result::Result<ExpertEvent, String>> {
        let owned: Vec<Result<Bytes>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from(c.to_string())))
            .collect();
        let stream = sse_events(futures_util::stream::iter(owned).boxed(), "test".into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(stream.map(|r| r.map_err(|e| e.to_string())).collect())
    }

    #[test]
    fn tokens_then_done_across_chunk_boundaries() {
        let done = r#"{"finish_reason":"stop","usage":{"prompt_tokens":3,"completion_tokens":2},"cost":{"forwards_per_token":1.0,"total_token_forwards":5},"timings":{"queue_ms":0,"prefill_ms":1,"decode_ms":2}}"#;
        let text = format!(
            "event: token\ndata: {{\"text\":\"He\"}}\n\n: keep-alive\n\nevent: token\r\ndata: {{\"text\":\"llo\"}}\r\n\r\nevent: done\ndata: {done}\n\n"
        );
        let (a, b) = text.split_at(17);
        let events = parse(&[a, b]);
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(matches!(&events[0], Ok(ExpertEvent::Token(t)) if t.text == "He"));
        assert!(matches!(&events[1], Ok(ExpertEvent::Token(t)) if t.text == "llo"));
        assert!(matches!(&events[2], Ok(ExpertEvent::Done(r)) if r.usage.completion_tokens == 2));
    }

    #[test]
    fn error_event_and_truncated_stream_are_errors() {
        let events = parse(&[
            "event: token\ndata: {\"text\":\"a\"}\n\nevent: error\ndata: {\"error\":{\"message\":\"boom\",\"type\":\"x\",\"code\":\"y\"}}\n\n",
        ]);
        assert!(matches!(&events[1], Err(m) if m.contains("boom")));
        assert_eq!(events.len(), 2);
        let events = parse(&["event: token\ndata: {\"text\":\"a\"}\n\n"]);
        assert!(matches!(&events[1], Err(m) if m.contains("before it finished")));
    }
}
