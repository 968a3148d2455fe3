//! The candle device of [`crate::backend`]: the generic decoder and fusion steps on candle
//! tensors, with [`Path::Fused`] kernels for inference or [`Path::Differentiable`] basic ops
//! (which have backward passes) for training.

use candle_core::{D, Device, Module, Tensor};
use candle_nn::{Embedding, Linear};

use super::{Attention, Decoder, KvCache, LayerCache, Path, Proj, RmsNorm, Rotary};
use crate::backend::{LayerWeights, Ops, RouterWeights, Weights};
use crate::config::ModelConfig;
use crate::error::{ExpertError, Result};

/// Candle operations on one device along one numeric path.
#[derive(Debug, Clone)]
pub(crate) struct CandleOps {
    pub(crate) device: Device,
    pub(crate) path: Path,
}

impl Ops for CandleOps {
    type T = Tensor;
    type Linear = Proj;
    type Norm = RmsNorm;
    type Attention = Attention;
    type Rope = Rotary;
    type LayerCache = LayerCache;

    fn ids(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(Tensor::new(ids, &self.device)?.unsqueeze(0)?)
    }

    fn embed(&self, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let hidden = table.dim(1)?;
        Ok(Embedding::new(table.clone(), hidden).forward(ids)?)
    }

    fn linear(&self, w: &Proj, x: &Tensor) -> Result<Tensor> {
        w.forward(x)
    }

    fn linears<const N: usize>(&self, ws: [&Proj; N], x: &Tensor) -> Result<[Tensor; N]> {
        crate::backend::array(Proj::forward_many(&ws, x)?)
    }

    fn rms_norm(&self, w: &RmsNorm, x: &Tensor) -> Result<Tensor> {
        w.forward(x, self.path)
    }

    fn attention(
        &self,
        attn: &Attention,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rope: &Rotary,
        cache: Option<&mut LayerCache>,
        offset: usize,
    ) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let out = attn.attend(q, k, v, rope, cache, offset, self.path)?;
        Ok(out.reshape((b, t, attn.heads * attn.head_dim))?)
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        Ok((candle_nn::ops::silu(gate)? * up)?)
    }

    fn silu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::silu(x)?)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a + b)?)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.path {
            Path::Fused => candle_nn::ops::softmax_last_dim(&x.contiguous()?)?,
            Path::Differentiable => candle_nn::ops::softmax(x, D::Minus1)?,
        })
    }

    fn concat_last(&self, xs: &[&Tensor]) -> Result<Tensor> {
        Ok(Tensor::cat(xs, D::Minus1)?)
    }

    fn mix(&self, xs: &[&Tensor], weights: &[f32]) -> Result<Tensor> {
        let (first, rest) = xs
            .split_first()
            .ok_or_else(|| ExpertError::InvalidRequest("nothing to mix".into()))?;
        if weights.len() != xs.len() {
            return Err(ExpertError::InvalidRequest(format!(
                "{} weights for {} tensors",
                weights.len(),
                xs.len()
            )));
        }
        let mut acc = (*first * f64::from(weights[0]))?;
        for (x, &w) in rest.iter().zip(&weights[1..]) {
            acc = (acc + (*x * f64::from(w))?)?;
        }
        Ok(acc)
    }

    fn mix_rows(&self, xs: &[&Tensor], w: &Tensor) -> Result<Tensor> {
        let mut acc: Option<Tensor> = None;
        for (i, x) in xs.iter().enumerate() {
            let term = x.broadcast_mul(&w.narrow(D::Minus1, i, 1)?)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        acc.ok_or_else(|| ExpertError::InvalidRequest("nothing to mix".into()))
    }

    fn last_position(&self, x: &Tensor) -> Result<Tensor> {
        let dim = x.rank().saturating_sub(2);
        let t = x.dim(dim)?;
        Ok(x.narrow(dim, t - 1, 1)?)
    }

    fn cache_len(&self, cache: &LayerCache) -> usize {
        cache.len()
    }

    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        Ok(x.flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?)
    }
}

impl Weights<CandleOps> for Decoder {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn embedding(&self) -> &Tensor {
        self.embed_tokens.embeddings()
    }

    fn layer(&self, index: usize) -> Result<LayerWeights<'_, CandleOps>> {
        let l = self
            .layers
            .get(index)
            .ok_or_else(|| ExpertError::InvalidRequest(format!("no layer {index}")))?;
        let (a, m) = (&l.self_attn, &l.mlp);
        Ok(LayerWeights {
            input_norm: &l.input_layernorm,
            attention: a,
            q: &a.q_proj,
            k: &a.k_proj,
            v: &a.v_proj,
            o: &a.o_proj,
            post_norm: &l.post_attention_layernorm,
            gate: &m.gate_proj,
            up: &m.up_proj,
            down: &m.down_proj,
        })
    }

    fn final_norm(&self) -> &RmsNorm {
        &self.norm
    }

    fn lm_head(&self) -> &Proj {
        &self.lm_head
    }

    fn rope(&self) -> &Rotary {
        &self.rotary
    }
}

impl KvCache {
    /// The per-layer caches, as the generic steps take them.
    pub(crate) fn layers_mut(&mut self) -> &mut [LayerCache] {
        &mut self.layers
    }
}

/// A token router's layers as candle-device router weights.
pub(crate) fn router_weights(fc1: &Linear, fc2: &Linear) -> RouterWeights<CandleOps> {
    RouterWeights {
        fc1: Proj::Dense(fc1.clone()),
        fc2: Proj::Dense(fc2.clone()),
    }
}

/// Dense host copies of a decoder's weights, for uploading to another device.
#[derive(Debug, Clone)]
pub struct HostWeights {
    pub config: ModelConfig,
    /// `[vocab, hidden]`, row-major.
    pub embed: Vec<f32>,
    pub layers: Vec<HostLayer>,
    pub norm: Vec<f32>,
    /// `None` when tied to the embedding.
    pub lm_head: Option<HostLinear>,
    /// The very cos/sin tables the candle path rotates by, `[positions, head_dim / 2]`.
    pub rope_cos: Vec<f32>,
    pub rope_sin: Vec<f32>,
}

/// A dense projection: `weight` `[out, in]` row-major, optional bias `[out]`.
#[derive(Debug, Clone)]
pub struct HostLinear {
    pub out_features: usize,
    pub in_features: usize,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// One layer's host weights, in the order of the layer's computation.
#[derive(Debug, Clone)]
pub struct HostLayer {
    pub input_norm: Vec<f32>,
    pub q: HostLinear,
    pub k: HostLinear,
    pub v: HostLinear,
    pub o: HostLinear,
    pub post_norm: Vec<f32>,
    pub gate: HostLinear,
    pub up: HostLinear,
    pub down: HostLinear,
}

fn host_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec1()?)
}

fn host_linear(p: &Proj, name: &str) -> Result<HostLinear> {
    match p {
        Proj::Dense(l) => {
            let (out_features, in_features) = l.weight().dims2()?;
            Ok(HostLinear {
                out_features,
                in_features,
                weight: host_vec(l.weight())?,
                bias: l.bias().map(host_vec).transpose()?,
            })
        }
        // Quantized blocks (and any other kind of projection) have no kernel on other devices.
        #[allow(unreachable_patterns)]
        _ => Err(ExpertError::InvalidRequest(format!(
            "projection {name} is not dense (quantized or adapted weights are not supported on \
             this device; serve the model with `weights: f32`)"
        ))),
    }
}

impl Decoder {
    /// Dense f32 host copies of every weight. Fails, naming the projection, when one is not
    /// dense (e.g. quantized).
    pub fn host_weights(&self) -> Result<HostWeights> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let (a, m) = (&l.self_attn, &l.mlp);
            let name = |p: &str| format!("model.layers.{i}.{p}");
            layers.push(HostLayer {
                input_norm: host_vec(&l.input_layernorm.weight)?,
                q: host_linear(&a.q_proj, &name("self_attn.q_proj"))?,
                k: host_linear(&a.k_proj, &name("self_attn.k_proj"))?,
                v: host_linear(&a.v_proj, &name("self_attn.v_proj"))?,
                o: host_linear(&a.o_proj, &name("self_attn.o_proj"))?,
                post_norm: host_vec(&l.post_attention_layernorm.weight)?,
                gate: host_linear(&m.gate_proj, &name("mlp.gate_proj"))?,
                up: host_linear(&m.up_proj, &name("mlp.up_proj"))?,
                down: host_linear(&m.down_proj, &name("mlp.down_proj"))?,
            });
        }
        let lm_head = match (&self.lm_head, self.config.tie_word_embeddings) {
            (Proj::Dense(_), true) => None,
            (p, _) => Some(host_linear(p, "lm_head")?),
        };
        Ok(HostWeights {
            config: self.config.clone(),
            embed: host_vec(self.embed_tokens.embeddings())?,
            layers,
            norm: host_vec(&self.norm.weight)?,
            lm_head,
            rope_cos: host_vec(&self.rotary.cos)?,
            rope_sin: host_vec(&self.rotary.sin)?,
        })
    }
}
