//! The routing policy: given a classification, decide whether one expert answers alone
//! (1× cost) or experts are fused (2×), as the seed describes.
//!
//! [`RoutingPolicy::decide_routing`] is the place to customise the policy; the default
//! [`ThresholdPolicy`] is the seed's rule.

use std::sync::Arc;

use classifier::Classification;
use classifier::config::RoutingSettings;
use protocol::FusionMode;
use serde::{Deserialize, Serialize};

use crate::config::GatewayConfig;
use crate::error::{GatewayError, Result};

/// The policy a config asks for: the dynamic threshold when `gateway.target_cost` is set,
/// else the seed's fixed threshold.
pub fn policy_from_config(config: &GatewayConfig) -> Arc<dyn RoutingPolicy> {
    let routing = &config.hybrid.routing;
    match config.gateway.target_cost {
        Some(target) => {
            let mut p = DynamicThresholdPolicy::new(
                routing.confidence_threshold,
                target,
                config.gateway.fused_experts(),
            );
            p.enable_btm_fallback = routing.enable_btm_fallback;
            Arc::new(p)
        }
        None => Arc::new(ThresholdPolicy::from(routing)),
    }
}

/// What runs for a route: the decision's name (`single`, `fusion`, `foundation`) and the
/// fusion mode sent to the experts (the category's expert, `gateway.fusion` narrowed to the
/// classification's top categories by [`GatewayConfig::fusion_for`], or
/// `gateway.foundation_model`).
pub fn route_mode(
    config: &GatewayConfig,
    route: Route,
    classification: &Classification,
) -> Result<(&'static str, FusionMode)> {
    Ok(match route {
        Route::Single { category } => {
            let model = config.category_model(category).ok_or_else(|| {
                GatewayError::Internal(format!("category {category} has no expert"))
            })?;
            (
                "single",
                FusionMode::Single {
                    model: model.to_string(),
                },
            )
        }
        Route::Fusion => ("fusion", config.fusion_for(classification)),
        Route::Foundation => (
            "foundation",
            FusionMode::Single {
                model: config.gateway.foundation_model.clone(),
            },
        ),
    })
}

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

/// A threshold that moves online to hold a target mean cost (future direction 2 of the
/// seed). After each decision of cost `c` the threshold moves by `step × (target − c)`:
/// a fusion (cost 2 > target) lowers it, a single expert (cost 1 < target) raises it, so
/// the long-run share of fusions settles where the mean cost equals the target (a
/// Robbins–Monro controller). The threshold stays within `[min, max]`.
#[derive(Debug)]
pub struct DynamicThresholdPolicy {
    pub target_cost: f32,
    pub step: f32,
    pub min: f32,
    pub max: f32,
    pub fused_experts: usize,
    pub enable_btm_fallback: bool,
    threshold: std::sync::Mutex<f32>,
}

impl DynamicThresholdPolicy {
    /// Starts at `initial` (e.g. the seed's 0.85).
    pub fn new(initial: f32, target_cost: f32, fused_experts: usize) -> Self {
        Self {
            target_cost,
            step: 0.002,
            min: 0.0,
            max: 1.0,
            fused_experts,
            enable_btm_fallback: true,
            threshold: std::sync::Mutex::new(initial.clamp(0.0, 1.0)),
        }
    }
}

impl RoutingPolicy for DynamicThresholdPolicy {
    fn decide_routing(&self, c: &Classification) -> Route {
        let mut t = match self.threshold.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        let route = ThresholdPolicy {
            confidence_threshold: *t,
            enable_btm_fallback: self.enable_btm_fallback,
        }
        .decide_routing(c);
        let cost = route.cost(self.fused_experts);
        *t = (*t + self.step * (self.target_cost - cost)).clamp(self.min, self.max);
        route
    }

    fn threshold(&self) -> f32 {
        match self.threshold.lock() {
            Ok(t) => *t,
            Err(poisoned) => *poisoned.into_inner(),
        }
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

    /// A synthetic stream of confidences from a seeded generator (a mix of confident and
    /// uncertain queries, like the classifier's output).
    fn confidences(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 40) as f32 / (1u64 << 24) as f32;
                // Skewed towards high confidence: 0.5 + 0.5 * u^0.5.
                0.5 + 0.5 * u.sqrt()
            })
            .collect()
    }

    proptest! {
        #[test]
        fn monotone_in_confidence(c1 in 0.0f32..=1.0, c2 in 0.0f32..=1.0, t in 0.0f32..=1.0, fallback: bool) {
            let (lo, hi) = if c1 <= c2 { (c1, c2) } else { (c2, c1) };
            let p = ThresholdPolicy { confidence_threshold: t, enable_btm_fallback: fallback };
            // More confidence never costs more.
            prop_assert!(p.decide_routing(&classification(0, hi)).cost(2) <= p.decide_routing(&classification(0, lo)).cost(2));
        }

        #[test]
        fn exact_at_the_threshold_and_no_btm_without_fallback(t in 0.0f32..=1.0, c in 0.0f32..=1.0, cat in 0usize..2) {
            let p = ThresholdPolicy { confidence_threshold: t, enable_btm_fallback: true };
            prop_assert_eq!(p.decide_routing(&classification(cat, t)), Route::Single { category: cat });
            let off = ThresholdPolicy { confidence_threshold: t, enable_btm_fallback: false };
            prop_assert_ne!(off.decide_routing(&classification(cat, c)), Route::Fusion);
        }

        #[test]
        fn dynamic_threshold_holds_its_target(seed in 0u64..1000, target in 1.1f32..1.6) {
            let p = DynamicThresholdPolicy::new(0.85, target, 2);
            let stream = confidences(seed, 30_000);
            let costs: Vec<f32> = stream.iter().map(|&c| p.decide_routing(&classification(0, c)).cost(2)).collect();
            let tail = &costs[10_000..];
            let mean = tail.iter().sum::<f32>() / tail.len() as f32;
            prop_assert!((mean - target).abs() <= 0.05, "mean cost {} for target {}", mean, target);
        }

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
