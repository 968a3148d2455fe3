//! Quality of both classifier kinds: the learned one on the sample set's test split and on
//! the hand-written realistic file, the rule-based one with no training at all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use classifier::data::{LabeledQuery, read_jsonl};
use classifier::metrics::{EvalMetrics, evaluate};
use classifier::train::{TrainOptions, train};
use classifier::{Classifier, LearnedClassifier, RuleBasedClassifier, RuleSet};

fn realistic() -> Vec<LabeledQuery> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/classifier_realistic.jsonl");
    read_jsonl(path).unwrap()
}

fn eval(c: &dyn Classifier, data: &[LabeledQuery]) -> EvalMetrics {
    let preds: Vec<(usize, f32)> = data
        .iter()
        .map(|q| {
            let r = c.classify(&q.query).unwrap();
            (r.category, r.confidence)
        })
        .collect();
    let labels: Vec<usize> = data.iter().map(|q| q.label).collect();
    evaluate(&preds, &labels, c.categories().len())
}

/// The sample set exactly as `train_classifier --create_sample` splits it.
fn sample_splits() -> (Vec<LabeledQuery>, Vec<LabeledQuery>, Vec<LabeledQuery>) {
    let items = classifier::sample::generate(42, 350);
    let n = items.len();
    let (n_train, n_val) = (n * 70 / 100, n * 15 / 100);
    (
        items[..n_train].to_vec(),
        items[n_train..n_train + n_val].to_vec(),
        items[n_train + n_val..].to_vec(),
    )
}

fn trained() -> LearnedClassifier {
    let (t, v, _) = sample_splits();
    let cats = vec!["reasoning".to_string(), "sop".to_string()];
    train(&t, &v, &cats, &TrainOptions::default(), |_, _| {})
        .unwrap()
        .0
}

#[test]
fn sample_set_is_large_bilingual_and_balanced() {
    let items = classifier::sample::generate(42, 350);
    assert!(items.len() >= 600, "{} items", items.len());
    for label in 0..2 {
        let of: Vec<&LabeledQuery> = items.iter().filter(|q| q.label == label).collect();
        let zh = of
            .iter()
            .filter(|q| {
                q.query
                    .chars()
                    .any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
            })
            .count();
        assert!(
            zh * 4 > of.len() && zh * 4 < of.len() * 3,
            "label {label}: {zh} of {} Chinese",
            of.len()
        );
    }
}

#[test]
fn learned_meets_its_targets() {
    let model = trained();
    let (_, _, test) = sample_splits();
    let m = eval(&model, &test);
    eprintln!(
        "sample test split: accuracy {:.4} ece {:.4} (n={})",
        m.accuracy, m.ece, m.n
    );
    assert!(m.accuracy >= 0.95, "accuracy {}", m.accuracy);
    assert!(m.ece <= 0.05, "ece {}", m.ece);

    let r = eval(&model, &realistic());
    eprintln!(
        "realistic: accuracy {:.4} macro_f1 {:.4} (n={})",
        r.accuracy, r.macro_f1, r.n
    );
    assert!(r.n >= 60);
    assert!(r.accuracy >= 0.85, "realistic accuracy {}", r.accuracy);
}

#[test]
fn rule_based_works_with_zero_training() {
    let rules = RuleBasedClassifier::new(RuleSet::default_rules().unwrap()).unwrap();
    let r = eval(&rules, &realistic());
    eprintln!(
        "rule-based realistic: accuracy {:.4} macro_f1 {:.4} ece {:.4}",
        r.accuracy, r.macro_f1, r.ece
    );
    // Keyword tables are a zero-training baseline: clearly better than chance.
    assert!(r.accuracy >= 0.7, "rule-based accuracy {}", r.accuracy);
}

#[test]
fn training_is_deterministic() {
    let a = trained();
    let b = trained();
    assert_eq!(a.version(), b.version());
}
