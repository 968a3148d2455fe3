//! The decoder step and the fusion step, written once for every device.
//!
//! A device implements [`Ops`]: the handful of inference operations a Qwen2/Llama decoder and
//! the fusion modes need (projection, RMSNorm, rotary attention over a KV cache, SwiGLU,
//! residual add, softmax, weighted mixing, the router MLP's pieces). A model's weights, held
//! however the device holds them, are seen through [`Weights`]. [`layer_step`], [`forward`]
//! and [`fused_step`] are generic over both, so the candle device
//! ([`crate::model::CandleOps`], which keeps autograd for training) and the wgpu device
//! (`crate::wgpu_backend`, feature `wgpu`) run the same layer order, residual wiring, cache
//! offsets and fusion maths.
//!
//! Shapes are the device's business: candle carries a batch dimension (`[b, t, hidden]`), the
//! wgpu device one sequence (`[t, hidden]`). The generic code only relies on "last dimension
//! is features".

use std::fmt;

use protocol::Mix;

use crate::config::ModelConfig;
use crate::error::{ExpertError, Result};

/// Heads of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Inference operations of one device. `T` is an activation tensor on that device.
pub trait Ops {
    type T: Clone;
    /// A projection `x Wᵀ (+ b)`.
    type Linear;
    /// An RMSNorm weight with its epsilon.
    type Norm;
    /// What attention needs besides the projections (head counts).
    type Attention;
    /// Rotary cos/sin tables.
    type Rope;
    /// One layer's KV cache of one sequence (or batch, on candle).
    type LayerCache;

    /// Token ids of one sequence as the device's id tensor.
    fn ids(&self, ids: &[u32]) -> Result<Self::T>;
    /// Rows of `table` (`[vocab, hidden]`) for `ids`.
    fn embed(&self, table: &Self::T, ids: &Self::T) -> Result<Self::T>;
    fn linear(&self, w: &Self::Linear, x: &Self::T) -> Result<Self::T>;
    /// Several projections of the same input (q/k/v, gate/up), which a device may run as
    /// one kernel. One output per weight, in order.
    fn linears<const N: usize>(&self, ws: [&Self::Linear; N], x: &Self::T) -> Result<[Self::T; N]> {
        let ys = ws
            .iter()
            .map(|w| self.linear(w, x))
            .collect::<Result<Vec<_>>>()?;
        array(ys)
    }
    fn rms_norm(&self, w: &Self::Norm, x: &Self::T) -> Result<Self::T>;
    /// Rotary embedding of `q` and `k` at positions `offset..`, appending `k`, `v` to `cache`
    /// (when there is one), causal scaled dot-product attention with grouped-query heads.
    /// Inputs are projected (`[.., t, heads * head_dim]`), so is the output.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        attn: &Self::Attention,
        q: &Self::T,
        k: &Self::T,
        v: &Self::T,
        rope: &Self::Rope,
        cache: Option<&mut Self::LayerCache>,
        offset: usize,
    ) -> Result<Self::T>;
    /// `silu(gate) * up`.
    fn swiglu(&self, gate: &Self::T, up: &Self::T) -> Result<Self::T>;
    fn silu(&self, x: &Self::T) -> Result<Self::T>;
    fn add(&self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    /// Softmax over the last dimension.
    fn softmax(&self, x: &Self::T) -> Result<Self::T>;
    /// Concatenation along the last dimension.
    fn concat_last(&self, xs: &[&Self::T]) -> Result<Self::T>;
    /// `sum_i weights[i] * xs[i]` over same-shaped tensors.
    fn mix(&self, xs: &[&Self::T], weights: &[f32]) -> Result<Self::T>;
    /// `sum_i w[.., i] * xs[i]` with per-row weights `w` (`[.., n]`, rows as in `xs`): mixing
    /// with a router's output without bringing it to the host.
    fn mix_rows(&self, xs: &[&Self::T], w: &Self::T) -> Result<Self::T>;
    /// The last position of `[.., t, c]` as `[.., 1, c]` (or `[1, c]`).
    fn last_position(&self, x: &Self::T) -> Result<Self::T>;
    /// Positions held by a layer cache.
    fn cache_len(&self, cache: &Self::LayerCache) -> usize;
    /// Brings a (small) tensor to the host, flattened.
    fn to_host(&self, x: &Self::T) -> Result<Vec<f32>>;
}

/// A vector of exactly `N` outputs as an array.
pub(crate) fn array<T, const N: usize>(ys: Vec<T>) -> Result<[T; N]> {
    let got = ys.len();
    ys.try_into()
        .map_err(|_| ExpertError::InvalidRequest(format!("{got} outputs where {N} were due")))
}

/// One layer's weights, borrowed from a model of device `B`.
pub struct LayerWeights<'a, B: Ops> {
    pub input_norm: &'a B::Norm,
    pub attention: &'a B::Attention,
    pub q: &'a B::Linear,
    pub k: &'a B::Linear,
    pub v: &'a B::Linear,
    pub o: &'a B::Linear,
    pub post_norm: &'a B::Norm,
    pub gate: &'a B::Linear,
    pub up: &'a B::Linear,
    pub down: &'a B::Linear,
}

impl<B: Ops> fmt::Debug for LayerWeights<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerWeights").finish_non_exhaustive()
    }
}

/// A decoder's weights on device `B`.
pub trait Weights<B: Ops> {
    fn config(&self) -> &ModelConfig;
    /// The token embedding table `[vocab, hidden]`.
    fn embedding(&self) -> &B::T;
    fn layer(&self, index: usize) -> Result<LayerWeights<'_, B>>;
    fn final_norm(&self) -> &B::Norm;
    fn lm_head(&self) -> &B::Linear;
    fn rope(&self) -> &B::Rope;
}

/// Layer `index` on the residual stream `h` at positions `offset..`:
/// `h + attn(norm(h))`, then `+ mlp(norm(·))`.
pub fn layer_step<B: Ops, W: Weights<B> + ?Sized>(
    ops: &B,
    model: &W,
    index: usize,
    h: &B::T,
    cache: Option<&mut B::LayerCache>,
    offset: usize,
) -> Result<B::T> {
    let w = model.layer(index)?;
    let x = ops.rms_norm(w.input_norm, h)?;
    let [q, k, v] = ops.linears([w.q, w.k, w.v], &x)?;
    let a = ops.attention(w.attention, &q, &k, &v, model.rope(), cache, offset)?;
    let h = ops.add(h, &ops.linear(w.o, &a)?)?;
    let x = ops.rms_norm(w.post_norm, &h)?;
    let [gate, up] = ops.linears([w.gate, w.up], &x)?;
    let act = ops.swiglu(&gate, &up)?;
    ops.add(&h, &ops.linear(w.down, &act)?)
}

/// What [`forward`] returns.
#[derive(Debug, Clone)]
pub struct Forward<T> {
    /// Logits of every position, or of the last one only.
    pub logits: T,
    /// When asked: the residual stream after the embedding and after every layer, then the
    /// final normed hidden state (what the LM head reads).
    pub hidden_states: Option<Vec<T>>,
}

/// Checks that `seq` new positions after `offset` fit the model's context.
pub fn check_context(config: &ModelConfig, offset: usize, seq: usize) -> Result<()> {
    if offset + seq > config.max_position_embeddings {
        return Err(ExpertError::InvalidRequest(format!(
            "{} positions exceed the model's context of {}",
            offset + seq,
            config.max_position_embeddings
        )));
    }
    Ok(())
}

/// Full forward of `ids` (`seq` positions), continuing `caches` (one per layer).
pub fn forward<B: Ops, W: Weights<B> + ?Sized>(
    ops: &B,
    model: &W,
    ids: &B::T,
    seq: usize,
    mut caches: Option<&mut [B::LayerCache]>,
    last_only: bool,
    hidden_states: bool,
) -> Result<Forward<B::T>> {
    let offset = caches
        .as_deref()
        .and_then(<[_]>::first)
        .map_or(0, |c| ops.cache_len(c));
    check_context(model.config(), offset, seq)?;
    let layers = model.config().num_hidden_layers;
    if caches.as_deref().is_some_and(|c| c.len() != layers) {
        return Err(ExpertError::InvalidRequest("cache of another model".into()));
    }
    let mut h = ops.embed(model.embedding(), ids)?;
    let mut states = hidden_states.then(Vec::new);
    if let Some(s) = states.as_mut() {
        s.push(h.clone());
    }
    for i in 0..layers {
        let cache = caches.as_deref_mut().and_then(|c| c.get_mut(i));
        h = layer_step(ops, model, i, &h, cache, offset)?;
        if let Some(s) = states.as_mut() {
            s.push(h.clone());
        }
    }
    if last_only {
        h = ops.last_position(&h)?;
    }
    let normed = ops.rms_norm(model.final_norm(), &h)?;
    let logits = ops.linear(model.lm_head(), &normed)?;
    if let Some(s) = states.as_mut() {
        s.push(normed);
    }
    Ok(Forward {
        logits,
        hidden_states: states,
    })
}

/// The token router's MLP on device `B`:
/// `softmax(fc2 · silu(fc1 · [h_1; …; h_E] + b1) + b2)`.
pub struct RouterWeights<B: Ops> {
    pub fc1: B::Linear,
    pub fc2: B::Linear,
}

impl<B: Ops> fmt::Debug for RouterWeights<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterWeights").finish_non_exhaustive()
    }
}

/// Per-position mixing weights `[.., experts]` from the experts' final normed hidden states.
pub fn router_weights<B: Ops>(
    ops: &B,
    router: &RouterWeights<B>,
    hidden: &[&B::T],
) -> Result<B::T> {
    let x = ops.concat_last(hidden)?;
    let x = ops.silu(&ops.linear(&router.fc1, &x)?)?;
    ops.softmax(&ops.linear(&router.fc2, &x)?)
}

/// How one fused step mixes its experts.
pub enum Mixing<'a, B: Ops> {
    /// One expert (its distribution as is).
    Single,
    /// Weights of the experts' distributions (normalised here), mixed as `mix` says.
    Ensemble { weights: &'a [f32], mix: Mix },
    /// The router's weights of the experts' distributions; `hard` keeps the top-1 alone.
    Token {
        router: &'a RouterWeights<B>,
        hard: bool,
    },
    /// Per-layer coefficients `[layers + 1][experts]` of the residual streams (same-shaped
    /// experts); the last row also mixes the experts' heads.
    Layer(&'a [Vec<f32>]),
}

impl<B: Ops> fmt::Debug for Mixing<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single => f.write_str("Single"),
            Self::Ensemble { weights, mix } => f
                .debug_struct("Ensemble")
                .field("weights", weights)
                .field("mix", mix)
                .finish(),
            Self::Token { hard, .. } => f.debug_struct("Token").field("hard", hard).finish(),
            Self::Layer(c) => f.debug_tuple("Layer").field(c).finish(),
        }
    }
}

/// One fused step's output on the device.
#[derive(Debug, Clone)]
pub struct FusedStep<T> {
    /// Next-token probabilities of the last position `[.., vocab]`.
    pub probs: T,
    /// Mixing weight of each expert (empty for `Single`; the mean over layers for `Layer`).
    pub weights: Vec<f32>,
}

/// `w` scaled to sum to 1 (validated non-negative with a positive sum before it gets here).
pub(crate) fn normalised(w: &[f32]) -> Vec<f32> {
    let total: f32 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

/// Hard routing: weight 1 on the first largest weight, 0 elsewhere.
pub(crate) fn one_hot_argmax(w: &[f32]) -> Vec<f32> {
    let best = w
        .iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > w[b] { i } else { b });
    (0..w.len())
        .map(|i| f32::from(u8::from(i == best)))
        .collect()
}

/// Feeds `ids` (a prompt or one token) to one fused sequence: every expert with its own
/// caches, mixed as `mixing` says. With `last_only` the distribution of the last position
/// comes back (generation); without it, one per position of `ids` (scoring a continuation
/// by teacher forcing), and `weights` are the last position's.
pub fn fused_step<B: Ops, W: Weights<B> + ?Sized>(
    ops: &B,
    models: &[&W],
    caches: &mut [&mut [B::LayerCache]],
    mixing: &Mixing<'_, B>,
    ids: &[u32],
    last_only: bool,
) -> Result<FusedStep<B::T>> {
    if models.is_empty() || models.len() != caches.len() {
        return Err(ExpertError::InvalidRequest(format!(
            "{} caches for {} experts",
            caches.len(),
            models.len()
        )));
    }
    let input = ops.ids(ids)?;
    if let Mixing::Layer(coefficients) = mixing {
        return layer_mixed_step(
            ops,
            models,
            caches,
            coefficients,
            &input,
            ids.len(),
            last_only,
        );
    }
    if let (Mixing::Token { hard: true, .. }, false) = (mixing, last_only) {
        // Per-position one-hot weights would need a host-to-device upload per position.
        return Err(ExpertError::InvalidRequest(
            "hard btm_token routing gives one position at a time; score with soft routing".into(),
        ));
    }
    let log_mix = matches!(mixing, Mixing::Ensemble { mix: Mix::Log, .. });
    let mut probs = Vec::with_capacity(models.len());
    let mut logits = Vec::new();
    let mut hidden = Vec::with_capacity(models.len());
    for (m, c) in models.iter().zip(caches.iter_mut()) {
        let out = forward(ops, *m, &input, ids.len(), Some(&mut **c), last_only, true)?;
        if log_mix {
            logits.push(out.logits);
        } else {
            probs.push(ops.softmax(&out.logits)?);
        }
        let normed = out
            .hidden_states
            .and_then(|mut h| h.pop())
            .ok_or_else(|| ExpertError::InvalidRequest("no hidden state".into()))?;
        hidden.push(normed);
    }
    match mixing {
        Mixing::Single => Ok(FusedStep {
            probs: probs.swap_remove(0),
            weights: Vec::new(),
        }),
        Mixing::Ensemble { weights, mix } => {
            let w = normalised(weights);
            let probs = match mix {
                Mix::Linear => ops.mix(&probs.iter().collect::<Vec<_>>(), &w)?,
                // softmax(Σ wᵢ log pᵢ) = softmax(Σ wᵢ zᵢ): each log-softmax differs from
                // its logits by a constant per position, which the softmax drops.
                Mix::Log => ops.softmax(&ops.mix(&logits.iter().collect::<Vec<_>>(), &w)?)?,
            };
            Ok(FusedStep { probs, weights: w })
        }
        Mixing::Token { router, hard } => {
            let h: Vec<&B::T> = hidden.iter().collect();
            let rw = router_weights(ops, router, &h)?;
            // The weights are reported with every token: E floats come back either way
            // (the last position's when every position was asked for).
            let mut w = ops.to_host(&rw)?;
            let e = models.len();
            if w.len() > e {
                w = w.split_off(w.len() - e);
            }
            let refs: Vec<&B::T> = probs.iter().collect();
            if *hard {
                w = one_hot_argmax(&w);
                return Ok(FusedStep {
                    probs: ops.mix(&refs, &w)?,
                    weights: w,
                });
            }
            Ok(FusedStep {
                probs: ops.mix_rows(&refs, &rw)?,
                weights: w,
            })
        }
        Mixing::Layer(_) => Err(ExpertError::InvalidRequest(
            "btm_layer mixes inside the forward".into(),
        )),
    }
}

/// `btm_layer`: the residual streams mixed after the embedding and after every layer; every
/// expert's final norm and head read the mixed stream, their logits mixed by the last row.
fn layer_mixed_step<B: Ops, W: Weights<B> + ?Sized>(
    ops: &B,
    models: &[&W],
    caches: &mut [&mut [B::LayerCache]],
    coefficients: &[Vec<f32>],
    input: &B::T,
    seq: usize,
    last_only: bool,
) -> Result<FusedStep<B::T>> {
    let layers = models[0].config().num_hidden_layers;
    if coefficients.len() != layers + 1 || coefficients.iter().any(|r| r.len() != models.len()) {
        return Err(ExpertError::InvalidRequest(format!(
            "coefficients do not fit {layers} layers × {} experts",
            models.len()
        )));
    }
    let offset = caches[0].first().map_or(0, |c| ops.cache_len(c));
    for m in models {
        check_context(m.config(), offset, seq)?;
    }
    let embeds: Vec<B::T> = models
        .iter()
        .map(|m| ops.embed(m.embedding(), input))
        .collect::<Result<_>>()?;
    let mut h = ops.mix(&embeds.iter().collect::<Vec<_>>(), &coefficients[0])?;
    for l in 0..layers {
        let mut outs = Vec::with_capacity(models.len());
        for (m, c) in models.iter().zip(caches.iter_mut()) {
            outs.push(layer_step(ops, *m, l, &h, c.get_mut(l), offset)?);
        }
        h = ops.mix(&outs.iter().collect::<Vec<_>>(), &coefficients[l + 1])?;
    }
    let last = if last_only { ops.last_position(&h)? } else { h };
    let row = &coefficients[layers];
    let mut terms = Vec::new();
    let mut weights = Vec::new();
    for (m, &w) in models.iter().zip(row) {
        if w == 0.0 {
            continue;
        }
        let normed = ops.rms_norm(m.final_norm(), &last)?;
        terms.push(ops.linear(m.lm_head(), &normed)?);
        weights.push(w);
    }
    if terms.is_empty() {
        return Err(ExpertError::InvalidRequest(
            "all layer coefficients are zero".into(),
        ));
    }
    let logits = ops.mix(&terms.iter().collect::<Vec<_>>(), &weights)?;
    let mean = (0..models.len())
        .map(|i| coefficients.iter().map(|r| r[i]).sum::<f32>() / coefficients.len() as f32)
        .collect();
    Ok(FusedStep {
        probs: ops.softmax(&logits)?,
        weights: mean,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use crate::config::{Architecture, ModelConfig};
    use crate::model::{Decoder, Path};

    /// Training (forge, train_router, distill) runs `Decoder::forward` on the differentiable
    /// path, which is the generic step on candle: every weight must still get a gradient.
    #[test]
    fn training_backpropagates_through_the_generic_step() {
        let cfg = ModelConfig {
            architecture: Architecture::Qwen2,
            vocab_size: 37,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            max_position_embeddings: 32,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
            qkv_bias: true,
            bos_token_id: None,
            eos_token_ids: vec![0],
        };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let d = Decoder::new(&cfg, vb).unwrap();
        let x = Tensor::new(&[[1u32, 5, 9, 2, 30]], &Device::Cpu).unwrap();
        let target = Tensor::new(&[5u32, 9, 2, 30, 7], &Device::Cpu).unwrap();
        let logits = d
            .forward(&x, None, false, false, Path::Differentiable)
            .unwrap()
            .logits
            .squeeze(0)
            .unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &target).unwrap();
        let grads = loss.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        assert!(vars.len() > 10);
        for (name, var) in vars.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "zero gradient for {name}");
        }
    }
}
