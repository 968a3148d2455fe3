//! Lazy token-level deferral (the `defer` fusion mode, after Co-LLM: Shen et al., 2024,
//! "Learning to Decode Collaboratively with Multiple Language Models", arXiv:2403.03870).
//!
//! The first expert (the foundation) decodes every token. A deferral head — one logistic
//! unit on the foundation's final normed hidden state — gives the probability `d` that the
//! second expert should produce the next token; with `d ≥ η` (the threshold) the second
//! expert's distribution is used, else the foundation's. The second expert runs only when a
//! token is deferred: the tokens it has not seen yet (the prompt, the tokens generated since
//! its last turn) are fed to it then, in one prefill-style call, so its KV cache catches up
//! lazily and the answer is exactly what running both experts at every step would give.
//!
//! The head is trained with both experts frozen ([`crate::router_train::train_deferral_head`])
//! on which expert gives the actual next token the higher probability.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::error::{ExpertError, Result};

/// The `kind` of a deferral head's `head.json`.
pub const DEFER_KIND: &str = "defer";

/// `head.json` of a deferral head checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeferralConfig {
    pub kind: String,
    /// The experts it was trained for, in order: the one that decodes, the one deferred to.
    pub experts: Vec<String>,
    /// Hidden size of the first expert.
    pub hidden_size: usize,
}

/// The deferral head: `d = σ(w · h + b)` on the first expert's final normed hidden state.
#[derive(Debug, Clone)]
pub struct DeferralHead {
    linear: Linear,
    pub config: DeferralConfig,
}

impl DeferralHead {
    pub fn new(config: DeferralConfig, vb: VarBuilder) -> Result<Self> {
        if config.experts.len() != 2 {
            return Err(ExpertError::InvalidRequest(format!(
                "a deferral head is for two experts, not {:?}",
                config.experts
            )));
        }
        Ok(Self {
            linear: candle_nn::linear(config.hidden_size, 1, vb.pp("proj"))?,
            config,
        })
    }

    /// The deferral logit `w · h + b` per row of `hidden` (`[n, hidden]` → `[n]`).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self
            .linear
            .forward(&hidden.to_dtype(DType::F32)?)?
            .flatten_all()?)
    }

    /// The deferral probability per row of `hidden` (`[n, hidden]` → host `[n]`).
    pub fn probabilities(&self, hidden: &Tensor) -> Result<Vec<f32>> {
        Ok(candle_nn::ops::sigmoid(&self.logits(hidden)?)?.to_vec1()?)
    }

    /// A head of the given weights `[hidden]` and bias.
    pub fn from_weights(
        config: DeferralConfig,
        weights: &[f32],
        bias: f32,
        device: &Device,
    ) -> Result<Self> {
        if weights.len() != config.hidden_size {
            return Err(ExpertError::InvalidRequest(format!(
                "{} head weights for hidden size {}",
                weights.len(),
                config.hidden_size
            )));
        }
        let w = Tensor::from_slice(weights, (1, weights.len()), device)?;
        let b = Tensor::new(&[bias], device)?;
        Ok(Self {
            linear: Linear::new(w, Some(b)),
            config,
        })
    }

    /// A head that always (`defer = true`) or never defers, whatever the threshold in
    /// (0, 1) (for tests and for pinning one expert).
    pub fn forced(config: DeferralConfig, defer: bool, device: &Device) -> Result<Self> {
        let w = Tensor::zeros((1, config.hidden_size), DType::F32, device)?;
        let b = Tensor::new(&[if defer { 1e4f32 } else { -1e4 }], device)?;
        Ok(Self {
            linear: Linear::new(w, Some(b)),
            config,
        })
    }

    /// Loads `head.json` + `head.safetensors` from a directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("head.json");
        let bytes = std::fs::read(&cfg_path).map_err(|e| ExpertError::io(&cfg_path, e))?;
        let config: DeferralConfig = serde_json::from_slice(&bytes)
            .map_err(|e| ExpertError::model(&cfg_path, format!("bad head.json: {e}")))?;
        if config.kind != DEFER_KIND {
            return Err(ExpertError::model(
                &cfg_path,
                format!("kind {:?} is not {DEFER_KIND}", config.kind),
            ));
        }
        let w = dir.join("head.safetensors");
        let tensors = candle_core::safetensors::load(&w, device)
            .map_err(|e| ExpertError::model(&w, format!("corrupt safetensors: {e}")))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(config, vb)
            .map_err(|e| ExpertError::model(dir, format!("head weights do not fit head.json: {e}")))
    }
}

/// Creates an untrained head's variables (for training).
pub fn new_head_vars(
    config: &DeferralConfig,
    varmap: &VarMap,
    device: &Device,
) -> Result<DeferralHead> {
    let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
    DeferralHead::new(config.clone(), vb)
}
