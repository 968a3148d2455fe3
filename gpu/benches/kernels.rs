//! Decode-shape matrix-vector products (`x [1,k] · Wᵀ`, W `[n,k]` as stored in checkpoints) and
//! one prefill-shape product (64 rows) on the wgpu device against a plain CPU loop over the
//! same data.
//!
//! `cargo bench -p hybrid-gpu --bench kernels [-- --iters N]`
//!
//! Two GPU numbers per shape: one kernel per submission, waited on (what a decode step that
//! syncs after every kernel would pay), and 8 kernels recorded in one batch and waited on once
//! (the kernel time the batched decode step sees). On Mesa's lavapipe these numbers only show
//! that the path works; GPU speed is measured on a GPU.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use gpu::{GpuContext, GpuError, GpuOptions};

/// (label, m, k, n)
const SHAPES: [(&str, usize, usize, usize); 6] = [
    ("1x128x384 (forged q/k/v-ish)", 1, 128, 384),
    ("1x576x1536 (SmolLM2 up/gate)", 1, 576, 1536),
    ("1x1536x576 (SmolLM2 down)", 1, 1536, 576),
    ("1x896x4864 (Qwen2.5-0.5B up)", 1, 896, 4864),
    ("1x576x49152 (SmolLM2 LM head)", 1, 576, 49152),
    ("64x576x1536 (prefill up/gate)", 64, 576, 1536),
];
const BATCHED: usize = 8;

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn cpu_linear(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
    let n = w.len() / k;
    for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        for (row, out) in w.chunks_exact(k).zip(yr.iter_mut()) {
            *out = row.iter().zip(xr).map(|(a, b)| a * b).sum();
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn gflops(m: usize, k: usize, n: usize, t: Duration) -> f64 {
    2.0 * (m * k * n) as f64 / t.as_secs_f64() / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iters = args
        .iter()
        .position(|a| a == "--iters")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5usize);
    let ctx = match GpuContext::new(&GpuOptions::from_env()) {
        Ok(ctx) => ctx,
        Err(e @ GpuError::NoAdapter { .. }) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    println!("{}", ctx.report());
    ctx.warm_up().unwrap();
    println!(
        "{:<32} {:>12} {:>12} {:>16} {:>12}",
        "shape", "cpu loop", "gpu 1/submit", "gpu batched x8", "max |diff|"
    );
    for (label, m, k, n) in SHAPES {
        let x = data(m * k, 1);
        let w = data(n * k, 2);
        let gx = ctx.upload_f32(&x, &[m, k]).unwrap();
        let gw = ctx.upload_f32(&w, &[n, k]).unwrap();

        let mut y = vec![0f32; m * n];
        let mut cpu = Vec::new();
        for _ in 0..iters {
            let t = Instant::now();
            cpu_linear(&x, &w, k, &mut y);
            cpu.push(t.elapsed());
            std::hint::black_box(&y);
        }

        let mut single = Vec::new();
        let mut last = None;
        for i in 0..iters + 2 {
            let t = Instant::now();
            let mut b = ctx.batch().unwrap();
            let out = b.linear(&gx, &gw).unwrap();
            b.submit().unwrap();
            ctx.wait().unwrap();
            if i >= 2 {
                single.push(t.elapsed());
            }
            last = Some(out);
        }
        let got = ctx.download_f32(&last.unwrap()).unwrap();
        let diff = got
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);

        let mut batched = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let mut b = ctx.batch().unwrap();
            for _ in 0..BATCHED {
                b.linear(&gx, &gw).unwrap();
            }
            b.submit().unwrap();
            ctx.wait().unwrap();
            batched.push(t.elapsed() / BATCHED as u32);
        }

        let (c, s, b) = (median(cpu), median(single), median(batched));
        println!(
            "{label:<32} {:>9.1} µs {:>9.1} µs {:>13.1} µs {diff:>12.2e}",
            c.as_secs_f64() * 1e6,
            s.as_secs_f64() * 1e6,
            b.as_secs_f64() * 1e6,
        );
        println!(
            "{:<32} {:>9.2} GF {:>9.2} GF {:>13.2} GF",
            "",
            gflops(m, k, n, c),
            gflops(m, k, n, s),
            gflops(m, k, n, b)
        );
    }
}
