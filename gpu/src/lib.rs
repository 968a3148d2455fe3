//! Portable GPU compute for the hybrid router's expert models, on wgpu (Vulkan, Metal, DX12).
//!
//! Stage 1 of the wgpu device: a [`GpuContext`] that picks an adapter and reports it, f32/u32
//! [`GpuTensor`]s in storage buffers, and WGSL kernels for what a Llama/Qwen2 decoder and the
//! fusion modes need — tiled matmul and decode-time matrix-vector products, RMSNorm, RoPE,
//! softmax, SwiGLU, grouped-query attention over a [`KvCache`] kept on the device, embedding
//! lookup, residual add, weighted mixing and argmax — recorded into one [`Batch`] per step so
//! that only what the caller asks for (usually one token id) crosses back to the host.
//!
//! Lost devices and exceeded limits are errors ([`GpuError::DeviceLost`],
//! [`GpuError::BufferTooLarge`]), never panics; [`GpuContext::is_healthy`] says whether the
//! device is still there. On Mesa's CPU Vulkan driver (lavapipe) everything runs, slowly, which
//! is how the tests check the kernels without a GPU.

mod context;
mod error;
mod kernels;
mod tensor;

pub use context::{ADAPTER_ENV, AdapterReport, GpuContext, GpuOptions};
pub use error::{GpuError, Result};
pub use kernels::{Batch, KvCache, MAX_HEAD_DIM, RopeTable};
pub use tensor::{DType, GpuTensor};

// The context is shared between request tasks of a server.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<GpuContext>();
    shared::<GpuTensor>();
    shared::<KvCache>();
};
