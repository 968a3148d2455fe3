//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading, running or training expert models.
#[derive(Debug, thiserror::Error)]
pub enum ExpertError {
    /// A model directory is missing a file, or a file in it is malformed.
    #[error("model {}: {message}", .path.display())]
    Model { path: PathBuf, message: String },

    /// The model's `config.json` names an architecture this crate does not implement.
    #[error("model {}: unsupported architecture {arch:?} (supported: Qwen2ForCausalLM, LlamaForCausalLM)", .path.display())]
    UnsupportedArchitecture { path: PathBuf, arch: String },

    /// A request is invalid (empty prompt, prompt longer than the context, bad sampling values).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// This process cannot serve what was asked, though the request is well formed (a
    /// mode its device does not implement): the server's limit, not the client's fault.
    #[error("unsupported here: {0}")]
    Unsupported(String),

    /// Tokenizer failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Chat-template failure.
    #[error("chat template: {0}")]
    Template(String),

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An I/O error, with its path.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Getting a model (`expert pull`) failed: pip missing or failing, unknown model, a
    /// directory in the way.
    #[error("pull: {0}")]
    Pull(String),

    /// The wgpu device failed: no adapter, a buffer over the device's limit, a lost device.
    #[cfg(feature = "wgpu")]
    #[error(transparent)]
    Gpu(#[from] gpu::GpuError),

    /// Training could not proceed.
    #[error("training: {0}")]
    Training(String),
}

impl ExpertError {
    pub(crate) fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Model {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = ExpertError> = std::result::Result<T, E>;
