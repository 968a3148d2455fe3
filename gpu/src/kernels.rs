//! WGSL kernels and the [`Batch`] that records them.
//!
//! Every operation allocates its output, records one compute pass into the batch's command
//! encoder and returns at once; nothing runs until [`Batch::submit`] (or one of the
//! `submit_and_read_*` calls, which append the read-back copy to the same submission). A decode
//! step is therefore one submission, and with [`Batch::argmax`] only the token id comes back.

use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use crate::context::GpuContext;
use crate::error::{GpuError, Result};
use crate::tensor::{DType, GpuTensor};

/// Largest head dimension the attention kernel holds in workgroup memory.
pub const MAX_HEAD_DIM: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    Matmul,
    MatvecT,
    Matvec,
    RmsNorm,
    Softmax,
    Argmax,
    Rope,
    Add,
    AddRow,
    Swiglu,
    Embedding,
    Mix,
    Attention,
    Silu,
    CopyCols,
}

const KERNEL_COUNT: usize = 15;

/// A kernel's WGSL: the shared header (`shaders/common.wgsl`: the workgroup numbering of the
/// 2-D dispatch grid) followed by the kernel's own file.
macro_rules! shader {
    ($file:literal) => {
        concat!(
            include_str!("shaders/common.wgsl"),
            include_str!(concat!("shaders/", $file))
        )
    };
}

impl Kernel {
    const ALL: [Kernel; KERNEL_COUNT] = [
        Kernel::Matmul,
        Kernel::MatvecT,
        Kernel::Matvec,
        Kernel::RmsNorm,
        Kernel::Softmax,
        Kernel::Argmax,
        Kernel::Rope,
        Kernel::Add,
        Kernel::AddRow,
        Kernel::Swiglu,
        Kernel::Embedding,
        Kernel::Mix,
        Kernel::Attention,
        Kernel::Silu,
        Kernel::CopyCols,
    ];

    fn name(self) -> &'static str {
        match self {
            Kernel::Matmul => "matmul",
            Kernel::MatvecT => "matvec_t",
            Kernel::Matvec => "matvec",
            Kernel::RmsNorm => "rms_norm",
            Kernel::Softmax => "softmax",
            Kernel::Argmax => "argmax",
            Kernel::Rope => "rope",
            Kernel::Add => "add",
            Kernel::AddRow => "add_row",
            Kernel::Swiglu => "swiglu",
            Kernel::Embedding => "embedding",
            Kernel::Mix => "mix",
            Kernel::Attention => "attention",
            Kernel::Silu => "silu",
            Kernel::CopyCols => "copy_cols",
        }
    }

    /// (WGSL source, entry point). Every source starts with the shared header.
    fn source(self) -> (&'static str, &'static str) {
        match self {
            Kernel::Matmul => (shader!("matmul.wgsl"), "main"),
            Kernel::MatvecT => (shader!("matvec_t.wgsl"), "main"),
            Kernel::Matvec => (shader!("matvec.wgsl"), "main"),
            Kernel::RmsNorm => (shader!("rms_norm.wgsl"), "main"),
            Kernel::Softmax => (shader!("softmax.wgsl"), "main"),
            Kernel::Argmax => (shader!("argmax.wgsl"), "main"),
            Kernel::Rope => (shader!("rope.wgsl"), "main"),
            Kernel::Add => (shader!("elementwise.wgsl"), "add"),
            Kernel::AddRow => (shader!("elementwise.wgsl"), "add_row"),
            Kernel::Swiglu => (shader!("elementwise.wgsl"), "swiglu"),
            Kernel::Embedding => (shader!("embedding.wgsl"), "main"),
            Kernel::Mix => (shader!("mix.wgsl"), "main"),
            Kernel::Attention => (shader!("attention.wgsl"), "main"),
            Kernel::Silu => (shader!("unary.wgsl"), "silu"),
            Kernel::CopyCols => (shader!("unary.wgsl"), "copy_cols"),
        }
    }
}

/// Compute pipelines, built on first use.
#[derive(Debug, Default)]
pub(crate) struct Pipelines {
    cells: [OnceLock<wgpu::ComputePipeline>; KERNEL_COUNT],
}

impl Pipelines {
    fn get(&self, device: &wgpu::Device, kernel: Kernel) -> Result<wgpu::ComputePipeline> {
        let cell = &self.cells[kernel as usize];
        if let Some(p) = cell.get() {
            return Ok(p.clone());
        }
        let (source, entry) = kernel.source();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.name()),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.name()),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache: None,
        });
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Kernel {
                kernel: kernel.name(),
                detail: error.to_string(),
            });
        }
        // A concurrent first use may have won the race; either pipeline is equivalent.
        Ok(cell.get_or_init(|| pipeline).clone())
    }
}

impl GpuContext {
    /// Builds every pipeline now, so that a broken driver fails at start-up and the first
    /// request does not pay for shader compilation.
    pub fn warm_up(&self) -> Result<()> {
        for kernel in Kernel::ALL {
            self.pipelines.get(&self.device, kernel)?;
        }
        self.check()
    }

    /// A new command batch.
    pub fn batch(&self) -> Result<Batch<'_>> {
        self.check()?;
        let encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("batch"),
            });
        Ok(Batch {
            ctx: self,
            encoder,
            dispatches: 0,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulParams {
    m: u32,
    k: u32,
    n: u32,
    b_trans: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Dims4 {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionParams {
    q_len: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    kv_len: u32,
    offset: u32,
    causal: u32,
    scale: f32,
}

fn shape_err(op: &'static str, detail: String) -> GpuError {
    GpuError::ShapeMismatch { op, detail }
}

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| shape_err(op, format!("dimension {v} exceeds u32")))
}

/// Host-built cos/sin tables `[max_positions, head_dim / 2]` for [`Batch::rope`].
#[derive(Debug, Clone)]
pub struct RopeTable {
    cos: GpuTensor,
    sin: GpuTensor,
    head_dim: usize,
    max_positions: usize,
}

impl RopeTable {
    /// The tables HF Llama/Qwen2 use: `inv_freq[i] = theta^(-2i/d)`, angle `pos * inv_freq[i]`,
    /// computed in f64 and rounded once.
    pub fn host_tables(head_dim: usize, max_positions: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for i in 0..half {
                let inv_freq = theta.powf(-((2 * i) as f64) / head_dim as f64);
                let angle = pos as f64 * inv_freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (cos, sin)
    }

    /// Builds and uploads the tables for `theta` (the model's `rope_theta`).
    pub fn new(
        ctx: &GpuContext,
        head_dim: usize,
        max_positions: usize,
        theta: f64,
    ) -> Result<Self> {
        let (cos, sin) = Self::host_tables(head_dim, max_positions, theta);
        Self::from_host(ctx, &cos, &sin, head_dim, max_positions)
    }

    /// Uploads tables computed elsewhere (e.g. the very ones the candle path uses, so both
    /// devices rotate by bit-identical angles).
    pub fn from_host(
        ctx: &GpuContext,
        cos: &[f32],
        sin: &[f32],
        head_dim: usize,
        max_positions: usize,
    ) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(shape_err(
                "rope",
                format!("head_dim {head_dim} must be even"),
            ));
        }
        let shape = [max_positions, head_dim / 2];
        Ok(Self {
            cos: ctx.upload_f32(cos, &shape)?,
            sin: ctx.upload_f32(sin, &shape)?,
            head_dim,
            max_positions,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }
}

/// One layer's key and value cache, `[capacity, kv_heads, head_dim]` each, filled from row 0.
#[derive(Debug)]
pub struct KvCache {
    k: GpuTensor,
    v: GpuTensor,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    len: usize,
}

impl KvCache {
    pub fn new(
        ctx: &GpuContext,
        capacity: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        if head_dim > MAX_HEAD_DIM {
            return Err(shape_err(
                "kv_cache",
                format!("head_dim {head_dim} > {MAX_HEAD_DIM}"),
            ));
        }
        let shape = [capacity, kv_heads, head_dim];
        Ok(Self {
            k: ctx.zeros(&shape)?,
            v: ctx.zeros(&shape)?,
            capacity,
            kv_heads,
            head_dim,
            len: 0,
        })
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets the contents (the buffers are kept and overwritten).
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

/// Commands recorded for one submission.
#[derive(Debug)]
pub struct Batch<'c> {
    ctx: &'c GpuContext,
    encoder: wgpu::CommandEncoder,
    dispatches: usize,
}

impl Batch<'_> {
    /// Kernels recorded so far.
    pub fn dispatches(&self) -> usize {
        self.dispatches
    }

    /// Submits the recorded work without waiting.
    pub fn submit(self) -> Result<()> {
        self.ctx.check()?;
        self.ctx.queue.submit([self.encoder.finish()]);
        self.ctx.check()
    }

    /// Submits, waits and reads `t` back in the same submission.
    pub fn submit_and_read_f32(self, t: &GpuTensor) -> Result<Vec<f32>> {
        t.expect_dtype("read_f32", DType::F32)?;
        let bytes = self.ctx.read_back(Some(self.encoder), t)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Submits, waits and reads `t` back in the same submission (e.g. argmax token ids).
    pub fn submit_and_read_u32(self, t: &GpuTensor) -> Result<Vec<u32>> {
        t.expect_dtype("read_u32", DType::U32)?;
        let bytes = self.ctx.read_back(Some(self.encoder), t)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn dispatch<P: Pod>(
        &mut self,
        kernel: Kernel,
        buffers: &[&wgpu::Buffer],
        params: &P,
        grid: (u32, u32),
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 {
            return Ok(());
        }
        let device = &self.ctx.device;
        let pipeline = self.ctx.pipelines.get(device, kernel)?;
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(kernel.name()),
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .zip(0u32..)
            .map(|(b, binding)| wgpu::BindGroupEntry {
                binding,
                resource: b.as_entire_binding(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: u32::try_from(buffers.len()).unwrap_or(u32::MAX),
            resource: uniform.as_entire_binding(),
        });
        let layout = pipeline.get_bind_group_layout(0);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name()),
            layout: &layout,
            entries: &entries,
        });
        let mut pass = self
            .encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel.name()),
                timestamp_writes: None,
            });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(grid.0, grid.1, 1);
        drop(pass);
        self.dispatches += 1;
        Ok(())
    }

    /// `groups` workgroups spread over a 2-D grid.
    fn linear_grid(&self, groups: usize) -> Result<(u32, u32)> {
        self.ctx.grid(groups as u64)
    }

    /// `a [m,k] x b [k,n] -> [m,n]`; `m == 1` takes the matrix-vector kernel.
    pub fn matmul(&mut self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        self.matmul_impl("matmul", a, b, false)
    }

    /// `x [.., k] · wᵀ` for a Linear weight `w [n,k]` as stored in checkpoints `-> [.., n]`;
    /// one row takes the matrix-vector kernel (decode).
    pub fn linear(&mut self, x: &GpuTensor, w: &GpuTensor) -> Result<GpuTensor> {
        self.matmul_impl("linear", x, w, true)
    }

    fn matmul_impl(
        &mut self,
        op: &'static str,
        a: &GpuTensor,
        b: &GpuTensor,
        b_trans: bool,
    ) -> Result<GpuTensor> {
        a.expect_dtype(op, DType::F32)?;
        b.expect_dtype(op, DType::F32)?;
        if b.shape().len() != 2 {
            return Err(shape_err(
                op,
                format!("weight shape {:?} is not 2-D", b.shape()),
            ));
        }
        let (m, k) = a.rows_cols();
        let (n, kb) = if b_trans {
            (b.shape()[0], b.shape()[1])
        } else {
            (b.shape()[1], b.shape()[0])
        };
        if k != kb {
            return Err(shape_err(
                op,
                format!("{:?} and {:?} disagree on k", a.shape(), b.shape()),
            ));
        }
        let mut out_shape = a.shape().to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = n;
        }
        let out = self.ctx.output(&out_shape, DType::F32)?;
        let buffers = [a.buffer(), b.buffer(), out.buffer()];
        let (k32, n32) = (u32_dim(op, k)?, u32_dim(op, n)?);
        if m == 1 {
            let params = Dims4 {
                a: k32,
                b: n32,
                c: 0,
                d: 0,
            };
            if b_trans {
                // 8 rows per workgroup (see matvec_t.wgsl).
                let grid = self.linear_grid(n.div_ceil(8))?;
                self.dispatch(Kernel::MatvecT, &buffers, &params, grid)?;
            } else {
                let grid = self.linear_grid(n.div_ceil(256))?;
                self.dispatch(Kernel::Matvec, &buffers, &params, grid)?;
            }
        } else {
            let params = MatmulParams {
                m: u32_dim(op, m)?,
                k: k32,
                n: n32,
                b_trans: u32::from(b_trans),
            };
            // 64x64 output blocks (see matmul.wgsl).
            let grid = (u32_dim(op, n.div_ceil(64))?, u32_dim(op, m.div_ceil(64))?);
            let max = self.ctx.report().max_compute_workgroups_per_dimension;
            if grid.0 > max || grid.1 > max {
                return Err(shape_err(
                    op,
                    format!("{m}x{n} output needs {grid:?} workgroups"),
                ));
            }
            self.dispatch(Kernel::Matmul, &buffers, &params, grid)?;
        }
        Ok(out)
    }

    /// Row-wise RMSNorm over the last dimension with a per-column `weight`.
    pub fn rms_norm(&mut self, x: &GpuTensor, weight: &GpuTensor, eps: f32) -> Result<GpuTensor> {
        x.expect_dtype("rms_norm", DType::F32)?;
        weight.expect_dtype("rms_norm", DType::F32)?;
        let (rows, cols) = x.rows_cols();
        if weight.numel() != cols {
            return Err(shape_err(
                "rms_norm",
                format!("weight {:?} for rows of {cols}", weight.shape()),
            ));
        }
        let out = self.ctx.output(x.shape(), DType::F32)?;
        let params = NormParams {
            rows: u32_dim("rms_norm", rows)?,
            cols: u32_dim("rms_norm", cols)?,
            eps,
            _pad: 0,
        };
        let grid = self.linear_grid(rows)?;
        self.dispatch(
            Kernel::RmsNorm,
            &[x.buffer(), weight.buffer(), out.buffer()],
            &params,
            grid,
        )?;
        Ok(out)
    }

    /// Row-wise softmax over the last dimension.
    pub fn softmax(&mut self, x: &GpuTensor) -> Result<GpuTensor> {
        x.expect_dtype("softmax", DType::F32)?;
        let (rows, cols) = x.rows_cols();
        let out = self.ctx.output(x.shape(), DType::F32)?;
        let params = Dims4 {
            a: u32_dim("softmax", rows)?,
            b: u32_dim("softmax", cols)?,
            c: 0,
            d: 0,
        };
        let grid = self.linear_grid(rows)?;
        self.dispatch(Kernel::Softmax, &[x.buffer(), out.buffer()], &params, grid)?;
        Ok(out)
    }

    /// Row-wise argmax over the last dimension `-> u32 [rows]`, ties to the lowest index.
    pub fn argmax(&mut self, x: &GpuTensor) -> Result<GpuTensor> {
        x.expect_dtype("argmax", DType::F32)?;
        let (rows, cols) = x.rows_cols();
        let out = self.ctx.output(&[rows], DType::U32)?;
        let params = Dims4 {
            a: u32_dim("argmax", rows)?,
            b: u32_dim("argmax", cols)?,
            c: 0,
            d: 0,
        };
        let grid = self.linear_grid(rows)?;
        self.dispatch(Kernel::Argmax, &[x.buffer(), out.buffer()], &params, grid)?;
        Ok(out)
    }

    /// Rotate-half RoPE of `x [seq, heads * head_dim]` (or `[seq, heads, head_dim]`), token `s`
    /// at position `offset + s`.
    pub fn rope(
        &mut self,
        x: &GpuTensor,
        table: &RopeTable,
        heads: usize,
        offset: usize,
    ) -> Result<GpuTensor> {
        x.expect_dtype("rope", DType::F32)?;
        let hd = table.head_dim;
        let per_token = heads * hd;
        if per_token == 0 || !x.numel().is_multiple_of(per_token) {
            return Err(shape_err(
                "rope",
                format!("{:?} is not [seq, {heads} x {hd}]", x.shape()),
            ));
        }
        let seq = x.numel() / per_token;
        if offset + seq > table.max_positions {
            return Err(shape_err(
                "rope",
                format!(
                    "positions up to {} but the table holds {}",
                    offset + seq,
                    table.max_positions
                ),
            ));
        }
        let out = self.ctx.output(x.shape(), DType::F32)?;
        let params = Dims4 {
            a: u32_dim("rope", seq)?,
            b: u32_dim("rope", heads)?,
            c: u32_dim("rope", hd)?,
            d: u32_dim("rope", offset)?,
        };
        let grid = self.linear_grid((seq * heads * hd / 2).div_ceil(256))?;
        self.dispatch(
            Kernel::Rope,
            &[
                x.buffer(),
                table.cos.buffer(),
                table.sin.buffer(),
                out.buffer(),
            ],
            &params,
            grid,
        )?;
        Ok(out)
    }

    fn elementwise(
        &mut self,
        op: &'static str,
        kernel: Kernel,
        a: &GpuTensor,
        b: &GpuTensor,
    ) -> Result<GpuTensor> {
        a.expect_dtype(op, DType::F32)?;
        b.expect_dtype(op, DType::F32)?;
        if a.shape() != b.shape() {
            return Err(shape_err(op, format!("{:?} vs {:?}", a.shape(), b.shape())));
        }
        let out = self.ctx.output(a.shape(), DType::F32)?;
        let params = Dims4 {
            a: u32_dim(op, a.numel())?,
            b: 0,
            c: 0,
            d: 0,
        };
        let grid = self.linear_grid(a.numel().div_ceil(256))?;
        self.dispatch(
            kernel,
            &[a.buffer(), b.buffer(), out.buffer()],
            &params,
            grid,
        )?;
        Ok(out)
    }

    /// `a + b` (residual connections).
    pub fn add(&mut self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        self.elementwise("add", Kernel::Add, a, b)
    }

    /// `x + bias` with `bias [cols]` added to every row of `x [.., cols]` (Linear biases).
    pub fn add_bias(&mut self, x: &GpuTensor, bias: &GpuTensor) -> Result<GpuTensor> {
        x.expect_dtype("add_bias", DType::F32)?;
        bias.expect_dtype("add_bias", DType::F32)?;
        let (_, cols) = x.rows_cols();
        if bias.numel() != cols {
            return Err(shape_err(
                "add_bias",
                format!("bias {:?} for rows of {cols}", bias.shape()),
            ));
        }
        let out = self.ctx.output(x.shape(), DType::F32)?;
        let params = Dims4 {
            a: u32_dim("add_bias", x.numel())?,
            b: u32_dim("add_bias", cols)?,
            c: 0,
            d: 0,
        };
        let grid = self.linear_grid(x.numel().div_ceil(256))?;
        self.dispatch(
            Kernel::AddRow,
            &[x.buffer(), bias.buffer(), out.buffer()],
            &params,
            grid,
        )?;
        Ok(out)
    }

    /// `silu(gate) * up` (the gated MLP).
    pub fn swiglu(&mut self, gate: &GpuTensor, up: &GpuTensor) -> Result<GpuTensor> {
        self.elementwise("swiglu", Kernel::Swiglu, gate, up)
    }

    /// `silu(x) = x * sigmoid(x)` element-wise (the token router's activation).
    pub fn silu(&mut self, x: &GpuTensor) -> Result<GpuTensor> {
        x.expect_dtype("silu", DType::F32)?;
        let out = self.ctx.output(x.shape(), DType::F32)?;
        let params = Dims4 {
            a: 1,
            b: u32_dim("silu", x.numel())?,
            c: 0,
            d: 0,
        };
        let grid = self.linear_grid(x.numel().div_ceil(256))?;
        self.dispatch(Kernel::Silu, &[x.buffer(), out.buffer()], &params, grid)?;
        Ok(out)
    }

    /// Concatenation along the last dimension of tensors with the same leading dimensions
    /// (the token router reads `[h_1; …; h_E]`).
    pub fn concat_last(&mut self, inputs: &[&GpuTensor]) -> Result<GpuTensor> {
        let first = inputs
            .first()
            .ok_or_else(|| shape_err("concat_last", "no inputs".to_owned()))?;
        let (rows, _) = first.rows_cols();
        let lead = &first.shape()[..first.shape().len().saturating_sub(1)];
        let mut out_cols = 0;
        for t in inputs {
            t.expect_dtype("concat_last", DType::F32)?;
            let (r, c) = t.rows_cols();
            if r != rows || &t.shape()[..t.shape().len().saturating_sub(1)] != lead {
                return Err(shape_err(
                    "concat_last",
                    format!("{:?} vs {:?}", t.shape(), first.shape()),
                ));
            }
            out_cols += c;
        }
        let mut shape = lead.to_vec();
        shape.push(out_cols);
        let out = self.ctx.output(&shape, DType::F32)?;
        let mut offset = 0;
        for t in inputs {
            let (_, cols) = t.rows_cols();
            let params = Dims4 {
                a: u32_dim("concat_last", rows)?,
                b: u32_dim("concat_last", cols)?,
                c: u32_dim("concat_last", out_cols)?,
                d: u32_dim("concat_last", offset)?,
            };
            let grid = self.linear_grid(t.numel().div_ceil(256))?;
            self.dispatch(Kernel::CopyCols, &[t.buffer(), out.buffer()], &params, grid)?;
            offset += cols;
        }
        Ok(out)
    }

    /// Rows `start..start + count` of `x [rows, cols]` (any leading shape flattened to rows)
    /// `-> [count, cols]`: e.g. the last position of a prefill. A buffer copy, no kernel.
    pub fn rows(&mut self, x: &GpuTensor, start: usize, count: usize) -> Result<GpuTensor> {
        let (rows, cols) = x.rows_cols();
        if count == 0 || start + count > rows {
            return Err(shape_err(
                "rows",
                format!("rows {start}..{} of {:?}", start + count, x.shape()),
            ));
        }
        let out = self.ctx.output(&[count, cols], x.dtype())?;
        let row_bytes = cols as u64 * 4;
        self.encoder.copy_buffer_to_buffer(
            x.buffer(),
            start as u64 * row_bytes,
            out.buffer(),
            0,
            count as u64 * row_bytes,
        );
        Ok(out)
    }

    /// Rows of `table [vocab, hidden]` for `ids` (u32, any shape) `-> [ids.., hidden]`.
    pub fn embedding(&mut self, ids: &GpuTensor, table: &GpuTensor) -> Result<GpuTensor> {
        ids.expect_dtype("embedding", DType::U32)?;
        table.expect_dtype("embedding", DType::F32)?;
        if table.shape().len() != 2 {
            return Err(shape_err(
                "embedding",
                format!("table {:?} is not [vocab, hidden]", table.shape()),
            ));
        }
        let (vocab, hidden) = (table.shape()[0], table.shape()[1]);
        let mut shape = ids.shape().to_vec();
        shape.push(hidden);
        let out = self.ctx.output(&shape, DType::F32)?;
        let params = Dims4 {
            a: u32_dim("embedding", ids.numel())?,
            b: u32_dim("embedding", hidden)?,
            c: u32_dim("embedding", vocab)?,
            d: 0,
        };
        let grid = self.linear_grid((ids.numel() * hidden).div_ceil(256))?;
        self.dispatch(
            Kernel::Embedding,
            &[ids.buffer(), table.buffer(), out.buffer()],
            &params,
            grid,
        )?;
        Ok(out)
    }

    /// `sum_i w_i * inputs[i]` over same-shaped inputs. `weights` is `[N]` (one weight per
    /// input: ensemble, layer coefficients) or `[rows, N]` (per-row weights from a router,
    /// rows = all but the last dimension of the inputs).
    pub fn mix(&mut self, inputs: &[&GpuTensor], weights: &GpuTensor) -> Result<GpuTensor> {
        let first = inputs
            .first()
            .ok_or_else(|| shape_err("mix", "no inputs".to_owned()))?;
        weights.expect_dtype("mix", DType::F32)?;
        for t in inputs {
            t.expect_dtype("mix", DType::F32)?;
            if t.shape() != first.shape() {
                return Err(shape_err(
                    "mix",
                    format!("{:?} vs {:?}", t.shape(), first.shape()),
                ));
            }
        }
        let n = inputs.len();
        let (rows, cols) = first.rows_cols();
        let per_row = match weights.shape() {
            [w] if *w == n => false,
            [r, w] if *r == rows && *w == n => true,
            other => {
                return Err(shape_err(
                    "mix",
                    format!("weights {other:?} for {n} inputs of {rows} rows"),
                ));
            }
        };
        let len = first.numel();
        let bytes = first.byte_size();
        // Stack the inputs so one kernel with a fixed binding layout sees all of them.
        let stacked = self.ctx.output(&[n, len], DType::F32)?;
        for (i, t) in inputs.iter().enumerate() {
            self.encoder.copy_buffer_to_buffer(
                t.buffer(),
                0,
                stacked.buffer(),
                i as u64 * bytes,
                bytes,
            );
        }
        let out = self.ctx.output(first.shape(), DType::F32)?;
        let params = Dims4 {
            a: u32_dim("mix", n)?,
            b: u32_dim("mix", len)?,
            c: u32_dim("mix", cols)?,
            d: u32::from(per_row),
        };
        let grid = self.linear_grid(len.div_ceil(256))?;
        self.dispatch(
            Kernel::Mix,
            &[stacked.buffer(), weights.buffer(), out.buffer()],
            &params,
            grid,
        )?;
        Ok(out)
    }

    /// Appends `k` and `v` (`[rows, kv_heads * head_dim]`, already rotated) to the cache.
    pub fn append_kv(&mut self, cache: &mut KvCache, k: &GpuTensor, v: &GpuTensor) -> Result<()> {
        k.expect_dtype("append_kv", DType::F32)?;
        v.expect_dtype("append_kv", DType::F32)?;
        let row = cache.kv_heads * cache.head_dim;
        if k.shape() != v.shape() || row == 0 || !k.numel().is_multiple_of(row) {
            return Err(shape_err(
                "append_kv",
                format!(
                    "k {:?}, v {:?} for rows of {} x {}",
                    k.shape(),
                    v.shape(),
                    cache.kv_heads,
                    cache.head_dim
                ),
            ));
        }
        let rows = k.numel() / row;
        let needed = cache.len + rows;
        if needed > cache.capacity {
            return Err(GpuError::CacheFull {
                needed,
                capacity: cache.capacity,
            });
        }
        let at = (cache.len * row * 4) as u64;
        let bytes = k.byte_size();
        self.encoder
            .copy_buffer_to_buffer(k.buffer(), 0, cache.k.buffer(), at, bytes);
        self.encoder
            .copy_buffer_to_buffer(v.buffer(), 0, cache.v.buffer(), at, bytes);
        cache.len = needed;
        Ok(())
    }

    /// Attention of the newest `q_len` positions (`q [q_len, heads * head_dim]`, rotated)
    /// over everything in `cache` (which already holds those positions), scale
    /// `1/sqrt(head_dim)`, grouped-query heads (`heads` a multiple of the cache's kv heads).
    /// `causal` masks later positions inside the block (prefill); a one-token block needs none.
    pub fn attention(
        &mut self,
        q: &GpuTensor,
        cache: &KvCache,
        heads: usize,
        causal: bool,
    ) -> Result<GpuTensor> {
        q.expect_dtype("attention", DType::F32)?;
        let hd = cache.head_dim;
        let per_token = heads * hd;
        if heads == 0 || cache.kv_heads == 0 || !heads.is_multiple_of(cache.kv_heads) {
            return Err(shape_err(
                "attention",
                format!("{heads} heads over {} kv heads", cache.kv_heads),
            ));
        }
        if !q.numel().is_multiple_of(per_token) {
            return Err(shape_err(
                "attention",
                format!("q {:?} is not [q_len, {heads} x {hd}]", q.shape()),
            ));
        }
        let q_len = q.numel() / per_token;
        if q_len > cache.len {
            return Err(shape_err(
                "attention",
                format!("{q_len} queries but only {} cached positions", cache.len),
            ));
        }
        let out = self.ctx.output(q.shape(), DType::F32)?;
        let params = AttentionParams {
            q_len: u32_dim("attention", q_len)?,
            heads: u32_dim("attention", heads)?,
            kv_heads: u32_dim("attention", cache.kv_heads)?,
            head_dim: u32_dim("attention", hd)?,
            kv_len: u32_dim("attention", cache.len)?,
            offset: u32_dim("attention", cache.len - q_len)?,
            causal: u32::from(causal),
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let grid = self.linear_grid(q_len * heads)?;
        self.dispatch(
            Kernel::Attention,
            &[q.buffer(), cache.k.buffer(), cache.v.buffer(), out.buffer()],
            &params,
            grid,
        )?;
        Ok(out)
    }
}
