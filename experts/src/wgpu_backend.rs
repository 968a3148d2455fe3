//! The wgpu device (`device: wgpu`, cargo feature `wgpu`): the generic decoder and fusion
//! steps of [`crate::backend`] on the `gpu` crate's WGSL kernels.
//!
//! A [`WgpuModel`] holds a decoder's weights in GPU storage buffers, uploaded once from the
//! candle model the loader built (dense projections only: quantized ones are refused at
//! upload). A [`WgpuSequence`] is one generating sequence of any fusion mode with its KV
//! caches on the device. Each step records every kernel of every expert into one command
//! batch; only what the caller asks for comes back: the greedy token id (argmax on the
//! device), or the next-token distribution when a sampler needs it, plus the `E` router
//! weights of `btm_token` (they are reported with every token).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gpu::{Batch, GpuContext, GpuTensor, KvCache, RopeTable};

use crate::backend::{
    AttnShape, FusedStep, LayerWeights, Mixing, Ops, RouterWeights, Weights, forward, fused_step,
};
use protocol::Mix;

use crate::config::ModelConfig;
use crate::error::{ExpertError, Result};
use crate::fusion::{Fusion, TokenRouter};
use crate::loader::LoadedModel;
use crate::model::{Decoder, HostLinear};

/// The wgpu device's operations: kernels recorded into one open [`Batch`].
#[derive(Debug)]
pub struct WgpuOps<'c> {
    ctx: &'c GpuContext,
    batch: RefCell<Batch<'c>>,
}

impl<'c> WgpuOps<'c> {
    pub fn new(ctx: &'c GpuContext) -> Result<Self> {
        Ok(Self {
            ctx,
            batch: RefCell::new(ctx.batch()?),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Batch<'c>) -> gpu::Result<R>) -> Result<R> {
        let mut batch = self
            .batch
            .try_borrow_mut()
            .map_err(|_| ExpertError::InvalidRequest("GPU batch already in use".into()))?;
        Ok(f(&mut batch)?)
    }

    /// Submits everything recorded so far and reads `t` back.
    pub fn read_f32(self, t: &GpuTensor) -> Result<Vec<f32>> {
        Ok(self.batch.into_inner().submit_and_read_f32(t)?)
    }

    /// Submits everything recorded so far and reads `t` (token ids) back.
    pub fn read_u32(self, t: &GpuTensor) -> Result<Vec<u32>> {
        Ok(self.batch.into_inner().submit_and_read_u32(t)?)
    }

    /// Row-wise argmax on the device.
    pub fn argmax(&self, x: &GpuTensor) -> Result<GpuTensor> {
        self.with(|b| b.argmax(x))
    }
}

/// A projection on the device: `weight [out, in]`, optional `bias [out]`.
#[derive(Debug, Clone)]
pub struct GpuLinear {
    pub weight: GpuTensor,
    pub bias: Option<GpuTensor>,
}

impl GpuLinear {
    fn upload(ctx: &GpuContext, l: &HostLinear) -> Result<Self> {
        Ok(Self {
            weight: ctx.upload_f32(&l.weight, &[l.out_features, l.in_features])?,
            bias: match &l.bias {
                Some(b) => Some(ctx.upload_f32(b, &[b.len()])?),
                None => None,
            },
        })
    }
}

/// An RMSNorm weight and its epsilon.
#[derive(Debug, Clone)]
pub struct GpuNorm {
    pub weight: GpuTensor,
    pub eps: f32,
}

impl GpuNorm {
    fn upload(ctx: &GpuContext, w: &[f32], eps: f64) -> Result<Self> {
        Ok(Self {
            weight: ctx.upload_f32(w, &[w.len()])?,
            eps: eps as f32,
        })
    }
}

impl Ops for WgpuOps<'_> {
    type T = GpuTensor;
    type Linear = GpuLinear;
    type Norm = GpuNorm;
    type Attention = AttnShape;
    type Rope = RopeTable;
    type LayerCache = KvCache;

    fn ids(&self, ids: &[u32]) -> Result<GpuTensor> {
        Ok(self.ctx.upload_u32(ids, &[ids.len()])?)
    }

    fn embed(&self, table: &GpuTensor, ids: &GpuTensor) -> Result<GpuTensor> {
        self.with(|b| b.embedding(ids, table))
    }

    fn linear(&self, w: &GpuLinear, x: &GpuTensor) -> Result<GpuTensor> {
        self.with(|b| {
            let y = b.linear(x, &w.weight)?;
            match &w.bias {
                Some(bias) => b.add_bias(&y, bias),
                None => Ok(y),
            }
        })
    }

    fn rms_norm(&self, w: &GpuNorm, x: &GpuTensor) -> Result<GpuTensor> {
        self.with(|b| b.rms_norm(x, &w.weight, w.eps))
    }

    fn attention(
        &self,
        attn: &AttnShape,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        rope: &RopeTable,
        cache: Option<&mut KvCache>,
        offset: usize,
    ) -> Result<GpuTensor> {
        let cache = cache.ok_or_else(|| {
            ExpertError::InvalidRequest("the wgpu device attends through a KV cache".into())
        })?;
        let t = q.numel() / (attn.heads * attn.head_dim).max(1);
        self.with(|b| {
            let q = b.rope(q, rope, attn.heads, offset)?;
            let k = b.rope(k, rope, attn.kv_heads, offset)?;
            b.append_kv(cache, &k, v)?;
            b.attention(&q, cache, attn.heads, t > 1)
        })
    }

    fn swiglu(&self, gate: &GpuTensor, up: &GpuTensor) -> Result<GpuTensor> {
        self.with(|b| b.swiglu(gate, up))
    }

    fn silu(&self, x: &GpuTensor) -> Result<GpuTensor> {
        self.with(|b| b.silu(x))
    }

    fn add(&self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        self.with(|batch| batch.add(a, b))
    }

    fn softmax(&self, x: &GpuTensor) -> Result<GpuTensor> {
        self.with(|b| b.softmax(x))
    }

    fn concat_last(&self, xs: &[&GpuTensor]) -> Result<GpuTensor> {
        self.with(|b| b.concat_last(xs))
    }

    fn mix(&self, xs: &[&GpuTensor], weights: &[f32]) -> Result<GpuTensor> {
        let w = self.ctx.upload_f32(weights, &[weights.len()])?;
        self.with(|b| b.mix(xs, &w))
    }

    fn mix_rows(&self, xs: &[&GpuTensor], w: &GpuTensor) -> Result<GpuTensor> {
        self.with(|b| b.mix(xs, w))
    }

    fn last_position(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let cols = x.shape().last().copied().unwrap_or(1).max(1);
        let rows = x.numel() / cols;
        self.with(|b| b.rows(x, rows.saturating_sub(1), 1))
    }

    fn cache_len(&self, cache: &KvCache) -> usize {
        cache.len()
    }

    fn to_host(&self, x: &GpuTensor) -> Result<Vec<f32>> {
        let mut batch = self
            .batch
            .try_borrow_mut()
            .map_err(|_| ExpertError::InvalidRequest("GPU batch already in use".into()))?;
        let recorded = std::mem::replace(&mut *batch, self.ctx.batch()?);
        Ok(recorded.submit_and_read_f32(x)?)
    }
}

/// One layer's weights on the device.
#[derive(Debug, Clone)]
struct GpuLayer {
    input_norm: GpuNorm,
    q: GpuLinear,
    k: GpuLinear,
    v: GpuLinear,
    o: GpuLinear,
    post_norm: GpuNorm,
    gate: GpuLinear,
    up: GpuLinear,
    down: GpuLinear,
}

/// A decoder's weights in GPU buffers, uploaded once.
#[derive(Debug, Clone)]
pub struct WgpuModel {
    config: ModelConfig,
    embed: GpuTensor,
    layers: Vec<GpuLayer>,
    norm: GpuNorm,
    lm_head: GpuLinear,
    rope: RopeTable,
    attention: AttnShape,
}

impl WgpuModel {
    /// Uploads `decoder`'s weights. Quantized (or otherwise non-dense) projections and tensors
    /// over the device's buffer limit are errors.
    pub fn upload(ctx: &GpuContext, decoder: &Decoder) -> Result<Self> {
        let w = decoder.host_weights()?;
        let cfg = w.config.clone();
        let eps = cfg.rms_norm_eps;
        let embed = ctx.upload_f32(&w.embed, &[cfg.vocab_size, cfg.hidden_size])?;
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(GpuLayer {
                input_norm: GpuNorm::upload(ctx, &l.input_norm, eps)?,
                q: GpuLinear::upload(ctx, &l.q)?,
                k: GpuLinear::upload(ctx, &l.k)?,
                v: GpuLinear::upload(ctx, &l.v)?,
                o: GpuLinear::upload(ctx, &l.o)?,
                post_norm: GpuNorm::upload(ctx, &l.post_norm, eps)?,
                gate: GpuLinear::upload(ctx, &l.gate)?,
                up: GpuLinear::upload(ctx, &l.up)?,
                down: GpuLinear::upload(ctx, &l.down)?,
            });
        }
        let lm_head = match &w.lm_head {
            Some(l) => GpuLinear::upload(ctx, l)?,
            None => GpuLinear {
                weight: embed.clone(),
                bias: None,
            },
        };
        let rope = RopeTable::from_host(
            ctx,
            &w.rope_cos,
            &w.rope_sin,
            cfg.head_dim,
            cfg.max_position_embeddings,
        )?;
        Ok(Self {
            attention: AttnShape {
                heads: cfg.num_attention_heads,
                kv_heads: cfg.num_key_value_heads,
                head_dim: cfg.head_dim,
            },
            norm: GpuNorm::upload(ctx, &w.norm, eps)?,
            config: cfg,
            embed,
            layers,
            lm_head,
            rope,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Empty KV caches (one per layer) for the model's whole context.
    pub fn new_cache(&self, ctx: &GpuContext) -> Result<Vec<KvCache>> {
        (0..self.layers.len())
            .map(|_| {
                Ok(KvCache::new(
                    ctx,
                    self.config.max_position_embeddings,
                    self.attention.kv_heads,
                    self.attention.head_dim,
                )?)
            })
            .collect()
    }

    /// Logits `[ids.len(), vocab]` of every position of `ids`, continuing `cache`
    /// (row-major on the host).
    pub fn logits(&self, ctx: &GpuContext, ids: &[u32], cache: &mut [KvCache]) -> Result<Vec<f32>> {
        let ops = WgpuOps::new(ctx)?;
        let input = ops.ids(ids)?;
        let out = forward(&ops, self, &input, ids.len(), Some(cache), false, false)?;
        ops.read_f32(&out.logits)
    }
}

impl<'c> Weights<WgpuOps<'c>> for WgpuModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn embedding(&self) -> &GpuTensor {
        &self.embed
    }

    fn layer(&self, index: usize) -> Result<LayerWeights<'_, WgpuOps<'c>>> {
        let l = self
            .layers
            .get(index)
            .ok_or_else(|| ExpertError::InvalidRequest(format!("no layer {index}")))?;
        Ok(LayerWeights {
            input_norm: &l.input_norm,
            attention: &self.attention,
            q: &l.q,
            k: &l.k,
            v: &l.v,
            o: &l.o,
            post_norm: &l.post_norm,
            gate: &l.gate,
            up: &l.up,
            down: &l.down,
        })
    }

    fn final_norm(&self) -> &GpuNorm {
        &self.norm
    }

    fn lm_head(&self) -> &GpuLinear {
        &self.lm_head
    }

    fn rope(&self) -> &RopeTable {
        &self.rope
    }
}

/// A token router's MLP on the device.
#[derive(Debug, Clone)]
pub struct GpuRouter {
    fc1: GpuLinear,
    fc2: GpuLinear,
}

impl GpuRouter {
    pub fn upload(ctx: &GpuContext, router: &TokenRouter) -> Result<Self> {
        let (fc1, fc2) = router.layers();
        let host = |l: &candle_nn::Linear| -> Result<HostLinear> {
            let (out_features, in_features) = l.weight().dims2()?;
            let vec = |t: &candle_core::Tensor| -> Result<Vec<f32>> {
                Ok(t.flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?)
            };
            Ok(HostLinear {
                out_features,
                in_features,
                weight: vec(l.weight())?,
                bias: l.bias().map(vec).transpose()?,
            })
        };
        Ok(Self {
            fc1: GpuLinear::upload(ctx, &host(fc1)?)?,
            fc2: GpuLinear::upload(ctx, &host(fc2)?)?,
        })
    }

    fn weights<'c>(&self) -> RouterWeights<WgpuOps<'c>> {
        RouterWeights {
            fc1: self.fc1.clone(),
            fc2: self.fc2.clone(),
        }
    }
}

/// How a [`WgpuSequence`] mixes its experts (the device-side form of a [`Fusion`]).
#[derive(Debug, Clone)]
pub enum WgpuMixing {
    Single,
    Ensemble { weights: Vec<f32>, mix: Mix },
    Token { router: Box<GpuRouter>, hard: bool },
    Layer(Vec<Vec<f32>>),
}

impl WgpuMixing {
    /// The device form of `fusion`'s mixing (uploads a token router).
    pub fn of(ctx: &GpuContext, fusion: &Fusion<'_>) -> Result<Self> {
        fusion.validate()?;
        Ok(match fusion {
            Fusion::Single(_) => Self::Single,
            Fusion::Ensemble { weights, mix, .. } => Self::Ensemble {
                weights: weights.clone(),
                mix: *mix,
            },
            Fusion::BtmToken { router, hard, .. } => Self::Token {
                router: Box::new(GpuRouter::upload(ctx, router)?),
                hard: *hard,
            },
            Fusion::BtmLayer { mixer, .. } => Self::Layer(mixer.weights()?.to_vec2()?),
            Fusion::Defer { .. } => {
                return Err(ExpertError::Unsupported(
                    "defer runs on the candle devices (cpu, cuda, metal), not on wgpu yet".into(),
                ));
            }
        })
    }
}

/// What one step of a [`WgpuSequence`] brings back to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult<T> {
    pub value: T,
    /// Mixing weight of each expert (empty for `single`).
    pub weights: Vec<f32>,
}

/// One generating sequence on the device: its experts, their mixing and KV caches.
#[derive(Debug)]
pub struct WgpuSequence<'m> {
    models: Vec<&'m WgpuModel>,
    mixing: WgpuMixing,
    caches: Vec<Vec<KvCache>>,
}

impl<'m> WgpuSequence<'m> {
    pub fn new(ctx: &GpuContext, models: Vec<&'m WgpuModel>, mixing: WgpuMixing) -> Result<Self> {
        if models.is_empty() {
            return Err(ExpertError::InvalidRequest("no models".into()));
        }
        let caches = models
            .iter()
            .map(|m| m.new_cache(ctx))
            .collect::<Result<_>>()?;
        Ok(Self {
            models,
            mixing,
            caches,
        })
    }

    /// Size of the vocabulary the sequence's distributions are over.
    pub fn vocab_size(&self) -> usize {
        self.models.first().map_or(0, |m| m.config.vocab_size)
    }

    /// Positions fed so far.
    pub fn len(&self) -> usize {
        self.caches
            .first()
            .and_then(|c| c.first())
            .map_or(0, KvCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn run<'c, R>(
        &mut self,
        ctx: &'c GpuContext,
        ids: &[u32],
        finish: impl FnOnce(WgpuOps<'c>, FusedStep<GpuTensor>) -> Result<R>,
    ) -> Result<R> {
        let ops = WgpuOps::new(ctx)?;
        let router;
        let mixing = match &self.mixing {
            WgpuMixing::Single => Mixing::Single,
            WgpuMixing::Ensemble { weights, mix } => Mixing::Ensemble { weights, mix: *mix },
            WgpuMixing::Token { router: r, hard } => {
                router = r.weights();
                Mixing::Token {
                    router: &router,
                    hard: *hard,
                }
            }
            WgpuMixing::Layer(c) => Mixing::Layer(c),
        };
        let mut caches: Vec<&mut [KvCache]> =
            self.caches.iter_mut().map(Vec::as_mut_slice).collect();
        let step = fused_step(&ops, &self.models, &mut caches, &mixing, ids, true)?;
        finish(ops, step)
    }

    /// Feeds `ids` (the prompt, or one token) and returns the greedy next token: the argmax
    /// runs on the device and only its id comes back.
    pub fn step_greedy(&mut self, ctx: &GpuContext, ids: &[u32]) -> Result<StepResult<u32>> {
        self.run(ctx, ids, |ops, step| {
            let token = ops.argmax(&step.probs)?;
            let value = ops
                .read_u32(&token)?
                .first()
                .copied()
                .ok_or_else(|| ExpertError::InvalidRequest("no token came back".into()))?;
            Ok(StepResult {
                value,
                weights: step.weights,
            })
        })
    }

    /// Feeds `ids` and returns the next-token distribution `[vocab]` (for a sampler).
    pub fn step_probs(&mut self, ctx: &GpuContext, ids: &[u32]) -> Result<StepResult<Vec<f32>>> {
        self.run(ctx, ids, |ops, step| {
            Ok(StepResult {
                value: ops.read_f32(&step.probs)?,
                weights: step.weights,
            })
        })
    }
}

/// Greedy generation on the device: up to `max_new` tokens after `prompt`, stopping at any of
/// `eos` (not included). One token id crosses to the host per step.
pub fn generate_greedy(
    ctx: &GpuContext,
    seq: &mut WgpuSequence<'_>,
    prompt: &[u32],
    max_new: usize,
    eos: &[u32],
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(ExpertError::InvalidRequest("the prompt is empty".into()));
    }
    let ctx_len = seq
        .models
        .iter()
        .map(|m| m.config.max_position_embeddings)
        .min()
        .unwrap_or(0);
    if prompt.len() >= ctx_len {
        return Err(ExpertError::InvalidRequest(format!(
            "the prompt has {} tokens; the model's context is {ctx_len}",
            prompt.len()
        )));
    }
    let max_new = max_new.min(ctx_len - prompt.len());
    let mut tokens = Vec::new();
    let mut next = seq.step_greedy(ctx, prompt)?.value;
    while !eos.contains(&next) {
        tokens.push(next);
        if tokens.len() >= max_new {
            break;
        }
        next = seq.step_greedy(ctx, &[next])?.value;
    }
    Ok(tokens)
}

/// The GPU of an expert process (`device: wgpu`) with every served model uploaded.
#[derive(Debug)]
pub struct WgpuDevice {
    pub ctx: GpuContext,
    pub models: HashMap<String, WgpuModel>,
}

impl WgpuDevice {
    /// Opens the adapter ([`gpu::ADAPTER_ENV`] picks one by name), logs its report, builds
    /// every kernel and uploads each model once. No adapter, a quantized model or a tensor over
    /// the device's limits is an error naming the cause.
    pub fn new(models: &BTreeMap<String, Arc<LoadedModel>>) -> Result<Self> {
        let ctx = GpuContext::from_env()?;
        tracing::info!("wgpu device: {}", ctx.report());
        ctx.warm_up()?;
        let mut uploaded = HashMap::new();
        for (name, m) in models {
            let gm = WgpuModel::upload(&ctx, &m.decoder).map_err(|e| match e {
                ExpertError::InvalidRequest(msg) => ExpertError::Model {
                    path: m.dir.clone(),
                    message: format!("cannot run on wgpu: {msg}"),
                },
                other => other,
            })?;
            uploaded.insert(name.clone(), gm);
        }
        Ok(Self {
            ctx,
            models: uploaded,
        })
    }

    /// A device sequence running `fusion`'s experts and mixing.
    pub fn sequence(&self, fusion: &Fusion<'_>) -> Result<WgpuSequence<'_>> {
        let models = fusion
            .models()
            .iter()
            .map(|m| {
                self.models.get(&m.name).ok_or_else(|| {
                    ExpertError::InvalidRequest(format!("model {:?} is not on the GPU", m.name))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        WgpuSequence::new(&self.ctx, models, WgpuMixing::of(&self.ctx, fusion)?)
    }
}
