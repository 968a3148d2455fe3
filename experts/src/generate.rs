//! Token-by-token generation for one sequence: prefill, then decode with the KV cache;
//! greedy or sampled (temperature, top-k, top-p, repetition penalty, seed); ends at EOS,
//! at a stop string or at `max_tokens`; streams text pieces as they complete.

use candle_core::{D, DType, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};

use crate::error::{ExpertError, Result};
use crate::loader::LoadedModel;
use crate::model::Path;

/// Sampling parameters of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    /// 1.0 means none.
    pub repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
    pub max_tokens: usize,
    /// Generation stops before the first occurrence of any of these.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
            max_tokens: 128,
            stop: Vec::new(),
        }
    }
}

impl From<&protocol::Sampling> for SamplingParams {
    fn from(s: &protocol::Sampling) -> Self {
        Self {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            repetition_penalty: s.repetition_penalty,
            seed: s.seed,
            max_tokens: s.max_tokens,
            stop: s.stop.clone(),
            ..Self::default()
        }
    }
}

/// The largest `max_tokens` a request may ask for.
pub const MAX_TOKENS_LIMIT: usize = 32_768;

impl SamplingParams {
    /// Checks every value.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ExpertError::InvalidRequest(m));
        if !(self.temperature.is_finite() && (0.0..=100.0).contains(&self.temperature)) {
            return bad(format!(
                "temperature {} must be in [0, 100]",
                self.temperature
            ));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad(format!("top_p {p} must be in (0, 1]"));
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty {} must be positive",
                self.repetition_penalty
            ));
        }
        if self.max_tokens == 0 || self.max_tokens > MAX_TOKENS_LIMIT {
            return bad(format!(
                "max_tokens {} must be in [1, {MAX_TOKENS_LIMIT}]",
                self.max_tokens
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }

    /// Whether the next token is the arg-max of the distribution alone (no temperature, no
    /// repetition penalty): a device can then pick it without sending the distribution back.
    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-7 && (self.repetition_penalty - 1.0).abs() <= f32::EPSILON
    }

    fn sampling(&self) -> Sampling {
        if self.temperature < 1e-7 {
            return Sampling::ArgMax;
        }
        let temperature = self.temperature;
        match (self.top_k, self.top_p) {
            (None, None) => Sampling::All { temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        }
    }
}

/// Picks next tokens from logits under one request's parameters.
pub struct Sampler {
    processor: LogitsProcessor,
    params: SamplingParams,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("params", &self.params)
            .finish()
    }
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Self {
        Self {
            processor: LogitsProcessor::from_sampling(params.seed, params.sampling()),
            params: params.clone(),
        }
    }

    /// Samples from logits `[vocab]` given the tokens so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32> {
        let logits = logits.to_dtype(DType::F32)?;
        let logits = if (self.params.repetition_penalty - 1.0).abs() > f32::EPSILON {
            let start = history.len().saturating_sub(self.params.repeat_last_n);
            candle_transformers::utils::apply_repeat_penalty(
                &logits,
                self.params.repetition_penalty,
                &history[start..],
            )?
        } else {
            logits
        };
        Ok(self.processor.sample(&logits)?)
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The consumer asked to stop (e.g. the client went away).
    Cancelled,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish_reason: FinishReason,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

/// Holds back streamed text that might be the start of a stop string.
#[derive(Debug, Default)]
pub(crate) struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    pub(crate) fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            pending: String::new(),
        }
    }

    /// Feeds a piece; returns (text safe to emit, whether a stop string was hit).
    pub(crate) fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..pos].to_string();
            self.pending.clear();
            return (out, true);
        }
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.pending.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Generates a continuation of `prompt_ids` with one model. `on_text` receives each
/// completed text piece and returns `false` to stop early. (This is the `single` fusion
/// mode; see [`crate::fusion::generate_fused`].)
pub fn generate(
    model: &LoadedModel,
    prompt_ids: &[u32],
    params: &SamplingParams,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    Ok(crate::fusion::generate_fused(
        crate::fusion::Fusion::Single(model),
        prompt_ids,
        params,
        |piece, _| on_text(piece),
    )?
    .generation)
}

/// Greedy decoding of a batch of equally long prompts as one `[batch, 1]` step per token
/// (used by the benchmark and by evaluation). Returns the generated ids of each sequence.
pub fn greedy_batch(
    model: &LoadedModel,
    prompts: &[Vec<u32>],
    new_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let len = prompts.first().map_or(0, Vec::len);
    if len == 0 || prompts.iter().any(|p| p.len() != len) {
        return Err(ExpertError::InvalidRequest(
            "batch prompts must be non-empty and equally long".into(),
        ));
    }
    let device = model.decoder.device();
    let b = prompts.len();
    let flat: Vec<u32> = prompts.iter().flatten().copied().collect();
    let mut cache = model.decoder.new_cache();
    let mut input = Tensor::from_vec(flat, (b, len), device)?;
    let mut out = vec![Vec::with_capacity(new_tokens); b];
    for _ in 0..new_tokens {
        let logits = model
            .decoder
            .forward(&input, Some(&mut cache), true, false, Path::Fused)?
            .logits;
        let next: Vec<u32> = logits.squeeze(1)?.argmax(D::Minus1)?.to_vec1()?;
        for (o, &t) in out.iter_mut().zip(&next) {
            o.push(t);
        }
        input = Tensor::from_vec(next, (b, 1), device)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_filter_holds_back_prefixes() {
        let mut f = StopFilter {
            stops: vec!["<END>".into()],
            ..StopFilter::default()
        };
        assert_eq!(f.push("abc<E"), ("abc".to_string(), false));
        assert_eq!(f.push("N"), (String::new(), false));
        assert_eq!(f.push("D>tail"), (String::new(), true));
        let mut f = StopFilter {
            stops: vec!["<END>".into()],
            ..StopFilter::default()
        };
        assert_eq!(f.push("a<"), ("a".to_string(), false));
        assert_eq!(f.push("b"), ("<b".to_string(), false));
    }

    #[test]
    fn bad_params_are_rejected() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: Some(1.5),
                ..Default::default()
            },
            SamplingParams {
                max_tokens: 0,
                ..Default::default()
            },
            SamplingParams {
                top_k: Some(0),
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(p.validate().is_err(), "{p:?}");
        }
        assert!(SamplingParams::default().validate().is_ok());
    }
}
