//! The combined classifier: the learned model's logits and the rule tables' keyword scores,
//! mixed by a small calibrated layer fitted on validation data.
//!
//! `logit_c = learned_weight · learned_logit_c + rule_weight · rule_score_c + bias_c`, then a
//! softmax. A keyword hit and the n-gram evidence both count, and the three kinds of numbers
//! (two scales and a per-category bias) are fitted together by minimising the validation
//! NLL, so the confidence is calibrated as a whole; the bias lets "no keyword at all" lean
//! to the category that is most likely without one instead of reading as a tie.
//!
//! A combined checkpoint is a learned checkpoint directory with one more file,
//! `combiner.json` ([`CombinerMeta`]): it names the learned weights (their version) and
//! the keyword tables (their fingerprint) it was fitted for, and loading refuses any other.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::LabeledQuery;
use crate::error::{ClassifierError, Result};
use crate::features::FeatureConfig;
use crate::learned::LearnedClassifier;
use crate::query_classifier::{
    Classification, Classifier, ClassifierKind, classification_from_probs, fnv1a, softmax,
};
use crate::rules::RuleBasedClassifier;

pub const COMBINER_FILE: &str = "combiner.json";
pub const COMBINER_FORMAT: &str = "hybrid-router/combiner-v1";

/// `combiner.json`: the fitted mixing layer and what it was fitted for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CombinerMeta {
    pub format: String,
    pub categories: Vec<String>,
    /// [`Classifier::version`] of the learned weights the layer was fitted on.
    pub learned_version: String,
    /// [`RuleBasedClassifier::tables_version`] of the keyword tables it was fitted on.
    pub rules_tables: String,
    pub learned_weight: f32,
    pub rule_weight: f32,
    pub bias: Vec<f32>,
}

/// The combined [`Classifier`].
#[derive(Debug)]
pub struct CombinedClassifier {
    learned: LearnedClassifier,
    rules: RuleBasedClassifier,
    meta: CombinerMeta,
    version: String,
}

impl CombinedClassifier {
    /// Puts the parts together, checking that the layer was fitted for exactly these
    /// weights and tables; `origin` names the combiner file in errors.
    pub fn new(
        learned: LearnedClassifier,
        rules: RuleBasedClassifier,
        meta: CombinerMeta,
        origin: &Path,
    ) -> Result<Self> {
        let bad = |m: String| ClassifierError::checkpoint(origin, m);
        if meta.format != COMBINER_FORMAT {
            return Err(bad(format!(
                "format {:?} is not {COMBINER_FORMAT:?}",
                meta.format
            )));
        }
        if meta.categories != learned.categories() || rules.categories() != learned.categories() {
            return Err(bad(format!(
                "fitted for categories {:?}, but the learned model has {:?} and the rules {:?}",
                meta.categories,
                learned.categories(),
                rules.categories()
            )));
        }
        if meta.learned_version != learned.version() {
            return Err(bad(format!(
                "fitted for the learned weights {} but the checkpoint holds {}; refit it (`train_classifier --train_file ...`)",
                meta.learned_version,
                learned.version()
            )));
        }
        if meta.rules_tables != rules.tables_version() {
            return Err(bad(format!(
                "fitted for the keyword tables {} but the config's rules are {}; refit it (`train_classifier --train_file ...`)",
                meta.rules_tables,
                rules.tables_version()
            )));
        }
        if meta.bias.len() != meta.categories.len() {
            return Err(bad(format!(
                "bias has {} values for {} categories",
                meta.bias.len(),
                meta.categories.len()
            )));
        }
        if !(meta.learned_weight.is_finite()
            && meta.rule_weight.is_finite()
            && meta.bias.iter().all(|b| b.is_finite()))
        {
            return Err(bad("the layer holds NaN or infinity".into()));
        }
        let json = serde_json::to_string(&meta).unwrap_or_default();
        let version = format!("combined-{:016x}", fnv1a(11, json.as_bytes()));
        Ok(Self {
            learned,
            rules,
            meta,
            version,
        })
    }

    /// From bytes: the learned checkpoint's two files, `combiner.json` and the rules (what
    /// the browser does after fetching them).
    pub fn from_bytes(
        meta_json: &[u8],
        weights: &[u8],
        combiner_json: &[u8],
        rules: RuleBasedClassifier,
    ) -> Result<Self> {
        let learned = LearnedClassifier::from_bytes(meta_json, weights)?;
        let origin = Path::new(COMBINER_FILE);
        let meta: CombinerMeta = serde_json::from_slice(combiner_json).map_err(|e| {
            ClassifierError::checkpoint(origin, format!("bad {COMBINER_FILE}: {e}"))
        })?;
        Self::new(learned, rules, meta, origin)
    }

    /// Loads a checkpoint directory (learned files + `combiner.json`), checked against the
    /// config's categories and features and against `rules`.
    pub fn load_checked(
        dir: &Path,
        categories: &[String],
        features: &FeatureConfig,
        rules: RuleBasedClassifier,
    ) -> Result<Self> {
        let learned = LearnedClassifier::load_checked(dir, categories, features)?;
        let path = dir.join(COMBINER_FILE);
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ClassifierError::checkpoint(
                dir,
                format!("{COMBINER_FILE} is missing (`train_classifier --train_file ...` fits it)"),
            ),
            _ => ClassifierError::io(&path, e),
        })?;
        let meta: CombinerMeta = serde_json::from_slice(&bytes)
            .map_err(|e| ClassifierError::checkpoint(&path, format!("bad {COMBINER_FILE}: {e}")))?;
        Self::new(learned, rules, meta, &path)
    }

    /// Writes `combiner.json` into `dir` (the learned files are saved by the learned model).
    pub fn save_combiner(&self, dir: &Path) -> Result<()> {
        let path = dir.join(COMBINER_FILE);
        let json = serde_json::to_vec_pretty(&self.meta)
            .map_err(|e| ClassifierError::checkpoint(&path, e.to_string()))?;
        crate::learned::write_atomic(&path, &json)
    }

    pub fn meta(&self) -> &CombinerMeta {
        &self.meta
    }
}

impl Classifier for CombinedClassifier {
    fn classify(&self, text: &str) -> Result<Classification> {
        let learned = self.learned.query_logits(text)?;
        let rules = self.rules.raw_scores(text)?;
        let logits: Vec<f32> = (0..self.meta.bias.len())
            .map(|c| {
                self.meta.learned_weight * learned[c]
                    + self.meta.rule_weight * rules[c]
                    + self.meta.bias[c]
            })
            .collect();
        Ok(classification_from_probs(softmax(&logits, 1.0)))
    }

    fn categories(&self) -> &[String] {
        &self.meta.categories
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn kind(&self) -> ClassifierKind {
        ClassifierKind::Combined
    }
}

/// Fits the layer on `val` (validation data kept apart from the learned model's training
/// set) and returns the combined classifier.
pub fn fit(
    learned: LearnedClassifier,
    rules: RuleBasedClassifier,
    val: &[LabeledQuery],
) -> Result<CombinedClassifier> {
    let k = learned.categories().len();
    if rules.categories() != learned.categories() {
        return Err(ClassifierError::Training(format!(
            "the rules are for {:?} but the learned model for {:?}",
            rules.categories(),
            learned.categories()
        )));
    }
    let mut groups = vec![Vec::with_capacity(val.len()), Vec::with_capacity(val.len())];
    let mut labels = Vec::with_capacity(val.len());
    for (i, q) in val.iter().enumerate() {
        if q.label >= k {
            return Err(ClassifierError::Training(format!(
                "validation example {} has label {} but there are only {k} categories",
                i + 1,
                q.label
            )));
        }
        groups[0].push(learned.query_logits(&q.query)?);
        groups[1].push(rules.raw_scores(&q.query)?);
        labels.push(q.label);
    }
    if labels.is_empty() {
        return Err(ClassifierError::Training(
            "the validation set is empty (the combiner is fitted on it)".into(),
        ));
    }
    let start = [1.0 / learned.meta().temperature, 0.5];
    let (weights, bias) = fit_scaled_sum(&groups, &labels, k, &start);
    let meta = CombinerMeta {
        format: COMBINER_FORMAT.into(),
        categories: learned.categories().to_vec(),
        learned_version: learned.version().to_string(),
        rules_tables: rules.tables_version().to_string(),
        learned_weight: weights[0],
        rule_weight: weights[1],
        bias,
    };
    CombinedClassifier::new(learned, rules, meta, Path::new(COMBINER_FILE))
}

/// Minimises the mean NLL of `softmax(Σ_g w_g · x_g + b)` over one weight per group `g` and
/// one bias per category, by full-batch Adam from `start` (deterministic). `groups[g][i]` is
/// item `i`'s score vector in group `g`. A small L2 penalty (1e-3) keeps the fit finite on
/// separable data.
pub fn fit_scaled_sum(
    groups: &[Vec<Vec<f32>>],
    labels: &[usize],
    k: usize,
    start: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let g_n = groups.len();
    let n = labels.len().max(1) as f64;
    let mut theta: Vec<f64> = start.iter().map(|&w| f64::from(w)).collect();
    theta.resize(g_n, 1.0);
    theta.extend(std::iter::repeat_n(0.0, k));
    let (mut m, mut v) = (vec![0.0f64; theta.len()], vec![0.0f64; theta.len()]);
    let (lr, b1, b2, l2) = (0.05, 0.9, 0.999, 1e-3);
    for step in 1..=3000 {
        let mut grad = vec![0.0f64; theta.len()];
        for (i, &y) in labels.iter().enumerate() {
            let logits: Vec<f64> = (0..k)
                .map(|c| {
                    theta[g_n + c]
                        + (0..g_n)
                            .map(|g| theta[g] * f64::from(groups[g][i][c]))
                            .sum::<f64>()
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f64 = exp.iter().sum();
            for c in 0..k {
                let d = exp[c] / sum - f64::from(u8::from(c == y));
                for g in 0..g_n {
                    grad[g] += d * f64::from(groups[g][i][c]) / n;
                }
                grad[g_n + c] += d / n;
            }
        }
        for (j, t) in theta.iter_mut().enumerate() {
            let gj = grad[j] + l2 * *t;
            m[j] = b1 * m[j] + (1.0 - b1) * gj;
            v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
            let mh = m[j] / (1.0 - b1.powi(step));
            let vh = v[j] / (1.0 - b2.powi(step));
            *t -= lr * mh / (vh.sqrt() + 1e-9);
        }
    }
    let weights = theta[..g_n].iter().map(|&w| w as f32).collect();
    let bias = theta[g_n..].iter().map(|&b| b as f32).collect();
    (weights, bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleSet;
    use crate::train::{TrainOptions, train};

    fn parts() -> (LearnedClassifier, RuleBasedClassifier, Vec<LabeledQuery>) {
        let items = crate::sample::generate(5, 120);
        let (t, v) = items.split_at(items.len() * 3 / 4);
        let cats = vec!["reasoning".to_string(), "sop".to_string()];
        let options = TrainOptions {
            features: FeatureConfig {
                buckets: 1 << 10,
                ..FeatureConfig::default()
            },
            ..TrainOptions::default()
        };
        let learned = train(t, v, &cats, &options, |_, _| {}).unwrap().0;
        let rules = RuleBasedClassifier::new(RuleSet::default_rules().unwrap()).unwrap();
        (learned, rules, v.to_vec())
    }

    #[test]
    fn the_fit_recovers_a_known_scale_and_bias() {
        // Labels drawn from softmax(2·x + [0.5, 0]) are fitted back to about (2, 0.5 - 0).
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut xs = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..4000 {
            let x: f32 = rng.random_range(-2.0..2.0);
            let p0 = 1.0 / (1.0 + (-(2.0 * x + 0.5) as f64).exp());
            labels.push(usize::from(rng.random_bool(1.0 - p0)));
            xs.push(vec![x, 0.0]);
        }
        let (w, b) = fit_scaled_sum(&[xs], &labels, 2, &[1.0]);
        assert!((w[0] - 2.0).abs() < 0.2, "{w:?}");
        assert!(((b[0] - b[1]) - 0.5).abs() < 0.15, "{b:?}");
    }

    #[test]
    fn a_combiner_fitted_for_other_weights_or_rules_is_refused() {
        let (learned, rules, val) = parts();
        let combined = fit(learned.clone(), rules, &val).unwrap();
        assert!(combined.classify("where is my refund").is_ok());
        let meta = combined.meta().clone();

        let other_rules = RuleBasedClassifier::new(
            RuleSet::from_json(
                r#"{"categories":[{"name":"reasoning","keywords":["sum"]},{"name":"sop","keywords":["退款"]}]}"#,
            )
            .unwrap(),
        )
        .unwrap();
        let e = CombinedClassifier::new(
            learned.clone(),
            other_rules,
            meta.clone(),
            Path::new("ck/combiner.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ck/combiner.json") && e.contains("keyword tables"),
            "{e}"
        );

        let rules = RuleBasedClassifier::new(RuleSet::default_rules().unwrap()).unwrap();
        let mut stale = meta;
        stale.learned_version = "learned-0000000000000000".into();
        let e = CombinedClassifier::new(learned, rules, stale, Path::new("ck/combiner.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("learned weights"), "{e}");
    }
}
