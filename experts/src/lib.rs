//! Expert models of the hybrid router.
//!
//! This crate will hold HF-format model loading, the in-project decoder with its KV cache,
//! sampling, the fusion modes (single, ensemble, BTM token-level and layer-level) and the
//! `expert` process. It is empty until the experts engine lands; nothing here pretends.
