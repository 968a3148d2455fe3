//! The gateway's view of `configs/config.yaml`, loaded once and validated at start-up.
//!
//! The file has three top-level sections:
//! - `hybrid`: the seed's keys, read by [`classifier::config::parse_config`];
//! - `experts`: owned by the expert process; the gateway reads only the names of
//!   `experts.models` (to check routes against them);
//! - `gateway`: [`GatewaySettings`], read strictly here.
//!
//! Unknown keys and impossible values fail with the key's dotted path and the file's name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use classifier::config::HybridConfig;
use classifier::{Classification, ClassifierError};
use protocol::FusionMode;
use serde::{Deserialize, Serialize};

use crate::error::{GatewayError, Result};

/// The environment variable that adds one API key to `gateway.api_keys`.
pub const API_KEY_ENV: &str = "GATEWAY_API_KEY";

/// How far the gateway trusts the client's `route_hint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HintTrust {
    /// Always classify on the server (microseconds); the hint is ignored.
    None,
    /// Accept a hint signed by a configured edge key (HMAC-SHA256) when fresh and valid.
    Signed,
    /// Trust the hint as sent (trusted networks only).
    Any,
}

/// `gateway:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer tokens; empty = no auth, loopback only.
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default = "default_hint_trust")]
    pub hint_trust: HintTrust,
    /// Key id → shared secret for hint signatures.
    #[serde(default)]
    pub edge_keys: BTreeMap<String, String>,
    #[serde(default = "default_hint_max_age_s")]
    pub hint_max_age_s: u64,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Chat requests one API key may have open at once (at most `max_concurrent_requests`),
    /// so that one client cannot take every slot. Applies when `api_keys` is set; without
    /// keys (loopback only) the global limit alone applies. Default: 16, or
    /// `max_concurrent_requests` when that is lower ([`GatewaySettings::per_key_limit`]).
    #[serde(default)]
    pub max_concurrent_per_key: Option<usize>,
    #[serde(default = "default_max_tokens_limit")]
    pub max_tokens_limit: usize,
    #[serde(default = "default_request_timeout_s")]
    pub request_timeout_s: u64,
    /// Local `expert serve` processes to start.
    #[serde(default = "default_expert_processes")]
    pub expert_processes: usize,
    /// Path of the `expert` binary; default: next to the gateway's own executable.
    #[serde(default)]
    pub expert_binary: Option<PathBuf>,
    /// How long an expert process may take to become healthy (it may load or forge models).
    #[serde(default = "default_expert_start_timeout_s")]
    pub expert_start_timeout_s: u64,
    /// Grace period between SIGTERM and SIGKILL when stopping an expert process.
    #[serde(default = "default_expert_stop_grace_s")]
    pub expert_stop_grace_s: u64,
    /// URLs of expert processes started elsewhere.
    #[serde(default)]
    pub remote_experts: Vec<String>,
    /// Category → model name (a key of `experts.models`).
    pub category_experts: BTreeMap<String, String>,
    /// The model that answers uncertain queries when fusion is disabled.
    pub foundation_model: String,
    /// The fusion mode for uncertain queries.
    pub fusion: FusionMode,
    /// With three or more experts: fuse only the experts of the classifier's `k` most likely
    /// categories (cost `k`, not the number of `fusion.models`). `null`: all of them.
    #[serde(default)]
    pub fusion_top_k: Option<usize>,
    /// Where an `ensemble` fusion's weights come from: `fixed` (the mode's own `weights`,
    /// equal when absent) or `classifier` (each expert weighs what the classification gives
    /// the categories it serves, per query).
    #[serde(default)]
    pub fusion_weights: FusionWeights,
    /// SQLite file of `POST /v1/feedback`.
    #[serde(default = "default_feedback_db")]
    pub feedback_db: PathBuf,
    /// Static files served at `/` (a missing directory is fine).
    #[serde(default = "default_web_dir")]
    pub web_dir: PathBuf,
    /// When the default models are missing, build them before starting the experts:
    /// `full` (forge's default profile), `small` (the fast test profile) or `off`.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: Bootstrap,
    /// When set, the confidence threshold moves online to hold this mean cost (model
    /// forwards per token, e.g. 1.2) instead of staying at `hybrid.routing.confidence_threshold`.
    #[serde(default)]
    pub target_cost: Option<f32>,
}

impl GatewaySettings {
    /// Experts a fused answer runs: `fusion_top_k`, else every model of `fusion`.
    pub fn fused_experts(&self) -> usize {
        self.fusion_top_k
            .unwrap_or_else(|| self.fusion.models().len())
            .max(1)
    }
}

/// Where a fused answer's ensemble weights come from (`gateway.fusion_weights`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FusionWeights {
    /// The fusion mode's own weights.
    #[default]
    Fixed,
    /// Per query, from the classification (see [`GatewayConfig::classifier_weights`]).
    Classifier,
}

/// How missing default models are obtained (see [`crate::bootstrap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bootstrap {
    Full,
    Small,
    Off,
}

fn default_bootstrap() -> Bootstrap {
    Bootstrap::Full
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_hint_trust() -> HintTrust {
    HintTrust::None
}
fn default_hint_max_age_s() -> u64 {
    300
}
fn default_max_body_bytes() -> usize {
    1 << 20
}
fn default_max_concurrent_requests() -> usize {
    64
}
/// `gateway.max_concurrent_per_key` when the file does not set it (capped by the global limit).
pub const DEFAULT_MAX_CONCURRENT_PER_KEY: usize = 16;
fn default_max_tokens_limit() -> usize {
    1024
}
fn default_request_timeout_s() -> u64 {
    300
}
fn default_expert_processes() -> usize {
    1
}
fn default_expert_start_timeout_s() -> u64 {
    900
}
fn default_expert_stop_grace_s() -> u64 {
    10
}
fn default_feedback_db() -> PathBuf {
    PathBuf::from("data/feedback.sqlite")
}
fn default_web_dir() -> PathBuf {
    PathBuf::from("web")
}

impl GatewaySettings {
    /// The number of chat requests one API key may have open at once.
    pub fn per_key_limit(&self) -> usize {
        self.max_concurrent_per_key
            .unwrap_or(DEFAULT_MAX_CONCURRENT_PER_KEY.min(self.max_concurrent_requests))
    }
}

/// The whole validated configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file it came from (passed on to `expert serve --config`).
    pub path: PathBuf,
    pub hybrid: HybridConfig,
    /// Names of `experts.models`.
    pub expert_models: Vec<String>,
    pub gateway: GatewaySettings,
    /// The parsed listen address.
    pub listen: SocketAddr,
}

impl GatewayConfig {
    /// Loads and validates a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| GatewayError::io(format!("reading {}", path.display()), e))?;
        Self::parse(&text, path)
    }

    /// Parses a whole config file's text; `path` names the file in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let hybrid = classifier::config::parse_config(text, path).map_err(from_classifier)?;
        let value: serde_yaml::Value = serde_yaml::from_str(text)
            .map_err(|e| GatewayError::config("<document>", e.to_string()).in_file(path))?;
        let expert_models = expert_model_names(&value).map_err(|e| e.in_file(path))?;
        let Some(section) = value.get("gateway") else {
            return Err(GatewayError::config("gateway", "missing section").in_file(path));
        };
        let gateway: GatewaySettings =
            serde_path_to_error::deserialize(section.clone()).map_err(|e| {
                let key = match e.path().to_string().as_str() {
                    "." => "gateway".to_string(),
                    p => format!("gateway.{p}"),
                };
                GatewayError::config(key, e.inner().to_string()).in_file(path)
            })?;
        let listen = validate(&hybrid, &expert_models, &gateway).map_err(|e| e.in_file(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            hybrid,
            expert_models,
            gateway,
            listen,
        })
    }

    /// Adds the key of [`API_KEY_ENV`] when it is set and not empty.
    #[must_use]
    pub fn with_env_api_key(mut self) -> Self {
        if let Ok(key) = std::env::var(API_KEY_ENV)
            && !key.trim().is_empty()
        {
            self.gateway.api_keys.push(key.trim().to_string());
        }
        self
    }

    /// The fusion mode for one uncertain query: `gateway.fusion`, or with
    /// `gateway.fusion_top_k = k` the same mode over the experts of the classification's `k`
    /// most likely categories (in `fusion.models` order; a named router or coefficient set
    /// is dropped so the expert process picks the one trained for exactly these experts).
    pub fn fusion_for(&self, c: &Classification) -> FusionMode {
        let mode = self.fusion_narrowed(c);
        if self.gateway.fusion_weights == FusionWeights::Classifier {
            return self.weighted_by(mode, c);
        }
        mode
    }

    /// `mode` with, when it is an `ensemble`, the weights [`Self::classifier_weights`]
    /// gives its experts for `c` (other modes, and a classification that weighs none of
    /// its experts, are left as they are).
    pub fn weighted_by(&self, mode: FusionMode, c: &Classification) -> FusionMode {
        match mode {
            FusionMode::Ensemble {
                models,
                weights,
                mix,
            } => {
                let weights = self.classifier_weights(&models, c).or(weights);
                FusionMode::Ensemble {
                    models,
                    weights,
                    mix,
                }
            }
            other => other,
        }
    }

    /// Each expert's share of the classification: the sum of the probabilities of the
    /// categories it serves (`gateway.category_experts`). A client's hint has no scores:
    /// its category gets its confidence and the other categories share the rest. `None`
    /// when no category maps to these experts.
    pub fn classifier_weights(&self, models: &[String], c: &Classification) -> Option<Vec<f32>> {
        let n = self.hybrid.categories.len();
        let probs: Vec<f32> = if c.scores.len() == n {
            c.scores.clone()
        } else {
            let rest = (1.0 - c.confidence).max(0.0) / (n.saturating_sub(1).max(1)) as f32;
            (0..n)
                .map(|i| if i == c.category { c.confidence } else { rest })
                .collect()
        };
        let weights: Vec<f32> = models
            .iter()
            .map(|m| {
                (0..n)
                    .filter(|&i| self.category_model(i) == Some(m.as_str()))
                    .map(|i| probs[i].max(0.0))
                    .sum()
            })
            .collect();
        (weights.iter().sum::<f32>() > 0.0).then_some(weights)
    }

    /// `gateway.fusion`, narrowed to the top-k categories' experts with `fusion_top_k`.
    fn fusion_narrowed(&self, c: &Classification) -> FusionMode {
        let g = &self.gateway;
        let Some(k) = g.fusion_top_k else {
            return g.fusion.clone();
        };
        let all = g.fusion.models();
        // The chosen category first (a client's hint carries no scores), then the others by
        // score.
        let scores = &c.scores;
        let mut ranked: Vec<usize> = (0..scores.len()).filter(|&i| i != c.category).collect();
        ranked.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        ranked.insert(0, c.category);
        let mut chosen: Vec<&str> = Vec::new();
        for category in ranked {
            if let Some(m) = self.category_model(category)
                && all.contains(&m)
                && !chosen.contains(&m)
            {
                chosen.push(m);
            }
            if chosen.len() == k {
                break;
            }
        }
        // Fill up from the fusion's own order (e.g. a category without a fused expert).
        for m in &all {
            if chosen.len() >= k {
                break;
            }
            if !chosen.contains(m) {
                chosen.push(m);
            }
        }
        let keep: Vec<usize> = (0..all.len())
            .filter(|&i| chosen.contains(&all[i]))
            .collect();
        let models: Vec<String> = keep.iter().map(|&i| all[i].to_string()).collect();
        match &g.fusion {
            FusionMode::Single { .. } => g.fusion.clone(),
            FusionMode::Ensemble { weights, mix, .. } => FusionMode::Ensemble {
                mix: *mix,
                models,
                weights: weights
                    .as_ref()
                    .map(|w| keep.iter().filter_map(|&i| w.get(i).copied()).collect()),
            },
            FusionMode::BtmToken { hard, .. } => FusionMode::BtmToken {
                models,
                router: None,
                hard: *hard,
            },
            FusionMode::Defer { threshold, .. } => FusionMode::Defer {
                models,
                head: None,
                threshold: *threshold,
            },
            FusionMode::BtmLayer { .. } => FusionMode::BtmLayer {
                models,
                coefficients: None,
            },
        }
    }

    /// The model that serves a category (validated to exist).
    pub fn category_model(&self, category: usize) -> Option<&str> {
        let name = self.hybrid.categories.get(category)?;
        self.gateway.category_experts.get(name).map(String::as_str)
    }
}

fn from_classifier(e: ClassifierError) -> GatewayError {
    match e {
        ClassifierError::Config { file, key, message } => {
            GatewayError::Config { file, key, message }
        }
        other => GatewayError::Classifier(other),
    }
}

fn expert_model_names(doc: &serde_yaml::Value) -> Result<Vec<String>> {
    let Some(experts) = doc.get("experts") else {
        return Err(GatewayError::config("experts", "missing section"));
    };
    let Some(models) = experts.get("models") else {
        return Err(GatewayError::config("experts.models", "missing key"));
    };
    let serde_yaml::Value::Mapping(models) = models else {
        return Err(GatewayError::config(
            "experts.models",
            "expected a mapping of model name to model directory",
        ));
    };
    let mut names = Vec::new();
    for (k, _) in models {
        match k.as_str() {
            Some(name) if !name.trim().is_empty() => names.push(name.to_string()),
            _ => {
                return Err(GatewayError::config(
                    "experts.models",
                    format!("model names must be non-empty strings, got {k:?}"),
                ));
            }
        }
    }
    if names.is_empty() {
        return Err(GatewayError::config("experts.models", "no model is named"));
    }
    Ok(names)
}

fn validate(hybrid: &HybridConfig, models: &[String], g: &GatewaySettings) -> Result<SocketAddr> {
    if let Some(k) = g.fusion_top_k {
        let n = g.fusion.models().len();
        if matches!(g.fusion, FusionMode::Single { .. }) || !(2..=n).contains(&k) {
            return Err(GatewayError::config(
                "gateway.fusion_top_k",
                format!("{k} must be between 2 and the {n} models of gateway.fusion"),
            ));
        }
    }
    if let Some(t) = g.target_cost {
        let max = g.fused_experts() as f32;
        if !(t.is_finite() && (1.0..=max).contains(&t)) {
            return Err(GatewayError::config(
                "gateway.target_cost",
                format!("{t} is out of range [1, {max}] (1 = never fuse, {max} = always fuse)"),
            ));
        }
    }
    let listen: SocketAddr = g.listen.parse().map_err(|e| {
        GatewayError::config(
            "gateway.listen",
            format!("{:?} is not a HOST:PORT socket address ({e})", g.listen),
        )
    })?;
    for (i, key) in g.api_keys.iter().enumerate() {
        if key.trim().is_empty() {
            return Err(GatewayError::config(
                format!("gateway.api_keys[{i}]"),
                "empty API key",
            ));
        }
    }
    if g.hint_trust == HintTrust::Signed && g.edge_keys.is_empty() {
        return Err(GatewayError::config(
            "gateway.edge_keys",
            "hint_trust `signed` needs at least one edge key",
        ));
    }
    for (id, secret) in &g.edge_keys {
        if secret.len() < 16 {
            return Err(GatewayError::config(
                format!("gateway.edge_keys.{id}"),
                "a signing secret must have at least 16 bytes",
            ));
        }
    }
    let positive: [(&str, u64); 6] = [
        ("gateway.hint_max_age_s", g.hint_max_age_s),
        ("gateway.max_body_bytes", g.max_body_bytes as u64),
        (
            "gateway.max_concurrent_requests",
            g.max_concurrent_requests as u64,
        ),
        (
            "gateway.max_concurrent_per_key",
            g.max_concurrent_per_key.unwrap_or(1) as u64,
        ),
        ("gateway.max_tokens_limit", g.max_tokens_limit as u64),
        ("gateway.request_timeout_s", g.request_timeout_s),
    ];
    for (key, v) in positive {
        if v == 0 {
            return Err(GatewayError::config(key, "must be greater than 0"));
        }
    }
    if let Some(per_key) = g.max_concurrent_per_key
        && per_key > g.max_concurrent_requests
    {
        return Err(GatewayError::config(
            "gateway.max_concurrent_per_key",
            format!(
                "{per_key} is over gateway.max_concurrent_requests ({}); one key cannot hold \
                 more slots than the gateway has",
                g.max_concurrent_requests
            ),
        ));
    }
    if g.expert_start_timeout_s == 0 {
        return Err(GatewayError::config(
            "gateway.expert_start_timeout_s",
            "must be greater than 0",
        ));
    }
    if g.expert_processes == 0 && g.remote_experts.is_empty() {
        return Err(GatewayError::config(
            "gateway.expert_processes",
            "0 expert processes and no remote_experts: nothing could answer",
        ));
    }
    for (i, url) in g.remote_experts.iter().enumerate() {
        let ok = reqwest::Url::parse(url)
            .map(|u| u.scheme() == "http" && u.host().is_some())
            .unwrap_or(false);
        if !ok {
            return Err(GatewayError::config(
                format!("gateway.remote_experts[{i}]"),
                format!("{url:?} is not an http:// URL"),
            ));
        }
    }
    let known = |name: &str| models.iter().any(|m| m == name);
    for cat in &hybrid.categories {
        if !g.category_experts.contains_key(cat) {
            return Err(GatewayError::config(
                "gateway.category_experts",
                format!("category {cat:?} of hybrid.categories has no expert"),
            ));
        }
    }
    for (cat, model) in &g.category_experts {
        if !hybrid.categories.contains(cat) {
            return Err(GatewayError::config(
                format!("gateway.category_experts.{cat}"),
                format!(
                    "{cat:?} is not one of hybrid.categories {:?}",
                    hybrid.categories
                ),
            ));
        }
        if !known(model) {
            return Err(GatewayError::config(
                format!("gateway.category_experts.{cat}"),
                format!("model {model:?} is not a key of experts.models {models:?}"),
            ));
        }
    }
    if !known(&g.foundation_model) {
        return Err(GatewayError::config(
            "gateway.foundation_model",
            format!(
                "model {:?} is not a key of experts.models {models:?}",
                g.foundation_model
            ),
        ));
    }
    let fusion_models = g.fusion.models();
    if fusion_models.is_empty() {
        return Err(GatewayError::config("gateway.fusion.models", "no model"));
    }
    for (i, m) in fusion_models.iter().enumerate() {
        if !known(m) {
            return Err(GatewayError::config(
                format!("gateway.fusion.models[{i}]"),
                format!("model {m:?} is not a key of experts.models {models:?}"),
            ));
        }
    }
    if g.fusion_weights == FusionWeights::Classifier
        && !matches!(g.fusion, FusionMode::Ensemble { .. })
    {
        return Err(GatewayError::config(
            "gateway.fusion_weights",
            format!(
                "`classifier` sets ensemble weights; gateway.fusion is {}",
                g.fusion.name()
            ),
        ));
    }
    if let FusionMode::Ensemble {
        models: ms,
        weights: Some(w),
        ..
    } = &g.fusion
        && (w.len() != ms.len() || w.iter().any(|x| !x.is_finite() || *x < 0.0))
    {
        return Err(GatewayError::config(
            "gateway.fusion.weights",
            "one finite, non-negative weight per model",
        ));
    }
    Ok(listen)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const GOOD: &str = r#"
hybrid:
  categories: ["reasoning", "sop"]
  classifier:
    type: "rule_based"
    checkpoint_dir: "./models/checkpoints/classifier"
  routing:
    confidence_threshold: 0.85
    enable_btm_fallback: true
experts:
  models:
    foundation: models/foundation
    sft-sop: models/sft-sop
  device: cpu
gateway:
  listen: "127.0.0.1:8080"
  api_keys: []
  hint_trust: none
  edge_keys: {}
  hint_max_age_s: 300
  max_body_bytes: 1048576
  max_concurrent_requests: 64
  max_concurrent_per_key: 16
  max_tokens_limit: 1024
  request_timeout_s: 300
  expert_processes: 1
  expert_binary: null
  remote_experts: []
  category_experts: {reasoning: foundation, sop: sft-sop}
  foundation_model: foundation
  fusion: {type: btm_token, models: [foundation, sft-sop]}
  feedback_db: data/feedback.sqlite
"#;

    /// Every config the project ships is valid.
    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                GatewayConfig::parse(&text, &path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 4, "{n} configs");
    }

    /// The shipped multi-expert config (four categories, top-2 fusion) parses, and an
    /// uncertain query fuses the experts of its two most likely categories.
    #[test]
    fn top_k_fusion_narrows_to_the_likeliest_experts() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/multi_expert.yaml"),
        )
        .unwrap();
        let c = GatewayConfig::parse(&text, Path::new("multi_expert.yaml")).unwrap();
        assert_eq!(c.gateway.fused_experts(), 2);
        // Categories: reasoning, customer_service, sales, tech_support.
        let cls = |category: usize, scores: &[f32]| Classification {
            category,
            confidence: scores.get(category).copied().unwrap_or(0.6),
            scores: scores.to_vec(),
        };
        let mode = c.fusion_for(&cls(3, &[0.05, 0.40, 0.05, 0.50]));
        assert_eq!(
            mode,
            FusionMode::BtmToken {
                // In gateway.fusion's order, not the scores' order.
                models: vec!["sft-customer-service".into(), "sft-tech-support".into()],
                router: None,
                hard: false,
            }
        );
        assert_eq!(
            c.fusion_for(&cls(0, &[0.6, 0.1, 0.2, 0.1])).models(),
            ["foundation", "sft-sales"]
        );
        // A client's hint has a category and no scores: its expert, then the fusion's first.
        assert_eq!(
            c.fusion_for(&cls(2, &[])).models(),
            ["foundation", "sft-sales"]
        );
        assert_eq!(
            c.fusion_for(&cls(0, &[])).models(),
            ["foundation", "sft-customer-service"]
        );
        // Ensemble weights follow their models.
        let mut e = c.clone();
        e.gateway.fusion = FusionMode::Ensemble {
            models: [
                "foundation",
                "sft-customer-service",
                "sft-sales",
                "sft-tech-support",
            ]
            .map(String::from)
            .to_vec(),
            weights: Some(vec![1.0, 2.0, 3.0, 4.0]),
            mix: protocol::Mix::Linear,
        };
        assert_eq!(
            e.fusion_for(&cls(2, &[0.1, 0.1, 0.5, 0.3])),
            FusionMode::Ensemble {
                models: vec!["sft-sales".into(), "sft-tech-support".into()],
                weights: Some(vec![3.0, 4.0]),
                mix: protocol::Mix::Linear,
            }
        );
        // Without top-k, every fused model runs.
        e.gateway.fusion_top_k = None;
        assert_eq!(
            e.fusion_for(&cls(2, &[0.1, 0.1, 0.5, 0.3])).models().len(),
            4
        );
        assert_eq!(e.gateway.fused_experts(), 4);
    }

    /// `fusion_weights: classifier`: each fused expert weighs the probability of the
    /// categories it serves; a hint without scores spreads the rest of its confidence;
    /// a mode other than `ensemble` is a config error naming the key.
    #[test]
    fn classifier_weights_follow_the_classification() {
        let text = GOOD
            .replace(
                "fusion: {type: btm_token, models: [foundation, sft-sop]}",
                "fusion: {type: ensemble, models: [foundation, sft-sop], mix: log}\n  fusion_weights: classifier",
            );
        let c = GatewayConfig::parse(&text, Path::new("cfg.yaml")).unwrap();
        let cls = |category, confidence, scores: &[f32]| Classification {
            category,
            confidence,
            scores: scores.to_vec(),
        };
        let ensemble = |w: Vec<f32>| FusionMode::Ensemble {
            models: vec!["foundation".into(), "sft-sop".into()],
            weights: Some(w),
            mix: protocol::Mix::Log,
        };
        assert_eq!(
            c.fusion_for(&cls(0, 0.7, &[0.7, 0.3])),
            ensemble(vec![0.7, 0.3])
        );
        assert_eq!(
            c.fusion_for(&cls(1, 0.6, &[0.4, 0.6])),
            ensemble(vec![0.4, 0.6])
        );
        let hinted = c.fusion_for(&cls(1, 0.8, &[]));
        let FusionMode::Ensemble {
            weights: Some(w), ..
        } = hinted
        else {
            panic!("{hinted:?}")
        };
        assert!(
            (w[0] - 0.2).abs() < 1e-6 && (w[1] - 0.8).abs() < 1e-6,
            "{w:?}"
        );
        // The wire form names the mix only when it is not the default.
        let wire = serde_json::to_value(ensemble(vec![1.0, 1.0])).unwrap();
        assert_eq!(wire["mix"], "log");
        let linear = FusionMode::Ensemble {
            models: vec!["a".into()],
            weights: None,
            mix: protocol::Mix::Linear,
        };
        assert!(serde_json::to_value(linear).unwrap().get("mix").is_none());

        let bad = GOOD.replace(
            "feedback_db: data/feedback.sqlite",
            "feedback_db: data/feedback.sqlite\n  fusion_weights: classifier",
        );
        let e = err(&bad);
        assert!(
            e.contains("gateway.fusion_weights") && e.contains("btm_token"),
            "{e}"
        );
        let bad = GOOD.replace(
            "feedback_db: data/feedback.sqlite",
            "feedback_db: data/feedback.sqlite\n  fusion_weights: router",
        );
        assert!(err(&bad).contains("fusion_weights"), "{}", err(&bad));
        let bad = text.replace("mix: log", "mix: geometric");
        assert!(err(&bad).contains("geometric"), "{}", err(&bad));
    }

    fn err(text: &str) -> String {
        GatewayConfig::parse(text, Path::new("cfg.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_shipped_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
        let c = GatewayConfig::load(&path).unwrap();
        assert_eq!(c.expert_models, ["foundation", "sft-sop", "distilled"]);
        assert_eq!(c.category_model(1), Some("sft-sop"));
        let c = GatewayConfig::parse(GOOD, Path::new("cfg.yaml")).unwrap();
        assert_eq!(c.listen.port(), 8080);
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let cases = [
            (
                "hint_trust: none",
                "hint_trust: nobody",
                "gateway.hint_trust",
            ),
            ("  api_keys: []", "  api_keyz: []", "api_keyz"),
            ("\"127.0.0.1:8080\"", "\"localhost\"", "gateway.listen"),
            (
                "hint_trust: none",
                "hint_trust: signed",
                "gateway.edge_keys",
            ),
            (
                "max_body_bytes: 1048576",
                "max_body_bytes: 0",
                "gateway.max_body_bytes",
            ),
            (
                "max_concurrent_per_key: 16",
                "max_concurrent_per_key: 65",
                "gateway.max_concurrent_per_key",
            ),
            (
                "max_concurrent_per_key: 16",
                "max_concurrent_per_key: 0",
                "gateway.max_concurrent_per_key",
            ),
            (
                "request_timeout_s: 300",
                "request_timeout_s: -1",
                "gateway.request_timeout_s",
            ),
            (
                "{reasoning: foundation, sop: sft-sop}",
                "{reasoning: foundation, sop: sft-sop, legal: foundation}",
                "gateway.category_experts.legal",
            ),
            (
                "{reasoning: foundation, sop: sft-sop}",
                "{reasoning: foundation}",
                "gateway.category_experts",
            ),
            (
                "sop: sft-sop}",
                "sop: sft-xxx}",
                "gateway.category_experts.sop",
            ),
            (
                "foundation_model: foundation",
                "foundation_model: base",
                "gateway.foundation_model",
            ),
            (
                "models: [foundation, sft-sop]",
                "models: [foundation, nope]",
                "gateway.fusion.models[1]",
            ),
            ("type: btm_token", "type: magic", "gateway.fusion"),
            (
                "  foundation_model: foundation\n",
                "  foundation_model: foundation\n  fusion_top_k: 3\n",
                "gateway.fusion_top_k",
            ),
            (
                "remote_experts: []",
                "remote_experts: [\"ftp://x\"]",
                "gateway.remote_experts[0]",
            ),
            (
                "confidence_threshold: 0.85",
                "confidence_threshold: 2",
                "hybrid.routing",
            ),
        ];
        for (from, to, key) in cases {
            assert!(GOOD.contains(from), "{from}");
            let e = err(&GOOD.replace(from, to));
            assert!(e.contains(key), "{to}: {e}");
            assert!(e.contains("cfg.yaml"), "{to}: {e}");
        }
        let e = err(&GOOD.replace("gateway:\n", "gateway_:\n"));
        assert!(e.contains("gateway_") && e.contains("cfg.yaml"), "{e}");
        let e = err(&GOOD.replace("  models:\n", "  modelz:\n"));
        assert!(e.contains("experts.models"), "{e}");
    }
}
