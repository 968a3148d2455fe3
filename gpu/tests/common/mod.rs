//! Shared by the gpu tests: the context (or a skip), a tiny PRNG and plain-Rust references.

#![allow(dead_code)]

use std::sync::OnceLock;

use gpu::{GpuContext, GpuError, GpuOptions};

/// Set to make a missing adapter fail the tests instead of skipping them (CI with lavapipe).
pub const REQUIRE_ENV: &str = "HYBRID_GPU_REQUIRE";

/// A context from the environment, or `None` (with a printed reason) when no adapter exists.
pub fn new_context() -> Option<GpuContext> {
    match GpuContext::new(&GpuOptions::from_env()) {
        Ok(ctx) => Some(ctx),
        Err(e @ GpuError::NoAdapter { .. }) => {
            if std::env::var_os(REQUIRE_ENV).is_some() {
                panic!("{REQUIRE_ENV} is set but: {e}");
            }
            eprintln!("SKIPPED: no wgpu adapter on this machine, GPU test not run ({e})");
            None
        }
        Err(e) => panic!("GPU context: {e}"),
    }
}

/// One context for all tests of a binary (device creation and shader builds are not free).
pub fn gpu() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = new_context()?;
        eprintln!("{}", ctx.report());
        Some(ctx)
    })
    .as_ref()
}

/// xorshift64*: deterministic data without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }

    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n)) as u32
    }
}

/// |got - want| <= tol * max(1, |want|) element-wise, with the worst offender in the message.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        assert!(!g.is_nan(), "{what}: NaN at {i}");
        if err > worst.1 {
            worst = (i, err);
        }
    }
    let (i, err) = worst;
    assert!(
        err <= tol,
        "{what}: element {i}: got {}, want {} (relative error {err:e} > {tol:e})",
        got[i],
        want[i]
    );
}

/// a [m,k] x b, b [k,n] or (trans) [n,k].
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, trans: bool) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f64;
            for p in 0..k {
                let bv = if trans { b[j * k + p] } else { b[p * n + j] };
                acc += f64::from(a[i * k + p]) * f64::from(bv);
            }
            c[i * n + j] = acc as f32;
        }
    }
    c
}

pub fn rms_norm(x: &[f32], w: &[f32], cols: usize, eps: f32) -> Vec<f32> {
    x.chunks(cols)
        .flat_map(|row| {
            let ms = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (ms + f64::from(eps)).sqrt();
            row.iter()
                .zip(w)
                .map(move |(v, w)| (f64::from(*v) * inv * f64::from(*w)) as f32)
        })
        .collect()
}

pub fn softmax(x: &[f32], cols: usize) -> Vec<f32> {
    x.chunks(cols)
        .flat_map(|row| {
            let m = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, v| m.max(f64::from(*v)));
            let e: Vec<f64> = row.iter().map(|v| (f64::from(*v) - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| (v / s) as f32)
        })
        .collect()
}

pub fn argmax(x: &[f32], cols: usize) -> Vec<u32> {
    x.chunks(cols)
        .map(|row| {
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

/// Rotate-half RoPE of x [seq, heads, d], angles computed here in f64 from theta directly.
pub fn rope(x: &[f32], heads: usize, d: usize, offset: usize, theta: f64) -> Vec<f32> {
    let half = d / 2;
    let mut y = x.to_vec();
    for (t, tok) in x.chunks(heads * d).enumerate() {
        let pos = (offset + t) as f64;
        for h in 0..heads {
            let base = h * d;
            for i in 0..half {
                let angle = pos * theta.powf(-2.0 * i as f64 / d as f64);
                let (s, c) = angle.sin_cos();
                let x1 = f64::from(tok[base + i]);
                let x2 = f64::from(tok[base + i + half]);
                y[t * heads * d + base + i] = (x1 * c - x2 * s) as f32;
                y[t * heads * d + base + i + half] = (x2 * c + x1 * s) as f32;
            }
        }
    }
    y
}

pub fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter()
        .zip(u)
        .map(|(g, u)| {
            let g = f64::from(*g);
            (g / (1.0 + (-g).exp()) * f64::from(*u)) as f32
        })
        .collect()
}

/// q [q_len, heads, d]; k, v [kv_len, kv_heads, d]; query s at position kv_len - q_len + s.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    kv_heads: usize,
    d: usize,
    causal: bool,
) -> Vec<f32> {
    let q_len = q.len() / (heads * d);
    let kv_len = k.len() / (kv_heads * d);
    let offset = kv_len - q_len;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0f32; q.len()];
    for s in 0..q_len {
        let last = if causal { offset + s + 1 } else { kv_len };
        for h in 0..heads {
            let kvh = h / (heads / kv_heads);
            let qv = &q[(s * heads + h) * d..][..d];
            let scores: Vec<f64> = (0..last)
                .map(|j| {
                    let kr = &k[(j * kv_heads + kvh) * d..][..d];
                    qv.iter()
                        .zip(kr)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for dd in 0..d {
                let mut acc = 0f64;
                for (j, p) in e.iter().enumerate() {
                    acc += p * f64::from(v[(j * kv_heads + kvh) * d + dd]);
                }
                out[(s * heads + h) * d + dd] = (acc / sum) as f32;
            }
        }
    }
    out
}
