//! Every kernel against a plain-Rust reference on shapes that are not multiples of the
//! workgroup size, one-element and one-token cases, and long contexts. Skips (with a printed
//! reason) only where no wgpu adapter exists; `HYBRID_GPU_REQUIRE=1` turns that into a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Rng, assert_close, gpu};
use gpu::{GpuTensor, KvCache, RopeTable};

const TOL: f32 = 1e-4;

#[test]
fn matmul_and_linear_on_odd_shapes() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(1);
    // (m, k, n): m = 1 takes the matrix-vector kernels.
    let shapes = [
        (1, 1, 1),
        (1, 37, 1),
        (1, 1, 37),
        (1, 129, 65),
        (3, 129, 65),
        (17, 33, 70),
        (2, 576, 100),
        (16, 16, 16),
        (64, 64, 64),
        (65, 130, 129),
        (100, 17, 3),
        (1, 2, 70_000),
        (1, 1, 530_000), // > 65535 workgroups of 8 rows: the 2-D grid
    ];
    for (m, k, n) in shapes {
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let ga = ctx.upload_f32(&a, &[m, k]).unwrap();
        for trans in [false, true] {
            let shape = if trans { [n, k] } else { [k, n] };
            let gb = ctx.upload_f32(&b, &shape).unwrap();
            let mut batch = ctx.batch().unwrap();
            let gc = if trans {
                batch.linear(&ga, &gb).unwrap()
            } else {
                batch.matmul(&ga, &gb).unwrap()
            };
            assert_eq!(gc.shape(), &[m, n]);
            let got = batch.submit_and_read_f32(&gc).unwrap();
            let want = common::matmul(&a, &b, m, k, n, trans);
            assert_close(
                &format!("matmul {m}x{k}x{n} trans={trans}"),
                &got,
                &want,
                TOL,
            );
        }
    }
}

#[test]
fn matmul_rejects_mismatched_k() {
    let Some(ctx) = gpu() else { return };
    let a = ctx.zeros(&[2, 3]).unwrap();
    let b = ctx.zeros(&[4, 5]).unwrap();
    let err = ctx.batch().unwrap().matmul(&a, &b).unwrap_err();
    assert!(err.to_string().contains("disagree on k"), "{err}");
}

#[test]
fn rms_norm_rows() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(2);
    for (rows, cols) in [(1, 1), (1, 37), (3, 129), (5, 576), (2, 1000), (700, 16)] {
        let x = rng.vec(rows * cols);
        let w = rng.vec(cols);
        let eps = 1e-6;
        let gx = ctx.upload_f32(&x, &[rows, cols]).unwrap();
        let gw = ctx.upload_f32(&w, &[cols]).unwrap();
        let mut batch = ctx.batch().unwrap();
        let gy = batch.rms_norm(&gx, &gw, eps).unwrap();
        let got = batch.submit_and_read_f32(&gy).unwrap();
        assert_close(
            &format!("rms_norm {rows}x{cols}"),
            &got,
            &common::rms_norm(&x, &w, cols, eps),
            TOL,
        );
    }
}

#[test]
fn softmax_rows_are_stable() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(3);
    for (rows, cols, scale) in [
        (1, 1, 1.0),
        (1, 37, 1.0),
        (3, 129, 10.0),
        (2, 5000, 100.0),
        (4, 49_157, 30.0),
    ] {
        // Large logits would overflow exp without the max subtraction.
        let x: Vec<f32> = rng
            .vec(rows * cols)
            .iter()
            .map(|v| v * scale + 50.0)
            .collect();
        let gx = ctx.upload_f32(&x, &[rows, cols]).unwrap();
        let mut batch = ctx.batch().unwrap();
        let gy = batch.softmax(&gx).unwrap();
        let got = batch.submit_and_read_f32(&gy).unwrap();
        assert_close(
            &format!("softmax {rows}x{cols}"),
            &got,
            &common::softmax(&x, cols),
            TOL,
        );
    }
}

#[test]
fn argmax_rows_with_ties_and_long_rows() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(4);
    for (rows, cols) in [(1, 1), (1, 37), (3, 129), (2, 70_000), (5, 256)] {
        let x = rng.vec(rows * cols);
        let gx = ctx.upload_f32(&x, &[rows, cols]).unwrap();
        let mut batch = ctx.batch().unwrap();
        let ids = batch.argmax(&gx).unwrap();
        assert_eq!(
            batch.submit_and_read_u32(&ids).unwrap(),
            common::argmax(&x, cols),
            "argmax {rows}x{cols}"
        );
    }
    // Ties go to the lowest index, including ties that land in different threads.
    let mut x = vec![0f32; 1000];
    for i in [700, 3, 259, 999] {
        x[i] = 2.0;
    }
    let gx = ctx.upload_f32(&x, &[1, 1000]).unwrap();
    let mut batch = ctx.batch().unwrap();
    let ids = batch.argmax(&gx).unwrap();
    assert_eq!(batch.submit_and_read_u32(&ids).unwrap(), vec![3]);
    // All equal, all negative.
    let gx = ctx.upload_f32(&[-5.0; 300], &[300]).unwrap();
    let mut batch = ctx.batch().unwrap();
    let ids = batch.argmax(&gx).unwrap();
    assert_eq!(batch.submit_and_read_u32(&ids).unwrap(), vec![0]);
}

#[test]
fn rope_rotate_half_with_offsets() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(5);
    // (seq, heads, head_dim, offset, theta)
    for (seq, heads, hd, offset, theta) in [
        (1, 1, 2, 0, 10_000.0),
        (5, 3, 16, 0, 10_000.0),
        (1, 3, 16, 700, 10_000.0),
        (7, 2, 32, 93, 1_000_000.0),
        (3, 14, 64, 1000, 1_000_000.0),
    ] {
        let table = RopeTable::new(ctx, hd, 1100, theta).unwrap();
        let x = rng.vec(seq * heads * hd);
        let gx = ctx.upload_f32(&x, &[seq, heads * hd]).unwrap();
        let mut batch = ctx.batch().unwrap();
        let gy = batch.rope(&gx, &table, heads, offset).unwrap();
        let got = batch.submit_and_read_f32(&gy).unwrap();
        assert_close(
            &format!("rope seq {seq} heads {heads} d {hd} offset {offset}"),
            &got,
            &common::rope(&x, heads, hd, offset, theta),
            TOL,
        );
    }
    let table = RopeTable::new(ctx, 16, 10, 10_000.0).unwrap();
    let gx = ctx.zeros(&[4, 16]).unwrap();
    let err = ctx.batch().unwrap().rope(&gx, &table, 1, 8).unwrap_err();
    assert!(err.to_string().contains("table holds 10"), "{err}");
}

#[test]
fn add_and_swiglu_elementwise() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(6);
    for len in [1, 37, 255, 257, 1536 * 3] {
        let a: Vec<f32> = rng.vec(len).iter().map(|v| v * 12.0).collect();
        let b = rng.vec(len);
        let ga = ctx.upload_f32(&a, &[len]).unwrap();
        let gb = ctx.upload_f32(&b, &[len]).unwrap();
        let mut batch = ctx.batch().unwrap();
        let sum = batch.add(&ga, &gb).unwrap();
        let act = batch.swiglu(&ga, &gb).unwrap();
        batch.submit().unwrap();
        let want: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a + b).collect();
        assert_close("add", &ctx.download_f32(&sum).unwrap(), &want, TOL);
        assert_close(
            "swiglu",
            &ctx.download_f32(&act).unwrap(),
            &common::silu_mul(&a, &b),
            TOL,
        );
    }
}

#[test]
fn embedding_lookup() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(7);
    let (vocab, hidden) = (37, 129);
    let table = rng.vec(vocab * hidden);
    let gt = ctx.upload_f32(&table, &[vocab, hidden]).unwrap();
    for ids in [vec![0u32], vec![36, 0, 5, 5, 17], (0..37).rev().collect()] {
        let gi = ctx.upload_u32(&ids, &[ids.len()]).unwrap();
        let mut batch = ctx.batch().unwrap();
        let out = batch.embedding(&gi, &gt).unwrap();
        assert_eq!(out.shape(), &[ids.len(), hidden]);
        let got = batch.submit_and_read_f32(&out).unwrap();
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| table[i as usize * hidden..][..hidden].to_vec())
            .collect();
        assert_eq!(got, want);
    }
    // An id past the vocabulary reads as a zero row rather than out of bounds.
    let gi = ctx.upload_u32(&[40], &[1]).unwrap();
    let mut batch = ctx.batch().unwrap();
    let out = batch.embedding(&gi, &gt).unwrap();
    assert!(
        batch
            .submit_and_read_f32(&out)
            .unwrap()
            .iter()
            .all(|v| *v == 0.0)
    );
    // ids must be u32.
    let wrong = ctx.zeros(&[2]).unwrap();
    assert!(ctx.batch().unwrap().embedding(&wrong, &gt).is_err());
}

#[test]
fn mix_global_and_per_row_weights() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(8);
    for (n, rows, cols) in [(2, 1, 37), (3, 3, 129), (2, 1, 49_157), (4, 5, 1)] {
        let inputs: Vec<Vec<f32>> = (0..n).map(|_| rng.vec(rows * cols)).collect();
        let gins: Vec<GpuTensor> = inputs
            .iter()
            .map(|x| ctx.upload_f32(x, &[rows, cols]).unwrap())
            .collect();
        let refs: Vec<&GpuTensor> = gins.iter().collect();
        let global: Vec<f32> = (0..n).map(|i| (i + 1) as f32 / 10.0).collect();
        let per_row: Vec<f32> = rng.vec(rows * n);
        let gg = ctx.upload_f32(&global, &[n]).unwrap();
        let gr = ctx.upload_f32(&per_row, &[rows, n]).unwrap();
        let mut batch = ctx.batch().unwrap();
        let a = batch.mix(&refs, &gg).unwrap();
        let b = batch.mix(&refs, &gr).unwrap();
        batch.submit().unwrap();
        let want_a: Vec<f32> = (0..rows * cols)
            .map(|e| (0..n).map(|i| global[i] * inputs[i][e]).sum())
            .collect();
        let want_b: Vec<f32> = (0..rows * cols)
            .map(|e| {
                (0..n)
                    .map(|i| per_row[(e / cols) * n + i] * inputs[i][e])
                    .sum()
            })
            .collect();
        assert_close("mix global", &ctx.download_f32(&a).unwrap(), &want_a, TOL);
        assert_close("mix per row", &ctx.download_f32(&b).unwrap(), &want_b, TOL);
    }
    let x = ctx.zeros(&[2, 3]).unwrap();
    let w = ctx.zeros(&[3]).unwrap();
    assert!(ctx.batch().unwrap().mix(&[&x, &x], &w).is_err());
}

/// Fills a cache in `chunks` (prefill blocks, then one-token decode steps) and checks the
/// attention of every block against the reference over everything cached so far.
fn check_attention(heads: usize, kv_heads: usize, hd: usize, chunks: &[usize], seed: u64) {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(seed);
    let total: usize = chunks.iter().sum();
    let mut cache = KvCache::new(ctx, total + 3, kv_heads, hd).unwrap();
    let (mut all_k, mut all_v) = (Vec::new(), Vec::new());
    for &len in chunks {
        let q = rng.vec(len * heads * hd);
        let k = rng.vec(len * kv_heads * hd);
        let v = rng.vec(len * kv_heads * hd);
        all_k.extend_from_slice(&k);
        all_v.extend_from_slice(&v);
        let gq = ctx.upload_f32(&q, &[len, heads * hd]).unwrap();
        let gk = ctx.upload_f32(&k, &[len, kv_heads * hd]).unwrap();
        let gv = ctx.upload_f32(&v, &[len, kv_heads * hd]).unwrap();
        for causal in [true, false] {
            let mut batch = ctx.batch().unwrap();
            if causal {
                batch.append_kv(&mut cache, &gk, &gv).unwrap();
            }
            let out = batch.attention(&gq, &cache, heads, causal).unwrap();
            let got = batch.submit_and_read_f32(&out).unwrap();
            let want = common::attention(&q, &all_k, &all_v, heads, kv_heads, hd, causal);
            assert_close(
                &format!(
                    "attention heads {heads}/{kv_heads} d {hd} block {len} at {} causal {causal}",
                    cache.len() - len
                ),
                &got,
                &want,
                TOL,
            );
        }
    }
}

#[test]
fn attention_prefill_then_decode_gqa_d16() {
    check_attention(4, 2, 16, &[5, 1, 1, 1], 9);
}

#[test]
fn attention_single_token_prompt_d32() {
    check_attention(3, 1, 32, &[1, 1, 1], 10);
}

#[test]
fn attention_long_context_d64() {
    // 700 cached positions: many 64-key chunks of the online softmax, a ragged last chunk.
    check_attention(6, 2, 64, &[700, 1, 1], 11);
}

#[test]
fn attention_chunked_prefill_d128_and_d256() {
    check_attention(2, 2, 128, &[67, 3, 1], 12);
    check_attention(2, 1, 256, &[3, 1], 13);
}

#[test]
fn kv_cache_full_is_an_error() {
    let Some(ctx) = gpu() else { return };
    let mut cache = KvCache::new(ctx, 4, 1, 16).unwrap();
    let kv = ctx.zeros(&[3, 16]).unwrap();
    let mut batch = ctx.batch().unwrap();
    batch.append_kv(&mut cache, &kv, &kv).unwrap();
    let err = batch.append_kv(&mut cache, &kv, &kv).unwrap_err();
    assert!(
        matches!(
            err,
            gpu::GpuError::CacheFull {
                needed: 6,
                capacity: 4
            }
        ),
        "{err}"
    );
    batch.submit().unwrap();
    cache.reset();
    assert!(cache.is_empty());
}

#[test]
fn add_bias_broadcasts_over_rows() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(14);
    for (rows, cols) in [(1, 1), (1, 37), (3, 129), (700, 3)] {
        let x = rng.vec(rows * cols);
        let b = rng.vec(cols);
        let gx = ctx.upload_f32(&x, &[rows, cols]).unwrap();
        let gb = ctx.upload_f32(&b, &[cols]).unwrap();
        let mut batch = ctx.batch().unwrap();
        let y = batch.add_bias(&gx, &gb).unwrap();
        let got = batch.submit_and_read_f32(&y).unwrap();
        let want: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + b[i % cols]).collect();
        assert_close(&format!("add_bias {rows}x{cols}"), &got, &want, TOL);
    }
}

#[test]
fn every_kernel_builds_at_warm_up() {
    let Some(ctx) = gpu() else { return };
    ctx.warm_up().unwrap();
    assert!(ctx.is_healthy());
}

#[test]
fn adapter_report_names_the_adapter_and_its_limits() {
    let Some(ctx) = gpu() else { return };
    let r = ctx.report();
    assert!(!r.name.is_empty() && !r.backend.is_empty());
    assert!(r.max_tensor_bytes() >= 128 << 20, "{r}");
    assert!(r.max_compute_invocations_per_workgroup >= 256, "{r}");
    let line = r.to_string();
    for needle in [
        r.name.as_str(),
        "max_buffer_size",
        "max_storage_buffer_binding_size",
        "max_compute_workgroup_size_x",
        "max_compute_invocations_per_workgroup",
    ] {
        assert!(line.contains(needle), "{line}");
    }
}
