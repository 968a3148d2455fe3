//! The gateway of the hybrid router.
//!
//! An OpenAI-compatible HTTP API ([`api`]) in front of expert processes. Each query is
//! classified (on the server, or by a trusted [`hint`] from the browser or an edge
//! worker), routed by the policy of [`hybrid_router`] to one expert (1× cost) or a fusion of
//! experts (2×), and dispatched ([`dispatch`]) to the least-loaded healthy expert backend
//! ([`backend::ExpertBackend`]: a remote URL, or a supervised local process from
//! [`supervisor`]). The crate never depends on candle: it speaks to experts through the
//! wire types of the `protocol` crate.
//!
//! Module map: [`config`] (the validated config), [`error`] (the one error enum and its
//! HTTP mapping), [`feedback`] (ratings in SQLite), [`telemetry`] (metrics), [`server`]
//! (bind, start, serve, shut down), [`inference`] (what `hybrid_inference` does: one prompt,
//! or an eval file under every strategy).

pub mod api;
pub mod backend;
pub mod bootstrap;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod feedback;
pub mod hint;
pub mod hybrid_router;
pub mod inference;
pub mod server;
pub mod supervisor;
pub mod telemetry;

pub use api::{AppState, router};
pub use backend::{EventStream, ExpertBackend, ExpertEvent, HttpExpert};
pub use config::GatewayConfig;
pub use error::{GatewayError, LimitScope, Result};
