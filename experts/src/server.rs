//! The expert process: an HTTP server over loaded models (see the `protocol` crate for the
//! wire format).
//!
//! Admission: at most `max_queue` requests are admitted at once; one more gets `503` with
//! `Retry-After` at once. Admitted requests wait for one of `workers` decode slots; each
//! generation runs on a blocking thread and streams its pieces through a channel. When the
//! client goes away the channel closes, the generation stops at its next token and its KV
//! cache is dropped. SIGTERM stops accepting connections and lets running streams finish.
//!
//! Not yet here: continuous batching across requests at the decode step (requests decode
//! concurrently on separate threads, each with its own cache).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use candle_core::{DType, Device};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use protocol::{
    Cost, ErrorBody, FinalRecord, FusionMode, GenerateRequest, GenerateResponse, ModelCard,
    ModelList, Timings, TokenEvent, Usage,
};
use tokio::sync::{Semaphore, mpsc};

use crate::chat::ChatMessage;
use crate::error::{ExpertError, Result};
use crate::fusion::{
    FusedGeneration, Fusion, LayerMixer, TokenRouter, check_prompt_fits, generate_fused,
};
use crate::generate::{FinishReason, SamplingParams};
use crate::loader::{LoadedModel, load_model};
use crate::serve_config::ServeConfig;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// Everything the handlers share.
#[derive(Debug)]
pub struct ExpertState {
    pub models: BTreeMap<String, Arc<LoadedModel>>,
    pub routers: HashMap<String, Arc<TokenRouter>>,
    pub mixers: HashMap<String, Arc<LayerMixer>>,
    queue: Arc<Semaphore>,
    workers: Arc<Semaphore>,
    ready: AtomicBool,
    metrics: Option<PrometheusHandle>,
}

impl ExpertState {
    /// Loads every model, router and mixer the config names.
    pub fn load(cfg: &ServeConfig) -> Result<Self> {
        let device = cfg.device()?;
        let dtype = if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        };
        let mut models = BTreeMap::new();
        for (name, dir) in &cfg.models {
            let mut m = load_model(dir, dtype, &device)?;
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
        Ok(Self {
            models,
            routers,
            mixers,
            queue: Arc::new(Semaphore::new(cfg.max_queue)),
            workers: Arc::new(Semaphore::new(cfg.workers)),
            ready: AtomicBool::new(true),
            metrics: PrometheusBuilder::new().install_recorder().ok(),
        })
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
}

impl From<ExpertError> for ApiError {
    fn from(e: ExpertError) -> Self {
        match e {
            ExpertError::InvalidRequest(m) => Self::bad_request(m),
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
        .route("/metrics", get(metrics_handler))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn health(State(s): State<Arc<ExpertState>>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        Json(serde_json::json!({"status": "ok", "models": s.models.keys().collect::<Vec<_>>()}))
            .into_response()
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

/// A request checked against what this process serves.
struct ValidRequest {
    mode: FusionMode,
    prompt_ids: Vec<u32>,
    params: SamplingParams,
    stream: bool,
    weights: bool,
}

fn validate(s: &ExpertState, req: GenerateRequest) -> std::result::Result<ValidRequest, ApiError> {
    let names = req.mode.models();
    if names.is_empty() {
        return Err(ApiError::bad_request("the mode names no models"));
    }
    let mut models = Vec::new();
    for n in &names {
        let m = s.models.get(*n).ok_or_else(|| {
            ApiError::bad_request(format!(
                "model {n:?} is not served here (available: {:?})",
                s.models.keys().collect::<Vec<_>>()
            ))
        })?;
        models.push(m);
    }
    match &req.mode {
        FusionMode::BtmToken { router, .. } => {
            let name = router.as_deref().unwrap_or("default");
            if !s.routers.contains_key(name) {
                return Err(ApiError::bad_request(format!(
                    "no btm_token router {name:?} is loaded (train one with train_router)"
                )));
            }
        }
        FusionMode::BtmLayer { coefficients, .. } => {
            let name = coefficients.as_deref().unwrap_or("default");
            if !s.mixers.contains_key(name) {
                return Err(ApiError::bad_request(format!(
                    "no btm_layer coefficients {name:?} are loaded (train them with train_router)"
                )));
            }
        }
        _ => {}
    }
    let first = models[0];
    let text = match (&req.prompt, &req.messages) {
        (Some(p), None) => {
            if p.is_empty() {
                return Err(ApiError::bad_request("the prompt is empty"));
            }
            p.clone()
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
    };
    let prompt_ids = first.tokenizer.encode(&text)?;
    let params = SamplingParams::from(&req.sampling);
    params.validate()?;
    let models: Vec<&LoadedModel> = models.iter().map(|m| m.as_ref()).collect();
    check_prompt_fits(&models, prompt_ids.len())?;
    Ok(ValidRequest {
        mode: req.mode,
        prompt_ids,
        params,
        stream: req.stream,
        weights: req.return_routing_weights,
    })
}

/// Raises a gauge while alive (requests admitted, sequences decoding).
struct GaugeGuard(&'static str);

impl GaugeGuard {
    fn new(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

enum Msg {
    Token(TokenEvent),
    Done(FinalRecord),
    Error(ErrorBody),
}

fn run_generation(
    s: &ExpertState,
    req: &ValidRequest,
    tx: &mpsc::Sender<Msg>,
) -> Result<FusedGeneration> {
    let models: Vec<&LoadedModel> = req
        .mode
        .models()
        .iter()
        .filter_map(|n| s.models.get(*n).map(|m| m.as_ref()))
        .collect();
    let weights_default;
    let fusion = match &req.mode {
        FusionMode::Single { .. } => Fusion::Single(models[0]),
        FusionMode::Ensemble { weights, .. } => {
            weights_default = weights.clone().unwrap_or_else(|| vec![1.0; models.len()]);
            Fusion::Ensemble {
                models: &models,
                weights: &weights_default,
            }
        }
        FusionMode::BtmToken { router, hard, .. } => Fusion::BtmToken {
            models: &models,
            router: s
                .routers
                .get(router.as_deref().unwrap_or("default"))
                .ok_or_else(|| ExpertError::InvalidRequest("router vanished".into()))?,
            hard: *hard,
        },
        FusionMode::BtmLayer { coefficients, .. } => Fusion::BtmLayer {
            models: &models,
            mixer: s
                .mixers
                .get(coefficients.as_deref().unwrap_or("default"))
                .ok_or_else(|| ExpertError::InvalidRequest("coefficients vanished".into()))?,
        },
    };
    let want_weights = req.weights && !matches!(req.mode, FusionMode::Single { .. });
    generate_fused(fusion, &req.prompt_ids, &req.params, |piece, w| {
        let ev = TokenEvent {
            text: piece.to_string(),
            weights: (want_weights && !w.is_empty()).then(|| w.to_vec()),
        };
        tx.blocking_send(Msg::Token(ev)).is_ok()
    })
}

fn final_record(g: &FusedGeneration, want_weights: bool, queue_ms: f64) -> FinalRecord {
    let gen_ = &g.generation;
    let n = gen_.prompt_tokens + gen_.tokens.len();
    FinalRecord {
        finish_reason: match gen_.finish_reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
        .into(),
        usage: Usage {
            prompt_tokens: gen_.prompt_tokens,
            completion_tokens: gen_.tokens.len(),
        },
        cost: Cost {
            forwards_per_token: g.cost,
            total_token_forwards: (n as f64 * f64::from(g.cost)) as u64,
        },
        timings: Timings {
            queue_ms,
            prefill_ms: gen_.prefill_seconds * 1e3,
            decode_ms: gen_.decode_seconds * 1e3,
        },
        routing_weights: (want_weights && g.cost > 1.0).then(|| g.routing_weights.clone()),
    }
}

async fn generate_handler(
    State(s): State<Arc<ExpertState>>,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> std::result::Result<Response, ApiError> {
    let arrived = Instant::now();
    let req = validate(&s, req)?;
    let Ok(queue_permit) = s.queue.clone().try_acquire_owned() else {
        metrics::counter!("expert_rejected_total").increment(1);
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: ErrorBody::new(
                "the expert queue is full; retry shortly",
                "overloaded_error",
                "queue_full",
            ),
        });
    };
    let mode = req.mode.name();
    metrics::counter!("expert_requests_total", "mode" => mode).increment(1);
    let (tx, mut rx) = mpsc::channel::<Msg>(64);
    let state = s.clone();
    let stream = req.stream;
    tokio::spawn(async move {
        let _queue_permit = queue_permit;
        let _admitted = GaugeGuard::new("expert_admitted_requests");
        let Ok(_worker) = state.workers.clone().acquire_owned().await else {
            return;
        };
        let _active = GaugeGuard::new("expert_active_sequences");
        let queue_ms = arrived.elapsed().as_secs_f64() * 1e3;
        let st = state.clone();
        let result = tokio::task::spawn_blocking(move || {
            let r = run_generation(&st, &req, &tx);
            (r, tx, req.weights)
        })
        .await;
        let Ok((result, tx, weights)) = result else {
            return;
        };
        let msg = match result {
            Ok(g) => {
                if g.generation.finish_reason == FinishReason::Cancelled {
                    metrics::counter!("expert_cancelled_total").increment(1);
                }
                metrics::counter!("expert_generated_tokens_total", "mode" => mode)
                    .increment(g.generation.tokens.len() as u64);
                metrics::histogram!("expert_request_seconds", "mode" => mode)
                    .record(arrived.elapsed().as_secs_f64());
                Msg::Done(final_record(&g, weights, queue_ms))
            }
            Err(e) => {
                let api: ApiError = e.into();
                Msg::Error(api.body)
            }
        };
        let _ = tx.send(msg).await;
    });

    if stream {
        let events = futures_util::stream::unfold(rx, |mut rx| async move {
            let msg = rx.recv().await?;
            let ev = match &msg {
                Msg::Token(t) => Event::default().event("token").json_data(t),
                Msg::Done(f) => Event::default().event("done").json_data(f),
                Msg::Error(e) => Event::default().event("error").json_data(e),
            }
            .unwrap_or_else(|_| Event::default().event("error").data("serialisation failed"));
            Some((Ok::<_, Infallible>(ev), rx))
        });
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let mut text = String::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Token(t) => text.push_str(&t.text),
            Msg::Done(record) => return Ok(Json(GenerateResponse { text, record }).into_response()),
            Msg::Error(body) => {
                return Err(ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    body,
                });
            }
        }
    }
    Err(ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        body: ErrorBody::new(
            "generation ended without a result",
            "server_error",
            "internal",
        ),
    })
}
