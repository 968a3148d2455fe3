//! The rule-based classifier: weighted keyword and phrase tables per category, in
//! Chinese and English, needing no training.
//!
//! A category's score is the sum, over its keywords found in the query, of the keyword's
//! weight times its number of occurrences (capped at [`MAX_COUNT`]). The probabilities are
//! `softmax(scores / temperature)`: no match at all gives the uniform distribution (the
//! router then sees low confidence and fuses), and each extra piece of evidence for one
//! side raises the confidence smoothly.
//!
//! Matching: keywords made of Latin letters or digits only match whole words ("sum" does not
//! fire inside "summary"); keywords containing CJK characters match as substrings, since
//! Chinese has no spaces between words.

use serde::{Deserialize, Serialize};

use crate::error::{ClassifierError, Result};
use crate::features::is_cjk;
use crate::query_classifier::{
    Classification, Classifier, ClassifierKind, classification_from_probs, fnv1a, normalize,
    softmax,
};

/// Occurrences of one keyword beyond this count add nothing.
pub const MAX_COUNT: usize = 3;

/// The tables shipped with the project (`configs/rules.json`), used when the config names none.
pub const DEFAULT_RULES_JSON: &str = include_str!("../../configs/rules.json");

/// A keyword, either bare (weight 1) or with an explicit weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Keyword {
    Plain(String),
    Weighted { text: String, weight: f32 },
}

impl Keyword {
    fn parts(&self) -> (&str, f32) {
        match self {
            Self::Plain(text) => (text, 1.0),
            Self::Weighted { text, weight } => (text, *weight),
        }
    }
}

/// The keyword table of one category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRules {
    pub name: String,
    pub keywords: Vec<Keyword>,
}

/// A complete rule set: one table per category, in category order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// Softmax temperature applied to the scores; lower is more confident.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    pub categories: Vec<CategoryRules>,
}

fn default_temperature() -> f32 {
    1.0
}

impl RuleSet {
    /// Parses a rule set from JSON.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| ClassifierError::config("rules", e.to_string()))
    }

    /// The project's default tables.
    pub fn default_rules() -> Result<Self> {
        Self::from_json(DEFAULT_RULES_JSON)
    }

    /// Checks the rule set, and that its categories are exactly `expected` when given.
    pub fn validate(&self, expected: Option<&[String]>) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(ClassifierError::config(
                "rules.temperature",
                format!("{} must be a positive number", self.temperature),
            ));
        }
        if self.categories.len() < 2 {
            return Err(ClassifierError::config(
                "rules.categories",
                "at least two categories are needed",
            ));
        }
        for (i, cat) in self.categories.iter().enumerate() {
            for kw in &cat.keywords {
                let (text, weight) = kw.parts();
                if text.trim().is_empty() {
                    return Err(ClassifierError::config(
                        format!("rules.categories[{i}].keywords"),
                        "empty keyword",
                    ));
                }
                if !weight.is_finite() || weight < 0.0 {
                    return Err(ClassifierError::config(
                        format!("rules.categories[{i}].keywords"),
                        format!("keyword {text:?} has weight {weight}; need a finite weight >= 0"),
                    ));
                }
            }
        }
        if let Some(expected) = expected {
            let names: Vec<&str> = self.categories.iter().map(|c| c.name.as_str()).collect();
            if names != expected.iter().map(String::as_str).collect::<Vec<_>>() {
                return Err(ClassifierError::config(
                    "rules.categories",
                    format!(
                        "the rule tables are for categories {names:?} but the config lists {expected:?}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct CompiledKeyword {
    text: String,
    weight: f32,
    whole_word: bool,
}

/// The rule-based [`Classifier`].
#[derive(Debug)]
pub struct RuleBasedClassifier {
    categories: Vec<String>,
    tables: Vec<Vec<CompiledKeyword>>,
    temperature: f32,
    version: String,
    tables_version: String,
}

fn count_matches(haystack: &str, kw: &CompiledKeyword) -> usize {
    let mut count = 0;
    for (start, m) in haystack.match_indices(kw.text.as_str()) {
        if kw.whole_word {
            let before = haystack[..start].chars().next_back();
            let after = haystack[start + m.len()..].chars().next();
            let bounded = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric() || is_cjk(c));
            if !(bounded(before) && bounded(after)) {
                continue;
            }
        }
        count += 1;
        if count == MAX_COUNT {
            break;
        }
    }
    count
}

impl RuleBasedClassifier {
    /// Builds the classifier from a validated rule set.
    pub fn new(rules: RuleSet) -> Result<Self> {
        rules.validate(None)?;
        let canonical = serde_json::to_string(&rules)
            .map_err(|e| ClassifierError::config("rules", e.to_string()))?;
        let version = format!("rules-{:016x}", fnv1a(0, canonical.as_bytes()));
        // The keyword tables alone (not the temperature): what a combined classifier's
        // layer was fitted on, since it reads the raw scores.
        let tables = serde_json::to_string(&rules.categories)
            .map_err(|e| ClassifierError::config("rules", e.to_string()))?;
        let tables_version = format!("tables-{:016x}", fnv1a(0, tables.as_bytes()));
        let tables = rules
            .categories
            .iter()
            .map(|cat| {
                cat.keywords
                    .iter()
                    .map(|kw| {
                        let (text, weight) = kw.parts();
                        let text = text.trim().to_lowercase();
                        let whole_word = !text.chars().any(is_cjk);
                        CompiledKeyword {
                            text,
                            weight,
                            whole_word,
                        }
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            categories: rules.categories.into_iter().map(|c| c.name).collect(),
            tables,
            temperature: rules.temperature,
            version,
            tables_version,
        })
    }

    /// A fingerprint of the keyword tables (categories, keywords, weights), without the
    /// temperature.
    pub fn tables_version(&self) -> &str {
        &self.tables_version
    }

    /// The raw (pre-softmax) score of every category.
    pub fn raw_scores(&self, text: &str) -> Result<Vec<f32>> {
        let text = normalize(text)?;
        Ok(self
            .tables
            .iter()
            .map(|table| {
                table
                    .iter()
                    .map(|kw| kw.weight * count_matches(&text, kw) as f32)
                    .sum()
            })
            .collect())
    }
}

impl Classifier for RuleBasedClassifier {
    fn classify(&self, text: &str) -> Result<Classification> {
        let raw = self.raw_scores(text)?;
        Ok(classification_from_probs(softmax(&raw, self.temperature)))
    }

    fn categories(&self) -> &[String] {
        &self.categories
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn kind(&self) -> ClassifierKind {
        ClassifierKind::RuleBased
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_classifier() -> RuleBasedClassifier {
        RuleBasedClassifier::new(RuleSet::default_rules().unwrap()).unwrap()
    }

    #[test]
    fn default_rules_are_valid_and_bilingual() {
        let c = default_classifier();
        assert_eq!(c.categories(), ["reasoning", "sop"]);
        assert_eq!(
            c.classify("How do I get a refund for my order?")
                .unwrap()
                .category,
            1
        );
        assert_eq!(c.classify("我忘记密码了，怎么重置？").unwrap().category, 1);
        assert_eq!(
            c.classify("Calculate the probability of two sixes")
                .unwrap()
                .category,
            0
        );
        assert_eq!(c.classify("请计算这个方程的解").unwrap().category, 0);
    }

    #[test]
    fn no_evidence_means_no_confidence() {
        let c = default_classifier();
        let r = c.classify("zzz qqq").unwrap();
        assert!((r.confidence - 0.5).abs() < 1e-6);
    }

    #[test]
    fn more_evidence_means_more_confidence() {
        let c = default_classifier();
        let one = c.classify("refund").unwrap();
        let two = c.classify("refund for a return").unwrap();
        assert_eq!(one.category, 1);
        assert!(two.confidence > one.confidence);
    }

    #[test]
    fn english_keywords_match_whole_words_only() {
        let rules = RuleSet::from_json(
            r#"{"categories":[{"name":"a","keywords":["sum"]},{"name":"b","keywords":["退款"]}]}"#,
        )
        .unwrap();
        let c = RuleBasedClassifier::new(rules).unwrap();
        assert_eq!(c.raw_scores("a summary").unwrap(), vec![0.0, 0.0]);
        assert_eq!(c.raw_scores("the sum, please").unwrap(), vec![1.0, 0.0]);
        assert_eq!(c.raw_scores("我要退款").unwrap(), vec![0.0, 1.0]);
    }

    #[test]
    fn mismatched_categories_are_rejected() {
        let rules = RuleSet::default_rules().unwrap();
        let err = rules
            .validate(Some(&["a".into(), "b".into(), "c".into()]))
            .unwrap_err();
        assert!(err.to_string().contains("rules.categories"), "{err}");
    }

    #[test]
    fn bad_weights_are_rejected() {
        let rules = RuleSet::from_json(
            r#"{"categories":[{"name":"a","keywords":[{"text":"x","weight":-1}]},{"name":"b","keywords":[]}]}"#,
        )
        .unwrap();
        assert!(RuleBasedClassifier::new(rules).is_err());
    }
}
