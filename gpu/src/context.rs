//! Adapter choice, the device and its health.
//!
//! A [`GpuContext`] owns one wgpu device and queue, the compiled kernels, and a health flag that
//! the device-lost callback clears. A server logs its [`AdapterReport`] at start-up and reports
//! itself unhealthy once [`GpuContext::is_healthy`] turns false; every operation then fails
//! with [`GpuError::DeviceLost`] instead of panicking.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{GpuError, Result};
use crate::kernels::Pipelines;
use crate::tensor::{DType, GpuTensor};

/// Environment variable that picks an adapter by (case-insensitive) substring of its name or
/// backend, e.g. `llvmpipe`, `nvidia`, `vulkan`.
pub const ADAPTER_ENV: &str = "HYBRID_WGPU_ADAPTER";

/// How to choose the adapter.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Substring of the adapter's name or backend; `None` lets wgpu choose (high performance).
    pub adapter: Option<String>,
}

impl GpuOptions {
    /// Options from the environment ([`ADAPTER_ENV`]); an empty value counts as unset.
    pub fn from_env() -> Self {
        Self {
            adapter: std::env::var(ADAPTER_ENV)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
        }
    }
}

/// What the chosen adapter is and what it allows, for the start-up log and `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_compute_workgroup_size_x: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_workgroups_per_dimension: u32,
}

impl AdapterReport {
    fn new(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> Self {
        Self {
            name: info.name.clone(),
            backend: info.backend.to_string(),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_compute_workgroup_size_x: limits.max_compute_workgroup_size_x,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        }
    }

    /// Largest single buffer this crate will create: it binds whole buffers as storage, so the
    /// smaller of the two limits applies.
    pub fn max_tensor_bytes(&self) -> u64 {
        self.max_buffer_size
            .min(self.max_storage_buffer_binding_size)
    }
}

impl fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "adapter `{}` (backend {}, type {}, driver {} {}); limits: max_buffer_size {} B, \
             max_storage_buffer_binding_size {} B, max_compute_workgroup_size_x {}, \
             max_compute_invocations_per_workgroup {}, max_compute_workgroup_storage_size {} B, \
             max_compute_workgroups_per_dimension {}",
            self.name,
            self.backend,
            self.device_type,
            self.driver,
            self.driver_info,
            self.max_buffer_size,
            self.max_storage_buffer_binding_size,
            self.max_compute_workgroup_size_x,
            self.max_compute_invocations_per_workgroup,
            self.max_compute_workgroup_storage_size,
            self.max_compute_workgroups_per_dimension,
        )
    }
}

/// Shared between the context and wgpu's callbacks.
#[derive(Debug, Default)]
struct Health {
    lost: AtomicBool,
    lost_reason: Mutex<Option<String>>,
    /// First error wgpu reported outside any error scope since the last check.
    uncaptured: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a callback panicked mid-write; the string is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One wgpu device with its queue, kernels and health.
#[derive(Debug)]
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    report: AdapterReport,
    health: Arc<Health>,
    pub(crate) pipelines: Pipelines,
}

impl GpuContext {
    /// Adapter from [`GpuOptions::from_env`].
    pub fn from_env() -> Result<Self> {
        Self::new(&GpuOptions::from_env())
    }

    /// Picks an adapter, requests a device with the adapter's own limits and installs the
    /// device-lost and error callbacks.
    pub fn new(options: &GpuOptions) -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pick_adapter(&instance, options)?;
        let info = adapter.get_info();
        if !adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            return Err(GpuError::NoAdapter {
                detail: format!(
                    "adapter `{}` ({}) has no compute shaders",
                    info.name, info.backend
                ),
            });
        }
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("hybrid-gpu"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|source| GpuError::RequestDevice {
            adapter: info.name.clone(),
            source,
        })?;

        let health = Arc::new(Health::default());
        let on_lost = Arc::clone(&health);
        device.set_device_lost_callback(move |reason, message| {
            tracing::error!(?reason, %message, "GPU device lost");
            *lock(&on_lost.lost_reason) = Some(format!("{reason:?}: {message}"));
            on_lost.lost.store(true, Ordering::SeqCst);
        });
        let on_error = Arc::clone(&health);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            tracing::error!(%error, "uncaptured GPU error");
            lock(&on_error.uncaptured).get_or_insert_with(|| error.to_string());
        }));

        let report = AdapterReport::new(&info, &device.limits());
        tracing::info!(%report, "wgpu device ready");
        Ok(Self {
            device,
            queue,
            report,
            health,
            pipelines: Pipelines::default(),
        })
    }

    /// The adapter and its limits.
    pub fn report(&self) -> &AdapterReport {
        &self.report
    }

    /// False once the device is lost; stays false (build a new context to recover).
    pub fn is_healthy(&self) -> bool {
        !self.health.lost.load(Ordering::SeqCst)
    }

    /// Destroys the device as a driver reset would, so that callers can test their unhealthy
    /// path. The context is unusable afterwards.
    pub fn simulate_device_loss(&self) {
        self.device.destroy();
        // The lost callback fires from the device's maintenance; give it a turn.
        let _ = self.device.poll(wgpu::PollType::Poll);
    }

    /// `Err(DeviceLost)` once the device is gone; `Err(Device)` with the first uncaptured wgpu
    /// error since the last check.
    pub(crate) fn check(&self) -> Result<()> {
        if !self.is_healthy() {
            let reason = lock(&self.health.lost_reason)
                .clone()
                .unwrap_or_else(|| "unknown".to_owned());
            return Err(GpuError::DeviceLost { reason });
        }
        if let Some(message) = lock(&self.health.uncaptured).take() {
            return Err(GpuError::Device(message));
        }
        Ok(())
    }

    /// Fails before allocating anything the device could not hold in one binding.
    pub(crate) fn check_size(&self, bytes: u64) -> Result<()> {
        let limit = self.report.max_tensor_bytes();
        if bytes > limit {
            return Err(GpuError::BufferTooLarge {
                requested: bytes,
                limit,
            });
        }
        Ok(())
    }

    /// Splits `groups` workgroups over x and y, since one dimension holds at most 65535 on
    /// most devices; kernels recompute the linear id as `wid.y * nwg.x + wid.x`.
    pub(crate) fn grid(&self, groups: u64) -> Result<(u32, u32)> {
        let max = u64::from(self.report.max_compute_workgroups_per_dimension.max(1));
        if groups <= max {
            return Ok((groups as u32, 1));
        }
        let y = groups.div_ceil(max);
        if y > max {
            return Err(GpuError::ShapeMismatch {
                op: "dispatch",
                detail: format!("{groups} workgroups exceed {max}x{max}"),
            });
        }
        Ok((max as u32, y as u32))
    }

    /// Creates a storage buffer, turning allocation failure into an error instead of a panic.
    pub(crate) fn storage_buffer(
        &self,
        label: &str,
        bytes: u64,
        contents: Option<&[u8]>,
    ) -> Result<wgpu::Buffer> {
        self.check()?;
        self.check_size(bytes)?;
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = match contents {
            Some(contents) => self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents,
                    usage,
                }),
            None => self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            }),
        };
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(GpuError::OutOfMemory(error.to_string()));
        }
        Ok(buffer)
    }

    fn new_tensor(
        &self,
        shape: &[usize],
        dtype: DType,
        contents: Option<&[u8]>,
    ) -> Result<GpuTensor> {
        let numel: usize = shape.iter().product();
        if numel == 0 {
            return Err(GpuError::ShapeMismatch {
                op: "tensor",
                detail: format!("empty shape {shape:?}"),
            });
        }
        let bytes = (numel as u64) * 4;
        let buffer = self.storage_buffer("tensor", bytes, contents)?;
        Ok(GpuTensor::new(buffer, shape.to_vec(), dtype))
    }

    /// Uploads f32 data of the given shape (row-major).
    pub fn upload_f32(&self, data: &[f32], shape: &[usize]) -> Result<GpuTensor> {
        check_len("upload_f32", data.len(), shape)?;
        self.new_tensor(shape, DType::F32, Some(bytemuck::cast_slice(data)))
    }

    /// Uploads u32 data (token ids) of the given shape.
    pub fn upload_u32(&self, data: &[u32], shape: &[usize]) -> Result<GpuTensor> {
        check_len("upload_u32", data.len(), shape)?;
        self.new_tensor(shape, DType::U32, Some(bytemuck::cast_slice(data)))
    }

    /// An uninitialised-by-us (wgpu zero-fills) f32 tensor.
    pub fn zeros(&self, shape: &[usize]) -> Result<GpuTensor> {
        self.new_tensor(shape, DType::F32, None)
    }

    pub(crate) fn output(&self, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        self.new_tensor(shape, dtype, None)
    }

    /// Reads an f32 tensor back (waits for all work submitted before).
    pub fn download_f32(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        t.expect_dtype("download_f32", DType::F32)?;
        let bytes = self.read_back(None, t)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Reads a u32 tensor back (waits for all work submitted before).
    pub fn download_u32(&self, t: &GpuTensor) -> Result<Vec<u32>> {
        t.expect_dtype("download_u32", DType::U32)?;
        let bytes = self.read_back(None, t)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Copies `t` into a mappable buffer at the end of `encoder` (or a fresh one), submits,
    /// waits and returns the bytes.
    pub(crate) fn read_back(
        &self,
        encoder: Option<wgpu::CommandEncoder>,
        t: &GpuTensor,
    ) -> Result<Vec<u8>> {
        self.check()?;
        let size = t.byte_size();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = encoder.unwrap_or_else(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("read-back"),
                })
        });
        encoder.copy_buffer_to_buffer(t.buffer(), 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);

        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        // Another thread polling the same device may be the one that runs this callback, and
        // may still be running it when our own poll returns: wait for the callback itself,
        // polling again meanwhile, up to a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            self.wait()?;
            match rx.recv_timeout(std::time::Duration::from_millis(20)) {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    self.check()?;
                    return Err(GpuError::Map(e.to_string()));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    if std::time::Instant::now() < deadline => {}
                Err(_) => {
                    self.check()?;
                    return Err(GpuError::Map("map callback did not run".to_owned()));
                }
            }
        }
        let bytes = staging
            .get_mapped_range(..)
            .map_err(|e| GpuError::Map(e.to_string()))?
            .to_vec();
        staging.unmap();
        self.check()?;
        Ok(bytes)
    }

    /// Blocks until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| {
                if self.is_healthy() {
                    GpuError::Poll(e.to_string())
                } else {
                    GpuError::DeviceLost {
                        reason: e.to_string(),
                    }
                }
            })?;
        self.check()
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let numel: usize = shape.iter().product();
    if len != numel {
        return Err(GpuError::ShapeMismatch {
            op,
            detail: format!("{len} values for shape {shape:?} ({numel} elements)"),
        });
    }
    Ok(())
}

fn pick_adapter(instance: &wgpu::Instance, options: &GpuOptions) -> Result<wgpu::Adapter> {
    match &options.adapter {
        Some(wanted) => {
            let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
            let needle = wanted.to_lowercase();
            let describe = |a: &wgpu::Adapter| {
                let info = a.get_info();
                format!("{} ({})", info.name, info.backend)
            };
            let found: Vec<String> = adapters.iter().map(describe).collect();
            adapters
                .into_iter()
                .find(|a| describe(a).to_lowercase().contains(&needle))
                .ok_or_else(|| GpuError::NoAdapter {
                    detail: format!(
                        "{ADAPTER_ENV}={wanted:?} matches none of the adapters found: [{}]",
                        found.join(", ")
                    ),
                })
        }
        None => pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        }))
        .map_err(|e| GpuError::NoAdapter {
            detail: e.to_string(),
        }),
    }
}
