//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while configuring, loading, training or running a classifier.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// The query was empty or whitespace only.
    #[error("the query is empty (or whitespace only)")]
    EmptyInput,

    /// A configuration value is invalid; `key` is the dotted path of the offending key.
    #[error("invalid configuration{}: `{key}`: {message}", source_suffix(.file))]
    Config {
        file: Option<PathBuf>,
        key: String,
        message: String,
    },

    /// A checkpoint is missing, truncated, corrupted or does not fit the configuration.
    #[error("invalid classifier checkpoint {}: {message}", .path.display())]
    Checkpoint { path: PathBuf, message: String },

    /// A data file line could not be parsed.
    #[error("{}:{line}: {message}", .path.display())]
    Data {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// Training could not proceed (no data, a label out of range, ...).
    #[error("training failed: {0}")]
    Training(String),

    /// An I/O error, with the path it concerned. The OS error is part of the message and
    /// not chained as a `source`, so `{:#}` chains do not print it twice.
    #[error("{}: {error}", .path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

fn source_suffix(file: &Option<PathBuf>) -> String {
    match file {
        Some(path) => format!(" in {}", path.display()),
        None => String::new(),
    }
}

impl ClassifierError {
    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            file: None,
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error: source,
        }
    }

    /// Attaches the file a configuration error came from.
    #[must_use]
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            Self::Config { key, message, .. } => Self::Config {
                file: Some(path.into()),
                key,
                message,
            },
            other => other,
        }
    }
}

pub type Result<T, E = ClassifierError> = std::result::Result<T, E>;
