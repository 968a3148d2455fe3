//! The learned classifier: hashed features (see [`crate::features`]) into a linear
//! softmax layer, with a temperature fitted on held-out data.
//!
//! A checkpoint is one directory:
//! - `classifier.json`: format tag, category names, feature configuration, temperature;
//! - `model.safetensors`: `weight` `[buckets, categories]` and `bias` `[categories]`, f32;
//! - `metrics.json`: what training measured (written by the trainer, not needed to load).
//!
//! The weight matrix is stored bucket-major so that one sparse feature reads one
//! contiguous row of `categories` floats.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{ClassifierError, Result};
use crate::features::{FeatureConfig, SparseVector, extract};
use crate::query_classifier::{
    Classification, Classifier, ClassifierKind, classification_from_probs, fnv1a, normalize,
    softmax,
};

/// The format tag written into every checkpoint.
pub const CHECKPOINT_FORMAT: &str = "hybrid-router/classifier-v1";
pub const META_FILE: &str = "classifier.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const METRICS_FILE: &str = "metrics.json";

/// The `classifier.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    pub format: String,
    pub categories: Vec<String>,
    pub features: FeatureConfig,
    pub temperature: f32,
}

/// The learned [`Classifier`].
#[derive(Debug, Clone)]
pub struct LearnedClassifier {
    meta: CheckpointMeta,
    /// `[buckets][categories]`, row-major.
    weight: Vec<f32>,
    bias: Vec<f32>,
    version: String,
}

fn f32s_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl LearnedClassifier {
    /// Builds a classifier from its parts, checking that they fit together.
    pub fn from_parts(meta: CheckpointMeta, weight: Vec<f32>, bias: Vec<f32>) -> Result<Self> {
        Self::from_parts_at(meta, weight, bias, Path::new("<memory>"))
    }

    fn from_parts_at(
        meta: CheckpointMeta,
        weight: Vec<f32>,
        bias: Vec<f32>,
        path: &Path,
    ) -> Result<Self> {
        let bad = |m: String| ClassifierError::checkpoint(path, m);
        if meta.format != CHECKPOINT_FORMAT {
            return Err(bad(format!(
                "format {:?} is not {CHECKPOINT_FORMAT:?}",
                meta.format
            )));
        }
        if meta.categories.len() < 2 {
            return Err(bad("a checkpoint needs at least two categories".into()));
        }
        meta.features
            .validate("features")
            .map_err(|e| bad(e.to_string()))?;
        if !(meta.temperature.is_finite() && meta.temperature > 0.0) {
            return Err(bad(format!(
                "temperature {} is not positive",
                meta.temperature
            )));
        }
        let k = meta.categories.len();
        if weight.len() != meta.features.buckets * k {
            return Err(bad(format!(
                "weight has {} values, expected buckets × categories = {} × {k}",
                weight.len(),
                meta.features.buckets
            )));
        }
        if bias.len() != k {
            return Err(bad(format!("bias has {} values, expected {k}", bias.len())));
        }
        if weight.iter().chain(&bias).any(|v| !v.is_finite()) {
            return Err(bad("weights contain NaN or infinity".into()));
        }
        let mut h = fnv1a(
            7,
            serde_json::to_string(&meta).unwrap_or_default().as_bytes(),
        );
        for v in weight.iter().chain(&bias) {
            h = fnv1a(h, &v.to_le_bytes());
        }
        Ok(Self {
            meta,
            weight,
            bias,
            version: format!("learned-{h:016x}"),
        })
    }

    /// Loads a checkpoint from the bytes of its `classifier.json` and `model.safetensors`
    /// (what the browser does after fetching them).
    pub fn from_bytes(meta_json: &[u8], weights: &[u8]) -> Result<Self> {
        Self::from_bytes_at(meta_json, weights, Path::new("<bytes>"))
    }

    fn from_bytes_at(meta_json: &[u8], weights: &[u8], path: &Path) -> Result<Self> {
        let meta: CheckpointMeta = serde_json::from_slice(meta_json).map_err(|e| {
            ClassifierError::checkpoint(path.join(META_FILE), format!("bad {META_FILE}: {e}"))
        })?;
        let wpath = path.join(WEIGHTS_FILE);
        let tensors = SafeTensors::deserialize(weights)
            .map_err(|e| ClassifierError::checkpoint(&wpath, format!("bad safetensors: {e}")))?;
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = tensors.tensor(name).map_err(|e| {
                ClassifierError::checkpoint(&wpath, format!("tensor {name:?}: {e}"))
            })?;
            if t.dtype() != Dtype::F32 {
                return Err(ClassifierError::checkpoint(
                    &wpath,
                    format!("tensor {name:?} is {:?}, expected F32", t.dtype()),
                ));
            }
            if t.shape() != shape {
                return Err(ClassifierError::checkpoint(
                    &wpath,
                    format!(
                        "tensor {name:?} has shape {:?}, expected {shape:?} (from {META_FILE})",
                        t.shape()
                    ),
                ));
            }
            Ok(f32s_from_le(t.data()))
        };
        let k = meta.categories.len();
        let weight = get("weight", &[meta.features.buckets, k])?;
        let bias = get("bias", &[k])?;
        Self::from_parts_at(meta, weight, bias, path)
    }

    /// Loads a checkpoint directory.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let read = |name: &str| -> Result<Vec<u8>> {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ClassifierError::checkpoint(
                    dir,
                    format!(
                        "{name} is missing (train one with `train_classifier --train_file ...`)"
                    ),
                ),
                _ => ClassifierError::io(p, e),
            })
        };
        Self::from_bytes_at(&read(META_FILE)?, &read(WEIGHTS_FILE)?, dir)
    }

    /// Loads a checkpoint and checks it against the configuration in force: the same
    /// categories, in the same order, and the same feature configuration.
    pub fn load_checked(
        dir: impl AsRef<Path>,
        categories: &[String],
        features: &FeatureConfig,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let c = Self::load(dir)?;
        if c.meta.categories != categories {
            return Err(ClassifierError::checkpoint(
                dir,
                format!(
                    "trained for categories {:?} ({} of them) but the config lists {categories:?} ({})",
                    c.meta.categories,
                    c.meta.categories.len(),
                    categories.len()
                ),
            ));
        }
        if &c.meta.features != features {
            return Err(ClassifierError::checkpoint(
                dir,
                format!(
                    "trained with features {:?} but the config asks for {features:?}",
                    c.meta.features
                ),
            ));
        }
        Ok(c)
    }

    /// Writes `classifier.json` and `model.safetensors` into `dir` (created if needed).
    /// Each file is written to a temporary name and renamed, so a crash never leaves a
    /// half-written checkpoint under the real name.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| ClassifierError::io(dir, e))?;
        let meta = serde_json::to_vec_pretty(&self.meta)
            .map_err(|e| ClassifierError::checkpoint(dir, e.to_string()))?;
        write_atomic(&dir.join(META_FILE), &meta)?;
        write_atomic(&dir.join(WEIGHTS_FILE), &self.weights_bytes()?)?;
        Ok(())
    }

    /// The `model.safetensors` bytes of this classifier.
    pub fn weights_bytes(&self) -> Result<Vec<u8>> {
        let k = self.meta.categories.len();
        let wb: Vec<u8> = self.weight.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bb: Vec<u8> = self.bias.iter().flat_map(|v| v.to_le_bytes()).collect();
        let err = |e: safetensors::SafeTensorError| {
            ClassifierError::checkpoint(PathBuf::from(WEIGHTS_FILE), e.to_string())
        };
        let w =
            TensorView::new(Dtype::F32, vec![self.meta.features.buckets, k], &wb).map_err(err)?;
        let b = TensorView::new(Dtype::F32, vec![k], &bb).map_err(err)?;
        safetensors::serialize([("weight", w), ("bias", b)], None).map_err(err)
    }

    /// Takes the classifier apart into its weight and bias.
    pub fn into_parts(self) -> (Vec<f32>, Vec<f32>) {
        (self.weight, self.bias)
    }

    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// Uncalibrated logits of already-extracted features.
    pub fn logits(&self, features: &SparseVector) -> Vec<f32> {
        let k = self.bias.len();
        let mut out = self.bias.clone();
        for &(idx, v) in features {
            let row = &self.weight[idx as usize * k..(idx as usize + 1) * k];
            for (o, w) in out.iter_mut().zip(row) {
                *o += v * w;
            }
        }
        out
    }

    /// Uncalibrated logits of a query.
    pub fn query_logits(&self, text: &str) -> Result<Vec<f32>> {
        Ok(self.logits(&extract(&self.meta.features, &normalize(text)?)))
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| ClassifierError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ClassifierError::io(path, e))
}

impl Classifier for LearnedClassifier {
    fn classify(&self, text: &str) -> Result<Classification> {
        let logits = self.query_logits(text)?;
        Ok(classification_from_probs(softmax(
            &logits,
            self.meta.temperature,
        )))
    }

    fn categories(&self) -> &[String] {
        &self.meta.categories
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn kind(&self) -> ClassifierKind {
        ClassifierKind::Learned
    }
}
