//! Evaluation: accuracy, macro-F1, expected calibration error and the reliability table,
//! plus temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks").

use serde::{Deserialize, Serialize};

use crate::query_classifier::softmax;

/// Number of equal-width confidence bins used for ECE and the reliability table.
pub const CALIBRATION_BINS: usize = 10;

/// One row of a reliability table: predictions whose confidence fell in `[lo, hi)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lo: f32,
    pub hi: f32,
    pub count: usize,
    pub accuracy: f32,
    pub confidence: f32,
}

/// Quality of a classifier on one labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub n: usize,
    pub accuracy: f32,
    pub macro_f1: f32,
    pub ece: f32,
    pub reliability: Vec<ReliabilityBin>,
}

/// Computes the metrics from predictions `(category, confidence)` and gold labels.
pub fn evaluate(
    predictions: &[(usize, f32)],
    labels: &[usize],
    n_categories: usize,
) -> EvalMetrics {
    let n = labels.len().min(predictions.len());
    let correct = (0..n).filter(|&i| predictions[i].0 == labels[i]).count();
    let accuracy = if n == 0 {
        0.0
    } else {
        correct as f32 / n as f32
    };

    // Macro-F1 over the categories that occur in the gold labels or the predictions.
    let mut f1_sum = 0.0;
    let mut f1_count = 0;
    for c in 0..n_categories {
        let tp = (0..n)
            .filter(|&i| predictions[i].0 == c && labels[i] == c)
            .count() as f32;
        let fp = (0..n)
            .filter(|&i| predictions[i].0 == c && labels[i] != c)
            .count() as f32;
        let fneg = (0..n)
            .filter(|&i| predictions[i].0 != c && labels[i] == c)
            .count() as f32;
        if tp + fp + fneg == 0.0 {
            continue;
        }
        f1_sum += 2.0 * tp / (2.0 * tp + fp + fneg);
        f1_count += 1;
    }
    let macro_f1 = if f1_count == 0 {
        0.0
    } else {
        f1_sum / f1_count as f32
    };

    let mut reliability: Vec<ReliabilityBin> = (0..CALIBRATION_BINS)
        .map(|b| ReliabilityBin {
            lo: b as f32 / CALIBRATION_BINS as f32,
            hi: (b + 1) as f32 / CALIBRATION_BINS as f32,
            count: 0,
            accuracy: 0.0,
            confidence: 0.0,
        })
        .collect();
    for i in 0..n {
        let (pred, conf) = predictions[i];
        let b = ((conf * CALIBRATION_BINS as f32) as usize).min(CALIBRATION_BINS - 1);
        let bin = &mut reliability[b];
        bin.count += 1;
        bin.accuracy += f32::from(u8::from(pred == labels[i]));
        bin.confidence += conf;
    }
    let mut ece = 0.0;
    for bin in &mut reliability {
        if bin.count > 0 {
            bin.accuracy /= bin.count as f32;
            bin.confidence /= bin.count as f32;
            ece += bin.count as f32 / n as f32 * (bin.accuracy - bin.confidence).abs();
        }
    }
    EvalMetrics {
        n,
        accuracy,
        macro_f1,
        ece,
        reliability,
    }
}

/// Metrics of raw logits under a temperature.
pub fn evaluate_logits(logits: &[Vec<f32>], labels: &[usize], temperature: f32) -> EvalMetrics {
    let k = logits.first().map_or(0, Vec::len);
    let preds: Vec<(usize, f32)> = logits
        .iter()
        .map(|l| {
            let p = softmax(l, temperature);
            let c = argmax(&p);
            (c, p[c])
        })
        .collect();
    evaluate(&preds, labels, k)
}

fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > p[best] {
            best = i;
        }
    }
    best
}

/// Mean negative log-likelihood of the labels under `softmax(logits / t)`.
pub fn nll(logits: &[Vec<f32>], labels: &[usize], t: f32) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let total: f64 = logits
        .iter()
        .zip(labels)
        .map(|(l, &y)| {
            let p = softmax(l, t);
            -f64::from(p[y].max(1e-12)).ln()
        })
        .sum();
    total / labels.len() as f64
}

/// Fits the temperature that minimises validation NLL, by golden-section search over
/// `ln t` in `[ln 0.05, ln 20]` (NLL is unimodal in `t` for a fixed model).
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[usize]) -> f32 {
    if labels.is_empty() {
        return 1.0;
    }
    let f = |log_t: f64| nll(logits, labels, log_t.exp() as f32);
    let (mut a, mut b) = (0.05f64.ln(), 20f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..60 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    (((a + b) / 2.0).exp()) as f32
}

/// Renders a reliability table as fixed-width text.
pub fn reliability_table(m: &EvalMetrics) -> String {
    let mut s = String::from("confidence bin   count  accuracy  mean conf.  gap\n");
    for b in &m.reliability {
        if b.count == 0 {
            continue;
        }
        s.push_str(&format!(
            "[{:.1}, {:.1})      {:>6}  {:>8.3}  {:>10.3}  {:+.3}\n",
            b.lo,
            b.hi,
            b.count,
            b.accuracy,
            b.confidence,
            b.accuracy - b.confidence
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_predictions() {
        let m = evaluate(&[(0, 1.0), (1, 1.0)], &[0, 1], 2);
        assert_eq!(m.accuracy, 1.0);
        assert_eq!(m.macro_f1, 1.0);
        assert!(m.ece < 1e-6);
    }

    #[test]
    fn ece_measures_overconfidence() {
        // Always 90 % sure, right half the time: ECE = 0.4.
        let preds = [(0, 0.9), (0, 0.9), (0, 0.9), (0, 0.9)];
        let m = evaluate(&preds, &[0, 1, 0, 1], 2);
        assert!((m.ece - 0.4).abs() < 1e-6);
        assert!((m.accuracy - 0.5).abs() < 1e-6);
    }

    #[test]
    fn temperature_fixes_overconfident_logits() {
        // Logits that are right 75 % of the time with huge margins.
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        for i in 0..400 {
            logits.push(vec![10.0, 0.0]);
            labels.push(usize::from(i % 4 == 0));
        }
        let t = fit_temperature(&logits, &labels);
        assert!(t > 1.0);
        let m = evaluate_logits(&logits, &labels, t);
        assert!(m.ece < 0.01, "ece {}", m.ece);
    }
}
