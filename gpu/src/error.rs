//! The crate's one error type.

/// Everything that can go wrong between asking for an adapter and reading a result back.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No usable adapter: no driver, or the adapter override matched nothing.
    #[error(
        "no GPU adapter: {detail}. Install a GPU driver with Vulkan, Metal or DX12 support, \
         or Mesa's CPU Vulkan driver for testing (`apt-get install mesa-vulkan-drivers`)"
    )]
    NoAdapter { detail: String },

    /// The adapter exists but would not give us a device.
    #[error("requesting a device from adapter `{adapter}` failed: {source}")]
    RequestDevice {
        adapter: String,
        #[source]
        source: wgpu::RequestDeviceError,
    },

    /// A buffer would be larger than the device can allocate or bind in one piece.
    #[error(
        "buffer of {requested} bytes exceeds the device limit of {limit} bytes \
         (max_buffer_size / max_storage_buffer_binding_size); split the tensor"
    )]
    BufferTooLarge { requested: u64, limit: u64 },

    /// The device went away (driver reset, `destroy`, hardware fault). Not recoverable on this
    /// context; the owner should report itself unhealthy and build a new one.
    #[error("GPU device lost: {reason}")]
    DeviceLost { reason: String },

    /// Mapping a read-back buffer failed.
    #[error("mapping a GPU buffer for reading failed: {0}")]
    Map(String),

    /// Waiting for submitted work failed (timeout or lost device).
    #[error("waiting for the GPU failed: {0}")]
    Poll(String),

    /// Operand shapes do not fit the operation.
    #[error("shape mismatch in {op}: {detail}")]
    ShapeMismatch { op: &'static str, detail: String },

    /// An operand has the wrong element type.
    #[error("{op} expects a {expected:?} tensor, got {got:?}")]
    DType {
        op: &'static str,
        expected: crate::DType,
        got: crate::DType,
    },

    /// The KV cache has no room for the new rows.
    #[error("KV cache full: {needed} positions needed, capacity {capacity}")]
    CacheFull { needed: usize, capacity: usize },

    /// The device ran out of memory allocating a buffer.
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),

    /// A shader failed to compile or a pipeline to build (a bug in this crate or a driver that
    /// rejects valid WGSL).
    #[error("building GPU kernel `{kernel}` failed: {detail}")]
    Kernel {
        kernel: &'static str,
        detail: String,
    },

    /// wgpu reported a validation or internal error outside any scope we opened.
    #[error("GPU error: {0}")]
    Device(String),
}

/// Result with [`GpuError`].
pub type Result<T> = std::result::Result<T, GpuError>;
