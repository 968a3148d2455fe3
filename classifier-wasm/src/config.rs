//! The `hybrid:` section of `configs/config.yaml` (the seed's keys), loaded once and
//! validated: unknown keys and out-of-range values fail with the key's path and the file.
//!
//! The file's other top-level sections belong to other crates (the gateway's server and
//! expert settings); this loader checks that every top-level key is one of
//! [`TOP_LEVEL_SECTIONS`] and reads `hybrid` strictly.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::combined::CombinedClassifier;
use crate::error::{ClassifierError, Result};
use crate::features::FeatureConfig;
use crate::learned::LearnedClassifier;
use crate::query_classifier::{Classifier, ClassifierKind};
use crate::rules::{RuleBasedClassifier, RuleSet};

/// The top-level sections a config file may have.
pub const TOP_LEVEL_SECTIONS: &[&str] = &["hybrid", "gateway", "experts"];

/// `hybrid:` — what the seed's config holds, plus the category list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HybridConfig {
    /// Category names, in label order (`label` 0 is the first). Two by default.
    #[serde(default = "default_categories")]
    pub categories: Vec<String>,
    pub classifier: ClassifierSettings,
    pub routing: RoutingSettings,
}

fn default_categories() -> Vec<String> {
    vec!["reasoning".into(), "sop".into()]
}

/// `hybrid.classifier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSettings {
    /// `rule_based`, `learned` or `combined`.
    #[serde(rename = "type")]
    pub kind: ClassifierKind,
    /// The seed's key for an encoder-backed learned classifier (a local model directory).
    /// The `learned` kind built here uses hashed n-gram features and does not read it.
    #[serde(default)]
    pub encoder_model: Option<String>,
    /// Where the learned classifier's checkpoint lives (relative to the working directory).
    pub checkpoint_dir: PathBuf,
    /// A JSON/YAML file with the rule tables; the shipped `configs/rules.json` when absent.
    #[serde(default)]
    pub rules_file: Option<PathBuf>,
    /// Rule tables inline (instead of `rules_file`).
    #[serde(default)]
    pub rules: Option<RuleSet>,
    /// Feature settings of the learned classifier; a checkpoint must have been trained with them.
    #[serde(default)]
    pub features: FeatureConfig,
}

/// `hybrid.routing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSettings {
    /// Confidence at or above which a query goes to one expert alone.
    pub confidence_threshold: f32,
    /// Below the threshold: fuse experts (BTM) when true, else use the foundation model.
    pub enable_btm_fallback: bool,
}

impl HybridConfig {
    /// Checks every value; errors name the key (`hybrid.…`).
    pub fn validate(&self) -> Result<()> {
        if self.categories.len() < 2 {
            return Err(ClassifierError::config(
                "hybrid.categories",
                "at least two categories are needed",
            ));
        }
        for (i, name) in self.categories.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(ClassifierError::config(
                    format!("hybrid.categories[{i}]"),
                    "empty category name",
                ));
            }
            if self.categories[..i].contains(name) {
                return Err(ClassifierError::config(
                    format!("hybrid.categories[{i}]"),
                    format!("category {name:?} is listed twice"),
                ));
            }
        }
        let t = self.routing.confidence_threshold;
        if !(0.0..=1.0).contains(&t) {
            return Err(ClassifierError::config(
                "hybrid.routing.confidence_threshold",
                format!("{t} is out of range [0, 1]"),
            ));
        }
        if self.classifier.checkpoint_dir.as_os_str().is_empty() {
            return Err(ClassifierError::config(
                "hybrid.classifier.checkpoint_dir",
                "empty path",
            ));
        }
        if let Some(m) = &self.classifier.encoder_model
            && m.trim().is_empty()
        {
            return Err(ClassifierError::config(
                "hybrid.classifier.encoder_model",
                "empty model name",
            ));
        }
        if self.classifier.rules.is_some() && self.classifier.rules_file.is_some() {
            return Err(ClassifierError::config(
                "hybrid.classifier.rules",
                "give either `rules` or `rules_file`, not both",
            ));
        }
        self.classifier
            .features
            .validate("hybrid.classifier.features")?;
        if let Some(rules) = &self.classifier.rules {
            rules
                .validate(Some(&self.categories))
                .map_err(|e| prefix_key(e, "hybrid.classifier."))?;
        }
        Ok(())
    }

    /// The rule set named by the config (inline, a file, or the shipped default),
    /// checked against the categories.
    pub fn rule_set(&self) -> Result<RuleSet> {
        let rules = match (&self.classifier.rules, &self.classifier.rules_file) {
            (Some(rules), _) => rules.clone(),
            (None, Some(path)) => load_rules_file(path)?,
            (None, None) => RuleSet::default_rules()?,
        };
        let origin = self
            .classifier
            .rules_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("hybrid.classifier.rules"));
        rules
            .validate(Some(&self.categories))
            .map_err(|e| e.in_file(origin))?;
        Ok(rules)
    }

    /// Builds the classifier the config asks for; `kind` and `checkpoint` override it. A
    /// checkpoint given without a kind is read by the learned classifier, or by the
    /// combined one when the config asks for that and the directory holds a combiner
    /// (never by the rule-based one, which reads no checkpoint).
    pub fn build_classifier(
        &self,
        kind: Option<ClassifierKind>,
        checkpoint: Option<&Path>,
    ) -> Result<Box<dyn Classifier>> {
        let kind = match (kind, checkpoint) {
            (Some(kind), _) => kind,
            (None, Some(dir))
                if self.classifier.kind == ClassifierKind::Combined
                    && dir.join(crate::combined::COMBINER_FILE).is_file() =>
            {
                ClassifierKind::Combined
            }
            (None, Some(_)) => ClassifierKind::Learned,
            (None, None) => self.classifier.kind,
        };
        match kind {
            ClassifierKind::RuleBased => Ok(Box::new(RuleBasedClassifier::new(self.rule_set()?)?)),
            ClassifierKind::Learned => {
                let dir = checkpoint.unwrap_or(&self.classifier.checkpoint_dir);
                Ok(Box::new(LearnedClassifier::load_checked(
                    dir,
                    &self.categories,
                    &self.classifier.features,
                )?))
            }
            ClassifierKind::Combined => {
                let dir = checkpoint.unwrap_or(&self.classifier.checkpoint_dir);
                Ok(Box::new(CombinedClassifier::load_checked(
                    dir,
                    &self.categories,
                    &self.classifier.features,
                    RuleBasedClassifier::new(self.rule_set()?)?,
                )?))
            }
        }
    }
}

fn prefix_key(e: ClassifierError, prefix: &str) -> ClassifierError {
    match e {
        ClassifierError::Config { file, key, message } => ClassifierError::Config {
            file,
            key: format!("{prefix}{key}"),
            message,
        },
        other => other,
    }
}

/// Reads a rule file (JSON or YAML).
pub fn load_rules_file(path: &Path) -> Result<RuleSet> {
    let text = std::fs::read_to_string(path).map_err(|e| ClassifierError::io(path, e))?;
    let de = serde_yaml::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        ClassifierError::config(format!("rules.{}", e.path()), e.inner().to_string()).in_file(path)
    })
}

/// Parses a whole config file's text; `path` is only used in messages.
pub fn parse_config(text: &str, path: &Path) -> Result<HybridConfig> {
    let value: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| ClassifierError::config("<document>", e.to_string()).in_file(path))?;
    let serde_yaml::Value::Mapping(map) = value else {
        return Err(
            ClassifierError::config("<document>", "the config must be a mapping").in_file(path),
        );
    };
    let mut hybrid = None;
    for (key, value) in map {
        let Some(name) = key.as_str() else {
            return Err(
                ClassifierError::config(format!("{key:?}"), "keys must be strings").in_file(path),
            );
        };
        if !TOP_LEVEL_SECTIONS.contains(&name) {
            return Err(ClassifierError::config(
                name,
                format!("unknown top-level key; expected one of {TOP_LEVEL_SECTIONS:?}"),
            )
            .in_file(path));
        }
        if name == "hybrid" {
            hybrid = Some(value);
        }
    }
    let Some(hybrid) = hybrid else {
        return Err(ClassifierError::config("hybrid", "missing section").in_file(path));
    };
    let config: HybridConfig = serde_path_to_error::deserialize(hybrid).map_err(|e| {
        let key = match e.path().to_string().as_str() {
            "." => "hybrid".to_string(),
            p => format!("hybrid.{p}"),
        };
        ClassifierError::config(key, e.inner().to_string()).in_file(path)
    })?;
    config.validate().map_err(|e| e.in_file(path))?;
    Ok(config)
}

/// Loads and validates a config file.
pub fn load_config(path: impl AsRef<Path>) -> Result<HybridConfig> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| ClassifierError::io(path, e))?;
    parse_config(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
hybrid:
  categories: [reasoning, sop]
  classifier:
    type: "rule_based"
    encoder_model: "Qwen/Qwen2.5-0.5B"
    checkpoint_dir: "./models/checkpoints/classifier"
  routing:
    confidence_threshold: 0.85
    enable_btm_fallback: true
"#;

    fn err(text: &str) -> String {
        parse_config(text, Path::new("cfg.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_seed_config_parses() {
        let c = parse_config(GOOD, Path::new("cfg.yaml")).unwrap();
        assert_eq!(c.routing.confidence_threshold, 0.85);
        assert_eq!(c.classifier.kind, ClassifierKind::RuleBased);
        assert!(c.build_classifier(None, None).is_ok());
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let e = err(&GOOD.replace("enable_btm_fallback", "enable_btm_fallbak"));
        assert!(
            e.contains("hybrid.routing") && e.contains("enable_btm_fallbak"),
            "{e}"
        );
        assert!(e.contains("cfg.yaml"), "{e}");
        let e = err(&format!("{GOOD}extra: 1\n"));
        assert!(e.contains("`extra`"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_named() {
        let e = err(&GOOD.replace("0.85", "1.5"));
        assert!(e.contains("hybrid.routing.confidence_threshold"), "{e}");
        let e = err(&GOOD.replace("\"rule_based\"", "\"neural\""));
        assert!(e.contains("hybrid.classifier.type"), "{e}");
        let e = err(&GOOD.replace("0.85", "\"high\""));
        assert!(e.contains("hybrid.routing.confidence_threshold"), "{e}");
        let e = err(&GOOD.replace("[reasoning, sop]", "[reasoning, reasoning]"));
        assert!(e.contains("hybrid.categories[1]"), "{e}");
    }

    #[test]
    fn missing_learned_checkpoint_is_a_clear_error() {
        let c = parse_config(GOOD, Path::new("cfg.yaml")).unwrap();
        let e = c
            .build_classifier(
                Some(ClassifierKind::Learned),
                Some(Path::new("/nonexistent/ckpt")),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("classifier.json is missing"), "{e}");
    }
}
