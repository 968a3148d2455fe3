//! Fusion of experts that share a tokenizer, token by token — the "merge" of
//! Branch-Train-Merge (Li et al., 2022, arXiv:2208.03306) and its routed variants:
//!
//! - `single(model)`: one expert, cost 1 forward per token;
//! - `ensemble(models, weights)`: the weighted mean of the experts' next-token probability
//!   distributions (probabilities, not logits);
//! - `btm_token(models, router)`: a small trained router (an MLP over the experts' final
//!   hidden states) gives per-token mixing weights; the distributions are mixed softly, or
//!   the top-1 expert's distribution is used alone (`hard`: "some tokens from A, some from B");
//! - `btm_layer(models, coefficients)`: for same-shaped experts, the residual streams are
//!   mixed after the embedding and after every layer with learned per-layer coefficients;
//!   expert 0's final norm and LM head read the mixed stream.
//!
//! Every mode reports its cost in model forwards per token (one per expert it runs). The
//! experts' forwards of one step run in parallel threads.

use std::path::Path as FsPath;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::error::{ExpertError, Result};
use crate::generate::{FinishReason, Generation, Sampler, SamplingParams, StopFilter};
use crate::loader::LoadedModel;
use crate::model::{KvCache, Path};
use crate::tokenizer::StreamDecoder;

/// The token-level router: `softmax(W2 · silu(W1 · [h_1; …; h_E] + b1) + b2)`, reading the
/// experts' final (normed) hidden states of the current position.
#[derive(Debug, Clone)]
pub struct TokenRouter {
    fc1: Linear,
    fc2: Linear,
    pub config: RouterConfig,
}

/// `router.json` of a router checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    pub kind: String,
    pub experts: Vec<String>,
    pub hidden_size: usize,
    pub router_hidden: usize,
}

impl TokenRouter {
    pub fn new(config: RouterConfig, vb: VarBuilder) -> Result<Self> {
        let e = config.experts.len();
        Ok(Self {
            fc1: candle_nn::linear(config.hidden_size * e, config.router_hidden, vb.pp("fc1"))?,
            fc2: candle_nn::linear(config.router_hidden, e, vb.pp("fc2"))?,
            config,
        })
    }

    /// Mixing weights `[n, experts]` from hidden states, each `[n, hidden]`.
    pub fn weights(&self, hidden: &[Tensor]) -> Result<Tensor> {
        let x = Tensor::cat(hidden, D::Minus1)?;
        let logits = self
            .fc2
            .forward(&candle_nn::ops::silu(&self.fc1.forward(&x)?)?)?;
        Ok(candle_nn::ops::softmax(&logits, D::Minus1)?)
    }

    /// A router that always gives all weight to expert `index` (for tests and for pinning).
    pub fn forced(config: RouterConfig, index: usize, device: &Device) -> Result<Self> {
        let e = config.experts.len();
        let zeros1 = Tensor::zeros(
            (config.router_hidden, config.hidden_size * e),
            DType::F32,
            device,
        )?;
        let b1 = Tensor::zeros(config.router_hidden, DType::F32, device)?;
        let w2 = Tensor::zeros((e, config.router_hidden), DType::F32, device)?;
        let mut b = vec![-1e4f32; e];
        if let Some(x) = b.get_mut(index) {
            *x = 1e4;
        }
        Ok(Self {
            fc1: Linear::new(zeros1, Some(b1)),
            fc2: Linear::new(w2, Some(Tensor::from_vec(b, e, device)?)),
            config,
        })
    }

    /// Loads `router.json` + `router.safetensors` from a directory.
    pub fn load(dir: &FsPath, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("router.json");
        let bytes = std::fs::read(&cfg_path).map_err(|e| ExpertError::io(&cfg_path, e))?;
        let config: RouterConfig = serde_json::from_slice(&bytes)
            .map_err(|e| ExpertError::model(&cfg_path, format!("bad router.json: {e}")))?;
        if config.kind != "btm_token" {
            return Err(ExpertError::model(
                &cfg_path,
                format!("kind {:?} is not btm_token", config.kind),
            ));
        }
        let w = dir.join("router.safetensors");
        let tensors = candle_core::safetensors::load(&w, device)
            .map_err(|e| ExpertError::model(&w, format!("corrupt safetensors: {e}")))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(config, vb).map_err(|e| {
            ExpertError::model(dir, format!("router weights do not fit router.json: {e}"))
        })
    }
}

/// Learned per-layer mixing coefficients for `btm_layer`: logits `[layers + 1, experts]`,
/// softmax over experts (row 0 mixes the embeddings, row `l` the output of layer `l`).
#[derive(Debug, Clone)]
pub struct LayerMixer {
    pub logits: Tensor,
    pub experts: Vec<String>,
}

impl LayerMixer {
    /// Mixing weights `[layers + 1, experts]`.
    pub fn weights(&self) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax(&self.logits, D::Minus1)?)
    }

    /// Fixed coefficients, the same at every layer (e.g. `[1, 0]` = expert 0 alone).
    pub fn constant(
        coefficients: &[f32],
        layers: usize,
        experts: Vec<String>,
        device: &Device,
    ) -> Result<Self> {
        let logs: Vec<f32> = coefficients
            .iter()
            .map(|&c| if c > 0.0 { c.ln() } else { -1e4 })
            .collect();
        let rows: Vec<f32> = (0..=layers).flat_map(|_| logs.clone()).collect();
        Ok(Self {
            logits: Tensor::from_vec(rows, (layers + 1, coefficients.len()), device)?,
            experts,
        })
    }

    /// Loads `mixer.json` + `mixer.safetensors` (tensor `logits`).
    pub fn load(dir: &FsPath, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("mixer.json");
        let bytes = std::fs::read(&cfg_path).map_err(|e| ExpertError::io(&cfg_path, e))?;
        let config: RouterConfig = serde_json::from_slice(&bytes)
            .map_err(|e| ExpertError::model(&cfg_path, format!("bad mixer.json: {e}")))?;
        let w = dir.join("mixer.safetensors");
        let tensors = candle_core::safetensors::load(&w, device)
            .map_err(|e| ExpertError::model(&w, format!("corrupt safetensors: {e}")))?;
        let logits = tensors
            .get("logits")
            .cloned()
            .ok_or_else(|| ExpertError::model(&w, "tensor `logits` is missing"))?;
        Ok(Self {
            logits,
            experts: config.experts,
        })
    }
}

/// A fusion mode bound to loaded models.
#[derive(Debug, Clone, Copy)]
pub enum Fusion<'a> {
    Single(&'a LoadedModel),
    Ensemble {
        models: &'a [&'a LoadedModel],
        weights: &'a [f32],
    },
    BtmToken {
        models: &'a [&'a LoadedModel],
        router: &'a TokenRouter,
        hard: bool,
    },
    BtmLayer {
        models: &'a [&'a LoadedModel],
        mixer: &'a LayerMixer,
    },
}

impl<'a> Fusion<'a> {
    pub fn models(&self) -> Vec<&'a LoadedModel> {
        match *self {
            Self::Single(m) => vec![m],
            Self::Ensemble { models, .. }
            | Self::BtmToken { models, .. }
            | Self::BtmLayer { models, .. } => models.to_vec(),
        }
    }

    /// Model forwards per token.
    pub fn cost(&self) -> f32 {
        self.models().len() as f32
    }

    fn validate(&self) -> Result<()> {
        let models = self.models();
        let bad = |m: String| Err(ExpertError::InvalidRequest(m));
        if models.is_empty() {
            return bad("no models".into());
        }
        let vocab = models[0].decoder.config().vocab_size;
        if models
            .iter()
            .any(|m| m.decoder.config().vocab_size != vocab)
        {
            return bad("fused experts must share a vocabulary".into());
        }
        match *self {
            Self::Ensemble { models, weights } => {
                if weights.len() != models.len()
                    || weights.iter().any(|w| !w.is_finite() || *w < 0.0)
                {
                    return bad(format!(
                        "need {} finite non-negative weights, got {weights:?}",
                        models.len()
                    ));
                }
                if weights.iter().sum::<f32>() <= 0.0 {
                    return bad("ensemble weights sum to zero".into());
                }
            }
            Self::BtmToken { models, router, .. } => {
                if router.config.experts.len() != models.len()
                    || models
                        .iter()
                        .any(|m| m.decoder.config().hidden_size != router.config.hidden_size)
                {
                    return bad(format!(
                        "router for {:?} (hidden {}) does not fit these experts",
                        router.config.experts, router.config.hidden_size
                    ));
                }
            }
            Self::BtmLayer { models, mixer } => {
                let c0 = models[0].decoder.config();
                if models.iter().any(|m| {
                    let c = m.decoder.config();
                    c.hidden_size != c0.hidden_size || c.num_hidden_layers != c0.num_hidden_layers
                }) {
                    return bad("btm_layer needs same-shaped experts".into());
                }
                if mixer.logits.dims() != [c0.num_hidden_layers + 1, models.len()] {
                    return bad(format!(
                        "coefficients of shape {:?} do not fit {} layers × {} experts",
                        mixer.logits.dims(),
                        c0.num_hidden_layers,
                        models.len()
                    ));
                }
            }
            Self::Single(_) => {}
        }
        Ok(())
    }
}

/// One fusion step's output: the next-token distribution and the mixing weights.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// `[vocab]` probabilities.
    pub probs: Tensor,
    /// Mixing weight of each expert at this step (empty for `single`).
    pub weights: Vec<f32>,
}

/// Runs the experts for one step on `ids` (`[1, t]`), each with its cache, returning for
/// the last position each expert's probabilities `[vocab]` and normed hidden state `[1, hidden]`.
fn expert_steps(
    models: &[&LoadedModel],
    caches: &mut [KvCache],
    ids: &[u32],
) -> Result<Vec<(Tensor, Tensor)>> {
    let run = |m: &LoadedModel, cache: &mut KvCache| -> Result<(Tensor, Tensor)> {
        let input = Tensor::new(ids, m.decoder.device())?.unsqueeze(0)?;
        let out = m
            .decoder
            .forward(&input, Some(cache), true, true, Path::Fused)?;
        let logits = out.logits.squeeze(0)?.squeeze(0)?.to_dtype(DType::F32)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        let hidden = out
            .hidden_states
            .and_then(|mut h| h.pop())
            .ok_or_else(|| ExpertError::InvalidRequest("no hidden state".into()))?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        Ok((probs, hidden))
    };
    if models.len() == 1 {
        return Ok(vec![run(models[0], &mut caches[0])?]);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = models
            .iter()
            .zip(caches.iter_mut())
            .map(|(m, c)| s.spawn(move || run(m, c)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| ExpertError::InvalidRequest("expert thread panicked".into()))?
            })
            .collect()
    })
}

/// The layer-mixed forward for `btm_layer`: returns the probabilities of the last position.
fn layer_mixed_step(
    models: &[&LoadedModel],
    caches: &mut [KvCache],
    mixer: &LayerMixer,
    ids: &[u32],
) -> Result<(Tensor, Vec<f32>)> {
    let device = models[0].decoder.device();
    let input = Tensor::new(ids, device)?.unsqueeze(0)?;
    let weights: Vec<Vec<f32>> = mixer.weights()?.to_vec2()?;
    let offset = caches[0].len();
    let mix = |streams: &[Tensor], row: &[f32]| -> Result<Tensor> {
        let mut acc = (&streams[0] * f64::from(row[0]))?;
        for (s, &w) in streams.iter().zip(row).skip(1) {
            acc = (acc + (s * f64::from(w))?)?;
        }
        Ok(acc)
    };
    let embeds: Vec<Tensor> = models
        .iter()
        .map(|m| m.decoder.embed(&input))
        .collect::<Result<_>>()?;
    let mut h = mix(&embeds, &weights[0])?;
    let layers = models[0].decoder.config().num_hidden_layers;
    for l in 0..layers {
        let outs: Vec<Tensor> = std::thread::scope(|s| {
            let handles: Vec<_> = models
                .iter()
                .zip(caches.iter_mut())
                .map(|(m, c)| {
                    let h = &h;
                    s.spawn(move || m.decoder.layer(l, h, Some(c), offset, Path::Fused))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| ExpertError::InvalidRequest("expert thread panicked".into()))?
                })
                .collect::<Result<Vec<_>>>()
        })?;
        h = mix(&outs, &weights[l + 1])?;
    }
    let t = h.dim(1)?;
    let last = h.narrow(1, t - 1, 1)?.contiguous()?;
    let logits = models[0]
        .decoder
        .head(&last, Path::Fused)?
        .squeeze(0)?
        .squeeze(0)?
        .to_dtype(DType::F32)?;
    // Report the mean coefficient of each expert over the layers.
    let e = models.len();
    let mean: Vec<f32> = (0..e)
        .map(|i| weights.iter().map(|r| r[i]).sum::<f32>() / weights.len() as f32)
        .collect();
    Ok((candle_nn::ops::softmax_last_dim(&logits)?, mean))
}

/// State of one fused sequence: the caches of its experts.
#[derive(Debug)]
pub struct FusedSequence<'a> {
    fusion: Fusion<'a>,
    caches: Vec<KvCache>,
}

impl<'a> FusedSequence<'a> {
    pub fn new(fusion: Fusion<'a>) -> Result<Self> {
        fusion.validate()?;
        let caches = fusion
            .models()
            .iter()
            .map(|m| m.decoder.new_cache())
            .collect();
        Ok(Self { fusion, caches })
    }

    /// Feeds `ids` (the prompt, then one token at a time) and returns the next-token
    /// distribution with the mixing weights.
    pub fn step(&mut self, ids: &[u32]) -> Result<StepOutput> {
        match self.fusion {
            Fusion::Single(m) => {
                let outs = expert_steps(&[m], &mut self.caches, ids)?;
                Ok(StepOutput {
                    probs: outs[0].0.clone(),
                    weights: Vec::new(),
                })
            }
            Fusion::Ensemble { models, weights } => {
                let outs = expert_steps(models, &mut self.caches, ids)?;
                let total: f32 = weights.iter().sum();
                let w: Vec<f32> = weights.iter().map(|x| x / total).collect();
                Ok(StepOutput {
                    probs: mix_probs(&outs, &w)?,
                    weights: w,
                })
            }
            Fusion::BtmToken {
                models,
                router,
                hard,
            } => {
                let outs = expert_steps(models, &mut self.caches, ids)?;
                let hidden: Vec<Tensor> = outs.iter().map(|(_, h)| h.clone()).collect();
                let mut w: Vec<f32> = router.weights(&hidden)?.squeeze(0)?.to_vec1()?;
                if hard {
                    let best = w
                        .iter()
                        .enumerate()
                        .fold(0, |b, (i, &x)| if x > w[b] { i } else { b });
                    w = (0..w.len())
                        .map(|i| f32::from(u8::from(i == best)))
                        .collect();
                }
                Ok(StepOutput {
                    probs: mix_probs(&outs, &w)?,
                    weights: w,
                })
            }
            Fusion::BtmLayer { models, mixer } => {
                let (probs, weights) = layer_mixed_step(models, &mut self.caches, mixer, ids)?;
                Ok(StepOutput { probs, weights })
            }
        }
    }
}

fn mix_probs(outs: &[(Tensor, Tensor)], w: &[f32]) -> Result<Tensor> {
    let mut acc = (&outs[0].0 * f64::from(w[0]))?;
    for ((p, _), &wi) in outs.iter().zip(w).skip(1) {
        acc = (acc + (p * f64::from(wi))?)?;
    }
    Ok(acc)
}

/// The shortest context of `models`, or an error when a prompt of `prompt_len` tokens
/// leaves no room to generate in it.
pub fn check_prompt_fits(models: &[&LoadedModel], prompt_len: usize) -> Result<usize> {
    let ctx = models
        .iter()
        .map(|m| m.decoder.config().max_position_embeddings)
        .min()
        .unwrap_or(0);
    if prompt_len >= ctx {
        return Err(ExpertError::InvalidRequest(format!(
            "the prompt has {prompt_len} tokens; the model's context is {ctx}"
        )));
    }
    Ok(ctx)
}

/// A fused generation: the text plus per-token mixing weights.
#[derive(Debug, Clone)]
pub struct FusedGeneration {
    pub generation: Generation,
    pub routing_weights: Vec<Vec<f32>>,
    pub cost: f32,
}

/// Generates with a fusion mode. Sampling reads `ln p` of the mixed distribution as its
/// logits (greedy takes its arg-max; temperature `T` samples from `p^(1/T)` renormalised).
/// `on_text(piece, weights)` receives each completed text piece and returns false to stop.
pub fn generate_fused(
    fusion: Fusion<'_>,
    prompt_ids: &[u32],
    params: &SamplingParams,
    mut on_text: impl FnMut(&str, &[f32]) -> bool,
) -> Result<FusedGeneration> {
    params.validate()?;
    if prompt_ids.is_empty() {
        return Err(ExpertError::InvalidRequest("the prompt is empty".into()));
    }
    let models = fusion.models();
    let first = models
        .first()
        .copied()
        .ok_or_else(|| ExpertError::InvalidRequest("no models".into()))?;
    let ctx = check_prompt_fits(&models, prompt_ids.len())?;
    let eos: Vec<u32> = models
        .iter()
        .flat_map(|m| m.eos_token_ids.iter().copied())
        .collect();
    let max_new = params.max_tokens.min(ctx - prompt_ids.len());
    let mut seq = FusedSequence::new(fusion)?;
    let mut sampler = Sampler::new(params);
    let mut history = prompt_ids.to_vec();
    let mut tokens = Vec::new();
    let mut weights_log = Vec::new();
    let mut stream = StreamDecoder::default();
    let mut stop = StopFilter::new(params.stop.clone());
    let mut text = String::new();
    let mut finish = FinishReason::Length;

    let started = std::time::Instant::now();
    let mut out = seq.step(prompt_ids)?;
    let prefill_seconds = started.elapsed().as_secs_f64();
    let decode_started = std::time::Instant::now();
    for step in 0..max_new {
        let logp = out.probs.clamp(1e-30f32, 1.0f32)?.log()?;
        let next = sampler.sample(&logp, &history)?;
        if eos.contains(&next) {
            finish = FinishReason::Stop;
            break;
        }
        tokens.push(next);
        history.push(next);
        weights_log.push(out.weights.clone());
        if let Some(piece) = stream.push(&first.tokenizer, next)? {
            let (safe, hit) = stop.push(&piece);
            text.push_str(&safe);
            let keep_going = safe.is_empty() || on_text(&safe, &out.weights);
            if hit {
                finish = FinishReason::Stop;
                break;
            }
            if !keep_going {
                finish = FinishReason::Cancelled;
                break;
            }
        }
        if step + 1 == max_new {
            break;
        }
        out = seq.step(&[next])?;
    }
    if finish != FinishReason::Stop || params.stop.is_empty() {
        let rest = stop.finish();
        if !rest.is_empty() {
            text.push_str(&rest);
            on_text(&rest, &[]);
        }
    }
    Ok(FusedGeneration {
        cost: fusion.cost(),
        routing_weights: weights_log,
        generation: Generation {
            text,
            tokens,
            prompt_tokens: prompt_ids.len(),
            finish_reason: finish,
            prefill_seconds,
            decode_seconds: decode_started.elapsed().as_secs_f64(),
        },
    })
}

/// Creates an untrained router's variables (for training).
pub fn new_router_vars(
    config: &RouterConfig,
    varmap: &VarMap,
    device: &Device,
) -> Result<TokenRouter> {
    let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
    TokenRouter::new(config.clone(), vb)
}
