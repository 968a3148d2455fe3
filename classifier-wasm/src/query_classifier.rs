//! The seam every caller uses: the [`Classifier`] trait and its [`Classification`].
//!
//! A classifier maps a query to a category index with a calibrated confidence. The
//! gateway and the browser only see this trait; whether rules or a learned model sit
//! behind it is a configuration choice.

use serde::{Deserialize, Serialize};

use crate::error::{ClassifierError, Result};

/// Queries are truncated to this many characters before classification, so that the
/// work per query is bounded (a 1 MB paste costs the same as a 4,096-character one).
/// The beginning of a query carries its intent; the rest is ignored.
pub const MAX_INPUT_CHARS: usize = 4096;

/// The kind of classifier, as named in the config (`hybrid.classifier.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierKind {
    RuleBased,
    Learned,
    /// The learned model and the rule tables, mixed by a calibrated layer.
    Combined,
}

impl ClassifierKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RuleBased => "rule_based",
            Self::Learned => "learned",
            Self::Combined => "combined",
        }
    }
}

impl std::str::FromStr for ClassifierKind {
    type Err = ClassifierError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "rule_based" | "rule-based" | "rules" => Ok(Self::RuleBased),
            "learned" => Ok(Self::Learned),
            "combined" => Ok(Self::Combined),
            other => Err(ClassifierError::config(
                "hybrid.classifier.type",
                format!(
                    "unknown classifier type {other:?}; expected \"rule_based\", \"learned\" or \"combined\""
                ),
            )),
        }
    }
}

/// The answer of a classifier for one query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// Index into the classifier's categories (0 = reasoning, 1 = sop by default).
    pub category: usize,
    /// Probability of `category`, in `[0, 1]`; the maximum of `scores`.
    pub confidence: f32,
    /// One probability per category, summing to 1.
    pub scores: Vec<f32>,
}

/// A query classifier. Implementations are immutable after construction and cheap to
/// share between threads.
pub trait Classifier: Send + Sync + std::fmt::Debug {
    /// Classifies one query. Fails only on empty (or whitespace-only) input.
    fn classify(&self, text: &str) -> Result<Classification>;

    /// The category names, indexed like [`Classification::category`].
    fn categories(&self) -> &[String];

    /// A short identifier of the exact rules or weights, e.g. `learned-3f9a0c1d2e4b5a69`.
    fn version(&self) -> &str;

    /// Rule-based, learned or combined.
    fn kind(&self) -> ClassifierKind;
}

/// Lower-cases the query and truncates it to [`MAX_INPUT_CHARS`] characters.
pub(crate) fn normalize(text: &str) -> Result<String> {
    if text.trim().is_empty() {
        return Err(ClassifierError::EmptyInput);
    }
    let end = text
        .char_indices()
        .nth(MAX_INPUT_CHARS)
        .map_or(text.len(), |(i, _)| i);
    Ok(text[..end].to_lowercase())
}

/// Softmax of `logits / temperature`, computed stably.
pub(crate) fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let t = temperature.max(f32::MIN_POSITIVE);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut out: Vec<f32> = logits.iter().map(|&l| ((l - max) / t).exp()).collect();
    let sum: f32 = out.iter().sum();
    for p in &mut out {
        *p /= sum;
    }
    out
}

/// Picks the arg-max of a probability vector (first index on ties).
pub(crate) fn classification_from_probs(scores: Vec<f32>) -> Classification {
    let mut category = 0;
    for (i, &p) in scores.iter().enumerate() {
        if p > scores[category] {
            category = i;
        }
    }
    Classification {
        category,
        confidence: scores[category],
        scores,
    }
}

/// 64-bit FNV-1a: a fixed, portable hash, identical on every target (the wasm build
/// must hash features exactly like the native trainer did).
pub(crate) fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_whitespace_are_rejected() {
        assert!(matches!(normalize(""), Err(ClassifierError::EmptyInput)));
        assert!(matches!(
            normalize(" \t\n "),
            Err(ClassifierError::EmptyInput)
        ));
    }

    #[test]
    fn long_input_is_truncated_on_a_char_boundary() {
        let text = "退".repeat(MAX_INPUT_CHARS * 3);
        let n = normalize(&text).unwrap();
        assert_eq!(n.chars().count(), MAX_INPUT_CHARS);
    }

    #[test]
    fn softmax_sums_to_one() {
        let p = softmax(&[1000.0, -1000.0, 3.0], 1.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p.iter().all(|x| x.is_finite()));
    }
}
