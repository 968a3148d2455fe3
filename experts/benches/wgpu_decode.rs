//! Greedy decode speed of the wgpu device against the candle CPU path, side by side in one
//! run, on a forged model: `single` and `ensemble` (two experts), batch 1, tokens per second
//! of the decode steps after a prefilled prompt. Only the token id crosses back per wgpu step.
//!
//! `cargo bench -p experts --features wgpu --bench wgpu_decode -- [MODELS_DIR] [--json]`
//! (`MODELS_DIR` holds `foundation` and `sft-sop`; default: a tiny pair forged once under the
//! target directory). `HYBRID_WGPU_ADAPTER` picks the adapter. On lavapipe (Mesa's CPU Vulkan
//! driver) the numbers only show the device path runs; speed is measured on a real GPU.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{D, DType, Device};
use experts::forge::{ForgeOptions, ForgeProfile, forge};
use experts::fusion::{FusedSequence, Fusion};
use experts::loader::{LoadedModel, load_model};
use experts::wgpu_backend::{WgpuMixing, WgpuModel, WgpuSequence};
use gpu::GpuContext;
use protocol::Mix;

const PROMPT_LEN: usize = 16;
const NEW_TOKENS: usize = 48;
const REPEATS: usize = 3;

fn models_dir(arg: Option<&String>) -> PathBuf {
    if let Some(d) = arg {
        return PathBuf::from(d);
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("forge-wgpu-tiny");
    forge(&ForgeOptions {
        out: out.clone(),
        profile: ForgeProfile {
            name: "tiny".into(),
            foundation_steps: 6,
            sft_steps: 4,
            n_general: 200,
            n_reasoning: 200,
            n_sop: 200,
            n_eval: 4,
            ..ForgeProfile::small()
        },
        seed: 5,
        force: false,
        evaluate: false,
    })
    .unwrap();
    out
}

/// Best decode tokens/s over the repeats: prompt prefilled, then `NEW_TOKENS - 1` greedy steps.
fn best(mut run: impl FnMut() -> f64) -> f64 {
    (0..REPEATS).map(|_| run()).fold(0.0, f64::max)
}

fn candle_tps(fusion: &Fusion<'_>, prompt: &[u32]) -> f64 {
    best(|| {
        let mut seq = FusedSequence::new(fusion.clone()).unwrap();
        let argmax =
            |p: &candle_core::Tensor| p.argmax(D::Minus1).unwrap().to_scalar::<u32>().unwrap();
        let mut next = argmax(&seq.step(prompt).unwrap().probs);
        let t0 = Instant::now();
        for _ in 1..NEW_TOKENS {
            let out = experts::fusion::step_batch(&mut [&mut seq], &[next]).unwrap();
            next = argmax(&out[0].probs);
        }
        (NEW_TOKENS - 1) as f64 / t0.elapsed().as_secs_f64()
    })
}

fn wgpu_tps(ctx: &GpuContext, models: &[&WgpuModel], mixing: &WgpuMixing, prompt: &[u32]) -> f64 {
    best(|| {
        let mut seq = WgpuSequence::new(ctx, models.to_vec(), mixing.clone()).unwrap();
        let mut next = seq.step_greedy(ctx, prompt).unwrap().value;
        let t0 = Instant::now();
        for _ in 1..NEW_TOKENS {
            next = seq.step_greedy(ctx, &[next]).unwrap().value;
        }
        (NEW_TOKENS - 1) as f64 / t0.elapsed().as_secs_f64()
    })
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let json = args.iter().any(|a| a == "--json");
    let dir = models_dir(args.iter().find(|a| !a.starts_with("--")));
    let load = |name: &str| -> LoadedModel {
        let mut m = load_model(&dir.join(name), DType::F32, &Device::Cpu).unwrap();
        m.name = name.into();
        m
    };
    let (a, b) = (load("foundation"), load("sft-sop"));
    let ctx = GpuContext::from_env().expect("a wgpu adapter");
    eprintln!("{}", ctx.report());
    ctx.warm_up().unwrap();
    let ga = WgpuModel::upload(&ctx, &a.decoder).unwrap();
    let gb = WgpuModel::upload(&ctx, &b.decoder).unwrap();
    let vocab = a.decoder.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..PROMPT_LEN as u32)
        .map(|i| 10 + (i * 37) % (vocab - 20))
        .collect();
    let c = a.decoder.config();
    let params = a.decoder.config().vocab_size * c.hidden_size
        + c.num_hidden_layers
            * (c.hidden_size
                * c.head_dim
                * (c.num_attention_heads * 2 + c.num_key_value_heads * 2)
                + 3 * c.hidden_size * c.intermediate_size);
    let modes: Vec<(&str, Fusion<'_>, Vec<&WgpuModel>)> = vec![
        ("single", Fusion::Single(&a), vec![&ga]),
        (
            "ensemble",
            Fusion::Ensemble {
                models: vec![&a, &b],
                weights: vec![1.0, 1.0],
                mix: Mix::Linear,
            },
            vec![&ga, &gb],
        ),
    ];
    println!(
        "greedy decode, batch 1, prompt {PROMPT_LEN}, {NEW_TOKENS} tokens, ~{:.2}M parameters per expert; adapter `{}` ({})",
        params as f64 / 1e6,
        ctx.report().name,
        ctx.report().backend
    );
    println!("| mode | candle CPU tok/s | wgpu tok/s | wgpu / candle |");
    println!("|---|---:|---:|---:|");
    let mut rows = serde_json::Map::new();
    for (name, fusion, gms) in &modes {
        let mixing = WgpuMixing::of(&ctx, fusion).unwrap();
        let cpu = candle_tps(fusion, &prompt);
        let dev = wgpu_tps(&ctx, gms, &mixing, &prompt);
        println!("| {name} | {cpu:.1} | {dev:.1} | {:.2} |", dev / cpu);
        rows.insert(
            (*name).into(),
            serde_json::json!({"candle_cpu_tok_s": cpu, "wgpu_tok_s": dev}),
        );
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"adapter": ctx.report().name, "modes": rows})
        );
    }
}
