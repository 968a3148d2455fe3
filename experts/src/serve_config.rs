//! The `experts:` section of the config file: the models an expert process loads.
//!
//! ```yaml
//! experts:
//!   models: {foundation: models/foundation, sft-sop: models/sft-sop}  # name -> HF directory
//!   device: cpu             # cpu | cuda | metal | wgpu (all but cpu need their cargo feature)
//!   routers: {default: models/routers/btm_token}   # btm_token routers (train_router)
//!   mixers: {default: models/routers/btm_layer}    # btm_layer coefficients (train_router)
//!   deferral_heads: {default: models/routers/defer} # defer heads (train_router --kind defer)
//!   max_queue: 64           # requests admitted at once; more get 503 + Retry-After
//!   max_batch: 16           # sequences decoded together in one step (continuous batching)
//!   weights: {foundation: q8_0}   # per model: f32 (default) | q8_0 | q4_0 | q4_1
//! ```
//! Other top-level sections belong to other programs and are not read here; unknown keys
//! inside `experts:` are errors naming the key and the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Deserialize;

use crate::error::{ExpertError, Result};

fn default_queue() -> usize {
    64
}
fn default_max_batch() -> usize {
    16
}
fn default_device() -> String {
    "cpu".into()
}

/// `experts:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    pub models: BTreeMap<String, PathBuf>,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub routers: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub mixers: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub deferral_heads: BTreeMap<String, PathBuf>,
    #[serde(default = "default_queue")]
    pub max_queue: usize,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How each model's projections are held at run time (models not named: dense).
    #[serde(default)]
    pub weights: BTreeMap<String, crate::model::WeightFormat>,
}

fn config_error(file: &Path, key: &str, message: impl std::fmt::Display) -> ExpertError {
    ExpertError::model(file, format!("invalid configuration: `{key}`: {message}"))
}

impl ServeConfig {
    /// Reads the `experts:` section of a config file.
    pub fn load(file: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(file).map_err(|e| ExpertError::io(file, e))?;
        let doc: serde_json::Value =
            serde_yaml_value(&text).map_err(|e| config_error(file, "<document>", e))?;
        let section = doc
            .get("experts")
            .cloned()
            .ok_or_else(|| config_error(file, "experts", "missing section"))?;
        let cfg: ServeConfig = serde_path_to_error::deserialize(section).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." {
                "experts".to_string()
            } else {
                format!("experts.{path}")
            };
            config_error(file, &key, e.inner())
        })?;
        if cfg.models.is_empty() {
            return Err(config_error(file, "experts.models", "no models"));
        }
        if cfg.max_queue == 0 {
            return Err(config_error(
                file,
                "experts.max_queue",
                "must be at least 1",
            ));
        }
        if cfg.max_batch == 0 {
            return Err(config_error(
                file,
                "experts.max_batch",
                "must be at least 1",
            ));
        }
        if let Some(name) = cfg.weights.keys().find(|n| !cfg.models.contains_key(*n)) {
            return Err(config_error(
                file,
                &format!("experts.weights.{name}"),
                "names no model in experts.models",
            ));
        }
        cfg.device()
            .map_err(|e| config_error(file, "experts.device", e))?;
        Ok(cfg)
    }

    /// Whether the models run on the portable GPU device (`device: wgpu`).
    pub fn wgpu(&self) -> bool {
        self.device == "wgpu"
    }

    /// The candle device named by `device` (the CPU for `wgpu`, which loads there first).
    pub fn device(&self) -> Result<Device> {
        match self.device.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Device::new_cuda(0).map_err(|e| {
                ExpertError::InvalidRequest(format!(
                    "cuda is not available ({e}); build with --features cuda"
                ))
            }),
            "metal" => Device::new_metal(0).map_err(|e| {
                ExpertError::InvalidRequest(format!(
                    "metal is not available ({e}); build with --features metal"
                ))
            }),
            // The models are loaded by candle on the CPU, then uploaded to the GPU once.
            "wgpu" if cfg!(feature = "wgpu") => Ok(Device::Cpu),
            "wgpu" => Err(ExpertError::InvalidRequest(
                "wgpu is not available; build with --features wgpu".into(),
            )),
            other => Err(ExpertError::InvalidRequest(format!(
                "unknown device {other:?} (cpu, cuda, metal, wgpu)"
            ))),
        }
    }
}

/// YAML → JSON value (YAML is read with serde_yaml; the value keeps key paths for errors).
fn serde_yaml_value(text: &str) -> std::result::Result<serde_json::Value, String> {
    serde_yaml::from_str::<serde_json::Value>(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ServeConfig> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, text).unwrap();
        ServeConfig::load(&p)
    }

    /// Every config the project ships has a valid `experts:` section.
    #[test]
    fn every_shipped_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                ServeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 4, "{n} configs");
    }

    #[test]
    fn reads_the_section_and_rejects_unknown_keys() {
        let c = load("hybrid: {}\nexperts:\n  models: {a: m/a}\n").unwrap();
        assert_eq!(c.models["a"], PathBuf::from("m/a"));
        assert_eq!(c.max_batch, 16);
        let e = load("experts:\n  models: {a: m/a}\n  wokers: 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("wokers") && e.contains("c.yaml"), "{e}");
        let e = load("experts:\n  models: {a: m/a}\n  max_queue: -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("experts.max_queue"), "{e}");
        let e = load("experts:\n  models: {a: m/a}\n  device: tpu\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tpu"), "{e}");
        // The portable GPU device exists only with its cargo feature.
        let wgpu = load("experts:\n  models: {a: m/a}\n  device: wgpu\n");
        if cfg!(feature = "wgpu") {
            assert!(wgpu.unwrap().wgpu());
        } else {
            let e = wgpu.unwrap_err().to_string();
            assert!(e.contains("--features wgpu"), "{e}");
        }
        let c = load("experts:\n  models: {a: m/a}\n  weights: {a: q8_0}\n").unwrap();
        assert_eq!(c.weights["a"], crate::model::WeightFormat::Q8_0);
        let e = load("experts:\n  models: {a: m/a}\n  weights: {a: q3}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("experts.weights"), "{e}");
        let e = load("experts:\n  models: {a: m/a}\n  weights: {b: q8_0}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("experts.weights.b"), "{e}");
        assert!(
            load("gateway: {}\n")
                .unwrap_err()
                .to_string()
                .contains("missing section")
        );
    }
}
