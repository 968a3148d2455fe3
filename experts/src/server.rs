//! The expert process: an HTTP server over loaded models (see the `protocol` crate for the
//! wire format; `POST /v1/chat/completions` also answers in OpenAI's shape for `single`).
//!
//! Admission: at most `max_queue` requests are admitted at once; one more gets `503` with
//! `Retry-After` at once. Admitted requests go to one engine thread that runs **continuous
//! batching**: between two decode steps, waiting sequences join (their prompt is
//! prefilled) and finished or cancelled ones leave; each step runs every loaded model once
//! over all the sequences that need it ([`fusion::step_batch`]), up to `max_batch`
//! sequences. Text pieces stream to each client through its channel; when a client goes
//! away its channel closes, the engine drops the sequence and its KV cache at the next
//! step. SIGTERM stops accepting connections and lets running streams finish.
//!
//! [`fusion::step_batch`]: crate::fusion::step_batch

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use candle_core::{DType, Device};
use futures_util::StreamExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use protocol::{
    ContinuationScore, Cost, ErrorBody, FinalRecord, FusionMode, GenerateRequest, GenerateResponse,
    MAX_SCORE_CONTINUATIONS, ModelCard, ModelList, ScoreRequest, ScoreResponse,
};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::chat::ChatMessage;
use crate::defer::DeferralHead;
use crate::engine::{self, Event, Job, ValidRequest, build_fusion};
use crate::error::{ExpertError, Result};
use crate::fusion::{Decoding, Fusion, LayerMixer, TokenRouter, score_continuations};
use crate::generate::SamplingParams;
use crate::loader::{LoadedModel, load_model_as};
use crate::serve_config::ServeConfig;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// The models, routers and mixers a process serves.
#[derive(Debug)]
pub struct Registry {
    pub models: BTreeMap<String, Arc<LoadedModel>>,
    pub routers: HashMap<String, Arc<TokenRouter>>,
    pub mixers: HashMap<String, Arc<LayerMixer>>,
    pub deferral_heads: HashMap<String, Arc<DeferralHead>>,
    /// With `device: wgpu`: the GPU and the models' weights on it; sequences run there.
    #[cfg(feature = "wgpu")]
    pub gpu: Option<Arc<crate::wgpu_backend::WgpuDevice>>,
}

impl Registry {
    /// Whether the device the models run on is usable (false once a GPU is lost).
    pub fn device_healthy(&self) -> bool {
        self.check_device().is_ok()
    }

    /// `Err` (a lost GPU) when the models' device can no longer run anything.
    pub fn check_device(&self) -> Result<()> {
        #[cfg(feature = "wgpu")]
        if let Some(g) = &self.gpu {
            if !g.ctx.is_healthy() {
                return Err(ExpertError::Gpu(gpu::GpuError::DeviceLost {
                    reason: "the GPU device was lost; restart the expert process".into(),
                }));
            }
        }
        Ok(())
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct ExpertState {
    pub registry: Arc<Registry>,
    queue: Arc<Semaphore>,
    jobs: std::sync::mpsc::Sender<Job>,
    ready: AtomicBool,
    metrics: Option<PrometheusHandle>,
}

impl ExpertState {
    /// Loads every model, router and mixer the config names and starts the batching engine.
    pub fn load(cfg: &ServeConfig) -> Result<Self> {
        let device = cfg.device()?;
        let dtype = if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        };
        let mut models = BTreeMap::new();
        for (name, dir) in &cfg.models {
            let weights = cfg.weights.get(name).copied().unwrap_or_default();
            let mut m = load_model_as(dir, dtype, &device, weights)?;
            m.name = name.clone();
            models.insert(name.clone(), Arc::new(m));
        }
        let mut routers = HashMap::new();
        for (name, dir) in &cfg.routers {
            routers.insert(
                name.clone(),
                Arc::new(TokenRouter::load(dir, &Device::Cpu)?),
            );
        }
        let mut mixers = HashMap::new();
        for (name, dir) in &cfg.mixers {
            mixers.insert(name.clone(), Arc::new(LayerMixer::load(dir, &device)?));
        }
        let mut deferral_heads = HashMap::new();
        for (name, dir) in &cfg.deferral_heads {
            deferral_heads.insert(name.clone(), Arc::new(DeferralHead::load(dir, &device)?));
        }
        #[cfg(feature = "wgpu")]
        let gpu = if cfg.wgpu() {
            Some(Arc::new(crate::wgpu_backend::WgpuDevice::new(&models)?))
        } else {
            None
        };
        let registry = Arc::new(Registry {
            models,
            routers,
            mixers,
            deferral_heads,
            #[cfg(feature = "wgpu")]
            gpu,
        });
        let jobs = engine::start(registry.clone(), cfg.max_batch)?;
        Ok(Self {
            registry,
            queue: Arc::new(Semaphore::new(cfg.max_queue)),
            jobs,
            ready: AtomicBool::new(true),
            metrics: PrometheusBuilder::new().install_recorder().ok(),
        })
    }

    /// Names of the served models.
    pub fn model_names(&self) -> Vec<&str> {
        self.registry.models.keys().map(String::as_str).collect()
    }
}

/// An error answered with an OpenAI-style body; the one place errors become HTTP.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody::new(message, "invalid_request_error", "invalid_request"),
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: ErrorBody::new(message, "server_error", "internal"),
        }
    }
}

impl From<ExpertError> for ApiError {
    fn from(e: ExpertError) -> Self {
        match e {
            ExpertError::InvalidRequest(m) => Self::bad_request(m),
            e @ ExpertError::Unsupported(_) => Self {
                status: StatusCode::NOT_IMPLEMENTED,
                body: ErrorBody::new(e.to_string(), "server_error", "unsupported"),
            },
            #[cfg(feature = "wgpu")]
            e @ ExpertError::Gpu(gpu::GpuError::DeviceLost { .. }) => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: ErrorBody::new(e.to_string(), "server_error", "device_lost"),
            },
            other => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: ErrorBody::new(other.to_string(), "server_error", "internal"),
            },
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self {
            status: r.status(),
            body: ErrorBody::new(r.body_text(), "invalid_request_error", "invalid_json"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// `Json` whose rejections go through [`ApiError`].
struct ApiJson<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, ApiError> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(Self(v))
    }
}

/// The router of the expert process.
pub fn router(state: Arc<ExpertState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(list_models))
        .route("/v1/generate", post(generate_handler))
        .route("/v1/score", post(score_handler))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/metrics", get(metrics_handler))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn health(State(s): State<Arc<ExpertState>>) -> Response {
    if !s.registry.device_healthy() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unhealthy", "reason": "GPU device lost"})),
        )
            .into_response();
    }
    if s.ready.load(Ordering::SeqCst) {
        Json(serde_json::json!({"status": "ok", "models": s.model_names()})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "loading"})),
        )
            .into_response()
    }
}

async fn list_models(State(s): State<Arc<ExpertState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: s
            .registry
            .models
            .keys()
            .map(|id| ModelCard {
                id: id.clone(),
                object: "model".into(),
                owned_by: "expert".into(),
            })
            .collect(),
    })
}

async fn metrics_handler(State(s): State<Arc<ExpertState>>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable",
        )
            .into_response(),
    }
}

/// Checks a request against what this process serves; every 4xx is decided here, before
/// the request is queued.
/// The mode bound to this process's models, checked.
fn bind<'a>(s: &'a Registry, mode: &FusionMode) -> std::result::Result<Fusion<'a>, ApiError> {
    if mode.models().is_empty() {
        return Err(ApiError::bad_request("the mode names no models"));
    }
    if let Some(n) = mode.models().iter().find(|n| !s.models.contains_key(**n)) {
        return Err(ApiError::bad_request(format!(
            "model {n:?} is not served here (available: {:?})",
            s.models.keys().collect::<Vec<_>>()
        )));
    }
    let fusion = build_fusion(s, mode)?;
    fusion.validate()?;
    Ok(fusion)
}

fn validate(s: &Registry, req: GenerateRequest) -> std::result::Result<ValidRequest, ApiError> {
    let fusion = bind(s, &req.mode)?;
    let first = fusion.models()[0];
    let text = prompt_text(first, req.prompt.as_deref(), req.messages.as_deref())?;
    let prompt_ids = first.tokenizer.encode(&text)?;
    let params = SamplingParams::from(&req.sampling);
    Decoding::new(&fusion, &prompt_ids, &params)?;
    Ok(ValidRequest {
        mode: req.mode,
        prompt_ids,
        params,
        weights: req.return_routing_weights,
    })
}

/// The text a request's `prompt` or `messages` (through `model`'s chat template, an
/// assistant turn opened) stands for.
fn prompt_text(
    first: &LoadedModel,
    prompt: Option<&str>,
    messages: Option<&[protocol::ChatMessage]>,
) -> std::result::Result<String, ApiError> {
    Ok(match (prompt, messages) {
        (Some(p), None) => {
            if p.is_empty() {
                return Err(ApiError::bad_request("the prompt is empty"));
            }
            p.to_string()
        }
        (None, Some(msgs)) => {
            if msgs.is_empty() || msgs.iter().all(|m| m.content.trim().is_empty()) {
                return Err(ApiError::bad_request("messages are empty"));
            }
            let msgs: Vec<ChatMessage> = msgs
                .iter()
                .map(|m| ChatMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                })
                .collect();
            match &first.chat_template {
                Some(t) => t.render(&msgs, true)?,
                None => msgs
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `prompt` and `messages`",
            ));
        }
    })
}

/// `POST /v1/score`: runs beside the batching engine on a blocking thread, admitted through
/// the same queue (a full queue answers 503).
async fn score_handler(
    State(s): State<Arc<ExpertState>>,
    ApiJson(req): ApiJson<ScoreRequest>,
) -> std::result::Result<Json<ScoreResponse>, ApiError> {
    s.registry.check_device()?;
    #[cfg(feature = "wgpu")]
    if s.registry.gpu.is_some() {
        return Err(ApiError::bad_request(
            "scoring runs on the candle devices; this process serves its models on wgpu",
        ));
    }
    let n = req.continuations.len();
    if n == 0 || n > MAX_SCORE_CONTINUATIONS {
        return Err(ApiError::bad_request(format!(
            "give 1 to {MAX_SCORE_CONTINUATIONS} continuations (got {n})"
        )));
    }
    if let Some(i) = req.continuations.iter().position(String::is_empty) {
        return Err(ApiError::bad_request(format!("continuation {i} is empty")));
    }
    let permit = admit(&s)?;
    metrics::counter!("expert_score_requests_total", "mode" => req.mode.name()).increment(1);
    let registry = s.registry.clone();
    let out = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        score(&registry, &req)
    })
    .await
    .map_err(|e| ApiError::internal(format!("scoring failed: {e}")))??;
    Ok(Json(out))
}

fn score(s: &Registry, req: &ScoreRequest) -> std::result::Result<ScoreResponse, ApiError> {
    let fusion = bind(s, &req.mode)?;
    let first = fusion.models()[0];
    let text = prompt_text(first, req.prompt.as_deref(), req.messages.as_deref())?;
    let prompt_ids = first.tokenizer.encode(&text)?;
    // After a chat prompt the continuation is the whole assistant turn: its end counts.
    let continuations: Vec<Vec<u32>> = req
        .continuations
        .iter()
        .map(|c| {
            if req.messages.is_some() {
                first.answer_ids(c)
            } else {
                first.tokenizer.encode(c)
            }
        })
        .collect::<Result<_>>()?;
    let logprobs = score_continuations(&fusion, &prompt_ids, &continuations)?;
    let fed = prompt_ids.len() + continuations.iter().map(|c| c.len() - 1).sum::<usize>();
    Ok(ScoreResponse {
        scores: logprobs
            .iter()
            .map(|lp| {
                let logprob: f64 = lp.iter().map(|&x| f64::from(x)).sum();
                ContinuationScore {
                    logprob,
                    tokens: lp.len(),
                    mean_nll: -logprob / lp.len() as f64,
                }
            })
            .collect(),
        prompt_tokens: prompt_ids.len(),
        cost: Cost {
            forwards_per_token: fusion.cost(),
            total_token_forwards: (fed as f32 * fusion.cost()) as u64,
        },
    })
}

/// A queue place, or 503 at once when the queue is full.
fn admit(s: &ExpertState) -> std::result::Result<OwnedSemaphorePermit, ApiError> {
    s.queue.clone().try_acquire_owned().map_err(|_| {
        metrics::counter!("expert_rejected_total").increment(1);
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: ErrorBody::new(
                "the expert queue is full; retry shortly",
                "overloaded_error",
                "queue_full",
            ),
        }
    })
}

/// Admits a checked request (or answers 503 at once when the queue is full) and hands it
/// to the engine; the receiver yields its events.
fn submit(
    s: &ExpertState,
    request: ValidRequest,
    arrived: Instant,
) -> std::result::Result<UnboundedReceiver<Event>, ApiError> {
    s.registry.check_device()?;
    let permit = admit(s)?;
    metrics::counter!("expert_requests_total", "mode" => request.mode.name()).increment(1);
    let (events, rx) = mpsc::unbounded_channel();
    s.jobs
        .send(Job {
            request,
            events,
            arrived,
            permit,
        })
        .map_err(|_| ApiError::internal("the batching engine has stopped"))?;
    Ok(rx)
}

fn failed_body(message: String) -> ErrorBody {
    ErrorBody::new(message, "server_error", "generation_failed")
}

async fn generate_handler(
    State(s): State<Arc<ExpertState>>,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> std::result::Result<Response, ApiError> {
    let arrived = Instant::now();
    let stream = req.stream;
    let rx = submit(&s, validate(&s.registry, req)?, arrived)?;
    if stream {
        let events = futures_util::stream::unfold(rx, |mut rx| async move {
            let ev = match rx.recv().await? {
                Event::Token(t) => SseEvent::default().event("token").json_data(t),
                Event::Done(f) => SseEvent::default().event("done").json_data(f),
                Event::Failed(m) => SseEvent::default().event("error").json_data(failed_body(m)),
            }
            .unwrap_or_else(|_| {
                SseEvent::default()
                    .event("error")
                    .data("serialisation failed")
            });
            Some((Ok::<_, Infallible>(ev), rx))
        });
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let (text, record) = collect(rx).await?;
    Ok(Json(GenerateResponse { text, record }).into_response())
}

/// Waits for the whole generation.
async fn collect(
    mut rx: UnboundedReceiver<Event>,
) -> std::result::Result<(String, FinalRecord), ApiError> {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token(t) => text.push_str(&t.text),
            Event::Done(record) => return Ok((text, record)),
            Event::Failed(m) => {
                return Err(ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    body: failed_body(m),
                });
            }
        }
    }
    Err(ApiError::internal("generation ended without a result"))
}

/// `POST /v1/chat/completions` on one served model, in OpenAI's request and response
/// shapes (what OpenAI-compatible proxies expect of an upstream). Unknown fields are
/// ignored, as OpenAI-compatible servers do; fusion modes are reached through
/// `/v1/generate`.
#[derive(Debug, serde::Deserialize)]
struct OpenAiChatRequest {
    model: String,
    messages: Vec<OpenAiMessage>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<OpenAiStop>,
    #[serde(default)]
    stream: bool,
}

#[derive(Debug, serde::Deserialize)]
struct OpenAiMessage {
    role: String,
    content: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum OpenAiStop {
    One(String),
    Many(Vec<String>),
}

async fn chat_completions(
    State(s): State<Arc<ExpertState>>,
    ApiJson(req): ApiJson<OpenAiChatRequest>,
) -> std::result::Result<Response, ApiError> {
    let arrived = Instant::now();
    let defaults = protocol::Sampling::default();
    let sampling = protocol::Sampling {
        // OpenAI's default temperature is 1.
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p,
        seed: req.seed.unwrap_or(defaults.seed),
        max_tokens: req
            .max_completion_tokens
            .or(req.max_tokens)
            .unwrap_or(defaults.max_tokens),
        stop: match req.stop {
            None => Vec::new(),
            Some(OpenAiStop::One(s)) => vec![s],
            Some(OpenAiStop::Many(v)) => v,
        },
        ..defaults
    };
    let model = req.model.clone();
    let generate = GenerateRequest {
        mode: FusionMode::Single { model: req.model },
        prompt: None,
        messages: Some(
            req.messages
                .into_iter()
                .map(|m| protocol::ChatMessage {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
        ),
        sampling,
        stream: req.stream,
        return_routing_weights: false,
    };
    let rx = submit(&s, validate(&s.registry, generate)?, arrived)?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if req.stream {
        let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
            serde_json::json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
        };
        let first = chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        );
        let head = futures_util::stream::once(async move {
            Ok::<_, Infallible>(SseEvent::default().data(first.to_string()))
        });
        let body = futures_util::stream::unfold(Some(rx), move |rx| {
            let chunk = chunk.clone();
            async move {
                let mut rx = rx?;
                let (data, rx) = match rx.recv().await? {
                    Event::Token(t) => (
                        vec![chunk(serde_json::json!({"content": t.text}), None).to_string()],
                        Some(rx),
                    ),
                    Event::Done(f) => (
                        vec![
                            chunk(serde_json::json!({}), Some(&f.finish_reason)).to_string(),
                            "[DONE]".to_string(),
                        ],
                        None,
                    ),
                    Event::Failed(m) => (
                        vec![serde_json::json!({"error": failed_body(m).error}).to_string()],
                        None,
                    ),
                };
                let events = data
                    .into_iter()
                    .map(|d| Ok::<_, Infallible>(SseEvent::default().data(d)));
                Some((futures_util::stream::iter(events), rx))
            }
        })
        .flatten();
        return Ok(Sse::new(head.chain(body))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let (text, record) = collect(rx).await?;
    let usage = &record.usage;
    Ok(Json(serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": record.finish_reason,
        }],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }))
    .into_response())
}
