//! Decode kernels on host memory, for inference on the CPU.
//!
//! A decode step of a small model is a few hundred tiny operations. Through candle's generic
//! tensor ops each allocates, copies (GQA's repeated keys, the cache's concatenation, the
//! transposes) and dispatches on its own; the step then costs several times what reading the
//! weights does. Two kernels here take over the hot parts when the tensors are f32 on the
//! CPU and nothing tracks gradients:
//!
//! - [`linears`]: several projections of the same few rows (q/k/v, gate/up, the LM head at
//!   decode) in one parallel pass that reads each weight row once for all input rows. The
//!   general matmul would pack the weights first, which at batch 8 costs more than the maths.
//! - [`attend`]: rotary embedding, the cache append and causal grouped-query attention read
//!   straight from a host KV cache ([`HostKv`], one growable buffer per sequence), with no
//!   repeated keys and no concatenation.
//!
//! The inner loops use `wide`'s portable SIMD vectors (eight f32 lanes, with FMA where the
//! target has it); `.cargo/config.toml` builds for the host CPU so that they get AVX2 and FMA
//! rather than the x86-64 baseline's SSE2. Work is split over candle's own CPU thread pool.

use std::sync::{Mutex, PoisonError};

use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};
use wide::f32x8;

use crate::error::Result;

/// Lanes of one SIMD vector ([`f32x8`]: one AVX register, two SSE or NEON ones).
const LANES: usize = 8;
/// Weight rows per parallel work item of [`linears`].
const BLOCK: usize = 32;
/// Largest number of input rows [`linears`] takes; beyond it the general matmul wins.
pub(crate) const MAX_ROWS: usize = 16;

#[inline(always)]
fn load(s: &[f32]) -> f32x8 {
    let mut a = [0f32; LANES];
    a.copy_from_slice(&s[..LANES]);
    f32x8::new(a)
}

/// Whether `t` can be read as host f32 without a copy and needs no gradient.
pub(crate) fn eligible(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && !t.track_op()
}

/// The f32 elements of a contiguous CPU storage under `layout`; `None` otherwise.
pub(crate) fn f32_slice<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [f32]> {
    let (start, end) = layout.contiguous_offsets()?;
    match storage {
        Storage::Cpu(CpuStorage::F32(v)) => v.get(start..end),
        _ => None,
    }
}

/// Runs `f` on the f32 elements of a contiguous CPU tensor; `None` when `t` is not one.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    f32_slice(&storage, layout).map(f)
}

/// A weight matrix `[n, k]` (row-major, one output feature per row) with an optional bias.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Matrix<'a> {
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub n: usize,
}

/// Dot products of `R` weight rows with `C` input rows.
#[inline(always)]
fn tile<const R: usize, const C: usize>(w: [&[f32]; R], x: [&[f32]; C]) -> [[f32; C]; R] {
    let k = x[0].len();
    let body = k - k % LANES;
    let mut acc = [[f32x8::ZERO; C]; R];
    let mut i = 0;
    while i < body {
        let xs: [f32x8; C] = std::array::from_fn(|c| load(&x[c][i..]));
        for r in 0..R {
            let wv = load(&w[r][i..]);
            for c in 0..C {
                acc[r][c] = wv.mul_add(xs[c], acc[r][c]);
            }
        }
        i += LANES;
    }
    let mut out = [[0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            let mut s = acc[r][c].reduce_add();
            for j in body..k {
                s += w[r][j] * x[c][j];
            }
            out[r][c] = s;
        }
    }
    out
}

/// The output features of the weight rows `w` (each `k` long) for every input row of `x`
/// (`m × k`), written feature-major into `dst` (`w.len() / k × m`).
fn block(w: &[f32], x: &[f32], m: usize, k: usize, dst: &mut [f32]) {
    // Bring the block in from memory first, one independent load per cache line: a pure read
    // stream runs at the memory's pace, while loads interleaved with the FMAs fall far behind
    // it (measured: the 49,152 × 576 LM head at 8 rows, 20 ms → 11 ms on one core).
    std::hint::black_box(w.iter().step_by(16).fold(0f32, |a, &b| a + b));
    let n = w.len() / k;
    let wrow = |r: usize| &w[r * k..(r + 1) * k];
    let xrow = |c: usize| &x[c * k..(c + 1) * k];
    if m == 1 {
        let mut r = 0;
        while r + 4 <= n {
            let y = tile::<4, 1>(std::array::from_fn(|j| wrow(r + j)), [xrow(0)]);
            for (d, y) in dst[r..r + 4].iter_mut().zip(y) {
                *d = y[0];
            }
            r += 4;
        }
        for (i, d) in dst[r..n].iter_mut().enumerate() {
            *d = tile::<1, 1>([wrow(r + i)], [xrow(0)])[0][0];
        }
        return;
    }
    let full = m / 4 * 4;
    let mut r = 0;
    while r + 2 <= n {
        for c in (0..full).step_by(4) {
            let y = tile::<2, 4>([wrow(r), wrow(r + 1)], std::array::from_fn(|j| xrow(c + j)));
            dst[r * m + c..r * m + c + 4].copy_from_slice(&y[0]);
            dst[(r + 1) * m + c..(r + 1) * m + c + 4].copy_from_slice(&y[1]);
        }
        for c in full..m {
            let y = tile::<2, 1>([wrow(r), wrow(r + 1)], [xrow(c)]);
            dst[r * m + c] = y[0][0];
            dst[(r + 1) * m + c] = y[1][0];
        }
        r += 2;
    }
    if r < n {
        for c in 0..m {
            dst[r * m + c] = tile::<1, 1>([wrow(r)], [xrow(c)])[0][0];
        }
    }
}

/// `x Wᵢᵀ + bᵢ` for each matrix, `x` being `m × k` row-major (`m ≤ MAX_ROWS`): one pass
/// over each weight row for all `m` rows, every matrix in one dispatch on the thread pool.
/// Returns one `m × nᵢ` row-major output per matrix.
pub(crate) fn linears(x: &[f32], m: usize, k: usize, mats: &[Matrix<'_>]) -> Vec<Vec<f32>> {
    // Feature-major outputs (`nᵢ × m`), cut into blocks that the workers fill.
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|w| vec![0f32; w.n * m]).collect();
    {
        let mut items = Vec::new();
        for (i, w) in mats.iter().enumerate() {
            for start in (0..w.n).step_by(BLOCK) {
                items.push((i, start, (start + BLOCK).min(w.n)));
            }
        }
        let slots: Vec<Mutex<&mut [f32]>> = outs
            .iter_mut()
            .flat_map(|o| o.chunks_mut(BLOCK * m))
            .map(Mutex::new)
            .collect();
        let run = |range: std::ops::Range<usize>| {
            for item in range {
                let (i, start, end) = items[item];
                let mut dst = slots[item].lock().unwrap_or_else(PoisonError::into_inner);
                block(&mats[i].weight[start * k..end * k], x, m, k, &mut dst);
            }
        };
        let flops = mats.iter().map(|w| w.n).sum::<usize>() * m * k;
        if flops < 1 << 16 {
            run(0..items.len());
        } else {
            candle_core::utils::barrier_pool().execute_chunked(items.len(), run);
        }
    }
    outs.into_iter()
        .zip(mats)
        .map(|(o, w)| {
            let mut y = if m == 1 {
                o
            } else {
                let mut t = vec![0f32; o.len()];
                for (f, row) in o.chunks_exact(m).enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        t[c * w.n + f] = v;
                    }
                }
                t
            };
            if let Some(b) = w.bias {
                for row in y.chunks_exact_mut(w.n) {
                    for (v, &bb) in row.iter_mut().zip(b) {
                        *v += bb;
                    }
                }
            }
            y
        })
        .collect()
}

/// The keys and values of one layer for a batch of sequences, on the host: per sequence,
/// `[position, kv_head, head_dim]` row-major, grown in place. Keys are stored rotated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostKv {
    pub kv_heads: usize,
    pub head_dim: usize,
    pub len: usize,
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl HostKv {
    pub(crate) fn new(batch: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self {
            kv_heads,
            head_dim,
            len: 0,
            k: vec![Vec::new(); batch],
            v: vec![Vec::new(); batch],
        }
    }

    pub(crate) fn batch(&self) -> usize {
        self.k.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(Vec::len).sum::<usize>() * 4
    }

    /// From cached tensors `[batch, kv_heads, len, head_dim]`.
    pub(crate) fn from_tensors(k: &Tensor, v: &Tensor) -> Result<Self> {
        let (b, g, len, d) = k.dims4()?;
        let rows = |t: &Tensor| -> Result<Vec<Vec<f32>>> {
            let t = t
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .transpose(1, 2)?
                .contiguous()?;
            (0..b)
                .map(|i| Ok(t.get(i)?.flatten_all()?.to_vec1::<f32>()?))
                .collect()
        };
        Ok(Self {
            kv_heads: g,
            head_dim: d,
            len,
            k: rows(k)?,
            v: rows(v)?,
        })
    }

    /// As cached tensors `[batch, kv_heads, len, head_dim]` on `device`.
    pub(crate) fn to_tensors(&self, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        let (g, d, len) = (self.kv_heads, self.head_dim, self.len);
        let stack = |rows: &[Vec<f32>]| -> Result<Tensor> {
            let all: Vec<f32> = rows.iter().flatten().copied().collect();
            Ok(
                Tensor::from_vec(all, (rows.len(), len, g, d), &Device::Cpu)?
                    .transpose(1, 2)?
                    .contiguous()?
                    .to_dtype(dtype)?
                    .to_device(device)?,
            )
        };
        Ok((stack(&self.k)?, stack(&self.v)?))
    }
}

/// Heads and rotary tables of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnSpec<'a> {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// `[positions, head_dim / 2]` each.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// "Rotate half" rotary embedding of one head vector at `pos`.
fn rope(x: &[f32], pos: usize, spec: &AttnSpec<'_>, out: &mut [f32]) {
    let half = spec.head_dim / 2;
    let (cos, sin) = (
        &spec.cos[pos * half..(pos + 1) * half],
        &spec.sin[pos * half..(pos + 1) * half],
    );
    for j in 0..half {
        let (a, b) = (x[j], x[j + half]);
        out[j] = a * cos[j] - b * sin[j];
        out[j + half] = a * sin[j] + b * cos[j];
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    tile::<1, 1>([a], [b])[0][0]
}

/// `y += w · x`.
#[inline(always)]
fn axpy(w: f32, x: &[f32], y: &mut [f32]) {
    let body = x.len() - x.len() % LANES;
    let wv = f32x8::splat(w);
    for (yc, xc) in y[..body]
        .chunks_exact_mut(LANES)
        .zip(x[..body].chunks_exact(LANES))
    {
        yc.copy_from_slice(wv.mul_add(load(xc), load(yc)).as_array_ref());
    }
    for j in body..x.len() {
        y[j] += w * x[j];
    }
}

/// Rotary embedding at positions `offset..offset + t`, the append of `k`, `v` to `cache`, and
/// causal scaled dot-product attention with grouped-query heads. `q` is `[b, t, heads·d]`, `k`
/// and `v` `[b, t, kv_heads·d]`, row-major; returns `[b, t, heads·d]`. The cache's existing
/// positions are the ones before `offset`.
pub(crate) fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    offset: usize,
    spec: &AttnSpec<'_>,
    cache: &mut HostKv,
) -> Vec<f32> {
    let (h, g, d) = (spec.heads, spec.kv_heads, spec.head_dim);
    let b = cache.batch();
    let past = cache.len;
    let mut rotated = vec![0f32; d];
    for bi in 0..b {
        for i in 0..t {
            for gi in 0..g {
                let at = ((bi * t + i) * g + gi) * d;
                rope(&k[at..at + d], offset + i, spec, &mut rotated);
                cache.k[bi].extend_from_slice(&rotated);
            }
        }
        cache.v[bi].extend_from_slice(&v[bi * t * g * d..(bi + 1) * t * g * d]);
    }
    cache.len += t;
    let cache = &*cache;
    let rep = h / g;
    let scale = 1.0 / (d as f32).sqrt();
    // One work item per (sequence, query head): all `t` positions of it.
    let items = b * h;
    let results: Vec<Mutex<Vec<f32>>> = (0..items).map(|_| Mutex::new(Vec::new())).collect();
    let run = |range: std::ops::Range<usize>| {
        let mut qr = vec![0f32; d];
        let mut scores = Vec::with_capacity(past + t);
        for item in range {
            let (bi, hi) = (item / h, item % h);
            let gi = hi / rep;
            let (keys, values) = (&cache.k[bi], &cache.v[bi]);
            let mut out = vec![0f32; t * d];
            for i in 0..t {
                let at = ((bi * t + i) * h + hi) * d;
                rope(&q[at..at + d], offset + i, spec, &mut qr);
                let seen = past + i + 1;
                scores.clear();
                let mut max = f32::NEG_INFINITY;
                for p in 0..seen {
                    let kp = &keys[(p * g + gi) * d..(p * g + gi + 1) * d];
                    let s = dot(&qr, kp) * scale;
                    max = max.max(s);
                    scores.push(s);
                }
                let mut sum = 0f32;
                for s in &mut scores {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let o = &mut out[i * d..(i + 1) * d];
                for (p, &s) in scores.iter().enumerate() {
                    let w = s / sum;
                    axpy(w, &values[(p * g + gi) * d..(p * g + gi + 1) * d], o);
                }
            }
            *results[item].lock().unwrap_or_else(PoisonError::into_inner) = out;
        }
    };
    let work = items * t * (past + t) * d;
    if items < 2 || work < 1 << 15 {
        run(0..items);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(items, run);
    }
    let mut y = vec![0f32; b * t * h * d];
    for (item, r) in results.into_iter().enumerate() {
        let (bi, hi) = (item / h, item % h);
        let r = r.into_inner().unwrap_or_else(PoisonError::into_inner);
        for i in 0..t {
            let at = ((bi * t + i) * h + hi) * d;
            y[at..at + d].copy_from_slice(&r[i * d..(i + 1) * d]);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                y[r * n + c] = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
            }
        }
        y
    }

    #[test]
    fn linears_match_a_naive_matmul_for_every_tile_shape() {
        // Odd sizes exercise every tile remainder: rows not a multiple of 4, features not a
        // multiple of 2 or of the block, widths not a multiple of the lanes.
        for (m, k, n) in [
            (1, 37, 67),
            (3, 16, 5),
            (5, 70, 33),
            (8, 576, 64),
            (16, 33, 1),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0)
                .collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 / 10.0).collect();
            let got = linears(
                &x,
                m,
                k,
                &[
                    Matrix {
                        weight: &w,
                        bias: None,
                        n,
                    },
                    Matrix {
                        weight: &w,
                        bias: Some(&bias),
                        n,
                    },
                ],
            );
            let want = naive(&x, m, k, &w, n);
            for (a, b) in got[0].iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{m}x{k}x{n}: {a} vs {b}");
            }
            for (i, (a, b)) in got[1].iter().zip(&want).enumerate() {
                assert!((a - b - bias[i % n]).abs() < 1e-4, "{m}x{k}x{n} bias");
            }
        }
    }
}
