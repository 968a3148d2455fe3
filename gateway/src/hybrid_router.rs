//! The routing policy: given a classification, decide whether one expert answers alone
//! (1× cost) or experts are fused (2×), as the seed describes.
//!
//! [`RoutingPolicy::decide_routing`] is the place to customise the policy; the default
//! [`ThresholdPolicy`] is the seed's rule.

use classifier::Classification;
use classifier::config::RoutingSettings;
use serde::{Deserialize, Serialize};

/// How a query is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum Route {
    /// The expert of `category` answers alone.
    Single { category: usize },
    /// The experts are fused (Branch-Train-Merge).
    Fusion,
    /// The foundation model answers alone (uncertain, and fusion is disabled).
    Foundation,
}

impl Route {
    /// Inference cost in model-forwards per token, relative to one expert.
    pub fn cost(self, fused_experts: usize) -> f32 {
        match self {
            Self::Single { .. } | Self::Foundation => 1.0,
            Self::Fusion => fused_experts as f32,
        }
    }
}

/// A routing policy.
pub trait RoutingPolicy: Send + Sync + std::fmt::Debug {
    /// Decides the route of one classified query.
    fn decide_routing(&self, classification: &Classification) -> Route;

    /// The confidence threshold in force now (reported in every answer's `routing`).
    fn threshold(&self) -> f32;
}

/// The seed's rule: confidence ≥ threshold → the category's expert alone; below it → fusion
/// when `enable_btm_fallback`, else the foundation model.
#[derive(Debug, Clone)]
pub struct ThresholdPolicy {
    pub confidence_threshold: f32,
    pub enable_btm_fallback: bool,
}

impl From<&RoutingSettings> for ThresholdPolicy {
    fn from(s: &RoutingSettings) -> Self {
        Self {
            confidence_threshold: s.confidence_threshold,
            enable_btm_fallback: s.enable_btm_fallback,
        }
    }
}

impl RoutingPolicy for ThresholdPolicy {
    fn decide_routing(&self, c: &Classification) -> Route {
        if c.confidence >= self.confidence_threshold {
            Route::Single {
                category: c.category,
            }
        } else if self.enable_btm_fallback {
            Route::Fusion
        } else {
            Route::Foundation
        }
    }

    fn threshold(&self) -> f32 {
        self.confidence_threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn classification(category: usize, confidence: f32) -> Classification {
        let mut scores = vec![1.0 - confidence; 2];
        scores[category] = confidence;
        Classification {
            category,
            confidence,
            scores,
        }
    }

    #[test]
    fn the_seed_rule() {
        let p = ThresholdPolicy {
            confidence_threshold: 0.85,
            enable_btm_fallback: true,
        };
        assert_eq!(
            p.decide_routing(&classification(1, 0.9)),
            Route::Single { category: 1 }
        );
        assert_eq!(
            p.decide_routing(&classification(1, 0.85)),
            Route::Single { category: 1 }
        );
        assert_eq!(p.decide_routing(&classification(0, 0.6)), Route::Fusion);
        let p = ThresholdPolicy {
            enable_btm_fallback: false,
            ..p
        };
        assert_eq!(p.decide_routing(&classification(0, 0.6)), Route::Foundation);
    }

    proptest! {
        #[test]
        fn raising_the_threshold_never_lowers_cost(conf in 0.0f32..=1.0, t1 in 0.0f32..=1.0, t2 in 0.0f32..=1.0) {
            let (lo, hi) = if t1 <= t2 { (t1, t2) } else { (t2, t1) };
            let c = classification(0, conf);
            let cost = |t| ThresholdPolicy { confidence_threshold: t, enable_btm_fallback: true }
                .decide_routing(&c)
                .cost(2);
            prop_assert!(cost(lo) <= cost(hi));
        }
    }
}
