//! Native training of the learned classifier: sparse AdaGrad on softmax cross-entropy with
//! L2 regularisation, deterministic for a given seed, then temperature scaling on the
//! validation split.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::LabeledQuery;
use crate::error::{ClassifierError, Result};
use crate::features::{FeatureConfig, SparseVector, extract};
use crate::learned::{CHECKPOINT_FORMAT, CheckpointMeta, LearnedClassifier};
use crate::metrics::{EvalMetrics, evaluate_logits, fit_temperature};
use crate::query_classifier::{normalize, softmax};

/// Hyper-parameters of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub epochs: usize,
    pub learning_rate: f32,
    /// L2 penalty per example on the weights an example touches.
    pub l2: f32,
    pub seed: u64,
    pub features: FeatureConfig,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 5,
            learning_rate: 0.5,
            l2: 1e-5,
            seed: 42,
            features: FeatureConfig::default(),
        }
    }
}

/// What a training run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub options: TrainOptions,
    pub n_train: usize,
    pub n_val: usize,
    /// Mean training loss of each epoch.
    pub epoch_loss: Vec<f32>,
    pub temperature: f32,
    /// Validation metrics with temperature 1 (before calibration).
    pub val_uncalibrated: EvalMetrics,
    /// Validation metrics with the fitted temperature.
    pub val_calibrated: EvalMetrics,
    pub train_seconds: f64,
}

fn featurize(
    set: &[LabeledQuery],
    features: &FeatureConfig,
    k: usize,
    name: &str,
) -> Result<Vec<(SparseVector, usize)>> {
    set.iter()
        .enumerate()
        .map(|(i, q)| {
            if q.label >= k {
                return Err(ClassifierError::Training(format!(
                    "{name} example {} has label {} but there are only {k} categories",
                    i + 1,
                    q.label
                )));
            }
            let text = normalize(&q.query).map_err(|_| {
                ClassifierError::Training(format!("{name} example {} has an empty query", i + 1))
            })?;
            Ok((extract(features, &text), q.label))
        })
        .collect()
}

/// Trains a classifier on `train`, calibrates it on `val`, and reports.
/// `progress(epoch, examples_done_in_epoch)` is called as training advances.
pub fn train(
    train: &[LabeledQuery],
    val: &[LabeledQuery],
    categories: &[String],
    options: &TrainOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<(LearnedClassifier, TrainReport)> {
    let start = std::time::Instant::now();
    let k = categories.len();
    if k < 2 {
        return Err(ClassifierError::Training(
            "need at least two categories".into(),
        ));
    }
    if train.is_empty() {
        return Err(ClassifierError::Training(
            "the training set is empty".into(),
        ));
    }
    if val.is_empty() {
        return Err(ClassifierError::Training(
            "the validation set is empty (it is needed for calibration)".into(),
        ));
    }
    options
        .features
        .validate("features")
        .map_err(|e| ClassifierError::Training(e.to_string()))?;
    if !(options.learning_rate.is_finite() && options.learning_rate > 0.0) {
        return Err(ClassifierError::Training(
            "the learning rate must be positive".into(),
        ));
    }
    let train_x = featurize(train, &options.features, k, "training")?;
    let val_x = featurize(val, &options.features, k, "validation")?;

    let buckets = options.features.buckets;
    let mut weight = vec![0f32; buckets * k];
    let mut bias = vec![0f32; k];
    let mut g2_w = vec![1e-8f32; buckets * k];
    let mut g2_b = vec![1e-8f32; k];
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut order: Vec<usize> = (0..train_x.len()).collect();
    let mut epoch_loss = Vec::with_capacity(options.epochs);
    let lr = options.learning_rate;

    for epoch in 0..options.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0f64;
        for (done, &i) in order.iter().enumerate() {
            let (x, y) = &train_x[i];
            let mut logits = bias.clone();
            for &(idx, v) in x {
                let row = &weight[idx as usize * k..(idx as usize + 1) * k];
                for (o, w) in logits.iter_mut().zip(row) {
                    *o += v * w;
                }
            }
            let p = softmax(&logits, 1.0);
            loss_sum -= f64::from(p[*y].max(1e-12)).ln();
            // d loss / d logit_c = p_c - [c == y]
            let grad: Vec<f32> = (0..k)
                .map(|c| p[c] - f32::from(u8::from(c == *y)))
                .collect();
            for &(idx, v) in x {
                let base = idx as usize * k;
                for c in 0..k {
                    let g = grad[c] * v + options.l2 * weight[base + c];
                    g2_w[base + c] += g * g;
                    weight[base + c] -= lr * g / g2_w[base + c].sqrt();
                }
            }
            for c in 0..k {
                g2_b[c] += grad[c] * grad[c];
                bias[c] -= lr * grad[c] / g2_b[c].sqrt();
            }
            if done % 64 == 63 {
                progress(epoch, done + 1);
            }
        }
        progress(epoch, order.len());
        epoch_loss.push((loss_sum / train_x.len() as f64) as f32);
    }

    let meta = CheckpointMeta {
        format: CHECKPOINT_FORMAT.into(),
        categories: categories.to_vec(),
        features: options.features.clone(),
        temperature: 1.0,
    };
    let model = LearnedClassifier::from_parts(meta.clone(), weight, bias)?;
    let val_logits: Vec<Vec<f32>> = val_x.iter().map(|(x, _)| model.logits(x)).collect();
    let val_labels: Vec<usize> = val_x.iter().map(|(_, y)| *y).collect();
    let val_uncalibrated = evaluate_logits(&val_logits, &val_labels, 1.0);
    let temperature = fit_temperature(&val_logits, &val_labels);
    let val_calibrated = evaluate_logits(&val_logits, &val_labels, temperature);

    let (weight, bias) = model.into_parts();
    let model = LearnedClassifier::from_parts(
        CheckpointMeta {
            temperature,
            ..meta
        },
        weight,
        bias,
    )?;
    let report = TrainReport {
        options: options.clone(),
        n_train: train.len(),
        n_val: val.len(),
        epoch_loss,
        temperature,
        val_uncalibrated,
        val_calibrated,
        train_seconds: start.elapsed().as_secs_f64(),
    };
    Ok((model, report))
}
