//! The HTTP API: OpenAI-compatible chat completions with hybrid routing, plus classify,
//! feedback, models, health, readiness, metrics, the OpenAPI document and the web page.
//!
//! [`router`] assembles the routes and the guards (auth, body limit, request ids,
//! metrics); the handlers take validated types only ([`ValidChat`]), and every error is a
//! [`GatewayError`].

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use classifier::{Classification, Classifier};
use futures_util::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use protocol::{ChatMessage, FinalRecord, FusionMode, GenerateRequest, Sampling};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::services::ServeDir;
use utoipa::{OpenApi, ToSchema};

use crate::backend::{EventStream, ExpertBackend, ExpertEvent};
use crate::config::{GatewayConfig, HintTrust};
use crate::dispatch::Dispatcher;
use crate::error::{GatewayError, LimitScope, Result};
use crate::feedback::{FeedbackStore, RECENT_RESPONSES, RecentResponses, ResponseRecord};
use crate::hint::{self, RouteHint};
use crate::hybrid_router::RoutingPolicy;
use crate::telemetry::{self, InFlight};

/// The model name that asks for hybrid routing.
pub const HYBRID_MODEL: &str = "hybrid";
/// The header that says how a request was routed.
pub const ROUTE_HEADER: &str = "x-route-decision";
const DEFAULT_MAX_TOKENS: usize = 256;
const MAX_STOP_SEQUENCES: usize = 4;

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub config: Arc<GatewayConfig>,
    /// The server-side classifier; replaced whole by `POST /admin/reload_classifier`
    /// (requests in flight keep the one they started with).
    classifier: std::sync::RwLock<Arc<dyn Classifier>>,
    pub policy: Arc<dyn RoutingPolicy>,
    pub dispatcher: Arc<Dispatcher>,
    pub feedback: Arc<FeedbackStore>,
    recent: Mutex<RecentResponses>,
    permits: Arc<Semaphore>,
    key_digests: Vec<[u8; 32]>,
    /// One semaphore per configured API key, index-aligned with `key_digests`.
    key_permits: Vec<Arc<Semaphore>>,
    metrics: PrometheusHandle,
}

impl AppState {
    /// Builds the classifier and routing policy from the config, opens the feedback
    /// database and wraps the backends in a dispatcher (not yet health-checked: call
    /// `dispatcher.refresh()`).
    pub fn new(config: GatewayConfig, backends: Vec<Arc<dyn ExpertBackend>>) -> Result<Self> {
        let classifier: Arc<dyn Classifier> =
            Arc::from(config.hybrid.build_classifier(None, None)?);
        let feedback = Arc::new(FeedbackStore::open(&config.gateway.feedback_db)?);
        Ok(Self::from_parts(config, classifier, feedback, backends))
    }

    /// Assembles the state from a classifier and a feedback store built beforehand.
    pub fn from_parts(
        config: GatewayConfig,
        classifier: Arc<dyn Classifier>,
        feedback: Arc<FeedbackStore>,
        backends: Vec<Arc<dyn ExpertBackend>>,
    ) -> Self {
        let policy = crate::hybrid_router::policy_from_config(&config);
        let key_digests = config
            .gateway
            .api_keys
            .iter()
            .map(|k| sha256(k.as_bytes()))
            .collect();
        let key_permits = config
            .gateway
            .api_keys
            .iter()
            .map(|_| Arc::new(Semaphore::new(config.gateway.per_key_limit())))
            .collect();
        Self {
            permits: Arc::new(Semaphore::new(config.gateway.max_concurrent_requests)),
            key_permits,
            config: Arc::new(config),
            classifier: std::sync::RwLock::new(classifier),
            policy,
            dispatcher: Arc::new(Dispatcher::new(backends)),
            feedback,
            recent: Mutex::new(RecentResponses::new(RECENT_RESPONSES)),
            key_digests,
            metrics: telemetry::prometheus(),
        }
    }

    /// The classifier requests use now.
    pub fn classifier(&self) -> Arc<dyn Classifier> {
        Arc::clone(&self.classifier.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Rebuilds the classifier from the config (e.g. after `train_classifier
    /// --from_feedback` wrote a new checkpoint) and swaps it in; on error the current one
    /// stays.
    pub fn reload_classifier(&self) -> Result<Arc<dyn Classifier>> {
        let fresh: Arc<dyn Classifier> =
            Arc::from(self.config.hybrid.build_classifier(None, None)?);
        *self.classifier.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&fresh);
        metrics::counter!("gateway_classifier_reloads_total").increment(1);
        Ok(fresh)
    }

    /// Replaces the routing policy (e.g. a dynamic-threshold one).
    #[must_use]
    pub fn with_policy(mut self, policy: Arc<dyn RoutingPolicy>) -> Self {
        self.policy = policy;
        self
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.gateway.request_timeout_s)
    }

    /// Takes a slot of the request's API key (when auth is on), then one of the gateway;
    /// either one full is a 429. The key's slot is taken first so that a client over its
    /// share never holds a gateway slot, even briefly.
    fn admit(&self, key: Option<ApiKeyId>) -> Result<Permits> {
        let retry_after = Duration::from_secs(1);
        let key = match key.and_then(|k| self.key_permits.get(k.0)) {
            Some(sem) => Some(Arc::clone(sem).try_acquire_owned().map_err(|_| {
                metrics::counter!("gateway_rejected_total", "limit" => "api_key").increment(1);
                GatewayError::TooManyRequests {
                    scope: LimitScope::ApiKey {
                        limit: self.config.gateway.per_key_limit(),
                    },
                    retry_after,
                }
            })?),
            None => None,
        };
        let gateway = Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            metrics::counter!("gateway_rejected_total", "limit" => "gateway").increment(1);
            GatewayError::TooManyRequests {
                scope: LimitScope::Gateway {
                    limit: self.config.gateway.max_concurrent_requests,
                },
                retry_after,
            }
        })?;
        Ok(Permits {
            _gateway: gateway,
            _key: key,
        })
    }
}

/// The index of the API key a request authenticated with (set by the auth guard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKeyId(pub usize);

/// The concurrency slots of one chat request; dropping it frees them. A stream holds it
/// for its whole life.
#[derive(Debug)]
pub struct Permits {
    _gateway: OwnedSemaphorePermit,
    _key: Option<OwnedSemaphorePermit>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------

/// One message of a chat request.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessageIn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
    /// Stream each piece's per-expert mixing weights (`delta.weights`, in the order of
    /// `routing.experts`) when the route is a fusion. An extension of OpenAI's shape.
    #[serde(default)]
    pub include_routing_weights: bool,
}

/// `POST /v1/chat/completions` (OpenAI shape, plus `route_hint`).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    /// `hybrid` (routed) or one of the expert models (pinned).
    pub model: String,
    pub messages: Vec<ChatMessageIn>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// The newer name of `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub stop: Option<StopSpec>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Must be 1.
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
    /// The client's classification.
    #[serde(default)]
    pub route_hint: Option<RouteHint>,
}

/// How a request was routed (in every chat answer and the final stream chunk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RoutingInfo {
    pub category: String,
    pub confidence: f32,
    /// `server`, `signed_edge` or `client`.
    pub hint_source: String,
    /// `single`, `fusion`, `foundation` or `pinned` (the request named an expert model).
    pub decision: String,
    pub experts: Vec<String>,
    /// The fusion mode: `single`, `ensemble`, `btm_token`, `btm_layer`.
    pub mode: String,
    pub threshold: f32,
    /// Model forwards per token.
    pub cost: f32,
}

/// Token counts (OpenAI shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageOut {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl From<protocol::Usage> for UsageOut {
    fn from(u: protocol::Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: String,
}

/// The answer of a non-streamed chat completion.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: UsageOut,
    pub routing: RoutingInfo,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Mixing weight of each expert for this piece (fusion routes, when asked through
    /// `stream_options.include_routing_weights`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<String>,
}

/// One `data:` line of a streamed chat completion.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingInfo>,
}

/// `POST /v1/classify`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRequest {
    pub text: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ClassifyResponse {
    /// Category name.
    pub category: String,
    /// Category index (the data files' `label`).
    pub label: usize,
    pub confidence: f32,
    pub scores: Vec<f32>,
    /// The classifier's version (rules or weights).
    pub version: String,
}

/// `POST /v1/feedback`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// The `id` of a chat completion answered by this gateway.
    pub response_id: String,
    /// -1 or 1.
    pub rating: i8,
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct FeedbackResponse {
    pub id: i64,
    pub status: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ModelCardOut {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub owned_by: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ModelListOut {
    pub object: String,
    pub data: Vec<ModelCardOut>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct StatusOut {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_experts: Option<usize>,
}

/// The error body.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ErrorOut {
    pub error: ErrorDetailOut,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ErrorDetailOut {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: String,
}

// ---------------------------------------------------------------------------------------
// JSON extraction through the one error type
// ---------------------------------------------------------------------------------------

/// `Json<T>` whose rejections become [`GatewayError`]s (400, or 413 over the body limit).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for ApiJson<T> {
    type Rejection = GatewayError;

    async fn from_request(
        req: Request,
        state: &Arc<AppState>,
    ) -> std::result::Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(&rejection, state)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection, state: &AppState) -> GatewayError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return GatewayError::PayloadTooLarge {
            limit: state.config.gateway.max_body_bytes,
        };
    }
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            GatewayError::BadRequest("expected `Content-Type: application/json`".into())
        }
        // Well-formed JSON of the wrong shape: 422, like OpenAI-compatible servers answer.
        JsonRejection::JsonDataError(_) => {
            GatewayError::Unprocessable(format!("invalid request body: {}", rejection.body_text()))
        }
        other => GatewayError::BadRequest(format!("invalid JSON body: {}", other.body_text())),
    }
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// Which models answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChoice {
    /// Routed by the classifier and the policy.
    Hybrid,
    /// The request named one expert model.
    Pinned(String),
}

/// A chat request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidChat {
    pub model: String,
    pub choice: ModelChoice,
    pub messages: Vec<ChatMessage>,
    /// The text classified: the last user message.
    pub query: String,
    pub sampling: Sampling,
    pub stream: bool,
    /// Stream per-token mixing weights (`stream_options.include_routing_weights`).
    pub routing_weights: bool,
    pub hint: Option<RouteHint>,
}

impl ValidChat {
    pub fn new(r: ChatCompletionRequest, config: &GatewayConfig) -> Result<Self> {
        let bad = |m: String| Err(GatewayError::BadRequest(m));
        if let Some(n) = r.n
            && n != 1
        {
            return bad(format!("`n` must be 1 (got {n}): one choice per request"));
        }
        let choice = if r.model == HYBRID_MODEL {
            ModelChoice::Hybrid
        } else if config.expert_models.contains(&r.model) {
            ModelChoice::Pinned(r.model.clone())
        } else {
            return Err(GatewayError::NotFound(format!(
                "the model {:?} does not exist; use {HYBRID_MODEL:?} or one of {:?}",
                r.model, config.expert_models
            )));
        };
        if r.messages.is_empty() {
            return bad("`messages` must not be empty".into());
        }
        let mut messages = Vec::with_capacity(r.messages.len());
        for (i, m) in r.messages.into_iter().enumerate() {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                return bad(format!(
                    "`messages[{i}].role` must be system, user or assistant (got {:?})",
                    m.role
                ));
            }
            if m.content.trim().is_empty() {
                return bad(format!("`messages[{i}].content` is empty"));
            }
            messages.push(ChatMessage {
                role: m.role,
                content: m.content,
            });
        }
        let Some(query) = messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.clone())
        else {
            return bad("`messages` has no user message".into());
        };
        let limit = config.gateway.max_tokens_limit;
        let max_tokens = r
            .max_completion_tokens
            .or(r.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS.min(limit));
        if max_tokens == 0 {
            return bad("`max_tokens` must be at least 1".into());
        }
        if max_tokens > limit {
            return bad(format!(
                "`max_tokens` {max_tokens} is over this gateway's limit of {limit}"
            ));
        }
        let temperature = r.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return bad(format!("`temperature` {temperature} is not in [0, 2]"));
        }
        if let Some(p) = r.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad(format!("`top_p` {p} is not in (0, 1]"));
        }
        let stop = match r.stop {
            None => Vec::new(),
            Some(StopSpec::One(s)) => vec![s],
            Some(StopSpec::Many(v)) => v,
        };
        if stop.len() > MAX_STOP_SEQUENCES {
            return bad(format!(
                "`stop` has {} sequences; at most {MAX_STOP_SEQUENCES}",
                stop.len()
            ));
        }
        if stop.iter().any(String::is_empty) {
            return bad("`stop` sequences must not be empty".into());
        }
        if let Some(h) = &r.route_hint {
            if !config.hybrid.categories.contains(&h.category) {
                return bad(format!(
                    "`route_hint.category` {:?} is not one of {:?}",
                    h.category, config.hybrid.categories
                ));
            }
            if !(0.0..=1.0).contains(&h.confidence) {
                return bad(format!(
                    "`route_hint.confidence` {} is not in [0, 1]",
                    h.confidence
                ));
            }
        }
        let seed = r
            .seed
            .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
        Ok(Self {
            model: r.model,
            choice,
            messages,
            query,
            sampling: Sampling {
                temperature,
                top_p: r.top_p,
                seed,
                max_tokens,
                stop,
                ..Sampling::default()
            },
            stream: r.stream,
            routing_weights: r.stream
                && r.stream_options
                    .as_ref()
                    .is_some_and(|o| o.include_routing_weights),
            hint: r.route_hint,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------

/// The route of one request: what runs, and the record of why.
#[derive(Debug, Clone)]
pub struct Routed {
    pub mode: FusionMode,
    pub info: RoutingInfo,
}

impl AppState {
    /// The classification to route on, and where it came from.
    fn resolve_classification(&self, chat: &ValidChat) -> Result<(Classification, &'static str)> {
        let from_hint = |h: &RouteHint| {
            let category = self
                .config
                .hybrid
                .categories
                .iter()
                .position(|c| *c == h.category)
                .unwrap_or(0);
            Classification {
                category,
                confidence: h.confidence as f32,
                scores: Vec::new(),
            }
        };
        let g = &self.config.gateway;
        match (&chat.hint, g.hint_trust) {
            (Some(h), HintTrust::Any) => return Ok((from_hint(h), "client")),
            (Some(h), HintTrust::Signed) => {
                match hint::verify(
                    h,
                    &chat.messages,
                    &g.edge_keys,
                    g.hint_max_age_s,
                    unix_now(),
                ) {
                    Ok(()) => return Ok((from_hint(h), "signed_edge")),
                    Err(reason) => {
                        metrics::counter!("gateway_hint_rejected_total", "reason" => reason.as_str())
                            .increment(1);
                        tracing::debug!(reason = reason.as_str(), "route hint rejected");
                    }
                }
            }
            _ => {}
        }
        Ok((self.classifier().classify(&chat.query)?, "server"))
    }

    /// Classifies (or takes the hint) and decides the route.
    pub fn route(&self, chat: &ValidChat) -> Result<Routed> {
        let (c, hint_source) = self.resolve_classification(chat)?;
        let (decision, mode) = match &chat.choice {
            ModelChoice::Pinned(model) => (
                "pinned",
                FusionMode::Single {
                    model: model.clone(),
                },
            ),
            ModelChoice::Hybrid => {
                crate::hybrid_router::route_mode(&self.config, self.policy.decide_routing(&c), &c)?
            }
        };
        let experts: Vec<String> = mode.models().iter().map(|m| m.to_string()).collect();
        let cost = if matches!(mode, FusionMode::Single { .. }) {
            1.0
        } else {
            experts.len() as f32
        };
        let info = RoutingInfo {
            category: self
                .config
                .hybrid
                .categories
                .get(c.category)
                .cloned()
                .unwrap_or_default(),
            confidence: c.confidence,
            hint_source: hint_source.to_string(),
            decision: decision.to_string(),
            experts,
            mode: mode.name().to_string(),
            threshold: self.policy.threshold(),
            cost,
        };
        metrics::counter!(
            "gateway_routes_total",
            "category" => info.category.clone(),
            "decision" => decision,
            "hint_source" => hint_source,
            "mode" => mode.name(),
        )
        .increment(1);
        Ok(Routed { mode, info })
    }
}

// ---------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------

#[utoipa::path(
    post, path = "/v1/chat/completions",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A completion, or with `stream: true` server-sent `chat.completion.chunk`s ending with `[DONE]`", body = ChatCompletion),
        (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 413, body = ErrorOut), (status = 429, body = ErrorOut),
        (status = 503, body = ErrorOut), (status = 504, body = ErrorOut)
    ),
    security(("bearer" = []))
)]
async fn chat_completions(
    State(state): State<Arc<AppState>>,
    key: Option<Extension<ApiKeyId>>,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> Result<Response> {
    let permit = state.admit(key.map(|Extension(k)| k))?;
    let chat = ValidChat::new(request, &state.config)?;
    let routed = state.route(&chat)?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    state
        .recent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            id.clone(),
            ResponseRecord {
                query: chat.query.clone(),
                category: routed.info.category.clone(),
                confidence: routed.info.confidence,
                hint_source: routed.info.hint_source.clone(),
                decision: routed.info.decision.clone(),
                experts: routed.info.experts.clone(),
                mode: routed.info.mode.clone(),
            },
        );
    let request = GenerateRequest {
        mode: routed.mode.clone(),
        prompt: None,
        messages: Some(chat.messages.clone()),
        sampling: chat.sampling.clone(),
        // A non-streamed answer is fetched whole from the expert too (one write there).
        stream: chat.stream,
        return_routing_weights: chat.routing_weights,
    };
    let timeout = state.timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    let events = tokio::time::timeout_at(deadline, state.dispatcher.generate(request))
        .await
        .map_err(|_| GatewayError::Timeout(timeout))??;
    let header_value = HeaderValue::from_str(&routed.info.decision)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let headers = [(HeaderName::from_static(ROUTE_HEADER), header_value)];
    let ctx = ChunkContext {
        id,
        created: unix_now(),
        model: chat.model.clone(),
        routing: routed.info,
    };
    if chat.stream {
        let stream = stream_chunks(ctx, events, deadline, permit, timeout);
        Ok((headers, Sse::new(stream).keep_alive(KeepAlive::default())).into_response())
    } else {
        let (text, record) = tokio::time::timeout_at(deadline, collect(events))
            .await
            .map_err(|_| GatewayError::Timeout(timeout))??;
        drop(permit);
        record_usage(&record);
        let body = ChatCompletion {
            id: ctx.id,
            object: "chat.completion".into(),
            created: ctx.created,
            model: ctx.model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant".into(),
                    content: text,
                },
                finish_reason: record.finish_reason.clone(),
            }],
            usage: record.usage.into(),
            routing: ctx.routing,
        };
        Ok((headers, Json(body)).into_response())
    }
}

fn record_usage(record: &FinalRecord) {
    metrics::counter!("gateway_prompt_tokens_total").increment(record.usage.prompt_tokens as u64);
    metrics::counter!("gateway_completion_tokens_total")
        .increment(record.usage.completion_tokens as u64);
}

async fn collect(mut events: EventStream) -> Result<(String, FinalRecord)> {
    let mut text = String::new();
    while let Some(event) = events.next().await {
        match event? {
            ExpertEvent::Token(t) => text.push_str(&t.text),
            ExpertEvent::Done(record) => return Ok((text, record)),
        }
    }
    Err(GatewayError::Upstream(
        "the expert's stream ended without a final record".into(),
    ))
}

struct ChunkContext {
    id: String,
    created: i64,
    model: String,
    routing: RoutingInfo,
}

impl ChunkContext {
    fn chunk(&self, delta: Delta, finish: Option<String>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
            }],
            usage: None,
            routing: None,
        }
    }
}

enum Phase {
    Start,
    Running,
    SendDone,
    Finished,
}

fn json_event<T: Serialize>(value: &T) -> Event {
    Event::default().data(serde_json::to_string(value).unwrap_or_default())
}

/// The SSE body: a role chunk, a chunk per token, a final chunk with `finish_reason`,
/// `usage` and `routing`, then `[DONE]`. An expert failure or the deadline gives one
/// `{"error": ...}` event and ends the stream. The concurrency permit lives as long as
/// the stream; dropping the stream (client gone) drops the expert's stream, which
/// cancels the generation.
fn stream_chunks(
    ctx: ChunkContext,
    events: EventStream,
    deadline: tokio::time::Instant,
    permit: Permits,
    timeout: Duration,
) -> impl futures_util::Stream<Item = std::result::Result<Event, Infallible>> {
    struct S {
        ctx: ChunkContext,
        events: EventStream,
        phase: Phase,
        deadline: tokio::time::Instant,
        timeout: Duration,
        _permit: Permits,
        _active: InFlight,
    }
    let s = S {
        ctx,
        events,
        phase: Phase::Start,
        deadline,
        timeout,
        _permit: permit,
        _active: InFlight::new(metrics::gauge!("gateway_streams_active")),
    };
    futures_util::stream::unfold(s, |mut s| async move {
        match s.phase {
            Phase::Finished => return None,
            Phase::SendDone => {
                s.phase = Phase::Finished;
                return Some((Ok(Event::default().data("[DONE]")), s));
            }
            Phase::Start => {
                s.phase = Phase::Running;
                let chunk = s.ctx.chunk(
                    Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                        weights: None,
                    },
                    None,
                );
                return Some((Ok(json_event(&chunk)), s));
            }
            Phase::Running => {}
        }
        let error = match tokio::time::timeout_at(s.deadline, s.events.next()).await {
            Ok(Some(Ok(ExpertEvent::Token(t)))) => {
                let chunk = s.ctx.chunk(
                    Delta {
                        role: None,
                        content: Some(t.text),
                        weights: t.weights,
                    },
                    None,
                );
                return Some((Ok(json_event(&chunk)), s));
            }
            Ok(Some(Ok(ExpertEvent::Done(record)))) => {
                record_usage(&record);
                s.phase = Phase::SendDone;
                let mut chunk = s
                    .ctx
                    .chunk(Delta::default(), Some(record.finish_reason.clone()));
                chunk.usage = Some(record.usage.into());
                chunk.routing = Some(s.ctx.routing.clone());
                return Some((Ok(json_event(&chunk)), s));
            }
            Ok(Some(Err(e))) => e,
            Ok(None) => GatewayError::Upstream("the expert's stream ended early".into()),
            Err(_) => GatewayError::Timeout(s.timeout),
        };
        tracing::warn!(error = %error, id = %s.ctx.id, "stream failed");
        metrics::counter!("gateway_stream_errors_total").increment(1);
        s.phase = Phase::Finished;
        Some((Ok(json_event(&error.body())), s))
    })
}

#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelListOut)), security(("bearer" = [])))]
async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelListOut> {
    let card = |id: &str| ModelCardOut {
        id: id.to_string(),
        object: "model".into(),
        created: 0,
        owned_by: "hybrid-router".into(),
    };
    let mut data = vec![card(HYBRID_MODEL)];
    data.extend(state.config.expert_models.iter().map(|m| card(m)));
    Json(ModelListOut {
        object: "list".into(),
        data,
    })
}

#[utoipa::path(
    post, path = "/v1/classify", request_body = ClassifyRequest,
    responses((status = 200, body = ClassifyResponse), (status = 400, body = ErrorOut)),
    security(("bearer" = []))
)]
async fn classify(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<ClassifyRequest>,
) -> Result<Json<ClassifyResponse>> {
    let classifier = state.classifier();
    let c = classifier.classify(&request.text)?;
    Ok(Json(ClassifyResponse {
        category: classifier
            .categories()
            .get(c.category)
            .cloned()
            .unwrap_or_default(),
        label: c.category,
        confidence: c.confidence,
        scores: c.scores,
        version: classifier.version().to_string(),
    }))
}

/// `POST /admin/reload_classifier`: reloads the classifier from the config's checkpoint
/// (online learning) without a restart; answers the new version.
async fn reload_classifier(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>> {
    let fresh = state.reload_classifier()?;
    tracing::info!(version = %fresh.version(), "classifier reloaded");
    Ok(Json(
        serde_json::json!({"status": "reloaded", "version": fresh.version()}),
    ))
}

#[utoipa::path(
    post, path = "/v1/feedback", request_body = FeedbackRequest,
    responses((status = 200, body = FeedbackResponse), (status = 400, body = ErrorOut), (status = 404, body = ErrorOut)),
    security(("bearer" = []))
)]
async fn feedback(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<FeedbackRequest>,
) -> Result<Json<FeedbackResponse>> {
    if request.rating != 1 && request.rating != -1 {
        return Err(GatewayError::BadRequest(format!(
            "`rating` must be -1 or 1 (got {})",
            request.rating
        )));
    }
    if request
        .comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > 4096)
    {
        return Err(GatewayError::BadRequest(
            "`comment` is longer than 4096 characters".into(),
        ));
    }
    let record = state
        .recent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&request.response_id)
        .cloned()
        .ok_or_else(|| {
            GatewayError::NotFound(format!(
                "unknown or expired response id {:?}",
                request.response_id
            ))
        })?;
    let store = Arc::clone(&state.feedback);
    let id = tokio::task::spawn_blocking(move || {
        store.insert(
            &request.response_id,
            request.rating,
            request.comment.as_deref(),
            &record,
            unix_now(),
        )
    })
    .await
    .map_err(|e| GatewayError::Internal(e.to_string()))??;
    metrics::counter!("gateway_feedback_total", "rating" => if request.rating > 0 { "up" } else { "down" }).increment(1);
    Ok(Json(FeedbackResponse {
        id,
        status: "stored".into(),
    }))
}

#[utoipa::path(get, path = "/health", responses((status = 200, body = StatusOut)))]
async fn health() -> Json<StatusOut> {
    Json(StatusOut {
        status: "ok".into(),
        healthy_experts: None,
    })
}

#[utoipa::path(get, path = "/ready", responses((status = 200, body = StatusOut), (status = 503, body = ErrorOut)))]
async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<StatusOut>> {
    let n = state.dispatcher.healthy_count();
    if n == 0 {
        return Err(GatewayError::Unavailable(
            "no expert backend is healthy".into(),
        ));
    }
    Ok(Json(StatusOut {
        status: "ready".into(),
        healthy_experts: Some(n),
    }))
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    state.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

async fn not_found(req: Request) -> GatewayError {
    GatewayError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

// ---------------------------------------------------------------------------------------
// Guards
// ---------------------------------------------------------------------------------------

/// Bearer auth: every configured key's digest is compared in constant time (all keys,
/// whichever matches). The matching key's index goes into the request's extensions as an
/// [`ApiKeyId`] for the per-key concurrency limit.
async fn auth(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> std::result::Result<Response, GatewayError> {
    if state.key_digests.is_empty() {
        return Ok(next.run(req).await);
    }
    let token = bearer(req.headers()).ok_or(GatewayError::Unauthorized)?;
    let digest = sha256(token.as_bytes());
    let mut ok = subtle::Choice::from(0);
    let mut index = 0u64;
    for (i, key) in state.key_digests.iter().enumerate() {
        let eq = key.ct_eq(&digest);
        index.conditional_assign(&(i as u64), eq);
        ok |= eq;
    }
    if bool::from(ok) {
        let index = usize::try_from(index).map_err(|e| GatewayError::Internal(e.to_string()))?;
        req.extensions_mut().insert(ApiKeyId(index));
        Ok(next.run(req).await)
    } else {
        Err(GatewayError::Unauthorized)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Request count, latency and in-flight gauge, labelled by the matched route.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let _in_flight = InFlight::new(metrics::gauge!(
        "gateway_http_requests_in_flight", "route" => route.clone()
    ));
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(
        "gateway_http_request_duration_seconds", "route" => route.clone(), "method" => method.clone()
    )
    .record(start.elapsed().as_secs_f64());
    metrics::counter!(
        "gateway_http_requests_total", "route" => route, "method" => method, "status" => status
    )
    .increment(1);
    response
}

// ---------------------------------------------------------------------------------------
// Router and OpenAPI
// ---------------------------------------------------------------------------------------

#[derive(OpenApi)]
#[openapi(
    info(title = "hybrid-router gateway", description = "OpenAI-compatible gateway that routes each query to one expert or a fusion of experts"),
    paths(chat_completions, list_models, classify, feedback, health, ready),
    components(schemas(
        ChatCompletionRequest, ChatMessageIn, StopSpec, StreamOptions, RouteHint, ChatCompletion,
        Choice, AssistantMessage, UsageOut, RoutingInfo, ChatCompletionChunk, ChunkChoice, Delta,
        ClassifyRequest, ClassifyResponse, FeedbackRequest, FeedbackResponse, ModelListOut,
        ModelCardOut, StatusOut, ErrorOut, ErrorDetailOut
    )),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The whole application: routes, guards and the web page.
pub fn router(state: Arc<AppState>) -> Router {
    let g = &state.config.gateway;
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .route("/v1/classify", post(classify))
        .route("/v1/feedback", post(feedback))
        .route("/admin/reload_classifier", post(reload_classifier))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth));
    let open = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json));
    let web = ServeDir::new(&g.web_dir)
        .call_fallback_on_method_not_allowed(true)
        .not_found_service(axum::routing::any(not_found));
    api.merge(open)
        .fallback_service(web)
        .layer(middleware::from_fn(track))
        .layer(DefaultBodyLimit::max(g.max_body_bytes))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}
