//! Perplexity of a model on a token stream: the held-out check that a weight format (e.g. a
//! requantized one) keeps the model's quality.

use candle_core::{D, DType, Tensor};
use serde::Serialize;

use crate::error::{ExpertError, Result};
use crate::model::{Decoder, Path};

/// Mean negative log-likelihood per predicted token and its exponential.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Perplexity {
    /// Tokens predicted (each window's first token is context only).
    pub tokens: usize,
    /// Mean negative log-likelihood, nats per token.
    pub nll: f64,
    /// `exp(nll)`.
    pub perplexity: f64,
}

/// Scores `ids` in consecutive windows of `window` tokens (each window starts a fresh
/// context).
pub fn perplexity(decoder: &Decoder, ids: &[u32], window: usize) -> Result<Perplexity> {
    if window < 2 {
        return Err(ExpertError::InvalidRequest(
            "the window must be at least 2 tokens".into(),
        ));
    }
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in ids.chunks(window) {
        if chunk.len() < 2 {
            continue;
        }
        let t = chunk.len() - 1;
        let x = Tensor::from_slice(&chunk[..t], (1, t), decoder.device())?;
        let y = Tensor::from_slice(&chunk[1..], (t, 1), decoder.device())?;
        let logits = decoder
            .forward(&x, None, false, false, Path::Fused)?
            .logits
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked = logp.gather(&y, 1)?.sum_all()?.to_scalar::<f32>()?;
        sum -= f64::from(picked);
        n += t;
    }
    if n == 0 {
        return Err(ExpertError::InvalidRequest(
            "the text is shorter than two tokens".into(),
        ));
    }
    let nll = sum / n as f64;
    Ok(Perplexity {
        tokens: n,
        nll,
        perplexity: nll.exp(),
    })
}
