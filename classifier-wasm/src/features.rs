//! Tokenizer-free features that work for Chinese and English alike: hashed character
//! n-grams plus hashed word unigrams, log-scaled counts, L2-normalised.
//!
//! Character n-grams carry Chinese (no spaces between words) and English morphology
//! ("refund", "refunds", "refunded" share most trigrams); word unigrams add whole-word
//! evidence for Latin-script text. Hashing keeps the model a fixed size, with no vocabulary
//! to ship to the browser.

use serde::{Deserialize, Serialize};

use crate::error::{ClassifierError, Result};
use crate::query_classifier::fnv1a;

/// How queries become feature vectors. Stored in every checkpoint; a checkpoint is only
/// valid with the feature configuration it was trained with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureConfig {
    /// Number of hash buckets (the model has `buckets × categories` weights).
    pub buckets: usize,
    /// Shortest character n-gram.
    pub char_ngram_min: usize,
    /// Longest character n-gram.
    pub char_ngram_max: usize,
    /// Whether whole words (runs of non-CJK letters and digits) are features too.
    pub word_unigrams: bool,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self {
            buckets: 1 << 14,
            char_ngram_min: 1,
            char_ngram_max: 3,
            word_unigrams: true,
        }
    }
}

impl FeatureConfig {
    /// Checks the values; `prefix` is the config path used in error messages.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        if !(16..=(1 << 22)).contains(&self.buckets) {
            return Err(ClassifierError::config(
                format!("{prefix}.buckets"),
                format!("{} is out of range [16, 4194304]", self.buckets),
            ));
        }
        if self.char_ngram_min == 0 || self.char_ngram_min > self.char_ngram_max {
            return Err(ClassifierError::config(
                format!("{prefix}.char_ngram_min"),
                format!(
                    "need 1 <= char_ngram_min ({}) <= char_ngram_max ({})",
                    self.char_ngram_min, self.char_ngram_max
                ),
            ));
        }
        if self.char_ngram_max > 8 {
            return Err(ClassifierError::config(
                format!("{prefix}.char_ngram_max"),
                format!("{} is out of range [1, 8]", self.char_ngram_max),
            ));
        }
        Ok(())
    }
}

/// A sparse feature vector: sorted, distinct bucket indices with their values.
pub type SparseVector = Vec<(u32, f32)>;

const CHAR_SEED: u64 = 1;
const WORD_SEED: u64 = 2;

pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30ff    // kana
        | 0x3400..=0x4dbf  // CJK extension A
        | 0x4e00..=0x9fff  // CJK unified ideographs
        | 0xac00..=0xd7af  // hangul
        | 0xf900..=0xfaff  // compatibility ideographs
        | 0x20000..=0x2ffff)
}

/// Extracts the features of an already normalised (lower-cased, truncated) query.
pub fn extract(config: &FeatureConfig, normalized: &str) -> SparseVector {
    // Collapse every run of whitespace and punctuation to one space and pad the ends, so
    // that n-grams see word boundaries the same way whatever the spacing was.
    let mut chars: Vec<char> = Vec::with_capacity(normalized.len() + 2);
    chars.push(' ');
    for c in normalized.chars() {
        let c = if c.is_alphanumeric() { c } else { ' ' };
        if c == ' ' && chars.last() == Some(&' ') {
            continue;
        }
        chars.push(c);
    }
    if chars.last() != Some(&' ') {
        chars.push(' ');
    }

    let buckets = config.buckets as u64;
    let mut hashed: Vec<u32> = Vec::with_capacity(chars.len() * 4);
    let mut buf = [0u8; 8 * 4];
    for n in config.char_ngram_min..=config.char_ngram_max {
        if chars.len() < n {
            break;
        }
        for window in chars.windows(n) {
            if window.iter().all(|&c| c == ' ') {
                continue;
            }
            let mut len = 0;
            for &c in window {
                len += c.encode_utf8(&mut buf[len..]).len();
            }
            let h = fnv1a(CHAR_SEED + n as u64, &buf[..len]);
            hashed.push((h % buckets) as u32);
        }
    }

    if config.word_unigrams {
        let mut start: Option<usize> = None;
        for (i, c) in normalized.char_indices() {
            let in_word = c.is_alphanumeric() && !is_cjk(c);
            match (in_word, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    hashed.push((fnv1a(WORD_SEED, &normalized.as_bytes()[s..i]) % buckets) as u32);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            hashed.push((fnv1a(WORD_SEED, &normalized.as_bytes()[s..]) % buckets) as u32);
        }
    }

    hashed.sort_unstable();
    let mut out: SparseVector = Vec::with_capacity(hashed.len());
    let mut i = 0;
    while i < hashed.len() {
        let idx = hashed[i];
        let mut j = i;
        while j < hashed.len() && hashed[j] == idx {
            j += 1;
        }
        out.push((idx, 1.0 + ((j - i) as f32).ln()));
        i = j;
    }
    let norm = out.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for (_, v) in &mut out {
            *v /= norm;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_sorted_distinct_and_normalised() {
        let cfg = FeatureConfig::default();
        for text in [
            "how do i reset my password",
            "我的订单还没到，怎么办？",
            "x",
        ] {
            let f = extract(&cfg, text);
            assert!(!f.is_empty());
            assert!(f.windows(2).all(|w| w[0].0 < w[1].0));
            let norm: f32 = f.iter().map(|(_, v)| v * v).sum();
            assert!((norm - 1.0).abs() < 1e-5);
            assert!(f.iter().all(|&(i, _)| (i as usize) < cfg.buckets));
        }
    }

    #[test]
    fn spacing_and_punctuation_do_not_change_features() {
        let cfg = FeatureConfig::default();
        assert_eq!(
            extract(&cfg, "reset   my password!!"),
            extract(&cfg, "reset my password")
        );
    }

    #[test]
    fn bad_feature_configs_are_rejected() {
        let cfg = FeatureConfig {
            char_ngram_min: 4,
            char_ngram_max: 2,
            ..FeatureConfig::default()
        };
        let err = cfg.validate("hybrid.classifier.features").unwrap_err();
        assert!(err.to_string().contains("char_ngram_min"));
    }
}
