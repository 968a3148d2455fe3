//! Wire types between the gateway and the expert processes.
//!
//! The expert process (`expert serve`) answers:
//! - `GET /health`: `200 {"status":"ok"}` once its models are loaded, `503` before;
//! - `GET /v1/models`: [`ModelList`];
//! - `POST /v1/generate` with a [`GenerateRequest`]: with `stream: false`, one
//!   [`GenerateResponse`]; with `stream: true`, server-sent events: `event: token` with a
//!   [`TokenEvent`] per generated piece of text, then one `event: done` with a
//!   [`FinalRecord`] (or `event: error` with an [`ErrorBody`]);
//! - `POST /v1/score` with a [`ScoreRequest`]: one [`ScoreResponse`], the log-likelihood of
//!   each continuation under the fusion mode;
//! - `GET /metrics`: Prometheus text.
//!
//! Errors are `{"error": {"message", "type", "code"}}` ([`ErrorBody`]) with a 4xx/5xx status.
//!
//! [`quality`] holds the pure-text eval metrics both sides use (no model code).

use serde::{Deserialize, Serialize};

pub mod quality;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// How the experts produce each token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FusionMode {
    /// One expert alone: cost 1 forward per token.
    Single { model: String },
    /// Weighted mix of the experts' next-token distributions (weights normalised; default
    /// equal): one forward per expert per token. `mix` says in which space (see [`Mix`]).
    Ensemble {
        models: Vec<String>,
        #[serde(default)]
        weights: Option<Vec<f32>>,
        #[serde(default, skip_serializing_if = "Mix::is_linear")]
        mix: Mix,
    },
    /// A trained router reads the experts' final hidden states and mixes their
    /// distributions per token (`hard`: the top-1 expert's distribution alone).
    BtmToken {
        models: Vec<String>,
        /// Name of a router the process loaded; the process default when absent.
        #[serde(default)]
        router: Option<String>,
        #[serde(default)]
        hard: bool,
    },
    /// Per-layer mixing of the hidden states of same-shaped experts with learned
    /// coefficients, one shared head.
    BtmLayer {
        models: Vec<String>,
        #[serde(default)]
        coefficients: Option<String>,
    },
    /// Lazy token-level deferral (after Co-LLM): `models[0]` decodes every token; where a
    /// trained deferral head on its hidden state gives at least `threshold`, the token comes
    /// from `models[1]`, whose cache then catches up on the tokens it skipped. Cost: one
    /// forward per token plus the catch-up.
    Defer {
        models: Vec<String>,
        /// Name of a deferral head the process loaded; the one trained for these experts,
        /// else the process default, when absent.
        #[serde(default)]
        head: Option<String>,
        /// η in [0, 1]: lower defers more (0 always, above the head's maximum never).
        #[serde(default = "default_defer_threshold")]
        threshold: f32,
    },
}

/// The `defer` threshold when none is given.
pub const DEFAULT_DEFER_THRESHOLD: f32 = 0.5;

fn default_defer_threshold() -> f32 {
    DEFAULT_DEFER_THRESHOLD
}

/// How an ensemble mixes its experts' distributions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mix {
    /// The weighted mean of the probabilities, `Σ wᵢ pᵢ`: a token one expert is sure of
    /// wins even where the others find it implausible (the sharper expert leads).
    #[default]
    Linear,
    /// The weighted geometric mean, renormalised: `softmax(Σ wᵢ log pᵢ)`, which equals the
    /// softmax of the weighted mean of the logits (a product of experts). A token wins
    /// only where the weighted majority finds it plausible.
    Log,
}

impl Mix {
    pub fn is_linear(&self) -> bool {
        *self == Self::Linear
    }
}

impl FusionMode {
    /// The models the mode runs.
    pub fn models(&self) -> Vec<&str> {
        match self {
            Self::Single { model } => vec![model.as_str()],
            Self::Ensemble { models, .. }
            | Self::BtmToken { models, .. }
            | Self::BtmLayer { models, .. }
            | Self::Defer { models, .. } => models.iter().map(String::as_str).collect(),
        }
    }

    /// The mode's name as used in metrics and routing records.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Single { .. } => "single",
            Self::Ensemble { .. } => "ensemble",
            Self::BtmToken { .. } => "btm_token",
            Self::BtmLayer { .. } => "btm_layer",
            Self::Defer { .. } => "defer",
        }
    }
}

/// Sampling parameters. Defaults: greedy, 128 tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    /// 0 is greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    /// 1.0 is none.
    pub repetition_penalty: f32,
    pub seed: u64,
    pub max_tokens: usize,
    pub stop: Vec<String>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
            max_tokens: 128,
            stop: Vec::new(),
        }
    }
}

/// `POST /v1/generate`. Exactly one of `prompt` (raw text) and `messages` (rendered with
/// the model's chat template) must be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub mode: FusionMode,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub sampling: Sampling,
    #[serde(default)]
    pub stream: bool,
    /// Return the per-token mixing weights (fusion modes).
    #[serde(default)]
    pub return_routing_weights: bool,
}

/// One streamed piece of text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenEvent {
    pub text: String,
    /// Mixing weight of each expert for the token(s) behind this piece, when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f32>>,
}

/// Token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Inference cost in model forwards.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Cost {
    /// Model forwards per generated token: 1 for one expert, 2 for two fused experts.
    pub forwards_per_token: f32,
    /// Token-forwards spent in all: (prompt + completion tokens) × forwards per token.
    pub total_token_forwards: u64,
}

/// Where the time went.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// Why generation ended: `stop` (EOS or stop string), `length`, `cancelled`.
pub type FinishReason = String;

/// The last event of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalRecord {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub cost: Cost,
    pub timings: Timings,
    /// Per generated token, the mixing weight of each expert (when asked, fusion modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_weights: Option<Vec<Vec<f32>>>,
}

/// Answer of a non-streamed `POST /v1/generate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateResponse {
    pub text: String,
    #[serde(flatten)]
    pub record: FinalRecord,
}

/// Most continuations one `POST /v1/score` accepts.
pub const MAX_SCORE_CONTINUATIONS: usize = 32;

/// `POST /v1/score`: the log-likelihood of each continuation after a prompt under a fusion
/// mode, by teacher forcing (no sampling). Exactly one of `prompt` (raw text) and `messages`
/// (rendered with the first model's chat template, an assistant turn opened) must be given;
/// after `messages` each continuation is scored as the whole assistant turn, its
/// end-of-turn token included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    pub mode: FusionMode,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// 1 to [`MAX_SCORE_CONTINUATIONS`] non-empty texts.
    pub continuations: Vec<String>,
}

/// The score of one continuation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContinuationScore {
    /// Sum of the tokens' natural-log probabilities.
    pub logprob: f64,
    /// Tokens scored (the end-of-turn token included after `messages`).
    pub tokens: usize,
    /// `-logprob / tokens`: what ranks continuations of different lengths.
    pub mean_nll: f64,
}

/// Answer of `POST /v1/score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResponse {
    /// In the order of the request's continuations.
    pub scores: Vec<ContinuationScore>,
    /// The prompt's tokens.
    pub prompt_tokens: usize,
    /// Forwards per token of the mode and the token-forwards spent.
    pub cost: Cost,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub owned_by: String,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// The error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: String,
}

/// `{"error": {...}}`, OpenAI style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ErrorBody {
    pub fn new(message: impl Into<String>, kind: &str, code: &str) -> Self {
        Self {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.into(),
                code: code.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_reject_unknown_fields() {
        let j = r#"{"mode":{"type":"ensemble","models":["a","b"],"weights":[1,0]},"prompt":"hi","sampling":{"max_tokens":4}}"#;
        let r: GenerateRequest = serde_json::from_str(j).unwrap();
        assert_eq!(r.mode.models(), ["a", "b"]);
        assert_eq!(r.sampling.max_tokens, 4);
        let back: GenerateRequest =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(
            serde_json::from_str::<GenerateRequest>(
                r#"{"mode":{"type":"single","model":"a"},"promt":"x"}"#
            )
            .is_err()
        );
        assert!(serde_json::from_str::<GenerateRequest>(r#"{"mode":{"type":"magic"}}"#).is_err());
    }
}
