//! Property tests: for any input, both classifier kinds give probabilities in [0, 1] that
//! sum to 1, the confidence is the top score, and the same input gives the same output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use classifier::train::{TrainOptions, train};
use classifier::{Classifier, ClassifierError, LearnedClassifier, RuleBasedClassifier, RuleSet};
use proptest::prelude::*;

fn learned() -> &'static LearnedClassifier {
    static MODEL: OnceLock<LearnedClassifier> = OnceLock::new();
    MODEL.get_or_init(|| {
        let data = classifier::sample::generate(7, 120);
        let (t, v) = data.split_at(data.len() * 8 / 10);
        let cats = vec!["reasoning".to_string(), "sop".to_string()];
        train(t, v, &cats, &TrainOptions::default(), |_, _| {})
            .unwrap()
            .0
    })
}

fn rules() -> &'static RuleBasedClassifier {
    static MODEL: OnceLock<RuleBasedClassifier> = OnceLock::new();
    MODEL.get_or_init(|| RuleBasedClassifier::new(RuleSet::default_rules().unwrap()).unwrap())
}

fn check(c: &dyn Classifier, text: &str) -> Result<(), TestCaseError> {
    match c.classify(text) {
        Ok(r) => {
            prop_assert_eq!(r.scores.len(), c.categories().len());
            prop_assert!((0.0..=1.0).contains(&r.confidence));
            prop_assert!(r.scores.iter().all(|s| (0.0..=1.0).contains(s)));
            prop_assert!((r.scores.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            prop_assert_eq!(r.confidence, r.scores[r.category]);
            prop_assert!(r.scores.iter().all(|&s| s <= r.confidence));
            prop_assert_eq!(c.classify(text).unwrap(), r);
        }
        Err(ClassifierError::EmptyInput) => prop_assert!(text.trim().is_empty()),
        Err(e) => prop_assert!(false, "unexpected error {e}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_unicode_text(text in "\\PC{0,200}") {
        check(learned(), &text)?;
        check(rules(), &text)?;
    }

    #[test]
    fn mixed_scripts_and_whitespace(text in "[a-z 退款密码计算？?!\\t\\n0-9]{0,80}") {
        check(learned(), &text)?;
        check(rules(), &text)?;
    }
}

#[test]
fn a_megabyte_of_text_is_bounded_work() {
    let huge = "refund my order please 请退款 ".repeat(40_000);
    assert!(huge.len() > 1_000_000);
    let prefix: String = huge.chars().take(classifier::MAX_INPUT_CHARS).collect();
    // Only the first MAX_INPUT_CHARS characters count: the result equals the prefix's.
    assert_eq!(
        learned().classify(&huge).unwrap(),
        learned().classify(&prefix).unwrap()
    );
    assert_eq!(
        rules().classify(&huge).unwrap(),
        rules().classify(&prefix).unwrap()
    );
}
