//! The WebAssembly face of the classifier: a thin `#[wasm_bindgen]` layer over the pure-Rust
//! core. Every instance owns its model (no global state); every failure is a `JsError`.

use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::combined::CombinedClassifier;
use crate::learned::LearnedClassifier;
use crate::query_classifier::Classifier;
use crate::rules::{RuleBasedClassifier, RuleSet};

/// What `classify` returns to JavaScript.
#[derive(Serialize)]
struct JsClassification<'a> {
    category: usize,
    label: &'a str,
    confidence: f32,
    scores: &'a [f32],
    version: &'a str,
}

/// A classifier usable from JavaScript.
#[wasm_bindgen]
#[derive(Debug)]
pub struct QueryClassifier {
    inner: Box<dyn Classifier>,
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen]
impl QueryClassifier {
    /// A learned classifier from the bytes of a checkpoint's `classifier.json` and
    /// `model.safetensors`.
    #[wasm_bindgen(js_name = fromCheckpoint)]
    pub fn from_checkpoint(meta_json: &[u8], weights: &[u8]) -> Result<QueryClassifier, JsError> {
        let c = LearnedClassifier::from_bytes(meta_json, weights).map_err(js_err)?;
        Ok(Self { inner: Box::new(c) })
    }

    /// A combined classifier from the bytes of a checkpoint's `classifier.json`,
    /// `model.safetensors` and `combiner.json`, and the rule tables in JSON it was fitted
    /// with (the package's own when `rules_json` is empty).
    #[wasm_bindgen(js_name = fromCombined)]
    pub fn from_combined(
        meta_json: &[u8],
        weights: &[u8],
        combiner_json: &[u8],
        rules_json: &str,
    ) -> Result<QueryClassifier, JsError> {
        let rules = if rules_json.trim().is_empty() {
            RuleSet::default_rules()
        } else {
            RuleSet::from_json(rules_json)
        }
        .map_err(js_err)?;
        let rules = RuleBasedClassifier::new(rules).map_err(js_err)?;
        let c = CombinedClassifier::from_bytes(meta_json, weights, combiner_json, rules)
            .map_err(js_err)?;
        Ok(Self { inner: Box::new(c) })
    }

    /// A rule-based classifier from rule tables in JSON (the format of `configs/rules.json`).
    #[wasm_bindgen(js_name = fromRules)]
    pub fn from_rules(rules_json: &str) -> Result<QueryClassifier, JsError> {
        let rules = RuleSet::from_json(rules_json).map_err(js_err)?;
        let c = RuleBasedClassifier::new(rules).map_err(js_err)?;
        Ok(Self { inner: Box::new(c) })
    }

    /// A rule-based classifier with the tables built into the package.
    #[wasm_bindgen(js_name = defaultRules)]
    pub fn default_rules() -> Result<QueryClassifier, JsError> {
        let c =
            RuleBasedClassifier::new(RuleSet::default_rules().map_err(js_err)?).map_err(js_err)?;
        Ok(Self { inner: Box::new(c) })
    }

    /// Classifies a query: `{category, label, confidence, scores, version}`.
    pub fn classify(&self, text: &str) -> Result<JsValue, JsError> {
        let c = self.inner.classify(text).map_err(js_err)?;
        let out = JsClassification {
            category: c.category,
            label: &self.inner.categories()[c.category],
            confidence: c.confidence,
            scores: &c.scores,
            version: self.inner.version(),
        };
        serde_wasm_bindgen::to_value(&out).map_err(js_err)
    }

    /// The category names, in label order.
    #[wasm_bindgen(getter)]
    pub fn categories(&self) -> Vec<String> {
        self.inner.categories().to_vec()
    }

    /// The version of the rules or weights.
    #[wasm_bindgen(getter)]
    pub fn version(&self) -> String {
        self.inner.version().to_string()
    }

    /// `rule_based`, `learned` or `combined`.
    #[wasm_bindgen(getter)]
    pub fn kind(&self) -> String {
        self.inner.kind().as_str().to_string()
    }
}
