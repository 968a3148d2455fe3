//! Tensors that live in GPU storage buffers.

use crate::error::{GpuError, Result};

/// Element type of a [`GpuTensor`]; both are 4 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    /// Token ids (embedding input, argmax output).
    U32,
}

/// A contiguous row-major tensor in one storage buffer. Cloning shares the buffer.
#[derive(Debug, Clone)]
pub struct GpuTensor {
    buffer: wgpu::Buffer,
    shape: Vec<usize>,
    dtype: DType,
}

impl GpuTensor {
    pub(crate) fn new(buffer: wgpu::Buffer, shape: Vec<usize>, dtype: DType) -> Self {
        Self {
            buffer,
            shape,
            dtype,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub(crate) fn byte_size(&self) -> u64 {
        self.numel() as u64 * 4
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The same buffer seen with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if numel != self.numel() {
            return Err(GpuError::ShapeMismatch {
                op: "reshape",
                detail: format!("{:?} -> {shape:?}", self.shape),
            });
        }
        Ok(Self {
            buffer: self.buffer.clone(),
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }

    /// (rows, last dimension): how the row-wise kernels see the tensor.
    pub(crate) fn rows_cols(&self) -> (usize, usize) {
        let cols = self.shape.last().copied().unwrap_or(1);
        (self.numel() / cols.max(1), cols)
    }

    pub(crate) fn expect_dtype(&self, op: &'static str, expected: DType) -> Result<()> {
        if self.dtype != expected {
            return Err(GpuError::DType {
                op,
                expected,
                got: self.dtype,
            });
        }
        Ok(())
    }
}
