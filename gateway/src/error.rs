//! The crate's one error type, and the one place where errors become HTTP answers.
//!
//! Every failure a client can see, JSON rejections included, goes through
//! [`GatewayError`]'s `IntoResponse`, which writes an OpenAI-style body
//! `{"error": {"message", "type", "code"}}`.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::ErrorBody;

/// Everything that can go wrong in the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A configuration value is invalid; `key` is the dotted path of the offending key.
    #[error("invalid configuration{}: `{key}`: {message}", file_suffix(.file))]
    Config {
        file: Option<PathBuf>,
        key: String,
        message: String,
    },

    /// The request is malformed or asks for something impossible.
    #[error("{0}")]
    BadRequest(String),

    /// The body is well-formed JSON of the wrong shape (wrong types, unknown fields).
    #[error("{0}")]
    Unprocessable(String),

    /// Missing or wrong bearer token.
    #[error("invalid or missing API key")]
    Unauthorized,

    /// Unknown path, model or response id.
    #[error("{0}")]
    NotFound(String),

    /// The request body is over `gateway.max_body_bytes`.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },

    /// Every request slot is taken, the gateway's or the API key's.
    #[error("too many concurrent requests {scope}; retry after {} s", .retry_after.as_secs().max(1))]
    TooManyRequests {
        scope: LimitScope,
        retry_after: Duration,
    },

    /// The request did not finish within `gateway.request_timeout_s`.
    #[error("the request timed out after {} s", .0.as_secs())]
    Timeout(Duration),

    /// No healthy expert backend serves the models the route needs.
    #[error("{0}")]
    Unavailable(String),

    /// An expert backend failed or answered with an error.
    #[error("expert backend error: {0}")]
    Upstream(String),

    /// The classifier failed (e.g. a broken checkpoint at start-up).
    #[error(transparent)]
    Classifier(#[from] classifier::ClassifierError),

    /// The feedback database failed.
    #[error("feedback database: {0}")]
    Database(#[from] rusqlite::Error),

    /// An I/O error, with the path or operation it concerned.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// A bug or an unexpected state.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Which concurrency limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// `gateway.max_concurrent_requests`, shared by every client.
    Gateway { limit: usize },
    /// `gateway.max_concurrent_per_key`, for the API key of the request.
    ApiKey { limit: usize },
}

impl std::fmt::Display for LimitScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gateway { limit } => write!(f, "on this gateway (limit {limit})"),
            Self::ApiKey { limit } => write!(f, "for this API key (limit {limit})"),
        }
    }
}

fn file_suffix(file: &Option<PathBuf>) -> String {
    match file {
        Some(path) => format!(" in {}", path.display()),
        None => String::new(),
    }
}

impl GatewayError {
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            file: None,
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
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

    /// HTTP status, OpenAI error `type` and `code`.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                "invalid_body",
            ),
            Self::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
            ),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found"),
            Self::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "payload_too_large",
            ),
            Self::TooManyRequests {
                scope: LimitScope::Gateway { .. },
                ..
            } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "too_many_requests",
            ),
            Self::TooManyRequests {
                scope: LimitScope::ApiKey { .. },
                ..
            } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "too_many_requests_for_key",
            ),
            Self::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout_error", "timeout"),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "no_healthy_expert",
            ),
            Self::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_error", "expert_error"),
            Self::Classifier(classifier::ClassifierError::EmptyInput) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "empty_input",
            ),
            Self::Config { .. }
            | Self::Classifier(_)
            | Self::Database(_)
            | Self::Io { .. }
            | Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
            ),
        }
    }

    /// The OpenAI-style error body.
    pub fn body(&self) -> ErrorBody {
        let (_, kind, code) = self.parts();
        ErrorBody::new(self.to_string(), kind, code)
    }
}

/// The one place where errors become HTTP answers.
impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Self::TooManyRequests { retry_after, .. } = &self {
            let secs = retry_after.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// `Result` with [`GatewayError`].
pub type Result<T, E = GatewayError> = std::result::Result<T, E>;
