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
//!   each expert's final norm and LM head read the mixed stream and their logits are mixed
//!   with the last layer's coefficients (so `(0, 1)` everywhere is exactly expert 1).
//!
//! Every mode reports its cost in model forwards per token (one per expert it runs). The
//! experts' forwards of one step run in parallel threads.

use std::path::Path as FsPath;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use protocol::Mix;

use crate::backend::{Mixing, fused_step, normalised, one_hot_argmax};
use crate::defer::DeferralHead;
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

    /// The router's MLP as weights of the generic fusion step.
    pub(crate) fn candle_weights(&self) -> crate::backend::RouterWeights<crate::model::CandleOps> {
        crate::model::router_weights(&self.fc1, &self.fc2)
    }

    /// The router's layers `(fc1, fc2)`, for uploading to another device.
    pub fn layers(&self) -> (&Linear, &Linear) {
        (&self.fc1, &self.fc2)
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
#[derive(Debug, Clone)]
pub enum Fusion<'a> {
    Single(&'a LoadedModel),
    Ensemble {
        models: Vec<&'a LoadedModel>,
        weights: Vec<f32>,
        mix: Mix,
    },
    BtmToken {
        models: Vec<&'a LoadedModel>,
        router: &'a TokenRouter,
        hard: bool,
    },
    BtmLayer {
        models: Vec<&'a LoadedModel>,
        mixer: &'a LayerMixer,
    },
    /// Lazy token-level deferral ([`crate::defer`]): `models[0]` decodes; where the head's
    /// deferral probability is at least `threshold`, `models[1]`'s distribution is used and
    /// its cache catches up on the tokens it skipped. `lazy: false` runs `models[1]` at
    /// every step (the same tokens at twice the cost: the reference the lazy path is tested
    /// against).
    Defer {
        models: Vec<&'a LoadedModel>,
        head: &'a DeferralHead,
        threshold: f32,
        lazy: bool,
    },
}

impl<'a> Fusion<'a> {
    /// The experts this mode runs, in order.
    pub fn models(&self) -> &[&'a LoadedModel] {
        match self {
            Self::Single(m) => std::slice::from_ref(m),
            Self::Ensemble { models, .. }
            | Self::BtmToken { models, .. }
            | Self::BtmLayer { models, .. }
            | Self::Defer { models, .. } => models,
        }
    }

    /// Model forwards per token (for `defer`, at most: a generation reports what it spent).
    pub fn cost(&self) -> f32 {
        self.models().len() as f32
    }

    /// Checks that the experts fit together and fit the mode's router or coefficients.
    pub fn validate(&self) -> Result<()> {
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
        match self {
            Self::Ensemble {
                models, weights, ..
            } => {
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
            Self::Defer {
                models,
                head,
                threshold,
                ..
            } => {
                if models.len() != 2 {
                    return bad(format!("defer fuses two experts, not {}", models.len()));
                }
                if head.config.hidden_size != models[0].decoder.config().hidden_size {
                    return bad(format!(
                        "deferral head for {:?} (hidden {}) does not fit these experts",
                        head.config.experts, head.config.hidden_size
                    ));
                }
                if !(0.0..=1.0).contains(threshold) {
                    return bad(format!("defer threshold {threshold} is not in [0, 1]"));
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
    /// Mixing weight of each expert at this step (empty for `single`; for `defer` 1 on the
    /// expert whose distribution was used).
    pub weights: Vec<f32>,
    /// `defer`: tokens the deferred-to expert was fed at this step (its catch-up, the
    /// prompt included on its first turn); 0 for the other modes.
    pub catch_up: usize,
}

/// What one expert gives a sequence at one step.
#[derive(Debug, Clone)]
struct ExpertOut {
    /// `[vocab]` probabilities of the next token.
    probs: Tensor,
    /// `[vocab]` logits (f32) of the next token (what a log-space ensemble mixes).
    logits: Tensor,
    /// The final normed hidden state `[1, hidden]` (what the token router reads).
    hidden: Tensor,
}

/// Runs `jobs` on scoped threads (one per job; inline when there is one) and collects
/// their results in order.
fn in_parallel<T: Send, R: Send>(
    jobs: Vec<T>,
    run: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    if jobs.len() == 1 {
        return jobs.into_iter().map(&run).collect();
    }
    std::thread::scope(|s| {
        let run = &run;
        let handles: Vec<_> = jobs.into_iter().map(|j| s.spawn(move || run(j))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| ExpertError::InvalidRequest("expert thread panicked".into()))?
            })
            .collect()
    })
}

/// Mixes residual streams with one row of layer coefficients.
pub(crate) fn mix_streams(streams: &[Tensor], row: &[f32]) -> Result<Tensor> {
    let mut acc = (&streams[0] * f64::from(row[0]))?;
    for (s, &w) in streams.iter().zip(row).skip(1) {
        acc = (acc + (s * f64::from(w))?)?;
    }
    Ok(acc)
}

/// The shared head of `btm_layer`: every expert's final norm and LM head read the mixed
/// stream `h`, and their logits are mixed with the last layer's coefficients `row`. With
/// one expert's coefficients at 1 everywhere the mode is exactly that expert.
pub(crate) fn mixed_head(
    models: &[&LoadedModel],
    h: &Tensor,
    row: &[f32],
    path: Path,
) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (m, &w) in models.iter().zip(row) {
        if w == 0.0 {
            continue;
        }
        let term = (m.decoder.head(h, path)? * f64::from(w))?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    acc.ok_or_else(|| ExpertError::InvalidRequest("all layer coefficients are zero".into()))
}

/// The mean coefficient of each expert over the layers (what `btm_layer` reports).
fn mean_coefficients(weights: &[Vec<f32>], experts: usize) -> Vec<f32> {
    (0..experts)
        .map(|i| weights.iter().map(|r| r[i]).sum::<f32>() / weights.len() as f32)
        .collect()
}

/// State of one fused sequence: its fusion mode and the caches of its experts. A clone
/// shares the positions seen so far (the caches' tensors are reference-counted) and goes on
/// independently: a prompt prefilled once can be continued several ways.
#[derive(Debug, Clone)]
pub struct FusedSequence<'a> {
    fusion: Fusion<'a>,
    caches: Vec<KvCache>,
    /// `defer`: the tokens fed to the sequence that the deferred-to expert has not read yet.
    pending: Vec<u32>,
}

impl<'a> FusedSequence<'a> {
    pub fn new(fusion: Fusion<'a>) -> Result<Self> {
        fusion.validate()?;
        let caches = fusion
            .models()
            .iter()
            .map(|m| m.decoder.new_cache())
            .collect();
        Ok(Self {
            fusion,
            caches,
            pending: Vec::new(),
        })
    }

    /// Feeds `ids` (the prompt, or one token) to this sequence alone and returns the
    /// next-token distribution with the mixing weights. This is the generic fusion step of
    /// [`crate::backend`] on the candle device, the one the wgpu device runs too.
    pub fn step(&mut self, ids: &[u32]) -> Result<StepOutput> {
        if let Fusion::Defer { .. } = self.fusion {
            return self.defer_step(ids);
        }
        let out = self.run(ids, true)?;
        Ok(StepOutput {
            probs: out.probs.flatten_all()?.to_dtype(DType::F32)?,
            weights: out.weights,
            catch_up: 0,
        })
    }

    /// `defer`, one sequence alone: the first expert reads `ids`, its head decides, and on
    /// a deferral the second expert reads everything it skipped in one call.
    fn defer_step(&mut self, ids: &[u32]) -> Result<StepOutput> {
        let Fusion::Defer {
            models,
            head,
            threshold,
            lazy,
        } = &self.fusion
        else {
            return Err(ExpertError::InvalidRequest("not a defer sequence".into()));
        };
        let (base, expert) = (models[0], models[1]);
        let (base_probs, hidden) = feed(base, &mut self.caches[0], ids)?;
        let defer = head.probabilities(&hidden)?.first().copied().unwrap_or(0.0) >= *threshold;
        self.pending.extend_from_slice(ids);
        let mut catch_up = 0;
        let mut expert_probs = None;
        if defer || !*lazy {
            catch_up = self.pending.len();
            expert_probs = Some(feed(expert, &mut self.caches[1], &self.pending)?.0);
            self.pending.clear();
        }
        Ok(deferral_output(base_probs, expert_probs, defer, catch_up))
    }

    /// Feeds `ids` and returns the fused next-token distribution after every one of them,
    /// `[ids.len(), vocab]` (teacher forcing: what [`score_continuations`] reads).
    pub fn step_positions(&mut self, ids: &[u32]) -> Result<Tensor> {
        if let Fusion::Defer { .. } = self.fusion {
            return self.defer_positions(ids);
        }
        let out = self.run(ids, false)?;
        let vocab = out.probs.dim(candle_core::D::Minus1)?;
        Ok(out
            .probs
            .reshape((ids.len(), vocab))?
            .to_dtype(DType::F32)?)
    }

    /// `defer` by teacher forcing: both experts read every position (the second one after
    /// catching up), and each position takes the distribution its deferral picks.
    fn defer_positions(&mut self, ids: &[u32]) -> Result<Tensor> {
        let Fusion::Defer {
            models,
            head,
            threshold,
            ..
        } = &self.fusion
        else {
            return Err(ExpertError::InvalidRequest("not a defer sequence".into()));
        };
        if ids.is_empty() {
            return Err(ExpertError::InvalidRequest("no tokens to feed".into()));
        }
        let (base, expert) = (models[0], models[1]);
        let (base_probs, hidden) = feed_positions(base, &mut self.caches[0], ids)?;
        self.pending.extend_from_slice(ids);
        let (expert_probs, _) = feed_positions(expert, &mut self.caches[1], &self.pending)?;
        self.pending.clear();
        let t = ids.len();
        let expert_probs = expert_probs.narrow(0, expert_probs.dim(0)? - t, t)?;
        let mask: Vec<f32> = head
            .probabilities(&hidden)?
            .iter()
            .map(|&d| f32::from(u8::from(d >= *threshold)))
            .collect();
        let mask = Tensor::from_vec(mask, (t, 1), base_probs.device())?;
        let keep = mask.affine(-1.0, 1.0)?;
        Ok((base_probs.broadcast_mul(&keep)? + expert_probs.broadcast_mul(&mask)?)?)
    }

    fn run(&mut self, ids: &[u32], last_only: bool) -> Result<crate::backend::FusedStep<Tensor>> {
        if ids.is_empty() {
            return Err(ExpertError::InvalidRequest("no tokens to feed".into()));
        }
        let decoders: Vec<&crate::model::Decoder> =
            self.fusion.models().iter().map(|m| &m.decoder).collect();
        let ops = decoders
            .first()
            .ok_or_else(|| ExpertError::InvalidRequest("no models".into()))?
            .ops(Path::Fused);
        let (router, coefficients);
        let mixing = match &self.fusion {
            Fusion::Single(_) => Mixing::Single,
            Fusion::Ensemble { weights, mix, .. } => Mixing::Ensemble { weights, mix: *mix },
            Fusion::BtmToken {
                router: r, hard, ..
            } => {
                router = r.candle_weights();
                Mixing::Token {
                    router: &router,
                    hard: *hard,
                }
            }
            Fusion::BtmLayer { mixer, .. } => {
                coefficients = mixer.weights()?.to_vec2::<f32>()?;
                Mixing::Layer(&coefficients)
            }
            Fusion::Defer { .. } => {
                return Err(ExpertError::InvalidRequest(
                    "defer runs through its own step".into(),
                ));
            }
        };
        let mut caches: Vec<_> = self.caches.iter_mut().map(KvCache::layers_mut).collect();
        fused_step(&ops, &decoders, &mut caches, &mixing, ids, last_only)
    }
}

/// Feeds `ids` to one model's cache: the next-token probabilities `[vocab]` (f32) after the
/// last of them and the final normed hidden state `[1, hidden]` there.
fn feed(model: &LoadedModel, cache: &mut KvCache, ids: &[u32]) -> Result<(Tensor, Tensor)> {
    let (probs, hidden) = feed_rows(model, cache, ids, true)?;
    Ok((probs.squeeze(0)?, hidden))
}

/// [`feed`] at every position: probabilities `[ids.len(), vocab]` and hidden states
/// `[ids.len(), hidden]`.
fn feed_positions(
    model: &LoadedModel,
    cache: &mut KvCache,
    ids: &[u32],
) -> Result<(Tensor, Tensor)> {
    feed_rows(model, cache, ids, false)
}

/// One model's forward over `ids` on its cache: `[rows, vocab]` probabilities (f32) and
/// `[rows, hidden]` final normed hidden states, one row (`last_only`) or one per position.
fn feed_rows(
    model: &LoadedModel,
    cache: &mut KvCache,
    ids: &[u32],
    last_only: bool,
) -> Result<(Tensor, Tensor)> {
    let ops = model.decoder.ops(Path::Fused);
    let input = crate::backend::Ops::ids(&ops, ids)?;
    let out = crate::backend::forward(
        &ops,
        &model.decoder,
        &input,
        ids.len(),
        Some(cache.layers_mut()),
        last_only,
        true,
    )?;
    let hidden = out
        .hidden_states
        .and_then(|mut h| h.pop())
        .ok_or_else(|| ExpertError::InvalidRequest("no hidden state".into()))?;
    let rows = if last_only { 1 } else { ids.len() };
    let vocab = out.logits.dim(D::Minus1)?;
    let logits = out.logits.reshape((rows, vocab))?.to_dtype(DType::F32)?;
    let h = model.decoder.config().hidden_size;
    Ok((
        candle_nn::ops::softmax_last_dim(&logits)?,
        hidden.reshape((rows, h))?.to_dtype(DType::F32)?,
    ))
}

/// A `defer` step's output: the expert's distribution when deferred, else the base's.
fn deferral_output(
    base: Tensor,
    expert: Option<Tensor>,
    defer: bool,
    catch_up: usize,
) -> StepOutput {
    let (probs, weights) = match expert {
        Some(p) if defer => (p, vec![0.0, 1.0]),
        _ => (base, vec![1.0, 0.0]),
    };
    StepOutput {
        probs,
        weights,
        catch_up,
    }
}

/// The fused log-probability of every token of each continuation after `prompt`, by teacher
/// forcing: the prompt is fed once, and each continuation goes on from a copy of its caches.
/// The distributions are those generation samples from (the same fusion step), so the
/// scores rank continuations as the fused model would. Hard `btm_token` routing is refused
/// (it is defined one position at a time).
pub fn score_continuations(
    fusion: &Fusion<'_>,
    prompt: &[u32],
    continuations: &[Vec<u32>],
) -> Result<Vec<Vec<f32>>> {
    if prompt.is_empty() {
        return Err(ExpertError::InvalidRequest(
            "the prompt has no tokens".into(),
        ));
    }
    if let Some(i) = continuations.iter().position(Vec::is_empty) {
        return Err(ExpertError::InvalidRequest(format!(
            "continuation {i} has no tokens"
        )));
    }
    let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
    let ctx = fusion
        .models()
        .iter()
        .map(|m| m.decoder.config().max_position_embeddings)
        .min()
        .unwrap_or(0);
    if prompt.len() + longest - 1 > ctx {
        return Err(ExpertError::InvalidRequest(format!(
            "the prompt ({} tokens) and the longest continuation ({longest}) need {} positions; \
             the model's context is {ctx}",
            prompt.len(),
            prompt.len() + longest - 1
        )));
    }
    let mut seq = FusedSequence::new(fusion.clone())?;
    let after_prompt = seq.step_positions(prompt)?;
    let first = after_prompt.get(prompt.len() - 1)?;
    continuations
        .iter()
        .map(|c| {
            let mut rows = vec![first.clone()];
            if c.len() > 1 {
                let mut branch = seq.clone();
                let probs = branch.step_positions(&c[..c.len() - 1])?;
                rows.extend(
                    (0..c.len() - 1)
                        .map(|i| probs.get(i))
                        .collect::<candle_core::Result<Vec<_>>>()?,
                );
            }
            let probs = Tensor::stack(&rows, 0)?;
            let device = probs.device().clone();
            let targets = Tensor::from_slice(c, (c.len(), 1), &device)?;
            // A mixture's probability can underflow to 0 far in the tail.
            let p = probs
                .gather(&targets, 1)?
                .squeeze(1)?
                .clamp(f32::MIN_POSITIVE, 1.0)?;
            Ok(p.log()?.to_vec1::<f32>()?)
        })
        .collect()
}

/// Turns the experts' outputs for one sequence into its fused step output.
fn combine(fusion: &Fusion<'_>, mut outs: Vec<ExpertOut>) -> Result<StepOutput> {
    match fusion {
        Fusion::Single(_) => {
            let ExpertOut { probs, .. } = outs
                .pop()
                .ok_or_else(|| ExpertError::InvalidRequest("no expert output".into()))?;
            Ok(StepOutput {
                probs,
                weights: Vec::new(),
                catch_up: 0,
            })
        }
        Fusion::Ensemble { weights, mix, .. } => {
            let w = normalised(weights);
            let probs = match mix {
                Mix::Linear => mix_probs(&outs, &w)?,
                Mix::Log => {
                    let logits: Vec<Tensor> = outs.iter().map(|o| o.logits.clone()).collect();
                    candle_nn::ops::softmax_last_dim(&mix_streams(&logits, &w)?)?
                }
            };
            Ok(StepOutput {
                probs,
                weights: w,
                catch_up: 0,
            })
        }
        Fusion::BtmToken { router, hard, .. } => {
            let hidden: Vec<Tensor> = outs.iter().map(|o| o.hidden.clone()).collect();
            let mut w: Vec<f32> = router.weights(&hidden)?.squeeze(0)?.to_vec1()?;
            if *hard {
                w = one_hot_argmax(&w);
            }
            Ok(StepOutput {
                probs: mix_probs(&outs, &w)?,
                weights: w,
                catch_up: 0,
            })
        }
        Fusion::BtmLayer { .. } => Err(ExpertError::InvalidRequest(
            "btm_layer mixes inside the forward".into(),
        )),
        Fusion::Defer { .. } => Err(ExpertError::InvalidRequest(
            "defer decides after its first expert has run".into(),
        )),
    }
}

/// Identity of a loaded model (sequences are grouped by the models they run).
fn model_key(m: &LoadedModel) -> usize {
    std::ptr::from_ref(m) as usize
}

/// One decode step for many sequences at once — continuous batching: sequences of any
/// length and any fusion mode join and leave between steps. `tokens[i]` continues
/// `seqs[i]`. Every model runs one batched forward over all the sequences that need it
/// (its rows of `single`, `ensemble` and `btm_token` sequences), different models in
/// parallel; `btm_layer` sequences sharing models and coefficients run as one batch,
/// layer by layer.
pub fn step_batch(seqs: &mut [&mut FusedSequence<'_>], tokens: &[u32]) -> Result<Vec<StepOutput>> {
    if seqs.len() != tokens.len() {
        return Err(ExpertError::InvalidRequest(format!(
            "{} tokens for {} sequences",
            tokens.len(),
            seqs.len()
        )));
    }
    let n = seqs.len();
    let mut results: Vec<Option<StepOutput>> = vec![None; n];

    // Rows of each model: (sequence, slot) → the model's batch.
    struct ModelBatch<'m, 'c> {
        model: &'m LoadedModel,
        rows: Vec<(usize, usize)>,
        tokens: Vec<u32>,
        caches: Vec<&'c mut KvCache>,
    }
    struct LayerBatch<'m, 'c> {
        models: Vec<&'m LoadedModel>,
        mixer: &'m LayerMixer,
        rows: Vec<usize>,
        tokens: Vec<u32>,
        caches: Vec<Vec<&'c mut KvCache>>,
    }
    let mut fusions: Vec<Fusion<'_>> = Vec::with_capacity(n);
    let mut model_batches: Vec<ModelBatch<'_, '_>> = Vec::new();
    let mut layer_batches: Vec<LayerBatch<'_, '_>> = Vec::new();
    for (i, seq) in seqs.iter_mut().enumerate() {
        let FusedSequence { fusion, caches, .. } = &mut **seq;
        fusions.push(fusion.clone());
        if let Fusion::BtmLayer { models, mixer } = fusion {
            let keys: Vec<usize> = models.iter().map(|m| model_key(m)).collect();
            let pos = layer_batches.iter().position(|b| {
                std::ptr::eq(b.mixer, *mixer)
                    && b.models
                        .iter()
                        .map(|m| model_key(m))
                        .eq(keys.iter().copied())
            });
            let batch = match pos {
                Some(p) => &mut layer_batches[p],
                None => {
                    layer_batches.push(LayerBatch {
                        models: models.clone(),
                        mixer,
                        rows: Vec::new(),
                        tokens: Vec::new(),
                        caches: (0..models.len()).map(|_| Vec::new()).collect(),
                    });
                    layer_batches
                        .last_mut()
                        .ok_or_else(|| ExpertError::InvalidRequest("layer batch vanished".into()))?
                }
            };
            batch.rows.push(i);
            batch.tokens.push(tokens[i]);
            for (slot, c) in caches.iter_mut().enumerate() {
                batch.caches[slot].push(c);
            }
            continue;
        }
        // `defer`: only its first expert here; the second when its head defers (below).
        let runs = match fusion {
            Fusion::Defer { .. } => 1,
            _ => caches.len(),
        };
        for (slot, (m, c)) in fusion
            .models()
            .iter()
            .zip(caches.iter_mut())
            .take(runs)
            .enumerate()
        {
            let key = model_key(m);
            let batch = match model_batches.iter().position(|b| model_key(b.model) == key) {
                Some(p) => &mut model_batches[p],
                None => {
                    model_batches.push(ModelBatch {
                        model: m,
                        rows: Vec::new(),
                        tokens: Vec::new(),
                        caches: Vec::new(),
                    });
                    model_batches
                        .last_mut()
                        .ok_or_else(|| ExpertError::InvalidRequest("model batch vanished".into()))?
                }
            };
            batch.rows.push((i, slot));
            batch.tokens.push(tokens[i]);
            batch.caches.push(c);
        }
    }

    // One batched forward per model, models in parallel.
    let mut per_seq: Vec<Vec<Option<ExpertOut>>> = fusions
        .iter()
        .map(|f| vec![None; f.models().len()])
        .collect();
    let outputs = in_parallel(
        model_batches
            .iter_mut()
            .map(|b| (b.model, &b.tokens, &mut b.caches))
            .collect(),
        |(m, toks, caches)| {
            let (logits, normed) = m.decoder.decode_ragged(toks, caches)?;
            let logits = logits.to_dtype(DType::F32)?;
            let probs = candle_nn::ops::softmax_last_dim(&logits)?;
            Ok((probs, logits, normed.to_dtype(DType::F32)?))
        },
    )?;
    for (b, (probs, logits, normed)) in model_batches.iter().zip(outputs) {
        for (r, &(i, slot)) in b.rows.iter().enumerate() {
            per_seq[i][slot] = Some(ExpertOut {
                probs: probs.get(r)?,
                logits: logits.get(r)?,
                hidden: normed.narrow(0, r, 1)?,
            });
        }
    }
    let mut defer_base: Vec<Option<ExpertOut>> = vec![None; n];
    for (i, outs) in per_seq.into_iter().enumerate() {
        if matches!(fusions[i], Fusion::BtmLayer { .. }) {
            continue;
        }
        if matches!(fusions[i], Fusion::Defer { .. }) {
            defer_base[i] = outs.into_iter().next().flatten();
            continue;
        }
        let outs: Vec<ExpertOut> = outs
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| ExpertError::InvalidRequest("an expert row is missing".into()))?;
        results[i] = Some(combine(&fusions[i], outs)?);
    }

    // Layer-mixed batches.
    for b in &mut layer_batches {
        let device = b.models[0].decoder.device();
        let input = Tensor::from_slice(&b.tokens, (b.tokens.len(), 1), device)?;
        let weights: Vec<Vec<f32>> = b.mixer.weights()?.to_vec2()?;
        let embeds: Vec<Tensor> = b
            .models
            .iter()
            .map(|m| m.decoder.embed(&input))
            .collect::<Result<_>>()?;
        let mut h = mix_streams(&embeds, &weights[0])?;
        for l in 0..b.models[0].decoder.config().num_hidden_layers {
            let jobs: Vec<_> = b.models.iter().zip(b.caches.iter_mut()).collect();
            let outs = in_parallel(jobs, |(m, caches)| m.decoder.layer_ragged(l, &h, caches))?;
            h = mix_streams(&outs, &weights[l + 1])?;
        }
        let last_row = &weights[weights.len() - 1];
        let logits = mixed_head(&b.models, &h, last_row, Path::Fused)?
            .squeeze(1)?
            .to_dtype(DType::F32)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        let mean = mean_coefficients(&weights, b.models.len());
        for (r, &i) in b.rows.iter().enumerate() {
            results[i] = Some(StepOutput {
                probs: probs.get(r)?,
                weights: mean.clone(),
                catch_up: 0,
            });
        }
    }
    defer_steps(seqs, tokens, &fusions, defer_base, &mut results)?;
    results
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ExpertError::InvalidRequest("a sequence got no output".into()))
}

/// The second half of a batch step for `defer` sequences, whose first expert has run: each
/// head decides; a sequence whose deferred-to expert is one token behind joins that
/// expert's batched forward, one further behind catches up alone in one call.
fn defer_steps(
    seqs: &mut [&mut FusedSequence<'_>],
    tokens: &[u32],
    fusions: &[Fusion<'_>],
    mut base: Vec<Option<ExpertOut>>,
    results: &mut [Option<StepOutput>],
) -> Result<()> {
    // Sequences whose expert runs, by expert: (model, rows).
    let mut batches: Vec<(&LoadedModel, Vec<usize>)> = Vec::new();
    let mut decided = vec![false; seqs.len()];
    for (i, seq) in seqs.iter_mut().enumerate() {
        let Fusion::Defer {
            models,
            head,
            threshold,
            lazy,
        } = &fusions[i]
        else {
            continue;
        };
        let out = base[i]
            .as_ref()
            .ok_or_else(|| ExpertError::InvalidRequest("a defer row is missing".into()))?;
        let defer = head
            .probabilities(&out.hidden)?
            .first()
            .copied()
            .unwrap_or(0.0)
            >= *threshold;
        decided[i] = defer;
        seq.pending.push(tokens[i]);
        if !defer && *lazy {
            let probs = base[i]
                .take()
                .map(|o| o.probs)
                .ok_or_else(|| ExpertError::InvalidRequest("a defer row is missing".into()))?;
            results[i] = Some(deferral_output(probs, None, false, 0));
        } else if seq.pending.len() == 1 {
            let key = model_key(models[1]);
            match batches.iter_mut().find(|(m, _)| model_key(m) == key) {
                Some((_, rows)) => rows.push(i),
                None => batches.push((models[1], vec![i])),
            }
        } else {
            let pending = std::mem::take(&mut seq.pending);
            let (expert, _) = feed(models[1], &mut seq.caches[1], &pending)?;
            let probs = base[i]
                .take()
                .map(|o| o.probs)
                .ok_or_else(|| ExpertError::InvalidRequest("a defer row is missing".into()))?;
            results[i] = Some(deferral_output(probs, Some(expert), defer, pending.len()));
        }
    }
    for (model, rows) in batches {
        let toks: Vec<u32> = rows.iter().map(|&i| tokens[i]).collect();
        let mut caches: Vec<&mut KvCache> = seqs
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| rows.contains(i))
            .map(|(_, s)| {
                s.pending.clear();
                &mut s.caches[1]
            })
            .collect();
        let (logits, _) = model.decoder.decode_ragged(&toks, &mut caches)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        // `rows` is in sequence order, as the caches were collected.
        for (r, &i) in rows.iter().enumerate() {
            let own = base[i]
                .take()
                .map(|o| o.probs)
                .ok_or_else(|| ExpertError::InvalidRequest("a defer row is missing".into()))?;
            results[i] = Some(deferral_output(own, Some(probs.get(r)?), decided[i], 1));
        }
    }
    Ok(())
}

fn mix_probs(outs: &[ExpertOut], w: &[f32]) -> Result<Tensor> {
    let mut acc = (&outs[0].probs * f64::from(w[0]))?;
    for (o, &wi) in outs.iter().zip(w).skip(1) {
        acc = (acc + (&o.probs * f64::from(wi))?)?;
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
    /// Model forwards per generated token: the number of experts run, or for `defer` one
    /// plus the deferred-to expert's forwards on generated positions per generated token
    /// (the prompt's prefill is not counted, as for every mode).
    pub cost: f32,
    /// Model forwards over every position, prompt included (`defer`: the base's positions
    /// plus every token the deferred-to expert read).
    pub token_forwards: u64,
}

/// The sampling and text side of one generating sequence: picks each next token from a
/// step's distribution, streams completed text pieces, and knows when the sequence ends
/// (EOS, a stop string, `max_tokens`, the context, or a cancelled client). Shared by
/// [`generate_fused`] and the expert process's batching engine.
pub struct Decoding<'a> {
    first: &'a LoadedModel,
    cost: f32,
    /// `defer`: the cost is what the steps spent (their `catch_up`), not the mode's maximum.
    deferral: bool,
    catch_up: usize,
    sampler: Sampler,
    eos: Vec<u32>,
    max_new: usize,
    prompt_tokens: usize,
    history: Vec<u32>,
    tokens: Vec<u32>,
    weights_log: Vec<Vec<f32>>,
    stream: StreamDecoder,
    stop: StopFilter,
    text: String,
    finish: Option<FinishReason>,
    hit_stop: bool,
    prefill_seconds: f64,
    decode_started: Option<std::time::Instant>,
}

impl std::fmt::Debug for Decoding<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoding")
            .field("tokens", &self.tokens.len())
            .field("finish", &self.finish)
            .finish_non_exhaustive()
    }
}

impl<'a> Decoding<'a> {
    /// Checks the request against `fusion`'s models and prepares the sequence's state.
    pub fn new(fusion: &Fusion<'a>, prompt_ids: &[u32], params: &SamplingParams) -> Result<Self> {
        params.validate()?;
        if prompt_ids.is_empty() {
            return Err(ExpertError::InvalidRequest("the prompt is empty".into()));
        }
        let models = fusion.models();
        let first = models
            .first()
            .copied()
            .ok_or_else(|| ExpertError::InvalidRequest("no models".into()))?;
        let ctx = check_prompt_fits(models, prompt_ids.len())?;
        Ok(Self {
            first,
            cost: fusion.cost(),
            deferral: matches!(fusion, Fusion::Defer { .. }),
            catch_up: 0,
            sampler: Sampler::new(params),
            eos: models
                .iter()
                .flat_map(|m| m.eos_token_ids.iter().copied())
                .collect(),
            max_new: params.max_tokens.min(ctx - prompt_ids.len()),
            prompt_tokens: prompt_ids.len(),
            history: prompt_ids.to_vec(),
            tokens: Vec::new(),
            weights_log: Vec::new(),
            stream: StreamDecoder::default(),
            stop: StopFilter::new(params.stop.clone()),
            text: String::new(),
            finish: None,
            hit_stop: false,
            prefill_seconds: 0.0,
            decode_started: None,
        })
    }

    /// Records how long the prompt's forward took.
    pub fn set_prefill_seconds(&mut self, seconds: f64) {
        self.prefill_seconds = seconds;
    }

    /// Takes one step's output: samples the next token and passes each completed text
    /// piece to `on_text(piece, weights)` (false = the client is gone). Returns the token
    /// to feed next, or `None` once the sequence has ended.
    pub fn advance(
        &mut self,
        out: &StepOutput,
        mut on_text: impl FnMut(&str, &[f32]) -> bool,
    ) -> Result<Option<u32>> {
        if self.finish.is_some() {
            return Ok(None);
        }
        self.decode_started
            .get_or_insert_with(std::time::Instant::now);
        self.catch_up += out.catch_up;
        let logp = out.probs.clamp(1e-30f32, 1.0f32)?.log()?;
        let next = self.sampler.sample(&logp, &self.history)?;
        if self.eos.contains(&next) {
            return Ok(self.end(FinishReason::Stop));
        }
        self.tokens.push(next);
        self.history.push(next);
        self.weights_log.push(out.weights.clone());
        if let Some(piece) = self.stream.push(&self.first.tokenizer, next)? {
            let (safe, hit) = self.stop.push(&piece);
            self.text.push_str(&safe);
            let keep_going = safe.is_empty() || on_text(&safe, &out.weights);
            if hit {
                self.hit_stop = true;
                return Ok(self.end(FinishReason::Stop));
            }
            if !keep_going {
                return Ok(self.end(FinishReason::Cancelled));
            }
        }
        if self.tokens.len() >= self.max_new {
            return Ok(self.end(FinishReason::Length));
        }
        Ok(Some(next))
    }

    /// Ends the sequence because its client went away.
    pub fn cancel(&mut self) {
        self.finish.get_or_insert(FinishReason::Cancelled);
    }

    fn end(&mut self, reason: FinishReason) -> Option<u32> {
        self.finish.get_or_insert(reason);
        None
    }

    /// Flushes text held back by the stop filter (unless a stop string matched) through
    /// `on_text` and returns the generation.
    pub fn finish(mut self, mut on_text: impl FnMut(&str, &[f32]) -> bool) -> FusedGeneration {
        let finish = self.finish.unwrap_or(FinishReason::Length);
        if !self.hit_stop {
            let rest = self.stop.finish();
            if !rest.is_empty() {
                self.text.push_str(&rest);
                if finish != FinishReason::Cancelled {
                    on_text(&rest, &[]);
                }
            }
        }
        let positions = self.prompt_tokens + self.tokens.len();
        let (cost, token_forwards) = if self.deferral {
            // The first catch-up reads the whole prompt; the rest are generated positions.
            let generated = self.catch_up.saturating_sub(self.prompt_tokens);
            (
                1.0 + generated as f32 / self.tokens.len().max(1) as f32,
                (positions + self.catch_up) as u64,
            )
        } else {
            (self.cost, (positions as f64 * f64::from(self.cost)) as u64)
        };
        FusedGeneration {
            cost,
            token_forwards,
            routing_weights: self.weights_log,
            generation: Generation {
                text: self.text,
                tokens: self.tokens,
                prompt_tokens: self.prompt_tokens,
                finish_reason: finish,
                prefill_seconds: self.prefill_seconds,
                decode_seconds: self
                    .decode_started
                    .map_or(0.0, |t| t.elapsed().as_secs_f64()),
            },
        }
    }
}

/// Generates with a fusion mode, one sequence alone. Sampling reads `ln p` of the mixed
/// distribution as its logits (greedy takes its arg-max; temperature `T` samples from
/// `p^(1/T)` renormalised). `on_text(piece, weights)` receives each completed text piece
/// and returns false to stop. Decode steps go through [`step_batch`] with a batch of one,
/// the same path the expert process batches many sequences through.
pub fn generate_fused(
    fusion: Fusion<'_>,
    prompt_ids: &[u32],
    params: &SamplingParams,
    mut on_text: impl FnMut(&str, &[f32]) -> bool,
) -> Result<FusedGeneration> {
    let mut decoding = Decoding::new(&fusion, prompt_ids, params)?;
    let mut seq = FusedSequence::new(fusion)?;
    let started = std::time::Instant::now();
    let mut out = seq.step(prompt_ids)?;
    decoding.set_prefill_seconds(started.elapsed().as_secs_f64());
    while let Some(next) = decoding.advance(&out, &mut on_text)? {
        out = step_batch(&mut [&mut seq], &[next])?
            .pop()
            .ok_or_else(|| ExpertError::InvalidRequest("no step output".into()))?;
    }
    Ok(decoding.finish(on_text))
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
