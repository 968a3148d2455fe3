//! The gateway of the hybrid router.
//!
//! This crate owns the routing policy ([`hybrid_router`]). The HTTP API, hint
//! verification and expert supervision build on it. It never depends on candle.

pub mod hybrid_router;
