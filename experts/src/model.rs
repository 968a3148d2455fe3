//! The in-project decoder: Qwen2 and Llama layouts (RMSNorm, rotary position embeddings
//! with `rope_theta`, grouped-query attention, SwiGLU MLP, optional tied embeddings, Qwen2's
//! q/k/v bias), with Hugging Face tensor names:
//!
//! ```text
//! model.embed_tokens.weight                      [vocab, hidden]
//! model.layers.{i}.input_layernorm.weight        [hidden]
//! model.layers.{i}.self_attn.{q,k,v,o}_proj.weight (+ .bias on q/k/v for Qwen2)
//! model.layers.{i}.post_attention_layernorm.weight
//! model.layers.{i}.mlp.{gate,up,down}_proj.weight
//! model.norm.weight                              [hidden]
//! lm_head.weight                                 [vocab, hidden] (absent when tied)
//! ```
//!
//! References: Qwen2 technical report (arXiv:2407.10671); Llama (arXiv:2302.13971);
//! RoFormer (arXiv:2104.09864) for the rotary embedding in its "rotate half" form.
//!
//! The forward is exposed in pieces ([`Decoder::embed`], [`Decoder::layer`],
//! [`Decoder::head`]) so that layer-level fusion can mix the residual streams of two
//! experts between layers. Two numeric paths share the weights: [`Path::Fused`] uses
//! candle's fused kernels for inference; [`Path::Differentiable`] builds the same maths from
//! basic ops, which have backward passes, for training.
//!
//! The projections (q/k/v/o, gate/up/down, LM head) are `Proj`s: dense candle `Linear`s
//! as loaded, or, after [`Decoder::quantize`], candle `QMatMul`s over GGML blocks
//! ([`WeightFormat`]; q/k/v and gate/up stacked into one matrix each). Either way the same
//! layer code runs, so fusion's hidden states and continuous batching work on quantized
//! weights too. Embeddings and norms stay dense.
//!
//! On the CPU, inference in f32 takes host kernels for the hot parts of a decode step
//! (`host`: few-row projections and attention over a host KV cache); training, other
//! devices and dtypes, and anything that tracks gradients take candle's ops.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::config::ModelConfig;
use crate::error::{ExpertError, Result};

mod candle_ops;
mod host;
pub(crate) use candle_ops::{CandleOps, router_weights};
pub use candle_ops::{HostLayer, HostLinear, HostWeights};

/// Which kernels compute norms, softmax and rotary embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// candle's fused kernels (fast, inference only).
    Fused,
    /// Basic tensor ops (differentiable, for training).
    Differentiable,
}

/// How projection weights are held at run time.
///
/// Candle 0.11.1 has AVX2 dot products for Q4_0, Q8_0 and the K-quants only; Q4_1 runs a
/// plain loop on x86, which the compiler vectorises only when building for a CPU with AVX2
/// (this workspace builds for the host CPU: `.cargo/config.toml`). K-quants need input
/// dimensions that are multiples of 256, which SmolLM2's hidden size (576) is not, so they
/// are not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WeightFormat {
    /// Dense, in the dtype the weights were loaded in (f32 on CPU).
    #[default]
    #[serde(rename = "f32")]
    Dense,
    /// 8-bit blocks of 32 with an f16 scale (8.5 bits per weight).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit blocks of 32 with an f16 scale (4.5 bits per weight).
    #[serde(rename = "q4_0")]
    Q4_0,
    /// 4-bit blocks of 32 with an f16 scale and minimum (5 bits per weight; no hand-written
    /// x86 kernel in candle).
    #[serde(rename = "q4_1")]
    Q4_1,
}

impl WeightFormat {
    pub const NAMES: &'static str = "f32, q8_0, q4_0, q4_1";

    pub fn name(self) -> &'static str {
        match self {
            Self::Dense => "f32",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
        }
    }

    fn ggml(self) -> Option<GgmlDType> {
        match self {
            Self::Dense => None,
            Self::Q8_0 => Some(GgmlDType::Q8_0),
            Self::Q4_0 => Some(GgmlDType::Q4_0),
            Self::Q4_1 => Some(GgmlDType::Q4_1),
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = ExpertError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "dense" => Ok(Self::Dense),
            "q8_0" => Ok(Self::Q8_0),
            "q4_0" => Ok(Self::Q4_0),
            "q4_1" => Ok(Self::Q4_1),
            other => Err(ExpertError::InvalidRequest(format!(
                "unknown weight format {other:?} ({})",
                Self::NAMES
            ))),
        }
    }
}

/// A projection `y = x W^T (+ b)`: dense, quantized blocks run by candle's `QMatMul`, or a
/// dense base plus a trainable low-rank update (LoRA, [`crate::lora`]).
#[derive(Debug, Clone)]
pub(crate) enum Proj {
    Dense(Linear),
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
    },
    /// Dense weights held fixed while others train: the backward pass computes the
    /// input's gradient only, not the weight's ([`crate::lora::frozen_linear`]).
    Frozen(Linear),
    /// `y = base(x) + scale · (x Aᵀ) Bᵀ` with `A: [rank, in]`, `B: [out, rank]`; the base
    /// is frozen.
    Lora {
        base: Linear,
        a: Tensor,
        b: Tensor,
        scale: f64,
    },
    /// Output features `start..start + len` of `whole`, a matrix of `rows` features that
    /// stacks several projections of the same input (q/k/v, gate/up), so that quantized
    /// weights run them as one matmul ([`Proj::forward_many`]).
    Part {
        whole: Arc<Proj>,
        rows: usize,
        start: usize,
        len: usize,
    },
}

impl Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(mut y) = Self::forward_host(&[self], x)? {
            return Ok(y.swap_remove(0));
        }
        match self {
            Self::Dense(l) => Ok(l.forward(x)?),
            Self::Quantized { weight, bias } => {
                // The CPU kernels read f32 rows.
                let dtype = x.dtype();
                let y = weight
                    .forward(&x.to_dtype(DType::F32)?.contiguous()?)?
                    .to_dtype(dtype)?;
                Ok(match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            }
            Self::Frozen(l) => crate::lora::frozen_linear(l, x),
            Self::Lora { base, a, b, scale } => {
                let low = x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?;
                Ok((crate::lora::frozen_linear(base, x)? + (low * *scale)?)?)
            }
            Self::Part {
                whole, start, len, ..
            } => Ok(whole.forward(x)?.narrow(D::Minus1, *start, *len)?),
        }
    }

    /// When `projs` are the parts of one stacked matrix, in order: that matrix.
    fn stacked<'a>(projs: &[&'a Self]) -> Option<&'a Arc<Proj>> {
        let mut next = 0;
        let mut shared: Option<&Arc<Proj>> = None;
        for p in projs {
            let Self::Part {
                whole, start, len, ..
            } = p
            else {
                return None;
            };
            if *start != next || shared.is_some_and(|w| !Arc::ptr_eq(w, whole)) {
                return None;
            }
            shared = Some(whole);
            next += len;
        }
        match projs.first() {
            Some(Self::Part { rows, .. }) if *rows == next => shared,
            _ => None,
        }
    }

    /// Several projections of the same input (q/k/v, gate/up), in one pass where the host
    /// kernels apply.
    pub(crate) fn forward_many(projs: &[&Self], x: &Tensor) -> Result<Vec<Tensor>> {
        if let Some(ys) = Self::forward_host(projs, x)? {
            return Ok(ys);
        }
        if let Some(whole) = Self::stacked(projs) {
            let y = whole.forward(x)?;
            return projs
                .iter()
                .map(|p| match p {
                    Self::Part { start, len, .. } => {
                        Ok(y.narrow(D::Minus1, *start, *len)?.contiguous()?)
                    }
                    _ => p.forward(x),
                })
                .collect();
        }
        projs.iter().map(|p| p.forward(x)).collect()
    }

    /// [`host::linears`] when every projection is dense f32 on the CPU, nothing tracks
    /// gradients and `x` has at most [`host::MAX_ROWS`] rows (decoding); `None` otherwise.
    fn forward_host(projs: &[&Self], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        if !host::eligible(x) {
            return Ok(None);
        }
        let k = x.dim(D::Minus1)?;
        let m = x.elem_count() / k.max(1);
        if m == 0 || m > host::MAX_ROWS {
            return Ok(None);
        }
        let mut linears = Vec::with_capacity(projs.len());
        for p in projs {
            let Self::Dense(l) = p else { return Ok(None) };
            let fits = |t: &Tensor| host::eligible(t) && t.is_contiguous();
            if !fits(l.weight()) || l.weight().dim(1)? != k || !l.bias().is_none_or(fits) {
                return Ok(None);
            }
            linears.push(l);
        }
        let x = x.contiguous()?;
        let ys = host::with_f32(&x, |xs| {
            let guards: Vec<_> = linears
                .iter()
                .map(|l| {
                    (
                        l.weight().storage_and_layout(),
                        l.bias().map(Tensor::storage_and_layout),
                    )
                })
                .collect();
            let mats: Option<Vec<host::Matrix<'_>>> = guards
                .iter()
                .zip(&linears)
                .map(|((w, b), l)| {
                    Some(host::Matrix {
                        weight: host::f32_slice(&w.0, w.1)?,
                        bias: match b {
                            Some(b) => Some(host::f32_slice(&b.0, b.1)?),
                            None => None,
                        },
                        n: l.weight().dim(0).ok()?,
                    })
                })
                .collect();
            mats.map(|mats| host::linears(xs, m, k, &mats))
        })
        .flatten();
        let Some(ys) = ys else { return Ok(None) };
        let mut dims = x.dims().to_vec();
        ys.into_iter()
            .zip(&linears)
            .map(|(y, l)| {
                if let Some(last) = dims.last_mut() {
                    *last = l.weight().dim(0)?;
                }
                Ok(Tensor::from_vec(y, dims.as_slice(), x.device())?)
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Bytes of weights this projection reads per forward (bias included).
    fn bytes(&self) -> usize {
        let dense = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match self {
            Self::Dense(l) | Self::Frozen(l) => dense(l.weight()) + l.bias().map_or(0, dense),
            Self::Quantized { weight, bias } => {
                let w = match weight {
                    QMatMul::QTensor(q) => q.storage_size_in_bytes(),
                    QMatMul::Tensor(t) | QMatMul::TensorF16(t) => dense(t),
                };
                w + bias.as_ref().map_or(0, dense)
            }
            Self::Lora { base, a, b, .. } => {
                dense(base.weight()) + base.bias().map_or(0, dense) + dense(a) + dense(b)
            }
            Self::Part {
                whole, rows, len, ..
            } => whole.bytes() * len / (*rows).max(1),
        }
    }

    /// Stacks dense projections of the same input into one quantized matrix and returns its
    /// parts, in order; `None` (nothing changed) when they are not all dense with one input
    /// width that the format's blocks divide.
    fn quantize_stacked(projs: &[&Self], ggml: GgmlDType) -> Result<Option<Vec<Self>>> {
        let mut weights = Vec::with_capacity(projs.len());
        let mut biases = Vec::with_capacity(projs.len());
        for p in projs {
            let Self::Dense(l) = p else { return Ok(None) };
            weights.push(l.weight().clone());
            biases.push(l.bias().cloned());
        }
        let Some(first) = weights.first() else {
            return Ok(None);
        };
        let k = first.dim(1)?;
        if k % ggml.block_size() != 0 || weights.iter().any(|w| w.dim(1).ok() != Some(k)) {
            return Ok(None);
        }
        let lens: Vec<usize> = weights
            .iter()
            .map(|w| w.dim(0))
            .collect::<candle_core::Result<_>>()?;
        let bias = if biases.iter().any(Option::is_some) {
            let parts = biases
                .iter()
                .zip(&weights)
                .map(|(b, w)| match b {
                    Some(b) => Ok(b.clone()),
                    None => w.narrow(1, 0, 1)?.squeeze(1)?.zeros_like(),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Some(Tensor::cat(&parts, 0)?)
        } else {
            None
        };
        let mut whole = Self::Dense(Linear::new(Tensor::cat(&weights, 0)?, bias));
        if !whole.quantize(ggml)? {
            return Ok(None);
        }
        let rows = lens.iter().sum();
        let whole = Arc::new(whole);
        let mut start = 0;
        Ok(Some(
            lens.into_iter()
                .map(|len| {
                    let part = Self::Part {
                        whole: whole.clone(),
                        rows,
                        start,
                        len,
                    };
                    start += len;
                    part
                })
                .collect(),
        ))
    }

    /// Requantizes a dense projection; one whose input width is not a multiple of the
    /// block size stays dense. Returns whether it was quantized.
    fn quantize(&mut self, ggml: GgmlDType) -> Result<bool> {
        let Self::Dense(l) = self else {
            return Ok(false);
        };
        let w = l.weight();
        if w.dim(D::Minus1)? % ggml.block_size() != 0 {
            return Ok(false);
        }
        // Quantized on the CPU, stored on the weights' device.
        let cpu = w.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let q = QTensor::quantize_onto(&cpu, ggml, w.device())?;
        *self = Self::Quantized {
            weight: QMatMul::from_qtensor(q)?,
            bias: l.bias().cloned(),
        };
        Ok(true)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor, path: Path) -> Result<Tensor> {
        Ok(match path {
            Path::Fused => {
                candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?
            }
            Path::Differentiable => {
                let dtype = x.dtype();
                let x = x.to_dtype(DType::F32)?;
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                let normed = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
                normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?
            }
        })
    }
}

/// Cos/sin tables for every position up to the context length.
#[derive(Debug, Clone)]
pub(crate) struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64) as f32)
            .collect();
        let positions = cfg.max_position_embeddings;
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let t = Tensor::arange(0u32, positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((positions, 1))?;
        let freqs = t.matmul(&inv_freq)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    /// Applies the rotation to `x` `[batch, heads, seq, head_dim]` at positions
    /// `offset..offset + seq`.
    fn apply(&self, x: &Tensor, offset: usize, path: Path) -> Result<Tensor> {
        let (_, _, seq, dim) = x.dims4()?;
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        Ok(match path {
            Path::Fused => candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?,
            Path::Differentiable => {
                let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?;
                let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?;
                let x1 = x.narrow(D::Minus1, 0, dim / 2)?;
                let x2 = x.narrow(D::Minus1, dim / 2, dim / 2)?;
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                (x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?
            }
        })
    }
}

/// Keys and values of one layer for the positions seen so far: tensors
/// `[batch, kv_heads, len, head_dim]`, or host buffers when the host decode kernels run
/// ([`host::HostKv`]). Either converts to the other when a step of the other kind comes.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Kv,
}

#[derive(Debug, Clone, Default)]
enum Kv {
    #[default]
    Empty,
    Tensors(Tensor, Tensor),
    Host(host::HostKv),
}

impl LayerCache {
    /// Number of positions cached.
    fn len(&self) -> usize {
        match &self.kv {
            Kv::Empty => 0,
            Kv::Tensors(k, _) => k.dim(2).unwrap_or(0),
            Kv::Host(h) => h.len,
        }
    }

    fn bytes(&self) -> usize {
        match &self.kv {
            Kv::Empty => 0,
            Kv::Tensors(k, v) => (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes(),
            Kv::Host(h) => h.bytes(),
        }
    }

    /// The cache as tensors, converting host buffers.
    fn take_tensors(&mut self, device: &Device, dtype: DType) -> Result<Option<(Tensor, Tensor)>> {
        Ok(match std::mem::take(&mut self.kv) {
            Kv::Empty => None,
            Kv::Tensors(k, v) => Some((k, v)),
            Kv::Host(h) => Some(h.to_tensors(device, dtype)?),
        })
    }

    /// The cache as host buffers for a batch of `batch`, converting tensors.
    fn take_host(
        &mut self,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<host::HostKv> {
        let h = match std::mem::take(&mut self.kv) {
            Kv::Empty => host::HostKv::new(batch, kv_heads, head_dim),
            Kv::Tensors(k, v) => host::HostKv::from_tensors(&k, &v)?,
            Kv::Host(h) => h,
        };
        if (h.batch(), h.kv_heads, h.head_dim) != (batch, kv_heads, head_dim) {
            return Err(ExpertError::InvalidRequest(format!(
                "a cache of {} sequences × {} heads × {} for a batch of {batch} × {kv_heads} × \
                 {head_dim}",
                h.batch(),
                h.kv_heads,
                h.head_dim
            )));
        }
        Ok(h)
    }
}

/// The explicit KV cache of one sequence batch: one entry per layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of positions cached in layer `index` (ahead of later layers mid-step).
    fn len_at(&self, index: usize) -> usize {
        self.layers.get(index).map_or(0, LayerCache::len)
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.kv = Kv::Empty;
        }
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes).sum()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

fn linear(vb: VarBuilder, inp: usize, out: usize, bias: bool) -> Result<Proj> {
    Ok(Proj::Dense(if bias {
        candle_nn::linear(inp, out, vb)?
    } else {
        candle_nn::linear_no_bias(inp, out, vb)?
    }))
}

/// `[b, kv_heads, s, d]` → `[b, kv_heads * rep, s, d]`, each kv head repeated `rep` times.
fn repeat_kv(x: Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x);
    }
    let (b, kvh, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kvh, rep, s, d))?
        .reshape((b, kvh * rep, s, d))?)
}

impl Attention {
    fn new(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let (heads, kv_heads, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        Ok(Self {
            q_proj: linear(vb.pp("q_proj"), h, heads * hd, cfg.qkv_bias)?,
            k_proj: linear(vb.pp("k_proj"), h, kv_heads * hd, cfg.qkv_bias)?,
            v_proj: linear(vb.pp("v_proj"), h, kv_heads * hd, cfg.qkv_bias)?,
            o_proj: linear(vb.pp("o_proj"), heads * hd, h, false)?,
            heads,
            kv_heads,
            head_dim: hd,
        })
    }

    /// One decode position for each of several sequences, each with its own cache and
    /// position: `x` is `[n, 1, hidden]`, row `i` continues `caches[i]` at `offsets[i]`.
    /// The projections run batched; attention runs per sequence over its own keys.
    fn forward_ragged(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        caches: &mut [&mut LayerCache],
        offsets: &[usize],
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let [q, k, v] = crate::backend::array(Proj::forward_many(
            &[&self.q_proj, &self.k_proj, &self.v_proj],
            x,
        )?)?;
        let mut outs = Vec::with_capacity(n);
        for (i, cache) in caches.iter_mut().enumerate() {
            let row = |t: &Tensor| t.narrow(0, i, 1);
            outs.push(self.attend(
                &row(&q)?,
                &row(&k)?,
                &row(&v)?,
                rotary,
                Some(&mut **cache),
                offsets[i],
                Path::Fused,
            )?);
        }
        let out = Tensor::cat(&outs, 0)?.reshape((n, 1, self.heads * self.head_dim))?;
        self.o_proj.forward(&out)
    }

    /// [`Attention::attend`] by the host kernel ([`host::attend`]), `[b, t, heads·d]`; `None`
    /// (and the cache untouched) when an input is not contiguous host f32.
    fn attend_host(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rotary: &Rotary,
        cache: Option<&mut LayerCache>,
        offset: usize,
    ) -> Result<Option<Tensor>> {
        let (b, t, _) = q.dims3()?;
        if ![q, k, v].into_iter().all(host::eligible) {
            return Ok(None);
        }
        let guards: Vec<_> = [q, k, v, &rotary.cos, &rotary.sin]
            .iter()
            .map(|x| x.storage_and_layout())
            .collect();
        let slices: Option<Vec<&[f32]>> =
            guards.iter().map(|(s, l)| host::f32_slice(s, l)).collect();
        let Some([q, k, v, cos, sin]) = slices.and_then(|s| <[&[f32]; 5]>::try_from(s).ok()) else {
            return Ok(None);
        };
        let spec = host::AttnSpec {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            cos,
            sin,
        };
        let y = match cache {
            Some(c) => {
                let mut kv = c.take_host(b, self.kv_heads, self.head_dim)?;
                let y = host::attend(q, k, v, t, offset, &spec, &mut kv);
                c.kv = Kv::Host(kv);
                y
            }
            None => {
                let mut scratch = host::HostKv::new(b, self.kv_heads, self.head_dim);
                host::attend(q, k, v, t, offset, &spec, &mut scratch)
            }
        };
        // `eligible` held: the inputs are on the CPU.
        Ok(Some(Tensor::from_vec(
            y,
            (b, t, self.heads * self.head_dim),
            &Device::Cpu,
        )?))
    }

    /// Rotary embedding, cache update and scaled dot-product attention for projected
    /// `q`, `k`, `v` (`[batch, t, heads * head_dim]`); returns `[batch, t, heads, head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rotary: &Rotary,
        cache: Option<&mut LayerCache>,
        offset: usize,
        path: Path,
    ) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let mut cache = cache;
        if path == Path::Fused && [q, k, v].into_iter().all(host::eligible) {
            if let Some(y) = self.attend_host(q, k, v, rotary, cache.as_deref_mut(), offset)? {
                return Ok(y.reshape((b, t, self.heads, self.head_dim))?);
            }
        }
        let shape = |y: &Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, self.head_dim))?.transpose(1, 2)?)
        };
        let q = shape(q, self.heads)?;
        let k = shape(k, self.kv_heads)?;
        let v = shape(v, self.kv_heads)?.contiguous()?;
        let q = rotary.apply(&q, offset, path)?;
        let k = rotary.apply(&k, offset, path)?;

        let (k, v) = match cache {
            Some(cache) => {
                let (k, v) = match cache.take_tensors(q.device(), q.dtype())? {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                cache.kv = Kv::Tensors(k.clone(), v.clone());
                (k, v)
            }
            None => (k, v),
        };
        let rep = self.heads / self.kv_heads;
        let k = repeat_kv(k, rep)?.contiguous()?;
        let v = repeat_kv(v, rep)?.contiguous()?;
        let q = q.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        let s = k.dim(2)?;
        if t > 1 {
            let mask = causal_mask(t, s, q.device())?.to_dtype(scores.dtype())?;
            scores = scores.broadcast_add(&mask)?;
        }
        let probs = match path {
            Path::Fused => candle_nn::ops::softmax_last_dim(&scores)?,
            Path::Differentiable => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        Ok(probs.matmul(&v)?.transpose(1, 2)?)
    }
}

/// `[t, s]` additive mask: query `i` (at absolute position `s - t + i`) sees keys `0..=s - t + i`.
fn causal_mask(t: usize, s: usize, device: &Device) -> Result<Tensor> {
    let offset = s - t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..s).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, s), device)?)
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
}

impl Mlp {
    fn new(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear(vb.pp("gate_proj"), h, i, false)?,
            up_proj: linear(vb.pp("up_proj"), h, i, false)?,
            down_proj: linear(vb.pp("down_proj"), i, h, false)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [gate, up] =
            crate::backend::array(Proj::forward_many(&[&self.gate_proj, &self.up_proj], x)?)?;
        self.down_proj
            .forward(&(candle_nn::ops::silu(&gate)? * up)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// A decoder-only transformer in the Qwen2 / Llama layout.
#[derive(Debug, Clone)]
pub struct Decoder {
    config: ModelConfig,
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Proj,
    rotary: Rotary,
    device: Device,
    dtype: DType,
    weights: WeightFormat,
}

/// What [`Decoder::forward`] returns.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `[batch, seq, vocab]` (or `[batch, 1, vocab]` when only the last position was asked for).
    pub logits: Tensor,
    /// When asked: the residual stream `[batch, seq, hidden]` after the embedding and after
    /// each layer (`num_layers + 1` tensors), and the final normed hidden state last
    /// (what the LM head reads).
    pub hidden_states: Option<Vec<Tensor>>,
}

impl Decoder {
    /// Builds the decoder from weights under `vb` (names as in the module doc).
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let cfg = config;
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("model.embed_tokens"))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let vb = vb.pp(format!("model.layers.{i}"));
            layers.push(Layer {
                input_layernorm: RmsNorm::new(
                    vb.pp("input_layernorm"),
                    cfg.hidden_size,
                    cfg.rms_norm_eps,
                )?,
                self_attn: Attention::new(vb.pp("self_attn"), cfg)?,
                post_attention_layernorm: RmsNorm::new(
                    vb.pp("post_attention_layernorm"),
                    cfg.hidden_size,
                    cfg.rms_norm_eps,
                )?,
                mlp: Mlp::new(vb.pp("mlp"), cfg)?,
            });
        }
        let norm = RmsNorm::new(vb.pp("model.norm"), cfg.hidden_size, cfg.rms_norm_eps)?;
        let lm_head = Proj::Dense(if cfg.tie_word_embeddings {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?
        });
        let rotary = Rotary::new(cfg, vb.dtype(), vb.device())?;
        Ok(Self {
            config: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            weights: WeightFormat::Dense,
        })
    }

    /// Requantizes every projection (attention, MLP, LM head) to `format` for candle's
    /// quantized matmul (the LM head to Q8_0 when `format` has 4 bits); embeddings and
    /// norms stay dense. Projections whose input width is
    /// not a multiple of the format's block size stay dense. Returns how many projections
    /// were quantized. Quantized weights have no backward pass: train on dense ones.
    pub fn quantize(&mut self, format: WeightFormat) -> Result<usize> {
        let Some(ggml) = format.ggml() else {
            return Ok(0);
        };
        let mut n = 0;
        for layer in &mut self.layers {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            // q/k/v and gate/up each become one stacked matrix: one quantization of the input
            // and one dispatch instead of three and two.
            if let Some([q, k, v]) =
                Proj::quantize_stacked(&[&a.q_proj, &a.k_proj, &a.v_proj], ggml)?
                    .and_then(|p| <[Proj; 3]>::try_from(p).ok())
            {
                (a.q_proj, a.k_proj, a.v_proj) = (q, k, v);
                n += 3;
            }
            if let Some([g, u]) = Proj::quantize_stacked(&[&m.gate_proj, &m.up_proj], ggml)?
                .and_then(|p| <[Proj; 2]>::try_from(p).ok())
            {
                (m.gate_proj, m.up_proj) = (g, u);
                n += 2;
            }
            for p in [
                &mut a.q_proj,
                &mut a.k_proj,
                &mut a.v_proj,
                &mut a.o_proj,
                &mut m.gate_proj,
                &mut m.up_proj,
                &mut m.down_proj,
            ] {
                n += usize::from(p.quantize(ggml)?);
            }
        }
        // The LM head is the most sensitive projection (it is also the tied embedding):
        // like llama.cpp's own quantizations, keep it at 8 bits when the body has 4.
        let head = match format {
            WeightFormat::Q4_0 | WeightFormat::Q4_1 => GgmlDType::Q8_0,
            _ => ggml,
        };
        n += usize::from(self.lm_head.quantize(head)?);
        self.weights = format;
        Ok(n)
    }

    /// The attention and MLP projections of every layer with their module names
    /// (`model.layers.{i}.self_attn.q_proj`, … `model.layers.{i}.mlp.down_proj`), in layer
    /// order. The LM head is not among them.
    pub(crate) fn projections_mut(&mut self) -> Vec<(String, &mut Proj)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            for (name, p) in [
                ("self_attn.q_proj", &mut a.q_proj),
                ("self_attn.k_proj", &mut a.k_proj),
                ("self_attn.v_proj", &mut a.v_proj),
                ("self_attn.o_proj", &mut a.o_proj),
                ("mlp.gate_proj", &mut m.gate_proj),
                ("mlp.up_proj", &mut m.up_proj),
                ("mlp.down_proj", &mut m.down_proj),
            ] {
                out.push((format!("model.layers.{i}.{name}"), p));
            }
        }
        out
    }

    /// The LM head's projection.
    pub(crate) fn lm_head_mut(&mut self) -> &mut Proj {
        &mut self.lm_head
    }

    /// Bytes of weights one decode step reads from memory whatever the batch: every
    /// projection and the LM head, in the format they are held in (the embedding lookup
    /// reads one row per token and the norms are tiny, so neither is counted). Decode
    /// tokens/s × this ÷ the machine's read bandwidth is the fraction of the memory-bound
    /// limit a batch-1 decode reaches.
    pub fn weight_bytes_per_step(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                let (a, m) = (&l.self_attn, &l.mlp);
                [
                    &a.q_proj,
                    &a.k_proj,
                    &a.v_proj,
                    &a.o_proj,
                    &m.gate_proj,
                    &m.up_proj,
                    &m.down_proj,
                ]
                .iter()
                .map(|p| p.bytes())
                .sum::<usize>()
            })
            .sum();
        layers + self.lm_head.bytes()
    }

    /// How the projections are held.
    pub fn weight_format(&self) -> WeightFormat {
        self.weights
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// A fresh cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Token ids `[batch, seq]` → embeddings `[batch, seq, hidden]`.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens.forward(input_ids)?)
    }

    /// Runs layer `index` on the residual stream `h` at positions `offset..`.
    pub fn layer(
        &self,
        index: usize,
        h: &Tensor,
        cache: Option<&mut KvCache>,
        offset: usize,
        path: Path,
    ) -> Result<Tensor> {
        let cache = cache.and_then(|c| c.layers.get_mut(index));
        crate::backend::layer_step(&self.ops(path), self, index, h, cache, offset)
    }

    /// Runs layer `index` for one decode position of each of several sequences: `h` is
    /// `[n, 1, hidden]`, row `i` continues `caches[i]` (continuous batching: the sequences
    /// may have different lengths).
    pub fn layer_ragged(
        &self,
        index: usize,
        h: &Tensor,
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor> {
        let layer = self
            .layers
            .get(index)
            .ok_or_else(|| ExpertError::InvalidRequest(format!("no layer {index}")))?;
        if caches.len() != h.dim(0)? {
            return Err(ExpertError::InvalidRequest(format!(
                "{} caches for a batch of {}",
                caches.len(),
                h.dim(0)?
            )));
        }
        let offsets: Vec<usize> = caches.iter().map(|c| c.len_at(index)).collect();
        let mut layer_caches: Vec<&mut LayerCache> = caches
            .iter_mut()
            .map(|c| {
                c.layers
                    .get_mut(index)
                    .ok_or_else(|| ExpertError::InvalidRequest("cache of another model".into()))
            })
            .collect::<Result<_>>()?;
        let x = layer.input_layernorm.forward(h, Path::Fused)?;
        let h =
            (h + layer
                .self_attn
                .forward_ragged(&x, &self.rotary, &mut layer_caches, &offsets)?)?;
        let x = layer.post_attention_layernorm.forward(&h, Path::Fused)?;
        Ok((&h + layer.mlp.forward(&x)?)?)
    }

    /// One decode step for several sequences at once (continuous batching): `tokens[i]`
    /// continues `caches[i]`. Returns logits `[n, vocab]` and the final normed hidden
    /// states `[n, hidden]`.
    pub fn decode_ragged(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> Result<(Tensor, Tensor)> {
        if let Some(c) = caches
            .iter()
            .find(|c| c.len() + 1 > self.config.max_position_embeddings)
        {
            return Err(ExpertError::InvalidRequest(format!(
                "{} positions exceed the model's context of {}",
                c.len() + 1,
                self.config.max_position_embeddings
            )));
        }
        let n = tokens.len();
        let input = Tensor::from_slice(tokens, (n, 1), &self.device)?;
        let mut h = self.embed(&input)?;
        for i in 0..self.layers.len() {
            h = self.layer_ragged(i, &h, caches)?;
        }
        let normed = self.norm.forward(&h, Path::Fused)?;
        let logits = self.lm_head.forward(&normed)?;
        Ok((logits.squeeze(1)?, normed.squeeze(1)?))
    }

    /// Final norm of the residual stream.
    pub fn final_norm(&self, h: &Tensor, path: Path) -> Result<Tensor> {
        self.norm.forward(h, path)
    }

    /// Final norm and LM head: residual stream → logits.
    pub fn head(&self, h: &Tensor, path: Path) -> Result<Tensor> {
        self.lm_head.forward(&self.norm.forward(h, path)?)
    }

    /// LM head on an already-normed hidden state.
    pub fn lm_head(&self, normed: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(normed)
    }

    /// Full forward of `input_ids` `[batch, seq]`, continuing the sequences in `cache`.
    /// With `last_only`, logits are computed for the last position only (decoding).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        last_only: bool,
        hidden_states: bool,
        path: Path,
    ) -> Result<ForwardOutput> {
        let (_, seq) = input_ids.dims2()?;
        let out = crate::backend::forward(
            &self.ops(path),
            self,
            input_ids,
            seq,
            cache.map(|c| c.layers.as_mut_slice()),
            last_only,
            hidden_states,
        )?;
        Ok(ForwardOutput {
            logits: out.logits,
            hidden_states: out.hidden_states,
        })
    }

    /// The candle device's operations for this model along `path`.
    pub(crate) fn ops(&self, path: Path) -> CandleOps {
        CandleOps {
            device: self.device.clone(),
            path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Architecture;
    use candle_nn::VarMap;

    fn tiny_config(arch: Architecture, tied: bool) -> ModelConfig {
        ModelConfig {
            architecture: arch,
            vocab_size: 61,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            max_position_embeddings: 64,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            tie_word_embeddings: tied,
            qkv_bias: arch == Architecture::Qwen2,
            bos_token_id: None,
            eos_token_ids: vec![0],
        }
    }

    fn tiny(arch: Architecture, tied: bool) -> (Decoder, VarMap) {
        let cfg = tiny_config(arch, tied);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let d = Decoder::new(&cfg, vb).unwrap();
        // Non-zero biases and norms so that every term is exercised.
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.ends_with(".bias") || name.contains("norm") {
                let t = (var.as_tensor().ones_like().unwrap() * 0.1).unwrap();
                let t = (var.as_tensor().rand_like(0.5, 1.5).unwrap() * t).unwrap();
                var.set(&t).unwrap();
            }
        }
        // Inference weights are plain tensors (the host kernels skip anything that tracks
        // gradients); `d` keeps the variables, as training sees them.
        let plain: std::collections::HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
            .collect();
        drop(d);
        let vb = VarBuilder::from_tensors(plain, DType::F32, &Device::Cpu);
        (Decoder::new(&cfg, vb).unwrap(), varmap)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn kv_cache_decoding_matches_full_recomputation() {
        for (arch, tied) in [(Architecture::Qwen2, true), (Architecture::Llama, false)] {
            let (d, _vm) = tiny(arch, tied);
            let ids: Vec<u32> = vec![3, 17, 5, 42, 9, 11, 60, 1, 2, 33];
            let full = Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let reference = d
                .forward(&full, None, false, false, Path::Fused)
                .unwrap()
                .logits;

            let mut cache = d.new_cache();
            let prefix = full.narrow(1, 0, 4).unwrap();
            let mut pieces = vec![
                d.forward(&prefix, Some(&mut cache), false, false, Path::Fused)
                    .unwrap()
                    .logits,
            ];
            for i in 4..ids.len() {
                let x = full.narrow(1, i, 1).unwrap();
                pieces.push(
                    d.forward(&x, Some(&mut cache), false, false, Path::Fused)
                        .unwrap()
                        .logits,
                );
            }
            assert_eq!(cache.len(), ids.len());
            let cached = Tensor::cat(&pieces, 1).unwrap();
            let diff = max_diff(&reference, &cached);
            assert!(diff < 1e-4, "{arch:?}: {diff}");
            cache.reset();
            assert!(cache.is_empty());
        }
    }

    #[test]
    fn fused_and_differentiable_paths_agree() {
        let (d, _vm) = tiny(Architecture::Qwen2, true);
        let x = Tensor::new(
            &[[1u32, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]],
            &Device::Cpu,
        )
        .unwrap();
        let a = d.forward(&x, None, false, true, Path::Fused).unwrap();
        let b = d
            .forward(&x, None, false, true, Path::Differentiable)
            .unwrap();
        assert!(max_diff(&a.logits, &b.logits) < 1e-5);
        let (ha, hb) = (a.hidden_states.unwrap(), b.hidden_states.unwrap());
        assert_eq!(ha.len(), 3 + 2);
        for (x, y) in ha.iter().zip(&hb) {
            assert!(max_diff(x, y) < 1e-5);
        }
    }

    #[test]
    fn batch_rows_equal_single_rows() {
        let (d, _vm) = tiny(Architecture::Qwen2, true);
        let x = Tensor::new(&[[1u32, 2, 3, 4], [9, 8, 7, 6]], &Device::Cpu).unwrap();
        let both = d
            .forward(&x, None, true, false, Path::Fused)
            .unwrap()
            .logits;
        for row in 0..2 {
            let one = d
                .forward(
                    &x.narrow(0, row, 1).unwrap(),
                    None,
                    true,
                    false,
                    Path::Fused,
                )
                .unwrap()
                .logits;
            assert!(max_diff(&both.narrow(0, row, 1).unwrap(), &one) < 1e-5);
        }
    }

    #[test]
    fn ragged_decode_matches_one_sequence_at_a_time() {
        for (arch, tied) in [(Architecture::Qwen2, true), (Architecture::Llama, false)] {
            let (d, _vm) = tiny(arch, tied);
            let prompts: [&[u32]; 3] = [&[3, 17, 5], &[42], &[9, 11, 60, 1, 2, 33, 7]];
            let next = [4u32, 8, 15];
            let prefilled = || -> Vec<KvCache> {
                prompts
                    .iter()
                    .map(|p| {
                        let mut c = d.new_cache();
                        let x = Tensor::new(*p, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
                        d.forward(&x, Some(&mut c), true, false, Path::Fused)
                            .unwrap();
                        c
                    })
                    .collect()
            };
            let mut batched = prefilled();
            let mut refs: Vec<&mut KvCache> = batched.iter_mut().collect();
            let (logits, normed) = d.decode_ragged(&next, &mut refs).unwrap();
            assert_eq!(logits.dims(), [3, 61]);
            assert_eq!(normed.dims(), [3, 32]);
            let mut alone = prefilled();
            for (i, cache) in alone.iter_mut().enumerate() {
                let x = Tensor::new(&[[next[i]]], &Device::Cpu).unwrap();
                let one = d.forward(&x, Some(cache), true, true, Path::Fused).unwrap();
                let l = one.logits.squeeze(0).unwrap();
                let diff = max_diff(&logits.narrow(0, i, 1).unwrap(), &l);
                assert!(diff < 1e-5, "{arch:?} row {i}: {diff}");
                let h = one
                    .hidden_states
                    .unwrap()
                    .pop()
                    .unwrap()
                    .squeeze(0)
                    .unwrap();
                assert!(max_diff(&normed.narrow(0, i, 1).unwrap(), &h) < 1e-5);
                assert_eq!(cache.len(), batched[i].len());
            }
        }
    }

    #[test]
    fn host_kernels_match_the_tensor_path_and_caches_convert_between_them() {
        for (arch, tied) in [(Architecture::Qwen2, true), (Architecture::Llama, false)] {
            let (plain, vm) = tiny(arch, tied);
            let vars = Decoder::new(
                &tiny_config(arch, tied),
                VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
            )
            .unwrap();
            let ids = Tensor::new(&[[3u32, 17, 5, 42, 9], [1, 2, 60, 7, 8]], &Device::Cpu).unwrap();
            let a = plain.forward(&ids, None, false, true, Path::Fused).unwrap();
            let b = vars.forward(&ids, None, false, true, Path::Fused).unwrap();
            assert!(max_diff(&a.logits, &b.logits) < 1e-5, "{arch:?}");
            // A cache filled by one path continues under the other, both ways.
            let prefix = ids.narrow(1, 0, 3).unwrap();
            let mut c1 = plain.new_cache();
            let mut c2 = plain.new_cache();
            plain
                .forward(&prefix, Some(&mut c1), true, false, Path::Fused)
                .unwrap();
            vars.forward(&prefix, Some(&mut c2), true, false, Path::Fused)
                .unwrap();
            assert_eq!(c1.len(), 3);
            assert!(
                matches!(c1.layers[0].kv, Kv::Host(_)),
                "the host kernels ran"
            );
            assert!(
                matches!(c2.layers[0].kv, Kv::Tensors(..)),
                "the tensor path ran"
            );
            for i in 3..5 {
                let x = ids.narrow(1, i, 1).unwrap();
                let y1 = vars
                    .forward(&x, Some(&mut c1), true, false, Path::Fused)
                    .unwrap();
                let y2 = plain
                    .forward(&x, Some(&mut c2), true, false, Path::Fused)
                    .unwrap();
                let want = b.logits.narrow(1, i, 1).unwrap();
                assert!(max_diff(&y1.logits, &want) < 1e-5, "{arch:?} {i}");
                assert!(max_diff(&y2.logits, &want) < 1e-5, "{arch:?} {i}");
            }
            assert_eq!(c1.len(), 5);
            assert_eq!(c1.bytes(), c2.bytes());
        }
    }

    #[test]
    fn stacked_quantized_projections_compute_what_separate_ones_do() {
        for (arch, tied) in [(Architecture::Qwen2, true), (Architecture::Llama, false)] {
            let (dense, _vm) = tiny(arch, tied);
            let mut stacked = dense.clone();
            let n = stacked.quantize(WeightFormat::Q8_0).unwrap();
            // q/k/v/o and gate/up of 3 layers (down's input, 48 wide, is not blocks of 32),
            // plus the LM head.
            assert_eq!(n, 3 * 6 + 1, "{arch:?}");
            assert!(matches!(
                stacked.layers[0].self_attn.q_proj,
                Proj::Part { .. }
            ));
            assert!(matches!(stacked.layers[0].mlp.up_proj, Proj::Part { .. }));
            let mut separate = dense.clone();
            for (_, p) in separate.projections_mut() {
                p.quantize(GgmlDType::Q8_0).unwrap();
            }
            separate.lm_head_mut().quantize(GgmlDType::Q8_0).unwrap();
            assert_eq!(
                stacked.weight_bytes_per_step(),
                separate.weight_bytes_per_step()
            );
            let ids = Tensor::new(&[[3u32, 17, 5, 42], [1, 2, 60, 7]], &Device::Cpu).unwrap();
            let a = stacked
                .forward(&ids, None, false, true, Path::Fused)
                .unwrap();
            let b = separate
                .forward(&ids, None, false, true, Path::Fused)
                .unwrap();
            assert!(max_diff(&a.logits, &b.logits) < 1e-5, "{arch:?}");
            // A part alone computes its rows of the stack.
            let x = a.hidden_states.unwrap()[1].clone();
            let (sa, sb) = (&stacked.layers[1].self_attn, &separate.layers[1].self_attn);
            let d = max_diff(
                &sa.k_proj.forward(&x).unwrap(),
                &sb.k_proj.forward(&x).unwrap(),
            );
            assert!(d < 1e-5, "{arch:?}: {d}");
        }
    }

    #[test]
    fn context_overflow_is_an_error() {
        let (d, _vm) = tiny(Architecture::Qwen2, true);
        let x = Tensor::zeros((1, 65), DType::U32, &Device::Cpu).unwrap();
        let e = d
            .forward(&x, None, true, false, Path::Fused)
            .unwrap_err()
            .to_string();
        assert!(e.contains("context"), "{e}");
    }
}
