//! Speed of the fusion modes, side by side in one run on the same prompts: tokens/s and
//! latency of `single`, `ensemble`, `btm_token`, `btm_layer` and `defer` (at two
//! thresholds), the ratios to single, model forwards per generated token (for `defer` the
//! catch-up counted) and `defer`'s deferral rate.
//!
//! `cargo bench -p experts --bench fusion -- [MODELS_DIR] [--json]` (default `models`, with
//! `foundation`, `sft-sop` and `routers/` from `forge` and `train_router`);
//! `cargo bench -p experts --bench fusion -- --smollm2` runs the default config's pair
//! (`models/smollm2-135m-instruct`, `adapters/sft-sop-smollm2`, `adapters/routers-smollm2`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use experts::chat::ChatMessage;
use experts::defer::DeferralHead;
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
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let (dir, foundation, expert, routers) = if args.iter().any(|a| a == "--smollm2") {
        (
            root.join("models/smollm2-135m-instruct"),
            root.join("models/smollm2-135m-instruct"),
            root.join("adapters/sft-sop-smollm2"),
            root.join("adapters/routers-smollm2"),
        )
    } else {
        let dir = args
            .iter()
            .find(|a| !a.starts_with("--"))
            .map_or_else(|| root.join("models"), PathBuf::from);
        (
            dir.clone(),
            dir.join("foundation"),
            dir.join("sft-sop"),
            dir.join("routers"),
        )
    };
    let a = load_model(&foundation, DType::F32, &Device::Cpu).expect("forge or pull first");
    let b = load_model(&expert, DType::F32, &Device::Cpu).expect("forge or finetune first");
    let router =
        TokenRouter::load(&routers.join("btm_token"), &Device::Cpu).expect("train_router first");
    let mixer =
        LayerMixer::load(&routers.join("btm_layer"), &Device::Cpu).expect("train_router first");
    let head = DeferralHead::load(&routers.join("defer"), &Device::Cpu)
        .inspect_err(|e| eprintln!("no defer rows: {e} (train_router --kind defer)"))
        .ok();
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
    let mut modes: Vec<(&str, Fusion<'_>)> = vec![
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
    if let Some(head) = &head {
        for (name, threshold) in [("defer η=0.5", 0.5), ("defer η=0.3", 0.3)] {
            modes.push((
                name,
                Fusion::Defer {
                    models: models.to_vec(),
                    head,
                    threshold,
                    lazy: true,
                },
            ));
        }
    }
    println!(
        "fusion modes on {} ({} prompts, up to {NEW_TOKENS} tokens each, greedy, best of 3)",
        dir.display(),
        PROMPTS.len()
    );
    println!(
        "| mode | forwards/token | deferred | tokens | wall ms | tokens/s | ms/token | wall / single |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut single_per_token = 0.0;
    let mut rows = Vec::new();
    for (name, fusion) in &modes {
        let mut best = f64::INFINITY;
        let (mut tokens, mut forwards, mut deferred) = (0, 0.0, 0);
        for _ in 0..3 {
            let t0 = Instant::now();
            (tokens, forwards, deferred) = (0, 0.0, 0);
            for ids in &prompts {
                let out = generate_fused(fusion.clone(), ids, &params, |_, _| true).unwrap();
                let n = out.generation.tokens.len();
                tokens += n;
                forwards += f64::from(out.cost) * n as f64;
                // `defer` steps report weights [0, 1] where the second expert's token was used.
                deferred += out
                    .routing_weights
                    .iter()
                    .filter(|w| w.get(1).is_some_and(|x| *x > 0.5) && w.len() == 2)
                    .count();
            }
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let is_defer = matches!(fusion, Fusion::Defer { .. });
        let per_token = best * 1e3 / tokens as f64;
        if *name == "single" {
            single_per_token = per_token;
        }
        let rate = deferred as f64 / tokens.max(1) as f64;
        println!(
            "| {name} | {:.2} | {} | {tokens} | {:.0} | {:.0} | {:.2} | {:.2}× |",
            forwards / tokens.max(1) as f64,
            if is_defer {
                format!("{:.0} %", 100.0 * rate)
            } else {
                "–".into()
            },
            best * 1e3,
            tokens as f64 / best,
            per_token,
            per_token / single_per_token
        );
        rows.push(serde_json::json!({
            "mode": name,
            "tokens": tokens,
            "seconds": best,
            "ms_per_token": per_token,
            "forwards_per_token": forwards / tokens.max(1) as f64,
            "deferral_rate": is_defer.then_some(rate),
        }));
    }
    if json {
        println!("{}", serde_json::json!({ "rows": rows }));
    }
}
