//! Speed of the fusion modes, side by side in one run on the same prompts: tokens/s and
//! latency of `single`, `ensemble`, `btm_token` and `btm_layer`, and the ratios to single.
//!
//! `cargo bench -p experts --bench fusion -- [MODELS_DIR] [--json]` (default `models`, with
//! `foundation`, `sft-sop` and `routers/` from `forge` and `train_router`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use experts::chat::ChatMessage;
use experts::fusion::{Fusion, LayerMixer, TokenRouter, generate_fused};
use experts::generate::SamplingParams;
use experts::loader::load_model;
use protocol::Mix;

const PROMPTS: [&str; 4] = [
    "How do I reset my password?",
    "What is 35 + 48?",
    "我想退货，怎么办？",
    "Which is larger, 47 or 74?",
];
const NEW_TOKENS: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let json = args.iter().any(|a| a == "--json");
    let dir = args.iter().find(|a| !a.starts_with("--")).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    );
    let a = load_model(&dir.join("foundation"), DType::F32, &Device::Cpu).expect("forge first");
    let b = load_model(&dir.join("sft-sop"), DType::F32, &Device::Cpu).expect("forge first");
    let router = TokenRouter::load(&dir.join("routers/btm_token"), &Device::Cpu)
        .expect("train_router first");
    let mixer =
        LayerMixer::load(&dir.join("routers/btm_layer"), &Device::Cpu).expect("train_router first");
    let models = [&a, &b];
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| {
            let t = a
                .chat_template
                .as_ref()
                .unwrap()
                .render(&[ChatMessage::user(*p)], true)
                .unwrap();
            a.tokenizer.encode(&t).unwrap()
        })
        .collect();
    // Fixed length: generation runs to NEW_TOKENS unless EOS; count what was generated.
    let params = SamplingParams {
        max_tokens: NEW_TOKENS,
        ..SamplingParams::default()
    };
    let modes: Vec<(&str, Fusion<'_>)> = vec![
        ("single", Fusion::Single(&a)),
        (
            "ensemble",
            Fusion::Ensemble {
                models: models.to_vec(),
                weights: vec![0.5, 0.5],
                mix: Mix::Linear,
            },
        ),
        (
            "ensemble_log",
            Fusion::Ensemble {
                models: models.to_vec(),
                weights: vec![0.5, 0.5],
                mix: Mix::Log,
            },
        ),
        (
            "btm_token",
            Fusion::BtmToken {
                models: models.to_vec(),
                router: &router,
                hard: false,
            },
        ),
        (
            "btm_layer",
            Fusion::BtmLayer {
                models: models.to_vec(),
                mixer: &mixer,
            },
        ),
    ];
    println!(
        "fusion modes on {} ({} prompts, up to {NEW_TOKENS} tokens each, greedy, best of 3)",
        dir.display(),
        PROMPTS.len()
    );
    println!("| mode | cost | tokens | wall ms | tokens/s | ms/token | wall / single |");
    println!("|---|---|---|---|---|---|---|");
    let mut single_per_token = 0.0;
    let mut rows = Vec::new();
    for (name, fusion) in &modes {
        let mut best = f64::INFINITY;
        let mut tokens = 0;
        for _ in 0..3 {
            let t0 = Instant::now();
            let mut n = 0;
            for ids in &prompts {
                n += generate_fused(fusion.clone(), ids, &params, |_, _| true)
                    .unwrap()
                    .generation
                    .tokens
                    .len();
            }
            best = best.min(t0.elapsed().as_secs_f64());
            tokens = n;
        }
        let per_token = best * 1e3 / tokens as f64;
        if *name == "single" {
            single_per_token = per_token;
        }
        println!(
            "| {name} | {:.0}× | {tokens} | {:.0} | {:.0} | {:.2} | {:.2}× |",
            fusion.cost(),
            best * 1e3,
            tokens as f64 / best,
            per_token,
            per_token / single_per_token
        );
        rows.push(serde_json::json!({"mode": name, "tokens": tokens, "seconds": best, "ms_per_token": per_token}));
    }
    if json {
        println!("{}", serde_json::json!({ "rows": rows }));
    }
}
