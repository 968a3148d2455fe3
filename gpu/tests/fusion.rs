//! The fusion step on the device against plain Rust: the btm_token router MLP
//! (`softmax(W2 · silu(W1 · [h_1; h_2] + b1) + b2)`, as `experts::fusion::TokenRouter`)
//! giving per-token weights that mix the experts' next-token distributions, the ensemble's
//! fixed weights, and btm_layer's mixing of hidden states — then argmax, so only ids return.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Rng, assert_close, gpu};

const TOL: f32 = 1e-4;

fn silu(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|x| (f64::from(*x) / (1.0 + (-f64::from(*x)).exp())) as f32)
        .collect()
}

fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
}

#[test]
fn token_router_weights_mix_the_experts_distributions() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(31);
    let (experts, hidden, router_hidden, vocab) = (2, 37, 19, 301);
    for rows in [1, 5] {
        let hs: Vec<Vec<f32>> = (0..experts).map(|_| rng.vec(rows * hidden)).collect();
        let logits: Vec<Vec<f32>> = (0..experts)
            .map(|_| rng.vec(rows * vocab).iter().map(|v| v * 8.0).collect())
            .collect();
        let w1 = rng.vec(router_hidden * experts * hidden);
        let b1 = rng.vec(router_hidden);
        let w2 = rng.vec(experts * router_hidden);
        let b2 = rng.vec(experts);

        // CPU reference.
        let x: Vec<f32> = (0..rows)
            .flat_map(|r| {
                hs.iter()
                    .flat_map(move |h| h[r * hidden..][..hidden].to_vec())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut a = common::matmul(&x, &w1, rows, experts * hidden, router_hidden, true);
        add_bias(&mut a, &b1);
        let mut l = common::matmul(&silu(&a), &w2, rows, router_hidden, experts, true);
        add_bias(&mut l, &b2);
        let weights = common::softmax(&l, experts);
        let probs: Vec<Vec<f32>> = logits.iter().map(|l| common::softmax(l, vocab)).collect();
        let mixed: Vec<f32> = (0..rows * vocab)
            .map(|e| {
                (0..experts)
                    .map(|i| weights[(e / vocab) * experts + i] * probs[i][e])
                    .sum()
            })
            .collect();

        // Device: one batch, token ids back.
        let up = |v: &[f32], s: &[usize]| ctx.upload_f32(v, s).unwrap();
        let gh: Vec<_> = hs.iter().map(|h| up(h, &[rows, hidden])).collect();
        let gl: Vec<_> = logits.iter().map(|l| up(l, &[rows, vocab])).collect();
        let (gw1, gb1) = (
            up(&w1, &[router_hidden, experts * hidden]),
            up(&b1, &[router_hidden]),
        );
        let (gw2, gb2) = (up(&w2, &[experts, router_hidden]), up(&b2, &[experts]));
        let mut b = ctx.batch().unwrap();
        let x = b.concat_last(&[&gh[0], &gh[1]]).unwrap();
        assert_eq!(x.shape(), &[rows, experts * hidden]);
        let a = b.linear(&x, &gw1).unwrap();
        let a = b.add_bias(&a, &gb1).unwrap();
        let a = b.silu(&a).unwrap();
        let l = b.linear(&a, &gw2).unwrap();
        let l = b.add_bias(&l, &gb2).unwrap();
        let w = b.softmax(&l).unwrap();
        let p0 = b.softmax(&gl[0]).unwrap();
        let p1 = b.softmax(&gl[1]).unwrap();
        let m = b.mix(&[&p0, &p1], &w).unwrap();
        let ids = b.argmax(&m).unwrap();
        let got_ids = b.submit_and_read_u32(&ids).unwrap();
        assert_close(
            "router weights",
            &ctx.download_f32(&w).unwrap(),
            &weights,
            TOL,
        );
        assert_close(
            "mixed distribution",
            &ctx.download_f32(&m).unwrap(),
            &mixed,
            TOL,
        );
        assert_eq!(got_ids, common::argmax(&mixed, vocab), "rows {rows}");
    }
}

#[test]
fn ensemble_and_layer_mixing_with_fixed_weights() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(32);
    let (rows, vocab, hidden) = (3, 129, 40);
    // Ensemble: weighted mean of the experts' distributions.
    let l0: Vec<f32> = rng.vec(rows * vocab).iter().map(|v| v * 5.0).collect();
    let l1: Vec<f32> = rng.vec(rows * vocab).iter().map(|v| v * 5.0).collect();
    let weights = [0.3f32, 0.7];
    let (p0, p1) = (common::softmax(&l0, vocab), common::softmax(&l1, vocab));
    let want: Vec<f32> = p0.iter().zip(&p1).map(|(a, b)| 0.3 * a + 0.7 * b).collect();
    let g0 = ctx.upload_f32(&l0, &[rows, vocab]).unwrap();
    let g1 = ctx.upload_f32(&l1, &[rows, vocab]).unwrap();
    let gw = ctx.upload_f32(&weights, &[2]).unwrap();
    let mut b = ctx.batch().unwrap();
    let q0 = b.softmax(&g0).unwrap();
    let q1 = b.softmax(&g1).unwrap();
    let m = b.mix(&[&q0, &q1], &gw).unwrap();
    let got = b.submit_and_read_f32(&m).unwrap();
    assert_close("ensemble", &got, &want, TOL);
    let sums: Vec<f32> = got.chunks(vocab).map(|r| r.iter().sum()).collect();
    assert_close("ensemble rows sum to 1", &sums, &[1.0; 3], TOL);

    // btm_layer: one layer's coefficients over two residual streams.
    let h0 = rng.vec(rows * hidden);
    let h1 = rng.vec(rows * hidden);
    let coef = [0.62f32, 0.38];
    let want: Vec<f32> = h0
        .iter()
        .zip(&h1)
        .map(|(a, b)| 0.62 * a + 0.38 * b)
        .collect();
    let g0 = ctx.upload_f32(&h0, &[1, rows, hidden]).unwrap();
    let g1 = ctx.upload_f32(&h1, &[1, rows, hidden]).unwrap();
    let gc = ctx.upload_f32(&coef, &[2]).unwrap();
    let mut b = ctx.batch().unwrap();
    let m = b.mix(&[&g0, &g1], &gc).unwrap();
    assert_eq!(m.shape(), &[1, rows, hidden]);
    assert_close("layer mix", &b.submit_and_read_f32(&m).unwrap(), &want, TOL);
}

#[test]
fn concat_and_silu_on_odd_shapes() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(33);
    for (rows, cols) in [(1, 1), (1, 37), (7, 129)] {
        let a = rng.vec(rows * cols);
        let c = rng.vec(rows * 3);
        let ga = ctx.upload_f32(&a, &[rows, cols]).unwrap();
        let gc = ctx.upload_f32(&c, &[rows, 3]).unwrap();
        let mut b = ctx.batch().unwrap();
        let cat = b.concat_last(&[&ga, &gc, &ga]).unwrap();
        let act = b.silu(&ga).unwrap();
        let got = b.submit_and_read_f32(&cat).unwrap();
        let want: Vec<f32> = (0..rows)
            .flat_map(|r| {
                let mut row = a[r * cols..][..cols].to_vec();
                row.extend_from_slice(&c[r * 3..][..3]);
                row.extend_from_slice(&a[r * cols..][..cols]);
                row
            })
            .collect();
        assert_eq!(got, want, "concat {rows}x{cols}");
        assert_close("silu", &ctx.download_f32(&act).unwrap(), &silu(&a), TOL);
    }
    let a = ctx.zeros(&[2, 3]).unwrap();
    let c = ctx.zeros(&[3, 3]).unwrap();
    assert!(ctx.batch().unwrap().concat_last(&[&a, &c]).is_err());
}
